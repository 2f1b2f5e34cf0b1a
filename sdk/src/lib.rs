//! # rbuild-sdk
//!
//! Write build and CI pipelines as Rust programs; run them with
//! `rbuild run path/to/pipeline.rs`. Every step runs in a container on
//! containerd and is cached by the content of its inputs.
//!
//! ```no_run
//! use rbuild_sdk::{self as rb, DirOpts};
//!
//! #[tokio::main]
//! async fn main() -> rb::Result<()> {
//!     let client = rb::connect().await?;
//!     let src = client.host().directory(".", DirOpts::default().exclude(["target/", ".git/"]));
//!     let out = client
//!         .container()
//!         .from("127.0.0.1:5000/busybox:latest")
//!         .with_directory("/src", &src)
//!         .with_workdir("/src")
//!         .with_mounted_cache("/cache", &client.cache_volume("demo"))
//!         .with_exec(["sh", "-c", "ls | wc -l"])
//!         .stdout()
//!         .await?;
//!     print!("{out}");
//!     Ok(())
//! }
//! ```
//!
//! Values ([`Container`], [`Directory`], [`File`], [`CacheVolume`],
//! [`Secret`]) are immutable and lazy: builder methods return a new value
//! describing more work, and nothing runs until a result is asked for
//! (`stdout`, `stderr`, `exit_code`, `sync`, `contents`, `entries`,
//! `digest`, `export`). Names follow Dagger's API in snake_case; options
//! go in `*_opts` variants.
//!
//! This crate is only a client: the engine runs inside `rbuild run`, which
//! hands the pipeline a private session socket.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const SOCKET_ENV: &str = "RBUILD_SESSION";
const TOKEN_ENV: &str = "RBUILD_SESSION_TOKEN";

/// An error from the engine (a failed step, an unknown image, ...) or from
/// reaching it. Its message is written for humans and says what to do.
#[derive(Clone)]
pub struct Error {
    message: String,
}

impl Error {
    fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
        }
    }

    /// The engine's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

// `main() -> rb::Result<()>` prints errors with Debug: make that the readable message.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Connects to the engine of the `rbuild run` that started this pipeline.
pub async fn connect() -> Result<Client> {
    if std::env::var_os(LIST_ENV).is_some() {
        // `rbuild functions` on a pipeline that has none: say so, run nothing.
        println!("{}", json!({ "functions": null }));
        std::process::exit(0);
    }
    let socket = std::env::var_os(SOCKET_ENV).ok_or_else(|| {
        Error::new(
            "this pipeline is not running under rbuild: start it with `rbuild run <path to pipeline>`",
        )
    })?;
    let token = std::env::var(TOKEN_ENV).map_err(|_| {
        Error::new(format!(
            "{TOKEN_ENV} is not set: start the pipeline with `rbuild run`"
        ))
    })?;
    let session = Arc::new(Session {
        socket: PathBuf::from(socket),
        token,
    });
    if !session.socket.exists() {
        return Err(session.unreachable(std::io::ErrorKind::NotFound.into()));
    }
    Ok(Client { session })
}

struct Session {
    socket: PathBuf,
    token: String,
}

impl Session {
    fn unreachable(&self, e: std::io::Error) -> Error {
        Error::new(format!(
            "cannot reach the rbuild session at {}: {e}",
            self.socket.display()
        ))
    }

    /// One request, one answer, over a fresh connection (so that concurrent
    /// queries from `tokio::join!` need no multiplexing).
    async fn query(&self, query: Value) -> Result<Value> {
        let mut conn = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut request = serde_json::to_vec(&json!({
            "token": self.token,
            "sdk": env!("CARGO_PKG_VERSION"),
            "query": query,
        }))
        .expect("JSON value encodes");
        request.push(b'\n');
        conn.write_all(&request)
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut line = Vec::new();
        BufReader::new(conn)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut response: Value = serde_json::from_slice(&line).map_err(|_| {
            Error::new(
                "the rbuild engine closed the session without an answer (was it interrupted?)",
            )
        })?;
        if let Some(err) = response.get("error") {
            return Err(Error::new(
                err["message"].as_str().unwrap_or("unknown engine error"),
            ));
        }
        Ok(response["ok"].take())
    }
}

/// Asks the engine `kind` about `subject`; the future owns what it needs,
/// so it can be awaited inside `tokio::join!` on temporaries.
fn ask(
    session: &Arc<Session>,
    kind: &str,
    subject: (&str, Value),
    extra: Option<(&str, Value)>,
) -> impl Future<Output = Result<Value>> + Send + 'static {
    let session = session.clone();
    let mut query = json!({ "kind": kind });
    query[subject.0] = subject.1;
    if let Some((k, v)) = extra {
        query[k] = v;
    }
    async move { session.query(query).await }
}

fn string(v: Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(Error::new(format!(
            "the engine sent {other} where text was expected"
        ))),
    }
}

fn strings(v: Value) -> Result<Vec<String>> {
    serde_json::from_value(v).map_err(|e| Error::new(format!("unexpected engine answer: {e}")))
}

/// A host path as the engine needs it: absolute (relative to this process's
/// working directory).
fn host_path(path: impl AsRef<Path>) -> String {
    std::path::absolute(path.as_ref())
        .unwrap_or_else(|_| path.as_ref().to_path_buf())
        .to_string_lossy()
        .into_owned()
}

fn list<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    items.into_iter().map(|s| s.as_ref().to_string()).collect()
}

