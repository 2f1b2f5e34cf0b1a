//! Service containers (issue 12) against real containerd, runc and CNI:
//! bindings by alias, two services on one port, transitive bindings,
//! readiness by port, log line and healthcheck, services that crash or
//! never get ready, shared and private instances, no service on a fully
//! cached run, `host().service`, `call … up`, and cleanup after Ctrl-C and
//! kill -9. Lifetimes are asserted from progress events (`--progress json`).

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Outcome, TestEnv};
use serde_json::Value;

fn pipeline() -> PathBuf {
    common::repo_root().join("fixtures/pipelines/services.rs")
}

/// `rbuild --progress json run services.rs -- ARGS`
fn run(env: &TestEnv, args: &[&str]) -> (Outcome, Vec<Value>) {
    common::run_json(env, &pipeline(), args)
}

fn count(events: &[Value], kind: &str) -> usize {
    common::count_events(events, kind)
}

/// Held for writing by the test that kills an rbuild with -9, from the
/// kill until its next run has swept what the killed one left, and for
/// reading by every other look at leftovers: the tests of this file run at
/// once, and a killed run's namespace is that test's leftover to sweep,
/// not theirs.
static KILLING: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// [`leftovers_now`], while no run is being killed on purpose.
fn network_leftovers(env: &TestEnv) -> Vec<String> {
    let _no_kill = KILLING.read().unwrap_or_else(|e| e.into_inner());
    leftovers_now(env)
}

/// Containers, active snapshots and network namespaces a run must not
/// leave behind: a namespace file under /run/rbuild/netns is named
/// `PID-START-N` by its owner, and one whose owner is gone is a leftover
/// (other tests' runs are alive while they hold theirs).
fn leftovers_now(env: &TestEnv) -> Vec<String> {
    let mut out = env.leftovers();
    if let Ok(entries) = std::fs::read_dir("/run/rbuild/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                out.push(format!("netns /run/rbuild/netns/{name}"));
            }
        }
    }
    out
}

#[test]
fn a_bound_service_is_reached_by_its_alias_and_a_cached_run_starts_none() {
    let env = TestEnv::new("svc-bind");
    let (first, ev) = run(&env, &["bind", "nonce=1"]);
    let first = first.ok();
    assert_eq!(first.stdout, "hello from web\n");
    assert_eq!(count(&ev, "service_started"), 1, "{}", first.stderr);
    assert_eq!(count(&ev, "service_ready"), 1);
    assert_eq!(
        count(&ev, "service_stopped"),
        1,
        "stopped at the latest at the run's end"
    );
    // Fully cached: the same answer, and no service started at all.
    let (second, ev) = run(&env, &["bind", "nonce=1"]);
    let second = second.ok();
    assert_eq!(second.stdout, "hello from web\n");
    assert_eq!(count(&ev, "service_started"), 0, "{}", second.stderr);
    assert!(count(&ev, "cached") >= 1);
    assert_eq!(network_leftovers(&env), Vec::<String>::new());
}

#[test]
fn two_services_on_the_same_port_run_at_once() {
    let env = TestEnv::new("svc-port");
    let (out, ev) = run(&env, &["same-port", "nonce=1"]);
    let out = out.ok();
    assert_eq!(out.stdout, "I am a\nI am b\n");
    assert_eq!(count(&ev, "service_started"), 2);
}

#[test]
fn a_service_bound_to_a_service_reaches_it() {
    let env = TestEnv::new("svc-transitive");
    let (out, ev) = run(&env, &["transitive", "nonce=1"]);
    let out = out.ok();
    assert_eq!(out.stdout, "rows from db\n");
    assert_eq!(count(&ev, "service_started"), 2);
}

/// The step of the service's ready event, after its output event with `line`.
fn ready_after_line(ev: &[Value], line: &str) -> bool {
    let Some(out_at) = ev.iter().position(|e| {
        e["event"] == "output" && e["line"].as_str().is_some_and(|l| l.contains(line))
    }) else {
        return false;
    };
    let ready_at = ev.iter().position(|e| e["event"] == "service_ready");
    ready_at.is_some_and(|r| r > out_at)
}

#[test]
fn readiness_by_log_line_waits_for_the_line() {
    let env = TestEnv::new("svc-log");
    let (out, ev) = run(&env, &["log", "nonce=1"]);
    let out = out.ok();
    assert_eq!(out.stdout, "ready by log\n");
    assert!(ready_after_line(&ev, "listening now"), "{}", out.stderr);
}

#[test]
fn readiness_by_healthcheck_waits_for_it_to_pass() {
    let env = TestEnv::new("svc-health");
    let (out, ev) = run(&env, &["health", "nonce=1"]);
    let out = out.ok();
    assert_eq!(out.stdout, "ready by healthcheck\n");
    assert_eq!(count(&ev, "service_ready"), 1);
}

#[test]
fn a_service_that_exits_fails_its_consumer_naming_it() {
    let env = TestEnv::new("svc-crash");
    let (out, _) = run(&env, &["crash", "nonce=1"]);
    assert_ne!(out.code, 0);
    for want in [
        "exited with code 3",
        "8080/tcp",
        "boom: no config",
        "TCP port 8080",
    ] {
        assert!(out.stderr.contains(want), "no {want:?} in:\n{}", out.stderr);
    }
    assert_eq!(network_leftovers(&env), Vec::<String>::new());
}

