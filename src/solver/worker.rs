//! The narrow interface between the solver and the worker that touches
//! containerd, registries and the host (BuildKit calls it a worker): what to
//! run, copy, read or scan, on which (already materialized) snapshots, and
//! the name to commit a result under. Nothing here knows about cache keys'
//! composition or the index; the solver names every snapshot it keeps.
//!
//! [`Worker`] is what every run needs; [`ImageWorker`] (images out: layers,
//! assembly, publish, tarballs, import) is a second trait, offered by a
//! worker that can build images ([`Worker::images`]).

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rbuild_runtime::CancellationToken;
use rbuild_snapshotter::export::{BlobPush, BuiltImage, ImageConfig, ImageFormat, Layer};
use rbuild_snapshotter::host_scan::{HostScan, Known};
use rbuild_snapshotter::tree::{HostListing, KnownHashes};
use rbuild_snapshotter::{BlobDesc, ImageRef, Platform, PullReport, ResolvedImage};

pub use rbuild_runtime::network::Attachment;
pub use rbuild_snapshotter::fileops::{FileOp, ReadAnswer, ReadOp};

use super::SolveError;
use crate::graph::{Expect, Sharing};
use crate::key::CacheKey;
use rbuild_snapshotter::snapshots::SnapshotId;

/// A mount of a step's container besides its root filesystem.
#[derive(Clone, Debug)]
pub enum MountRequest {
    /// A directory (or a file, when `file`) of a snapshot; a writable copy
    /// whose changes are discarded after the step. `snapshot: None` is the
    /// empty tree.
    Snapshot {
        target: String,
        snapshot: Option<SnapshotId>,
        path: String,
        file: bool,
    },
    Cache {
        target: String,
        volume: String,
        sharing: Sharing,
    },
    Temp {
        target: String,
    },
    Secret {
        target: String,
        plaintext: Arc<Vec<u8>>,
        mode: u32,
    },
}

impl MountRequest {
    pub fn target(&self) -> &str {
        match self {
            MountRequest::Snapshot { target, .. }
            | MountRequest::Cache { target, .. }
            | MountRequest::Temp { target }
            | MountRequest::Secret { target, .. } => target,
        }
    }
}

/// A step to run on a cache miss.
#[derive(Clone, Debug)]
pub struct ExecRequest {
    pub key: CacheKey,
    /// The name to commit the result under (when the exit code meets `expect`).
    pub name: SnapshotId,
    /// Snapshot the root filesystem starts from; None for an empty one.
    pub parent: Option<SnapshotId>,
    pub args: Vec<String>,
    /// `NAME=value`, secrets already resolved.
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub mounts: Vec<MountRequest>,
    pub stdin: Option<Vec<u8>>,
    /// The result is committed only when the exit code meets this.
    pub expect: Expect,
    /// Receives the process's output as it is written (then the outcome's
    /// stdout and stderr are empty); bounded, so that output cannot pile up.
    pub output: Option<tokio::sync::mpsc::Sender<rbuild_runtime::OutputChunk>>,
    /// Whether the user's terminal is involved.
    pub terminal: TerminalUse,
    /// A namespace of rbuild's bridge with its name resolution (a step
    /// bound to services); None: the host's network, as before services.
    pub network: Option<NetworkUse>,
    /// For a step bound to services: its container and task are made while
    /// they start; the process starts once this yields their addresses
    /// (then in the step's hosts file). None: it starts at once.
    pub start_gate: Option<StartGate>,
}

/// The addresses of a step's services once they are ready (and it may
/// run); an error when they are not, after which the step never starts.
/// Taken once by the worker that runs the step.
#[derive(Clone, Default)]
pub struct StartGate(Arc<std::sync::Mutex<Option<Ready>>>);

/// What a [`StartGate`] waits for: the services' aliases and addresses.
pub type Ready = BoxFuture<'static, Result<Vec<(String, Ipv4Addr)>, String>>;

