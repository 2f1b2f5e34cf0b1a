//! Benchmark pipeline: pull an image and run one trivial step on it.
//!
//! `bench/run.sh` runs it as `rbuild run bench/pipelines/pull.rs -- IMAGE`
//! in a fresh namespace with a fresh state root, after removing every copy of
//! the image's blobs from containerd, so the pull downloads and unpacks all
//! of it. The step (`true`) makes the pull happen; its own cost is the step's
//! `DONE` line, apart from the pull's.

use rbuild_sdk as rb;

#[tokio::main]
async fn main() -> rb::Result<()> {
    let Some(image) = std::env::args().nth(1) else {
        eprintln!("usage: rbuild run bench/pipelines/pull.rs -- IMAGE");
        std::process::exit(2);
    };
    let client = rb::connect().await?;
    let code = client
        .container()
        .from(image)
        .with_exec(["true"])
        .exit_code()
        .await?;
    println!("exit code {code}");
    Ok(())
}
