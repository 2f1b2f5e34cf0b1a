//! The solver: evaluates pipeline values (containers, directories, files)
//! into results, answering from the cache index where it can and running
//! the rest through the [`Machinery`].
//!
//! It owns the cache semantics: keys per DESIGN.md invariant 1 (see
//! [`values`]), row after snapshot per invariant 2, identical work once per
//! invariant 5 (in this process by memoization, across processes by a lock
//! file per key), bounded parallelism per invariant 6. It never speaks gRPC:
//! everything that touches containerd, a registry or the host's files is
//! behind [`Machinery`], so the solver's logic is testable with a fake.

pub mod machinery;
pub mod values;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use rbuild_runtime::CancellationToken;
use rbuild_snapshotter::export::{BlobPush, BuiltImage, ImageFormat, Layer};
use rbuild_snapshotter::tree::{self, Filter, HostListing};
use rbuild_snapshotter::{ImageRef, Platform, ResolvedImage};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::graph::{
    ContainerDef, ContainerOp, DirectoryDef, DirectoryOp, DirectorySource, FileDef, SecretDef,
    shell_words,
};
use crate::index::{Index, SnapshotId, StepRecord};
use crate::locks::KeyLocks;
use crate::progress::{Progress, STDERR_TAIL_LINES, tail_lines};
use crate::secrets::{SecretValue, Secrets, StreamScrubber};

pub use machinery::{
    ApplyRequest, ExecOutcome, ExecRequest, FileAction, Interactive, Machinery, MountRequest,
    ReadAnswer, ReadOp, Source, TarballDest, TerminalUse,
};
pub use values::{
    ContainerState, DirValue, EnvValue, ExecPlan, FileValue, MountSpec, PlannedAction, StepKind,
    StepPlan, StepResult, Tree,
};

/// Errors a pipeline sees. Cloneable, because one result may answer several
/// requests for the same step.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SolveError {
    #[error("{0}")]
    Image(String),
    #[error(
        "step failed: {command}\n  exit code: {exit_code}{}{}{}",
        if *expected_failure { " (a failure was expected)" } else { "" },
        at.as_ref().map(|a| format!("\n  created at: {a}")).unwrap_or_default(),
        if stderr_tail.is_empty() { String::new() } else {
            format!("\n  stderr (last lines):\n{}", indent(stderr_tail))
        }
    )]
    ExecFailed {
        command: String,
        exit_code: i64,
        stderr_tail: String,
        expected_failure: bool,
        /// Where in the pipeline the step was made (file:line).
        at: Option<String>,
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
        use rbuild_snapshotter::Error as E;
        match e {
            E::Containerd(e) => e.into(),
            e @ (E::Io { .. } | E::InvalidPattern { .. }) => SolveError::Invalid(e.to_string()),
            other => SolveError::Image(other.to_string()),
        }
    }
}

impl From<rbuild_containerd::Error> for SolveError {
    fn from(e: rbuild_containerd::Error) -> Self {
        SolveError::Internal(e.to_string())
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
    secrets: Arc<Secrets>,
    locks: KeyLocks,
    debug_shell: Option<Vec<String>>,
    platform: Platform,
    jobs: Semaphore,
    cancel: CancellationToken,
    tasks: TaskTracker,
    images: Memo<Arc<ResolvedImage>>,
    imports: Memo<Arc<ResolvedImage>>,
    hosts: Memo<Arc<HostListing>>,
    pulls: Memo<Option<SnapshotId>>,
    steps: Memo<Arc<StepResult>>,
    remakes: Memo<SnapshotId>,
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
}

impl<M: Machinery> Solver<M> {
    pub fn new(
        machinery: M,
        index: Arc<Index>,
        progress: Arc<Progress>,
        config: SolverConfig,
    ) -> Arc<Self> {
        Arc::new(Solver {
            machinery,
            index,
            progress,
            secrets: config.secrets,
            locks: KeyLocks::new(&config.lock_dir),
            debug_shell: config.debug_shell,
            platform: config.platform,
            jobs: Semaphore::new(config.jobs.max(1)),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            images: Memo::new(),
            imports: Memo::new(),
            hosts: Memo::new(),
            pulls: Memo::new(),
            steps: Memo::new(),
            remakes: Memo::new(),
        })
    }

    pub fn machinery(&self) -> &M {
        &self.machinery
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Cancels running steps and waits until they have cleaned up.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    // ---------------------------------------------------------------- values

    /// Evaluates a container value: every step in it has a result after this.
    pub fn container<'a>(
        self: &'a Arc<Self>,
        def: &'a ContainerDef,
    ) -> BoxFuture<'a, Result<ContainerState, SolveError>> {
        async move {
            let mut st = ContainerState::scratch();
            for (i, op) in def.ops.iter().enumerate() {
                let at = def.at.get(i).cloned().flatten();
                self.container_op(&mut st, op, at).await?;
            }
            Ok(st)
        }
        .boxed()
    }

