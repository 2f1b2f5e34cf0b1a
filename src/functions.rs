//! A pipeline's functions as the engine sees them: asking the pipeline for
//! its listing, reading the `rbuild call` command line, and the call spec
//! the pipeline is then run with. The shapes are `rbuild_sdk::wire`'s.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use rbuild_sdk::wire::{self, Action, ArgKind, CallSpec, FunctionDecl, Header, Listing};
use serde::Deserialize;

use crate::api::Api;
use crate::engine::EngineConfig;
use crate::pipeline;

/// A pipeline's (or module's) functions, as it declares them, and the API
/// version they are served under: its own.
pub struct Described {
    pub functions: Vec<FunctionDecl>,
    /// The protocol its SDK speaks.
    pub protocol: u32,
    pub api: Api,
}

impl Described {
    /// The function `name` as a caller under this API names it.
    pub fn function(&self, name: &str) -> Option<&FunctionDecl> {
        self.functions
            .iter()
            .find(|f| shown(&f.name, self.api) == name)
    }
}

/// A function's or argument's name as `rbuild functions`, `rbuild call`
/// and module calls name it under `api`: from 0.2 on in kebab-case (as
/// Dagger names them), before as declared.
pub fn shown(name: &str, api: Api) -> String {
    if api >= crate::api::KEBAB_CASE_NAMES {
        name.replace('_', "-")
    } else {
        name.to_string()
    }
}

/// Builds the pipeline and asks it for its functions; what it lists is
/// read under the API version it declares (not its caller's).
pub async fn describe(config: &EngineConfig, path: &Path) -> Result<Described> {
    let built = {
        let (path, cache) = (path.to_path_buf(), config.cache_dir.clone());
        tokio::task::spawn_blocking(move || pipeline::build(&path, &cache)).await??
    };
    list(&built, path).await
}

/// The functions of the pipeline at `path`, already built.
pub async fn list(built: &pipeline::Built, path: &Path) -> Result<Described> {
    let out = tokio::process::Command::new(&built.executable)
        .env(wire::LIST_ENV, "1")
        .env(rbuild_sdk::PIPELINE_DIR_ENV, &built.dir)
        .env_remove(wire::CALL_ENV)
        .output()
        .await
        .with_context(|| format!("run pipeline {}", path.display()))?;
    let (protocol, functions) = read_listing(path, &String::from_utf8_lossy(&out.stdout))?;
    Ok(Described {
        functions,
        protocol,
        api: built.declared.api(),
    })
}

/// The functions in a pipeline's output under `RBUILD_FUNCTIONS_LIST` (its
/// last line that is JSON), and the protocol its SDK speaks.
pub fn read_listing(path: &Path, stdout: &str) -> Result<(u32, Vec<FunctionDecl>)> {
    let doc: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| anyhow!("pipeline {} did not describe its functions", path.display()))?;
    let listing = if doc.is_object() {
        let header = Header::deserialize(&doc)
            .with_context(|| format!("pipeline {}'s listing of functions", path.display()))?;
        crate::session::check_protocol(header.protocol, &header.sdk)
            .map_err(|e| anyhow!("pipeline {}: {e}", path.display()))?;
        Listing::deserialize(&doc).with_context(|| {
            format!(
                "pipeline {} listed its functions in a form this rbuild cannot read",
                path.display()
            )
        })?
    } else {
        Listing::default()
    };
    let functions = listing.functions.ok_or_else(|| {
        anyhow!(
            "pipeline {} exposes no functions: declare them with rbuild_sdk::Functions (see `rbuild init`)",
            path.display()
        )
    })?;
    Ok((listing.protocol, functions))
}

/// `rbuild call`'s own flags before the call (as `rbuild run` takes them).
#[derive(Debug, Default, PartialEq)]
pub struct CallFlags {
    /// `-i`/`--interactive` (`--interactive-command CMD` chooses it): the
    /// shell to open in a failed step's container.
    pub shell: Option<Vec<String>>,
    /// `--cache-from REPO` (repeatable) and `--cache-to REPO`.
    pub cache_from: Vec<String>,
    pub cache_to: Option<String>,
    /// `--expect-cached`.
    pub expect_cached: bool,
}

