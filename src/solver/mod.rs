//! The solver: evaluates pipeline values (containers, directories, files)
//! into results, answering from the cache index where it can and running
//! the rest through the [`Worker`].
//!
//! It owns the cache semantics: keys per DESIGN.md invariant 1 (see
//! [`values`]), row after snapshot per invariant 2, identical work once per
//! invariant 5 (in this process by memoization, across processes by a lock
//! file per key), bounded parallelism per invariant 6. It never speaks gRPC:
//! everything that touches containerd, a registry or the host's files is
//! behind [`Worker`], so the solver's logic is testable with a fake.
//!
//! This file holds the solver's state; its work is split by what it is
//! about: [`interpret`] (builder calls into trees and steps), [`sources`]
//! (images resolved, host trees scanned), [`steps`] (cache hits, running
//! and recording steps), [`images`] (images out), [`services`] (services
//! planned: what runs, its identity and hostname), [`inputs`] (every input
//! of a value's ops evaluated at once), [`terminal`].

pub mod ca;
mod error;
mod explain;
mod images;
mod inputs;
mod instances;
mod interpret;
mod memo;
pub mod modules;
pub mod remote;
pub mod services;
mod sources;
mod steps;
mod terminal;
pub mod values;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use rbuild_runtime::CancellationToken;
use rbuild_snapshotter::tree::HostListing;
use rbuild_snapshotter::{Platform, ResolvedImage};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::index::Index;
use crate::locks::KeyLocks;
use crate::output::OutputStore;
use crate::progress::Progress;
use crate::secrets::Secrets;
use memo::Memo;
use rbuild_snapshotter::snapshots::SnapshotId;

pub use error::SolveError;
pub use interpret::join_path;
pub use services::{Binding, Healthcheck, ServicePlan};
pub use values::{
    ContainerState, DirValue, EnvValue, ExecPlan, FileValue, MountSpec, PlannedAction, StepKind,
    StepPlan, StepResult, Tree,
};
pub use worker::ImageWorker;
pub use worker::{
    ApplyRequest, Attachment, ExecOutcome, ExecRequest, FileAction, Interactive, MountRequest,
    NetworkUse, ReadAnswer, ReadOp, ServiceControl, ServiceHandle, ServiceRequest, Source,
    StartGate, TarballDest, TerminalUse, Worker,
};

pub struct Solver<W: Worker> {
    worker: W,
    index: Arc<Index>,
    progress: Arc<Progress>,
    secrets: Arc<Secrets>,
    locks: KeyLocks,
    debug_shell: Option<Vec<String>>,
    outputs: OutputStore,
    platform: Platform,
    jobs: Arc<Semaphore>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    images: Memo<Arc<ResolvedImage>>,
    imports: Memo<Arc<ResolvedImage>>,
    hosts: Memo<Arc<HostListing>>,
    pulls: Memo<Option<SnapshotId>>,
    steps: Memo<Arc<StepResult>>,
    remakes: Memo<SnapshotId>,
    /// The services planned in this run, by identity.
    services_planned: std::sync::Mutex<std::collections::HashMap<String, Arc<ServicePlan>>>,
    /// The run's service instances.
    instances: instances::Instances,
    /// The run's module calls, by what was called.
    module_calls: Memo<modules::Called>,
    /// The caller's values given to modules, by handle.
    bound: modules::Bound,
    /// Where modules are built (None: module calls are refused).
    pipelines: Option<PathBuf>,
    /// Extra CA certificates for every step's trust store.
    extra_ca: Option<ca::ExtraCa>,
    /// The pipeline's `rbuild.lock`, once it is known (see [`crate::lock`]).
    image_lock: std::sync::OnceLock<Arc<crate::lock::ImageLock>>,
    /// The remote step cache, when the run has one.
    remote: Option<remote::RemoteState>,
    /// `--expect-cached`: a step that would run is an error instead.
    expect_cached: bool,
}

/// Settings of a solver.
pub struct SolverConfig {
    pub platform: Platform,
    pub jobs: usize,
    /// Where cross-process key locks live.
    pub lock_dir: PathBuf,
    /// The session's secrets (shared with progress output, which scrubs them).
    pub secrets: Arc<Secrets>,
    /// `run -i`: the shell to open in a failed step's container.
    pub debug_shell: Option<Vec<String>>,
    /// The run's cancellation, which [`Solver::shutdown`] fires: steps,
    /// lock waits and (through the worker's registry) registry requests watch it.
    pub cancel: CancellationToken,
    /// Where output beyond the index's bound is stored.
    pub outputs: OutputStore,
    /// Where modules a pipeline calls are built (the pipeline cache);
    /// None: module calls are refused.
    pub pipelines: Option<PathBuf>,
    /// Extra CA certificates installed in every step's trust store.
    pub extra_ca: Option<ca::ExtraCa>,
    /// `--cache-from`/`--cache-to`.
    pub remote: remote::RemoteSettings,
    /// `--expect-cached`: refuse to run any step (every one must hit).
    pub expect_cached: bool,
}

impl<W: Worker> Solver<W> {
    /// A step's whole stdout or stderr: what the index keeps, or for
    /// output too long for it, the stored file read back (what `stdout()`
    /// always returned). If the file is gone, what the index keeps.
    pub async fn whole_output(
        &self,
        kept: &[u8],
        file: Option<&crate::output::OutputFile>,
    ) -> Vec<u8> {
        if let Some(f) = file {
            match tokio::fs::read(self.outputs.path(f)).await {
                Ok(all) => return all,
                Err(e) => {
                    tracing::warn!(error = %e, file = %f.0, "stored output unreadable; answering with its head and tail")
                }
            }
        }
        kept.to_vec()
    }
}

impl<W: Worker> Solver<W> {
    pub fn new(
        worker: W,
        index: Arc<Index>,
        progress: Arc<Progress>,
        config: SolverConfig,
    ) -> Arc<Self> {
        Arc::new(Solver {
            worker,
            index,
            progress,
            secrets: config.secrets,
            locks: KeyLocks::new(&config.lock_dir),
            debug_shell: config.debug_shell,
            outputs: config.outputs,
            platform: config.platform,
            jobs: Arc::new(Semaphore::new(config.jobs.max(1))),
            cancel: config.cancel,
            tasks: TaskTracker::new(),
            images: Memo::new(),
            imports: Memo::new(),
            hosts: Memo::new(),
            pulls: Memo::new(),
            steps: Memo::new(),
            remakes: Memo::new(),
            services_planned: Default::default(),
            instances: instances::Instances::default(),
            module_calls: Memo::new(),
            bound: Default::default(),
            pipelines: config.pipelines,
            extra_ca: config.extra_ca,
            image_lock: std::sync::OnceLock::new(),
            remote: remote::RemoteState::new(config.remote),
            expect_cached: config.expect_cached,
        })
    }

    pub fn worker(&self) -> &W {
        &self.worker
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    pub fn pipelines(&self) -> Option<&std::path::Path> {
        self.pipelines.as_deref()
    }

    pub fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Uses `lock` for the run's image tags (set once, before the session).
    pub fn set_image_lock(&self, lock: Arc<crate::lock::ImageLock>) {
        let _ = self.image_lock.set(lock);
    }

    pub fn image_lock(&self) -> Option<&Arc<crate::lock::ImageLock>> {
        self.image_lock.get()
    }

    /// Cancels running steps, stops the run's services, and waits until
    /// everything has cleaned up.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.stop_services().await;
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests;
