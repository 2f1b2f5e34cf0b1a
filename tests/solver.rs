//! The solver on real containerd (issue 13): a value's inputs from
//! independent branches run at once, with no join in the pipeline. Asserted
//! from the progress events' order, not from the clock.

mod common;

use common::{BUSYBOX, TestEnv, repo_root, run_json};

#[test]
fn three_branches_copied_into_one_container_run_at_once_without_a_join() {
    let env = TestEnv::new("solver-branches");
    let from = format!("from={BUSYBOX}");
    let nonce = format!("env=NONCE={}", std::process::id());
    let branch = |i: usize| format!("branch=sleep 2; echo branch {i} > /out");
    let (b0, b1, b2) = (branch(0), branch(1), branch(2));
    let args = [
        from.as_str(),
        nonce.as_str(),
        &b0,
        &b1,
        &b2,
        "exec=cat /branch0 /branch1 /branch2",
        "print=stdout",
    ];
    let steps = repo_root().join("fixtures/pipelines/steps.rs");
    let (out, events) = run_json(&env, &steps, &args);
    let out = out.ok();
    assert_eq!(out.stdout, "branch 0\nbranch 1\nbranch 2\n");

    // The three sleeping steps' numbers, then the position of each one's
    // start and end among the events.
    let sleeps: Vec<u64> = events
        .iter()
        .filter(|e| {
            e["event"] == "started" && e["name"].as_str().is_some_and(|n| n.contains("sleep 2"))
        })
        .filter_map(|e| e["step"].as_u64())
        .collect();
    assert_eq!(sleeps.len(), 3, "{}", out.stderr);
    let position = |kind: &str, step: u64| {
        events
            .iter()
            .position(|e| e["event"] == kind && e["step"].as_u64() == Some(step))
            .unwrap_or_else(|| panic!("no {kind} event for step {step}: {}", out.stderr))
    };
    let last_start = sleeps
        .iter()
        .map(|&s| position("started", s))
        .max()
        .unwrap();
    let first_end = sleeps.iter().map(|&s| position("done", s)).min().unwrap();
    assert!(
        last_start < first_end,
        "every branch started before any ended: {}",
        out.stderr
    );
    // The step that reads them all ran after all three.
    let cat = events
        .iter()
        .find(|e| {
            e["event"] == "started"
                && e["name"]
                    .as_str()
                    .is_some_and(|n| n.contains("cat /branch0"))
        })
        .and_then(|e| e["step"].as_u64())
        .expect("the final step started");
    let last_end = sleeps.iter().map(|&s| position("done", s)).max().unwrap();
    assert!(position("started", cat) > last_end, "{}", out.stderr);

    // Again: all cached, the same bytes.
    let (again, _) = run_json(&env, &steps, &args);
    assert_eq!(again.ok().stdout, out.stdout);
}
