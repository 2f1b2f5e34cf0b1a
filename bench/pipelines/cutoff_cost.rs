//! Benchmark pipeline: one step that writes new files and always misses.
//!
//! `bench/run.sh` runs it with a new `BENCH_NONCE` every time (the nonce is
//! in the step's command, so the step never hits the cache) and compares
//! `RBUILD_CHANGES_DIGEST_MAX_BYTES` at its default (rbuild hashes the step's
//! changed files after it ran, for early cutoff) with `=0` (off).
//! The step writes `BENCH_CUTOFF_MB` MiB of random bytes to /out.bin
//! (default 50) and `BENCH_CUTOFF_FILES` small files under /small (default
//! 1000). Prints what it wrote, as seen by `wc`.

use rbuild_sdk as rb;

const IMAGE: &str = "127.0.0.1:5000/busybox:latest";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> rb::Result<()> {
    let nonce = std::env::var("BENCH_NONCE").unwrap_or_default();
    let mb = env_num("BENCH_CUTOFF_MB", 50);
    let files = env_num("BENCH_CUTOFF_FILES", 1000);
    let client = rb::connect().await?;

    let script = format!(
        "set -e; echo {nonce} >/dev/null; \
         head -c {mb}m /dev/urandom > /out.bin; \
         mkdir /small; i=0; \
         while [ $i -lt {files} ]; do echo \"$i {nonce}\" > /small/f$i; i=$((i+1)); done; \
         echo \"out.bin $(wc -c < /out.bin) bytes, $(ls /small | wc -l) small files\""
    );
    let out = client
        .container()
        .from(IMAGE)
        .with_exec(["sh", "-c", script.as_str()])
        .stdout()
        .await?;
    print!("{out}");
    Ok(())
}
