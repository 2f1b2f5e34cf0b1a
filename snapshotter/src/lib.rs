//! rbuild-snapshotter: filesystem state.
//!
//! Owns everything about bytes on disk. It does not run processes and
//! knows nothing of pipelines or cache keys.
//!
//! - Images in: [`reference`](mod@reference) (parsing image
//!   references), [`registry`] (the registry client), [`image`]
//!   (manifests, configs, platforms), [`pull`](mod@pull) (fetching blobs
//!   into the content store), [`unpack`] (layers into snapshots, falling
//!   back to containerd's Diff service).
//! - containerd's stores: [`content`] (the content store), [`snapshots`]
//!   (prepare / view / commit / remove), [`mount`] (snapshots mounted on
//!   the host).
//! - Trees on the host and in mounted snapshots: [`tree`] (host scans,
//!   digests, copies, mount stubs, globs), [`host_scan`] (what a scan is
//!   asked for), [`fileops`] (a step's file operations and reads on
//!   mounted trees), [`user`] (a root filesystem's users and groups),
//!   [`confine`] (resolving a path inside a root without leaving it),
//!   `xattr` (extended attributes without following symlinks).
//! - Images out: [`overlay_diff`] (a layer read from overlay directories),
//!   [`export`] (layer diffs, flattening, image assembly, OCI tarballs,
//!   publishing).

pub mod confine;
pub mod content;
pub mod export;
pub mod fileops;
pub mod host_scan;
pub mod image;
pub mod mount;
pub mod overlay_diff;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod snapshots;
pub mod tree;
pub mod unpack;
pub mod user;
mod xattr;

use std::path::PathBuf;

pub use image::{BlobDesc, ImageDefaults, Platform, ResolvedImage, host_platform};
pub use mount::MountedSnapshot;
pub use pull::{PullReport, pull};
pub use reference::ImageRef;
pub use registry::{Registry, RegistryOptions};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("image {reference} not found: {detail}")]
    ImageNotFound { reference: String, detail: String },
    #[error(
        "cannot reach registry {registry} to pull {reference}: {reason}\n  is the registry running and the address right? (a registry not on this machine that speaks plain HTTP must be listed with --insecure-registry)"
    )]
    RegistryUnreachable {
        reference: String,
        registry: String,
        reason: String,
    },
    #[error(
        "registry {registry} denied access to {reference}: {credentials}\n  log in with `docker login {registry}` or put credentials for {registry} in ~/.docker/config.json (or $DOCKER_CONFIG/config.json)"
    )]
    Unauthorized {
        reference: String,
        registry: String,
        credentials: String,
    },
    #[error(
        "registry {registry} denied pushing {reference}: {credentials}\n  give credentials with push rights: Container::with_registry_auth, `docker login {registry}`, or ~/.docker/config.json"
    )]
    PushDenied {
        reference: String,
        registry: String,
        credentials: String,
    },
    #[error("registry error for {reference}: {reason}")]
    Registry { reference: String, reason: String },
    #[error("image {reference} has no manifest for platform {platform} (it has: {available})")]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("image {reference} is malformed: {reason}")]
    BadImage { reference: String, reason: String },
    #[error("download of blob {digest} failed: {reason}")]
    Download { digest: String, reason: String },
    #[error(transparent)]
    Containerd(#[from] rbuild_containerd::Error),
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Export(String),
    #[error("invalid pattern {pattern:?}: {reason}")]
    InvalidPattern { pattern: String, reason: String },
    /// A file operation or read the pipeline asked for cannot be done (a
    /// missing path, a directory where a file was wanted, ...).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A short random suffix for names that must not collide (snapshot keys, container ids).
pub fn unique_suffix() -> String {
    let n: u64 = rand::random();
    format!("{:016x}", n)
}
