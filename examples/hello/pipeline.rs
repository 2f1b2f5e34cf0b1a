//! The demo pipeline: a few steps on the busybox test image.
//!
//! Run it with `rbuild run examples/hello/pipeline.rs`; run it again and
//! every step is cached — it prints the same output, random bytes included,
//! without starting a single container.
//!
//! It declares the rbuild API it was written for, so an upgrade of rbuild
//! does not change what it does (README: API versions):
//!
//! ```cargo
//! [package.metadata.rbuild]
//! api = "0.3"
//! ```

use rbuild_sdk as rb;

#[tokio::main]
async fn main() -> rb::Result<()> {
    let image = std::env::var("RBUILD_DEMO_IMAGE")
        .unwrap_or_else(|_| "127.0.0.1:5000/busybox:latest".to_string());
    let client = rb::connect().await?;

    let base = client
        .container()
        .from(image)
        .with_workdir("/work")
        .with_env_variable("GREETING", "hello");

    // One step writes a file; two independent steps read it, at the same time.
    let written = base.with_exec(["sh", "-c", "echo \"$GREETING from rbuild\" > greeting.txt"]);
    let (greeting, listing) = tokio::join!(
        written.with_exec(["cat", "greeting.txt"]).stdout(),
        written.with_exec(["sh", "-c", "ls -l greeting.txt | awk '{print $1, $5, $9}'"]).stdout(),
    );
    print!("{}", greeting?);
    print!("{}", listing?);

    // Random bytes: identical on every run after the first, because the step is cached.
    let random = base
        .with_exec(["sh", "-c", "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"])
        .stdout()
        .await?;
    println!("random bytes: {random}");
    Ok(())
}
