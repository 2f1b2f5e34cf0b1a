//! Bench "branches": one container that copies in the outputs of
//! `BENCH_BRANCHES` (default 2) independent branches — each a `sleep 1`
//! step on the same base — and then reads them, with no join in the
//! pipeline: the engine has to see that the branches are independent.
//! `BENCH_NONCE` makes every step miss. With `BENCH_BRANCHES=1` it is the
//! longest branch alone, the bench's yardstick.

use rbuild_sdk as rb;

#[tokio::main]
async fn main() -> rb::Result<()> {
    let nonce = std::env::var("BENCH_NONCE").unwrap_or_default();
    let n: usize = std::env::var("BENCH_BRANCHES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    let client = rb::connect().await?;
    let base = client
        .container()
        .from("127.0.0.1:5000/busybox:latest")
        .with_env_variable("BENCH_NONCE", &nonce);
    let mut all = base.clone();
    for i in 0..n {
        let branch = base.with_exec(["sh", "-c", &format!("sleep 1; echo branch {i} $BENCH_NONCE > /out")]);
        all = all.with_file(format!("/in/b{i}"), branch.file("/out"));
    }
    print!("{}", all.with_exec(["sh", "-c", "cat /in/*"]).stdout().await?);
    Ok(())
}
