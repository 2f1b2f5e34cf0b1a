//! kv-server: a key-value store over HTTP/1.1, its storage chosen by
//! configuration — the service examples/services builds once and tests
//! against three backends.
//!
//! ```text
//! PUT /kv/KEY   body = value   204
//! GET /kv/KEY                  200 value, 404 if unset
//! GET /healthz                 200 "ok STORE" once the store answers
//! ```
//!
//! Configuration (environment):
//! - `STORE`: `sqlite` (default), `postgres` or `redis`
//! - `DATABASE_URL`: a file path for sqlite (default `/tmp/kv.sqlite3`),
//!   `postgres://USER:PASSWORD@HOST:PORT/DB`, `redis://HOST:PORT/`
//! - `LISTEN`: the address to serve on (default `0.0.0.0:8080`)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys: what fits a URL path segment without escaping.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 200
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Values are at most this long (the body of one PUT).
const MAX_VALUE: usize = 1 << 20;

trait Store: Send {
    fn get(&mut self, key: &str) -> Result<Option<String>, String>;
    fn put(&mut self, key: &str, value: &str) -> Result<(), String>;
    /// A round trip to the backend.
    fn ping(&mut self) -> Result<(), String>;
}

struct Sqlite(rusqlite::Connection);

impl Store for Sqlite {
    fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        use rusqlite::OptionalExtension;
        self.0
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(|e| e.to_string())
    }
    fn put(&mut self, key: &str, value: &str) -> Result<(), String> {
        self.0
            .execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }
    fn ping(&mut self) -> Result<(), String> {
        self.0
            .query_row("SELECT 1", [], |_| Ok(()))
            .map_err(|e| e.to_string())
    }
}

struct Postgres(postgres::Client);

impl Store for Postgres {
    fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        self.0
            .query_opt("SELECT value FROM kv WHERE key = $1", &[&key])
            .map(|row| row.map(|r| r.get(0)))
            .map_err(|e| e.to_string())
    }
    fn put(&mut self, key: &str, value: &str) -> Result<(), String> {
        self.0
            .execute(
                "INSERT INTO kv (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }
    fn ping(&mut self) -> Result<(), String> {
        self.0
            .simple_query("SELECT 1")
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

struct Redis(redis::Connection);

impl Store for Redis {
    fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        redis::cmd("GET")
            .arg(format!("kv:{key}"))
            .query(&mut self.0)
            .map_err(|e| e.to_string())
    }
    fn put(&mut self, key: &str, value: &str) -> Result<(), String> {
        redis::cmd("SET")
            .arg(format!("kv:{key}"))
            .arg(value)
            .query(&mut self.0)
            .map_err(|e| e.to_string())
    }
    fn ping(&mut self) -> Result<(), String> {
        redis::cmd("PING")
            .query::<String>(&mut self.0)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Connects to the configured store, retrying for a while: a database
/// started next to the server may still be coming up.
fn open_store(kind: &str, url: Option<String>) -> Result<Box<dyn Store>, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match try_open(kind, url.clone()) {
            Ok(store) => return Ok(store),
            Err(Fatal(e)) => return Err(e),
            Err(Retry(e)) if Instant::now() >= deadline => {
                return Err(format!("{e} (gave up after 30 s)"))
            }
            Err(Retry(e)) => {
                eprintln!("kv-server: {e}; retrying");
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

enum OpenError {
    Fatal(String),
    Retry(String),
}
use OpenError::{Fatal, Retry};

fn try_open(kind: &str, url: Option<String>) -> Result<Box<dyn Store>, OpenError> {
    let need_url = |example: &str| {
        url.clone().ok_or_else(|| {
            Fatal(format!(
                "STORE={kind} needs DATABASE_URL (for example {example})"
            ))
        })
    };
    match kind {
        "sqlite" => {
            let path = url.clone().unwrap_or_else(|| "/tmp/kv.sqlite3".to_string());
            let conn = rusqlite::Connection::open(&path)
                .map_err(|e| Fatal(format!("cannot open SQLite database {path}: {e}")))?;
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            )
            .map_err(|e| Fatal(format!("cannot create table kv in {path}: {e}")))?;
            Ok(Box::new(Sqlite(conn)))
        }
        "postgres" => {
            let url = need_url("postgres://kv:PASSWORD@db:5432/kv")?;
            let mut client = postgres::Client::connect(&url, postgres::NoTls).map_err(|e| {
                Retry(format!(
                    "cannot connect to postgres at {}: {e}",
                    redact(&url)
                ))
            })?;
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                )
                .map_err(|e| Fatal(format!("cannot create table kv: {e}")))?;
            Ok(Box::new(Postgres(client)))
        }
        "redis" => {
            let url = need_url("redis://db:6379/")?;
            let client = redis::Client::open(url.as_str())
                .map_err(|e| Fatal(format!("DATABASE_URL {}: {e}", redact(&url))))?;
            let conn = client
                .get_connection()
                .map_err(|e| Retry(format!("cannot connect to redis at {}: {e}", redact(&url))))?;
            Ok(Box::new(Redis(conn)))
        }
        other => Err(Fatal(format!(
            "STORE={other:?}: expected sqlite, postgres or redis"
        ))),
    }
}

/// A URL for messages: the password replaced.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

fn read_request(stream: &TcpStream) -> Result<Request, (u16, String)> {
    let bad = |m: &str| (400, format!("{m}\n"));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| bad(&e.to_string()))?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err(bad("malformed request line"));
    };
    let (method, path) = (method.to_string(), path.to_string());
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader
            .read_line(&mut header)
            .map_err(|e| bad(&e.to_string()))?
            == 0
        {
            return Err(bad("connection closed in the headers"));
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| bad("bad Content-Length"))?;
            }
        }
    }
    if length > MAX_VALUE {
        return Err((413, format!("values are at most {MAX_VALUE} bytes\n")));
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| bad(&e.to_string()))?;
    Ok(Request { method, path, body })
}