/// One builder call, in a persistent list: extending a value is O(1) and
/// shares the description of its parent.
struct OpNode {
    parent: Option<Arc<OpNode>>,
    op: Value,
    /// Where the pipeline made this call (`file:line`), for error messages.
    at: Option<String>,
}

#[derive(Clone, Default)]
struct Ops(Option<Arc<OpNode>>);

impl Ops {
    fn push(&self, op: Value, at: Option<String>) -> Ops {
        Ops(Some(Arc::new(OpNode {
            parent: self.0.clone(),
            op,
            at,
        })))
    }

    /// The operations, oldest first, and where each was called.
    fn to_json(&self) -> (Value, Value) {
        let mut ops = Vec::new();
        let mut at = Vec::new();
        let mut node = self.0.as_deref();
        while let Some(n) = node {
            ops.push(n.op.clone());
            at.push(n.at.clone());
            node = n.parent.as_deref();
        }
        ops.reverse();
        at.reverse();
        (Value::Array(ops), json!(at))
    }
}

/// The entry point to the API: makes new values.
#[derive(Clone)]
pub struct Client {
    session: Arc<Session>,
}

impl Client {
    /// An empty container; start it with [`Container::from`].
    pub fn container(&self) -> Container {
        Container {
            session: self.session.clone(),
            ops: Ops::default(),
        }
    }

    /// An empty directory.
    pub fn directory(&self) -> Directory {
        Directory {
            session: self.session.clone(),
            source: json!({"source": "empty"}),
            ops: Ops::default(),
        }
    }

    /// Files and directories of the machine running the pipeline.
    pub fn host(&self) -> Host {
        Host {
            session: self.session.clone(),
        }
    }

    /// A named cache volume: contents persist across runs and never enter a
    /// cache key. Mount it with [`Container::with_mounted_cache`].
    pub fn cache_volume(&self, name: impl Into<String>) -> CacheVolume {
        CacheVolume { name: name.into() }
    }

    /// A secret read by the engine from `env:NAME`, `file:PATH` or
    /// `cmd:COMMAND` (its standard output, one trailing newline dropped).
    pub fn secret(&self, uri: impl Into<String>) -> Secret {
        let uri = uri.into();
        Secret {
            def: json!({"name": uri, "uri": uri}),
        }
    }

    /// A secret with a value the pipeline already has.
    pub fn set_secret(&self, name: impl Into<String>, value: impl Into<String>) -> Secret {
        Secret {
            def: json!({"name": name.into(), "plaintext": value.into()}),
        }
    }
}

/// Options of [`Host::directory`]. Patterns use `.gitignore` syntax:
/// `target/` is a directory named target at any depth, `/target` only the
/// top-level one, `**/Cargo.toml` every Cargo.toml.
#[derive(Clone, Debug, Default)]
pub struct DirOpts {
    include: Vec<String>,
    exclude: Vec<String>,
    gitignore: bool,
}

impl DirOpts {
    /// Take only what matches one of these patterns (and the directories leading to it).
    pub fn include<I, S>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.include = list(patterns);
        self
    }

    /// Leave out what matches one of these patterns.
    pub fn exclude<I, S>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.exclude = list(patterns);
        self
    }

    /// Also leave out what the tree's `.gitignore` files ignore.
    pub fn gitignore(mut self, respect: bool) -> Self {
        self.gitignore = respect;
        self
    }
}

/// The host's files.
#[derive(Clone)]
pub struct Host {
    session: Arc<Session>,
}

impl Host {
    /// A host directory, identified by the content of what the options
    /// select (never by mtimes): an edit that keeps size and mtime still
    /// invalidates, a `touch` does not.
    pub fn directory(&self, path: impl AsRef<Path>, opts: DirOpts) -> Directory {
        Directory {
            session: self.session.clone(),
            source: json!({
                "source": "host",
                "path": host_path(path),
                "include": opts.include,
                "exclude": opts.exclude,
                "gitignore": opts.gitignore,
            }),
            ops: Ops::default(),
        }
    }

    /// A host file.
    pub fn file(&self, path: impl AsRef<Path>) -> File {
        File {
            session: self.session.clone(),
            def: json!({"source": "host", "path": host_path(path)}),
        }
    }
}

/// A named cache volume (see [`Client::cache_volume`]).
#[derive(Clone, Debug)]
pub struct CacheVolume {
    name: String,
}

/// How concurrent users share a cache volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sharing {
    /// Everyone uses it at once.
    #[default]
    Shared,
    /// A concurrent user gets an instance of its own.
    Private,
    /// Users take turns.
    Locked,
}

impl Sharing {
    fn as_str(self) -> &'static str {
        match self {
            Sharing::Shared => "shared",
            Sharing::Private => "private",
            Sharing::Locked => "locked",
        }
    }
}

/// A secret. Its value never reaches the cache index, a snapshot, a log or
/// progress output, and is scrubbed from step output; it is not part of
/// cache keys (its name is): a new value does not re-run a step.
#[derive(Clone)]
pub struct Secret {
    def: Value,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.def["name"])
    }
}

/// What a [`Container::with_exec_opts`] must end with to count as a result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReturnType {
    /// Exit code 0 (the default): anything else fails the pipeline.
    #[default]
    Success,
    /// A non-zero exit code; 0 fails.
    Failure,
    /// Any exit code; read it with [`Container::exit_code`].
    Any,
}

