//! `rbuild run PATH [-- ARGS]`

use std::path::PathBuf;

use crate::cli::GlobalOpts;
use crate::engine::{EngineConfig, run_pipeline};

pub async fn run(global: &GlobalOpts, path: PathBuf, args: Vec<String>) -> anyhow::Result<i32> {
    run_pipeline(&EngineConfig::from(global), &path, &args).await
}