fn respond(mut stream: &TcpStream, status: u16, body: &str) {
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        _ => "Internal Server Error",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn handle(stream: TcpStream, store: &Mutex<Box<dyn Store>>, kind: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let req = match read_request(&stream) {
        Ok(req) => req,
        Err((status, body)) => return respond(&stream, status, &body),
    };
    let mut store = store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (status, body) = match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/healthz") => match store.ping() {
            Ok(()) => (200, format!("ok {kind}\n")),
            Err(e) => (500, format!("{kind} does not answer: {e}\n")),
        },
        (method, path) if path.starts_with("/kv/") => {
            let key = &path[4..];
            if !valid_key(key) {
                (
                    400,
                    "keys are 1-200 characters of A-Z a-z 0-9 - _ .\n".to_string(),
                )
            } else if method == "GET" {
                match store.get(key) {
                    Ok(Some(value)) => (200, value),
                    Ok(None) => (404, format!("no key {key}\n")),
                    Err(e) => (500, format!("{kind}: {e}\n")),
                }
            } else if method == "PUT" {
                match String::from_utf8(req.body) {
                    Err(_) => (400, "values must be UTF-8\n".to_string()),
                    Ok(value) => match store.put(key, &value) {
                        Ok(()) => (204, String::new()),
                        Err(e) => (500, format!("{kind}: {e}\n")),
                    },
                }
            } else {
                (405, "GET or PUT\n".to_string())
            }
        }
        _ => (404, "GET /healthz, GET /kv/KEY, PUT /kv/KEY\n".to_string()),
    };
    drop(store);
    respond(&stream, status, &body);
}

fn main() {
    let kind = std::env::var("STORE").unwrap_or_else(|_| "sqlite".to_string());
    let url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "0.0.0.0:8080".to_string());
    let store = match open_store(&kind, url) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("kv-server: {e}");
            std::process::exit(1);
        }
    };
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kv-server: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("kv-server: listening on {listen} (store: {kind})");
    let store = Arc::new(Mutex::new(store));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let store = Arc::clone(&store);
        let kind = kind.clone();
        std::thread::spawn(move || handle(stream, &store, &kind));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgres://kv:s3cret@db:5432/kv"),
            "postgres://kv:***@db:5432/kv"
        );
        assert_eq!(redact("redis://db:6379/"), "redis://db:6379/");
    }

    #[test]
    fn keys_fit_a_path_segment() {
        assert!(valid_key("user-1.name_2"));
        assert!(!valid_key(""));
        assert!(!valid_key("a/b"));
        assert!(!valid_key("a%20b"));
    }
}