/// Options of [`Container::with_exec_opts`].
#[derive(Clone, Debug, Default)]
pub struct ExecOpts {
    pub expect: ReturnType,
    /// Written to the command's standard input.
    pub stdin: Option<String>,
    /// Prefix the command with the container's entrypoint.
    pub use_entrypoint: bool,
}

/// Options of the `*_opts` file methods.
#[derive(Clone, Debug, Default)]
pub struct FileOpts {
    /// Permission bits, e.g. `0o755`.
    pub permissions: Option<u32>,
    /// `user[:group]`, names or numbers, resolved in the container.
    pub owner: Option<String>,
}

/// Options of `with_directory_opts` and [`Directory::filter`].
#[derive(Clone, Debug, Default)]
pub struct DirectoryOpts {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// `user[:group]` for everything copied (containers only).
    pub owner: Option<String>,
}

/// Media types of a published or exported image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageMediaTypes {
    /// `application/vnd.oci.image.*` (the default).
    #[default]
    Oci,
    /// `application/vnd.docker.*`, for old registries and tools.
    Docker,
}

/// Compression of the layers rbuild makes (base image layers stay as they are).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageLayerCompression {
    #[default]
    Gzip,
    Zstd,
    Uncompressed,
}

/// How an image is written by `publish_opts`, `export_opts` and `as_tarball_opts`.
#[derive(Clone, Debug, Default)]
pub struct ImageOpts {
    pub media_types: ImageMediaTypes,
    pub compression: ImageLayerCompression,
    /// Keep the files' and the image's real timestamps. By default they are
    /// the Unix epoch, so that the same content always has the same digest.
    pub real_timestamps: bool,
    /// The name a tarball gives the image (`docker load` tags it so).
    pub name: Option<String>,
}

impl ImageOpts {
    fn format(&self) -> Value {
        json!({
            "media_types": match self.media_types {
                ImageMediaTypes::Oci => "oci",
                ImageMediaTypes::Docker => "docker",
            },
            "compression": match self.compression {
                ImageLayerCompression::Gzip => "gzip",
                ImageLayerCompression::Zstd => "zstd",
                ImageLayerCompression::Uncompressed => "uncompressed",
            },
            "real_timestamps": self.real_timestamps,
        })
    }
}

/// A container: a root filesystem and the configuration to run commands in it.
///
/// Immutable and lazy; every builder method returns a new `Container`.
#[derive(Clone)]
pub struct Container {
    session: Arc<Session>,
    ops: Ops,
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Container")
            .field("ops", &self.ops.to_json().0)
            .finish()
    }
}

impl Container {
    #[track_caller]
    fn with(&self, op: Value) -> Container {
        let at = std::panic::Location::caller();
        Container {
            session: self.session.clone(),
            ops: self
                .ops
                .push(op, Some(format!("{}:{}", at.file(), at.line()))),
        }
    }

    fn def(&self) -> Value {
        let (ops, at) = self.ops.to_json();
        json!({ "ops": ops, "at": at })
    }

    /// Starts from an image in a registry (`registry/repository:tag` or `@sha256:…`).
    /// Its environment, working directory, user, entrypoint and default
    /// args become the container's.
    #[track_caller]
    pub fn from(&self, address: impl Into<String>) -> Container {
        self.with(json!({"op": "from", "address": address.into()}))
    }

