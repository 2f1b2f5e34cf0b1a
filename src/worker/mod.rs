//! The solver's [`Worker`] on real containerd, registries and the host
//! (BuildKit's name for it): glues rbuild-snapshotter (images, snapshots,
//! trees, file operations) and rbuild-runtime (containers) into "run this
//! step / apply these file operations on that parent and commit the result
//! under this name", and answers reads and scans.
//!
//! Owns the run's lease: everything created during a run is held by it
//! until the solver has recorded it, and containerd expires it if rbuild
//! dies, so a crash leaves nothing pinned for good. The rooms: [`mounts`]
//! (snapshots on the host for one operation), [`exec`] (a step's process),
//! [`files`] (file operations and reads), [`images`] (images out),
//! [`secret_dirs`] (secrets in RAM), [`leftovers`] (what killed runs left),
//! [`services`] (long-running service containers on rbuild's network).

mod exec;
mod files;
mod images;
mod leftovers;
mod mounts;
mod secret_dirs;
mod services;
#[cfg(test)]
mod services_tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rbuild_containerd::{Containerd, GC_ROOT_LABEL, LeaseId, OWNER_LABEL, Owner};
use rbuild_runtime::network::{self, NetworkConfig, Networks};
use rbuild_runtime::{CancellationToken, ContainerRun, ExtraMount, NetworkMode, ProcessSpec};
use rbuild_snapshotter::confine;
use rbuild_snapshotter::export::{self, BlobPush, BuiltImage, ImageConfig, ImageFormat, Layer};
use rbuild_snapshotter::fileops::{self, FileOp, Origin};
use rbuild_snapshotter::host_scan::{self, HostScan, Known};
use rbuild_snapshotter::snapshots::{self, ActiveKey, Mount, SnapshotId};
use rbuild_snapshotter::tree::{self, HostListing, HostNode, KnownHashes};
use rbuild_snapshotter::{
    BlobDesc, ImageRef, MountedSnapshot, Platform, PullReport, Registry, ResolvedImage,
    unique_suffix, user,
};
use tokio::sync::OnceCell;

use crate::solver::{
    ApplyRequest, Attachment, ExecOutcome, ExecRequest, FileAction, ImageWorker, Interactive,
    MountRequest, NetworkUse, ReadAnswer, ReadOp, ServiceHandle, ServiceRequest, SolveError,
    Source, TarballDest, TerminalUse, Worker,
};
use crate::volumes::{VolumeUse, Volumes};
use mounts::HostMount;

/// Label on step snapshots and containers: the cache key they belong to.
pub const KEY_LABEL: &str = "rbuild.key";
const LEASE_PREFIX: &str = "rbuild-run-";
/// containerd drops a run's lease after this long even if rbuild never comes back.
const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

pub struct ContainerdWorker {
    ctd: Containerd,
    registry: Registry,
    volumes: Arc<Volumes>,
    lease: OnceCell<LeaseId>,
    /// Where FIFOs and temporary mount points live.
    scratch: PathBuf,
    /// One interactive shell at a time on the user's terminal.
    terminal_lock: tokio::sync::Mutex<()>,
    /// rbuild's bridge network, opened by the first attach: a run without
    /// services never touches CNI.
    networks: OnceCell<Networks>,
    /// None: from the environment when the network is first opened.
    network_config: Option<NetworkConfig>,
}

impl ContainerdWorker {
    pub fn new(
        ctd: Containerd,
        registry: Registry,
        volumes: Volumes,
        scratch: PathBuf,
    ) -> ContainerdWorker {
        ContainerdWorker {
            ctd,
            registry,
            volumes: Arc::new(volumes),
            lease: OnceCell::new(),
            scratch,
            terminal_lock: tokio::sync::Mutex::new(()),
            networks: OnceCell::new(),
            network_config: None,
        }
    }

    #[cfg_attr(not(test), allow(dead_code))] // the tests choose their own bridge
    /// Uses this network configuration instead of the environment's.
    pub fn with_network_config(mut self, config: NetworkConfig) -> ContainerdWorker {
        self.network_config = Some(config);
        self
    }

    /// The bridge network and its pool, opened on first use
    /// (`RBUILD_BRIDGE`, `RBUILD_NETWORK_SUBNET`, … see [`NetworkConfig::from_env`]).
    pub(super) async fn networks(&self) -> Result<&Networks, SolveError> {
        self.networks
            .get_or_try_init(|| async {
                let config = match &self.network_config {
                    Some(c) => c.clone(),
                    None => NetworkConfig::from_env()?,
                };
                Networks::open(config).map_err(SolveError::from)
            })
            .await
    }

    /// A private directory for a namespaced container's /etc files.
    pub(super) fn etc_dir(&self) -> Result<tempfile::TempDir, SolveError> {
        tempfile::Builder::new()
            .prefix("etc-")
            .tempdir_in(&self.scratch)
            .map_err(|e| {
                SolveError::Internal(format!(
                    "create a directory in {}: {e}",
                    self.scratch.display()
                ))
            })
    }

