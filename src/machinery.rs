//! The solver's [`Machinery`] on real containerd and registries: glues
//! rbuild-snapshotter (images, snapshots) and rbuild-runtime (containers)
//! into "run this step on that parent and commit the result".
//!
//! Owns the run's lease: everything created during a run is held by it
//! until the solver has recorded it, and containerd expires it if rbuild
//! dies, so a crash leaves nothing pinned for good.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rbuild_runtime::{
    CancellationToken, ContainerRun, Containerd, GC_ROOT_LABEL, LeaseId, OWNER_LABEL, Owner,
    ProcessSpec,
};
use rbuild_snapshotter::{
    ImageRef, MountedSnapshot, Platform, PullReport, Registry, ResolvedImage, snapshots,
    unique_suffix,
};
use tokio::sync::OnceCell;

use crate::index::SnapshotId;
use crate::solver::{ExecOutcome, ExecRequest, Machinery, SolveError};
use crate::user;

/// Label on step snapshots and containers: the cache key they belong to.
pub const KEY_LABEL: &str = "rbuild.key";
const LEASE_PREFIX: &str = "rbuild-run-";
/// containerd drops a run's lease after this long even if rbuild never comes back.
const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

pub struct ContainerdMachinery {
    ctd: Containerd,
    registry: Registry,
    lease: OnceCell<LeaseId>,
    /// Where FIFOs and temporary mount points live.
    scratch: PathBuf,
}

/// The snapshot name of a step's committed result.
pub fn step_snapshot_name(key: &crate::key::CacheKey) -> SnapshotId {
    SnapshotId(format!("rbuild-step-{key}"))
}

impl ContainerdMachinery {
    pub fn new(ctd: Containerd, registry: Registry, scratch: PathBuf) -> ContainerdMachinery {
        ContainerdMachinery {
            ctd,
            registry,
            lease: OnceCell::new(),
            scratch,
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

    /// Removes what crashed or killed rbuild processes left behind:
    /// containers and their tasks, active snapshots, and their leases (whose
    /// uncommitted results containerd then collects).
    pub async fn remove_orphans(&self) -> Result<(), SolveError> {
        let containers = self.ctd.remove_orphan_containers().await?;
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

    async fn resolve_user(
        &self,
        user: &str,
        mounts: &[rbuild_runtime::containerd_client::types::Mount],
    ) -> Result<user::ResolvedUser, SolveError> {
        let (passwd, group) = if user::needs_lookup(user) {
            let target = self.scratch.join(format!("mnt-{}", unique_suffix()));
            let mounted = MountedSnapshot::mount(mounts, &target, true)?;
            let read =
                |p: &str| std::fs::read_to_string(mounted.path().join(p)).unwrap_or_default();
            (read("etc/passwd"), read("etc/group"))
        } else {
            (String::new(), String::new())
        };
        user::resolve(user, &passwd, &group).map_err(SolveError::Invalid)
    }

    async fn exec_in(
        &self,
        req: &ExecRequest,
        active: &str,
        cancel: &CancellationToken,
    ) -> Result<ExecOutcome, SolveError> {
        let lease = self.lease().await?;
        let key_label = HashMap::from([(KEY_LABEL.to_string(), req.key.to_hex())]);
        let mounts = snapshots::prepare(
            &self.ctd,
            lease,
            active,
            req.parent.as_ref().map(|p| p.0.as_str()),
            key_label.clone(),
        )
        .await?;
        tracing::debug!(key = %req.key.short(), "snapshot prepared");
        let who = self.resolve_user(&req.user, &mounts).await?;
        let run = ContainerRun {
            id: format!("rbuild-{}-{}", req.key.short(), unique_suffix()),
            snapshot_key: active.to_string(),
            rootfs: mounts,
            process: ProcessSpec {
                args: req.args.clone(),
                env: req.env.clone(),
                cwd: req.cwd.clone(),
                uid: who.uid,
                gid: who.gid,
                additional_gids: who.additional_gids,
            },
            mounts: Vec::new(),
            labels: key_label.clone(),
            io_dir: self.scratch.join("io"),
            output: None,
        };
        let outcome = self
            .ctd
            .run(run, cancel)
            .await
            .map_err(|e| explain_start_failure(&req.args, e))?;
        let exit_code = outcome.exit_code as i64;
        let snapshot = if exit_code == 0 {
            let name = step_snapshot_name(&req.key);
            match snapshots::commit(&self.ctd, lease, active, &name.0, key_label).await {
                Ok(()) => {}
                // A committed snapshot is complete: one from an interrupted
                // earlier run (or a concurrent one) is as good as ours.
                Err(rbuild_snapshotter::Error::Containerd(e)) if e.is_already_exists() => {
                    snapshots::remove(&self.ctd, active).await?;
                }
                Err(e) => return Err(e.into()),
            }
            tracing::debug!(key = %req.key.short(), "snapshot committed");
            Some(name)
        } else {
            None
        };
        Ok(ExecOutcome {
            exit_code,
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            snapshot,
        })
    }
}

/// runc's "cannot exec" (no such binary, not executable, bad working
/// directory) comes back as a task error wrapped in four layers of context;
/// a user wants the command and the reason.
fn explain_start_failure(args: &[String], err: rbuild_runtime::Error) -> SolveError {
    if let rbuild_runtime::Error::Rpc { op, message, .. } = &err
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
        let result = self.exec_in(&req, &active, &cancel).await;
        let committed = matches!(&result, Ok(o) if o.snapshot.is_some());
        if !committed {
            // Failed, cancelled or errored: the active snapshot must not outlive the step.
            if let Err(e) = snapshots::remove(&self.ctd, &active).await {
                tracing::warn!(error = %e, active, "could not remove a step's snapshot");
            }
        }
        result
    }

    async fn keep(&self, snapshot: &SnapshotId) -> Result<(), SolveError> {
        let labels = HashMap::from([(
            GC_ROOT_LABEL.to_string(),
            rbuild_runtime::containerd::rfc3339(SystemTime::now()),
        )]);
        snapshots::set_labels(&self.ctd, &snapshot.0, labels).await?;
        Ok(())
    }
}