    /// Runs a command. `args[0]` is looked up in the container's `PATH`; no
    /// shell is involved unless you call one (`["sh", "-c", "..."]`).
    /// Accepts arrays, slices and vectors of `&str` or `String`.
    #[track_caller]
    pub fn with_exec<I, S>(&self, args: I) -> Container
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.with_exec_opts(args, ExecOpts::default())
    }

    /// [`Container::with_exec`] with an expected outcome, stdin, or the entrypoint.
    #[track_caller]
    pub fn with_exec_opts<I, S>(&self, args: I, opts: ExecOpts) -> Container
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let expect = match opts.expect {
            ReturnType::Success => "success",
            ReturnType::Failure => "failure",
            ReturnType::Any => "any",
        };
        self.with(json!({
            "op": "with_exec",
            "args": list(args),
            "expect": expect,
            "stdin": opts.stdin,
            "use_entrypoint": opts.use_entrypoint,
        }))
    }

    /// Sets an environment variable for the commands that follow.
    #[track_caller]
    pub fn with_env_variable(
        &self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Container {
        self.with_env_variable_opts(name, value, false)
    }

    /// With `expand`, `$VAR` and `${VAR}` in `value` are replaced with the
    /// container's current values.
    #[track_caller]
    pub fn with_env_variable_opts(
        &self,
        name: impl Into<String>,
        value: impl Into<String>,
        expand: bool,
    ) -> Container {
        self.with(json!({"op": "with_env_variable", "name": name.into(), "value": value.into(), "expand": expand}))
    }

    #[track_caller]
    pub fn without_env_variable(&self, name: impl Into<String>) -> Container {
        self.with(json!({"op": "without_env_variable", "name": name.into()}))
    }

    /// An environment variable whose value is a secret.
    #[track_caller]
    pub fn with_secret_variable(
        &self,
        name: impl Into<String>,
        secret: impl Borrow<Secret>,
    ) -> Container {
        self.with(json!({"op": "with_secret_variable", "name": name.into(), "secret": secret.borrow().def}))
    }

    /// Sets the working directory (relative paths are relative to the current one).
    #[track_caller]
    pub fn with_workdir(&self, path: impl Into<String>) -> Container {
        self.with(json!({"op": "with_workdir", "path": path.into()}))
    }

    /// The user commands run as: `name`, `uid`, `name:group` or `uid:gid`.
    #[track_caller]
    pub fn with_user(&self, name: impl Into<String>) -> Container {
        self.with(json!({"op": "with_user", "name": name.into()}))
    }

    #[track_caller]
    pub fn with_entrypoint<I, S>(&self, args: I) -> Container
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.with(json!({"op": "with_entrypoint", "args": list(args)}))
    }

    /// The command `with_exec([])` runs.
    #[track_caller]
    pub fn with_default_args<I, S>(&self, args: I) -> Container
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.with(json!({"op": "with_default_args", "args": list(args)}))
    }

    #[track_caller]
    pub fn with_label(&self, name: impl Into<String>, value: impl Into<String>) -> Container {
        self.with(json!({"op": "with_label", "name": name.into(), "value": value.into()}))
    }

    /// Copies a directory's contents to `path` (merging with what is there).
    #[track_caller]
    pub fn with_directory(
        &self,
        path: impl Into<String>,
        dir: impl Borrow<Directory>,
    ) -> Container {
        self.with_directory_opts(path, dir, DirectoryOpts::default())
    }

    #[track_caller]
    pub fn with_directory_opts(
        &self,
        path: impl Into<String>,
        dir: impl Borrow<Directory>,
        opts: DirectoryOpts,
    ) -> Container {
        self.with(json!({
            "op": "with_directory", "path": path.into(), "directory": dir.borrow().def(),
            "include": opts.include, "exclude": opts.exclude, "owner": opts.owner,
        }))
    }

    /// Copies a file to `path`.
    #[track_caller]
    pub fn with_file(&self, path: impl Into<String>, file: impl Borrow<File>) -> Container {
        self.with_file_opts(path, file, FileOpts::default())
    }

    #[track_caller]
    pub fn with_file_opts(
        &self,
        path: impl Into<String>,
        file: impl Borrow<File>,
        opts: FileOpts,
    ) -> Container {
        self.with(json!({
            "op": "with_file", "path": path.into(), "file": file.borrow().def,
            "permissions": opts.permissions, "owner": opts.owner,
        }))
    }

    /// Writes a new file (mode 0644 unless given).
    #[track_caller]
    pub fn with_new_file(&self, path: impl Into<String>, contents: impl Into<String>) -> Container {
        self.with_new_file_opts(path, contents, FileOpts::default())
    }

    #[track_caller]
    pub fn with_new_file_opts(
        &self,
        path: impl Into<String>,
        contents: impl Into<String>,
        opts: FileOpts,
    ) -> Container {
        self.with(json!({
            "op": "with_new_file", "path": path.into(), "contents": contents.into(),
            "permissions": opts.permissions, "owner": opts.owner,
        }))
    }

    #[track_caller]
    pub fn without_file(&self, path: impl Into<String>) -> Container {
        self.with(json!({"op": "without_file", "path": path.into()}))
    }

    #[track_caller]
    pub fn without_directory(&self, path: impl Into<String>) -> Container {
        self.with(json!({"op": "without_directory", "path": path.into()}))
    }

    /// Mounts a directory for the commands that follow; what they change in
    /// it is not kept.
    #[track_caller]
    pub fn with_mounted_directory(
        &self,
        path: impl Into<String>,
        dir: impl Borrow<Directory>,
    ) -> Container {
        self.with(json!({"op": "with_mounted_directory", "path": path.into(), "directory": dir.borrow().def()}))
    }

    #[track_caller]
    pub fn with_mounted_file(&self, path: impl Into<String>, file: impl Borrow<File>) -> Container {
        self.with(
            json!({"op": "with_mounted_file", "path": path.into(), "file": file.borrow().def}),
        )
    }

    /// Mounts a cache volume (shared between concurrent users).
    #[track_caller]
    pub fn with_mounted_cache(
        &self,
        path: impl Into<String>,
        cache: impl Borrow<CacheVolume>,
    ) -> Container {
        self.with_mounted_cache_opts(path, cache, Sharing::Shared)
    }

    #[track_caller]
    pub fn with_mounted_cache_opts(
        &self,
        path: impl Into<String>,
        cache: impl Borrow<CacheVolume>,
        sharing: Sharing,
    ) -> Container {
        self.with(json!({
            "op": "with_mounted_cache", "path": path.into(),
            "volume": cache.borrow().name, "sharing": sharing.as_str(),
        }))
    }

    /// Mounts an empty tmpfs.
    #[track_caller]
    pub fn with_mounted_temp(&self, path: impl Into<String>) -> Container {
        self.with(json!({"op": "with_mounted_temp", "path": path.into()}))
    }

    /// Mounts a secret as a read-only file (mode 0400 unless given).
    #[track_caller]
    pub fn with_mounted_secret(
        &self,
        path: impl Into<String>,
        secret: impl Borrow<Secret>,
    ) -> Container {
        self.with_mounted_secret_opts(path, secret, None)
    }

    #[track_caller]
    pub fn with_mounted_secret_opts(
        &self,
        path: impl Into<String>,
        secret: impl Borrow<Secret>,
        mode: Option<u32>,
    ) -> Container {
        self.with(json!({"op": "with_mounted_secret", "path": path.into(), "secret": secret.borrow().def, "mode": mode}))
    }

    #[track_caller]
    pub fn without_mount(&self, path: impl Into<String>) -> Container {
        self.with(json!({"op": "without_mount", "path": path.into()}))
    }

    /// Declares a port the image listens on (`with_exposed_port(8080)`), for its config.
    #[track_caller]
    pub fn with_exposed_port(&self, port: u16) -> Container {
        self.with_exposed_port_opts(port, "tcp")
    }

    #[track_caller]
    pub fn with_exposed_port_opts(&self, port: u16, protocol: impl Into<String>) -> Container {
        self.with(json!({"op": "with_exposed_port", "port": port, "protocol": protocol.into()}))
    }

    /// Credentials for publishing to `address`'s registry (instead of the Docker config's).
    #[track_caller]
    pub fn with_registry_auth(
        &self,
        address: impl Into<String>,
        username: impl Into<String>,
        secret: impl Borrow<Secret>,
    ) -> Container {
        self.with(json!({
            "op": "with_registry_auth", "address": address.into(),
            "username": username.into(), "secret": secret.borrow().def,
        }))
    }

    /// This container replaced by the image in an OCI image tarball
    /// (`export`'s or `as_tarball`'s, or `skopeo copy … oci-archive:`).
    #[track_caller]
    pub fn import(&self, file: impl Borrow<File>) -> Container {
        self.with(json!({"op": "import", "file": file.borrow().def}))
    }

    /// Opens an interactive shell (`/bin/sh`) in this container on the
    /// terminal `rbuild run` was started from; returns its exit code. What
    /// the shell changes is not kept.
    pub fn terminal(&self) -> impl Future<Output = Result<i64>> + Send + 'static {
        self.terminal_opts(Vec::<String>::new())
    }

    /// [`Container::terminal`] with another command (`["bash", "-l"]`).
    pub fn terminal_opts<I, S>(
        &self,
        command: I,
    ) -> impl Future<Output = Result<i64>> + Send + 'static
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let query = json!({"kind": "container.terminal", "container": self.def(), "command": list(command)});
        let session = self.session.clone();
        async move {
            session
                .query(query)
                .await?
                .as_i64()
                .ok_or_else(|| Error::new("the engine sent an exit code that is not a number"))
        }
    }

    /// Pushes this container as an image to `address` (`registry/repo:tag`);
    /// returns the pushed reference with its digest. Base image layers are
    /// not uploaded again when the registry has them.
    pub fn publish(
        &self,
        address: impl Into<String>,
    ) -> impl Future<Output = Result<String>> + Send + 'static {
        self.publish_opts(address, ImageOpts::default())
    }

    pub fn publish_opts(
        &self,
        address: impl Into<String>,
        opts: ImageOpts,
    ) -> impl Future<Output = Result<String>> + Send + 'static {
        let mut query =
            json!({"kind": "container.publish", "container": self.def(), "format": opts.format()});
        query["address"] = Value::String(address.into());
        let session = self.session.clone();
        async move { string(session.query(query).await?) }
    }

    /// Writes this container as an OCI image tarball (also loadable by
    /// `docker load`) to a host path; returns the path.
    pub fn export(
        &self,
        path: impl AsRef<Path>,
    ) -> impl Future<Output = Result<String>> + Send + 'static {
        self.export_opts(path, ImageOpts::default())
    }

    pub fn export_opts(
        &self,
        path: impl AsRef<Path>,
        opts: ImageOpts,
    ) -> impl Future<Output = Result<String>> + Send + 'static {
        let query = json!({
            "kind": "container.export", "container": self.def(), "path": host_path(path),
            "name": opts.name, "format": opts.format(),
        });
        let session = self.session.clone();
        async move { string(session.query(query).await?) }
    }

    /// This container as an OCI image tarball file.
    pub fn as_tarball(&self) -> File {
        self.as_tarball_opts(ImageOpts::default())
    }

    pub fn as_tarball_opts(&self, opts: ImageOpts) -> File {
        File {
            session: self.session.clone(),
            def: json!({"source": "tarball", "container": self.def(), "format": opts.format(), "name": opts.name}),
        }
    }

    /// A directory of this container's filesystem.
    pub fn directory(&self, path: impl Into<String>) -> Directory {
        Directory {
            session: self.session.clone(),
            source: json!({"source": "container", "container": self.def(), "path": path.into()}),
            ops: Ops::default(),
        }
    }

    /// A file of this container's filesystem.
    pub fn file(&self, path: impl Into<String>) -> File {
        File {
            session: self.session.clone(),
            def: json!({"source": "container", "container": self.def(), "path": path.into()}),
        }
    }

    fn ask(&self, kind: &str) -> impl Future<Output = Result<Value>> + Send + 'static {
        ask(&self.session, kind, ("container", self.def()), None)
    }

    /// What the last `with_exec` wrote to standard output (secrets scrubbed).
    pub fn stdout(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        let answer = self.ask("container.stdout");
        async move { string(answer.await?) }
    }

    /// What the last `with_exec` wrote to standard error (secrets scrubbed).
    pub fn stderr(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        let answer = self.ask("container.stderr");
        async move { string(answer.await?) }
    }

    /// The exit code of the last `with_exec`.
    pub fn exit_code(&self) -> impl Future<Output = Result<i64>> + Send + 'static {
        let answer = self.ask("container.exit_code");
        async move {
            answer
                .await?
                .as_i64()
                .ok_or_else(|| Error::new("the engine sent an exit code that is not a number"))
        }
    }

    /// Runs everything this container needs, and returns it.
    pub fn sync(&self) -> impl Future<Output = Result<Container>> + Send + 'static {
        let answer = self.ask("container.sync");
        let this = self.clone();
        async move {
            answer.await?;
            Ok(this)
        }
    }
}

