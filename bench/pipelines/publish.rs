//! Benchmark pipeline: publish an image with a large base and one small file.
//!
//! `bench/run.sh` runs it as
//! `rbuild run bench/pipelines/publish.rs -- BASE ADDRESS` with a new
//! `BENCH_NONCE` each time: the image is BASE (about 200 MB, already pulled
//! into the namespace) plus `/app/version` holding the nonce, pushed to
//! ADDRESS (`registry/repo:tag`). Prints the pushed `ADDRESS@sha256:…`.

use rbuild_sdk as rb;

#[tokio::main]
async fn main() -> rb::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, address] = args.as_slice() else {
        eprintln!("usage: rbuild run bench/pipelines/publish.rs -- BASE_IMAGE ADDRESS");
        std::process::exit(2);
    };
    let nonce = std::env::var("BENCH_NONCE").unwrap_or_default();
    let client = rb::connect().await?;
    let reference = client
        .container()
        .from(base.as_str())
        .with_new_file("/app/version", format!("{nonce}\n"))
        .publish(address.as_str())
        .await?;
    println!("{reference}");
    Ok(())
}
