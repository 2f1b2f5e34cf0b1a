//! `rbuild cache ls|du|prune` and `rbuild history`.

use std::path::Path;

use anyhow::{Result, bail};

use crate::cli::{CacheCommand, GlobalOpts};
use crate::engine::{Engine, EngineConfig};
use crate::gc::{self, Policy, human_bytes, now_secs};
use crate::index::Index;

fn age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn size(n: i64) -> String {
    if n < 0 {
        "?".into()
    } else {
        human_bytes(n as u64)
    }
}

/// Bytes under a directory (files only; symlinks not followed).
fn du(dir: &Path) -> u64 {
    ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .build()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

pub async fn cache(global: &GlobalOpts, command: CacheCommand) -> Result<i32> {
    let config = EngineConfig::from(global);
    let index = Index::open(&config.root.join("index.db"))?;
    match command {
        CacheCommand::Ls => {
            let now = now_secs();
            super::out(format_args!(
                "{:<12}  {:>9}  {:>6}  {:>9}  WHAT",
                "KEY", "SIZE", "AGE", "LAST USE"
            ));
            for e in index.entries()? {
                super::out(format_args!(
                    "{:<12}  {:>9}  {:>6}  {:>9}  {}",
                    &e.key[..12],
                    size(e.size),
                    age(now - e.created),
                    age(now - e.last_used),
                    e.description
                ));
            }
            Ok(0)
        }
        CacheCommand::Du => {
            let entries = index.entries()?;
            let steps: u64 = entries.iter().map(|e| e.size.max(0) as u64).sum();
            super::out(format_args!(
                "steps              {:>6} entries  {:>10}",
                entries.len(),
                human_bytes(steps)
            ));
            super::out(format_args!(
                "cache volumes                      {:>10}",
                human_bytes(du(&config.root.join("volumes")))
            ));
            super::out(format_args!(
                "compiled pipelines                 {:>10}",
                human_bytes(du(&config.cache_dir))
            ));
            Ok(0)
        }
        CacheCommand::Prune {
            keep_storage,
            keep_duration,
            all,
        } => {
            let policy = Policy {
                keep_storage: keep_storage.as_deref().map(gc::parse_size).transpose()?,
                keep_duration: keep_duration
                    .as_deref()
                    .map(gc::parse_duration)
                    .transpose()?,
                all,
            };
            if policy == Policy::default() {
                bail!("say what to prune: --keep-storage SIZE, --keep-duration DURATION or --all");
            }
            drop(index);
            let engine = Engine::start(&config).await?;
            let pruned =
                gc::prune(&engine.index, engine.solver.worker(), &config.root, &policy).await?;
            super::out(format_args!(
                "removed {} entries ({}){}",
                pruned.entries,
                human_bytes(pruned.bytes),
                if all {
                    format!(", {} cache volumes", pruned.volumes)
                } else {
                    String::new()
                }
            ));
            Ok(0)
        }
    }
}

pub fn history(global: &GlobalOpts, limit: usize) -> Result<i32> {
    let config = EngineConfig::from(global);
    let index = Index::open(&config.root.join("index.db"))?;
    let now = now_secs();
    super::out(format_args!(
        "{:>8}  {:>9}  {:>5}  {:>6}  {:>4}  PIPELINE",
        "WHEN", "DURATION", "RUN", "CACHED", "EXIT"
    ));
    for r in index.runs(limit)? {
        super::out(format_args!(
            "{:>8}  {:>8.2}s  {:>5}  {:>6}  {:>4}  {}",
            format!("{} ago", age(now - r.started)),
            r.duration_ms as f64 / 1000.0,
            r.steps_run,
            r.steps_cached,
            r.exit_code,
            r.pipeline
        ));
    }
    Ok(0)
}
