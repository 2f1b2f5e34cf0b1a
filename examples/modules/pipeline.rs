//! A pipeline that uses the Rust module next to it (./rust) for a project:
//! the module builds and tests it, the pipeline runs what was built.
//!
//!   rbuild run examples/modules/pipeline.rs [-- PATH_TO_RUST_PROJECT]
//!
//! ```cargo
//! [package.metadata.rbuild]
//! api = "0.2"
//! ```

use rbuild_sdk as rb;

#[tokio::main]
async fn main() -> rb::Result<()> {
    let project = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fixtures/rust-project".to_string());
    let client = rb::connect().await?;
    let source = client.host().directory(&project, Default::default());
    // Relative to this file's directory.
    let rust = client.module("rust");

    let built = rust
        .call("build")
        .arg("source", &source)
        .arg("bin", "hello-deps")
        .container();
    let tested = rust.call("test").arg("source", &source).container();
    let (tests, run) = tokio::join!(tested.stdout(), built.with_exec(["hello-deps"]).stdout());
    for line in tests?.lines().filter(|l| !l.trim().is_empty()) {
        println!("test  | {line}");
    }
    print!("run   | {}", run?);
    Ok(())
}