/// A directory: a tree of files, from the host, a container, or built up.
#[derive(Clone)]
pub struct Directory {
    session: Arc<Session>,
    source: Value,
    ops: Ops,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("def", &self.def())
            .finish()
    }
}

impl Directory {
    fn with(&self, op: Value) -> Directory {
        Directory {
            session: self.session.clone(),
            source: self.source.clone(),
            ops: self.ops.push(op, None),
        }
    }

    fn def(&self) -> Value {
        json!({ "source": self.source, "ops": self.ops.to_json().0 })
    }

    fn ask(
        &self,
        kind: &str,
        extra: Option<(&str, Value)>,
    ) -> impl Future<Output = Result<Value>> + Send + 'static {
        ask(&self.session, kind, ("directory", self.def()), extra)
    }

    /// A subdirectory.
    pub fn directory(&self, path: impl Into<String>) -> Directory {
        self.with(json!({"op": "directory", "path": path.into()}))
    }

    /// A file in this directory.
    pub fn file(&self, path: impl Into<String>) -> File {
        File {
            session: self.session.clone(),
            def: json!({"source": "directory", "directory": self.def(), "path": path.into()}),
        }
    }

    pub fn with_new_file(&self, path: impl Into<String>, contents: impl Into<String>) -> Directory {
        self.with_new_file_opts(path, contents, None)
    }

    pub fn with_new_file_opts(
        &self,
        path: impl Into<String>,
        contents: impl Into<String>,
        permissions: Option<u32>,
    ) -> Directory {
        self.with(json!({"op": "with_new_file", "path": path.into(), "contents": contents.into(), "permissions": permissions}))
    }

    pub fn with_file(&self, path: impl Into<String>, file: impl Borrow<File>) -> Directory {
        self.with(json!({"op": "with_file", "path": path.into(), "file": file.borrow().def}))
    }

    pub fn with_directory(
        &self,
        path: impl Into<String>,
        dir: impl Borrow<Directory>,
    ) -> Directory {
        self.with_directory_opts(path, dir, DirectoryOpts::default())
    }

    pub fn with_directory_opts(
        &self,
        path: impl Into<String>,
        dir: impl Borrow<Directory>,
        opts: DirectoryOpts,
    ) -> Directory {
        self.with(json!({
            "op": "with_directory", "path": path.into(), "directory": dir.borrow().def(),
            "include": opts.include, "exclude": opts.exclude,
        }))
    }

    pub fn without_file(&self, path: impl Into<String>) -> Directory {
        self.with(json!({"op": "without_file", "path": path.into()}))
    }

    pub fn without_directory(&self, path: impl Into<String>) -> Directory {
        self.with(json!({"op": "without_directory", "path": path.into()}))
    }

    /// Only what the include/exclude patterns select.
    pub fn filter(&self, opts: DirectoryOpts) -> Directory {
        self.with(json!({"op": "filter", "include": opts.include, "exclude": opts.exclude}))
    }

    /// What in `other` is new or different compared to this directory.
    pub fn diff(&self, other: impl Borrow<Directory>) -> Directory {
        self.with(json!({"op": "diff", "other": other.borrow().def()}))
    }

    /// Names of the entries at the top of this directory, sorted.
    pub fn entries(&self) -> impl Future<Output = Result<Vec<String>>> + Send + 'static {
        let answer = self.ask("directory.entries", None);
        async move { strings(answer.await?) }
    }

    /// Relative paths that match a glob (`*.rs`, `**/*.toml`), sorted.
    pub fn glob(
        &self,
        pattern: impl Into<String>,
    ) -> impl Future<Output = Result<Vec<String>>> + Send + 'static {
        let answer = self.ask(
            "directory.glob",
            Some(("pattern", Value::String(pattern.into()))),
        );
        async move { strings(answer.await?) }
    }

    /// The content digest (`blake3:…`) over names, types, permission bits,
    /// symlink targets and file contents.
    pub fn digest(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        let answer = self.ask("directory.digest", None);
        async move { string(answer.await?) }
    }

    /// Writes the directory's contents to a host path; returns that path.
    pub fn export(
        &self,
        path: impl AsRef<Path>,
    ) -> impl Future<Output = Result<String>> + Send + 'static {
        let answer = self.ask(
            "directory.export",
            Some(("path", Value::String(host_path(path)))),
        );
        async move { string(answer.await?) }
    }

    pub fn sync(&self) -> impl Future<Output = Result<Directory>> + Send + 'static {
        let answer = self.ask("directory.sync", None);
        let this = self.clone();
        async move {
            answer.await?;
            Ok(this)
        }
    }
}

