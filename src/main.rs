//! rbuild: a programmable build and CI engine. Pipelines are Rust programs;
//! every step runs in a container on containerd and is cached under a hash
//! of its definition and the content of its inputs.

mod api;
mod cache;
mod cli;
mod commands;
mod consistency;
mod daemon;
mod doctor;
mod engine;
mod explain;
mod functions;
mod gc;
mod graph;
mod index;
mod key;
mod lock;
mod locks;
mod modules;
mod otlp;
mod output;
mod pipeline;
mod progress;
mod remote;
mod report;
mod secrets;
mod session;
mod solver;
mod timeline;
mod volumes;
mod worker;

fn main() {
    let cli = cli::parse();
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
    let result = runtime.block_on(commands::dispatch(cli));
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            progress::say_as("error", "message", &format!("rbuild: {e:#}"));
            1
        }
    };
    // Don't wait for stray background tasks (an idle session server).
    runtime.shutdown_background();
    std::process::exit(code);
}
