//! Snapshots on the host for the length of one operation: prepared
//! (writable) or viewed (read-only) under the run's lease, mounted, then
//! closed and removed; a result committed under the name the solver chose.
//! A stack of layers too deep to mount is flattened once first.

use std::path::Path;

use super::*;
use crate::key::CacheKey;

/// A snapshot mounted on the host for the length of an operation: a view
/// (read-only) or an active snapshot (writable), removed again on `close`.
pub(super) struct HostMount {
    pub(super) key: Option<ActiveKey>,
    pub(super) mount: Option<MountedSnapshot>,
    /// For the empty tree: a plain empty directory.
    pub(super) empty: Option<tempfile::TempDir>,
}

impl HostMount {
    pub(super) fn path(&self) -> &Path {
        match (&self.mount, &self.empty) {
            (Some(m), _) => m.path(),
            (None, Some(e)) => e.path(),
            (None, None) => unreachable!("a host mount has a path"),
        }
    }
}

/// How deep a stack of overlay layers may get before rbuild flattens it.
/// Mounting it on the host passes every lower directory in one option
/// string, which the kernel caps at a page (about 55 of containerd's
/// paths); the kernel's own cap is 500 layers.
const MAX_LOWERDIR_BYTES: usize = 3800;
const MAX_LOWERS: usize = 400;

/// Whether a snapshot's mounts stack too many layers to mount.
fn too_deep(mounts: &[Mount]) -> bool {
    mounts.first().is_some_and(|m| {
        m.options.iter().any(|o| {
            o.strip_prefix("lowerdir=")
                .is_some_and(|l| o.len() > MAX_LOWERDIR_BYTES || l.split(':').count() > MAX_LOWERS)
        })
    })
}

/// The name of the one-layer copy of a deep snapshot.
fn flat_name(snapshot: &SnapshotId) -> SnapshotId {
    SnapshotId(format!(
        "rbuild-flat-{}",
        &blake3::hash(snapshot.0.as_bytes()).to_hex()[..32]
    ))
}

/// [`ContainerdWorker::close`] for what outlives the call that opened it (a service's mounts).
pub(super) async fn close_with(ctd: &Containerd, m: HostMount, keep_snapshot: bool) {
    let HostMount { key, mount, empty } = m;
    drop(mount);
    drop(empty);
    if let Some(key) = key
        && !keep_snapshot
        && let Err(e) = snapshots::remove(ctd, &key).await
    {
        tracing::warn!(error = %e, %key, "could not remove a temporary snapshot");
    }
}

