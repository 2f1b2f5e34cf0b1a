//! The session a pipeline process talks to: a Unix socket in a private
//! directory (0700, socket 0600) and a random token, both handed to the
//! pipeline in its environment.
//!
//! The protocol is `rbuild_sdk::wire` (one request per connection, one JSON
//! line each way, the same types on both ends); this module checks who
//! asks and in which protocol version, and answers.

use std::ops::RangeInclusive;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use rbuild_sdk::wire::{self, ErrorAnswer, Header, Query, Request, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::api::Api;
use crate::graph::image_format;
use crate::solver::services::endpoint;
use crate::solver::{ReadAnswer, ReadOp, SolveError, Solver, Worker, join_path};

/// Environment variables that carry the session to the pipeline process.
pub use rbuild_sdk::wire::{SOCKET_ENV, TOKEN_ENV};
/// Requests larger than this are refused (a pipeline graph is far smaller).
const MAX_REQUEST: u64 = 256 << 20;

/// The protocol versions this engine reads: those of the SDK it embeds,
/// back to the oldest that SDK's wire types still describe.
pub const PROTOCOLS: RangeInclusive<u32> = wire::OLDEST_PROTOCOL..=wire::PROTOCOL;

/// What a module's session is handed back: its function's result, and
/// whether the module asked the engine to evaluate anything on the way
/// (then the result may depend on what it saw, and is not remembered).
#[derive(Debug, Default)]
pub struct Capture {
    pub returned: std::sync::Mutex<Option<wire::ReturnedDef>>,
    pub evaluated: std::sync::atomic::AtomicBool,
}

pub struct Session {
    dir: PathBuf,
    socket: PathBuf,
    token: String,
    server: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Starts serving `solver` on a fresh socket, to a pipeline (or module)
    /// that declared `api`: every gated behaviour of what it asks for is
    /// that version's.
    pub fn start<M: Worker>(solver: Arc<Solver<M>>, api: Api) -> std::io::Result<Session> {
        Session::serving(solver, api, None)
    }

    /// A session for a module's function called by another pipeline: it
    /// also takes the function's result (`module.return`) into the capture.
    pub fn start_module<M: Worker>(
        solver: Arc<Solver<M>>,
        api: Api,
    ) -> std::io::Result<(Session, Arc<Capture>)> {
        let capture = Arc::new(Capture::default());
        let session = Session::serving(solver, api, Some(capture.clone()))?;
        Ok((session, capture))
    }

    fn serving<M: Worker>(
        solver: Arc<Solver<M>>,
        api: Api,
        capture: Option<Arc<Capture>>,
    ) -> std::io::Result<Session> {
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
                let capture = capture.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(conn, &solver, &expected, api, capture.as_deref()).await {
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
    api: Api,
    capture: Option<&Capture>,
) -> std::io::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    reader.read_until(b'\n', &mut line).await?;
    let response = match read_request(&line, token) {
        Err(message) => Response::Error(ErrorAnswer { message }),
        Ok(query) => match answer(solver, query, api, capture).await {
            Ok(v) => Response::Ok(v),
            Err(e) => Response::Error(ErrorAnswer {
                message: solver.secrets().scrub_str(&e.to_string()),
            }),
        },
    };
    let mut out = serde_json::to_vec(&response).expect("a response encodes as JSON");
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Reads a request line: who asks (the token), in which protocol version,
/// and only then what. `Err` is the message for the pipeline.
fn read_request(line: &[u8], token: &str) -> Result<Query, String> {
    let malformed = |e: serde_json::Error| format!("malformed request from the pipeline SDK: {e}");
    let header: Header = serde_json::from_slice(line).map_err(malformed)?;
    if !same_token(&header.token, token) {
        return Err(
            "session token rejected: this socket belongs to another rbuild run".to_string(),
        );
    }
    check_protocol(header.protocol, &header.sdk)?;
    if header.sdk != wire::SDK_VERSION {
        tracing::debug!(sdk = header.sdk, "pipeline built with another SDK version");
    }
    let request: Request = serde_json::from_slice(line).map_err(malformed)?;
    Ok(request.query)
}

/// Whether this engine reads the protocol version a pipeline's SDK speaks
/// (`sdk`: its crate version, when it said). The error names both sides'
/// versions and what to upgrade.
pub fn check_protocol(spoken: u32, sdk: &str) -> Result<(), String> {
    if PROTOCOLS.contains(&spoken) {
        return Ok(());
    }
    let theirs = if sdk.is_empty() {
        "rbuild-sdk".to_string()
    } else {
        format!("rbuild-sdk {sdk}")
    };
    let (oldest, newest) = (*PROTOCOLS.start(), *PROTOCOLS.end());
    let accepted = if oldest == newest {
        format!("protocol {newest}")
    } else {
        format!("protocols {oldest}..={newest}")
    };
    let ours = format!(
        "this pipeline's {theirs} speaks protocol {spoken}; this rbuild ({}) accepts {accepted}",
        env!("CARGO_PKG_VERSION")
    );
    let embedded = wire::SDK_VERSION;
    Err(if spoken > newest {
        format!(
            "{ours}: upgrade rbuild, or pin the pipeline's rbuild-sdk to {embedded} \
             (the SDK this rbuild embeds; a registry dependency gets it without a pin)"
        )
    } else {
        format!(
            "{ours}: upgrade the pipeline's rbuild-sdk to {embedded} (the SDK this rbuild \
             embeds; a registry dependency gets it without a pin), or use an older rbuild"
        )
    })
}

async fn answer<M: Worker>(
    solver: &Arc<Solver<M>>,
    query: Query,
    api: Api,
    capture: Option<&Capture>,
) -> Result<Value, SolveError> {
    if let Some(c) = capture
        && !matches!(query, Query::ModuleReturn { .. })
    {
        c.evaluated.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    check_first(solver, &query, api)?;
    match query {
        Query::ModuleReturn { value } => match capture {
            Some(c) => {
                *c.returned.lock().expect("capture lock poisoned") = Some(value);
                Ok(Value::Null)
            }
            None => Err(SolveError::Invalid(
                "module.return is only for a module's function that another pipeline called".into(),
            )),
        },
        Query::ModuleCall { call } => Ok(solver
            .module_text(&call, api)
            .await?
            .map_or(Value::Null, Value::String)),
        Query::Stdout { container } => {
            let st = solver.container(&container, api).await?;
            let out = st.last_exec("stdout")?;
            let all = solver
                .whole_output(&out.stdout, out.stdout_file.as_ref())
                .await;
            Ok(Value::String(String::from_utf8_lossy(&all).into_owned()))
        }
        Query::Stderr { container } => {
            let st = solver.container(&container, api).await?;
            let out = st.last_exec("stderr")?;
            let all = solver
                .whole_output(&out.stderr, out.stderr_file.as_ref())
                .await;
            Ok(Value::String(String::from_utf8_lossy(&all).into_owned()))
        }
        Query::StdoutBytes { container } => {
            let st = solver.container(&container, api).await?;
            let out = st.last_exec("stdout_bytes")?;
            let all = solver
                .whole_output(&out.stdout, out.stdout_file.as_ref())
                .await;
            Ok(Value::String(hex::encode(all)))
        }
        Query::StderrBytes { container } => {
            let st = solver.container(&container, api).await?;
            let out = st.last_exec("stderr_bytes")?;
            let all = solver
                .whole_output(&out.stderr, out.stderr_file.as_ref())
                .await;
            Ok(Value::String(hex::encode(all)))
        }
        Query::ExitCode { container } => {
            let st = solver.container(&container, api).await?;
            Ok(json!(st.last_exec("exit_code")?.exit_code))
        }
        Query::Sync { container } => {
            solver.container(&container, api).await?;
            Ok(Value::Null)
        }
        Query::Terminal { container, command } => {
            let st = solver.container(&container, api).await?;
            Ok(json!(solver.terminal(&st, command, api).await?))
        }
        Query::Publish {
            container,
            address,
            format,
        } => {
            let st = solver.container(&container, api).await?;
            Ok(Value::String(
                solver
                    .publish(&st, &address, image_format(&format), api)
                    .await?,
            ))
        }
        Query::Export {
            container,
            path,
            name,
            format,
        } => {
            let st = solver.container(&container, api).await?;
            solver
                .export(
                    &st,
                    std::path::Path::new(&path),
                    name.as_deref(),
                    image_format(&format),
                )
                .await?;
            Ok(Value::String(path))
        }
        Query::Entries { directory, path } => {
            let d = solver.directory(&directory, api).await?;
            let at = join_path(&d.path, path.as_deref().unwrap_or("."));
            names(solver.read(&d.tree, &at, ReadOp::Entries).await?)
        }
        Query::Glob { directory, pattern } => {
            let d = solver.directory(&directory, api).await?;
            names(solver.read(&d.tree, &d.path, ReadOp::Glob(pattern)).await?)
        }
        Query::DirDigest { directory } => {
            let d = solver.directory(&directory, api).await?;
            digest(solver.read(&d.tree, &d.path, ReadOp::Digest).await?)
        }
        Query::DirExport { directory, path } => {
            let d = solver.directory(&directory, api).await?;
            solver
                .read(&d.tree, &d.path, ReadOp::Export(PathBuf::from(&path)))
                .await?;
            Ok(Value::String(path))
        }
        Query::DirSync { directory } => {
            solver.directory(&directory, api).await?;
            Ok(Value::Null)
        }
        Query::Contents { file } => {
            let f = solver.file(&file, api).await?;
            match solver.read(&f.tree, &f.path, ReadOp::Contents).await? {
                ReadAnswer::Bytes(b) => Ok(Value::String(String::from_utf8_lossy(&b).into_owned())),
                other => Err(unexpected(other)),
            }
        }
        Query::Size { file } => {
            let f = solver.file(&file, api).await?;
            match solver.read(&f.tree, &f.path, ReadOp::Size).await? {
                ReadAnswer::Size(n) => Ok(json!(n)),
                other => Err(unexpected(other)),
            }
        }
        Query::Name { file } => Ok(Value::String(solver.file(&file, api).await?.name())),
        Query::FileDigest { file } => {
            let f = solver.file(&file, api).await?;
            digest(solver.read(&f.tree, &f.path, ReadOp::Digest).await?)
        }
        Query::FileExport { file, path } => {
            let f = solver.file(&file, api).await?;
            solver
                .read(&f.tree, &f.path, ReadOp::Export(PathBuf::from(&path)))
                .await?;
            Ok(Value::String(path))
        }
        Query::FileSync { file } => {
            let f = solver.file(&file, api).await?;
            // A file is there when it can be measured.
            solver.read(&f.tree, &f.path, ReadOp::Size).await?;
            Ok(Value::Null)
        }
        // Planning only: nothing starts for these two.
        Query::ServiceHostname { service } => Ok(Value::String(
            solver.service(&service, api).await?.hostname.clone(),
        )),
        Query::ServiceEndpoint {
            service,
            port,
            scheme,
        } => {
            let plan = solver.service(&service, api).await?;
            Ok(Value::String(endpoint(&plan, port, scheme.as_deref())?))
        }
        Query::ServiceStart { service } => {
            solver.service_start(&service, api).await?;
            Ok(Value::Null)
        }
        Query::ServiceStop { service } => {
            solver.service_stop(&service, api).await?;
            Ok(Value::Null)
        }
        Query::ServiceUp { service, ports } => {
            solver.service_up(&service, &ports, api).await?;
            Ok(Value::Null)
        }
    }
}

/// What is checked of a query's values before any of them is built, in
/// one walk over them: every secret they use is read, so that a missing
/// `env:` variable or `file:` is reported at once rather than after the
/// steps before its first use; and under `--locked`, every image tag they
/// start from must be pinned in rbuild.lock.
fn check_first<M: Worker>(solver: &Solver<M>, query: &Query, api: Api) -> Result<(), SolveError> {
    fn walk<M: Worker>(
        v: &Value,
        solver: &Solver<M>,
        api: Api,
        lock: Option<&crate::lock::ImageLock>,
    ) -> Result<(), SolveError> {
        match v {
            Value::Object(map) => {
                if let Some(lock) = lock
                    && map.get("op").and_then(Value::as_str) == Some("from")
                    && let Some(address) = map.get("address").and_then(Value::as_str)
                    && let Ok(image) = rbuild_snapshotter::ImageRef::parse(address)
                {
                    lock.pinned(&image).map_err(SolveError::Invalid)?;
                }
                for (k, v) in map {
                    if k == "secret"
                        && let Ok(def) =
                            serde_json::from_value::<crate::graph::SecretDef>(v.clone())
                    {
                        solver.check_secret(&def, api)?;
                    } else {
                        walk(v, solver, api, lock)?;
                    }
                }
                Ok(())
            }
            Value::Array(items) => items.iter().try_for_each(|v| walk(v, solver, api, lock)),
            _ => Ok(()),
        }
    }
    let Ok(v) = serde_json::to_value(query) else {
        return Ok(());
    };
    walk(&v, solver, api, solver.image_lock().map(|l| l.as_ref()))
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

    fn request(protocol: Option<u32>, token: &str) -> Vec<u8> {
        let mut r = json!({
            "token": token,
            "sdk": "9.9.9",
            "query": {"kind": "container.stdout", "container": {"ops": []}},
        });
        if let Some(p) = protocol {
            r["protocol"] = json!(p);
        }
        serde_json::to_vec(&r).unwrap()
    }

    #[test]
    fn a_request_names_its_protocol_or_speaks_the_first() {
        assert!(read_request(&request(Some(wire::PROTOCOL), "t"), "t").is_ok());
        // Protocol 1 SDKs (before services) are still read.
        assert!(read_request(&request(Some(1), "t"), "t").is_ok());
        // SDKs before versioning sent no version: they spoke protocol 1.
        assert!(read_request(&request(None, "t"), "t").is_ok());
        let e = read_request(&request(None, "t"), "other").unwrap_err();
        assert!(e.contains("session token rejected"), "{e}");
    }

    #[test]
    fn another_protocol_is_refused_naming_both_versions_and_what_to_upgrade() {
        let newer = wire::PROTOCOL + 1;
        let e = read_request(&request(Some(newer), "t"), "t").unwrap_err();
        assert_eq!(
            e,
            format!(
                "this pipeline's rbuild-sdk 9.9.9 speaks protocol {newer}; this rbuild ({}) \
                 accepts protocols {}..={}: upgrade rbuild, or pin the pipeline's rbuild-sdk to {} \
                 (the SDK this rbuild embeds; a registry dependency gets it without a pin)",
                env!("CARGO_PKG_VERSION"),
                wire::OLDEST_PROTOCOL,
                wire::PROTOCOL,
                wire::SDK_VERSION,
            )
        );
        let e = check_protocol(0, "").unwrap_err();
        assert!(
            e.starts_with("this pipeline's rbuild-sdk speaks protocol 0; this rbuild ("),
            "{e}"
        );
        assert!(
            e.contains(&format!(
                ": upgrade the pipeline's rbuild-sdk to {}",
                wire::SDK_VERSION
            )),
            "{e}"
        );
        assert!(e.ends_with("or use an older rbuild"), "{e}");
    }

    #[test]
    fn a_request_of_an_unknown_kind_is_malformed() {
        let r = br#"{"protocol": 1, "token": "t", "query": {"kind": "container.teleport"}}"#;
        let e = read_request(r, "t").unwrap_err();
        assert!(
            e.starts_with("malformed request from the pipeline SDK: "),
            "{e}"
        );
    }
}

#[cfg(test)]
mod conformance;
