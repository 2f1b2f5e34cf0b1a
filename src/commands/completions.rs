//! `rbuild completions SHELL`: the shell's completion script, from the clap definitions.

use anyhow::Result;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

pub fn completions(shell: Shell) -> Result<i32> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "rbuild", &mut script);
    super::out(String::from_utf8_lossy(&script).trim_end());
    Ok(0)
}
