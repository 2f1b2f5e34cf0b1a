//! Benchmark pipeline: ten trivial steps, each on the previous one's result.
//!
//! `bench/run.sh` runs it with `rbuild run`. The first step's command carries
//! `BENCH_NONCE`, so a new nonce changes all ten cache keys (a cold run that
//! reuses the compiled pipeline) and the same nonce again hits all ten.
//! `BENCH_LAST` is appended to the last step's command (the remote
//! scenario's one-line change; empty elsewhere).

use rbuild_sdk as rb;

const IMAGE: &str = "127.0.0.1:5000/busybox:latest";
const STEPS: usize = 10;

#[tokio::main]
async fn main() -> rb::Result<()> {
    let nonce = std::env::var("BENCH_NONCE").unwrap_or_default();
    let last = std::env::var("BENCH_LAST").unwrap_or_default();
    let client = rb::connect().await?;

    let mut container = client.container().from(IMAGE);
    for n in 1..=STEPS {
        let cmd = if n == 1 {
            // Into a file: a step whose changes differ, so that the steps
            // after it miss too (with identical changes, early cutoff would
            // let them hit).
            format!("echo step {n} {nonce} > /nonce")
        } else if n == STEPS {
            format!("echo step {n}{last}")
        } else {
            format!("echo step {n}")
        };
        container = container.with_exec(["sh", "-c", cmd.as_str()]);
    }
    print!("{}", container.stdout().await?);
    Ok(())
}
