//! `rbuild engine status|start|stop` and `rbuild doctor`.

use anyhow::Result;

use super::out;
use crate::cli::{EngineCommand, GlobalOpts};
use crate::engine::EngineConfig;
use crate::{daemon, doctor};

pub async fn engine(global: &GlobalOpts, command: EngineCommand) -> Result<i32> {
    let config = EngineConfig::from(global);
    match command {
        EngineCommand::Status => out(daemon::status(&config).await),
        EngineCommand::Start => out(daemon::start(&config).await?),
        EngineCommand::Stop => out(daemon::stop(&config).await?),
    }
    Ok(0)
}

pub async fn doctor(global: &GlobalOpts, registries: Vec<String>) -> Result<i32> {
    let config = EngineConfig::from(global);
    let healthy = doctor::examine(&config, &registries, |check| out(check)).await;
    Ok(if healthy { 0 } else { 1 })
}