impl StartGate {
    pub fn new(
        ready: impl Future<Output = Result<Vec<(String, Ipv4Addr)>, String>> + Send + 'static,
    ) -> Self {
        StartGate(Arc::new(std::sync::Mutex::new(Some(Box::pin(ready)))))
    }

    /// The gate's future, the first time it is asked for.
    pub fn take(&self) -> Option<Ready> {
        self.0.lock().unwrap().take()
    }
}

impl std::fmt::Debug for StartGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartGate")
    }
}

/// How a step or a service is networked: its namespace, its own hostname,
/// and the names it resolves through `/etc/hosts` (service aliases).
#[derive(Clone, Debug)]
pub struct NetworkUse {
    pub attachment: Attachment,
    pub hostname: String,
    pub hosts: Vec<(String, Ipv4Addr)>,
}

/// A service's process to start in a container of its own.
#[derive(Debug)]
pub struct ServiceRequest {
    /// Unique per instance; the container id's suffix.
    pub id: String,
    /// The root tree (a writable copy, discarded at stop).
    pub parent: Option<SnapshotId>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub mounts: Vec<MountRequest>,
    /// The TCP ports it exposes (readiness is checked on them).
    pub ports: Vec<u16>,
    pub network: NetworkUse,
    pub output: tokio::sync::mpsc::Sender<rbuild_runtime::OutputChunk>,
}

/// A started service.
pub struct ServiceHandle {
    /// Some(exit code) once the process has ended (for any reason).
    pub exited: tokio::sync::watch::Receiver<Option<i64>>,
    pub control: Arc<dyn ServiceControl>,
}

/// What can be done to a running service.
pub trait ServiceControl: Send + Sync {
    /// Runs argv in the running container (a healthcheck): exit code and
    /// combined output, killed after `timeout` (exit code -1 then).
    fn exec(
        &self,
        args: Vec<String>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(i64, Vec<u8>), SolveError>>;
    /// SIGTERM, then SIGKILL after `grace`; container, task, snapshot and
    /// FIFOs gone when it returns. Idempotent.
    fn stop(&self, grace: Duration) -> BoxFuture<'_, Result<(), SolveError>>;
}

/// A shell on the user's terminal.
#[derive(Clone)]
pub struct Interactive {
    pub command: Vec<String>,
    /// Called with true before the shell takes the terminal, false after.
    pub pause: Arc<dyn Fn(bool) + Send + Sync>,
    /// Called with the failed step's exit code before a shell on failure
    /// opens (the failure is shown first).
    pub before: Arc<dyn Fn(i64) + Send + Sync>,
}

impl std::fmt::Debug for Interactive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Interactive({:?})", self.command)
    }
}

/// How a step uses the user's terminal.
#[derive(Clone, Debug, Default)]
pub enum TerminalUse {
    #[default]
    None,
    /// The step *is* an interactive process (`Container::terminal`): its
    /// `args` run on the terminal, nothing is committed.
    Shell(Interactive),
    /// If the step fails, open this shell in its container, with its
    /// filesystem, environment and mounts, before cleaning up (`run -i`).
    OnFailure(Interactive),
}

/// What running a step produced. `snapshot` is set (committed) only when
/// the exit code met the expectation.
#[derive(Clone, Debug)]
pub struct ExecOutcome {
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub snapshot: Option<SnapshotId>,
    /// Digest of what the step changed, when that was cheap to know.
    pub changes: Option<String>,
    /// The committed snapshot's own directory (its overlay upper dir: what
    /// the step changed), when it is one; valid while the snapshot lives.
    pub upper: Option<PathBuf>,
    /// A failed step's filesystem that was full (what it says, where): the
    /// likely reason it failed.
    pub full_filesystem: Option<String>,
    /// How long digesting and committing its result took.
    pub commit_ms: u64,
}

impl ExecOutcome {
    /// The outcome of a step that ran no process: only a snapshot.
    pub fn snapshot_only(snapshot: SnapshotId) -> ExecOutcome {
        ExecOutcome {
            exit_code: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            snapshot: Some(snapshot),
            changes: None,
            upper: None,
            full_filesystem: None,
            commit_ms: 0,
        }
    }
}

