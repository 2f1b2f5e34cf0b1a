//! `rbuild functions [PATH]` and `rbuild call [PATH] FN [--arg value]... [ACTION]`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::cli::GlobalOpts;
use crate::engine::{EngineConfig, run_pipeline};
use crate::pipeline;

/// The pipeline to use when none is named.
pub fn default_pipeline() -> Result<PathBuf> {
    ["ci/pipeline.rs", "ci", "pipeline.rs"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow!("no pipeline here (looked for ci/pipeline.rs, ci/, pipeline.rs): name one, or create one with `rbuild init`")
        })
}

/// What the pipeline says about its functions.
async fn describe(global: &GlobalOpts, path: &Path) -> Result<Value> {
    let config = EngineConfig::from(global);
    let built = {
        let (path, cache) = (path.to_path_buf(), config.cache_dir.clone());
        tokio::task::spawn_blocking(move || pipeline::build(&path, &cache)).await??
    };
    let out = tokio::process::Command::new(&built.executable)
        .env("RBUILD_FUNCTIONS_LIST", "1")
        .output()
        .await
        .with_context(|| format!("run pipeline {}", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let doc: Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| anyhow!("pipeline {} did not describe its functions", path.display()))?;
    if doc["functions"].is_null() {
        bail!(
            "pipeline {} exposes no functions: declare them with rbuild_sdk::Functions (see `rbuild init`)",
            path.display()
        );
    }
    Ok(doc)
}

pub async fn list(global: &GlobalOpts, path: Option<PathBuf>) -> Result<i32> {
    let path = path.map_or_else(default_pipeline, Ok)?;
    let doc = describe(global, &path).await?;
    for f in doc["functions"].as_array().into_iter().flatten() {
        super::out(format_args!(
            "{}  {}",
            f["name"].as_str().unwrap_or(""),
            f["doc"].as_str().unwrap_or("")
        ));
        for a in f["args"].as_array().into_iter().flatten() {
            let default = match a["default"].as_str() {
                Some(d) => format!(" (default: {d})"),
                None => " (required)".into(),
            };
            super::out(format_args!(
                "    --{} <{}>{default}  {}",
                a["name"].as_str().unwrap_or(""),
                a["kind"].as_str().unwrap_or(""),
                a["doc"].as_str().unwrap_or("")
            ));
        }
    }
    Ok(0)
}

/// A parsed `rbuild call` command line.
#[derive(Debug, PartialEq)]
pub struct CallLine {
    pub path: Option<PathBuf>,
    pub function: String,
    pub args: Vec<(String, String)>,
    pub action: Value,
}

const ACTIONS: [&str; 5] = ["print", "stdout", "export", "publish", "terminal"];

/// `[PATH] FN [--name value | --name=value]... [ACTION [--flag value]...]`
pub fn parse_call(words: &[String]) -> Result<CallLine> {
    let mut i = 0;
    let positionals: Vec<&String> = words.iter().take_while(|w| !w.starts_with("--")).collect();
    let (path, function) = match positionals.as_slice() {
        [] => bail!(
            "usage: rbuild call [PATH] FUNCTION [--arg value]... [print | export --path P | publish --address A | terminal]"
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
    let mut action = json!({"kind": "print"});
    if let Some(word) = words.get(i) {
        if !ACTIONS.contains(&word.as_str()) {
            bail!(
                "unknown action {word:?}: use print, export --path P, publish --address A or terminal"
            );
        }
        i += 1;
        let mut opts = Vec::new();
        flags(&mut i, &mut opts)?;
        let kind = if word == "stdout" {
            "print"
        } else {
            word.as_str()
        };
        action = json!({"kind": kind});
        for (k, v) in opts {
            let v = if k == "path" {
                std::path::absolute(&v)?.display().to_string()
            } else {
                v
            };
            action[k] = Value::String(v);
        }
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

pub async fn call(global: &GlobalOpts, words: Vec<String>) -> Result<i32> {
    let line = parse_call(&words)?;
    let path = line.path.clone().map_or_else(default_pipeline, Ok)?;
    // Arguments are checked against the declaration before anything runs.
    let doc = describe(global, &path).await?;
    let f = doc["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["name"] == line.function.as_str())
        .ok_or_else(|| {
            anyhow!(
                "pipeline {} has no function {:?} (see `rbuild functions`)",
                path.display(),
                line.function
            )
        })?;
    let mut args = serde_json::Map::new();
    for (k, v) in &line.args {
        let decl = f["args"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["name"] == k.as_str())
            .ok_or_else(|| anyhow!("{}: unknown argument --{k}", line.function))?;
        // Host paths are the caller's, relative to where rbuild was started.
        let v = match decl["kind"].as_str() {
            Some("directory" | "file") => std::path::absolute(v)?.display().to_string(),
            _ => v.clone(),
        };
        args.insert(k.clone(), Value::String(v));
    }
    let spec = json!({"function": line.function, "args": args, "action": line.action});
    run_pipeline(
        &EngineConfig::from(global),
        &path,
        &[],
        &[("RBUILD_CALL", spec.to_string())],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
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
        assert_eq!(l.action, json!({"kind": "print"}));

        let l = parse_call(&words(
            "ci/pipeline.rs build --src x publish --address r/a:1",
        ))
        .unwrap();
        assert_eq!(l.path, Some(PathBuf::from("ci/pipeline.rs")));
        assert_eq!(l.action, json!({"kind": "publish", "address": "r/a:1"}));

        let l = parse_call(&words("build terminal")).unwrap();
        assert_eq!((l.path, l.action), (None, json!({"kind": "terminal"})));
        assert!(parse_call(&words("build --src")).is_err());
        assert!(parse_call(&words("ci/pipeline.rs build dance")).is_err());
    }
}
