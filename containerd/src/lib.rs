//! rbuild-containerd: the connection to containerd, shared by
//! rbuild-snapshotter and rbuild-runtime.
//!
//! Owns the gRPC channel bound to rbuild's namespace and the headers every
//! request carries ([`Containerd`], [`LeaseId`]), leases, the owner labels
//! that make cleanup after a crash safe ([`Owner`]), the error of a failed
//! RPC ([`Error`]), the containerd rbuild starts when none runs
//! ([`managed`]) and the fault suite's named kill points ([`kill_point`]).
//! It knows nothing of snapshots, images or tasks: those are the verbs of
//! snapshotter/ and runtime/, the only crates that speak the re-exported
//! [`containerd_client`] types.

pub mod connection;
pub mod kill_point;
pub mod managed;
pub mod owner;

use std::path::PathBuf;

pub use connection::{Containerd, GC_ROOT_LABEL, LeaseId, SNAPSHOTTER, rfc3339};
pub use containerd_client;
pub use kill_point::kill_point;
pub use owner::{OWNER_LABEL, Owner};

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
    /// A program the managed containerd needs is not on PATH.
    #[error(
        "invalid runtime spec: {program} is not installed (not on PATH): install Debian's `{program}` package (apt-get install {program})"
    )]
    NotInstalled { program: String },
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
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
