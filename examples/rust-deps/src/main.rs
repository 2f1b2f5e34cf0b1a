//! Builds a Rust project the way its dependencies stay cached:
//!
//! 1. only the manifests (`Cargo.toml`s, `Cargo.lock`) and stub sources go
//!    in first, and `cargo build` compiles the dependencies: this step's key
//!    covers the manifests alone, so editing a source file does not touch it;
//! 2. then the real sources, and only the project's own crate compiles;
//! 3. tests and clippy run at once on the result.
//!
//! Downloads live in a cache volume for the cargo registry, build output in
//! one for `target/`.
//!
//! Run it with `rbuild run examples/rust-deps -- fixtures/rust-project`.
//! Behind a TLS-inspecting proxy, give rbuild the proxy's CA (`--ca-cert
//! FILE` or `RBUILD_CA_CERTS`, such as the host's bundle
//! `/etc/ssl/certs/ca-certificates.crt`): every step trusts it, cargo included.

use rbuild_sdk::{self as rb, DirOpts};

#[tokio::main]
async fn main() -> rb::Result<()> {
    let project = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fixtures/rust-project".to_string());
    let image = std::env::var("RBUILD_RUST_IMAGE")
        .unwrap_or_else(|_| "127.0.0.1:5000/rust:1".to_string());
    let client = rb::connect().await?;

    let manifests = client.host().directory(
        &project,
        DirOpts::default().include(["**/Cargo.toml", "Cargo.lock"]),
    );
    let sources = client
        .host()
        .directory(&project, DirOpts::default().exclude(["target/", ".git/"]));
    let registry = client.cache_volume("rust-deps-cargo-registry");
    let target = client.cache_volume("rust-deps-target");

    let toolchain = client
        .container()
        .from(image)
        .with_workdir("/src")
        .with_mounted_cache("/root/.cargo/registry", &registry)
        .with_mounted_cache("/src/target", &target);

    let dependencies = toolchain
        .with_directory("/src", &manifests)
        .with_new_file("/src/src/main.rs", "fn main() {}\n")
        .with_exec(["cargo", "build", "--release", "--locked"]);

    // `touch`: the stub built last is newer than the real file's mtime.
    let built = dependencies.with_directory("/src", &sources).with_exec([
        "sh",
        "-c",
        "touch src/main.rs && cargo build --release --locked 2>&1 && \
         install target/release/hello-deps /usr/local/bin/",
    ]);

    let (tests, lint, run) = tokio::join!(
        built
            .with_exec(["cargo", "test", "--release", "--locked", "-q"])
            .stdout(),
        built
            .with_exec(["sh", "-c", "cargo clippy --release --locked -q -- -D warnings 2>&1"])
            .stdout(),
        built.with_exec(["hello-deps"]).stdout(),
    );
    for line in built.stdout().await?.lines() {
        println!("build | {line}");
    }
    for line in tests?.lines().filter(|l| !l.trim().is_empty()) {
        println!("test  | {line}");
    }
    for line in lint?.lines() {
        println!("lint  | {line}");
    }
    print!("run   | {}", run?);
    Ok(())
}
