//! Evaluated values and the plans of the steps that produce them.
//!
//! A [`Tree`] is a filesystem state and how to identify its content; a
//! directory or file value is a tree and a path in it. Steps (`with_exec`
//! and file operations) are [`StepPlan`]s whose cache key covers their
//! definition and the content identities of their inputs — never a time,
//! an inode or a host path (invariant 1).

use std::collections::BTreeMap;
use std::sync::Arc;

use rbuild_snapshotter::ResolvedImage;
use rbuild_snapshotter::tree::{EntryKind, HostListing, HostNode};

use super::services::{Binding, Healthcheck};
use crate::graph::{Expect, Sharing, shell_words};
use crate::key::{CacheKey, KeyBuilder};
use crate::secrets::SecretValue;
use rbuild_snapshotter::snapshots::SnapshotId;

/// A filesystem state.
#[derive(Clone, Debug)]
pub enum Tree {
    Empty,
    Image(Arc<ResolvedImage>),
    /// A scanned host directory, not copied anywhere until something needs it.
    Host(Arc<HostListing>),
    /// The committed result of a step.
    Step(Arc<StepResult>),
}

impl Tree {
    /// The content identity fed into cache keys: a content digest where
    /// one is known (images, host directories, steps whose changes were
    /// digested), else the key of the step that made it.
    pub fn content_id(&self) -> String {
        match self {
            Tree::Empty => "empty".into(),
            Tree::Image(img) => format!("image:{}", img.manifest.digest),
            Tree::Host(listing) => format!("tree:{}", listing.digest),
            Tree::Step(step) => step.output.clone(),
        }
    }
}

/// A directory value: `path` inside `tree`.
#[derive(Clone, Debug)]
pub struct DirValue {
    pub tree: Tree,
    pub path: String,
}

impl DirValue {
    /// A host directory's sub-directory never gets here unrerooted (see
    /// [`DirValue::rerooted`]), so its identity is its own listing's.
    pub fn content_id(&self) -> String {
        path_id(&self.tree, &self.path)
    }

    /// The same directory as a tree of its own where that costs no I/O: a
    /// host directory's sub-directory becomes the host listing of just it,
    /// identified by what is under it rather than by the whole tree.
    pub fn rerooted(self) -> DirValue {
        if let Tree::Host(listing) = &self.tree
            && self.path != "/"
            && let Some(HostNode::Dir(sub)) = listing.at(&self.path)
        {
            return DirValue {
                tree: Tree::Host(Arc::new(sub)),
                path: "/".into(),
            };
        }
        self
    }
}

/// A file value: the file at `path` inside `tree`.
#[derive(Clone, Debug)]
pub struct FileValue {
    pub tree: Tree,
    pub path: String,
}

impl FileValue {
    /// Where it is known without reading anything, a file is identified by
    /// its permission bits and content alone, so that the same file reached
    /// by different routes (a host file, `with_new_file`) is one input:
    /// a regular file of a host listing, or the file a `with_new_file`
    /// step wrote (owned by root, as a host file's copy is). Else by its
    /// tree and path.
    pub fn content_id(&self) -> String {
        match &self.tree {
            Tree::Host(listing) => {
                if let Some(HostNode::File(e)) = listing.at(&self.path)
                    && let EntryKind::File { hash, .. } = &e.kind
                {
                    return file_id(e.mode, hash);
                }
            }
            Tree::Step(step) => {
                if let StepKind::Apply(actions) = &step.plan.kind
                    && let [
                        PlannedAction::Write {
                            dest,
                            contents,
                            permissions,
                            owner: None,
                        },
                    ] = actions.as_slice()
                    && *dest == self.path
                {
                    return file_id(*permissions, blake3::hash(contents).as_bytes());
                }
            }
            _ => {}
        }
        path_id(&self.tree, &self.path)
    }

    pub fn name(&self) -> String {
        self.path.rsplit('/').next().unwrap_or_default().to_string()
    }
}

