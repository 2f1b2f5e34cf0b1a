//! The remote step cache in the solver (`--cache-from`, `--cache-to`; the
//! format is `crate::remote`).
//!
//! - **Lookups.** A step the index does not have is looked up in each
//!   `--cache-from` repository (then the `--cache-to` one) by its key's
//!   tag: one GET. A hit answers with the entry's exit code, output and
//!   content identity, and downloads nothing else: its snapshot is made
//!   (its layer fetched, digest checked, unpacked onto its parent) only
//!   when something needs its files ([`Solver::import_remote`], from
//!   `materialize`). A lookup that fails (not a miss: the registry down,
//!   a 401) is a warning, and the rest of the run makes no more lookups.
//! - **Pushes.** With `--cache-to`, a step that ran here is pushed in the
//!   background while the run goes on, at most [`PUSH_SLOTS`] at once;
//!   the run waits for them at its end ([`Solver::finish_pushes`]) and a
//!   push that failed is a warning, never the run's failure.
//! - **What is shared.** Steps run in containers and file operations,
//!   host files copied into a container included (so the base image need
//!   not be pulled to copy them). Not the import of a host directory by
//!   itself, nor a tarball's: the runner has those files.
//! - **Trust.** A hit is believed: whoever can push to a repository can
//!   give its readers any result for any key (README: the remote cache).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rbuild_snapshotter::ImageRef;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::*;
use crate::remote::{Entry, Stream, entry_ref, shown};

/// How many pushes run at once.
pub const PUSH_SLOTS: usize = 4;

/// Where a run's remote cache is.
#[derive(Clone, Debug, Default)]
pub struct RemoteSettings {
    /// Read from, in this order.
    pub from: Vec<ImageRef>,
    /// Pushed to (and read from, after `from`).
    pub to: Option<ImageRef>,
}

/// A run's remote cache.
pub(super) struct RemoteState {
    from: Vec<ImageRef>,
    to: Option<ImageRef>,
    /// Set once a lookup failed: the rest of the run makes none.
    off: AtomicBool,
    pushes: TaskTracker,
    slots: Arc<Semaphore>,
    stats: Mutex<Stats>,
}

#[derive(Default)]
struct Stats {
    pushed: usize,
    bytes: u64,
    failed: usize,
    first_error: Option<String>,
}

impl RemoteState {
    pub(super) fn new(settings: RemoteSettings) -> Option<RemoteState> {
        let mut from = settings.from;
        if let Some(to) = &settings.to
            && !from.contains(to)
        {
            from.push(to.clone());
        }
        (!from.is_empty()).then(|| RemoteState {
            from,
            to: settings.to,
            off: AtomicBool::new(false),
            pushes: TaskTracker::new(),
            slots: Arc::new(Semaphore::new(PUSH_SLOTS)),
            stats: Mutex::default(),
        })
    }
}

/// A step answered by the remote cache: where its entry is.
#[derive(Debug)]
pub struct RemoteHit {
    pub repo: ImageRef,
    pub entry: Entry,
}

/// Whether a step's result is shared through the remote cache (see the
/// module's documentation): not a host directory's import (the runner
/// reads its own files faster than it would download them, and a step
/// that copies them into a container is shared), not a tarball's.
pub(super) fn shareable(plan: &StepPlan) -> bool {
    match &plan.kind {
        StepKind::Exec(_) => true,
        StepKind::Tarball { .. } => false,
        StepKind::Apply(actions) => {
            !(matches!(plan.parent, Tree::Empty)
                && matches!(
                    actions.as_slice(),
                    [PlannedAction::CopyDir { source, .. }] if matches!(source.tree, Tree::Host(_))
                ))
        }
    }
}

