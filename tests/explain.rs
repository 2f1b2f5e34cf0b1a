//! Why steps run (issue 17): `--expect-cached`, the CI check that a warm
//! runner really is warm.

mod common;

use common::{BUSYBOX, Outcome, TestEnv, steps_pipeline};

fn run(env: &TestEnv, flags: &[&str], last: &str) -> Outcome {
    let mut cmd = env.command();
    cmd.args(["--progress", "plain"])
        .args(flags)
        .arg("run")
        .arg(steps_pipeline())
        .arg("--");
    cmd.args([
        format!("from={BUSYBOX}"),
        "exec=head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /rand".to_string(),
        format!("exec={last}"),
        "print=stdout".to_string(),
    ]);
    Outcome::from(cmd.output().unwrap())
}

#[test]
fn expect_cached_passes_a_warm_run_and_refuses_to_run_a_miss() {
    let env = TestEnv::new("expect-cached");
    let warm = run(&env, &[], "echo ran=$(cat /rand)").ok();
    let again = run(&env, &["--expect-cached"], "echo ran=$(cat /rand)").ok();
    assert_eq!(again.stdout, warm.stdout);
    assert_eq!(again.cached(), 2, "{}", again.stderr);

    // One change: the run fails before that step runs, naming it.
    let refused = Outcome::from(
        env.command()
            .env("RBUILD_EXPECT_CACHED", "true")
            .args(["--progress", "plain", "run"])
            .arg(steps_pipeline())
            .arg("--")
            .args([
                format!("from={BUSYBOX}"),
                "exec=head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /rand".to_string(),
                "exec=echo RAN-THE-CHANGED-STEP".to_string(),
                "print=stdout".to_string(),
            ])
            .output()
            .unwrap(),
    );
    assert_ne!(refused.code, 0, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(
            "--expect-cached: exec sh -c 'echo RAN-THE-CHANGED-STEP' is not in the cache"
        ),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("nothing was run"),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stdout.contains("RAN-THE-CHANGED-STEP\n")
            && !refused.stderr.contains("| RAN-THE-CHANGED-STEP"),
        "the step ran: {}",
        refused.stderr
    );
    // And nothing was recorded: without the flag it runs now.
    let ran = run(&env, &[], "echo RAN-THE-CHANGED-STEP").ok();
    assert!(
        ran.stderr.contains("| RAN-THE-CHANGED-STEP"),
        "{}",
        ran.stderr
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}
