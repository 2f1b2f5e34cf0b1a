//! rbuild-snapshotter: filesystem state.
//!
//! Owns everything about bytes on disk: resolving and pulling images from
//! registries ([`registry`], [`image`], [`pull`]), containerd's content store
//! ([`content`]), snapshots ([`snapshots`]) and mounting them on the host
//! ([`mount`]). It does not run processes and knows nothing of pipelines or
//! cache keys.

pub mod content;
pub mod export;
pub mod image;
pub mod mount;
pub mod overlay_diff;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod snapshots;
pub mod tree;
pub mod unpack;
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
