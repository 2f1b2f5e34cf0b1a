//! `rbuild cache ls|du|prune|verify|volumes`, `rbuild history`, `explain` and `report`.

use anyhow::Result;

use super::out;
use crate::cache::{self, PruneRequest};
use crate::cli::{CacheCommand, GlobalOpts, VolumesCommand};
use crate::engine::EngineConfig;

pub async fn cache(global: &GlobalOpts, command: CacheCommand) -> Result<i32> {
    let config = EngineConfig::from(global);
    match command {
        CacheCommand::Ls => out(cache::entries(&config)?),
        CacheCommand::Du => out(cache::usage(&config)?),
        CacheCommand::Prune {
            remote: Some(repo),
            keep_duration,
            ..
        } => {
            let repo =
                crate::remote::parse_repository("--remote", &repo).map_err(anyhow::Error::msg)?;
            let keep = keep_duration.unwrap_or_default();
            let keep = humantime::parse_duration(&keep).map_err(|e| {
                anyhow::anyhow!("--keep-duration {keep:?}: {e} (write it as 2h, 7d, 30min)")
            })?;
            let registry = registry(&config);
            let cutoff = std::time::SystemTime::now() - keep;
            out(crate::remote::prune(&registry, &repo, cutoff).await?);
        }
        CacheCommand::Prune {
            keep_storage,
            keep_duration,
            all,
            remote: None,
        } => {
            let request = PruneRequest {
                keep_storage: keep_storage.as_deref(),
                keep_duration: keep_duration.as_deref(),
                all,
            };
            out(cache::prune(&config, request).await?);
        }
        CacheCommand::Volumes { command: None } => out(cache::volumes(&config)),
        CacheCommand::Volumes {
            command: Some(VolumesCommand::Rm { name }),
        } => {
            let size = crate::volumes::Volumes::new(&config.root)
                .remove(&name)
                .map_err(|e| anyhow::anyhow!(e))?;
            out(format_args!(
                "removed cache volume {name:?} ({})",
                crate::gc::human_bytes(size)
            ));
        }
        CacheCommand::Volumes {
            command: Some(VolumesCommand::Push { name, repo }),
        } => out(volume_transfer(&config, &name, &repo, true).await?),
        CacheCommand::Volumes {
            command: Some(VolumesCommand::Pull { name, repo }),
        } => out(volume_transfer(&config, &name, &repo, false).await?),
        CacheCommand::Verify => {
            let report = cache::verify(&config).await?;
            let code = if report.is_clean() { 0 } else { 1 };
            out(report);
            return Ok(code);
        }
    }
    Ok(0)
}

/// `cache volumes push|pull NAME REPO`.
async fn volume_transfer(
    config: &EngineConfig,
    name: &str,
    repo: &str,
    push: bool,
) -> Result<String> {
    let repo = crate::remote::parse_repository("REPO", repo).map_err(anyhow::Error::msg)?;
    let registry = registry(config);
    let volumes = crate::volumes::Volumes::new(&config.root);
    let done = if push {
        crate::remote::volumes::push(&registry, &volumes, name, &repo).await
    } else {
        crate::remote::volumes::pull(&registry, &volumes, name, &repo).await
    };
    done.map_err(anyhow::Error::msg)
}

/// A registry client with the user's settings, for commands outside a run.
fn registry(config: &EngineConfig) -> rbuild_snapshotter::Registry {
    rbuild_snapshotter::Registry::new(rbuild_snapshotter::RegistryOptions {
        insecure_hosts: config.insecure_registries.clone(),
        ..Default::default()
    })
}

pub fn history(global: &GlobalOpts, limit: usize) -> Result<i32> {
    out(cache::history(&EngineConfig::from(global), limit)?);
    Ok(0)
}

/// `rbuild explain [RUN] [STEP]`.
pub fn explain(global: &GlobalOpts, run: Option<String>, step: Option<String>) -> Result<i32> {
    let index = cache::open_index(&EngineConfig::from(global))?;
    let run = crate::report::load(&index, run.as_deref())?;
    out(crate::report::explain(&index, &run, step.as_deref())?);
    Ok(0)
}

/// `rbuild report [RUN] -o FILE`.
pub fn report(global: &GlobalOpts, run: Option<String>, output: &std::path::Path) -> Result<i32> {
    let index = cache::open_index(&EngineConfig::from(global))?;
    crate::progress::say(&crate::report::write(&index, run.as_deref(), output)?);
    Ok(0)
}
