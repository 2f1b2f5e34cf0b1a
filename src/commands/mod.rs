//! One module per subcommand: parse nothing, decide nothing, call the engine.
//!
//! This module picks the subcommand and turns the command line into the
//! engine's terms (its config, its progress mode): clap's types stop here.

pub mod cache;
pub mod completions;
pub mod engine;
pub mod functions;
pub mod init;
pub mod lock;
pub mod run;

use anyhow::Result;

use crate::cli::{Cli, Command, GlobalOpts, LockCommand, ProgressMode};
use crate::engine::EngineConfig;
use crate::progress::Mode;

/// Runs the subcommand; the exit code to leave with.
pub async fn dispatch(cli: Cli) -> Result<i32> {
    let global = &cli.global;
    crate::progress::set_json(Mode::from(global.progress).resolve() == Mode::Json);
    match cli.command {
        Command::Run {
            path,
            interactive,
            interactive_command,
            args,
        } => {
            let shell = interactive.then(|| {
                interactive_command
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            });
            run::run(global, path, shell, args).await
        }
        Command::Functions { path } => functions::list(global, path).await,
        Command::Call { words } => functions::call(global, words).await,
        Command::Init { dir } => init::init(&dir),
        Command::Cache { command } => cache::cache(global, command).await,
        Command::History { limit } => cache::history(global, limit),
        Command::Explain { run, step } => cache::explain(global, run, step),
        Command::Report { run, output } => cache::report(global, run, &output),
        Command::Lock {
            command: LockCommand::Update { path },
        } => lock::update(global, path).await,
        Command::Engine { command } => engine::engine(global, command).await,
        Command::Doctor { registries } => engine::doctor(global, registries).await,
        Command::Completions { shell } => completions::completions(shell),
    }
}

/// The engine's config from the global options, with the defaults that
/// depend on this machine filled in.
impl From<&GlobalOpts> for EngineConfig {
    fn from(g: &GlobalOpts) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        EngineConfig {
            root: g.root.clone(),
            cache_dir: g.cache_dir.clone().unwrap_or_else(|| g.root.join("cache")),
            address: g.address.clone(),
            namespace: g.namespace.clone(),
            jobs: g.jobs.unwrap_or((cores * 4).max(8)),
            insecure_registries: g.insecure_registries.clone(),
            progress: Mode::from(g.progress).resolve(),
            debug_shell: None,
            ca_certs: g.ca_certs.clone(),
            locked: g.locked,
            cache_from: g.cache_from.clone(),
            cache_to: g.cache_to.clone(),
            expect_cached: g.expect_cached,
        }
    }
}

impl From<ProgressMode> for Mode {
    fn from(m: ProgressMode) -> Self {
        match m {
            ProgressMode::Auto => Mode::Auto,
            ProgressMode::Tty => Mode::Tty,
            ProgressMode::Plain => Mode::Plain,
            ProgressMode::Json => Mode::Json,
        }
    }
}

/// Prints a line of a command's output; a closed pipe (`| head`) ends the
/// command quietly instead of failing.
pub fn out(line: impl std::fmt::Display) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout(), "{line}")
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}
