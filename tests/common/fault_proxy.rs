//! A fault-injecting HTTP proxy in front of the real test registry: the
//! registry fixture of the fault suite (issue 11). Listens on 127.0.0.1:0,
//! forwards every request to the registry at `127.0.0.1:5000` and, for the
//! requests a test's [`Rule`]s pick, answers with an error, resets or cuts
//! the connection mid-body, declares a short body, corrupts the bytes, or
//! never answers.
//!
//! rbuild speaks plain HTTP to it because it is on loopback
//! (`reference::is_loopback_host`), so `127.0.0.1:PORT/busybox:latest` pulls
//! busybox through it. One request per connection (`Connection: close` both
//! ways), which keeps the proxy simple and makes every retry a new request
//! the counters see.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Which requests a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    Any,
    /// GET or HEAD of `/v2/NAME/manifests/REF`.
    Manifest,
    /// GET of `/v2/NAME/blobs/DIGEST` (downloads only).
    BlobGet,
    /// POST, PATCH or PUT of `/v2/NAME/blobs/uploads/...` (pushes).
    Upload,
}

/// What the proxy does to a request a rule picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers with this status and a short body, without asking the registry.
    Status(u16),
    /// 401 without a `WWW-Authenticate` challenge.
    UnauthorizedNoChallenge,
    /// Forwards, sends the headers and half the body, then resets the connection.
    ResetMidBody,
    /// Forwards, sends the real `Content-Length` but half the body, then closes cleanly.
    TruncatedBody,
    /// Forwards, declares and sends only half the body (a complete, short answer).
    ShortContentLength,
    /// Forwards with the body's bytes changed (a corrupted blob).
    WrongBytes,
    /// Reads the request and never answers (the connection stays open).
    Stall,
}

/// Applies `fault` to requests that match, from the `skip`+1-th matching
/// one on, `times` times (None: for ever).
#[derive(Clone, Debug)]
pub struct Rule {
    pub matches: Match,
    pub fault: Fault,
    pub skip: usize,
    pub times: Option<usize>,
}

impl Rule {
    /// `fault` on every matching request.
    pub fn always(matches: Match, fault: Fault) -> Rule {
        Rule {
            matches,
            fault,
            skip: 0,
            times: None,
        }
    }

    /// `fault` on the first `times` matching requests.
    pub fn first(times: usize, matches: Match, fault: Fault) -> Rule {
        Rule {
            matches,
            fault,
            skip: 0,
            times: Some(times),
        }
    }

    /// `fault` on the `n`-th matching request only (1-based).
    pub fn nth(n: usize, matches: Match, fault: Fault) -> Rule {
        Rule {
            matches,
            fault,
            skip: n - 1,
            times: Some(1),
        }
    }
}

