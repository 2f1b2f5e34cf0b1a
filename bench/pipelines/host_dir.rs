//! Benchmark pipeline: import a host directory and count its files.
//!
//! `bench/run.sh` runs it as `rbuild run bench/pipelines/host_dir.rs -- TREE`
//! on a generated tree of 20,000 files (240 MB). The tree's content is the
//! only input: an unchanged tree hits both steps (after a scan that the stat
//! cache keeps from re-reading files), one changed file re-runs the copy and
//! the `find` step. Prints the number of files seen in the container.

use rbuild_sdk::{self as rb, DirOpts};

const IMAGE: &str = "127.0.0.1:5000/busybox:latest";

#[tokio::main]
async fn main() -> rb::Result<()> {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: rbuild run bench/pipelines/host_dir.rs -- /absolute/path/to/tree");
        std::process::exit(2);
    };
    let client = rb::connect().await?;
    let dir = client.host().directory(path, DirOpts::default());
    let out = client
        .container()
        .from(IMAGE)
        .with_directory("/src", &dir)
        .with_exec(["sh", "-c", "find /src -type f | wc -l"])
        .stdout()
        .await?;
    print!("{out}");
    Ok(())
}
