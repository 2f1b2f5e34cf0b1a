//! # rbuild-sdk
//!
//! Write build and CI pipelines as Rust programs; run them with
//! `rbuild run path/to/pipeline.rs`. Every step runs in a container on
//! containerd and is cached by the content of its inputs.
//!
//! ```no_run
//! use rbuild_sdk as rb;
//!
//! #[tokio::main]
//! async fn main() -> rb::Result<()> {
//!     let client = rb::connect().await?;
//!     let out = client
//!         .container()
//!         .from("127.0.0.1:5000/busybox:latest")
//!         .with_env_variable("NAME", "world")
//!         .with_exec(["sh", "-c", "echo hello $NAME"])
//!         .stdout()
//!         .await?;
//!     print!("{out}");
//!     Ok(())
//! }
//! ```
//!
//! Values ([`Container`]) are immutable and lazy: builder methods return a
//! new value describing more work, and nothing runs until a result is asked
//! for ([`Container::stdout`], [`Container::stderr`], [`Container::exit_code`],
//! [`Container::sync`]). Names follow Dagger's API in snake_case.
//!
//! This crate is only a client: the engine runs inside `rbuild run`, which
//! hands the pipeline a private session socket.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
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
    let client = Client {
        session: Arc::new(Session {
            socket: PathBuf::from(socket),
            token,
        }),
    };
    // Fail here, not at the first query, if the session is unreachable.
    UnixStream::connect(&client.session.socket)
        .await
        .map_err(|e| client.session.unreachable(e))?;
    Ok(client)
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
            ops: None,
        }
    }
}

/// One builder call, in a persistent list: extending a container is O(1)
/// and shares the description of its parent.
struct OpNode {
    parent: Option<Arc<OpNode>>,
    op: Value,
}

/// A container: a root filesystem and the configuration to run commands in it.
///
/// Immutable and lazy; every builder method returns a new `Container`.
#[derive(Clone)]
pub struct Container {
    session: Arc<Session>,
    ops: Option<Arc<OpNode>>,
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Container")
            .field("ops", &self.describe()["ops"])
            .finish()
    }
}

impl Container {
    fn with(&self, op: Value) -> Container {
        Container {
            session: self.session.clone(),
            ops: Some(Arc::new(OpNode {
                parent: self.ops.clone(),
                op,
            })),
        }
    }

    fn describe(&self) -> Value {
        let mut ops = Vec::new();
        let mut node = self.ops.as_deref();
        while let Some(n) = node {
            ops.push(n.op.clone());
            node = n.parent.as_deref();
        }
        ops.reverse();
        json!({ "ops": ops })
    }

    /// Starts from an image in a registry (`registry/repository:tag` or `@sha256:…`).
    /// Its environment, working directory and user become the container's.
    pub fn from(&self, address: impl Into<String>) -> Container {
        self.with(json!({"op": "from", "address": address.into()}))
    }

    /// Runs a command. `args[0]` is looked up in the container's `PATH`; no
    /// shell is involved unless you call one (`["sh", "-c", "..."]`).
    /// Accepts arrays, slices and vectors of `&str` or `String`.
    pub fn with_exec<I, S>(&self, args: I) -> Container
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let args: Vec<String> = args.into_iter().map(|s| s.as_ref().to_string()).collect();
        self.with(json!({"op": "with_exec", "args": args}))
    }

    /// Sets an environment variable for the commands that follow.
    pub fn with_env_variable(
        &self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Container {
        self.with(json!({"op": "with_env_variable", "name": name.into(), "value": value.into()}))
    }

    /// Sets the working directory (relative paths are relative to the current one).
    pub fn with_workdir(&self, path: impl Into<String>) -> Container {
        self.with(json!({"op": "with_workdir", "path": path.into()}))
    }

    /// A query about this container. The future owns what it needs, so
    /// `base.with_exec(..).stdout()` can be awaited inside `tokio::join!`.
    fn ask(&self, kind: &str) -> impl Future<Output = Result<Value>> + Send + 'static {
        let session = self.session.clone();
        let query = json!({"kind": kind, "container": self.describe()});
        async move { session.query(query).await }
    }

    /// What the last `with_exec` wrote to standard output.
    pub fn stdout(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        let answer = self.ask("container.stdout");
        async move { string(answer.await?) }
    }

    /// What the last `with_exec` wrote to standard error.
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

fn string(v: Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(Error::new(format!(
            "the engine sent {other} where text was expected"
        ))),
    }
}
