//! The session a pipeline process talks to: a Unix socket in a private
//! directory (0700, socket 0600) and a random token, both handed to the
//! pipeline in its environment.
//!
//! Protocol: one request per connection, one JSON line each way.
//! Request:  `{"token": "...", "sdk": "0.1.0", "query": {"kind": "container.stdout", "container": {...}}}`
//! Response: `{"ok": <value>}` or `{"error": {"message": "..."}}`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::graph::{ContainerDef, DirectoryDef, FileDef, ImageFormatDef};
use crate::solver::{ReadAnswer, ReadOp, SolveError, Solver, Worker, join_path};

/// Environment variables that carry the session to the pipeline process.
pub const SOCKET_ENV: &str = "RBUILD_SESSION";
pub const TOKEN_ENV: &str = "RBUILD_SESSION_TOKEN";
/// Requests larger than this are refused (a pipeline graph is far smaller).
const MAX_REQUEST: u64 = 256 << 20;

pub struct Session {
    dir: PathBuf,
    socket: PathBuf,
    token: String,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Deserialize)]
struct Request {
    token: String,
    #[serde(default)]
    sdk: String,
    query: Query,
}

#[derive(Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
enum Query {
    #[serde(rename = "container.stdout")]
    Stdout { container: ContainerDef },
    #[serde(rename = "container.stderr")]
    Stderr { container: ContainerDef },
    #[serde(rename = "container.exit_code")]
    ExitCode { container: ContainerDef },
    #[serde(rename = "container.sync")]
    Sync { container: ContainerDef },
    #[serde(rename = "container.terminal")]
    Terminal {
        container: ContainerDef,
        #[serde(default)]
        command: Vec<String>,
    },
    #[serde(rename = "container.publish")]
    Publish {
        container: ContainerDef,
        address: String,
        #[serde(default)]
        format: ImageFormatDef,
    },
    #[serde(rename = "container.export")]
    Export {
        container: ContainerDef,
        path: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        format: ImageFormatDef,
    },
    #[serde(rename = "directory.entries")]
    Entries {
        directory: DirectoryDef,
        #[serde(default)]
        path: Option<String>,
    },
    #[serde(rename = "directory.glob")]
    Glob {
        directory: DirectoryDef,
        pattern: String,
    },
    #[serde(rename = "directory.digest")]
    DirDigest { directory: DirectoryDef },
    #[serde(rename = "directory.export")]
    DirExport {
        directory: DirectoryDef,
        path: String,
    },
    #[serde(rename = "directory.sync")]
    DirSync { directory: DirectoryDef },
    #[serde(rename = "file.contents")]
    Contents { file: FileDef },
    #[serde(rename = "file.size")]
    Size { file: FileDef },
    #[serde(rename = "file.name")]
    Name { file: FileDef },
    #[serde(rename = "file.digest")]
    FileDigest { file: FileDef },
    #[serde(rename = "file.export")]
    FileExport { file: FileDef, path: String },
    #[serde(rename = "file.sync")]
    FileSync { file: FileDef },
}

impl Session {
    /// Starts serving `solver` on a fresh socket.
    pub fn start<M: Worker>(solver: Arc<Solver<M>>) -> std::io::Result<Session> {
        let dir = std::env::temp_dir().join(format!(
            "rbuild-session-{}-{}",
            std::process::id(),
            rbuild_snapshotter::unique_suffix()
        ));
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let socket = dir.join("session.sock");
        let listener = UnixListener::bind(&socket)?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
        let token = hex::encode(rand::random::<[u8; 32]>());
        let expected = token.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    break;
                };
                let solver = solver.clone();
                let expected = expected.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(conn, &solver, &expected).await {
                        tracing::debug!(error = %e, "session connection ended");
                    }
                });
            }
        });
        Ok(Session {
            dir,
            socket,
            token,
            server,
        })
    }

    /// The environment a pipeline process needs to reach this session.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            (SOCKET_ENV, self.socket.display().to_string()),
            (TOKEN_ENV, self.token.clone()),
        ]
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn serve<M: Worker>(
    conn: UnixStream,
    solver: &Arc<Solver<M>>,
    token: &str,
) -> std::io::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    reader.read_until(b'\n', &mut line).await?;
    let response = match serde_json::from_slice::<Request>(&line) {
        Err(e) => error_response(&format!("malformed request from the pipeline SDK: {e}")),
        Ok(req) if !same_token(&req.token, token) => {
            error_response("session token rejected: this socket belongs to another rbuild run")
        }
        Ok(req) => {
            if req.sdk != env!("CARGO_PKG_VERSION") {
                tracing::debug!(sdk = req.sdk, "pipeline built with another SDK version");
            }
            match answer(solver, req.query).await {
                Ok(v) => json!({ "ok": v }),
                Err(e) => error_response(&solver.secrets().scrub_str(&e.to_string())),
            }
        }
    };
    let mut out = serde_json::to_vec(&response).expect("JSON value encodes");
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

