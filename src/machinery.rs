//! The solver's [`Machinery`] on real containerd, registries and the host:
//! glues rbuild-snapshotter (images, snapshots, trees) and rbuild-runtime
//! (containers) into "run this step / apply these file operations on that
//! parent and commit the result", and answers reads about trees.
//!
//! Owns the run's lease: everything created during a run is held by it
//! until the solver has recorded it, and containerd expires it if rbuild
//! dies, so a crash leaves nothing pinned for good.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rbuild_containerd::containerd_client::types::Mount;
use rbuild_containerd::{Containerd, GC_ROOT_LABEL, LeaseId, OWNER_LABEL, Owner};
use rbuild_runtime::{CancellationToken, ContainerRun, ExtraMount, ProcessSpec};
use rbuild_snapshotter::export::{self, BlobPush, BuiltImage, ImageConfig, ImageFormat, Layer};
use rbuild_snapshotter::tree::{self, CopyFilter, HostNode};
use rbuild_snapshotter::{
    BlobDesc, ImageRef, MountedSnapshot, Platform, PullReport, Registry, ResolvedImage, snapshots,
    unique_suffix,
};
use tokio::sync::OnceCell;

use crate::index::SnapshotId;
use crate::solver::machinery::{Interactive, TerminalUse};
use crate::solver::{
    ApplyRequest, ExecOutcome, ExecRequest, FileAction, Machinery, MountRequest, ReadAnswer,
    ReadOp, SolveError, Source, TarballDest,
};
use crate::user;
use crate::volumes::{VolumeUse, Volumes};

/// Label on step snapshots and containers: the cache key they belong to.
pub const KEY_LABEL: &str = "rbuild.key";
const LEASE_PREFIX: &str = "rbuild-run-";
/// containerd drops a run's lease after this long even if rbuild never comes back.
const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Early cutoff digests a step's changes only up to this many bytes of file
/// content; beyond, the result is identified by its key.
/// `RBUILD_CHANGES_DIGEST_MAX_BYTES` changes it (0 turns early cutoff off).
const CHANGES_DIGEST_BUDGET: u64 = 64 << 20;