    async fn container_op(
        self: &Arc<Self>,
        st: &mut ContainerState,
        op: &ContainerOp,
        at: Option<String>,
    ) -> Result<(), SolveError> {
        match op {
            ContainerOp::From { address } => {
                *st = ContainerState::from_image(self.resolve_image(address).await?);
            }
            ContainerOp::Import { file } => {
                let f = self.file(file).await?;
                let image = self.import_image(&f).await?;
                *st = ContainerState::from_image(image);
            }
            ContainerOp::WithExposedPort { port, protocol } => {
                st.exposed_ports
                    .insert(format!("{port}/{}", protocol.to_lowercase()));
            }
            ContainerOp::WithRegistryAuth {
                address,
                username,
                secret,
            } => {
                let host = ImageRef::parse(address)
                    .map(|r| r.registry().to_string())
                    .unwrap_or_else(|_| address.clone());
                let secret = self.secret(secret)?;
                st.registry_auth.insert(host, (username.clone(), secret));
            }
            ContainerOp::WithEnvVariable {
                name,
                value,
                expand,
            } => {
                check_env_name(name)?;
                let value = if *expand {
                    expand_env(value, |n| st.plain_env(n).map(str::to_string))
                } else {
                    value.clone()
                };
                st.set_env(name, EnvValue::Plain(value));
            }
            ContainerOp::WithoutEnvVariable { name } => st.env.retain(|(n, _)| n != name),
            ContainerOp::WithSecretVariable { name, secret } => {
                check_env_name(name)?;
                let secret = self.secret(secret)?;
                st.set_env(name, EnvValue::Secret(secret));
            }
            ContainerOp::WithWorkdir { path } => st.workdir = st.resolve(path),
            ContainerOp::WithUser { name } => st.user = name.clone(),
            ContainerOp::WithEntrypoint { args } => st.entrypoint = args.clone(),
            ContainerOp::WithDefaultArgs { args } => st.default_args = args.clone(),
            ContainerOp::WithLabel { name, value } => {
                st.labels.insert(name.clone(), value.clone());
            }
            ContainerOp::WithExec {
                args,
                expect,
                stdin,
                use_entrypoint,
            } => {
                let mut argv = if args.is_empty() {
                    st.default_args.clone()
                } else {
                    args.clone()
                };
                if *use_entrypoint || args.is_empty() {
                    argv = st.entrypoint.iter().cloned().chain(argv).collect();
                }
                if argv.is_empty() {
                    return Err(SolveError::Invalid(
                        "with_exec: no command: the argument list is empty and the container has no default args".into(),
                    ));
                }
                if matches!(st.rootfs, Tree::Empty) {
                    return Err(SolveError::Invalid(format!(
                        "with_exec({}): the container has no root filesystem; start it with .from(\"<image>\")",
                        shell_words(&argv)
                    )));
                }
                let plan = StepPlan::exec(
                    st.rootfs.clone(),
                    ExecPlan {
                        args: argv,
                        at,
                        env: st.env.clone(),
                        cwd: st.workdir.clone(),
                        user: st.user.clone(),
                        mounts: st
                            .mounts
                            .iter()
                            .map(|(t, m)| (t.clone(), m.clone()))
                            .collect(),
                        stdin: stdin.clone(),
                        expect: *expect,
                    },
                    &self.platform.to_string(),
                );
                let result = self.step(plan).await?;
                st.rootfs = Tree::Step(result.clone());
                st.last_exec = Some(result);
            }
            ContainerOp::WithDirectory {
                path,
                directory,
                include,
                exclude,
                owner,
            } => {
                let source = self.directory(directory).await?;
                let action = PlannedAction::CopyDir {
                    dest: st.resolve(path),
                    source,
                    include: include.clone(),
                    exclude: exclude.clone(),
                    owner: owner.clone(),
                };
                st.rootfs = self.apply(st.rootfs.clone(), action).await?;
            }
            ContainerOp::WithFile {
                path,
                file,
                permissions,
                owner,
            } => {
                let source = self.file(file).await?;
                let action = PlannedAction::CopyFile {
                    dest: st.resolve(path),
                    source,
                    permissions: *permissions,
                    owner: owner.clone(),
                };
                st.rootfs = self.apply(st.rootfs.clone(), action).await?;
            }
            ContainerOp::WithNewFile {
                path,
                contents,
                permissions,
                owner,
            } => {
                let action = PlannedAction::Write {
                    dest: st.resolve(path),
                    contents: Arc::new(contents.clone().into_bytes()),
                    permissions: permissions.unwrap_or(0o644),
                    owner: owner.clone(),
                };
                st.rootfs = self.apply(st.rootfs.clone(), action).await?;
            }
            ContainerOp::WithoutFile { path } | ContainerOp::WithoutDirectory { path } => {
                let action = PlannedAction::Remove {
                    path: st.resolve(path),
                };
                st.rootfs = self.apply(st.rootfs.clone(), action).await?;
            }
            ContainerOp::WithMountedDirectory { path, directory } => {
                let dir = self.directory(directory).await?;
                st.mounts
                    .insert(st.resolve(path), MountSpec::Directory(dir));
            }
            ContainerOp::WithMountedFile { path, file } => {
                let f = self.file(file).await?;
                st.mounts.insert(st.resolve(path), MountSpec::File(f));
            }
            ContainerOp::WithMountedCache {
                path,
                volume,
                sharing,
            } => {
                if volume.is_empty() {
                    return Err(SolveError::Invalid(
                        "with_mounted_cache: the cache volume needs a name".into(),
                    ));
                }
                st.mounts.insert(
                    st.resolve(path),
                    MountSpec::Cache {
                        volume: volume.clone(),
                        sharing: *sharing,
                    },
                );
            }
            ContainerOp::WithMountedTemp { path } => {
                st.mounts.insert(st.resolve(path), MountSpec::Temp);
            }
            ContainerOp::WithMountedSecret { path, secret, mode } => {
                let secret = self.secret(secret)?;
                st.mounts.insert(
                    st.resolve(path),
                    MountSpec::Secret {
                        secret,
                        mode: mode.unwrap_or(0o400),
                    },
                );
            }
            ContainerOp::WithoutMount { path } => {
                st.mounts.remove(&st.resolve(path));
            }
        }
        Ok(())
    }