/// A regular file's identity: its permission bits and content hash.
fn file_id(mode: u32, hash: &[u8; 32]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"file\0");
    h.update(&(mode & 0o7777).to_le_bytes());
    h.update(hash);
    format!("file:blake3:{}", h.finalize().to_hex())
}

fn path_id(tree: &Tree, path: &str) -> String {
    if path == "/" {
        tree.content_id()
    } else {
        format!("{}:{path}", tree.content_id())
    }
}

/// An environment variable's value.
#[derive(Clone, Debug)]
pub enum EnvValue {
    Plain(String),
    Secret(Arc<SecretValue>),
}

/// What a container mounts for the commands it runs.
#[derive(Clone, Debug)]
pub enum MountSpec {
    Directory(DirValue),
    File(FileValue),
    Cache {
        volume: String,
        sharing: Sharing,
    },
    Temp,
    Secret {
        secret: Arc<SecretValue>,
        mode: u32,
    },
    /// Extra CA certificates over the trust bundles the root filesystem
    /// has (`super::ca`); its target is `ca::CA_MOUNT`.
    Ca(super::ca::ExtraCa),
}

impl MountSpec {
    /// The mount's part of a cache key: content identities, volume names
    /// and secret names, never volume contents or secret values.
    pub(super) fn key_part(&self, target: &str) -> String {
        match self {
            MountSpec::Directory(d) => format!("{target}\0dir\0{}", d.content_id()),
            MountSpec::File(f) => format!("{target}\0file\0{}", f.content_id()),
            MountSpec::Cache { volume, sharing } => {
                format!("{target}\0cache\0{volume}\0{}", sharing.as_str())
            }
            MountSpec::Temp => format!("{target}\0tmpfs"),
            MountSpec::Secret { secret, mode } => {
                format!("{target}\0secret\0{}\0{mode:o}", secret.key_id())
            }
            MountSpec::Ca(ca) => format!("{target}\0ca\0{}", blake3::hash(&ca.pem).to_hex()),
        }
    }
}

/// A container value after evaluation.
#[derive(Clone, Debug)]
pub struct ContainerState {
    pub rootfs: Tree,
    pub env: Vec<(String, EnvValue)>,
    pub workdir: String,
    pub user: String,
    pub entrypoint: Vec<String>,
    pub default_args: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// `port/protocol`, for the image config.
    pub exposed_ports: std::collections::BTreeSet<String>,
    pub mounts: BTreeMap<String, MountSpec>,
    /// Credentials for publishing, by registry host.
    pub registry_auth: BTreeMap<String, (String, Arc<SecretValue>)>,
    pub last_exec: Option<Arc<StepResult>>,
    /// The exposed ports in the order they were exposed (the image's
    /// first): a service's ports, whose first is its endpoint's default.
    pub ports: Vec<(u16, String)>,
    /// `with_docker_healthcheck`'s, else the image's `HEALTHCHECK`: part of
    /// a service's identity, of no step's key.
    pub healthcheck: Option<Healthcheck>,
    /// Services the later `with_exec`s reach by alias (one per alias).
    pub bindings: Vec<Binding>,
}

impl ContainerState {
    /// A process of `args` in this container as it stands (its env,
    /// workdir, user, mounts, bindings), under `api`.
    pub fn exec_plan(
        &self,
        args: Vec<String>,
        at: Option<String>,
        stdin: Option<String>,
        expect: Expect,
        api: crate::api::Api,
    ) -> ExecPlan {
        ExecPlan {
            args,
            at,
            env: self.env.clone(),
            cwd: self.workdir.clone(),
            user: self.user.clone(),
            mounts: self
                .mounts
                .iter()
                .map(|(t, m)| (t.clone(), m.clone()))
                .collect(),
            stdin,
            expect,
            bindings: self.bindings.clone(),
            own_network: api >= crate::api::STEP_OWN_NETWORK,
            api: api.to_string(),
        }
    }

