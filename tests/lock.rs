//! rbuild.lock (issue 16, pinned images) on real containerd and a registry
//! behind a proxy that logs every request: a pinned, fully cached run asks
//! the registry nothing; `--locked` refuses a tag the lock lacks before
//! any step runs.

mod common;

use common::fault_proxy::{FaultProxy, Match};
use common::*;

#[test]
fn a_pinned_fully_cached_run_sends_no_request_and_locked_refuses_a_new_tag() {
    let env = TestEnv::new("lock");
    let proxy = FaultProxy::start(Vec::new());
    // A copy of the steps pipeline: its lock is written beside it.
    let pipeline = env.dir.path().join("steps.rs");
    std::fs::copy(steps_pipeline(), &pipeline).unwrap();
    let lock = env.dir.path().join("rbuild.lock");
    let image = proxy.image("busybox:latest");
    let args = |image: &str| {
        vec![
            format!("from={image}"),
            "exec=echo pinned".to_string(),
            "print=stdout".to_string(),
        ]
    };
    let run = |extra: &[&str], image: &str| {
        let a = args(image);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let mut cmd = env.command();
        cmd.args(extra).arg("run").arg(&pipeline).arg("--").args(&a);
        Outcome::from(cmd.output().unwrap())
    };

    // Without a lock: tags resolve live, and none is written.
    run(&[], &image).ok();
    assert!(!lock.exists());
    let update = || {
        Outcome::from(
            env.command()
                .args(["lock", "update"])
                .arg(&pipeline)
                .output()
                .unwrap(),
        )
        .ok()
    };
    let wrote = update();
    assert!(wrote.stdout.contains("wrote an empty"), "{}", wrote.stdout);
    // The next run records the tag it used.
    run(&[], &image).ok();
    let text = std::fs::read_to_string(&lock).unwrap();
    assert!(text.contains(&format!("\"{image}\" = \"sha256:")), "{text}");

    // Pinned and fully cached: the registry hears nothing.
    let before = proxy.requests(Match::Any);
    let cached = run(&["--locked"], &image).ok();
    assert_eq!(cached.ran(), 0, "{}", cached.stderr);
    assert_eq!(
        proxy.requests(Match::Any),
        before,
        "requests: {:?}",
        proxy.log()
    );

    // --locked and a tag the lock does not pin: refused before any step.
    let other = proxy.image("busybox-env:latest");
    let refused = run(&["--locked"], &other);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains(&format!(
            "--locked: {} has no entry for {other}",
            lock.display()
        )),
        "{}",
        refused.stderr
    );
    assert_eq!(refused.ran(), 0, "{}", refused.stderr);

    // `lock update` re-resolves what it pins.
    let refreshed = update();
    assert!(
        refreshed.stdout.contains("1 tags, 0 changed"),
        "{}",
        refreshed.stdout
    );
    // No lock at all under --locked: refused.
    std::fs::remove_file(&lock).unwrap();
    let missing = run(&["--locked"], &image);
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("does not exist"),
        "{}",
        missing.stderr
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}
