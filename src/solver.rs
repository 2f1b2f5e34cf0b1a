//! The solver: evaluates a pipeline value into results, step by step,
//! answering from the cache index where it can and running the rest through
//! the [`Machinery`].
//!
//! It owns the cache semantics (keys per DESIGN.md invariant 1, row after
//! snapshot per invariant 2, identical work once per invariant 5, bounded
//! parallelism per invariant 6). It never speaks gRPC: everything that
//! touches containerd or a registry is behind [`Machinery`], so the solver's
//! logic is testable with a fake.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use rbuild_runtime::CancellationToken;
use rbuild_snapshotter::{ImageRef, Platform, PullReport, ResolvedImage};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::graph::{ContainerDef, ContainerOp, shell_words};
use crate::index::{Index, SnapshotId, StepRecord};
use crate::key::{CacheKey, KeyBuilder};
use crate::progress::{Progress, STDERR_TAIL_LINES, tail_lines};

/// Errors a pipeline sees. Cloneable, because one result may answer several
/// requests for the same step.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SolveError {
    #[error("{0}")]
    Image(String),
    #[error(
        "step failed: {command}\n  exit code: {exit_code}{}",
        if stderr_tail.is_empty() { String::new() } else {
            format!("\n  stderr (last lines):\n{}", indent(stderr_tail))
        }
    )]
    ExecFailed {
        command: String,
        exit_code: i64,
        stderr_tail: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
    #[error("cancelled")]
    Cancelled,
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl From<rbuild_snapshotter::Error> for SolveError {
    fn from(e: rbuild_snapshotter::Error) -> Self {
        match e {
            rbuild_snapshotter::Error::Containerd(rbuild_runtime::Error::Cancelled) => {
                SolveError::Cancelled
            }
            rbuild_snapshotter::Error::Containerd(e) => SolveError::Internal(e.to_string()),
            other => SolveError::Image(other.to_string()),
        }
    }
}

impl From<rbuild_runtime::Error> for SolveError {
    fn from(e: rbuild_runtime::Error) -> Self {
        match e {
            rbuild_runtime::Error::Cancelled => SolveError::Cancelled,
            other => SolveError::Internal(other.to_string()),
        }
    }
}

impl From<crate::index::IndexError> for SolveError {
    fn from(e: crate::index::IndexError) -> Self {
        SolveError::Internal(e.to_string())
    }
}

/// A step to run on a cache miss.
#[derive(Clone, Debug)]
pub struct ExecRequest {
    pub key: CacheKey,
    /// Snapshot the root filesystem starts from; None for an empty one.
    pub parent: Option<SnapshotId>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
}

/// What running a step produced. `snapshot` is set (committed) only on exit code 0.
#[derive(Clone, Debug)]
pub struct ExecOutcome {
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub snapshot: Option<SnapshotId>,
}

/// Everything the solver needs from containerd and registries.
pub trait Machinery: Send + Sync + 'static {
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
    /// Runs a step; on exit code 0 commits its snapshot under a name derived from the key.
    fn exec(
        &self,
        req: ExecRequest,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<ExecOutcome, SolveError>> + Send;
    /// Marks a committed step snapshot as kept (called after its index row exists).
    fn keep(&self, snapshot: &SnapshotId) -> impl Future<Output = Result<(), SolveError>> + Send;
}

/// A step's result as the pipeline sees it.
#[derive(Clone, Debug)]
pub struct StepOutput {
    pub key: CacheKey,
    pub snapshot: SnapshotId,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i64,
}

/// What a container's root filesystem is, and how to identify its content.
#[derive(Clone, Debug)]
enum Rootfs {
    Scratch,
    Image(Arc<ResolvedImage>),
    Step {
        output: Arc<StepOutput>,
        /// How to make it again if its snapshot has gone missing.
        plan: Arc<ExecPlan>,
    },
}

impl Rootfs {
    /// The content identity fed into cache keys.
    fn content_id(&self) -> String {
        match self {
            Rootfs::Scratch => "scratch".into(),
            Rootfs::Image(img) => format!("image:{}", img.manifest.digest),
            Rootfs::Step { output, .. } => format!("step:{}", output.key),
        }
    }
}

#[derive(Debug)]
struct ExecPlan {
    key: CacheKey,
    parent: Rootfs,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    user: String,
    description: String,
}

/// A container value after evaluation.
#[derive(Clone, Debug)]
pub struct ContainerState {
    rootfs: Rootfs,
    env: Vec<(String, String)>,
    workdir: String,
    user: String,
    last_exec: Option<Arc<StepOutput>>,
}

impl ContainerState {
    fn scratch() -> ContainerState {
        ContainerState {
            rootfs: Rootfs::Scratch,
            env: Vec::new(),
            workdir: "/".into(),
            user: String::new(),
            last_exec: None,
        }
    }

    fn set_env(&mut self, name: &str, value: &str) {
        match self.env.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.env.push((name.to_string(), value.to_string())),
        }
    }

    fn env_strings(&self) -> Vec<String> {
        self.env.iter().map(|(n, v)| format!("{n}={v}")).collect()
    }

    /// The last `with_exec`'s result, or an error saying there is none.
    pub fn last_exec(&self, asked: &str) -> Result<&StepOutput, SolveError> {
        self.last_exec.as_deref().ok_or_else(|| {
            SolveError::Invalid(format!(
                "{asked}: the container has run no command; add .with_exec([...]) before asking for its {asked}"
            ))
        })
    }
}