    pub fn scratch() -> ContainerState {
        ContainerState {
            rootfs: Tree::Empty,
            env: Vec::new(),
            workdir: "/".into(),
            user: String::new(),
            entrypoint: Vec::new(),
            default_args: Vec::new(),
            labels: BTreeMap::new(),
            exposed_ports: Default::default(),
            mounts: BTreeMap::new(),
            registry_auth: BTreeMap::new(),
            last_exec: None,
            ports: Vec::new(),
            healthcheck: None,
            bindings: Vec::new(),
        }
    }

    /// Exposes a port (once: exposing it again keeps its place).
    pub fn expose(&mut self, port: u16, protocol: &str) {
        let protocol = protocol.to_lowercase();
        self.exposed_ports.insert(format!("{port}/{protocol}"));
        if !self.ports.iter().any(|(p, q)| *p == port && *q == protocol) {
            self.ports.push((port, protocol));
        }
    }

    pub fn set_env(&mut self, name: &str, value: EnvValue) {
        match self.env.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.env.push((name.to_string(), value)),
        }
    }

    pub fn plain_env(&self, name: &str) -> Option<&str> {
        self.env.iter().find_map(|(n, v)| match v {
            EnvValue::Plain(p) if n == name => Some(p.as_str()),
            _ => None,
        })
    }

    /// The last `with_exec`'s result, or an error saying there is none.
    pub fn last_exec(&self, asked: &str) -> Result<&StepResult, super::SolveError> {
        self.last_exec.as_deref().ok_or_else(|| {
            super::SolveError::Invalid(format!(
                "{asked}: the container has run no command; add .with_exec([...]) before asking for its {asked}"
            ))
        })
    }

    /// Takes an image's environment, working directory, user, entrypoint and
    /// default args, as `from` and `import` do.
    pub fn from_image(image: Arc<ResolvedImage>) -> ContainerState {
        let defaults = image.defaults();
        let mut st = ContainerState::scratch();
        for kv in &defaults.env {
            let (n, v) = kv.split_once('=').unwrap_or((kv, ""));
            st.set_env(n, EnvValue::Plain(v.to_string()));
        }
        st.workdir = defaults.working_dir.unwrap_or_else(|| "/".into());
        st.user = defaults.user.unwrap_or_default();
        st.entrypoint = defaults.entrypoint;
        st.default_args = defaults.cmd;
        let config = super::services::ImageServiceConfig::read(&image.config_json);
        st.ports = config.ports;
        st.healthcheck = config.healthcheck;
        st.rootfs = Tree::Image(image);
        st
    }

    /// The image config of this container (secret variables are never part of it).
    pub fn image_config(&self) -> rbuild_snapshotter::export::ImageConfig {
        rbuild_snapshotter::export::ImageConfig {
            env: self
                .env
                .iter()
                .filter_map(|(n, v)| match v {
                    EnvValue::Plain(p) => Some(format!("{n}={p}")),
                    EnvValue::Secret(_) => None,
                })
                .collect(),
            entrypoint: self.entrypoint.clone(),
            cmd: self.default_args.clone(),
            working_dir: self.workdir.clone(),
            user: self.user.clone(),
            labels: self.labels.clone(),
            exposed_ports: self.exposed_ports.iter().cloned().collect(),
        }
    }

    /// A path as the container sees it: relative paths are relative to the workdir.
    pub fn resolve(&self, path: &str) -> String {
        super::join_path(&self.workdir, path)
    }
}

/// A step's result.
#[derive(Debug)]
pub struct StepResult {
    pub key: CacheKey,
    pub snapshot: SnapshotId,
    /// Content identity of the resulting tree.
    pub output: String,
    /// What the index keeps (for long output, its head and tail).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Where the whole stream is, when it was too long for the index.
    pub stdout_file: Option<crate::output::OutputFile>,
    pub stderr_file: Option<crate::output::OutputFile>,
    pub exit_code: i64,
    /// How to make it again if its snapshot has gone missing.
    pub plan: Arc<StepPlan>,
    /// Where it came from, when the remote cache answered (its snapshot
    /// is made from there when needed).
    pub remote: Option<Arc<super::remote::RemoteHit>>,
}

/// A step: its key, what it starts from, and what it does.
#[derive(Debug)]
pub struct StepPlan {
    pub key: CacheKey,
    pub parent: Tree,
    pub description: String,
    pub kind: StepKind,
}

