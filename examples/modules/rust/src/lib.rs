//! Building and testing a Cargo project with its dependencies cached
//! apart from its sources:
//!
//! 1. only the manifests (`Cargo.toml`s, `Cargo.lock`) and stub sources go
//!    in first, and `cargo build` compiles the dependencies: this step's key
//!    covers the manifests alone, so editing a source file does not touch it;
//! 2. then the real sources, and only the project's own crates compile.
//!
//! Downloads live in a cache volume for the cargo registry, build output in
//! one for `target/`.
//!
//! Called as a module (src/main.rs), these run under this crate's declared
//! API version; linked into a pipeline as a library, under that pipeline's.

use rbuild_sdk::{self as rb, DirectoryOpts};

/// The toolchain image (`RBUILD_RUST_IMAGE` overrides it).
pub fn image() -> String {
    std::env::var("RBUILD_RUST_IMAGE").unwrap_or_else(|_| "127.0.0.1:5000/rust:1".to_string())
}

/// The Rust toolchain with the cache volumes mounted, working in `/src`.
pub fn toolchain(client: &rb::Client) -> rb::Container {
    let registry = client.cache_volume("rust-module-cargo-registry");
    let target = client.cache_volume("rust-module-target");
    client
        .container()
        .from(image())
        .with_workdir("/src")
        .with_mounted_cache("/root/.cargo/registry", &registry)
        .with_mounted_cache("/src/target", &target)
}

/// The project with its dependencies built (from its manifests alone).
pub fn dependencies(client: &rb::Client, source: &rb::Directory) -> rb::Container {
    let manifests = source.filter(DirectoryOpts {
        include: vec!["**/Cargo.toml".into(), "Cargo.lock".into()],
        ..DirectoryOpts::default()
    });
    toolchain(client)
        .with_directory("/src", &manifests)
        .with_new_file("/src/src/main.rs", "fn main() {}\n")
        .with_exec(["cargo", "build", "--release", "--locked"])
}

/// The project's sources over its built dependencies.
pub fn with_sources(client: &rb::Client, source: &rb::Directory) -> rb::Container {
    let sources = source.filter(DirectoryOpts {
        exclude: vec!["target/".into(), ".git/".into()],
        ..DirectoryOpts::default()
    });
    dependencies(client, source).with_directory("/src", &sources)
}

/// The project built in release mode, with `bin` installed in
/// `/usr/local/bin` (the build output itself stays in the cache volume).
pub fn build(client: &rb::Client, source: &rb::Directory, bin: &str) -> rb::Container {
    // `touch`: the stub built last is newer than the real file's mtime.
    with_sources(client, source).with_exec([
        "sh".to_string(),
        "-c".into(),
        format!(
            "touch src/main.rs && cargo build --release --locked 2>&1 && \
             install target/release/{bin} /usr/local/bin/"
        ),
    ])
}

/// The project's tests run (their output is the container's stdout).
pub fn test(client: &rb::Client, source: &rb::Directory) -> rb::Container {
    with_sources(client, source).with_exec([
        "sh",
        "-c",
        "touch src/main.rs && cargo test --release --locked -q",
    ])
}
