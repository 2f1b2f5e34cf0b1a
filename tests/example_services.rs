//! examples/services end to end (the Flipt pattern in small): kv-server is
//! built once in the Debian Rust image (crates from crates.io), then tested
//! against sqlite, postgres and redis at the same time, each entry with its
//! own database service and the built server bound as a service. A second
//! run is fully cached and starts no service. Minutes: the first run
//! compiles the example from nothing.

mod common;

use common::{HOST_CA, Outcome, TestEnv, count_events as count, events, repo_root};
use serde_json::Value;

/// With the host's CA bundle in every step's trust store (cargo fetches
/// through this machine's TLS-inspecting proxy).
fn run(env: &TestEnv, app: &std::path::Path) -> (Outcome, Vec<Value>) {
    let pipeline = repo_root().join("examples/services/pipeline.rs");
    let mut cmd = env.run_command(&pipeline, &[app.to_str().unwrap()]);
    cmd.env("RBUILD_PROGRESS", "json");
    if std::path::Path::new(HOST_CA).exists() {
        cmd.env("RBUILD_CA_CERTS", HOST_CA);
    }
    let out = Outcome::from(cmd.output().expect("start rbuild"));
    let events = events(&out.stderr);
    (out, events)
}

/// Exec steps that started (ran) and that were cached.
fn execs(events: &[Value]) -> (usize, usize) {
    let exec = |kind: &str| {
        events
            .iter()
            .filter(|e| {
                e["event"] == kind && e["name"].as_str().is_some_and(|n| n.starts_with("exec "))
            })
            .count()
    };
    (exec("started"), exec("cached"))
}

#[test]
fn the_matrix_passes_on_every_backend_and_a_second_run_starts_no_service() {
    let env = TestEnv::new("example-services");
    // A copy of the app, so that a target/ of a developer's own build in
    // the repository cannot change what is sent.
    let app = env.dir.path().join("app");
    std::fs::create_dir_all(app.join("src")).unwrap();
    let src = repo_root().join("examples/services/app");
    for f in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(src.join(f), app.join(f)).unwrap();
    }
    for e in std::fs::read_dir(src.join("src")).unwrap().flatten() {
        std::fs::copy(e.path(), app.join("src").join(e.file_name())).unwrap();
    }

    let (first, ev) = run(&env, &app);
    let first = first.ok();
    for store in ["sqlite", "postgres", "redis"] {
        let summary =
            format!("{store:<8} | 9 passed, 0 failed against http://app:8080 (store: {store})");
        assert!(first.stdout.contains(&summary), "{}", first.stdout);
    }
    // The build and three test entries ran; three servers, a postgres and
    // a redis started, and each stopped again.
    assert_eq!(execs(&ev), (4, 0), "{}", first.stderr);
    assert_eq!(count(&ev, "service_started"), 5, "{}", first.stderr);
    assert_eq!(count(&ev, "service_ready"), 5, "{}", first.stderr);
    assert_eq!(count(&ev, "service_stopped"), 5, "{}", first.stderr);

    let (second, ev) = run(&env, &app);
    let second = second.ok();
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(execs(&ev), (0, 4), "fully cached: {}", second.stderr);
    assert_eq!(count(&ev, "service_started"), 0, "{}", second.stderr);
    assert_eq!(env.leftovers(), Vec::<String>::new());
}
