//! Benchmark pipeline: a chain of N trivial steps on one container.
//!
//! `bench/run.sh` runs it as `rbuild run bench/pipelines/scale.rs -- N`
//! (one compiled pipeline for every N). Step i is `echo i > /fi`, on the
//! result of step i-1. Step 1 also writes `BENCH_NONCE` into `/nonce`, so a
//! new nonce changes its output and every step after it misses too (early
//! cutoff would let them hit if step 1's changes were the same); the same
//! nonce again hits all N. It prints the last step's file and the nonce;
//! with a second argument `stdout`, each step also prints `fI` and the run
//! prints the last step's stdout (the remote scenario: a fresh runner's
//! output then needs no step's files).

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
    let stdout_only = std::env::args().nth(2).as_deref() == Some("stdout");
    let nonce = std::env::var("BENCH_NONCE").unwrap_or_default();
    let client = rb::connect().await?;

    let mut container = client.container().from(IMAGE);
    for i in 1..=n {
        let cmd = if i == 1 {
            format!("echo {nonce} > /nonce && echo 1 > /f1")
        } else {
            format!("echo {i} > /f{i}")
        };
        let cmd = if stdout_only {
            format!("{cmd} && echo f{i}")
        } else {
            cmd
        };
        container = container.with_exec(["sh", "-c", cmd.as_str()]);
    }
    if stdout_only {
        print!("{}", container.stdout().await?);
        return Ok(());
    }
    let last = container.file(format!("/f{n}")).contents().await?;
    let nonce_file = container.file("/nonce").contents().await?;
    print!("f{n} {last}nonce {nonce_file}");
    Ok(())
}