/// Splits `rbuild call`'s own flags off the front of its words: the flags, and the rest.
pub fn call_flags(words: Vec<String>) -> Result<(CallFlags, Vec<String>)> {
    let mut interactive = false;
    let mut command = "/bin/sh".to_string();
    let mut flags = CallFlags::default();
    let mut rest = words.into_iter().peekable();
    while let Some(w) = rest.peek().cloned() {
        let (name, inline) = match w.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (w.clone(), None),
        };
        let takes_value = ["--interactive-command", "--cache-from", "--cache-to"];
        let switch = matches!(name.as_str(), "-i" | "--interactive" | "--expect-cached");
        if !takes_value.contains(&name.as_str()) && !switch {
            break;
        }
        rest.next();
        let value = if !takes_value.contains(&name.as_str()) {
            String::new()
        } else if let Some(v) = inline {
            v
        } else {
            rest.next().ok_or_else(|| anyhow!("{name} needs a value"))?
        };
        match name.as_str() {
            "-i" | "--interactive" => interactive = true,
            "--interactive-command" => command = value,
            "--cache-from" => flags.cache_from.push(value),
            "--expect-cached" => flags.expect_cached = true,
            _ => flags.cache_to = Some(value),
        }
    }
    flags.shell = interactive.then(|| command.split_whitespace().map(String::from).collect());
    Ok((flags, rest.collect()))
}

/// A parsed `rbuild call` command line.
#[derive(Debug, PartialEq)]
pub struct CallLine {
    pub path: Option<PathBuf>,
    pub function: String,
    pub args: Vec<(String, String)>,
    pub action: Action,
}

const ACTIONS: [&str; 6] = ["print", "stdout", "export", "publish", "terminal", "up"];