impl ContainerdWorker {
    /// Prepares active snapshot `key` on `parent`; on a parent too deep to
    /// mount, on a flattened copy of it instead (same content, one layer).
    pub(super) async fn prepare(
        &self,
        key: &ActiveKey,
        parent: Option<&SnapshotId>,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SolveError> {
        let lease = self.lease().await?;
        let mounts = snapshots::prepare(&self.ctd, lease, key, parent, labels.clone()).await?;
        let Some(parent) = parent.filter(|_| too_deep(&mounts)) else {
            return Ok(mounts);
        };
        snapshots::remove(&self.ctd, key).await?;
        let flat = self.flatten(parent).await?;
        Ok(snapshots::prepare(&self.ctd, lease, key, Some(&flat), labels).await?)
    }

    /// A read-only view `key` of `snapshot` (of a flattened copy when it is too deep).
    pub(super) async fn view_mounts(
        &self,
        key: &ActiveKey,
        snapshot: &SnapshotId,
    ) -> Result<Vec<Mount>, SolveError> {
        let lease = self.lease().await?;
        let mounts = snapshots::view(&self.ctd, lease, key, snapshot).await?;
        if !too_deep(&mounts) {
            return Ok(mounts);
        }
        snapshots::remove(&self.ctd, key).await?;
        let flat = self.flatten(snapshot).await?;
        Ok(snapshots::view(&self.ctd, lease, key, &flat).await?)
    }

    /// The flattened copy of a deep snapshot, made once. It is kept by the
    /// run's lease, and afterwards by the snapshots on top of it.
    pub(super) async fn flatten(&self, snapshot: &SnapshotId) -> Result<SnapshotId, SolveError> {
        let lease = self.lease().await?;
        let flat = flat_name(snapshot);
        tracing::info!(
            snapshot = snapshot.0,
            flat = flat.0,
            "flattening a deep stack of layers"
        );
        rbuild_snapshotter::export::flatten(&self.ctd, lease, snapshot, &flat).await?;
        Ok(flat)
    }

    pub(super) fn mount_point(&self) -> PathBuf {
        self.scratch.join(format!("mnt-{}", unique_suffix()))
    }

    /// Mounts a committed snapshot read-only (a view) on the host.
    pub(super) async fn view(
        &self,
        snapshot: Option<&SnapshotId>,
    ) -> Result<HostMount, SolveError> {
        let Some(snapshot) = snapshot else {
            let empty = tempfile::Builder::new()
                .prefix("empty-")
                .tempdir_in(&self.scratch)
                .map_err(|e| SolveError::Internal(format!("create empty tree: {e}")))?;
            return Ok(HostMount {
                key: None,
                mount: None,
                empty: Some(empty),
            });
        };
        let key = ActiveKey::unique("rbuild-view");
        let mounts = self.view_mounts(&key, snapshot).await?;
        self.host_mount(key, &mounts, true).await
    }

    /// Prepares a writable snapshot on `parent` and mounts it on the host.
    pub(super) async fn writable(
        &self,
        key: ActiveKey,
        parent: Option<&SnapshotId>,
        labels: HashMap<String, String>,
    ) -> Result<(HostMount, Vec<Mount>), SolveError> {
        let mounts = self.prepare(&key, parent, labels).await?;
        Ok((self.host_mount(key, &mounts, false).await?, mounts))
    }

    pub(super) async fn host_mount(
        &self,
        key: ActiveKey,
        mounts: &[Mount],
        readonly: bool,
    ) -> Result<HostMount, SolveError> {
        let target = self.mount_point();
        match MountedSnapshot::mount(mounts, &target, readonly) {
            Ok(m) => Ok(HostMount {
                key: Some(key),
                mount: Some(m),
                empty: None,
            }),
            Err(e) => {
                let _ = snapshots::remove(&self.ctd, &key).await;
                Err(e.into())
            }
        }
    }

    /// Unmounts and removes a host mount's snapshot (unless `keep_snapshot`).
    pub(super) async fn close(&self, m: HostMount, keep_snapshot: bool) {
        close_with(&self.ctd, m, keep_snapshot).await
    }

    /// Commits an active snapshot as step `key`'s result under `name` (the
    /// solver's choice); an existing commit of that name (from an
    /// interrupted or concurrent run of the same step) is as good.
    pub(super) async fn commit(
        &self,
        active: &ActiveKey,
        name: &SnapshotId,
        key: &CacheKey,
    ) -> Result<SnapshotId, SolveError> {
        let lease = self.lease().await?;
        let labels = HashMap::from([(KEY_LABEL.to_string(), key.to_hex())]);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match snapshots::commit(&self.ctd, lease, active, name, labels.clone()).await {
                Ok(()) => return Ok(name.clone()),
                Err(rbuild_snapshotter::Error::Containerd(e)) if e.is_already_exists() => {
                    // The other commit may be held only by a killed run's
                    // lease, which this run's start deleted, or by nothing
                    // (its row pruned): hold it with ours before trusting
                    // it, and commit ours when containerd's GC took it
                    // between the two.
                    if snapshots::hold(&self.ctd, lease, name).await? {
                        snapshots::remove(&self.ctd, active).await?;
                        return Ok(name.clone());
                    }
                    if attempt == 3 {
                        return Err(e.into());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Opens whatever a source needs on the host: nothing for a host
    /// directory, a read-only view for a snapshot.
    pub(super) async fn open_source(
        &self,
        source: &Source,
    ) -> Result<Option<HostMount>, SolveError> {
        match source {
            Source::Host { .. } => Ok(None),
            Source::Snapshot { snapshot, .. } => Ok(Some(self.view(snapshot.as_ref()).await?)),
        }
    }
}
