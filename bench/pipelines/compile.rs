//! Benchmark pipeline: what `rbuild run` costs to compile a pipeline.
//!
//! `bench/run.sh` copies this file to a work directory and runs the copy:
//! once with a new, empty `RBUILD_CACHE_DIR` (cargo builds the SDK and its
//! dependencies, then this file), after a one-line edit (the `EDIT` line
//! below, rewritten each time: only this crate recompiles), and unchanged
//! (rbuild finds the executable it built and does not start cargo). Its one
//! step is cached after the warm-up, so the runs time the compilation, not
//! the work.

use rbuild_sdk as rb;

const IMAGE: &str = "127.0.0.1:5000/busybox:latest";
const EDIT: &str = "original";

#[tokio::main]
async fn main() -> rb::Result<()> {
    let client = rb::connect().await?;
    let out = client
        .container()
        .from(IMAGE)
        .with_exec(["echo", "compile bench"])
        .stdout()
        .await?;
    println!("{out}edit {EDIT}");
    Ok(())
}