#[derive(Debug)]
pub enum StepKind {
    Exec(ExecPlan),
    Apply(Vec<PlannedAction>),
    /// An image written as a tarball file (`as_tarball`).
    Tarball {
        image: Arc<rbuild_snapshotter::export::BuiltImage>,
        name: Option<String>,
    },
}

#[derive(Debug)]
pub struct ExecPlan {
    pub args: Vec<String>,
    /// Where the pipeline made this step (file:line), for messages; not part of the key.
    pub at: Option<String>,
    pub env: Vec<(String, EnvValue)>,
    pub cwd: String,
    pub user: String,
    pub mounts: Vec<(String, MountSpec)>,
    pub stdin: Option<String>,
    pub expect: Expect,
    /// The services this step reaches by alias (its container's bindings):
    /// started before it runs; their identities are part of its key.
    pub bindings: Vec<Binding>,
    /// A network namespace of its own even without bindings (API 0.2 on);
    /// else such a step is on the host's network.
    pub own_network: bool,
    /// The pipeline's declared API version, for explanations; not part of
    /// the key (what it changes is, part by part).
    pub api: String,
}

impl ExecPlan {
    /// Whether the step runs in a network namespace of its own.
    pub fn namespaced(&self) -> bool {
        self.own_network || !self.bindings.is_empty()
    }

    /// The process environment as `NAME=value`, secrets resolved (for the
    /// runtime spec only: never for a key, a log or the index).
    pub fn process_env(&self) -> Vec<String> {
        self.env
            .iter()
            .map(|(n, v)| match v {
                EnvValue::Plain(p) => format!("{n}={p}"),
                EnvValue::Secret(s) => format!("{n}={}", String::from_utf8_lossy(s.plaintext())),
            })
            .collect()
    }
}

/// A file operation with its sources still as values.
#[derive(Clone, Debug)]
pub enum PlannedAction {
    CopyDir {
        dest: String,
        source: DirValue,
        include: Vec<String>,
        exclude: Vec<String>,
        owner: Option<String>,
    },
    CopyFile {
        dest: String,
        source: FileValue,
        permissions: Option<u32>,
        owner: Option<String>,
    },
    Write {
        dest: String,
        contents: Arc<Vec<u8>>,
        permissions: u32,
        owner: Option<String>,
    },
    Remove {
        path: String,
    },
    Diff {
        base: DirValue,
        other: DirValue,
    },
}