/// `[PATH] FN [--name value | --name=value]... [ACTION [--flag value]...]`
pub fn parse_call(words: &[String]) -> Result<CallLine> {
    let mut i = 0;
    let positionals: Vec<&String> = words.iter().take_while(|w| !w.starts_with("--")).collect();
    let (path, function) = match positionals.as_slice() {
        [] => bail!(
            "usage: rbuild call [PATH] FUNCTION [--arg value]... [print | export --path P | publish --address A | terminal | up --ports HOST:SERVICE]"
        ),
        [f] => (None, (*f).clone()),
        [p, f, ..] if !ACTIONS.contains(&f.as_str()) => {
            i += 1;
            (Some(PathBuf::from(p)), (*f).clone())
        }
        [f, ..] => (None, (*f).clone()),
    };
    i += 1;
    let flags = |i: &mut usize, out: &mut Vec<(String, String)>| -> Result<()> {
        while *i < words.len() && words[*i].starts_with("--") {
            let w = &words[*i][2..];
            if let Some((k, v)) = w.split_once('=') {
                out.push((k.into(), v.into()));
                *i += 1;
            } else {
                let v = words
                    .get(*i + 1)
                    .ok_or_else(|| anyhow!("--{w} needs a value"))?;
                out.push((w.into(), v.clone()));
                *i += 2;
            }
        }
        Ok(())
    };
    let mut args = Vec::new();
    flags(&mut i, &mut args)?;
    let mut action = Action::Print;
    if let Some(word) = words.get(i) {
        if !ACTIONS.contains(&word.as_str()) {
            bail!(
                "unknown action {word:?}: use print, export --path P, publish --address A, terminal or up --ports HOST:SERVICE"
            );
        }
        i += 1;
        let mut opts = Vec::new();
        flags(&mut i, &mut opts)?;
        // The last of a repeated flag wins; flags an action does not take are ignored.
        let flag = |name: &str| {
            opts.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        action = match word.as_str() {
            "print" | "stdout" => Action::Print,
            "export" => Action::Export {
                path: match flag("path") {
                    Some(p) => Some(std::path::absolute(&p)?.display().to_string()),
                    None => None,
                },
            },
            "publish" => Action::Publish {
                address: flag("address"),
            },
            "up" => {
                let mut ports = Vec::new();
                for (k, v) in &opts {
                    if k != "ports" {
                        continue;
                    }
                    for p in v.split(',').filter(|p| !p.is_empty()) {
                        let ok = p.split_once(':').is_some_and(|(h, s)| {
                            h.parse::<u16>().is_ok() && s.parse::<u16>().is_ok()
                        });
                        if !ok {
                            bail!("--ports {p}: expected HOST_PORT:SERVICE_PORT, such as 8080:80");
                        }
                        ports.push(p.to_string());
                    }
                }
                Action::Up { ports }
            }
            _ => Action::Terminal,
        };
        if let Some(extra) = words.get(i) {
            bail!("unexpected {extra:?} after the action");
        }
    }
    Ok(CallLine {
        path,
        function,
        args,
        action,
    })
}

/// What the pipeline at `path` is run with for `line`, checked against the
/// functions it declares (named as `api` names them) before anything runs.
pub fn call_spec(
    line: &CallLine,
    functions: &[FunctionDecl],
    path: &Path,
    api: Api,
) -> Result<CallSpec> {
    let f = functions
        .iter()
        .find(|f| shown(&f.name, api) == line.function)
        .ok_or_else(|| {
            anyhow!(
                "pipeline {} has no function {:?} (see `rbuild functions`)",
                path.display(),
                line.function
            )
        })?;
    let mut args = std::collections::BTreeMap::new();
    for (k, v) in &line.args {
        let decl = f
            .args
            .iter()
            .find(|a| &shown(&a.name, api) == k)
            .ok_or_else(|| anyhow!("{}: unknown argument --{k}", line.function))?;
        // Host paths are the caller's, relative to where rbuild was started.
        let v = match decl.kind {
            ArgKind::Directory | ArgKind::File => std::path::absolute(v)?.display().to_string(),
            _ => v.clone(),
        };
        args.insert(decl.name.clone(), v);
    }
    // Directory defaults are the pipeline's, not the caller's: made
    // absolute here, where the pipeline's place is known.
    for a in &f.args {
        if let (Some(d), false) = (&a.default_path, args.contains_key(&a.name)) {
            let at = default_path_in(path, d)?;
            args.insert(a.name.clone(), at.display().to_string());
        }
    }
    Ok(CallSpec {
        function: f.name.clone(),
        args,
        values: Default::default(),
        action: line.action.clone(),
    })
}

/// Where a directory argument's default path points: relative to the
/// pipeline's directory, or with a leading `/` to its context, the git
/// repository holding the pipeline (else the pipeline's directory).
pub fn default_path_in(pipeline: &Path, default: &str) -> Result<PathBuf> {
    let pipeline = std::path::absolute(pipeline)?;
    let dir = if pipeline.is_dir() {
        pipeline
    } else {
        pipeline
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"))
    };
    let at = match default.strip_prefix('/') {
        Some(rest) => {
            let context = dir
                .ancestors()
                .find(|d| d.join(".git").exists())
                .unwrap_or(&dir)
                .to_path_buf();
            context.join(rest)
        }
        None => dir.join(default),
    };
    // Tidy "a/./b" and a trailing "/." without touching symlinks.
    Ok(at.components().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_sdk::wire::ArgDecl;

    const OLD: Api = crate::api::UNDECLARED;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn call_takes_run_s_own_flags_before_the_call() {
        let shell = |w: &str| call_flags(words(w)).unwrap();
        let (flags, rest) = shell("-i build --src .");
        assert_eq!(flags.shell, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(rest, words("build --src ."));
        let (flags, rest) = shell("--interactive --interactive-command=bash ci.rs build");
        assert_eq!(flags.shell, Some(vec!["bash".to_string()]));
        assert_eq!(rest, words("ci.rs build"));
        let (flags, rest) = shell("build -i");
        assert_eq!((flags, rest), (CallFlags::default(), words("build -i")));
        let (flags, rest) =
            shell("--cache-from r/a --cache-from=r/b --cache-to r/c test --source=.");
        assert_eq!(flags.cache_from, words("r/a r/b"));
        assert_eq!(flags.cache_to.as_deref(), Some("r/c"));
        assert_eq!(rest, words("test --source=."));
        assert!(call_flags(words("--cache-to")).is_err());
        let (flags, rest) = shell("--expect-cached test");
        assert!(flags.expect_cached && flags.shell.is_none());
        assert_eq!(rest, words("test"));
    }

    #[test]
    fn parses_call_lines() {
        let l = parse_call(&words("build --src . --release=false")).unwrap();
        assert_eq!(l.path, None);
        assert_eq!(l.function, "build");
        assert_eq!(
            l.args,
            vec![
                ("src".into(), ".".into()),
                ("release".into(), "false".into())
            ]
        );
        assert_eq!(l.action, Action::Print);

        let l = parse_call(&words(
            "ci/pipeline.rs build --src x publish --address r/a:1",
        ))
        .unwrap();
        assert_eq!(l.path, Some(PathBuf::from("ci/pipeline.rs")));
        assert_eq!(
            l.action,
            Action::Publish {
                address: Some("r/a:1".into())
            }
        );

        let l = parse_call(&words("build terminal")).unwrap();
        assert_eq!((l.path, l.action), (None, Action::Terminal));
        assert!(parse_call(&words("build --src")).is_err());
        assert!(parse_call(&words("ci/pipeline.rs build dance")).is_err());
    }

    #[test]
    fn a_call_is_checked_against_the_declaration() {
        let functions = [FunctionDecl {
            name: "build".into(),
            doc: String::new(),
            args: vec![ArgDecl {
                name: "src".into(),
                kind: ArgKind::Directory,
                doc: String::new(),
                ..ArgDecl::default()
            }],
        }];
        let p = Path::new("ci.rs");
        let spec = call_spec(
            &parse_call(&words("build --src sub export --path out")).unwrap(),
            &functions,
            p,
            OLD,
        )
        .unwrap();
        let here = std::env::current_dir().unwrap();
        assert_eq!(spec.args["src"], here.join("sub").display().to_string());
        assert_eq!(
            spec.action,
            Action::Export {
                path: Some(here.join("out").display().to_string())
            }
        );
        let e = call_spec(
            &parse_call(&words("build --dst x")).unwrap(),
            &functions,
            p,
            OLD,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "build: unknown argument --dst");
        let e = call_spec(&parse_call(&words("test")).unwrap(), &functions, p, OLD).unwrap_err();
        assert!(e.to_string().contains("has no function \"test\""), "{e}");
    }

    #[test]
    fn a_listing_is_its_last_json_line() {
        let p = Path::new("ci.rs");
        let out = "noise\n{\"functions\": [{\"name\": \"f\", \"doc\": \"d\", \"args\": []}]}\n";
        assert_eq!(read_listing(p, out).unwrap().1[0].name, "f");
        let e = read_listing(p, "{\"functions\": null}\n").unwrap_err();
        assert!(e.to_string().contains("exposes no functions"), "{e}");
        let e = read_listing(p, "hello\n").unwrap_err();
        assert!(
            e.to_string().contains("did not describe its functions"),
            "{e}"
        );
        let e = read_listing(p, "{\"protocol\": 99, \"functions\": null}\n").unwrap_err();
        assert!(e.to_string().contains("speaks protocol 99"), "{e}");
    }

    #[test]
    fn a_directory_default_path_is_the_pipelines_not_the_callers() {
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join(".git")).unwrap();
        std::fs::create_dir_all(repo.path().join("ci")).unwrap();
        let pipeline = repo.path().join("ci/pipeline.rs");
        std::fs::write(&pipeline, "").unwrap();
        assert_eq!(default_path_in(&pipeline, "/").unwrap(), repo.path());
        assert_eq!(
            default_path_in(&pipeline, "/src").unwrap(),
            repo.path().join("src")
        );
        assert_eq!(
            default_path_in(&pipeline, "fixtures").unwrap(),
            repo.path().join("ci/fixtures")
        );
        // Outside a repository, "/" is the pipeline's directory.
        let bare = tempfile::tempdir().unwrap();
        let p = bare.path().join("pipeline.rs");
        assert_eq!(default_path_in(&p, "/").unwrap(), bare.path());

        let functions = [FunctionDecl {
            name: "build".into(),
            doc: String::new(),
            args: vec![ArgDecl {
                name: "source".into(),
                kind: ArgKind::Directory,
                default_path: Some("/".into()),
                ignore: vec!["target/".into()],
                ..ArgDecl::default()
            }],
        }];
        let spec = call_spec(
            &parse_call(&words("build")).unwrap(),
            &functions,
            &pipeline,
            OLD,
        )
        .unwrap();
        assert_eq!(spec.args["source"], repo.path().display().to_string());
        let spec = call_spec(
            &parse_call(&words("build --source sub")).unwrap(),
            &functions,
            &pipeline,
            OLD,
        )
        .unwrap();
        let here = std::env::current_dir().unwrap();
        assert_eq!(spec.args["source"], here.join("sub").display().to_string());
    }
}