/// A file.
#[derive(Clone)]
pub struct File {
    session: Arc<Session>,
    def: Value,
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File").field("def", &self.def).finish()
    }
}

impl File {
    fn ask(
        &self,
        kind: &str,
        extra: Option<(&str, Value)>,
    ) -> impl Future<Output = Result<Value>> + Send + 'static {
        ask(&self.session, kind, ("file", self.def.clone()), extra)
    }

    /// The file's contents (as text; invalid UTF-8 is replaced).
    pub fn contents(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        let answer = self.ask("file.contents", None);
        async move { string(answer.await?) }
    }

    /// Size in bytes.
    pub fn size(&self) -> impl Future<Output = Result<u64>> + Send + 'static {
        let answer = self.ask("file.size", None);
        async move {
            answer
                .await?
                .as_u64()
                .ok_or_else(|| Error::new("the engine sent a size that is not a number"))
        }
    }

    /// The file's name (the last path component).
    pub fn name(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        let answer = self.ask("file.name", None);
        async move { string(answer.await?) }
    }

    /// `blake3:…` of the contents.
    pub fn digest(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        let answer = self.ask("file.digest", None);
        async move { string(answer.await?) }
    }

    /// Writes the file to a host path; returns that path.
    pub fn export(
        &self,
        path: impl AsRef<Path>,
    ) -> impl Future<Output = Result<String>> + Send + 'static {
        let answer = self.ask(
            "file.export",
            Some(("path", Value::String(host_path(path)))),
        );
        async move { string(answer.await?) }
    }

    pub fn sync(&self) -> impl Future<Output = Result<File>> + Send + 'static {
        let answer = self.ask("file.sync", None);
        let this = self.clone();
        async move {
            answer.await?;
            Ok(this)
        }
    }
}

