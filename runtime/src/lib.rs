//! rbuild-runtime: running a process on containerd.
//!
//! Owns the OCI runtime spec of a step ([`spec`]), and the container + task
//! lifecycle with its stdio ([`task`], [`terminal`]), long-running processes
//! ([`running`]), rbuild's container network ([`network`]), and what killed
//! runs left running ([`orphans`]). It reaches containerd
//! through rbuild-containerd's connection. It knows nothing of pipelines,
//! cache keys or images: it is given a root filesystem as mounts and a
//! process to run on it.

pub mod network;
pub mod orphans;
pub mod running;
pub mod spec;
pub mod task;
pub mod terminal;

use std::path::PathBuf;

pub use running::RunningTask;
pub use spec::{ExtraMount, NetworkMode, ProcessSpec};
pub use task::{ContainerRun, OutputChunk, ProcessOutcome, Stream};
pub use terminal::terminal_size;
pub use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection, or a request containerd refused.
    #[error(transparent)]
    Containerd(#[from] rbuild_containerd::Error),
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid runtime spec: {0}")]
    Spec(String),
    /// Setting up or tearing down rbuild's container network.
    #[error("network: {0}")]
    Network(String),
    /// A created task's start gate failed (see [`task::StartGate`]).
    #[error("not started: {0}")]
    NotStarted(String),
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// A request containerd refused.
    pub fn rpc(
        op: &'static str,
        subject: &str,
        status: rbuild_containerd::containerd_client::tonic::Status,
    ) -> Self {
        Error::Containerd(rbuild_containerd::Error::rpc(op, subject, status))
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
        matches!(self, Error::Containerd(e) if e.is_not_found())
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::Containerd(e) if e.is_already_exists())
    }
}
