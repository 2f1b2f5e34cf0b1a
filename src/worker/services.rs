//! A service's container: a writable copy of its root tree, its mounts
//! resolved as a step's are, its own namespace on rbuild's bridge with its
//! hosts file, and a process that keeps running until it is stopped
//! (rbuild-runtime's [`RunningTask`]). Stopping removes all of it; the
//! namespace is the caller's (it attached it, it detaches it).

// Until the service manager (src/services.rs) starts services, only the
// tests call this room.

use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use rbuild_runtime::RunningTask;

use super::mounts::close_with;
use super::*;
use crate::solver::ServiceControl;

/// Label on a service's snapshot and container: which service instance.
const SERVICE_LABEL: &str = "rbuild.service";

/// What a running service holds until it is stopped.
struct Held {
    active: ActiveKey,
    opened: Vec<HostMount>,
    volumes: Vec<VolumeUse>,
    secret_dir: Option<tempfile::TempDir>,
    etc_dir: Option<tempfile::TempDir>,
}

impl Held {
    /// Unmounts and removes everything; the root tree's copy last.
    async fn release(self, ctd: &Containerd) {
        let Held {
            active,
            opened,
            volumes,
            secret_dir,
            etc_dir,
        } = self;
        drop(volumes);
        drop(secret_dir);
        drop(etc_dir);
        for m in opened {
            close_with(ctd, m, false).await;
        }
        if let Err(e) = snapshots::remove(ctd, &active).await {
            tracing::warn!(error = %e, %active, "could not remove a service's snapshot");
        }
    }
}

struct RunningService {
    ctd: Containerd,
    task: RunningTask,
    held: Mutex<Option<Held>>,
    /// One stop at a time; a second waits for the first, then finds nothing to do.
    stopping: tokio::sync::Mutex<()>,
}

impl ServiceControl for RunningService {
    fn exec(
        &self,
        args: Vec<String>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(i64, Vec<u8>), SolveError>> {
        Box::pin(async move { Ok(self.task.exec(args, timeout).await?) })
    }

    fn stop(&self, grace: Duration) -> BoxFuture<'_, Result<(), SolveError>> {
        Box::pin(async move {
            let _one = self.stopping.lock().await;
            let stopped = self.task.stop(grace).await;
            let held = self.held.lock().unwrap().take();
            if let Some(held) = held {
                held.release(&self.ctd).await;
            }
            Ok(stopped?)
        })
    }
}

impl ContainerdWorker {
    /// Starts a service; see [`Worker::start_service`].
    pub(super) async fn run_service(
        &self,
        req: ServiceRequest,
    ) -> Result<ServiceHandle, SolveError> {
        let labels = HashMap::from([(SERVICE_LABEL.to_string(), req.id.clone())]);
        tracing::debug!(service = %req.id, ip = %req.network.attachment.ip, ports = ?req.ports, "starting a service");
        let active = ActiveKey::unique("rbuild-active-service");
        let rootfs = self
            .prepare(&active, req.parent.as_ref(), labels.clone())
            .await?;
        let mut held = Held {
            active: active.clone(),
            opened: Vec::new(),
            volumes: Vec::new(),
            secret_dir: None,
            etc_dir: None,
        };
        match self
            .start_in(&req, &active, &rootfs, &labels, &mut held)
            .await
        {
            Ok(task) => Ok(ServiceHandle {
                exited: task.exited(),
                control: Arc::new(RunningService {
                    ctd: self.ctd.clone(),
                    task,
                    held: Mutex::new(Some(held)),
                    stopping: tokio::sync::Mutex::new(()),
                }),
            }),
            Err(e) => {
                held.release(&self.ctd).await;
                Err(e)
            }
        }
    }

    async fn start_in(
        &self,
        req: &ServiceRequest,
        active: &ActiveKey,
        rootfs: &[Mount],
        labels: &HashMap<String, String>,
        held: &mut Held,
    ) -> Result<RunningTask, SolveError> {
        if req
            .mounts
            .iter()
            .any(|m| matches!(m, MountRequest::Secret { .. }))
        {
            held.secret_dir = Some(
                super::secret_dirs::create(self.ctd.namespace())
                    .map_err(|e| SolveError::Internal(format!("create secret directory: {e}")))?,
            );
        }
        let etc_dir = held.etc_dir.insert(self.etc_dir()?).path().to_path_buf();
        let who = self.step_user(&req.user, rootfs)?;
        // A service's mounts wait on no cancellation of a step: they are
        // held until the service stops.
        let never = CancellationToken::new();
        let secret_dir = held.secret_dir.as_ref().map(|d| d.path().to_path_buf());
        let (extra, _) = self
            .container_mounts(
                labels,
                &req.mounts,
                Some((&req.network, &etc_dir)),
                &who,
                &mut held.opened,
                &mut held.volumes,
                secret_dir.as_deref(),
                &never,
            )
            .await?;
        let run = ContainerRun {
            id: format!("rbuild-service-{}", req.id),
            snapshot_key: active.0.clone(),
            rootfs: rootfs.to_vec(),
            process: exec::process_as(who, &req.args, &req.env, &req.cwd),
            mounts: extra,
            labels: labels.clone(),
            io_dir: self.scratch.join("io"),
            stdin: None,
            network: exec::network_mode(Some(&req.network)),
            output: Some(req.output.clone()),
        };
        rbuild_runtime::running::start(&self.ctd, run)
            .await
            .map_err(|e| exec::explain_start_failure(&req.args, e))
    }
}