type MemoFuture<T> = Shared<BoxFuture<'static, Result<T, SolveError>>>;

/// Results being computed or computed in this run, by identity: the same
/// identity asked twice at once is computed once.
struct Memo<T: Clone> {
    map: Mutex<HashMap<String, MemoFuture<T>>>,
}

impl<T: Clone + Send + Sync + 'static> Memo<T> {
    fn new() -> Self {
        Memo {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The running or finished computation for `id`, or a new one. It runs
    /// in its own task so that it completes (and cleans up) even when every
    /// requester has gone away.
    fn get_or_start<F>(
        &self,
        tasks: &TaskTracker,
        id: String,
        start: impl FnOnce() -> F,
    ) -> MemoFuture<T>
    where
        F: Future<Output = Result<T, SolveError>> + Send + 'static,
    {
        let mut map = self.map.lock().expect("memo lock poisoned");
        if let Some(f) = map.get(&id) {
            return f.clone();
        }
        let handle = tasks.spawn(start());
        let fut = async move {
            handle
                .await
                .unwrap_or_else(|e| Err(SolveError::Internal(format!("step task failed: {e}"))))
        }
        .boxed()
        .shared();
        map.insert(id, fut.clone());
        fut
    }
}

pub struct Solver<M: Machinery> {
    machinery: M,
    index: Arc<Index>,
    progress: Arc<Progress>,
    platform: Platform,
    jobs: Semaphore,
    cancel: CancellationToken,
    tasks: TaskTracker,
    images: Memo<Arc<ResolvedImage>>,
    pulls: Memo<Option<SnapshotId>>,
    steps: Memo<Arc<StepOutput>>,
    remakes: Memo<SnapshotId>,
}

impl<M: Machinery> Solver<M> {
    pub fn new(
        machinery: M,
        index: Arc<Index>,
        progress: Arc<Progress>,
        platform: Platform,
        jobs: usize,
    ) -> Arc<Self> {
        Arc::new(Solver {
            machinery,
            index,
            progress,
            platform,
            jobs: Semaphore::new(jobs.max(1)),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            images: Memo::new(),
            pulls: Memo::new(),
            steps: Memo::new(),
            remakes: Memo::new(),
        })
    }

    pub fn machinery(&self) -> &M {
        &self.machinery
    }

    /// Cancels running steps and waits until they have cleaned up.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Evaluates a container value: every `with_exec` in it has a result after this.
    pub async fn container(
        self: &Arc<Self>,
        def: &ContainerDef,
    ) -> Result<ContainerState, SolveError> {
        let mut st = ContainerState::scratch();
        for op in &def.ops {
            match op {
                ContainerOp::From { address } => {
                    let image = self.resolve_image(address).await?;
                    let defaults = image.defaults();
                    st = ContainerState::scratch();
                    for kv in &defaults.env {
                        let (n, v) = kv.split_once('=').unwrap_or((kv, ""));
                        st.set_env(n, v);
                    }
                    st.workdir = defaults.working_dir.unwrap_or_else(|| "/".into());
                    st.user = defaults.user.unwrap_or_default();
                    st.rootfs = Rootfs::Image(image);
                }
                ContainerOp::WithEnvVariable { name, value } => {
                    if name.is_empty() || name.contains('=') {
                        return Err(SolveError::Invalid(format!(
                            "with_env_variable: {name:?} is not a valid variable name"
                        )));
                    }
                    st.set_env(name, value);
                }
                ContainerOp::WithWorkdir { path } => {
                    st.workdir = join_path(&st.workdir, path);
                }
                ContainerOp::WithExec { args } => {
                    let output = self.exec(&st, args).await?;
                    st.rootfs = Rootfs::Step {
                        output: output.0.clone(),
                        plan: output.1,
                    };
                    st.last_exec = Some(output.0);
                }
            }
        }
        Ok(st)
    }

    async fn resolve_image(
        self: &Arc<Self>,
        address: &str,
    ) -> Result<Arc<ResolvedImage>, SolveError> {
        let reference = ImageRef::parse(address)?;
        let this = self.clone();
        self.images
            .get_or_start(&self.tasks, reference.to_string(), move || async move {
                let digest = this.machinery.resolve_digest(&reference).await?;
                let platform = this.platform.to_string();
                if let Some(json) = this.index.get_image(&digest, &platform)?
                    && let Ok(img) = serde_json::from_str::<ResolvedImage>(&json)
                    && img.reference == reference.to_string()
                {
                    return Ok(Arc::new(img));
                }
                let img = this
                    .machinery
                    .describe_image(&reference, &digest, &this.platform)
                    .await?;
                let json = serde_json::to_string(&img)
                    .map_err(|e| SolveError::Internal(format!("encode image: {e}")))?;
                this.index.put_image(&digest, &platform, &json)?;
                Ok(Arc::new(img))
            })
            .await
    }

    async fn exec(
        self: &Arc<Self>,
        st: &ContainerState,
        args: &[String],
    ) -> Result<(Arc<StepOutput>, Arc<ExecPlan>), SolveError> {
        if args.is_empty() {
            return Err(SolveError::Invalid(
                "with_exec: the argument list is empty; give the command and its arguments".into(),
            ));
        }
        if matches!(st.rootfs, Rootfs::Scratch) {
            return Err(SolveError::Invalid(format!(
                "with_exec({}): the container has no root filesystem; start it with .from(\"<image>\")",
                shell_words(args)
            )));
        }
        let env = st.env_strings();
        let mut sorted_env = env.clone();
        sorted_env.sort();
        let key = KeyBuilder::new("exec")
            .list("args", args)
            .list("env", &sorted_env)
            .field("workdir", &st.workdir)
            .field("user", &st.user)
            .field("platform", &self.platform.to_string())
            .field("input.rootfs", &st.rootfs.content_id())
            .finish();
        let plan = Arc::new(ExecPlan {
            key,
            parent: st.rootfs.clone(),
            args: args.to_vec(),
            env,
            cwd: st.workdir.clone(),
            user: st.user.clone(),
            description: format!("exec {}", shell_words(args)),
        });
        let this = self.clone();
        let p = plan.clone();
        let output = self
            .steps
            .get_or_start(&self.tasks, key.to_hex(), move || async move {
                this.run_step(&p).await
            })
            .await?;
        Ok((output, plan))
    }

    async fn run_step(
        self: &Arc<Self>,
        plan: &Arc<ExecPlan>,
    ) -> Result<Arc<StepOutput>, SolveError> {
        if let Some(rec) = self.index.get_step(&plan.key)? {
            self.progress.cached(&plan.description);
            return Ok(Arc::new(StepOutput {
                key: rec.key,
                snapshot: rec.snapshot,
                stdout: rec.stdout,
                stderr: rec.stderr,
                exit_code: rec.exit_code,
            }));
        }
        let (snapshot, outcome) = self.execute(plan).await?;
        Ok(Arc::new(StepOutput {
            key: plan.key,
            snapshot,
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            exit_code: outcome.exit_code,
        }))
    }

    /// Runs a step on the machinery and records it: snapshot committed
    /// first, index row second, then the snapshot is marked kept.
    async fn execute(
        self: &Arc<Self>,
        plan: &Arc<ExecPlan>,
    ) -> Result<(SnapshotId, ExecOutcome), SolveError> {
        let parent = self.materialize(&plan.parent).await?;
        let _permit = self
            .jobs
            .acquire()
            .await
            .map_err(|_| SolveError::Cancelled)?;
        if self.cancel.is_cancelled() {
            return Err(SolveError::Cancelled);
        }
        let no = self.progress.started(&plan.description);
        let started = Instant::now();
        let req = ExecRequest {
            key: plan.key,
            parent,
            args: plan.args.clone(),
            env: plan.env.clone(),
            cwd: plan.cwd.clone(),
            user: plan.user.clone(),
        };
        let outcome = match self.machinery.exec(req, self.cancel.clone()).await {
            Ok(o) => o,
            Err(e) => {
                self.progress
                    .failed(no, &plan.description, &e.to_string(), &[]);
                return Err(e);
            }
        };
        let millis = started.elapsed().as_millis();
        let Some(snapshot) = outcome.snapshot.clone().filter(|_| outcome.exit_code == 0) else {
            let command = shell_words(&plan.args);
            self.progress.failed(
                no,
                &plan.description,
                &format!("exit code {}", outcome.exit_code),
                &outcome.stderr,
            );
            return Err(SolveError::ExecFailed {
                command,
                exit_code: outcome.exit_code,
                stderr_tail: tail_lines(&outcome.stderr, STDERR_TAIL_LINES),
            });
        };
        self.index.put_step(&StepRecord {
            key: plan.key,
            snapshot: snapshot.clone(),
            stdout: outcome.stdout.clone(),
            stderr: outcome.stderr.clone(),
            exit_code: outcome.exit_code,
            duration_ms: millis as u64,
            description: plan.description.clone(),
        })?;
        self.machinery.keep(&snapshot).await?;
        self.progress.done(no, millis);
        Ok((snapshot, outcome))
    }

    /// Makes a root filesystem present and returns its snapshot name:
    /// pulls an image, or checks a step's snapshot and, if it has gone
    /// missing (pruned behind rbuild's back), runs that step again.
    fn materialize<'a>(
        self: &'a Arc<Self>,
        rootfs: &'a Rootfs,
    ) -> BoxFuture<'a, Result<Option<SnapshotId>, SolveError>> {
        async move {
            match rootfs {
                Rootfs::Scratch => Ok(None),
                Rootfs::Image(image) => {
                    let this = self.clone();
                    let image = image.clone();
                    self.pulls
                        .get_or_start(&self.tasks, image.manifest.digest.clone(), move || async move {
                            let no = this.progress.started(&format!("pull {}", image.reference));
                            let started = Instant::now();
                            match this.machinery.pull_image(&image).await {
                                Ok((snapshot, report)) => {
                                    this.progress.finished(
                                        no,
                                        started.elapsed().as_millis(),
                                        &report.to_string(),
                                    );
                                    Ok(snapshot)
                                }
                                Err(e) => {
                                    this.progress.failed(
                                        no,
                                        &format!("pull {}", image.reference),
                                        &e.to_string(),
                                        &[],
                                    );
                                    Err(e)
                                }
                            }
                        })
                        .await
                }
                Rootfs::Step { output, plan } => {
                    if self.machinery.snapshot_exists(&output.snapshot).await? {
                        return Ok(Some(output.snapshot.clone()));
                    }
                    tracing::warn!(key = %output.key, "cached step's snapshot is gone; running it again");
                    self.index.delete_step(&output.key)?;
                    let this = self.clone();
                    let plan = plan.clone();
                    let snap = self
                        .remakes
                        .get_or_start(&self.tasks, output.key.to_hex(), move || async move {
                            this.execute(&plan).await.map(|(s, _)| s)
                        })
                        .await?;
                    Ok(Some(snap))
                }
            }
        }
        .boxed()
    }
}

/// Resolves `path` against the working directory `base`, as `cd` would.
pub fn join_path(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", base.trim_end_matches('/'), path)
    };
    let mut parts: Vec<&str> = Vec::new();
    for p in joined.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
#[path = "solver_tests.rs"]
mod tests;