    /// Evaluates a directory value.
    pub fn directory<'a>(
        self: &'a Arc<Self>,
        def: &'a DirectoryDef,
    ) -> BoxFuture<'a, Result<DirValue, SolveError>> {
        async move {
            let mut dir = match &def.source {
                DirectorySource::Empty => DirValue {
                    tree: Tree::Empty,
                    path: "/".into(),
                },
                DirectorySource::Host {
                    path,
                    include,
                    exclude,
                    gitignore,
                } => {
                    let filter = Filter {
                        include: include.clone(),
                        exclude: exclude.clone(),
                        gitignore: *gitignore,
                    };
                    DirValue {
                        tree: Tree::Host(self.host_dir(path, filter).await?),
                        path: "/".into(),
                    }
                }
                DirectorySource::Container { container, path } => {
                    let st = self.container(container).await?;
                    DirValue {
                        path: st.resolve(path),
                        tree: st.rootfs,
                    }
                }
            };
            for op in &def.ops {
                dir = self.directory_op(dir, op).await?;
            }
            Ok(dir)
        }
        .boxed()
    }

    async fn directory_op(
        self: &Arc<Self>,
        dir: DirValue,
        op: &DirectoryOp,
    ) -> Result<DirValue, SolveError> {
        let at = |p: &str| join_path(&dir.path, p);
        let action = match op {
            DirectoryOp::Directory { path } => {
                return Ok(DirValue {
                    path: at(path),
                    tree: dir.tree,
                });
            }
            DirectoryOp::WithNewFile {
                path,
                contents,
                permissions,
            } => PlannedAction::Write {
                dest: at(path),
                contents: Arc::new(contents.clone().into_bytes()),
                permissions: permissions.unwrap_or(0o644),
                owner: None,
            },
            DirectoryOp::WithFile {
                path,
                file,
                permissions,
            } => PlannedAction::CopyFile {
                dest: at(path),
                source: self.file(file).await?,
                permissions: *permissions,
                owner: None,
            },
            DirectoryOp::WithDirectory {
                path,
                directory,
                include,
                exclude,
            } => PlannedAction::CopyDir {
                dest: at(path),
                source: self.directory(directory).await?,
                include: include.clone(),
                exclude: exclude.clone(),
                owner: None,
            },
            DirectoryOp::WithoutFile { path } | DirectoryOp::WithoutDirectory { path } => {
                PlannedAction::Remove { path: at(path) }
            }
            // Filter and diff make a tree of their own.
            DirectoryOp::Filter { include, exclude } => {
                let action = PlannedAction::CopyDir {
                    dest: "/".into(),
                    source: dir,
                    include: include.clone(),
                    exclude: exclude.clone(),
                    owner: None,
                };
                return Ok(DirValue {
                    tree: self.apply(Tree::Empty, action).await?,
                    path: "/".into(),
                });
            }
            DirectoryOp::Diff { other } => {
                let action = PlannedAction::Diff {
                    base: dir,
                    other: self.directory(other).await?,
                };
                return Ok(DirValue {
                    tree: self.apply(Tree::Empty, action).await?,
                    path: "/".into(),
                });
            }
        };
        Ok(DirValue {
            tree: self.apply(dir.tree, action).await?,
            path: dir.path,
        })
    }

    /// Evaluates a file value.
    pub async fn file(self: &Arc<Self>, def: &FileDef) -> Result<FileValue, SolveError> {
        match def {
            FileDef::Host { path } => {
                let listing = self.host_file(path).await?;
                let name = listing.entries[0].rel.clone();
                Ok(FileValue {
                    tree: Tree::Host(listing),
                    path: format!("/{name}"),
                })
            }
            FileDef::Container { container, path } => {
                let st = self.container(container).await?;
                Ok(FileValue {
                    path: st.resolve(path),
                    tree: st.rootfs,
                })
            }
            FileDef::Directory { directory, path } => {
                let dir = self.directory(directory).await?;
                Ok(FileValue {
                    path: join_path(&dir.path, path),
                    tree: dir.tree,
                })
            }
            FileDef::Tarball {
                container,
                format,
                name,
            } => {
                let st = self.container(container).await?;
                self.tarball(&st, format.format(), name.as_deref()).await
            }
        }
    }

    fn secret(&self, def: &SecretDef) -> Result<Arc<SecretValue>, SolveError> {
        self.secrets.resolve(def).map_err(SolveError::Invalid)
    }

    // ----------------------------------------------------------------- reads

    /// Answers a read-only question about a directory or file value.
    pub async fn read(
        self: &Arc<Self>,
        tree: &Tree,
        path: &str,
        op: ReadOp,
    ) -> Result<ReadAnswer, SolveError> {
        let source = self.source(tree, path).await?;
        self.machinery.read(source, op).await
    }

    /// Where the bytes of `path` in `tree` can be read: the host for a
    /// scanned host directory, else the tree's snapshot.
    async fn source(self: &Arc<Self>, tree: &Tree, path: &str) -> Result<Source, SolveError> {
        Ok(match tree {
            Tree::Host(listing) => Source::Host {
                listing: listing.clone(),
                path: path.to_string(),
            },
            other => Source::Snapshot {
                snapshot: self.materialize(other).await?,
                path: path.to_string(),
            },
        })
    }

    // ---------------------------------------------------------------- images

    /// Builds the image of a container: the base image's layers plus one
    /// layer per step on top of it, config and manifest in the content store.
    pub async fn build_image(
        self: &Arc<Self>,
        st: &ContainerState,
        format: ImageFormat,
    ) -> Result<BuiltImage, SolveError> {
        let mut chain = Vec::new();
        let mut tree = st.rootfs.clone();
        let base = loop {
            match tree {
                Tree::Step(step) => {
                    tree = step.plan.parent.clone();
                    chain.push(step);
                }
                Tree::Image(img) => break Some(img),
                Tree::Empty => break None,
                Tree::Host(_) => {
                    return Err(SolveError::Internal(
                        "a container's root filesystem is never a host directory".into(),
                    ));
                }
            }
        };
        chain.reverse();
        let mut lower = match &base {
            Some(img) => self.materialize(&Tree::Image(img.clone())).await?,
            None => None,
        };
        let mut layers = Vec::with_capacity(chain.len());
        for step in &chain {
            let upper = self
                .materialize(&Tree::Step(step.clone()))
                .await?
                .expect("a step has a snapshot");
            let layer = self.layer(lower.as_ref(), &upper, format).await?;
            layers.push((layer, step.plan.description.clone()));
            lower = Some(upper);
        }
        self.machinery
            .assemble(base.as_deref(), &layers, &st.image_config(), format)
            .await
    }

    /// A step's layer, from the index when the blob is still in containerd.
    async fn layer(
        &self,
        lower: Option<&SnapshotId>,
        upper: &SnapshotId,
        format: ImageFormat,
    ) -> Result<Layer, SolveError> {
        if let Some(l) = self.index.get_layer(&upper.0, &format.id())?
            && self.machinery.has_blob(&l.desc.digest).await?
        {
            return Ok(l);
        }
        let l = self.machinery.layer(lower, upper, format).await?;
        self.index.put_layer(&upper.0, &format.id(), &l)?;
        Ok(l)
    }

    /// `publish`: builds the container's image and pushes it; returns `address@digest`.
    pub async fn publish(
        self: &Arc<Self>,
        st: &ContainerState,
        address: &str,
        format: ImageFormat,
    ) -> Result<String, SolveError> {
        let target = ImageRef::parse(address)?;
        let image = self.build_image(st, format).await?;
        let auth = st
            .registry_auth
            .get(target.registry())
            .map(|(user, secret)| (user.clone(), Arc::new(secret.plaintext().to_vec())));
        let no = self.progress.started(&format!("publish {target}"));
        let started = Instant::now();
        let progress = self.progress.clone();
        let report = move |blob: &rbuild_snapshotter::BlobDesc, how: BlobPush| {
            progress.detail(
                no,
                &format!(
                    "{} {:.1} MB {}",
                    &blob.digest[..19],
                    blob.size as f64 / 1e6,
                    match how {
                        BlobPush::Uploaded => "uploaded",
                        BlobPush::AlreadyPresent => "already present",
                        BlobPush::MountedFromBase => "mounted from the base image's repository",
                    }
                ),
            );
        };
        match self.machinery.publish(&image, &target, auth, &report).await {
            Ok(digest) => {
                let reference = match target.tag() {
                    Some(_) | None => format!("{target}@{digest}"),
                };
                self.progress
                    .finished(no, started.elapsed().as_millis(), &reference);
                Ok(reference)
            }
            Err(e) => {
                self.progress
                    .failed(no, &format!("publish {target}"), &e.to_string(), &[]);
                Err(e)
            }
        }
    }

    /// `export`: writes the container's image as a tarball at a host path.
    pub async fn export(
        self: &Arc<Self>,
        st: &ContainerState,
        path: &Path,
        name: Option<&str>,
        format: ImageFormat,
    ) -> Result<(), SolveError> {
        let image = self.build_image(st, format).await?;
        let no = self
            .progress
            .started(&format!("export image to {}", path.display()));
        let started = Instant::now();
        self.machinery
            .tarball(&image, name, TarballDest::Host(path.to_path_buf()))
            .await?;
        self.progress.finished(
            no,
            started.elapsed().as_millis(),
            &format!(
                "{} layers, manifest {}",
                image.layers.len(),
                image.manifest.digest
            ),
        );
        Ok(())
    }

    /// `as_tarball`: the container's image as a tarball file, kept as a cached step.
    async fn tarball(
        self: &Arc<Self>,
        st: &ContainerState,
        format: ImageFormat,
        name: Option<&str>,
    ) -> Result<FileValue, SolveError> {
        let image = Arc::new(self.build_image(st, format).await?);
        let plan = StepPlan::tarball(image, format, name.map(String::from));
        Ok(FileValue {
            tree: Tree::Step(self.step(plan).await?),
            path: "/image.tar".into(),
        })
    }

    /// Loads an image tarball (once per run per file content).
    async fn import_image(
        self: &Arc<Self>,
        file: &FileValue,
    ) -> Result<Arc<ResolvedImage>, SolveError> {
        let source = self.source(&file.tree, &file.path).await?;
        let this = self.clone();
        self.imports
            .get_or_start(&self.tasks, file.content_id(), move || async move {
                let no = this.progress.started("import image tarball");
                let started = Instant::now();
                let img = this.machinery.import_image(source, &this.platform).await?;
                this.progress.finished(
                    no,
                    started.elapsed().as_millis(),
                    &format!("{} ({} layers)", img.manifest.digest, img.layers.len()),
                );
                Ok(Arc::new(img))
            })
            .await
    }

    // ------------------------------------------------------------ resolution

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

    /// Scans a host directory once per run, skipping files the stat cache vouches for.
    async fn host_dir(
        self: &Arc<Self>,
        path: &str,
        filter: Filter,
    ) -> Result<Arc<HostListing>, SolveError> {
        let id = format!(
            "dir\0{path}\0{}\0{}\0{}",
            filter.include.join("\u{1}"),
            filter.exclude.join("\u{1}"),
            filter.gitignore
        );
        self.host_scan(id, Path::new(path), None, move |root, known| {
            tree::scan_host_dir_with(root, &filter, known)
        })
        .await
    }

    /// Scans a single host file (a listing of its directory holding just it).
    async fn host_file(self: &Arc<Self>, path: &str) -> Result<Arc<HostListing>, SolveError> {
        let file = PathBuf::from(path);
        let (Some(parent), Some(name)) = (file.parent(), file.file_name()) else {
            return Err(SolveError::Invalid(format!(
                "host file {path:?} is not a file path"
            )));
        };
        let (parent, name) = (parent.to_path_buf(), name.to_string_lossy().into_owned());
        self.host_scan(
            format!("file\0{path}"),
            &parent,
            Some(name),
            move |_, known| tree::scan_host_file(&file, &known()),
        )
        .await
    }

    /// Runs a host scan once per run with the stat cache's knowledge of
    /// `root` (or of just `only` in it).
    async fn host_scan<F>(
        self: &Arc<Self>,
        id: String,
        root: &Path,
        only: Option<String>,
        scan: F,
    ) -> Result<Arc<HostListing>, SolveError>
    where
        F: FnOnce(
                &Path,
                Box<dyn FnOnce() -> tree::KnownHashes + Send>,
            )
                -> Result<(HostListing, tree::KnownHashes), rbuild_snapshotter::Error>
            + Send
            + 'static,
    {
        if !root.is_absolute() {
            return Err(SolveError::Invalid(format!(
                "host path {} must be absolute",
                root.display()
            )));
        }
        let this = self.clone();
        let root = root.to_path_buf();
        self.hosts
            .get_or_start(&self.tasks, id, move || async move {
                let started = Instant::now();
                let index = this.index.clone();
                let dir = root.clone();
                let listing = tokio::task::spawn_blocking(move || {
                    // The stat cache's records load while the walk runs.
                    let query = {
                        let (index, dir) = (index.clone(), dir.clone());
                        std::thread::spawn(move || match &only {
                            Some(name) => index.known_hash(&dir, name),
                            None => index.known_hashes(&dir),
                        })
                    };
                    let known = Box::new(move || match query.join() {
                        Ok(Ok(known)) => known,
                        // Only an optimisation: without it, every file is read.
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "could not read the stat cache");
                            tree::KnownHashes::new()
                        }
                        Err(_) => tree::KnownHashes::new(),
                    });
                    let (listing, fresh) = scan(&dir, known)?;
                    index.put_known_hashes(&dir, &fresh)?;
                    Ok::<_, SolveError>(listing)
                })
                .await
                .map_err(|e| SolveError::Internal(format!("host scan task: {e}")))??;
                this.progress.info(&format!(
                    "context {}: {} entries, {} files read ({:.1} MB) in {} ms",
                    root.display(),
                    listing.entries.len(),
                    listing.files_hashed,
                    listing.bytes_hashed as f64 / 1e6,
                    started.elapsed().as_millis()
                ));
                Ok(Arc::new(listing))
            })
            .await
    }

    // ----------------------------------------------------------------- steps

    /// File operations on a tree, as a cached step.
    async fn apply(
        self: &Arc<Self>,
        parent: Tree,
        action: PlannedAction,
    ) -> Result<Tree, SolveError> {
        let plan = StepPlan::apply(parent, vec![action]);
        Ok(Tree::Step(self.step(plan).await?))
    }

    /// Runs a step once per key: from the index when it has it, else for real.
    async fn step(self: &Arc<Self>, plan: StepPlan) -> Result<Arc<StepResult>, SolveError> {
        let plan = Arc::new(plan);
        let this = self.clone();
        let p = plan.clone();
        self.steps
            .get_or_start(&self.tasks, plan.key.to_hex(), move || async move {
                this.run_step(&p).await
            })
            .await
    }

    fn cached(&self, plan: &Arc<StepPlan>) -> Result<Option<Arc<StepResult>>, SolveError> {
        Ok(self.index.get_step(&plan.key)?.map(|rec| {
            Arc::new(StepResult {
                key: rec.key,
                snapshot: rec.snapshot,
                output: rec.output,
                stdout: rec.stdout,
                stderr: rec.stderr,
                exit_code: rec.exit_code,
                plan: plan.clone(),
            })
        }))
    }

    async fn run_step(
        self: &Arc<Self>,
        plan: &Arc<StepPlan>,
    ) -> Result<Arc<StepResult>, SolveError> {
        if let Some(hit) = self.cached(plan)? {
            self.progress.cached(&plan.description);
            return Ok(hit);
        }
        // Another rbuild may be running this very step: wait for it, then
        // take its result.
        let _lock = self.locks.lock(plan.key).await?;
        if let Some(hit) = self.cached(plan)? {
            self.progress.cached(&plan.description);
            return Ok(hit);
        }
        self.execute(plan).await
    }

    /// Runs a step on the machinery and records it: snapshot committed
    /// first, index row second, then the snapshot is marked kept.
    async fn execute(
        self: &Arc<Self>,
        plan: &Arc<StepPlan>,
    ) -> Result<Arc<StepResult>, SolveError> {
        let parent = self.materialize(&plan.parent).await?;
        let (snapshot, outcome, started, no) = match &plan.kind {
            StepKind::Exec(exec) => {
                let mounts = self.mount_requests(exec).await?;
                let env = exec
                    .env
                    .iter()
                    .map(|(n, v)| match v {
                        EnvValue::Plain(p) => format!("{n}={p}"),
                        EnvValue::Secret(s) => {
                            format!("{n}={}", String::from_utf8_lossy(s.plaintext()))
                        }
                    })
                    .collect();
                let no = self.progress.queued(&plan.description);
                let _permit = self
                    .jobs
                    .acquire()
                    .await
                    .map_err(|_| SolveError::Cancelled)?;
                if self.cancel.is_cancelled() {
                    return Err(SolveError::Cancelled);
                }
                self.progress.running(no, &plan.description);
                let (output, forwarder) = self.forward_output(no);
                let req = ExecRequest {
                    key: plan.key,
                    parent,
                    args: exec.args.clone(),
                    env,
                    cwd: exec.cwd.clone(),
                    user: exec.user.clone(),
                    mounts,
                    stdin: exec.stdin.as_ref().map(|s| s.clone().into_bytes()),
                    expect: exec.expect,
                    output: Some(output),
                    terminal: match &self.debug_shell {
                        Some(command) => TerminalUse::OnFailure(self.interactive(command.clone())),
                        None => TerminalUse::None,
                    },
                };
                let started = Instant::now();
                let result = self.machinery.exec(req, self.cancel.clone()).await;
                // The last lines are shown before the step's end.
                let _ = forwarder.await;
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
                outcome.stdout = self.secrets.scrub(&outcome.stdout);
                outcome.stderr = self.secrets.scrub(&outcome.stderr);
                let Some(snapshot) = outcome.snapshot.clone() else {
                    let mut reason = format!("exit code {}", outcome.exit_code);
                    if let Some(at) = &exec.at {
                        reason.push_str(&format!(", created at {at}"));
                    }
                    self.progress
                        .failed(no, &plan.description, &reason, &outcome.stderr);
                    return Err(SolveError::ExecFailed {
                        command: shell_words(&exec.args),
                        exit_code: outcome.exit_code,
                        stderr_tail: tail_lines(&outcome.stderr, STDERR_TAIL_LINES),
                        expected_failure: exec.expect == crate::graph::Expect::Failure,
                        at: exec.at.clone(),
                    });
                };
                (snapshot, outcome, started, no)
            }
            StepKind::Tarball { image, name } => {
                let no = self.progress.started(&plan.description);
                let started = Instant::now();
                let snapshot = match self
                    .machinery
                    .tarball(image, name.as_deref(), TarballDest::Snapshot(plan.key))
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
                let no = self.progress.started(&plan.description);
                let started = Instant::now();
                let req = ApplyRequest {
                    key: plan.key,
                    parent,
                    actions: resolved,
                };
                let snapshot = match self.machinery.apply(req).await {
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
        let output = plan.output_id(outcome.changes.as_deref());
        // Measured once, for cache management; unknown (-1) if containerd can't tell.
        let size = self.machinery.usage(&snapshot).await.unwrap_or(-1);
        self.index.put_step(&StepRecord {
            key: plan.key,
            snapshot: snapshot.clone(),
            output: output.clone(),
            stdout: outcome.stdout.clone(),
            stderr: outcome.stderr.clone(),
            exit_code: outcome.exit_code,
            duration_ms: millis as u64,
            description: plan.description.clone(),
            size,
        })?;
        self.machinery.keep(&snapshot).await?;
        self.progress.done(no, &plan.description, millis);
        Ok(Arc::new(StepResult {
            key: plan.key,
            snapshot,
            output,
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            exit_code: outcome.exit_code,
            plan: plan.clone(),
        }))
    }

    /// A shell on the user's terminal, with the live display out of its way.
    fn interactive(&self, command: Vec<String>) -> Interactive {
        let progress = self.progress.clone();
        Interactive {
            command,
            pause: Arc::new(move |on| progress.pause(on)),
        }
    }

    /// `Container::terminal`: an interactive shell in the container (its
    /// filesystem, environment and mounts); changes are not kept.
    pub async fn terminal(
        self: &Arc<Self>,
        st: &ContainerState,
        command: Vec<String>,
    ) -> Result<i64, SolveError> {
        if matches!(st.rootfs, Tree::Empty) {
            return Err(SolveError::Invalid(
                "terminal: the container has no root filesystem; start it with .from(\"<image>\")"
                    .into(),
            ));
        }
        let command = if command.is_empty() {
            vec!["/bin/sh".to_string()]
        } else {
            command
        };
        let plan = StepPlan::exec(
            st.rootfs.clone(),
            ExecPlan {
                args: command.clone(),
                at: None,
                env: st.env.clone(),
                cwd: st.workdir.clone(),
                user: st.user.clone(),
                mounts: st
                    .mounts
                    .iter()
                    .map(|(t, m)| (t.clone(), m.clone()))
                    .collect(),
                stdin: None,
                expect: crate::graph::Expect::Any,
            },
            &self.platform.to_string(),
        );
        let StepKind::Exec(exec) = &plan.kind else {
            unreachable!("an exec plan");
        };
        let parent = self.materialize(&plan.parent).await?;
        let mounts = self.mount_requests(exec).await?;
        let env = exec
            .env
            .iter()
            .map(|(n, v)| match v {
                EnvValue::Plain(p) => format!("{n}={p}"),
                EnvValue::Secret(s) => format!("{n}={}", String::from_utf8_lossy(s.plaintext())),
            })
            .collect();
        let no = self
            .progress
            .started(&format!("terminal {}", shell_words(&command)));
        let started = Instant::now();
        let req = ExecRequest {
            key: plan.key,
            parent,
            args: command,
            env,
            cwd: exec.cwd.clone(),
            user: exec.user.clone(),
            mounts,
            stdin: None,
            expect: crate::graph::Expect::Any,
            output: None,
            terminal: TerminalUse::Shell(self.interactive(Vec::new())),
        };
        let outcome = self.machinery.exec(req, self.cancel.clone()).await?;
        self.progress.finished(
            no,
            started.elapsed().as_millis(),
            &format!("exit code {}", outcome.exit_code),
        );
        Ok(outcome.exit_code)
    }

    /// A channel for a running step's output, and the task that shows it
    /// line by line, scrubbed (also of secrets split across writes).
    fn forward_output(
        &self,
        no: crate::progress::StepNo,
    ) -> (
        tokio::sync::mpsc::UnboundedSender<rbuild_runtime::OutputChunk>,
        tokio::task::JoinHandle<()>,
    ) {
        use crate::progress::{LineSplitter, Stream};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<rbuild_runtime::OutputChunk>();
        let progress = self.progress.clone();
        let secrets = self.secrets.clone();
        let task = tokio::spawn(async move {
            let mut streams: [(StreamScrubber, LineSplitter); 2] = [
                (
                    StreamScrubber::new(secrets.clone()),
                    LineSplitter::default(),
                ),
                (StreamScrubber::new(secrets), LineSplitter::default()),
            ];
            let which = |s: rbuild_runtime::Stream| match s {
                rbuild_runtime::Stream::Stdout => (0, Stream::Stdout),
                rbuild_runtime::Stream::Stderr => (1, Stream::Stderr),
            };
            while let Some(chunk) = rx.recv().await {
                let (i, stream) = which(chunk.stream);
                let (scrubber, lines) = &mut streams[i];
                for line in lines.push(&scrubber.push(&chunk.bytes)) {
                    progress.output(no, stream, &line);
                }
            }
            for (i, (scrubber, lines)) in streams.iter_mut().enumerate() {
                let stream = if i == 0 {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                };
                for line in lines.push(&scrubber.finish()) {
                    progress.output(no, stream, &line);
                }
                if let Some(last) = lines.finish() {
                    progress.output(no, stream, &last);
                }
            }
        });
        (tx, task)
    }

    fn scrub_error(&self, e: SolveError) -> SolveError {
        match e {
            SolveError::Invalid(m) => SolveError::Invalid(self.secrets.scrub_str(&m)),
            SolveError::Internal(m) => SolveError::Internal(self.secrets.scrub_str(&m)),
            other => other,
        }
    }

    async fn mount_requests(
        self: &Arc<Self>,
        exec: &ExecPlan,
    ) -> Result<Vec<MountRequest>, SolveError> {
        let mut out = Vec::with_capacity(exec.mounts.len());
        for (target, m) in &exec.mounts {
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
            });
        }
        Ok(out)
    }

    async fn file_action(self: &Arc<Self>, a: &PlannedAction) -> Result<FileAction, SolveError> {
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
    fn materialize<'a>(
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
                            let no = this.progress.started(&what);
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
                    if self.machinery.snapshot_exists(&step.snapshot).await? {
                        return Ok(Some(step.snapshot.clone()));
                    }
                    tracing::warn!(key = %step.key, "cached step's snapshot is gone; running it again");
                    self.index.delete_step(&step.key)?;
                    let this = self.clone();
                    let plan = step.plan.clone();
                    let snap = self
                        .remakes
                        .get_or_start(&self.tasks, step.key.to_hex(), move || async move {
                            this.execute(&plan).await.map(|r| r.snapshot.clone())
                        })
                        .await?;
                    Ok(Some(snap))
                }
            }
        }
        .boxed()
    }
}

fn check_env_name(name: &str) -> Result<(), SolveError> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(SolveError::Invalid(format!(
            "{name:?} is not a valid environment variable name"
        )));
    }
    Ok(())
}

/// Expands `$NAME` and `${NAME}` with `lookup`; unknown names expand to "".
pub fn expand_env(value: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let mut name = String::new();
        if chars.peek() == Some(&'{') {
            chars.next();
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
                name.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if name.is_empty() {
                out.push('$');
                continue;
            }
        }
        out.push_str(&lookup(&name).unwrap_or_default());
    }
    out
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
mod tests;
