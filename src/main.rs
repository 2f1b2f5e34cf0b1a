//! rbuild: a programmable build and CI engine. Pipelines are Rust programs;
//! every step runs in a container on containerd and is cached under a hash
//! of its definition and the content of its inputs.

mod cli;
mod commands;
mod engine;
mod gc;
mod graph;
mod index;
mod key;
mod locks;
mod pipeline;
mod progress;
mod secrets;
mod session;
mod solver;
mod volumes;
mod worker;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RBUILD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Run {
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
                commands::run::run(&cli.global, path, shell, args).await
            }
            cli::Command::Functions { path } => commands::functions::list(&cli.global, path).await,
            cli::Command::Call { words } => commands::functions::call(&cli.global, words).await,
            cli::Command::Init { dir } => commands::init::init(&dir),
            cli::Command::Cache { command } => commands::cache::cache(&cli.global, command).await,
            cli::Command::History { limit } => commands::cache::history(&cli.global, limit),
            cli::Command::Engine { command } => {
                commands::engine::engine(&cli.global, command).await
            }
            cli::Command::Doctor { registries } => {
                commands::engine::doctor(&cli.global, registries).await
            }
            cli::Command::Completions { shell } => {
                use clap::CommandFactory;
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut cli::Cli::command(), "rbuild", &mut script);
                commands::out(String::from_utf8_lossy(&script).trim_end());
                Ok(0)
            }
        }
    });
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rbuild: {e:#}");
            1
        }
    };
    // Don't wait for stray background tasks (an idle session server).
    runtime.shutdown_background();
    std::process::exit(code);
}
