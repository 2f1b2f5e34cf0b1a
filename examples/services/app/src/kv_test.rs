//! kv-test: the integration tests of kv-server, run against a live server.
//!
//! `BASE_URL=http://app:8080 [EXPECT_STORE=postgres] kv-test`
//!
//! Prints one line per check; exits 1 if any failed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};

/// One named check of the server: Err says what went wrong.
type Check<'a> = Box<dyn Fn() -> Result<(), String> + 'a>;

struct Response {
    status: u16,
    body: String,
}

/// One HTTP/1.1 request on its own connection (the server closes it).
fn request(addr: &str, method: &str, path: &str, body: &str) -> Result<Response, String> {
    let mut stream =
        TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("{method} {path}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let raw =
        String::from_utf8(raw).map_err(|_| format!("{method} {path}: answer is not UTF-8"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{method} {path}: no header end in {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path}: bad status line in {head:?}"))?;
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

fn expect(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    status: u16,
    want: Option<&str>,
) -> Result<(), String> {
    let r = request(addr, method, path, body)?;
    if r.status != status {
        return Err(format!(
            "{method} {path}: HTTP {}, expected {status} ({:?})",
            r.status, r.body
        ));
    }
    match want {
        Some(want) if r.body != want => Err(format!(
            "{method} {path}: body {:?}, expected {want:?}",
            r.body
        )),
        _ => Ok(()),
    }
}

fn main() {
    let base = std::env::var("BASE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".to_string());
    let Some(addr) = base
        .strip_prefix("http://")
        .map(|a| a.trim_end_matches('/').to_string())
    else {
        eprintln!("kv-test: BASE_URL={base:?}: expected http://HOST:PORT");
        std::process::exit(2);
    };
    let expect_store = std::env::var("EXPECT_STORE").ok();
    let unique = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let a = addr.as_str();

    let checks: Vec<(&str, Check)> = vec![
        (
            "healthz answers with the configured store",
            Box::new(|| {
                // Readiness is the service manager's job; a short wait keeps
                // the tests usable against a server started by hand.
                let deadline = Instant::now() + Duration::from_secs(10);
                let r = loop {
                    match request(a, "GET", "/healthz", "") {
                        Ok(r) => break r,
                        Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(100))
                        }
                        Err(e) => return Err(e),
                    }
                };
                let want = match &expect_store {
                    Some(store) => format!("ok {store}\n"),
                    None => r.body.clone(),
                };
                if r.status == 200 && r.body == want && r.body.starts_with("ok ") {
                    Ok(())
                } else {
                    Err(format!(
                        "HTTP {} {:?}, expected 200 {want:?}",
                        r.status, r.body
                    ))
                }
            }),
        ),
        (
            "an unset key is 404",
            Box::new(|| expect(a, "GET", &format!("/kv/missing-{unique}"), "", 404, None)),
        ),
        (
            "a value put is read back",
            Box::new(|| {
                expect(a, "PUT", "/kv/greeting", "hello", 204, Some(""))?;
                expect(a, "GET", "/kv/greeting", "", 200, Some("hello"))
            }),
        ),
        (
            "a second put replaces the value",
            Box::new(|| {
                expect(a, "PUT", "/kv/counter", "1", 204, None)?;
                expect(a, "PUT", "/kv/counter", "2", 204, None)?;
                expect(a, "GET", "/kv/counter", "", 200, Some("2"))
            }),
        ),
        (
            "values keep spaces, newlines and non-ASCII text",
            Box::new(|| {
                let value = "zwei Wörter\nund eine Zeile — ✓";
                expect(a, "PUT", "/kv/text", value, 204, None)?;
                expect(a, "GET", "/kv/text", "", 200, Some(value))
            }),
        ),
        (
            "an empty value is a value",
            Box::new(|| {
                expect(a, "PUT", "/kv/empty", "", 204, None)?;
                expect(a, "GET", "/kv/empty", "", 200, Some(""))
            }),
        ),
        (
            "a bad key is 400",
            Box::new(|| expect(a, "PUT", "/kv/a%20b", "x", 400, None)),
        ),
        (
            "an unknown method is 405",
            Box::new(|| expect(a, "DELETE", "/kv/greeting", "", 405, None)),
        ),
        (
            "concurrent clients each read their own writes",
            Box::new(|| {
                let threads: Vec<_> = (0..8)
                    .map(|t| {
                        let addr = a.to_string();
                        std::thread::spawn(move || -> Result<(), String> {
                            for i in 0..10 {
                                let (key, value) = (format!("/kv/t{t}-{i}"), format!("v{t}.{i}"));
                                expect(&addr, "PUT", &key, &value, 204, None)?;
                                expect(&addr, "GET", &key, "", 200, Some(&value))?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                threads.into_iter().try_for_each(|t| {
                    t.join()
                        .map_err(|_| "a client thread panicked".to_string())?
                })
            }),
        ),
    ];

    let mut failed = 0;
    for (name, check) in &checks {
        match check() {
            Ok(()) => println!("ok   {name}"),
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }
    println!(
        "{} passed, {failed} failed against {base}{}",
        checks.len() - failed,
        expect_store
            .as_ref()
            .map(|s| format!(" (store: {s})"))
            .unwrap_or_default()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
