//! `rbuild run PATH [-- ARGS]`

use std::path::PathBuf;

use crate::cli::GlobalOpts;
use crate::engine::{EngineConfig, run_pipeline};

pub async fn run(
    global: &GlobalOpts,
    path: PathBuf,
    debug_shell: Option<Vec<String>>,
    args: Vec<String>,
) -> anyhow::Result<i32> {
    let config = EngineConfig {
        debug_shell,
        ..EngineConfig::from(global)
    };
    run_pipeline(&config, &path, &args, &[]).await
}