#[test]
fn a_service_that_never_gets_ready_times_out_naming_what_it_waited_for() {
    let env = TestEnv::new("svc-never");
    let t0 = Instant::now();
    let (out, _) = run(&env, &["never", "nonce=1"]);
    assert_ne!(out.code, 0);
    for want in ["not ready after 2s", "TCP port 8080", "starting slowly"] {
        assert!(out.stderr.contains(want), "no {want:?} in:\n{}", out.stderr);
    }
    // No hang: the 2 s timeout, not a default of minutes (a generous bound).
    assert!(t0.elapsed() < Duration::from_secs(90));
    assert_eq!(network_leftovers(&env), Vec::<String>::new());
}

fn ids(stdout: &str) -> (String, String) {
    let get = |who: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{who}: ")))
            .unwrap_or_else(|| panic!("no {who} in {stdout}"))
            .to_string()
    };
    (get("one"), get("two"))
}

#[test]
fn identical_services_share_one_instance_and_private_ones_do_not() {
    let env = TestEnv::new("svc-shared");
    let (out, ev) = run(&env, &["shared", "nonce=1"]);
    let (a, b) = ids(&out.ok().stdout);
    assert_eq!(a, b, "one instance for both consumers");
    assert_eq!(count(&ev, "service_started"), 1);
    // Another nonce: `private` does not change the consumers' keys, so the
    // same nonce would answer them from the cache.
    let (out, ev) = run(&env, &["private", "nonce=2"]);
    let (a, b) = ids(&out.ok().stdout);
    assert_ne!(a, b, "an instance each");
    assert_eq!(count(&ev, "service_started"), 2);
}

#[test]
fn a_step_reaches_a_host_port_only_through_host_service() {
    let env = TestEnv::new("svc-host");
    // A tiny HTTP server on the host's loopback.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\nfrom the host");
        }
    });
    let (out, _) = run(&env, &[&format!("host={port}"), "nonce=1"]);
    let out = out.ok();
    assert_eq!(out.stdout, "from the host");
}

#[test]
fn a_step_in_its_own_namespace_cannot_reach_host_loopback_unasked() {
    let env = TestEnv::new("svc-no-host");
    // A host loopback server that counts who reached it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = reached.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nno");
        }
    });
    let (out, _) = run(&env, &[&format!("no-host={port}")]);
    let out = out.ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "loopback and the gateway: {}", out.stdout);
    assert_eq!(lines[0], format!("127.0.0.1:{port} unreachable"));
    assert!(
        lines[1].starts_with("10.") && lines[1].ends_with(&format!(":{port} unreachable")),
        "{}",
        out.stdout
    );
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn hostname_and_endpoint_start_no_service() {
    let env = TestEnv::new("svc-endpoint");
    let (out, ev) = run(&env, &["endpoint"]);
    let out = out.ok();
    let host = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("hostname: "))
        .expect("a hostname")
        .to_string();
    assert!(
        out.stdout
            .contains(&format!("endpoint: http://{host}:8080")),
        "{}",
        out.stdout
    );
    assert_eq!(count(&ev, "service_started"), 0);
    // Stable for the definition.
    let (again, _) = run(&env, &["endpoint"]);
    assert!(again.ok().stdout.contains(&format!("hostname: {host}")));
}

#[test]
fn call_up_forwards_a_port_until_interrupted_and_cleans_up() {
    let env = TestEnv::new("svc-up");
    let port = free_port();
    let mut cmd = env.command();
    cmd.arg("call")
        .arg(pipeline())
        .arg("web")
        .arg("up")
        .arg("--ports")
        .arg(format!("{port}:8080"));
    let mut up = common::running::Running::spawn(cmd);
    up.wait_for_line(&format!("127.0.0.1:{port}"));
    let body = http_get(port);
    assert!(body.ends_with("up and serving\n"), "{body}");
    up.signal(rustix::process::Signal::INT);
    let status = up.finish();
    assert_eq!(status.code(), Some(130), "{}", up.stderr());
    assert_eq!(network_leftovers(&env), Vec::<String>::new());
}

#[test]
fn ctrl_c_and_kill_leave_no_service_behind() {
    let env = TestEnv::new("svc-kill");
    // Ctrl-C while the never-ready service waits.
    let mut run = env.start(&pipeline(), &["never", "nonce=ctrl-c"]);
    run.wait_for_line("starting slowly");
    run.signal(rustix::process::Signal::INT);
    run.finish();
    assert_eq!(network_leftovers(&env), Vec::<String>::new());
    // kill -9: the next run removes what it left.
    let killing = KILLING.write().unwrap_or_else(|e| e.into_inner());
    let mut run = env.start(&pipeline(), &["never", "nonce=kill"]);
    run.wait_for_line("starting slowly");
    run.signal(rustix::process::Signal::KILL);
    run.finish();
    let (out, _) = self::run(&env, &["bind", "nonce=after-kill"]);
    out.ok();
    assert_eq!(leftovers_now(&env), Vec::<String>::new());
    drop(killing);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "wget -q -O- http://127.0.0.1:{port}/ || busybox wget -q -O- http://127.0.0.1:{port}/"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