impl<W: Worker> Solver<W> {
    /// The step's entry in the remote cache, as a result whose snapshot is
    /// not made yet; None on a miss (or without a remote cache).
    pub(super) async fn remote_hit(&self, plan: &Arc<StepPlan>) -> Option<Arc<StepResult>> {
        let remote = self.remote.as_ref()?;
        let images = self.worker.images()?;
        if !shareable(plan) {
            return None;
        }
        for repo in &remote.from {
            if remote.off.load(Ordering::Relaxed) {
                return None;
            }
            let at = entry_ref(repo, &plan.key);
            let found = match images.cache_lookup(&at).await {
                Ok(None) => continue,
                Ok(Some(body)) => Entry::parse(&body, &plan.key),
                Err(SolveError::Cancelled) => return None,
                Err(e) => {
                    if !remote.off.swap(true, Ordering::Relaxed) {
                        self.progress.warn(&format!(
                            "remote cache {}: looking up a step failed, so this run goes on without it: {e}",
                            shown(repo)
                        ));
                    }
                    return None;
                }
            };
            let entry = match found {
                Ok(e) => e,
                Err(why) => {
                    tracing::warn!(%at, why, "not a usable remote cache entry; a miss");
                    continue;
                }
            };
            match self.remote_result(plan, repo, entry).await {
                Ok(hit) => {
                    self.progress.cached_remote(
                        &plan.description,
                        &shown(repo),
                        &self.tag(plan, None),
                    );
                    return Some(hit);
                }
                Err(e) => {
                    tracing::warn!(%at, error = %e, "remote cache entry's output unreadable; a miss");
                    continue;
                }
            }
        }
        None
    }

    async fn remote_result(
        &self,
        plan: &Arc<StepPlan>,
        repo: &ImageRef,
        entry: Entry,
    ) -> Result<Arc<StepResult>, SolveError> {
        let images = self.image_worker()?;
        let mut streams = Vec::with_capacity(2);
        for stream in [&entry.stdout, &entry.stderr] {
            let bytes = match stream {
                Stream::Inline(b) => b.clone(),
                Stream::Blob(desc) => images.cache_blob(repo, desc).await?,
            };
            let mut capture = self.outputs.capture();
            capture.push(&bytes);
            streams.push(capture.finish().map_err(SolveError::Internal)?);
        }
        let err = streams.pop().expect("two streams");
        let out = streams.pop().expect("two streams");
        Ok(Arc::new(StepResult {
            key: plan.key,
            snapshot: steps::step_snapshot_name(&plan.key),
            output: entry.output.clone(),
            stdout: out.text,
            stderr: err.text,
            stdout_file: out.file,
            stderr_file: err.file,
            exit_code: entry.exit_code,
            plan: plan.clone(),
            remote: Some(Arc::new(RemoteHit {
                repo: repo.clone(),
                entry,
            })),
        }))
    }

    /// Makes a remote hit's snapshot: its parent first, then its layer
    /// unpacked onto it; recorded in the index as a step that ran here.
    pub(super) async fn import_remote(
        self: &Arc<Self>,
        step: &StepResult,
        hit: &RemoteHit,
    ) -> Result<SnapshotId, SolveError> {
        let plan = &step.plan;
        let parent = self.materialize(&plan.parent).await?;
        let what = format!("download {} from the remote cache", plan.description);
        let no = self.progress.started(&what);
        let started = Instant::now();
        let fetched = match self
            .image_worker()?
            .cache_unpack(&hit.repo, &hit.entry, parent.as_ref(), &step.snapshot)
            .await
        {
            Ok(f) => f,
            Err(e) => {
                self.progress.finished(
                    no,
                    started.elapsed().as_millis(),
                    &format!("not usable, so the step runs here: {e}"),
                );
                return Err(e);
            }
        };
        let described = self.describe(&step.plan);
        self.remember_listings(&described);
        self.record(step, hit.entry.duration_ms, Some(&described.recorded))
            .await?;
        self.progress.finished(
            no,
            started.elapsed().as_millis(),
            &format!("{:.1} MB fetched", fetched as f64 / 1e6),
        );
        Ok(step.snapshot.clone())
    }

    /// A file of a remote hit whose snapshot is not made, read from the
    /// step's own layer alone when that decides it: a fully cached run that
    /// outputs a file the last step wrote downloads that step's layer, not
    /// its parents' and not its base image. None: the snapshot answers.
    pub(super) async fn read_remote(
        &self,
        tree: &Tree,
        path: &str,
        op: &ReadOp,
    ) -> Option<ReadAnswer> {
        let Tree::Step(step) = tree else {
            return None;
        };
        let hit = step.remote.as_ref()?;
        let file_op = matches!(
            op,
            ReadOp::Contents | ReadOp::Size | ReadOp::Digest | ReadOp::Export(_)
        );
        if !file_op
            || self
                .worker
                .snapshot_exists(&step.snapshot)
                .await
                .unwrap_or(true)
        {
            return None;
        }
        let what = format!(
            "read {path} of {} from the remote cache",
            step.plan.description
        );
        let no = self.progress.started(&what);
        let started = Instant::now();
        let answer = self
            .image_worker()
            .ok()?
            .cache_read(&hit.repo, &hit.entry, path, op.clone())
            .await;
        let ms = started.elapsed().as_millis();
        match answer {
            Ok(Some(a)) => {
                let size = hit.entry.layer.size as f64 / 1e6;
                self.progress
                    .finished(no, ms, &format!("its layer, {size:.1} MB"));
                Some(a)
            }
            Ok(None) => {
                self.progress
                    .finished(no, ms, "not in its layer alone; making the step's files");
                None
            }
            Err(e) => {
                self.progress.finished(no, ms, &format!("not usable: {e}"));
                None
            }
        }
    }

