//! rbuild-runtime: running a process on containerd.
//!
//! Owns the containerd connection and namespace ([`Containerd`]), the OCI
//! runtime spec of a step ([`spec`]), and the container + task lifecycle with
//! its stdio ([`task`]). It knows nothing of pipelines, cache keys or images:
//! it is given a root filesystem as mounts and a process to run on it.

pub mod containerd;
pub mod managed;
pub mod owner;
pub mod spec;
pub mod task;
pub mod terminal;

use std::path::PathBuf;

pub use containerd::{Containerd, GC_ROOT_LABEL, LeaseId, SNAPSHOTTER};
pub use containerd_client;
pub use owner::{OWNER_LABEL, Owner};
pub use spec::{ExtraMount, ProcessSpec};
pub use task::{ContainerRun, OutputChunk, ProcessOutcome, Stream};
pub use terminal::terminal_size;
pub use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot reach containerd at {address}: {reason}\n  start it (`make setup` does, or `containerd &`) or point rbuild at its socket with --address"
    )]
    Connect { address: PathBuf, reason: String },
    #[error("containerd failed to {op} {subject}: {message} ({code:?})")]
    Rpc {
        op: &'static str,
        subject: String,
        code: containerd_client::tonic::Code,
        message: String,
    },
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid runtime spec: {0}")]
    Spec(String),
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    pub fn rpc(op: &'static str, subject: &str, status: containerd_client::tonic::Status) -> Self {
        Error::Rpc {
            op,
            subject: subject.to_string(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    pub fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether containerd said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Rpc { code, .. } if *code == containerd_client::tonic::Code::NotFound)
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::Rpc { code, .. } if *code == containerd_client::tonic::Code::AlreadyExists)
    }
}