/// Where file content comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A scanned host directory (taken from the host, checked against the scan).
    Host {
        listing: Arc<HostListing>,
        path: String,
    },
    /// A path in a snapshot (None: the empty tree).
    Snapshot {
        snapshot: Option<SnapshotId>,
        path: String,
    },
}

/// One file operation on a snapshot being built, reading from [`Source`]s
/// (the worker mounts them and runs the operation as rbuild-snapshotter's
/// [`FileOp`] on the mounted trees).
pub type FileAction = FileOp<Source>;

/// File operations applied on top of `parent`, committed as a new snapshot.
#[derive(Clone, Debug)]
pub struct ApplyRequest {
    pub key: CacheKey,
    /// The name to commit the result under.
    pub name: SnapshotId,
    pub parent: Option<SnapshotId>,
    pub actions: Vec<FileAction>,
}

/// Where an image tarball goes.
#[derive(Clone, Debug)]
pub enum TarballDest {
    /// A host path.
    Host(PathBuf),
    /// `/image.tar` in a new snapshot for step `key`, committed as `name`.
    Snapshot { key: CacheKey, name: SnapshotId },
}

/// Everything the solver needs from containerd, registries and the host.
pub trait Worker: Send + Sync + 'static {
    /// The digest a reference points at now (a pinned reference: its own).
    fn resolve_digest(
        &self,
        image: &ImageRef,
    ) -> impl Future<Output = Result<String, SolveError>> + Send;
    /// The image documents behind a digest, for a platform.
    fn describe_image(
        &self,
        image: &ImageRef,
        digest: &str,
        platform: &Platform,
    ) -> impl Future<Output = Result<ResolvedImage, SolveError>> + Send;
    /// Makes the image's root filesystem present; returns its snapshot name
    /// and what had to be fetched and unpacked.
    fn pull_image(
        &self,
        image: &ResolvedImage,
    ) -> impl Future<Output = Result<(Option<SnapshotId>, PullReport), SolveError>> + Send;
    fn snapshot_exists(
        &self,
        snapshot: &SnapshotId,
    ) -> impl Future<Output = Result<bool, SolveError>> + Send;
    /// Runs a step; when its exit code meets the expectation, commits its
    /// snapshot under a name derived from the key.
    fn exec(
        &self,
        req: ExecRequest,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<ExecOutcome, SolveError>> + Send;
    /// Applies file operations and commits the result under a name derived from the key.
    fn apply(
        &self,
        req: ApplyRequest,
    ) -> impl Future<Output = Result<SnapshotId, SolveError>> + Send;
    /// Answers a read-only question about a tree.
    fn read(
        &self,
        source: Source,
        op: ReadOp,
    ) -> impl Future<Output = Result<ReadAnswer, SolveError>> + Send;
    /// Marks a committed step snapshot as kept (called after its index row exists).
    fn keep(&self, snapshot: &SnapshotId) -> impl Future<Output = Result<(), SolveError>> + Send;
    /// Bytes a committed snapshot adds to its parent.
    fn usage(&self, snapshot: &SnapshotId) -> impl Future<Output = Result<i64, SolveError>> + Send;

    /// Scans a host tree; `known` is what the stat cache knows of its root.
    fn scan_host(
        &self,
        scan: HostScan,
        known: Known,
    ) -> impl Future<Output = Result<(HostListing, KnownHashes), SolveError>> + Send;
    /// A prepared namespace on rbuild's bridge (from a pool kept warm in
    /// the background, BuildKit-style).
    fn attach(&self) -> impl Future<Output = Result<Attachment, SolveError>> + Send;
    /// Gives one back: destroyed (CNI DEL, unmounted, removed); the pool refills.
    fn detach(&self, a: Attachment) -> impl Future<Output = Result<(), SolveError>> + Send;
    /// Starts a service's process and returns once it has started.
    fn start_service(
        &self,
        req: ServiceRequest,
    ) -> impl Future<Output = Result<ServiceHandle, SolveError>> + Send;
    /// The image verbs, where this worker can build images.
    fn images(&self) -> Option<&dyn ImageWorker> {
        None
    }
}