    /// With `--cache-to`, pushes a step that ran here, in the background.
    pub(super) fn push_remote(
        self: &Arc<Self>,
        result: &Arc<StepResult>,
        parent: Option<SnapshotId>,
        upper: Option<std::path::PathBuf>,
        duration_ms: u64,
    ) {
        let Some(remote) = self.remote.as_ref() else {
            return;
        };
        let Some(to) = remote.to.clone() else {
            return;
        };
        if !shareable(&result.plan) || self.worker.images().is_none() {
            return;
        }
        let this = self.clone();
        let result = result.clone();
        let slots = remote.slots.clone();
        remote.pushes.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let started = Instant::now();
            let outcome = this
                .push_one(&to, &result, parent, upper.as_deref(), duration_ms)
                .await;
            tracing::debug!(step = %result.plan.description, ms = started.elapsed().as_millis() as u64, ok = outcome.is_ok(), "remote cache push");
            let Some(remote) = this.remote.as_ref() else {
                return;
            };
            if let Ok(bytes) = &outcome {
                this.progress
                    .phase(&result.key.to_hex(), "push", started, *bytes);
            }
            let mut stats = remote.stats.lock().expect("push stats poisoned");
            match outcome {
                Ok(bytes) => {
                    stats.pushed += 1;
                    stats.bytes += bytes;
                }
                Err(SolveError::Cancelled) => {}
                Err(e) => {
                    tracing::warn!(step = %result.plan.description, error = %e, "remote cache push failed");
                    stats.failed += 1;
                    stats.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        });
    }

    async fn push_one(
        &self,
        to: &ImageRef,
        result: &StepResult,
        parent: Option<SnapshotId>,
        upper: Option<&std::path::Path>,
        duration_ms: u64,
    ) -> Result<u64, SolveError> {
        let stdout = self
            .whole_output(&result.stdout, result.stdout_file.as_ref())
            .await;
        let stderr = self
            .whole_output(&result.stderr, result.stderr_file.as_ref())
            .await;
        let entry = Entry {
            key: result.key,
            output: result.output.clone(),
            exit_code: result.exit_code,
            stdout: Stream::Inline(Vec::new()),
            stderr: Stream::Inline(Vec::new()),
            description: self.secrets.scrub_str(&result.plan.description),
            duration_ms,
            created: rbuild_containerd::rfc3339(std::time::SystemTime::now()),
            layer: rbuild_snapshotter::BlobDesc {
                media_type: String::new(),
                digest: String::new(),
                size: 0,
            },
            diff_id: String::new(),
        };
        self.image_worker()?
            .cache_push(
                &entry_ref(to, &result.key),
                parent.as_ref(),
                &result.snapshot,
                upper,
                entry,
                [stdout, stderr],
            )
            .await
    }

    /// Waits for the run's pushes; says how many went and warns of those
    /// that failed (a failed push never fails the run).
    pub async fn finish_pushes(&self) {
        let Some(remote) = self.remote.as_ref() else {
            return;
        };
        let Some(to) = &remote.to else {
            return;
        };
        remote.pushes.close();
        remote.pushes.wait().await;
        let stats = remote.stats.lock().expect("push stats poisoned");
        if stats.pushed > 0 {
            self.progress.info(&format!(
                "remote cache {}: pushed {} step{} ({})",
                shown(to),
                stats.pushed,
                if stats.pushed == 1 { "" } else { "s" },
                crate::gc::human_bytes(stats.bytes),
            ));
        }
        if stats.failed > 0 {
            self.progress.warn(&format!(
                "remote cache {}: pushing {} step{} failed (the run's result stands; they are not shared): {}",
                shown(to),
                stats.failed,
                if stats.failed == 1 { "" } else { "s" },
                stats.first_error.as_deref().unwrap_or("unknown error"),
            ));
        }
    }
}