impl PlannedAction {
    fn key_part(&self) -> String {
        let opt = |o: &Option<String>| o.clone().unwrap_or_default();
        match self {
            PlannedAction::CopyDir {
                dest,
                source,
                include,
                exclude,
                owner,
            } => format!(
                "copy-dir\0{dest}\0{}\0{}\0{}\0{}",
                source.content_id(),
                include.join("\u{1}"),
                exclude.join("\u{1}"),
                opt(owner)
            ),
            PlannedAction::CopyFile {
                dest,
                source,
                permissions,
                owner,
            } => format!(
                "copy-file\0{dest}\0{}\0{}\0{}",
                source.content_id(),
                permissions.map(|p| format!("{p:o}")).unwrap_or_default(),
                opt(owner)
            ),
            PlannedAction::Write {
                dest,
                contents,
                permissions,
                owner,
            } => format!(
                "write\0{dest}\0{}\0{permissions:o}\0{}",
                blake3::hash(contents).to_hex(),
                opt(owner)
            ),
            PlannedAction::Remove { path } => format!("remove\0{path}"),
            PlannedAction::Diff { base, other } => {
                format!("diff\0{}\0{}", base.content_id(), other.content_id())
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            PlannedAction::CopyDir { dest, source, .. } => match &source.tree {
                Tree::Host(l) => format!(
                    "copy {} to {dest}",
                    l.root.join(source.path.trim_start_matches('/')).display()
                ),
                _ => format!("copy directory {} to {dest}", source.path),
            },
            PlannedAction::CopyFile { dest, source, .. } => {
                format!("copy file {} to {dest}", source.path)
            }
            PlannedAction::Write { dest, .. } => format!("write {dest}"),
            PlannedAction::Remove { path } => format!("remove {path}"),
            PlannedAction::Diff { .. } => "diff directories".into(),
        }
    }
}

/// Environment variables as they enter a cache key, sorted: a plain value
/// by itself, a secret by its name only (never its value).
pub(crate) fn env_key_parts(env: &[(String, EnvValue)]) -> Vec<String> {
    let mut parts: Vec<String> = env
        .iter()
        .map(|(n, v)| match v {
            EnvValue::Plain(p) => format!("{n}={p}"),
            EnvValue::Secret(s) => format!("{n}\0secret\0{}", s.key_id()),
        })
        .collect();
    parts.sort();
    parts
}

impl StepPlan {
    /// A `with_exec` on a container.
    pub fn exec(parent: Tree, exec: ExecPlan, platform: &str) -> StepPlan {
        let env = env_key_parts(&exec.env);
        let mounts: Vec<String> = exec.mounts.iter().map(|(t, m)| m.key_part(t)).collect();
        let mut key = KeyBuilder::new("exec");
        key.list("args", &exec.args)
            .list("env", &env)
            .field("workdir", &exec.cwd)
            .field("user", &exec.user)
            .field("platform", platform)
            .field("input.rootfs", &parent.content_id())
            .list("mounts", &mounts)
            .field(
                "stdin",
                &exec
                    .stdin
                    .as_ref()
                    .map(|s| blake3::hash(s.as_bytes()).to_hex().to_string())
                    .unwrap_or_default(),
            )
            .field("expect", exec.expect.as_str());
        // Only a step with bindings has this field, so every other step
        // keeps the key it had before services existed.
        if !exec.bindings.is_empty() {
            key.list(
                "services",
                &super::services::bindings_key_parts(&exec.bindings),
            );
        } else if exec.own_network {
            // Likewise: only a step that API 0.2 moves off the host's
            // network has this one (a bound step has always had its own).
            key.field("network", "own");
        }
        let key = key.finish();
        StepPlan {
            key,
            parent,
            description: format!("exec {}", shell_words(&exec.args)),
            kind: StepKind::Exec(exec),
        }
    }

    /// File operations on a tree.
    pub fn apply(parent: Tree, actions: Vec<PlannedAction>) -> StepPlan {
        let parts: Vec<String> = actions.iter().map(PlannedAction::key_part).collect();
        let key = KeyBuilder::new("apply")
            .field("input.rootfs", &parent.content_id())
            .list("actions", &parts)
            .finish();
        let description = actions
            .iter()
            .map(PlannedAction::describe)
            .collect::<Vec<_>>()
            .join(", ");
        StepPlan {
            key,
            parent,
            description,
            kind: StepKind::Apply(actions),
        }
    }

    /// An image as a tarball file.
    pub fn tarball(
        image: Arc<rbuild_snapshotter::export::BuiltImage>,
        format: rbuild_snapshotter::export::ImageFormat,
        name: Option<String>,
    ) -> StepPlan {
        let key = KeyBuilder::new("tarball")
            .field("manifest", &image.manifest.digest)
            .field("format", &format.id())
            .field("name", name.as_deref().unwrap_or_default())
            .finish();
        StepPlan {
            key,
            parent: Tree::Empty,
            description: format!("tarball of image {}", &image.manifest.digest[..19]),
            kind: StepKind::Tarball { image, name },
        }
    }

    /// The content identity of this step's result: derived from what it
    /// changed when that is known (early cutoff), else from its key.
    pub fn output_id(&self, changes: Option<&str>) -> String {
        match (&self.kind, changes) {
            (StepKind::Exec(_), Some(changes)) => {
                let h = KeyBuilder::new("exec-output")
                    .field("input.rootfs", &self.parent.content_id())
                    .field("changes", changes)
                    .finish();
                format!("out:{h}")
            }
            _ => format!("step:{}", self.key),
        }
    }
}
