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
        "authentication failed: registry {registry} denied access to {reference}: {credentials}\n  log in with `docker login {registry}` or put credentials for {registry} in ~/.docker/config.json (or $DOCKER_CONFIG/config.json)"
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
    /// A transfer that failed for a reason retrying may cure (a 5xx answer,
    /// a reset connection, a body cut short), after the last retry.
    #[error(
        "{reason} while {what} of {reference} {direction} {registry} (gave up after {attempts} attempts; RBUILD_REGISTRY_RETRIES sets how many retries)"
    )]
    Transfer {
        /// "downloading layer sha256:…", "uploading blob sha256:…", "resolving the tag"
        what: String,
        reference: String,
        /// "from" or "to"
        direction: &'static str,
        registry: String,
        reason: String,
        attempts: u32,
    },
    #[error(
        "{what} {digest} of {reference} from {registry} does not match its digest: the registry sent {actual} (fetched twice); the registry's copy is damaged, push the image again"
    )]
    DigestMismatch {
        /// "layer" or "blob"
        what: &'static str,
        digest: String,
        reference: String,
        registry: String,
        actual: String,
    },
    #[error(
        "layer {digest} of {reference} unpacks to more than {limit} bytes, the limit per layer (a decompression bomb?); RBUILD_MAX_LAYER_SIZE raises it"
    )]
    LayerTooLarge {
        digest: String,
        reference: String,
        limit: u64,
    },
    #[error(
        "no space left on device while unpacking layer {digest} of {reference} into {into}: free space there (`rbuild cache prune` removes old results) and run again"
    )]
    NoSpace {
        digest: String,
        reference: String,
        /// The snapshot directory, or "containerd's content store".
        into: String,
    },
    /// The run was cancelled (Ctrl-C, SIGTERM) while waiting for a registry.
    #[error("cancelled while talking to registry {registry} about {reference}")]
    Cancelled { reference: String, registry: String },
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
    /// This crate's error carried in a stream's `io::Error` (a blob
    /// download's), or else a download error with the I/O error's text.
    pub fn from_stream(e: std::io::Error, digest: &str) -> Error {
        if e.get_ref().is_some_and(|i| i.is::<Error>()) {
            return *e
                .into_inner()
                .expect("checked")
                .downcast::<Error>()
                .expect("checked");
        }
        Error::Download {
            digest: digest.to_string(),
            reason: e.to_string(),
        }
    }

    /// The registry sent bytes that do not match the blob's digest:
    /// fetching it once more from the start may help.
    pub fn is_digest_mismatch(&self) -> bool {
        matches!(self, Error::DigestMismatch { .. })
    }

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
