//! Benchmark pipeline: four independent steps of `sleep 1`, run at once.
//!
//! `bench/run.sh` runs it with `rbuild run`. Each branch is its own
//! container on busybox; the four `stdout()` calls are awaited together
//! (`tokio::try_join!`), so the engine gets all four steps at once and runs
//! them in parallel: ideally the whole run takes about one second. Each
//! step's command carries `BENCH_NONCE`, so a new nonce makes all four miss.

use rbuild_sdk as rb;

const IMAGE: &str = "127.0.0.1:5000/busybox:latest";

#[tokio::main]
async fn main() -> rb::Result<()> {
    let nonce = std::env::var("BENCH_NONCE").unwrap_or_default();
    let client = rb::connect().await?;

    let base = client.container().from(IMAGE);
    let branch = |n: usize| {
        base.with_exec(["sh", "-c", &format!("sleep 1 && echo branch {n} {nonce}")])
            .stdout()
    };
    let (a, b, c, d) = tokio::try_join!(branch(1), branch(2), branch(3), branch(4))?;
    print!("{a}{b}{c}{d}");
    Ok(())
}
