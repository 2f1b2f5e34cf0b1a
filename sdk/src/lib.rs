//! # rbuild-sdk
//!
//! Write build and CI pipelines as Rust programs; run them with
//! `rbuild run path/to/pipeline.rs`. Every step runs in a container on
//! containerd and is cached by the content of its inputs.
//!
//! ```no_run
//! use rbuild_sdk::{self as rb, DirOpts};
//!
//! #[tokio::main]
//! async fn main() -> rb::Result<()> {
//!     let client = rb::connect().await?;
//!     let src = client.host().directory(".", DirOpts::default().exclude(["target/", ".git/"]));
//!     let out = client
//!         .container()
//!         .from("127.0.0.1:5000/busybox:latest")
//!         .with_directory("/src", &src)
//!         .with_workdir("/src")
//!         .with_mounted_cache("/cache", &client.cache_volume("demo"))
//!         .with_exec(["sh", "-c", "ls | wc -l"])
//!         .stdout()
//!         .await?;
//!     print!("{out}");
//!     Ok(())
//! }
//! ```
//!
//! Values ([`Container`], [`Directory`], [`File`], [`CacheVolume`],
//! [`Secret`], [`Service`]) are immutable and lazy: builder methods return
//! a new value describing more work, and nothing runs until a result is
//! asked for (`stdout`, `stderr`, `exit_code`, `sync`, `contents`,
//! `entries`, `digest`, `export`; a service's `hostname`, `endpoint`,
//! `start`). Names follow Dagger's API in snake_case; options go in
//! `*_opts` variants.
//!
//! This crate is only a client: the engine runs inside `rbuild run`, which
//! hands the pipeline a private session socket.

mod cache_volume;
mod client;
mod container;
mod directory;
mod error;
mod file;
mod functions;
mod host;
mod module;
mod ops;
mod options;
mod secret;
mod service;
mod session;
pub mod wire;

pub use cache_volume::CacheVolume;
#[doc(inline)]
pub use cache_volume::Sharing;
#[doc(hidden)]
pub use client::recording_client;
pub use client::{connect, Client};
pub use container::Container;
pub use directory::Directory;
pub use error::{Error, Result};
pub use file::File;
#[doc(hidden)]
pub use functions::hand_back;
#[doc(inline)]
pub use functions::ArgKind;
pub use functions::{Args, DirArg, FunctionBuilder, Functions, Returned};
pub use host::Host;
pub use module::{Module, ModuleArg, ModuleCall, PIPELINE_DIR_ENV};
pub use options::{
    DirOpts, DirectoryOpts, ExecOpts, FileOpts, ImageLayerCompression, ImageMediaTypes, ImageOpts,
    ReturnType,
};
pub use secret::Secret;
pub use service::{EndpointOpts, HealthcheckOpts, PortForward, Service, ServiceOpts};
#[doc(hidden)]
pub use session::Recorded;
