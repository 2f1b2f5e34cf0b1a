//! Benchmark pipeline: a chain of N trivial steps on one container.
//!
//! `bench/run.sh` runs it as `rbuild run bench/pipelines/scale.rs -- N`
//! (one compiled pipeline for every N). Step i is `echo i > /fi`, on the
//! result of step i-1. Step 1 also writes `BENCH_NONCE` into `/nonce`, so a
//! new nonce changes its output and every step after it misses too (early
//! cutoff would let them hit if step 1's changes were the same); the same
//! nonce again hits all N. It prints the last step's file and the nonce.

use rbuild_sdk as rb;

const IMAGE: &str = "127.0.0.1:5000/busybox:latest";

#[tokio::main]
async fn main() -> rb::Result<()> {
    let n: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(n)) if n >= 1 => n,
        _ => {
            eprintln!("usage: rbuild run bench/pipelines/scale.rs -- N (N >= 1 steps)");
            std::process::exit(2);
        }
    };
    let nonce = std::env::var("BENCH_NONCE").unwrap_or_default();
    let client = rb::connect().await?;

    let mut container = client.container().from(IMAGE);
    for i in 1..=n {
        let cmd = if i == 1 {
            format!("echo {nonce} > /nonce && echo 1 > /f1")
        } else {
            format!("echo {i} > /f{i}")
        };
        container = container.with_exec(["sh", "-c", cmd.as_str()]);
    }
    let last = container.file(format!("/f{n}")).contents().await?;
    let nonce_file = container.file("/nonce").contents().await?;
    print!("f{n} {last}nonce {nonce_file}");
    Ok(())
}
