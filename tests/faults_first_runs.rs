//! The fault suite's race on a new state root: several first runs started
//! at once all create and migrate the index (once, under its lock) and all
//! succeed.

mod common;

use std::process::Stdio;

use common::*;

#[test]
fn four_first_runs_at_once_on_a_new_root_all_succeed() {
    for round in 0..3 {
        let env = TestEnv::new(&format!("faults-first-runs-{round}"));
        let children: Vec<_> = (0..4)
            .map(|n| {
                env.command()
                    .args(["--progress", "plain", "run"])
                    .arg(steps_pipeline())
                    .arg("--")
                    .arg(format!("from={BUSYBOX}"))
                    .arg(format!("exec=echo run-{n}"))
                    .arg("print=stdout")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (n, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "round {round}, run {n}:\n{stderr}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), format!("run-{n}\n"));
        }
        let ls = env.command().args(["cache", "ls"]).output().unwrap();
        let listing = String::from_utf8_lossy(&ls.stdout);
        for n in 0..4 {
            assert!(listing.contains(&format!("echo run-{n}")), "{listing}");
        }
    }
}
