//! The connection to the engine: one request and one answer per query,
//! each over a fresh connection to the session socket, so that concurrent
//! queries from `tokio::join!` need no multiplexing.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_core::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::error::{Error, Result};
use crate::wire::{self, Query, Request, Response};

pub(crate) struct Session {
    transport: Transport,
    token: String,
}

enum Transport {
    Socket(PathBuf),
    /// Requests are kept instead of sent (see [`crate::recording_client`]).
    Recording(Recorded),
}

/// The request lines a recording client would have sent, in order.
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct Recorded(Arc<Mutex<Vec<Vec<u8>>>>);

impl Recorded {
    /// Takes the lines recorded so far (each without its newline).
    pub fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.0.lock().expect("recording lock"))
    }
}

/// The answer a recording client gets to every query.
pub(crate) const RECORDED: &str = "recorded, not sent: this client has no engine";

impl Session {
    pub(crate) fn connect(socket: PathBuf, token: String) -> Session {
        Session {
            transport: Transport::Socket(socket),
            token,
        }
    }

    pub(crate) fn recording(token: String) -> (Session, Recorded) {
        let recorded = Recorded::default();
        let session = Session {
            transport: Transport::Recording(recorded.clone()),
            token,
        };
        (session, recorded)
    }

    /// Whether the socket is there to be reached (a recording is always).
    pub(crate) fn check(&self) -> Result<()> {
        match &self.transport {
            Transport::Socket(socket) if !socket.exists() => {
                Err(self.unreachable(std::io::ErrorKind::NotFound.into()))
            }
            _ => Ok(()),
        }
    }

    fn unreachable(&self, e: std::io::Error) -> Error {
        let at = match &self.transport {
            Transport::Socket(socket) => socket.display().to_string(),
            Transport::Recording(_) => "(a recording)".into(),
        };
        Error::new(format!("cannot reach the rbuild session at {at}: {e}"))
    }

    /// The request line for `query`, as it goes on the wire (no newline).
    fn request_line(&self, query: Query) -> Vec<u8> {
        let request = Request {
            protocol: wire::PROTOCOL,
            token: self.token.clone(),
            sdk: wire::SDK_VERSION.into(),
            query,
        };
        serde_json::to_vec(&request).expect("a request encodes as JSON")
    }

    /// Asks the engine, and reads its answer as a `T`.
    pub(crate) async fn query<T: DeserializeOwned>(&self, query: Query) -> Result<T> {
        let kind = query.kind();
        let mut request = self.request_line(query);
        let socket = match &self.transport {
            Transport::Socket(socket) => socket,
            Transport::Recording(recorded) => {
                recorded.0.lock().expect("recording lock").push(request);
                return Err(Error::new(RECORDED));
            }
        };
        request.push(b'\n');
        let mut conn = UnixStream::connect(socket)
            .await
            .map_err(|e| self.unreachable(e))?;
        conn.write_all(&request)
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut line = Vec::new();
        BufReader::new(conn)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| self.unreachable(e))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::new(
                "the rbuild engine closed the session without an answer (was it interrupted?)",
            ));
        }
        match Response::from_json(&line) {
            Ok(Response::Ok(answer)) => T::deserialize(&answer).map_err(|e| {
                Error::new(format!(
                    "unexpected engine answer to {kind}: {e} (in {answer})"
                ))
            }),
            Ok(Response::Error(e)) => Err(Error::new(e.message)),
            Err(e) => Err(Error::new(format!(
                "unreadable engine answer to {kind}: {e}"
            ))),
        }
    }
}

/// Asks the engine; the future owns what it needs, so it can be awaited
/// inside `tokio::join!` on temporaries.
pub(crate) fn ask<T: DeserializeOwned + Send + 'static>(
    session: &Arc<Session>,
    query: Query,
) -> impl Future<Output = Result<T>> + Send + 'static {
    let session = session.clone();
    async move { session.query(query).await }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;
    use serde_json::{json, Value};
    use tokio::net::UnixListener;

    /// A client whose engine answers one request with `answer`, and the
    /// request line that engine read.
    async fn ask_stdout(name: &str, answer: &'static str) -> (Result<String>, Value) {
        let socket = std::env::temp_dir().join(format!(
            "rbuild-sdk-test-{}-{name}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let engine = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            let (read, mut write) = conn.into_split();
            let mut line = Vec::new();
            BufReader::new(read)
                .read_until(b'\n', &mut line)
                .await
                .unwrap();
            write.write_all(answer.as_bytes()).await.unwrap();
            line
        });
        let client = Client {
            session: Arc::new(Session::connect(socket.clone(), "tok".into())),
        };
        let got = client.container().from("busybox").stdout().await;
        let line = engine.await.unwrap();
        let _ = std::fs::remove_file(&socket);
        (got, serde_json::from_slice(&line).unwrap())
    }

    #[tokio::test]
    async fn a_request_carries_token_versions_and_query() {
        let (got, sent) = ask_stdout("request", "{\"ok\": \"hi\\n\"}\n").await;
        assert_eq!(got.unwrap(), "hi\n");
        assert_eq!(sent["protocol"], json!(wire::PROTOCOL));
        assert_eq!(sent["token"], json!("tok"));
        assert_eq!(sent["sdk"], json!(env!("CARGO_PKG_VERSION")));
        assert_eq!(sent["query"]["kind"], json!("container.stdout"));
        assert_eq!(
            sent["query"]["container"]["ops"],
            json!([{"op": "from", "address": "busybox"}])
        );
    }

    #[tokio::test]
    async fn engine_errors_and_bad_answers_become_errors() {
        let (got, _) = ask_stdout("error", "{\"error\": {\"message\": \"boom\"}}\n").await;
        assert_eq!(got.unwrap_err().message(), "boom");
        let (got, _) = ask_stdout("number", "{\"ok\": 3}\n").await;
        let e = got.unwrap_err();
        assert!(
            e.message()
                .starts_with("unexpected engine answer to container.stdout: "),
            "{e}"
        );
        let (got, _) = ask_stdout("closed", "").await;
        assert!(got
            .unwrap_err()
            .message()
            .contains("closed the session without an answer"),);
    }

    #[tokio::test]
    async fn a_recording_client_keeps_what_it_would_send() {
        let (client, recorded) = crate::recording_client("t");
        let e = client.directory().entries().await.unwrap_err();
        assert_eq!(e.message(), RECORDED);
        let lines = recorded.take();
        assert_eq!(lines.len(), 1);
        let sent: Value = serde_json::from_slice(&lines[0]).unwrap();
        assert_eq!(
            sent["query"],
            json!({"kind": "directory.entries", "path": null,
                   "directory": {"source": {"source": "empty"}, "ops": []}})
        );
    }
}
