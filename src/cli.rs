//! Command-line definitions (clap). No logic here: each subcommand is
//! handled by a short function in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "rbuild",
    version,
    about = "Pipelines as Rust code, every step in a container on containerd, cached by content."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalOpts {
    /// State root: the cache index and rbuild's working files.
    #[arg(
        long,
        global = true,
        env = "RBUILD_ROOT",
        default_value = "/var/lib/rbuild"
    )]
    pub root: PathBuf,
    /// Where compiled pipelines and their cargo target directory live [default: ROOT/cache].
    #[arg(long, global = true, env = "RBUILD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// containerd's gRPC socket.
    #[arg(
        long,
        global = true,
        env = "RBUILD_CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub address: PathBuf,
    /// containerd namespace for rbuild's images, snapshots and containers.
    #[arg(
        long,
        global = true,
        env = "RBUILD_NAMESPACE",
        default_value = "rbuild"
    )]
    pub namespace: String,
    /// How many steps may run at once [default: the number of CPUs, at least 2].
    #[arg(long, short = 'j', global = true, env = "RBUILD_JOBS")]
    pub jobs: Option<usize>,
    /// A registry (host:port) to speak plain HTTP to; loopback registries always are.
    #[arg(
        long = "insecure-registry",
        global = true,
        env = "RBUILD_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build and run a pipeline: a .rs file, or a directory with a Cargo.toml.
    Run {
        /// The pipeline.
        path: PathBuf,
        /// Arguments passed to the pipeline (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}