#[derive(Default)]
struct State {
    rules: Mutex<Vec<(Rule, usize)>>,
    requests: Mutex<Vec<(String, String, Match)>>,
    faults: AtomicUsize,
    open_stalls: AtomicUsize,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

pub const UPSTREAM: &str = "127.0.0.1:5000";

impl FaultProxy {
    pub fn start(rules: Vec<Rule>) -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let state = Arc::new(State {
            rules: Mutex::new(rules.into_iter().map(|r| (r, 0)).collect()),
            ..State::default()
        });
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the fault proxy");
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        runtime.spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, addr, st).await;
                });
            }
        });
        FaultProxy {
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    /// `127.0.0.1:PORT`, the registry host to name in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `REGISTRY/REPOSITORY:TAG` through this proxy.
    pub fn image(&self, repository_and_tag: &str) -> String {
        format!("{}/{repository_and_tag}", self.host())
    }

    /// Replaces the rules (the counters go on).
    pub fn set_rules(&self, rules: Vec<Rule>) {
        *self.state.rules.lock().unwrap() = rules.into_iter().map(|r| (r, 0)).collect();
    }

    /// Requests seen that match `m` (all of them for [`Match::Any`]).
    pub fn requests(&self, m: Match) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, kind)| m == Match::Any || *kind == m)
            .count()
    }

    /// "METHOD PATH" of every request so far, for failure messages.
    pub fn log(&self) -> Vec<String> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(method, path, _)| format!("{method} {path}"))
            .collect()
    }

    /// How many faults were injected.
    pub fn faults(&self) -> usize {
        self.state.faults.load(Ordering::SeqCst)
    }

    /// Connections being held open by [`Fault::Stall`] right now.
    pub fn stalled(&self) -> usize {
        self.state.open_stalls.load(Ordering::SeqCst)
    }

    /// Polls until `cond` holds; panics after `limit` (a hang detector, not a timing).
    pub fn wait_for(&self, what: &str, limit: Duration, cond: impl Fn(&FaultProxy) -> bool) {
        let deadline = std::time::Instant::now() + limit;
        while !cond(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "waited {limit:?} for {what}; requests: {:?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn kind_of(method: &str, path: &str) -> Match {
    let path = path.split('?').next().unwrap_or(path);
    if path.contains("/blobs/uploads/") || path.ends_with("/blobs/uploads") {
        Match::Upload
    } else if path.contains("/manifests/") {
        Match::Manifest
    } else if path.contains("/blobs/") && method == "GET" {
        Match::BlobGet
    } else {
        Match::Any
    }
}

/// The fault for this request, if a rule picks it.
fn pick(state: &State, kind: Match) -> Option<Fault> {
    let mut rules = state.rules.lock().unwrap();
    for (rule, seen) in rules.iter_mut() {
        if rule.matches != Match::Any && rule.matches != kind {
            continue;
        }
        *seen += 1;
        let n = *seen - 1;
        if n >= rule.skip && rule.times.is_none_or(|t| n < rule.skip + t) {
            return Some(rule.fault);
        }
    }
    None
}

struct Message {
    head: String,
    body: Vec<u8>,
}

/// Reads an HTTP/1.1 message head and, if `body` says so, its body
/// (Content-Length or chunked); `to_eof` reads the body to the end of the stream.
async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    to_eof: bool,
) -> std::io::Result<Option<Message>> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 16384];
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf.split_off(head_end);
    buf.clear();
    if to_eof {
        r.read_to_end(&mut rest).await?;
    }
    let chunked = header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let body = if chunked {
        if !to_eof {
            while find(&rest, b"0\r\n\r\n").is_none() {
                let mut chunk = [0u8; 16384];
                let n = r.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                rest.extend_from_slice(&chunk[..n]);
            }
        }
        dechunk(&rest)
    } else if let Some(len) = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok())
    {
        if !to_eof {
            while rest.len() < len {
                let mut chunk = vec![0u8; (len - rest.len()).min(1 << 20)];
                let n = r.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                rest.extend_from_slice(&chunk[..n]);
            }
        }
        rest.truncate(len);
        rest
    } else {
        rest
    };
    Ok(Some(Message { head, body }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = find(data, b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// The head's lines without the hop-by-hop and length headers this proxy sets itself.
fn kept_headers(head: &str) -> impl Iterator<Item = &str> {
    head.lines().skip(1).filter(|l| {
        let name = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        !l.trim().is_empty()
            && !matches!(
                name.as_str(),
                "connection" | "keep-alive" | "transfer-encoding" | "content-length"
            )
    })
}

async fn serve(mut conn: TcpStream, me: SocketAddr, state: Arc<State>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let Some(request) = read_message(&mut conn, &mut buf, false).await? else {
        return Ok(());
    };
    let request_line = request.head.lines().next().unwrap_or("").to_string();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let kind = kind_of(&method, &path);
    state
        .requests
        .lock()
        .unwrap()
        .push((method.clone(), path.clone(), kind));
    let fault = pick(&state, kind);
    if fault.is_some() {
        state.faults.fetch_add(1, Ordering::SeqCst);
    }
    match fault {
        Some(Fault::Stall) => {
            state.open_stalls.fetch_add(1, Ordering::SeqCst);
            // Hold the connection until the client goes away.
            let mut sink = [0u8; 1024];
            while conn.read(&mut sink).await.is_ok_and(|n| n > 0) {}
            state.open_stalls.fetch_sub(1, Ordering::SeqCst);
            return Ok(());
        }
        Some(Fault::Status(code)) => {
            let body = format!("injected {code}\n");
            let answer = format!(
                "HTTP/1.1 {code} Injected\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(answer.as_bytes()).await?;
            return conn.shutdown().await;
        }
        Some(Fault::UnauthorizedNoChallenge) => {
            let body =
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
            let answer = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(answer.as_bytes()).await?;
            return conn.shutdown().await;
        }
        _ => {}
    }

    // Forward.
    let mut up = TcpStream::connect(UPSTREAM).await?;
    let mut out = format!("{request_line}\r\n");
    for h in kept_headers(&request.head) {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        request.body.len()
    ));
    if method == "GET" || method == "HEAD" {
        // No body on these; a content-length: 0 is still fine for the registry.
    }
    up.write_all(out.as_bytes()).await?;
    up.write_all(&request.body).await?;
    let mut ubuf = Vec::new();
    let Some(answer) = read_message(&mut up, &mut ubuf, true).await? else {
        return Ok(());
    };
    let status_line = answer
        .head
        .lines()
        .next()
        .unwrap_or("HTTP/1.1 502 Bad Gateway");
    let mut body = if method == "HEAD" {
        Vec::new()
    } else {
        answer.body
    };
    let declared = header(&answer.head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|_| method == "HEAD")
        .unwrap_or(body.len());
    let mut head = format!("{status_line}\r\n");
    for h in kept_headers(&answer.head) {
        // Upload locations point at the registry; clients must come back here.
        let h = h.replace(UPSTREAM, &me.to_string());
        head.push_str(&h);
        head.push_str("\r\n");
    }
    let half = body.len() / 2;
    match fault {
        Some(Fault::ShortContentLength) => {
            body.truncate(half);
            head.push_str(&format!(
                "content-length: {half}\r\nconnection: close\r\n\r\n"
            ));
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(&body).await?;
            conn.shutdown().await
        }
        Some(Fault::TruncatedBody) => {
            head.push_str(&format!(
                "content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            ));
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(&body[..half]).await?;
            conn.shutdown().await
        }
        Some(Fault::ResetMidBody) => {
            head.push_str(&format!(
                "content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            ));
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(&body[..half]).await?;
            conn.flush().await?;
            // Give the client the first half before the reset discards what is unread.
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn.set_zero_linger()?;
            drop(conn);
            Ok(())
        }
        other => {
            if other == Some(Fault::WrongBytes) {
                let third = body.len() / 3;
                for b in body.iter_mut().skip(third).take(64) {
                    *b = !*b;
                }
            }
            head.push_str(&format!(
                "content-length: {declared}\r\nconnection: close\r\n\r\n"
            ));
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(&body).await?;
            conn.shutdown().await
        }
    }
}