    pub(super) async fn lease(&self) -> Result<&LeaseId, SolveError> {
        self.lease
            .get_or_try_init(|| async {
                let id = format!("{LEASE_PREFIX}{}-{}", std::process::id(), unique_suffix());
                let labels = HashMap::from([(OWNER_LABEL.to_string(), Owner::current().label())]);
                self.ctd
                    .create_lease(&id, LEASE_TTL, labels)
                    .await
                    .map_err(SolveError::from)
            })
            .await
    }

    /// Releases the run's lease (what was recorded is kept by its own
    /// labels) and destroys the namespaces the pool holds unused.
    pub async fn finish(&self) {
        if let Some(networks) = self.networks.get() {
            networks.shutdown().await;
        }
        if let Some(lease) = self.lease.get()
            && let Err(e) = self.ctd.delete_lease(lease, false).await
        {
            tracing::warn!(error = %e, "could not release the run's lease");
        }
    }

    /// Lets containerd collect a step snapshot once nothing else needs it
    /// (a later step's snapshot on top of it keeps it).
    pub async fn release(&self, snapshot: &SnapshotId) -> Result<(), SolveError> {
        snapshots::remove_labels(&self.ctd, snapshot, &[GC_ROOT_LABEL]).await?;
        Ok(())
    }

    /// Deletes every image record in rbuild's namespace (what pulls and
    /// publishes made); their content goes with the next collection.
    pub async fn remove_images(&self) -> Result<usize, SolveError> {
        Ok(rbuild_snapshotter::pull::remove_image_records(&self.ctd).await?)
    }

    /// Runs containerd's garbage collector now and waits for it.
    pub async fn collect_garbage(&self) -> Result<(), SolveError> {
        let id = format!("rbuild-gc-{}", unique_suffix());
        let lease = self
            .ctd
            .create_lease(&id, Duration::from_secs(60), HashMap::new())
            .await?;
        self.ctd.delete_lease(&lease, true).await?;
        Ok(())
    }
}

impl Worker for ContainerdWorker {
    async fn resolve_digest(&self, image: &ImageRef) -> Result<String, SolveError> {
        match self.registry.resolve_digest(image).await {
            Ok(d) => Ok(d),
            Err(e) => Err(self.registry.explain_not_found(image, e).await.into()),
        }
    }

    async fn describe_image(
        &self,
        image: &ImageRef,
        digest: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, SolveError> {
        Ok(ResolvedImage::fetch(&self.registry, image, digest, platform).await?)
    }

    async fn pull_image(
        &self,
        image: &ResolvedImage,
    ) -> Result<(Option<SnapshotId>, PullReport), SolveError> {
        let lease = self.lease().await?;
        let (top, report) =
            rbuild_snapshotter::pull(&self.ctd, &self.registry, lease, image).await?;
        Ok((top, report))
    }

    async fn snapshot_exists(&self, snapshot: &SnapshotId) -> Result<bool, SolveError> {
        Ok(snapshots::stat(&self.ctd, snapshot).await?.is_some())
    }

    async fn exec(
        &self,
        req: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SolveError> {
        self.run_exec(req, cancel).await
    }

    async fn apply(&self, req: ApplyRequest) -> Result<SnapshotId, SolveError> {
        self.run_apply(req).await
    }

    async fn read(&self, source: Source, op: ReadOp) -> Result<ReadAnswer, SolveError> {
        self.run_read(source, op).await
    }

    async fn keep(&self, snapshot: &SnapshotId) -> Result<(), SolveError> {
        let labels = HashMap::from([(
            GC_ROOT_LABEL.to_string(),
            rbuild_containerd::rfc3339(SystemTime::now()),
        )]);
        snapshots::set_labels(&self.ctd, snapshot, labels).await?;
        Ok(())
    }

    async fn usage(&self, snapshot: &SnapshotId) -> Result<i64, SolveError> {
        Ok(snapshots::usage(&self.ctd, snapshot).await?)
    }

    async fn scan_host(
        &self,
        scan: HostScan,
        known: Known,
    ) -> Result<(HostListing, KnownHashes), SolveError> {
        tokio::task::spawn_blocking(move || host_scan::scan(&scan, known))
            .await
            .map_err(|e| SolveError::Internal(format!("host scan task: {e}")))?
            .map_err(SolveError::from)
    }

    async fn attach(&self) -> Result<Attachment, SolveError> {
        Ok(self.networks().await?.attach().await?)
    }

    async fn detach(&self, a: Attachment) -> Result<(), SolveError> {
        Ok(self.networks().await?.detach(a).await?)
    }

    async fn start_service(&self, req: ServiceRequest) -> Result<ServiceHandle, SolveError> {
        self.run_service(req).await
    }

    fn images(&self) -> Option<&dyn ImageWorker> {
        Some(self)
    }
}