// ------------------------------------------------------------- functions --

/// The type of a function argument given on the `rbuild call` command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    String,
    Int,
    Float,
    Bool,
    /// A host directory path.
    Directory,
    /// A host file path.
    File,
    /// `env:NAME`, `file:PATH` or `cmd:COMMAND`.
    Secret,
    /// An image reference.
    Container,
}

impl ArgKind {
    fn name(self) -> &'static str {
        match self {
            ArgKind::String => "string",
            ArgKind::Int => "int",
            ArgKind::Float => "float",
            ArgKind::Bool => "bool",
            ArgKind::Directory => "directory",
            ArgKind::File => "file",
            ArgKind::Secret => "secret",
            ArgKind::Container => "container",
        }
    }
}

struct ArgDef {
    name: String,
    kind: ArgKind,
    doc: String,
    default: Option<String>,
}

type FunctionBody = Box<
    dyn Fn(Client, Args) -> std::pin::Pin<Box<dyn Future<Output = Result<Returned>> + Send>>
        + Send
        + Sync,
>;

struct FunctionDef {
    name: String,
    doc: String,
    args: Vec<ArgDef>,
    body: FunctionBody,
}

/// What a function returns; `rbuild call` can print it, export it, publish
/// it or open a terminal in it.
pub enum Returned {
    Nothing,
    Text(String),
    Container(Container),
    Directory(Directory),
    File(File),
}

impl From<String> for Returned {
    fn from(s: String) -> Self {
        Returned::Text(s)
    }
}
impl From<&str> for Returned {
    fn from(s: &str) -> Self {
        Returned::Text(s.to_string())
    }
}
impl From<()> for Returned {
    fn from(_: ()) -> Self {
        Returned::Nothing
    }
}
impl From<Container> for Returned {
    fn from(c: Container) -> Self {
        Returned::Container(c)
    }
}
impl From<Directory> for Returned {
    fn from(d: Directory) -> Self {
        Returned::Directory(d)
    }
}
impl From<File> for Returned {
    fn from(f: File) -> Self {
        Returned::File(f)
    }
}

/// The arguments a function was called with, converted to their types.
pub struct Args {
    client: Client,
    values: std::collections::HashMap<String, String>,
}

impl Args {
    fn raw(&self, name: &str) -> Result<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| Error::new(format!("missing argument --{name}")))
    }

    fn parse<T: std::str::FromStr>(&self, name: &str, what: &str) -> Result<T> {
        let v = self.raw(name)?;
        v.parse()
            .map_err(|_| Error::new(format!("argument --{name}: {v:?} is not {what}")))
    }

    pub fn string(&self, name: &str) -> Result<String> {
        self.raw(name).map(String::from)
    }
    pub fn int(&self, name: &str) -> Result<i64> {
        self.parse(name, "an integer")
    }
    pub fn float(&self, name: &str) -> Result<f64> {
        self.parse(name, "a number")
    }
    pub fn bool(&self, name: &str) -> Result<bool> {
        self.parse(name, "true or false")
    }
    /// A host directory (everything in it; filter with `Directory::filter`).
    pub fn directory(&self, name: &str) -> Result<Directory> {
        Ok(self
            .client
            .host()
            .directory(self.raw(name)?, DirOpts::default()))
    }
    pub fn file(&self, name: &str) -> Result<File> {
        Ok(self.client.host().file(self.raw(name)?))
    }
    pub fn secret(&self, name: &str) -> Result<Secret> {
        Ok(self.client.secret(self.raw(name)?))
    }
    /// A container started from the image reference given.
    pub fn container(&self, name: &str) -> Result<Container> {
        Ok(self.client.container().from(self.raw(name)?))
    }
}

/// Functions a pipeline exposes: `rbuild functions` lists them, `rbuild
/// call FN --arg value …` calls one.
///
/// ```no_run
/// use rbuild_sdk as rb;
///
/// #[tokio::main]
/// async fn main() -> rb::Result<()> {
///     rb::Functions::new()
///         .function("hello", "Says hello from a container")
///         .arg("name", rb::ArgKind::String, "who to greet")
///         .returns(|client, args| async move {
///             let name = args.string("name")?;
///             Ok(client
///                 .container()
///                 .from("127.0.0.1:5000/busybox:latest")
///                 .with_exec(["echo", "hello", &name]))
///         })
///         .serve()
///         .await
/// }
/// ```
#[derive(Default)]
pub struct Functions {
    functions: Vec<FunctionDef>,
}

/// A function being declared; finish it with [`FunctionBuilder::returns`].
pub struct FunctionBuilder {
    functions: Functions,
    name: String,
    doc: String,
    args: Vec<ArgDef>,
}

