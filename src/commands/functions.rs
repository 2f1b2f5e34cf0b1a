//! `rbuild functions [PATH]` and `rbuild call [PATH] FN [--arg value]... [ACTION]`.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use rbuild_sdk::wire;

use crate::cli::GlobalOpts;
use crate::engine::{EngineConfig, run_pipeline};
use crate::functions;

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

pub async fn list(global: &GlobalOpts, path: Option<PathBuf>) -> Result<i32> {
    let path = path.map_or_else(default_pipeline, Ok)?;
    let described = functions::describe(&EngineConfig::from(global), &path).await?;
    let api = described.api;
    for f in described.functions {
        let name = functions::shown(&f.name, api);
        super::out(format_args!("{name}  {}", f.doc));
        for a in f.args {
            let default = match (&a.default, &a.default_path) {
                (Some(d), _) => format!(" (default: {d})"),
                (None, Some(p)) => format!(
                    " (default: {})",
                    functions::default_path_in(&path, p)?.display()
                ),
                (None, None) => " (required)".into(),
            };
            let mut how = Vec::new();
            if !a.ignore.is_empty() {
                how.push(format!("ignores {}", a.ignore.join(", ")));
            }
            if a.gitignore {
                how.push("honours .gitignore".to_string());
            }
            let how = if how.is_empty() {
                String::new()
            } else {
                format!(" [{}]", how.join("; "))
            };
            super::out(format_args!(
                "    --{} <{}>{default}{how}  {}",
                functions::shown(&a.name, api),
                a.kind.as_str(),
                a.doc
            ));
        }
    }
    Ok(0)
}

pub async fn call(global: &GlobalOpts, words: Vec<String>) -> Result<i32> {
    let (flags, words) = functions::call_flags(words)?;
    let line = functions::parse_call(&words)?;
    let path = line.path.clone().map_or_else(default_pipeline, Ok)?;
    let mut config = EngineConfig::from(global);
    config.debug_shell = flags.shell;
    config.cache_from.extend(flags.cache_from);
    if flags.cache_to.is_some() {
        config.cache_to = flags.cache_to;
    }
    config.expect_cached |= flags.expect_cached;
    // Arguments are checked against the declaration before anything runs.
    let declared = functions::describe(&config, &path).await?;
    let spec = functions::call_spec(&line, &declared.functions, &path, declared.api)?;
    let spec = serde_json::to_string(&spec)?;
    run_pipeline(&config, &path, &[], &[(wire::CALL_ENV, spec)]).await
}