fn error_response(message: &str) -> Value {
    json!({ "error": { "message": message } })
}

async fn answer<M: Worker>(solver: &Arc<Solver<M>>, query: Query) -> Result<Value, SolveError> {
    match query {
        Query::Stdout { container } => {
            let st = solver.container(&container).await?;
            let out = st.last_exec("stdout")?;
            Ok(Value::String(
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ))
        }
        Query::Stderr { container } => {
            let st = solver.container(&container).await?;
            let out = st.last_exec("stderr")?;
            Ok(Value::String(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
        Query::ExitCode { container } => {
            let st = solver.container(&container).await?;
            Ok(json!(st.last_exec("exit_code")?.exit_code))
        }
        Query::Sync { container } => {
            solver.container(&container).await?;
            Ok(Value::Null)
        }
        Query::Terminal { container, command } => {
            let st = solver.container(&container).await?;
            Ok(json!(solver.terminal(&st, command).await?))
        }
        Query::Publish {
            container,
            address,
            format,
        } => {
            let st = solver.container(&container).await?;
            Ok(Value::String(
                solver.publish(&st, &address, format.format()).await?,
            ))
        }
        Query::Export {
            container,
            path,
            name,
            format,
        } => {
            let st = solver.container(&container).await?;
            solver
                .export(
                    &st,
                    std::path::Path::new(&path),
                    name.as_deref(),
                    format.format(),
                )
                .await?;
            Ok(Value::String(path))
        }
        Query::Entries { directory, path } => {
            let d = solver.directory(&directory).await?;
            let at = join_path(&d.path, path.as_deref().unwrap_or("."));
            names(solver.read(&d.tree, &at, ReadOp::Entries).await?)
        }
        Query::Glob { directory, pattern } => {
            let d = solver.directory(&directory).await?;
            names(solver.read(&d.tree, &d.path, ReadOp::Glob(pattern)).await?)
        }
        Query::DirDigest { directory } => {
            let d = solver.directory(&directory).await?;
            digest(solver.read(&d.tree, &d.path, ReadOp::Digest).await?)
        }
        Query::DirExport { directory, path } => {
            let d = solver.directory(&directory).await?;
            solver
                .read(&d.tree, &d.path, ReadOp::Export(PathBuf::from(&path)))
                .await?;
            Ok(Value::String(path))
        }
        Query::DirSync { directory } => {
            solver.directory(&directory).await?;
            Ok(Value::Null)
        }
        Query::Contents { file } => {
            let f = solver.file(&file).await?;
            match solver.read(&f.tree, &f.path, ReadOp::Contents).await? {
                ReadAnswer::Bytes(b) => Ok(Value::String(String::from_utf8_lossy(&b).into_owned())),
                other => Err(unexpected(other)),
            }
        }
        Query::Size { file } => {
            let f = solver.file(&file).await?;
            match solver.read(&f.tree, &f.path, ReadOp::Size).await? {
                ReadAnswer::Size(n) => Ok(json!(n)),
                other => Err(unexpected(other)),
            }
        }
        Query::Name { file } => Ok(Value::String(solver.file(&file).await?.name())),
        Query::FileDigest { file } => {
            let f = solver.file(&file).await?;
            digest(solver.read(&f.tree, &f.path, ReadOp::Digest).await?)
        }
        Query::FileExport { file, path } => {
            let f = solver.file(&file).await?;
            solver
                .read(&f.tree, &f.path, ReadOp::Export(PathBuf::from(&path)))
                .await?;
            Ok(Value::String(path))
        }
        Query::FileSync { file } => {
            let f = solver.file(&file).await?;
            // A file is there when it can be measured.
            solver.read(&f.tree, &f.path, ReadOp::Size).await?;
            Ok(Value::Null)
        }
    }
}

fn unexpected(a: ReadAnswer) -> SolveError {
    SolveError::Internal(format!("unexpected answer from the worker: {a:?}"))
}

fn names(a: ReadAnswer) -> Result<Value, SolveError> {
    match a {
        ReadAnswer::Names(n) => Ok(json!(n)),
        other => Err(unexpected(other)),
    }
}

fn digest(a: ReadAnswer) -> Result<Value, SolveError> {
    match a {
        ReadAnswer::Digest(d) => Ok(Value::String(d)),
        other => Err(unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
    }

    #[test]
    fn queries_parse() {
        let q: Query = serde_json::from_value(json!({
            "kind": "container.stdout",
            "container": {"ops": [{"op": "from", "address": "busybox"}]}
        }))
        .unwrap();
        assert!(matches!(q, Query::Stdout { .. }));
    }
}