impl FunctionBuilder {
    /// A required argument.
    pub fn arg(mut self, name: &str, kind: ArgKind, doc: &str) -> Self {
        self.args.push(ArgDef {
            name: name.into(),
            kind,
            doc: doc.into(),
            default: None,
        });
        self
    }

    /// An optional argument with a default (as it would be typed on the command line).
    pub fn arg_default(mut self, name: &str, kind: ArgKind, doc: &str, default: &str) -> Self {
        self.args.push(ArgDef {
            name: name.into(),
            kind,
            doc: doc.into(),
            default: Some(default.into()),
        });
        self
    }

    /// The function's body.
    pub fn returns<F, Fut, R>(mut self, body: F) -> Functions
    where
        F: Fn(Client, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: Into<Returned>,
    {
        self.functions.functions.push(FunctionDef {
            name: self.name,
            doc: self.doc,
            args: self.args,
            body: Box::new(move |client, args| {
                let fut = body(client, args);
                Box::pin(async move { fut.await.map(Into::into) })
            }),
        });
        self.functions
    }
}

const LIST_ENV: &str = "RBUILD_FUNCTIONS_LIST";
const CALL_ENV: &str = "RBUILD_CALL";

impl Functions {
    pub fn new() -> Functions {
        Functions::default()
    }

    /// Declares a function (its doc is what `rbuild functions` shows).
    pub fn function(self, name: &str, doc: &str) -> FunctionBuilder {
        FunctionBuilder {
            functions: self,
            name: name.into(),
            doc: doc.into(),
            args: Vec::new(),
        }
    }

    fn describe(&self) -> Value {
        json!({"functions": self.functions.iter().map(|f| json!({
            "name": f.name,
            "doc": f.doc,
            "args": f.args.iter().map(|a| json!({
                "name": a.name, "kind": a.kind.name(), "doc": a.doc, "default": a.default,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()})
    }

    /// Answers `rbuild functions` and `rbuild call`; under plain `rbuild
    /// run`, lists the functions.
    pub async fn serve(self) -> Result<()> {
        if std::env::var_os(LIST_ENV).is_some() {
            println!("{}", self.describe());
            return Ok(());
        }
        let Ok(call) = std::env::var(CALL_ENV) else {
            eprintln!("this pipeline exposes functions; call one with `rbuild call <pipeline> <function> [--arg value]...`:");
            for f in &self.functions {
                eprintln!("  {:<20} {}", f.name, f.doc);
            }
            return Ok(());
        };
        let call: Value =
            serde_json::from_str(&call).map_err(|e| Error::new(format!("bad {CALL_ENV}: {e}")))?;
        let name = call["function"].as_str().unwrap_or_default();
        let f = self
            .functions
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| {
                Error::new(format!(
                    "no function {name:?}; this pipeline has: {}",
                    self.functions
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let given: std::collections::HashMap<String, String> =
            serde_json::from_value(call["args"].clone()).unwrap_or_default();
        let mut values = std::collections::HashMap::new();
        for a in &f.args {
            match given.get(&a.name).or(a.default.as_ref()) {
                Some(v) => {
                    values.insert(a.name.clone(), v.clone());
                }
                None => {
                    return Err(Error::new(format!(
                        "{}: missing argument --{} ({}: {})",
                        f.name,
                        a.name,
                        a.kind.name(),
                        a.doc
                    )))
                }
            }
        }
        if let Some(extra) = given.keys().find(|k| !f.args.iter().any(|a| &a.name == *k)) {
            return Err(Error::new(format!(
                "{}: unknown argument --{extra}",
                f.name
            )));
        }
        let client = connect().await?;
        let returned = (f.body)(client.clone(), Args { client, values }).await?;
        act(returned, &call["action"]).await
    }
}

/// What `rbuild call` asked to do with a function's result.
async fn act(returned: Returned, action: &Value) -> Result<()> {
    let kind = action["kind"].as_str().unwrap_or("print");
    match (kind, returned) {
        ("print", Returned::Nothing) => Ok(()),
        ("print", Returned::Text(t)) => {
            println!("{t}");
            Ok(())
        }
        ("print", Returned::Container(c)) => {
            print!("{}", c.stdout().await?);
            Ok(())
        }
        ("print", Returned::Directory(d)) => {
            for e in d.entries().await? {
                println!("{e}");
            }
            Ok(())
        }
        ("print", Returned::File(f)) => {
            print!("{}", f.contents().await?);
            Ok(())
        }
        ("export", r) => {
            let path = action["path"]
                .as_str()
                .ok_or_else(|| Error::new("export needs --path"))?;
            let written = match r {
                Returned::Container(c) => c.export(path).await?,
                Returned::Directory(d) => d.export(path).await?,
                Returned::File(f) => f.export(path).await?,
                _ => {
                    return Err(Error::new(
                        "only a container, directory or file can be exported",
                    ))
                }
            };
            println!("{written}");
            Ok(())
        }
        ("publish", Returned::Container(c)) => {
            let address = action["address"]
                .as_str()
                .ok_or_else(|| Error::new("publish needs --address"))?;
            println!("{}", c.publish(address).await?);
            Ok(())
        }
        ("terminal", Returned::Container(c)) => {
            c.terminal().await?;
            Ok(())
        }
        (kind, _) => Err(Error::new(format!(
            "cannot {kind} this result: publish and terminal take a container"
        ))),
    }
}
