//! Running steps: a step's result from the index when it has it, else run
//! on the worker and recorded (snapshot committed first, index row second,
//! then the snapshot kept); its output shown scrubbed; the trees it needs
//! made present first (pulled, imported, or rebuilt when pruned).

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use rbuild_snapshotter::snapshots::SnapshotId;

use super::instances::Lease;
use super::services::Binding;
use super::*;
use crate::graph::shell_words;
use crate::index::StepRecord;
use crate::key::CacheKey;
use crate::output::Capture;
use crate::progress::{STDERR_TAIL_LINES, tail_lines};
use crate::secrets::StreamScrubber;

/// The name of a step's committed result: one per key, so that two runs of
/// the same step (or two rbuild processes) commit the same snapshot.
pub(super) fn step_snapshot_name(key: &CacheKey) -> SnapshotId {
    SnapshotId(format!("rbuild-step-{key}"))
}

impl<W: Worker> Solver<W> {
    // ----------------------------------------------------------------- steps

    /// File operations on a tree, as a cached step.
    pub(super) async fn apply(
        self: &Arc<Self>,
        parent: Tree,
        action: PlannedAction,
    ) -> Result<Tree, SolveError> {
        let plan = StepPlan::apply(parent, vec![action]);
        Ok(Tree::Step(self.step(plan).await?))
    }

    /// Runs a step once per key: from the index when it has it, else for real.
    pub(super) async fn step(
        self: &Arc<Self>,
        plan: StepPlan,
    ) -> Result<Arc<StepResult>, SolveError> {
        let plan = Arc::new(plan);
        let this = self.clone();
        let p = plan.clone();
        self.steps
            .get_or_start(&self.tasks, plan.key.to_hex(), move || async move {
                this.run_step(&p).await
            })
            .await
    }

    pub(super) fn cached(
        &self,
        plan: &Arc<StepPlan>,
    ) -> Result<Option<Arc<StepResult>>, SolveError> {
        Ok(self.index.get_step(&plan.key)?.map(|rec| {
            Arc::new(StepResult {
                key: rec.key,
                snapshot: rec.snapshot,
                output: rec.output,
                stdout: rec.stdout,
                stderr: rec.stderr,
                stdout_file: rec.stdout_file,
                stderr_file: rec.stderr_file,
                exit_code: rec.exit_code,
                plan: plan.clone(),
                remote: None,
            })
        }))
    }

    pub(super) async fn run_step(
        self: &Arc<Self>,
        plan: &Arc<StepPlan>,
    ) -> Result<Arc<StepResult>, SolveError> {
        if let Some(hit) = self.cached(plan)? {
            self.progress
                .cached_tagged(&plan.description, &self.tag(plan, None));
            return Ok(hit);
        }
        // A remote hit runs nothing, so it needs no lock.
        if let Some(hit) = self.remote_hit(plan).await {
            return Ok(hit);
        }
        // Another rbuild may be running this very step: wait for it, then
        // take its result.
        let _lock = self
            .locks
            .lock(plan.key, &self.cancel, || {
                self.progress.info(&format!(
                    "waiting for another rbuild process that runs {}",
                    plan.description
                ))
            })
            .await?;
        if let Some(hit) = self.cached(plan)? {
            self.progress
                .cached_tagged(&plan.description, &self.tag(plan, None));
            return Ok(hit);
        }
        self.execute(plan).await
    }