fn changes_digest_budget() -> u64 {
    std::env::var("RBUILD_CHANGES_DIGEST_MAX_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CHANGES_DIGEST_BUDGET)
}

pub struct ContainerdMachinery {
    ctd: Containerd,
    registry: Registry,
    volumes: Arc<Volumes>,
    lease: OnceCell<LeaseId>,
    /// Where FIFOs and temporary mount points live.
    scratch: PathBuf,
    /// One interactive shell at a time on the user's terminal.
    terminal_lock: tokio::sync::Mutex<()>,
}

/// The snapshot name of a step's committed result.
pub fn step_snapshot_name(key: &crate::key::CacheKey) -> SnapshotId {
    SnapshotId(format!("rbuild-step-{key}"))
}

/// A snapshot mounted on the host for the length of an operation: a view
/// (read-only) or an active snapshot (writable), removed again on `close`.
struct HostMount {
    key: Option<String>,
    mount: Option<MountedSnapshot>,
    /// For the empty tree: a plain empty directory.
    empty: Option<tempfile::TempDir>,
}

impl HostMount {
    fn path(&self) -> &Path {
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
fn flat_name(snapshot: &str) -> String {
    format!(
        "rbuild-flat-{}",
        &blake3::hash(snapshot.as_bytes()).to_hex()[..32]
    )
}

impl ContainerdMachinery {
    pub fn new(
        ctd: Containerd,
        registry: Registry,
        volumes: Volumes,
        scratch: PathBuf,
    ) -> ContainerdMachinery {
        ContainerdMachinery {
            ctd,
            registry,
            volumes: Arc::new(volumes),
            lease: OnceCell::new(),
            scratch,
            terminal_lock: tokio::sync::Mutex::new(()),
        }
    }

    async fn lease(&self) -> Result<&LeaseId, SolveError> {
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

    /// Releases the run's lease; what was recorded is kept by its own labels.
    pub async fn finish(&self) {
        if let Some(lease) = self.lease.get()
            && let Err(e) = self.ctd.delete_lease(lease, false).await
        {
            tracing::warn!(error = %e, "could not release the run's lease");
        }
    }

    /// Lets containerd collect a step snapshot once nothing else needs it
    /// (a later step's snapshot on top of it keeps it).
    pub async fn release(&self, snapshot: &SnapshotId) -> Result<(), SolveError> {
        snapshots::remove_labels(&self.ctd, &snapshot.0, &[GC_ROOT_LABEL]).await?;
        Ok(())
    }

    /// Deletes every image record in rbuild's namespace (what pulls and
    /// publishes made); their content goes with the next collection.
    pub async fn remove_images(&self) -> Result<usize, SolveError> {
        use rbuild_containerd::containerd_client::services::v1::{
            DeleteImageRequest, ListImagesRequest,
        };
        let images = self
            .ctd
            .images()
            .list(self.ctd.request(ListImagesRequest::default()))
            .await
            .map_err(|s| rbuild_containerd::Error::rpc("list images", self.ctd.namespace(), s))?
            .into_inner()
            .images;
        for i in &images {
            self.ctd
                .images()
                .delete(self.ctd.request(DeleteImageRequest {
                    name: i.name.clone(),
                    ..Default::default()
                }))
                .await
                .map_err(|s| rbuild_containerd::Error::rpc("delete image", &i.name, s))?;
        }
        Ok(images.len())
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

    /// Removes what crashed or killed rbuild processes left behind:
    /// containers and their tasks, active snapshots and views, and their
    /// leases (whose uncommitted results containerd then collects).
    pub async fn remove_orphans(&self) -> Result<(), SolveError> {
        let containers = rbuild_runtime::task::remove_orphan_containers(&self.ctd).await?;
        let snaps = snapshots::remove_orphans(&self.ctd).await?;
        let mut leases = 0;
        for l in self
            .ctd
            .list_leases(&format!("labels.\"{OWNER_LABEL}\""))
            .await?
        {
            let dead = l
                .labels
                .get(OWNER_LABEL)
                .and_then(|o| Owner::parse(o))
                .is_some_and(|o| !o.is_alive());
            if dead && l.id.starts_with(LEASE_PREFIX) {
                self.ctd.delete_lease(&LeaseId(l.id), false).await?;
                leases += 1;
            }
        }
        if containers + snaps + leases > 0 {
            tracing::info!(
                containers,
                snapshots = snaps,
                leases,
                "removed leftovers of an interrupted run"
            );
        }
        Ok(())
    }

    /// Prepares active snapshot `key` on `parent`; on a parent too deep to
    /// mount, on a flattened copy of it instead (same content, one layer).
    async fn prepare(
        &self,
        key: &str,
        parent: Option<&SnapshotId>,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SolveError> {
        let lease = self.lease().await?;
        let parent_name = parent.map(|p| p.0.as_str());
        let mounts = snapshots::prepare(&self.ctd, lease, key, parent_name, labels.clone()).await?;
        let Some(parent) = parent_name.filter(|_| too_deep(&mounts)) else {
            return Ok(mounts);
        };
        snapshots::remove(&self.ctd, key).await?;
        let flat = self.flatten(parent).await?;
        Ok(snapshots::prepare(&self.ctd, lease, key, Some(&flat), labels).await?)
    }

    /// A read-only view `key` of `snapshot` (of a flattened copy when it is too deep).
    async fn view_mounts(
        &self,
        key: &str,
        snapshot: &SnapshotId,
    ) -> Result<Vec<Mount>, SolveError> {
        let lease = self.lease().await?;
        let mounts = snapshots::view(&self.ctd, lease, key, &snapshot.0).await?;
        if !too_deep(&mounts) {
            return Ok(mounts);
        }
        snapshots::remove(&self.ctd, key).await?;
        let flat = self.flatten(&snapshot.0).await?;
        Ok(snapshots::view(&self.ctd, lease, key, &flat).await?)
    }

    /// The flattened copy of a deep snapshot, made once. It is kept by the
    /// run's lease, and afterwards by the snapshots on top of it.
    async fn flatten(&self, snapshot: &str) -> Result<String, SolveError> {
        let lease = self.lease().await?;
        let flat = flat_name(snapshot);
        tracing::info!(snapshot, flat, "flattening a deep stack of layers");
        rbuild_snapshotter::export::flatten(&self.ctd, lease, snapshot, &flat).await?;
        Ok(flat)
    }

    fn mount_point(&self) -> PathBuf {
        self.scratch.join(format!("mnt-{}", unique_suffix()))
    }

    /// Mounts a committed snapshot read-only (a view) on the host.
    async fn view(&self, snapshot: Option<&SnapshotId>) -> Result<HostMount, SolveError> {
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
        let key = format!("rbuild-view-{}", unique_suffix());
        let mounts = self.view_mounts(&key, snapshot).await?;
        self.host_mount(key, &mounts, true).await
    }

    /// Prepares a writable snapshot on `parent` and mounts it on the host.
    async fn writable(
        &self,
        key: String,
        parent: Option<&SnapshotId>,
        labels: HashMap<String, String>,
    ) -> Result<(HostMount, Vec<Mount>), SolveError> {
        let mounts = self.prepare(&key, parent, labels).await?;
        Ok((self.host_mount(key, &mounts, false).await?, mounts))
    }

    async fn host_mount(
        &self,
        key: String,
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
    async fn close(&self, m: HostMount, keep_snapshot: bool) {
        let HostMount { key, mount, empty } = m;
        drop(mount);
        drop(empty);
        if let Some(key) = key
            && !keep_snapshot
            && let Err(e) = snapshots::remove(&self.ctd, &key).await
        {
            tracing::warn!(error = %e, key, "could not remove a temporary snapshot");
        }
    }

    /// Commits an active snapshot as a step's result; an existing commit of
    /// the same key (from an interrupted or concurrent run) is as good.
    async fn commit(
        &self,
        active: &str,
        key: &crate::key::CacheKey,
    ) -> Result<SnapshotId, SolveError> {
        let lease = self.lease().await?;
        let name = step_snapshot_name(key);
        let labels = HashMap::from([(KEY_LABEL.to_string(), key.to_hex())]);
        match snapshots::commit(&self.ctd, lease, active, &name.0, labels).await {
            Ok(()) => Ok(name),
            Err(rbuild_snapshotter::Error::Containerd(e)) if e.is_already_exists() => {
                snapshots::remove(&self.ctd, active).await?;
                Ok(name)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens whatever a source needs on the host: nothing for a host
    /// directory, a read-only view for a snapshot.
    async fn open_source(&self, source: &Source) -> Result<Option<HostMount>, SolveError> {
        match source {
            Source::Host { .. } => Ok(None),
            Source::Snapshot { snapshot, .. } => Ok(Some(self.view(snapshot.as_ref()).await?)),
        }
    }

    /// Runs `shell.command` (or `run`'s own process, when the command is
    /// empty) on the user's terminal; one shell at a time.
    async fn terminal(
        &self,
        mut run: ContainerRun,
        shell: &Interactive,
    ) -> Result<u32, SolveError> {
        let _one = self.terminal_lock.lock().await;
        if !shell.command.is_empty() {
            run.process.args = shell.command.clone();
        }
        run.process.terminal = Some(rbuild_runtime::terminal_size().unwrap_or((80, 24)));
        (shell.pause)(true);
        let result = rbuild_runtime::terminal::run_terminal(&self.ctd, run).await;
        (shell.pause)(false);
        result.map_err(SolveError::from)
    }

    /// The numeric user of a step, looked up in the root filesystem's own
    /// passwd/group when the spec has names. The root filesystem is mounted
    /// on the host only for that moment: it must not be mounted twice while
    /// the container runs.
    fn step_user(&self, spec: &str, rootfs: &[Mount]) -> Result<user::ResolvedUser, SolveError> {
        if !user::needs_lookup(spec) {
            return user::resolve(spec, "", "").map_err(SolveError::Invalid);
        }
        let mounted = MountedSnapshot::mount(rootfs, &self.mount_point(), true)?;
        resolve_user(spec, mounted.path())
    }

    #[allow(clippy::too_many_arguments)]
    async fn exec_in(
        &self,
        req: &ExecRequest,
        active: &str,
        rootfs: &[Mount],
        opened: &mut Vec<HostMount>,
        volumes: &mut Vec<VolumeUse>,
        secret_dir: &Path,
        cancel: &CancellationToken,
    ) -> Result<ExecOutcome, SolveError> {
        let who = self.step_user(&req.user, rootfs)?;
        let mut extra = Vec::new();
        // Mount points runc creates when the image lacks them must not end up in results.
        let mut stub_targets: Vec<String> = ["/proc", "/dev", "/sys"].map(String::from).to_vec();
        // The host's name resolution, since steps share its network.
        for f in ["/etc/resolv.conf", "/etc/hosts"] {
            if Path::new(f).exists() {
                extra.push(bind(f, f, true));
                stub_targets.push(f.to_string());
            }
        }
        for (n, m) in req.mounts.iter().enumerate() {
            stub_targets.push(m.target().to_string());
            match m {
                MountRequest::Snapshot {
                    target,
                    snapshot,
                    path,
                    file,
                } => {
                    let key = format!("rbuild-mount-{}", unique_suffix());
                    let labels = HashMap::from([(KEY_LABEL.to_string(), req.key.to_hex())]);
                    let (mnt, _) = self.writable(key, snapshot.as_ref(), labels).await?;
                    let source = tree::resolve_in(mnt.path(), path);
                    opened.push(mnt);
                    let meta = std::fs::metadata(&source).map_err(|_| {
                        SolveError::Invalid(format!(
                            "mount at {target}: {path} does not exist in the mounted value"
                        ))
                    })?;
                    if meta.is_dir() == *file {
                        return Err(SolveError::Invalid(format!(
                            "mount at {target}: {path} is {}",
                            if meta.is_dir() {
                                "a directory, not a file"
                            } else {
                                "a file, not a directory"
                            }
                        )));
                    }
                    extra.push(bind(&source.to_string_lossy(), target, false));
                }
                MountRequest::Cache {
                    target,
                    volume,
                    sharing,
                } => {
                    let vols = self.volumes.clone();
                    let (volume, sharing) = (volume.clone(), *sharing);
                    let v = tokio::task::spawn_blocking(move || vols.acquire(&volume, sharing))
                        .await
                        .map_err(|e| SolveError::Internal(format!("volume task: {e}")))?
                        .map_err(|e| SolveError::Internal(format!("cache volume: {e}")))?;
                    extra.push(bind(&v.path.to_string_lossy(), target, false));
                    volumes.push(v);
                }
                MountRequest::Temp { target } => extra.push(ExtraMount {
                    destination: target.clone(),
                    kind: "tmpfs".into(),
                    source: "tmpfs".into(),
                    options: vec!["nosuid".into(), "nodev".into(), "mode=1777".into()],
                }),
                MountRequest::Secret {
                    target,
                    plaintext,
                    mode,
                } => {
                    let file = secret_dir.join(format!("secret-{n}"));
                    write_secret(&file, plaintext, *mode, (who.uid, who.gid))
                        .map_err(|e| SolveError::Internal(format!("secret mount {target}: {e}")))?;
                    extra.push(bind(&file.to_string_lossy(), target, true));
                }
            }
        }
        let run = ContainerRun {
            id: format!("rbuild-{}-{}", req.key.short(), unique_suffix()),
            snapshot_key: active.to_string(),
            rootfs: rootfs.to_vec(),
            process: ProcessSpec {
                args: req.args.clone(),
                env: req.env.clone(),
                cwd: req.cwd.clone(),
                uid: who.uid,
                gid: who.gid,
                additional_gids: who.additional_gids,
                terminal: None,
            },
            mounts: extra,
            labels: HashMap::from([(KEY_LABEL.to_string(), req.key.to_hex())]),
            io_dir: self.scratch.join("io"),
            output: req.output.clone(),
            stdin: req.stdin.clone(),
            host_network: true,
        };
        if let TerminalUse::Shell(shell) = &req.terminal {
            let exit_code = self.terminal(run, shell).await? as i64;
            return Ok(ExecOutcome {
                exit_code,
                stdout: Vec::new(),
                stderr: Vec::new(),
                snapshot: None,
                changes: None,
            });
        }
        let debug_run = ContainerRun {
            id: format!("rbuild-debug-{}-{}", req.key.short(), unique_suffix()),
            output: None,
            stdin: None,
            ..run.clone()
        };
        let outcome = rbuild_runtime::task::run(&self.ctd, run, cancel)
            .await
            .map_err(|e| explain_start_failure(&req.args, e))?;
        let exit_code = outcome.exit_code as i64;
        if !req.expect.accepts(exit_code)
            && let TerminalUse::OnFailure(shell) = &req.terminal
        {
            // The failed step's own filesystem, environment and mounts.
            let _ = self.terminal(debug_run, shell).await;
        }
        let mut changes = None;
        let mut snapshot = None;
        if req.expect.accepts(exit_code) {
            if let Some((upper, lowers)) = snapshots::overlay_dirs(rootfs) {
                let started = Instant::now();
                let budget = changes_digest_budget();
                let digest = tokio::task::spawn_blocking(move || {
                    tree::remove_mount_stubs(&upper, &lowers, &stub_targets)?;
                    if budget == 0 {
                        return Ok(None);
                    }
                    tree::upper_digest(&upper, budget)
                })
                .await
                .map_err(|e| SolveError::Internal(format!("digest task: {e}")))??;
                tracing::debug!(
                    key = %req.key.short(),
                    ms = started.elapsed().as_millis(),
                    known = digest.is_some(),
                    "digested the step's changes"
                );
                changes = digest;
            }
            snapshot = Some(self.commit(active, &req.key).await?);
        }
        Ok(ExecOutcome {
            exit_code,
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            snapshot,
            changes,
        })
    }

    async fn apply_in(
        &self,
        req: &ApplyRequest,
        target: &Path,
        sources: &[Option<HostMount>],
    ) -> Result<(), SolveError> {
        let target = target.to_path_buf();
        let actions = req.actions.clone();
        let roots: Vec<Option<PathBuf>> = sources
            .iter()
            .map(|s| s.as_ref().map(|m| m.path().to_path_buf()))
            .collect();
        tokio::task::spawn_blocking(move || apply_actions(&target, &actions, &roots))
            .await
            .map_err(|e| SolveError::Internal(format!("file operation task: {e}")))?
    }
}

fn bind(source: &str, target: &str, readonly: bool) -> ExtraMount {
    ExtraMount {
        destination: target.to_string(),
        kind: "bind".into(),
        source: source.to_string(),
        options: vec!["rbind".into(), if readonly { "ro" } else { "rw" }.into()],
    }
}

fn write_secret(
    path: &Path,
    plaintext: &[u8],
    mode: u32,
    owner: (u32, u32),
) -> std::io::Result<()> {
    std::fs::write(path, plaintext)?;
    std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// The uid/gid of a user spec, read from the container's own passwd/group.
fn resolve_user(spec: &str, rootfs: &Path) -> Result<user::ResolvedUser, SolveError> {
    let (passwd, group) = if user::needs_lookup(spec) {
        let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_default();
        (read("etc/passwd"), read("etc/group"))
    } else {
        (String::new(), String::new())
    };
    user::resolve(spec, &passwd, &group).map_err(SolveError::Invalid)
}

/// Runs file actions against a mounted tree. `roots[i]` is where action i's
/// source is mounted (None for a host source).
fn apply_actions(
    target: &Path,
    actions: &[FileAction],
    roots: &[Option<PathBuf>],
) -> Result<(), SolveError> {
    let owner_of = |o: &Option<String>| -> Result<Option<(u32, u32)>, SolveError> {
        o.as_deref()
            .map(|spec| resolve_user(spec, target).map(|u| (u.uid, u.gid)))
            .transpose()
    };
    let mut root_iter = roots.iter();
    for action in actions {
        match action {
            FileAction::Copy {
                dest,
                source,
                include,
                exclude,
                owner,
                permissions,
            } => {
                let root = root_iter.next().cloned().flatten();
                let owner = owner_of(owner)?;
                copy_into(
                    target,
                    dest,
                    source,
                    root.as_deref(),
                    include,
                    exclude,
                    owner,
                    *permissions,
                )?;
            }
            FileAction::Write {
                dest,
                contents,
                permissions,
                owner,
            } => {
                let dst = tree::resolve_entry_in(target, dest);
                tree::make_parents(target, &dst)?;
                tree::remove_path(&dst)?;
                std::fs::write(&dst, contents.as_slice())
                    .map_err(|e| SolveError::Invalid(format!("write {dest}: {e}")))?;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(*permissions))
                    .map_err(|e| SolveError::Invalid(format!("chmod {dest}: {e}")))?;
                let (uid, gid) = owner_of(owner)?.unwrap_or((0, 0));
                std::os::unix::fs::chown(&dst, Some(uid), Some(gid))
                    .map_err(|e| SolveError::Invalid(format!("chown {dest}: {e}")))?;
            }
            FileAction::Remove { path } => {
                tree::remove_path(&tree::resolve_entry_in(target, path))?;
            }
            FileAction::Diff { base, other } => {
                let base_root = root_iter.next().cloned().flatten();
                let other_root = root_iter.next().cloned().flatten();
                let (Source::Snapshot { path: bp, .. }, Source::Snapshot { path: op, .. }) =
                    (base, other)
                else {
                    unreachable!("diff sources are materialized as snapshots");
                };
                let b = tree::resolve_in(&base_root.expect("mounted"), bp);
                let o = tree::resolve_in(&other_root.expect("mounted"), op);
                copy_differences(&b, &o, target, Path::new(""))?;
            }
        }
    }
    Ok(())
}

/// One copy: a directory merges into what `dest` leads to (following
/// symlinks inside the tree); a file replaces the entry at `dest`.
#[allow(clippy::too_many_arguments)]
fn copy_into(
    target: &Path,
    dest: &str,
    source: &Source,
    mounted: Option<&Path>,
    include: &[String],
    exclude: &[String],
    owner: Option<(u32, u32)>,
    permissions: Option<u32>,
) -> Result<(), SolveError> {
    let placed = match source {
        Source::Host { listing, path } => match listing.at(path) {
            Some(HostNode::Dir(sub)) => {
                let dst = tree::resolve_in(target, dest);
                let sub = sub.filtered(include, exclude)?;
                tree::make_parents(target, &dst)?;
                tree::copy_listing(&sub, &dst, owner.unwrap_or((0, 0)))?;
                dst
            }
            Some(HostNode::File(entry)) => {
                let dst = tree::resolve_entry_in(target, dest);
                tree::make_parents(target, &dst)?;
                let single = single_entry_listing(listing, entry);
                let tmp = dst.with_extension(format!("rbuild-{}", unique_suffix()));
                tree::copy_listing(&single, &tmp, owner.unwrap_or((0, 0)))?;
                tree::remove_path(&dst)?;
                std::fs::rename(tmp.join(&entry.rel), &dst)
                    .map_err(|e| SolveError::Internal(format!("place {dest}: {e}")))?;
                let _ = std::fs::remove_dir(&tmp);
                dst
            }
            None => {
                return Err(SolveError::Invalid(format!(
                    "{path} does not exist in host directory {}",
                    listing.root.display()
                )));
            }
        },
        Source::Snapshot { path, .. } => {
            let src = tree::resolve_in(mounted.expect("snapshot source is mounted"), path);
            let meta = std::fs::symlink_metadata(&src).map_err(|_| {
                SolveError::Invalid(format!("{path} does not exist in the copied value"))
            })?;
            let dst = if meta.is_dir() {
                tree::resolve_in(target, dest)
            } else {
                tree::resolve_entry_in(target, dest)
            };
            let filter = CopyFilter::new(&src, include, exclude)?;
            tree::make_parents(target, &dst)?;
            tree::copy_tree(&src, &dst, &filter, owner)?;
            dst
        }
    };
    if let Some(p) = permissions {
        std::fs::set_permissions(&placed, std::fs::Permissions::from_mode(p))
            .map_err(|e| SolveError::Invalid(format!("chmod {dest}: {e}")))?;
    }
    Ok(())
}

fn single_entry_listing(listing: &tree::HostListing, entry: &tree::HostEntry) -> tree::HostListing {
    tree::HostListing {
        root: listing.root.clone(),
        entries: vec![entry.clone()],
        digest: String::new(),
        files_hashed: 0,
        bytes_hashed: 0,
    }
}

/// Copies entries of `other` that are absent from `base` or differ from it.
fn copy_differences(base: &Path, other: &Path, out: &Path, rel: &Path) -> Result<(), SolveError> {
    let dir = other.join(rel);
    for name in tree::entries(&dir)? {
        let r = rel.join(&name);
        let o = other.join(&r);
        let b = base.join(&r);
        let om = std::fs::symlink_metadata(&o).map_err(|e| SolveError::Internal(e.to_string()))?;
        let bm = std::fs::symlink_metadata(&b).ok();
        if om.is_dir() {
            if !bm.as_ref().is_some_and(|m| m.is_dir()) {
                tree::copy_tree(&o, &out.join(&r), &CopyFilter::all(), None)?;
            } else {
                copy_differences(base, other, out, &r)?;
            }
            continue;
        }
        let same = match &bm {
            Some(bm)
                if bm.file_type() == om.file_type() && bm.permissions() == om.permissions() =>
            {
                if om.file_type().is_symlink() {
                    std::fs::read_link(&o).ok() == std::fs::read_link(&b).ok()
                } else {
                    bm.len() == om.len() && tree::hash_file(&o)? == tree::hash_file(&b)?
                }
            }
            _ => false,
        };
        if !same {
            let dst = out.join(&r);
            tree::make_parents(out, &dst)?;
            tree::copy_tree(&o, &dst, &CopyFilter::all(), None)?;
        }
    }
    Ok(())
}

/// runc's "cannot exec" (no such binary, not executable, bad working
/// directory) comes back as a task error wrapped in four layers of context;
/// a user wants the command and the reason.
fn explain_start_failure(args: &[String], err: rbuild_runtime::Error) -> SolveError {
    if let rbuild_runtime::Error::Containerd(rbuild_containerd::Error::Rpc { op, message, .. }) =
        &err
        && (*op == "create task" || *op == "start task")
        && let Some(reason) = message.split("unable to start container process: ").nth(1)
    {
        return SolveError::Invalid(format!(
            "cannot start {}: {}",
            crate::graph::shell_words(args),
            reason.trim_end_matches(": unknown")
        ));
    }
    err.into()
}

impl Machinery for ContainerdMachinery {
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
        Ok((top.map(SnapshotId), report))
    }

    async fn snapshot_exists(&self, snapshot: &SnapshotId) -> Result<bool, SolveError> {
        Ok(snapshots::stat(&self.ctd, &snapshot.0).await?.is_some())
    }

    async fn exec(
        &self,
        req: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SolveError> {
        let active = format!("rbuild-active-{}-{}", req.key.short(), unique_suffix());
        let labels = HashMap::from([(KEY_LABEL.to_string(), req.key.to_hex())]);
        let rootfs = self.prepare(&active, req.parent.as_ref(), labels).await?;
        // Secrets for mounts live in RAM (/dev/shm), never on disk.
        let secret_dir = tempfile::Builder::new()
            .prefix("rbuild-secrets-")
            .tempdir_in("/dev/shm")
            .map_err(|e| SolveError::Internal(format!("create secret directory: {e}")))?;
        let mut opened = Vec::new();
        let mut volumes = Vec::new();
        let result = self
            .exec_in(
                &req,
                &active,
                &rootfs,
                &mut opened,
                &mut volumes,
                secret_dir.path(),
                &cancel,
            )
            .await;
        drop(volumes);
        drop(secret_dir);
        for m in opened {
            self.close(m, false).await;
        }
        // Failed, cancelled or errored: the active snapshot must not outlive
        // the step. (Committed: it is no longer an active snapshot.)
        if !matches!(&result, Ok(o) if o.snapshot.is_some())
            && let Err(e) = snapshots::remove(&self.ctd, &active).await
        {
            tracing::warn!(error = %e, active, "could not remove a step's snapshot");
        }
        result
    }

    async fn apply(&self, req: ApplyRequest) -> Result<SnapshotId, SolveError> {
        let active = format!("rbuild-active-{}-{}", req.key.short(), unique_suffix());
        let labels = HashMap::from([(KEY_LABEL.to_string(), req.key.to_hex())]);
        let (target, _) = self
            .writable(active.clone(), req.parent.as_ref(), labels)
            .await?;
        let mut sources: Vec<Option<HostMount>> = Vec::new();
        let mut result = Ok(());
        for a in &req.actions {
            let srcs: Vec<&Source> = match a {
                FileAction::Copy { source, .. } => vec![source],
                FileAction::Diff { base, other } => vec![base, other],
                _ => vec![],
            };
            for s in srcs {
                match self.open_source(s).await {
                    Ok(m) => sources.push(m),
                    Err(e) => result = Err(e),
                }
            }
        }
        if result.is_ok() {
            result = self.apply_in(&req, target.path(), &sources).await;
        }
        for m in sources.into_iter().flatten() {
            self.close(m, false).await;
        }
        // Unmount before committing (or removing): containerd owns the bytes again.
        let HostMount { mount, .. } = target;
        drop(mount);
        let committed = match result {
            Ok(()) => self.commit(&active, &req.key).await,
            Err(e) => Err(e),
        };
        if committed.is_err() {
            let _ = snapshots::remove(&self.ctd, &active).await;
        }
        committed
    }

    async fn read(&self, source: Source, op: ReadOp) -> Result<ReadAnswer, SolveError> {
        match &source {
            Source::Host { listing, path } => {
                let listing = listing.clone();
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_host(&listing, &path, op))
                    .await
                    .map_err(|e| SolveError::Internal(format!("read task: {e}")))?
            }
            Source::Snapshot { snapshot, path } => {
                let mounted = self.view(snapshot.as_ref()).await?;
                let node = tree::resolve_in(mounted.path(), path);
                let path = path.clone();
                let answer = tokio::task::spawn_blocking(move || read_tree(&node, &path, op))
                    .await
                    .map_err(|e| SolveError::Internal(format!("read task: {e}")));
                self.close(mounted, false).await;
                answer?
            }
        }
    }

    async fn keep(&self, snapshot: &SnapshotId) -> Result<(), SolveError> {
        let labels = HashMap::from([(
            GC_ROOT_LABEL.to_string(),
            rbuild_containerd::rfc3339(SystemTime::now()),
        )]);
        snapshots::set_labels(&self.ctd, &snapshot.0, labels).await?;
        Ok(())
    }

    async fn usage(&self, snapshot: &SnapshotId) -> Result<i64, SolveError> {
        Ok(snapshots::usage(&self.ctd, &snapshot.0).await?)
    }

    async fn layer(
        &self,
        lower: Option<&SnapshotId>,
        upper: &SnapshotId,
        format: ImageFormat,
    ) -> Result<Layer, SolveError> {
        let lease = self.lease().await?;
        Ok(export::diff_layer(
            &self.ctd,
            lease,
            &self.scratch,
            lower.map(|s| s.0.as_str()),
            &upper.0,
            format,
        )
        .await?)
    }

    async fn has_blob(&self, digest: &str) -> Result<bool, SolveError> {
        Ok(rbuild_snapshotter::content::info(&self.ctd, digest)
            .await?
            .is_some())
    }

    async fn assemble(
        &self,
        base: Option<&ResolvedImage>,
        layers: &[(Layer, String)],
        config: &ImageConfig,
        format: ImageFormat,
    ) -> Result<BuiltImage, SolveError> {
        let lease = self.lease().await?;
        let platform = base
            .map(|b| b.platform.clone())
            .unwrap_or_else(rbuild_snapshotter::host_platform);
        // Reproducible by default: the epoch, not the time of the build.
        let created = if format.real_timestamps {
            rbuild_containerd::rfc3339(SystemTime::now())
        } else {
            "1970-01-01T00:00:00Z".to_string()
        };
        Ok(export::assemble(
            &self.ctd, lease, base, layers, config, &platform, format, &created,
        )
        .await?)
    }

    async fn publish(
        &self,
        image: &BuiltImage,
        target: &ImageRef,
        auth: Option<(String, Arc<Vec<u8>>)>,
        report: &(dyn Fn(&BlobDesc, BlobPush) + Send + Sync),
    ) -> Result<String, SolveError> {
        if let Some((user, password)) = auth {
            self.registry.set_credentials(
                target.registry(),
                &user,
                &String::from_utf8_lossy(&password),
            );
        }
        let digest = export::publish(&self.ctd, &self.registry, image, target, report).await?;
        // containerd keeps what was published, as after `docker push`.
        rbuild_snapshotter::pull::put_image_record(&self.ctd, &target.to_string(), &image.manifest)
            .await?;
        Ok(digest)
    }

    async fn tarball(
        &self,
        image: &BuiltImage,
        name: Option<&str>,
        dest: TarballDest,
    ) -> Result<Option<SnapshotId>, SolveError> {
        match dest {
            TarballDest::Host(path) => {
                export::write_tarball(&self.ctd, image, name, &path).await?;
                if let Some(n) = name {
                    rbuild_snapshotter::pull::put_image_record(&self.ctd, n, &image.manifest)
                        .await?;
                }
                Ok(None)
            }
            TarballDest::Snapshot(key) => {
                let active = format!("rbuild-active-{}-{}", key.short(), unique_suffix());
                let labels = HashMap::from([(KEY_LABEL.to_string(), key.to_hex())]);
                let (mnt, _) = self.writable(active.clone(), None, labels).await?;
                let written =
                    export::write_tarball(&self.ctd, image, name, &mnt.path().join("image.tar"))
                        .await;
                let HostMount { mount, .. } = mnt;
                drop(mount);
                let result = match written {
                    Ok(()) => self.commit(&active, &key).await.map(Some),
                    Err(e) => Err(e.into()),
                };
                if result.is_err() {
                    let _ = snapshots::remove(&self.ctd, &active).await;
                }
                result
            }
        }
    }

    async fn import_image(
        &self,
        source: Source,
        platform: &Platform,
    ) -> Result<ResolvedImage, SolveError> {
        let lease = self.lease().await?;
        match &source {
            Source::Host { listing, path } => {
                let Some(HostNode::File(entry)) = listing.at(path) else {
                    return Err(SolveError::Invalid(format!("{path} is not a file")));
                };
                let file = listing.root.join(&entry.rel);
                Ok(export::import_tarball(&self.ctd, lease, &file, platform).await?)
            }
            Source::Snapshot { snapshot, path } => {
                let mounted = self.view(snapshot.as_ref()).await?;
                let file = tree::resolve_in(mounted.path(), path);
                let result = export::import_tarball(&self.ctd, lease, &file, platform).await;
                self.close(mounted, false).await;
                Ok(result?)
            }
        }
    }
}

fn not_found(path: &str) -> SolveError {
    SolveError::Invalid(format!("{path}: no such file or directory"))
}

fn read_host(
    listing: &tree::HostListing,
    path: &str,
    op: ReadOp,
) -> Result<ReadAnswer, SolveError> {
    let node = listing.at(path).ok_or_else(|| not_found(path))?;
    Ok(match (node, op) {
        (HostNode::Dir(d), ReadOp::Entries) => ReadAnswer::Names(
            d.entries
                .iter()
                .filter(|e| !e.rel.contains('/'))
                .map(|e| e.rel.clone())
                .collect(),
        ),
        (HostNode::Dir(d), ReadOp::Glob(pattern)) => {
            let glob = tree::glob_matcher(&pattern)?;
            ReadAnswer::Names(
                d.entries
                    .iter()
                    .filter(|e| glob.is_match(&e.rel))
                    .map(|e| e.rel.clone())
                    .collect(),
            )
        }
        (HostNode::Dir(d), ReadOp::Digest) => ReadAnswer::Digest(d.digest),
        (HostNode::Dir(d), ReadOp::Export(dest)) => {
            tree::copy_listing(&d, &dest, (0, 0))?;
            ReadAnswer::Done
        }
        (HostNode::File(e), ReadOp::Contents) => ReadAnswer::Bytes(listing.read(e)?),
        (HostNode::File(e), ReadOp::Size) => ReadAnswer::Size(match e.kind {
            tree::EntryKind::File { size, .. } => size,
            _ => 0,
        }),
        (HostNode::File(e), ReadOp::Digest) => ReadAnswer::Digest(format!(
            "blake3:{}",
            blake3::hash(&listing.read(e)?).to_hex()
        )),
        (HostNode::File(e), ReadOp::Export(dest)) => {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| SolveError::Invalid(e.to_string()))?;
            }
            std::fs::write(&dest, listing.read(e)?).map_err(|err| {
                SolveError::Invalid(format!("export to {}: {err}", dest.display()))
            })?;
            ReadAnswer::Done
        }
        (HostNode::Dir(_), _) => {
            return Err(SolveError::Invalid(format!(
                "{path} is a directory, not a file"
            )));
        }
        (HostNode::File(_), _) => {
            return Err(SolveError::Invalid(format!(
                "{path} is a file, not a directory"
            )));
        }
    })
}

fn read_tree(node: &Path, path: &str, op: ReadOp) -> Result<ReadAnswer, SolveError> {
    let meta = std::fs::symlink_metadata(node).map_err(|_| not_found(path))?;
    let is_dir = meta.is_dir();
    Ok(match op {
        ReadOp::Entries if is_dir => ReadAnswer::Names(tree::entries(node)?),
        ReadOp::Glob(p) if is_dir => ReadAnswer::Names(tree::glob(node, &p)?),
        ReadOp::Digest if is_dir => ReadAnswer::Digest(tree::tree_digest(node)?),
        ReadOp::Export(dest) if is_dir => {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| SolveError::Invalid(e.to_string()))?;
            }
            tree::copy_tree(node, &dest, &CopyFilter::all(), None)?;
            ReadAnswer::Done
        }
        ReadOp::Contents if !is_dir => ReadAnswer::Bytes(
            std::fs::read(node).map_err(|e| SolveError::Invalid(format!("read {path}: {e}")))?,
        ),
        ReadOp::Size if !is_dir => {
            ReadAnswer::Size(std::fs::metadata(node).map(|m| m.len()).unwrap_or(0))
        }
        ReadOp::Digest => {
            ReadAnswer::Digest(format!("blake3:{}", hex::encode(tree::hash_file(node)?)))
        }
        ReadOp::Export(dest) => {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| SolveError::Invalid(e.to_string()))?;
            }
            std::fs::copy(node, &dest)
                .map_err(|e| SolveError::Invalid(format!("export to {}: {e}", dest.display())))?;
            ReadAnswer::Done
        }
        _ if is_dir => {
            return Err(SolveError::Invalid(format!(
                "{path} is a directory, not a file"
            )));
        }
        _ => {
            return Err(SolveError::Invalid(format!(
                "{path} is a file, not a directory"
            )));
        }
    })
}