/// Images out: what building, publishing, exporting and importing images
/// needs besides running steps. Boxed futures, so that a worker can offer
/// it as a trait object ([`Worker::images`]).
pub trait ImageWorker: Send + Sync {
    /// The layer of snapshot `upper` (its diff against `lower`), in `format`.
    fn layer<'a>(
        &'a self,
        lower: Option<&'a SnapshotId>,
        upper: &'a SnapshotId,
        format: ImageFormat,
    ) -> BoxFuture<'a, Result<Layer, SolveError>>;
    /// Whether containerd's content store has a blob; one it has is held
    /// for the rest of the run (another run's lease may be about to go).
    fn has_blob<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<bool, SolveError>>;
    /// Writes an image's config and manifest to the content store.
    fn assemble<'a>(
        &'a self,
        base: Option<&'a ResolvedImage>,
        layers: &'a [(Layer, String)],
        config: &'a ImageConfig,
        format: ImageFormat,
    ) -> BoxFuture<'a, Result<BuiltImage, SolveError>>;
    /// Pushes an image; returns its manifest digest. `auth` overrides the
    /// Docker config's credentials for the target registry.
    fn publish<'a>(
        &'a self,
        image: &'a BuiltImage,
        target: &'a ImageRef,
        auth: Option<(String, Arc<Vec<u8>>)>,
        report: &'a (dyn Fn(&BlobDesc, BlobPush) + Send + Sync),
    ) -> BoxFuture<'a, Result<String, SolveError>>;
    /// Writes an image as a tarball; into a snapshot, returns it.
    fn tarball<'a>(
        &'a self,
        image: &'a BuiltImage,
        name: Option<&'a str>,
        dest: TarballDest,
    ) -> BoxFuture<'a, Result<Option<SnapshotId>, SolveError>>;
    /// The remote cache (`crate::remote`): the manifest at an entry's tag,
    /// None when the repository has none.
    fn cache_lookup<'a>(
        &'a self,
        entry: &'a ImageRef,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, SolveError>>;
    /// A blob of a cache repository (a step's long output), digest checked.
    fn cache_blob<'a>(
        &'a self,
        repo: &'a ImageRef,
        desc: &'a BlobDesc,
    ) -> BoxFuture<'a, Result<Vec<u8>, SolveError>>;
    /// Pushes a step's entry to its tag: the diff of `upper` over `lower`
    /// as its layer (filled into `entry`; read straight from `upper_dir`,
    /// the snapshot's own directory, when given), output too long for an
    /// annotation as blobs, then the manifest. Returns the bytes uploaded.
    fn cache_push<'a>(
        &'a self,
        entry_ref: &'a ImageRef,
        lower: Option<&'a SnapshotId>,
        upper: &'a SnapshotId,
        upper_dir: Option<&'a std::path::Path>,
        entry: crate::remote::Entry,
        outputs: [Vec<u8>; 2],
    ) -> BoxFuture<'a, Result<u64, SolveError>>;
    /// Unpacks an entry's layer onto `parent`, committed as snapshot
    /// `name`; returns the bytes downloaded.
    fn cache_unpack<'a>(
        &'a self,
        repo: &'a ImageRef,
        entry: &'a crate::remote::Entry,
        parent: Option<&'a SnapshotId>,
        name: &'a SnapshotId,
    ) -> BoxFuture<'a, Result<u64, SolveError>>;
    /// Answers a read of a file from an entry's own layer, when the layer
    /// alone decides what is at `path` (see `unpack::file_in_layer`);
    /// None when it does not (the caller then makes the snapshot).
    fn cache_read<'a>(
        &'a self,
        repo: &'a ImageRef,
        entry: &'a crate::remote::Entry,
        path: &'a str,
        op: ReadOp,
    ) -> BoxFuture<'a, Result<Option<ReadAnswer>, SolveError>>;
    /// Loads an OCI image tarball into the content store and describes it.
    fn import_image<'a>(
        &'a self,
        source: Source,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<ResolvedImage, SolveError>>;
}