    /// Runs a step on the worker and records it: snapshot committed
    /// first, index row second, then the snapshot is marked kept.
    pub(super) async fn execute(
        self: &Arc<Self>,
        plan: &Arc<StepPlan>,
    ) -> Result<Arc<StepResult>, SolveError> {
        // Why it missed, from what earlier runs recorded.
        let explaining = Instant::now();
        let described = self.describe(plan);
        self.remember_listings(&described);
        let why = self.why_missed(plan, &described.recorded);
        if self.expect_cached {
            return Err(self.not_cached(plan, &why));
        }
        let tag = self.tag(plan, Some(&why));
        // What explanations cost a step that runs (bench/explain.sh reads it).
        tracing::debug!(
            key = %plan.key.short(),
            us = explaining.elapsed().as_micros() as u64,
            "miss explained"
        );
        // Its key's parts are recorded with its index row; a step that
        // fails (or is stopped) has them recorded alone, so that its next
        // miss says its last run did not finish.
        let result = self.run_missed(plan, &tag, &described).await;
        if result.is_err() {
            self.remember(&plan.key, &described);
        }
        result
    }

    /// Runs a step that missed and records it (see [`Solver::execute`]).
    async fn run_missed(
        self: &Arc<Self>,
        plan: &Arc<StepPlan>,
        tag: &crate::timeline::StepTag,
        described: &super::explain::Described,
    ) -> Result<Arc<StepResult>, SolveError> {
        let parent = self.materialize(&plan.parent).await?;
        let parent_snapshot = parent.clone();
        // Where the whole stdout and stderr are, when too long for the index.
        let mut files = [None, None];
        let (snapshot, outcome, started, no) = match &plan.kind {
            StepKind::Exec(exec) => {
                let mut mounts = self.mount_requests(&exec.mounts).await?;
                let (ca_mounts, ca_env) = self.ca_mounts(exec, parent.as_ref()).await?;
                mounts.extend(ca_mounts);
                let no = self.progress.queued_tagged(&plan.description, tag);
                // Bound services start now, for a step that really runs
                // (invariant 9), and never hold a job slot (a service is
                // not a job). Meanwhile the step's container and task are
                // made; its process starts when they are ready and a slot
                // is free. Not for a step that mounts a cache volume: its
                // volume lock would be held while it waits for a slot,
                // which a step holding a slot may wait for in turn; it
                // waits for its services, then its slot, then starts.
                let permit = Arc::new(StdMutex::new(None));
                let overlap = !exec.bindings.is_empty()
                    && !mounts
                        .iter()
                        .any(|m| matches!(m, MountRequest::Cache { .. }));
                let bound = async {
                    if overlap {
                        let (starting, network, gate) = self
                            .start_bound_services(plan, &exec.bindings, no, permit.clone())
                            .await?;
                        Ok::<_, SolveError>((None, Some(starting), Some(network), Some(gate)))
                    } else {
                        let (lease, network) = self.bind_services(plan, exec).await?;
                        *permit.lock().unwrap() = Some(self.job_slot().await?);
                        self.progress.running(no, &plan.description);
                        Ok((lease, None, network, None))
                    }
                };
                let (mut services, starting, network, start_gate) = match bound.await {
                    Ok(b) => b,
                    Err(e) => {
                        self.progress
                            .failed(no, &plan.description, &e.to_string(), &[]);
                        return Err(e);
                    }
                };
                let stderr_tail = StderrTail::default();
                let (output, forwarder) = self.forward_output(no, stderr_tail.clone());
                // With -i, the failure is shown before the shell opens.
                let shown_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let req = ExecRequest {
                    key: plan.key,
                    name: step_snapshot_name(&plan.key),
                    parent,
                    args: exec.args.clone(),
                    env: exec.process_env().into_iter().chain(ca_env).collect(),
                    cwd: exec.cwd.clone(),
                    user: exec.user.clone(),
                    mounts,
                    stdin: exec.stdin.as_ref().map(|s| s.clone().into_bytes()),
                    expect: exec.expect,
                    output: Some(output),
                    network: network.clone(),
                    terminal: match &self.debug_shell {
                        Some(command) => {
                            let progress = self.progress.clone();
                            let (what, at) = (plan.description.clone(), exec.at.clone());
                            let shown = shown_failed.clone();
                            let before = move |exit_code: i64| {
                                let mut reason = format!("exit code {exit_code}");
                                if let Some(at) = &at {
                                    reason.push_str(&format!(", created at {at}"));
                                }
                                let tail: Vec<String> = stderr_tail
                                    .lock()
                                    .expect("stderr tail lock poisoned")
                                    .iter()
                                    .cloned()
                                    .collect();
                                progress.failed(no, &what, &reason, tail.join("\n").as_bytes());
                                shown.store(true, std::sync::atomic::Ordering::SeqCst);
                            };
                            let mut shell = self.interactive(command.clone());
                            shell.before = Arc::new(before);
                            TerminalUse::OnFailure(shell)
                        }
                        None => TerminalUse::None,
                    },
                    start_gate,
                };
                let started = Instant::now();
                let mut result = self.worker.exec(req, self.cancel.clone()).await;
                if let Some(starting) = starting {
                    // Their own error (name, ports, output) rather than the
                    // step's "not started".
                    match starting.await {
                        Ok(Ok(lease)) => services = Some(lease),
                        Ok(Err(e)) => result = Err(e),
                        Err(e) => result = Err(SolveError::Internal(format!("services task: {e}"))),
                    }
                }
                self.unbind_services(services, network).await;
                // The last lines are shown before the step's end.
                let captured = forwarder.await;
                let mut outcome = match result {
                    Ok(o) => o,
                    Err(e) => {
                        let e = self.scrub_error(e);
                        let reason = match &exec.at {
                            Some(at) => format!("{e}\n  created at {at}"),
                            None => e.to_string(),
                        };
                        self.progress.failed(no, &plan.description, &reason, &[]);
                        return Err(e);
                    }
                };
                let [mut out, mut err] =
                    captured.map_err(|e| SolveError::Internal(format!("output task: {e}")))?;
                // A worker that did not stream its output returned it.
                out.push(&self.secrets.scrub(&outcome.stdout));
                err.push(&self.secrets.scrub(&outcome.stderr));
                let Some(snapshot) = outcome.snapshot.clone() else {
                    outcome.stderr = err.discard();
                    let mut reason = format!("exit code {}", outcome.exit_code);
                    if let Some(full) = &outcome.full_filesystem {
                        reason.push_str(&format!(", no space left on device: {full}"));
                    }
                    if let Some(at) = &exec.at {
                        reason.push_str(&format!(", created at {at}"));
                    }
                    if !shown_failed.load(std::sync::atomic::Ordering::SeqCst) {
                        self.progress
                            .failed(no, &plan.description, &reason, &outcome.stderr);
                    }
                    return Err(SolveError::ExecFailed {
                        command: shell_words(&exec.args),
                        exit_code: outcome.exit_code,
                        stderr_tail: tail_lines(&outcome.stderr, STDERR_TAIL_LINES),
                        expected_failure: exec.expect == crate::graph::Expect::Failure,
                        at: exec.at.clone(),
                        full_filesystem: outcome.full_filesystem.clone(),
                    });
                };
                let out = out.finish().map_err(SolveError::Internal)?;
                let err = err.finish().map_err(SolveError::Internal)?;
                outcome.stdout = out.text;
                outcome.stderr = err.text;
                files = [out.file, err.file];
                (snapshot, outcome, started, no)
            }
            StepKind::Tarball { image, name } => {
                let no = self.progress.started_tagged(&plan.description, tag);
                let started = Instant::now();
                let dest = TarballDest::Snapshot {
                    key: plan.key,
                    name: step_snapshot_name(&plan.key),
                };
                let snapshot = match self
                    .image_worker()?
                    .tarball(image, name.as_deref(), dest)
                    .await
                {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        return Err(SolveError::Internal("tarball snapshot missing".into()));
                    }
                    Err(e) => {
                        self.progress
                            .failed(no, &plan.description, &e.to_string(), &[]);
                        return Err(e);
                    }
                };
                let outcome = ExecOutcome::snapshot_only(snapshot.clone());
                (snapshot, outcome, started, no)
            }
            StepKind::Apply(actions) => {
                let mut resolved = Vec::with_capacity(actions.len());
                for a in actions {
                    resolved.push(self.file_action(a).await?);
                }
                let no = self.progress.started_tagged(&plan.description, tag);
                let started = Instant::now();
                let req = ApplyRequest {
                    key: plan.key,
                    name: step_snapshot_name(&plan.key),
                    parent,
                    actions: resolved,
                };
                let snapshot = match self.worker.apply(req).await {
                    Ok(s) => s,
                    Err(e) => {
                        self.progress
                            .failed(no, &plan.description, &e.to_string(), &[]);
                        return Err(e);
                    }
                };
                let outcome = ExecOutcome::snapshot_only(snapshot.clone());
                (snapshot, outcome, started, no)
            }
        };
        let millis = started.elapsed().as_millis();
        self.progress.commit_time(no, outcome.commit_ms);
        let upper = outcome.upper.clone();
        let output = plan.output_id(outcome.changes.as_deref());
        let result = Arc::new(StepResult {
            key: plan.key,
            snapshot,
            output,
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            stdout_file: files[0].clone(),
            stderr_file: files[1].clone(),
            exit_code: outcome.exit_code,
            plan: plan.clone(),
            remote: None,
        });
        self.record(&result, millis as u64, Some(&described.recorded))
            .await?;
        self.progress.done(no, &plan.description, millis);
        self.push_remote(&result, parent_snapshot, upper, millis as u64);
        Ok(result)
    }

    /// Records a step whose snapshot is committed: its index row second
    /// (with its size, measured once, for cache management; -1 when
    /// containerd can't tell), then the snapshot marked kept.
    pub(super) async fn record(
        &self,
        step: &StepResult,
        duration_ms: u64,
        inputs: Option<&crate::explain::Recorded>,
    ) -> Result<(), SolveError> {
        let size = self.worker.usage(&step.snapshot).await.unwrap_or(-1);
        rbuild_containerd::kill_point("step-committed");
        let row = StepRecord {
            key: step.key,
            snapshot: step.snapshot.clone(),
            output: step.output.clone(),
            stdout: step.stdout.clone(),
            stderr: step.stderr.clone(),
            stdout_file: step.stdout_file.clone(),
            stderr_file: step.stderr_file.clone(),
            exit_code: step.exit_code,
            duration_ms,
            description: step.plan.description.clone(),
            size,
        };
        self.index.put_step_with(&row, inputs)?;
        rbuild_containerd::kill_point("step-recorded");
        self.worker.keep(&step.snapshot).await
    }

    /// `--expect-cached`'s error for a step that would run, shown as the
    /// step's failure too.
    fn not_cached(&self, plan: &StepPlan, why: &crate::explain::Why) -> SolveError {
        let at = match &plan.kind {
            StepKind::Exec(exec) => exec.at.as_deref(),
            _ => None,
        };
        let message = format!(
            "--expect-cached: {} is not in the cache{}, so it would run; nothing was run\n  \
             cache miss: {}",
            plan.description,
            at.map(|a| format!(" (created at {a})")).unwrap_or_default(),
            why.short()
        );
        let no = self.progress.queued(&plan.description);
        self.progress.failed(no, &plan.description, &message, &[]);
        SolveError::Invalid(message)
    }

    /// A job slot, for as long as the permit is held.
    async fn job_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, SolveError> {
        let permit = self
            .jobs
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SolveError::Cancelled)?;
        if self.cancel.is_cancelled() {
            return Err(SolveError::Cancelled);
        }
        Ok(permit)
    }

    /// For a step that really runs and binds services: they start (and
    /// are held by the lease the task returns), the step gets a namespace
    /// of its own, and its start gate opens with their addresses once they
    /// are ready and a job slot (kept in `permit`) is free.
    #[allow(clippy::type_complexity)]
    async fn start_bound_services(
        self: &Arc<Self>,
        plan: &StepPlan,
        bindings: &[Binding],
        no: crate::progress::StepNo,
        permit: Arc<StdMutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
    ) -> Result<
        (
            tokio::task::JoinHandle<Result<Lease, SolveError>>,
            NetworkUse,
            StartGate,
        ),
        SolveError,
    > {
        let network = NetworkUse {
            attachment: self.worker.attach().await?,
            hostname: format!("step-{}", &plan.key.to_hex()[..12]),
            // Written when they are ready, before the process starts.
            hosts: Vec::new(),
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let bindings = bindings.to_vec();
        let starting = tokio::spawn(async move {
            let lease = this.acquire_services(&bindings).await;
            let _ = ready_tx.send(match &lease {
                Ok(l) => Ok(l.hosts()),
                Err(e) => Err(e.to_string()),
            });
            lease
        });
        let this = self.clone();
        let description = plan.description.clone();
        let gate = StartGate::new(async move {
            let hosts = ready_rx
                .await
                .map_err(|_| "its services never started".to_string())??;
            let slot = this.job_slot().await.map_err(|e| e.to_string())?;
            *permit.lock().unwrap() = Some(slot);
            this.progress.running(no, &description);
            Ok(hosts)
        });
        Ok((starting, network, gate))
    }

    /// For a step that binds services: they run (and are held) and the
    /// step gets a namespace of its own whose hosts file reaches them. A
    /// step without bindings gets a namespace only when its API asks for
    /// one (0.2 on); else it is on the host's network, as before.
    pub(super) async fn bind_services(
        self: &Arc<Self>,
        plan: &StepPlan,
        exec: &ExecPlan,
    ) -> Result<(Option<Lease>, Option<NetworkUse>), SolveError> {
        if !exec.namespaced() {
            return Ok((None, None));
        }
        let lease = if exec.bindings.is_empty() {
            None
        } else {
            Some(self.acquire_services(&exec.bindings).await?)
        };
        let network = NetworkUse {
            attachment: self.worker.attach().await?,
            hostname: format!("step-{}", &plan.key.to_hex()[..12]),
            hosts: lease.as_ref().map(Lease::hosts).unwrap_or_default(),
        };
        Ok((lease, Some(network)))
    }

    /// After the step: its namespace goes, its services may stop (after
    /// their grace period).
    pub(super) async fn unbind_services(&self, lease: Option<Lease>, network: Option<NetworkUse>) {
        if let Some(n) = network
            && let Err(e) = self.worker.detach(n.attachment).await
        {
            tracing::warn!(error = %e, "removing a step's network namespace failed");
        }
        drop(lease);
    }

    /// A channel for a running step's output, and the task that shows it
    /// line by line and captures it (see `output`), both scrubbed (also of
    /// secrets split across writes). The task runs on a blocking thread,
    /// since it writes output files; the channel is bounded, so a step
    /// that prints faster than that is slowed down, not buffered.
    pub(super) fn forward_output(
        &self,
        no: crate::progress::StepNo,
        stderr_tail: StderrTail,
    ) -> (
        tokio::sync::mpsc::Sender<rbuild_runtime::OutputChunk>,
        tokio::task::JoinHandle<[Capture; 2]>,
    ) {
        use crate::progress::{LineSplitter, Stream};
        let (tx, mut rx) = tokio::sync::mpsc::channel::<rbuild_runtime::OutputChunk>(16);
        let progress = self.progress.clone();
        let secrets = self.secrets.clone();
        let outputs = self.outputs.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut streams: [(StreamScrubber, Capture, LineSplitter); 2] = [
                (
                    StreamScrubber::new(secrets.clone()),
                    outputs.capture(),
                    LineSplitter::default(),
                ),
                (
                    StreamScrubber::new(secrets),
                    outputs.capture(),
                    LineSplitter::default(),
                ),
            ];
            let which = |s: rbuild_runtime::Stream| match s {
                rbuild_runtime::Stream::Stdout => (0, Stream::Stdout),
                rbuild_runtime::Stream::Stderr => (1, Stream::Stderr),
            };
            while let Some(chunk) = rx.blocking_recv() {
                let (i, stream) = which(chunk.stream);
                let (scrubber, capture, lines) = &mut streams[i];
                let shown = scrubber.push(&chunk.bytes);
                capture.push(&shown);
                for line in lines.push(&shown) {
                    if stream == Stream::Stderr {
                        let mut tail = stderr_tail.lock().expect("stderr tail lock poisoned");
                        if tail.len() == crate::progress::STDERR_TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(line.clone());
                    }
                    progress.output(no, stream, &line);
                }
            }
            let [
                (mut out_scrubber, mut out, mut out_lines),
                (mut err_scrubber, mut err, mut err_lines),
            ] = streams;
            for (scrubber, capture, lines, stream) in [
                (&mut out_scrubber, &mut out, &mut out_lines, Stream::Stdout),
                (&mut err_scrubber, &mut err, &mut err_lines, Stream::Stderr),
            ] {
                let rest = scrubber.finish();
                capture.push(&rest);
                for line in lines.push(&rest).into_iter().chain(lines.finish()) {
                    progress.output(no, stream, &line);
                }
            }
            [out, err]
        });
        (tx, task)
    }

    pub(super) fn scrub_error(&self, e: SolveError) -> SolveError {
        match e {
            SolveError::Invalid(m) => SolveError::Invalid(self.secrets.scrub_str(&m)),
            SolveError::Internal(m) => SolveError::Internal(self.secrets.scrub_str(&m)),
            other => other,
        }
    }

    pub(super) async fn mount_requests(
        self: &Arc<Self>,
        mounts: &[(String, MountSpec)],
    ) -> Result<Vec<MountRequest>, SolveError> {
        let mut out = Vec::with_capacity(mounts.len());
        for (target, m) in mounts {
            let target = target.clone();
            out.push(match m {
                MountSpec::Directory(d) => MountRequest::Snapshot {
                    target,
                    snapshot: self.materialize(&d.tree).await?,
                    path: d.path.clone(),
                    file: false,
                },
                MountSpec::File(f) => MountRequest::Snapshot {
                    target,
                    snapshot: self.materialize(&f.tree).await?,
                    path: f.path.clone(),
                    file: true,
                },
                MountSpec::Cache { volume, sharing } => MountRequest::Cache {
                    target,
                    volume: volume.clone(),
                    sharing: *sharing,
                },
                MountSpec::Temp => MountRequest::Temp { target },
                MountSpec::Secret { secret, mode } => MountRequest::Secret {
                    target,
                    plaintext: Arc::new(secret.plaintext().to_vec()),
                    mode: *mode,
                },
                // Made when the step runs, from its root filesystem (`ca_mounts`).
                MountSpec::Ca(_) => continue,
            });
        }
        Ok(out)
    }

    pub(super) async fn file_action(
        self: &Arc<Self>,
        a: &PlannedAction,
    ) -> Result<FileAction, SolveError> {
        Ok(match a {
            PlannedAction::CopyDir {
                dest,
                source,
                include,
                exclude,
                owner,
            } => FileAction::Copy {
                dest: dest.clone(),
                source: self.source(&source.tree, &source.path).await?,
                include: include.clone(),
                exclude: exclude.clone(),
                owner: owner.clone(),
                permissions: None,
            },
            PlannedAction::CopyFile {
                dest,
                source,
                permissions,
                owner,
            } => FileAction::Copy {
                dest: dest.clone(),
                source: self.source(&source.tree, &source.path).await?,
                include: Vec::new(),
                exclude: Vec::new(),
                owner: owner.clone(),
                permissions: *permissions,
            },
            PlannedAction::Write {
                dest,
                contents,
                permissions,
                owner,
            } => FileAction::Write {
                dest: dest.clone(),
                contents: contents.clone(),
                permissions: *permissions,
                owner: owner.clone(),
            },
            PlannedAction::Remove { path } => FileAction::Remove { path: path.clone() },
            PlannedAction::Diff { base, other } => FileAction::Diff {
                base: self.source(&base.tree, &base.path).await?,
                other: self.source(&other.tree, &other.path).await?,
            },
        })
    }

    /// Makes a tree present as a snapshot and returns its name: pulls an
    /// image, imports a host directory, or checks a step's snapshot and, if
    /// it has gone missing (pruned behind rbuild's back), runs that step again.
    pub(super) fn materialize<'a>(
        self: &'a Arc<Self>,
        tree: &'a Tree,
    ) -> BoxFuture<'a, Result<Option<SnapshotId>, SolveError>> {
        async move {
            match tree {
                Tree::Empty => Ok(None),
                Tree::Image(image) => {
                    let this = self.clone();
                    let image = image.clone();
                    self.pulls
                        .get_or_start(&self.tasks, image.manifest.digest.clone(), move || async move {
                            let what = format!("pull {}", image.reference);
                            let tag = crate::timeline::StepTag {
                                kind: "pull",
                                key: format!("image:{}", image.manifest.digest),
                                ..Default::default()
                            };
                            let no = this.progress.started_tagged(&what, &tag);
                            let started = Instant::now();
                            match this.worker.pull_image(&image).await {
                                Ok((snapshot, report)) => {
                                    this.progress.bytes(no, report.bytes_fetched, 0);
                                    this.progress.finished(
                                        no,
                                        started.elapsed().as_millis(),
                                        &report.to_string(),
                                    );
                                    Ok(snapshot)
                                }
                                Err(e) => {
                                    this.progress.failed(no, &what, &e.to_string(), &[]);
                                    Err(e)
                                }
                            }
                        })
                        .await
                }
                Tree::Host(listing) => {
                    let action = PlannedAction::CopyDir {
                        dest: "/".into(),
                        source: DirValue {
                            tree: Tree::Host(listing.clone()),
                            path: "/".into(),
                        },
                        include: Vec::new(),
                        exclude: Vec::new(),
                        owner: None,
                    };
                    let mut plan = StepPlan::apply(Tree::Empty, vec![action]);
                    plan.description = format!(
                        "import {} ({} entries)",
                        listing.root.display(),
                        listing.entries.len()
                    );
                    let step = self.step(plan).await?;
                    self.materialize(&Tree::Step(step)).await
                }
                Tree::Step(step) => {
                    if self.worker.snapshot_exists(&step.snapshot).await? {
                        return Ok(Some(step.snapshot.clone()));
                    }
                    if step.remote.is_none() {
                        tracing::warn!(key = %step.key, "cached step's snapshot is gone; running it again");
                    }
                    self.index.delete_step(&step.key)?;
                    let this = self.clone();
                    let step = step.clone();
                    let snap = self
                        .remakes
                        .get_or_start(&self.tasks, step.key.to_hex(), move || async move {
                            // A remote hit's snapshot comes from its entry;
                            // one that cannot be used is a miss after all.
                            if let Some(hit) = &step.remote {
                                match this.import_remote(&step, hit).await {
                                    Ok(s) => return Ok(s),
                                    Err(SolveError::Cancelled) => return Err(SolveError::Cancelled),
                                    Err(e) => this.progress.warn(&format!(
                                        "remote cache {}: the entry of {} was not usable, so it runs here: {e}",
                                        crate::remote::shown(&hit.repo),
                                        step.plan.description
                                    )),
                                }
                            }
                            this.execute(&step.plan).await.map(|r| r.snapshot.clone())
                        })
                        .await?;
                    Ok(Some(snap))
                }
            }
        }
        .boxed()
    }
}

/// A running step's last stderr lines (scrubbed), for a failure shown
/// before `-i`'s shell opens.
pub(super) type StderrTail = Arc<std::sync::Mutex<std::collections::VecDeque<String>>>;
