//! The fault suite's unbounded output: a step that prints one very long
//! line, and one that prints 20 MB. The run succeeds, the index stays
//! small (output beyond 1 MiB per stream lives in `ROOT/outputs/`, the
//! index keeps its head and tail), `stdout()` still returns all of it, on
//! a hit too, and `cache prune` removes the file with its entry.

mod common;

use std::path::Path;

use common::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn run(env: &TestEnv, ops: &[&str]) -> Outcome {
    let pipeline = repo_root().join("fixtures/pipelines/steps.rs");
    let mut args = vec!["from=127.0.0.1:5000/busybox:latest"];
    args.extend_from_slice(ops);
    let out = env
        .command()
        .args(["--progress", "plain", "run"])
        .arg(pipeline)
        .arg("--")
        .args(&args)
        .output()
        .unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The files under ROOT/outputs (not its scratch directory).
fn stored_outputs(root: &Path) -> Vec<(String, u64)> {
    let dir = root.join("outputs");
    assert!(dir.is_dir(), "{} exists", dir.display());
    let mut files: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    files.sort();
    files
}

/// What the pipeline's `summary=stdout` printed: (bytes, head, tail).
fn summary(out: &str) -> (usize, String, String) {
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_string()
    };
    (
        field("bytes=").parse().unwrap(),
        field("head="),
        field("tail="),
    )
}

fn index_bytes(root: &Path) -> u64 {
    ["index.db", "index.db-journal", "index.db-wal"]
        .iter()
        .map(|f| std::fs::metadata(root.join(f)).map_or(0, |m| m.len()))
        .sum()
}

#[test]
fn a_step_printing_20_mb_keeps_the_index_small_and_its_file_goes_with_prune() {
    let env = TestEnv::new("faults-output-big");
    // About 20 MB in 62-byte lines: a counter so that head and tail differ.
    let lines = 327_680;
    let exec = format!(
        "exec=seq -w 1 {lines} | sed 's/$/ ....................................................../'"
    );
    let exec = exec.as_str();
    let first = run(&env, &[exec, "summary=stdout"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let (bytes, head, tail) = summary(&first.stdout);
    assert!(head.starts_with("\"000001 ....."), "{head}");
    assert!(
        tail.ends_with("327680 ......................................................\\n\""),
        "{tail}"
    );
    assert_eq!(bytes, lines * 62, "stdout() returns all of it");
    assert!(!first.stderr.contains("panicked"), "{}", first.stderr);
    let root = env.root();
    let files = stored_outputs(&root);
    assert_eq!(files.len(), 1, "one stored stdout: {files:?}");
    assert_eq!(files[0].1, lines as u64 * 62, "the file holds all of it");
    assert!(
        index_bytes(&root) < 8 * MIB as u64,
        "index is {} bytes",
        index_bytes(&root)
    );

    // A hit answers the same, from the stored file.
    let again = run(&env, &[exec, "summary=stdout"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.cached(), 1, "{}", again.stderr);
    assert_eq!(summary(&again.stdout), (bytes, head, tail));

    let pruned = env
        .command()
        .args(["cache", "prune", "--all"])
        .output()
        .unwrap();
    assert!(
        pruned.status.success(),
        "{}",
        String::from_utf8_lossy(&pruned.stderr)
    );
    assert_eq!(stored_outputs(&root), [], "prune removed the stored output");
}

#[test]
fn a_step_printing_one_very_long_line_succeeds_and_shows_a_bounded_line() {
    let env = TestEnv::new("faults-output-line");
    // 64 MiB without a newline, then one.
    let exec = "exec=head -c 67108864 /dev/zero | tr '\\0' x; echo; echo end";
    let out = run(&env, &[exec, "summary=stdout"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (bytes, head, tail) = summary(&out.stdout);
    assert_eq!(bytes, 64 * MIB + 5, "stdout() returns all of it");
    assert!(head.starts_with("\"xxxxxxxx"), "{head}");
    assert!(tail.ends_with("xxxx\\nend\\n\""), "{tail}");
    // Progress shows the start of the line and counts the rest.
    let shown = out
        .stderr
        .lines()
        .find(|l| l.contains(" | xxxx"))
        .expect("the line in the progress output");
    assert!(
        shown.len() < 5000,
        "a progress line of {} bytes",
        shown.len()
    );
    assert!(
        shown.ends_with(&format!("[… {} more bytes]", 64 * MIB - 4096)),
        "{}",
        &shown[shown.len() - 60..]
    );
    let root = env.root();
    assert_eq!(stored_outputs(&root).len(), 1);
    assert!(index_bytes(&root) < 8 * MIB as u64);
}
