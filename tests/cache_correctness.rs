//! Cache correctness (DESIGN.md invariant 1), end to end on real
//! containerd: a host directory is copied into a container whose step
//! prints the tree, a checksum and a random token. A hit prints the old
//! token; a miss a new one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::running::{self, Running};
use common::*;

struct Tree {
    env: TestEnv,
    dir: PathBuf,
}

struct Run {
    listing: String,
    token: String,
    out: Outcome,
}

impl Tree {
    fn new(name: &str) -> Tree {
        let env = TestEnv::new(name);
        let dir = env.dir.path().join("project");
        for (p, data) in [
            ("Cargo.toml", "[package]\nname = \"p\"\n"),
            ("src/main.rs", "fn main() {}\n"),
            ("src/lib.rs", "pub fn f() {}\n"),
            ("debug.log", "noise\n"),
        ] {
            let f = dir.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, data).unwrap();
        }
        std::os::unix::fs::symlink("src/main.rs", dir.join("entry")).unwrap();
        Tree { env, dir }
    }

    fn run_at(&self, dir: &Path, opts: &[&str]) -> Run {
        let mut args = vec!["host-dir", dir.to_str().unwrap()];
        args.extend_from_slice(opts);
        let out = self
            .env
            .run(&repo_root().join("fixtures/pipelines/api.rs"), &args)
            .ok();
        let mut lines: Vec<&str> = out.stdout.lines().collect();
        let token = lines.pop().expect("token line").to_string();
        Run {
            listing: lines.join("\n"),
            token,
            out,
        }
    }

    fn run(&self, opts: &[&str]) -> Run {
        self.run_at(&self.dir, opts)
    }

    fn sh(&self, script: &str) {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&self.dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script}");
    }
}

fn assert_hit(before: &Run, after: &Run, what: &str) {
    assert_eq!(
        after.token, before.token,
        "{what}: expected a cache hit\n{}",
        after.out.stderr
    );
    assert_eq!(after.listing, before.listing, "{what}");
}

fn assert_miss(before: &Run, after: &Run, what: &str) {
    assert_ne!(
        after.token, before.token,
        "{what}: expected the step to run again\n{}",
        after.out.stderr
    );
}

#[test]
fn an_edit_that_restores_size_and_mtime_is_seen() {
    let t = Tree::new("cc-mtime");
    let before = t.run(&[]);
    // Same length, other bytes, mtime and size put back: what BuildKit misses.
    t.sh("touch -r src/main.rs /tmp/rbuild-stamp-$$ && printf 'fn niam() {}\\n' > src/main.rs && touch -r /tmp/rbuild-stamp-$$ src/main.rs && rm /tmp/rbuild-stamp-$$");
    let after = t.run(&[]);
    assert_miss(&before, &after, "content edit with size and mtime restored");
    assert_ne!(
        after.listing, before.listing,
        "the checksum shows the new bytes"
    );
}

#[test]
fn metadata_and_shape_changes_invalidate() {
    let t = Tree::new("cc-shape");
    let mut prev = t.run(&[]);
    for (what, script) in [
        ("mode change", "chmod 755 src/lib.rs"),
        ("symlink retarget", "ln -sfn src/lib.rs entry"),
        ("deletion", "rm debug.log"),
        ("an added empty directory", "mkdir empty"),
    ] {
        t.sh(script);
        let next = t.run(&[]);
        assert_miss(&prev, &next, what);
        prev = next;
    }
    assert!(prev.listing.contains("./empty"), "{}", prev.listing);
    assert!(!prev.listing.contains("debug.log"), "{}", prev.listing);
}

#[test]
fn a_file_excluded_before_and_included_now_invalidates() {
    let t = Tree::new("cc-filter");
    let without_logs = t.run(&["exclude=*.log"]);
    assert!(!without_logs.listing.contains("debug.log"));
    // Changing an excluded file changes nothing.
    t.sh("echo more >> debug.log");
    assert_hit(
        &without_logs,
        &t.run(&["exclude=*.log"]),
        "edit of an excluded file",
    );
    let with_logs = t.run(&[]);
    assert_miss(&without_logs, &with_logs, "a file included now");
    assert!(with_logs.listing.contains("debug.log"));
    let deps = t.run(&["include=**/Cargo.toml"]);
    t.sh("echo '// edit' >> src/main.rs");
    assert_hit(
        &deps,
        &t.run(&["include=**/Cargo.toml"]),
        "sources outside the include filter",
    );
    t.sh("echo .gitignore > .gitignore && echo debug.log >> .gitignore");
    let ignored = t.run(&["gitignore"]);
    assert!(
        !ignored.listing.contains("debug.log"),
        "{}",
        ignored.listing
    );
}

#[test]
fn touch_and_a_fresh_copy_hit() {
    let t = Tree::new("cc-touch");
    let before = t.run(&[]);
    t.sh("sleep 0.05; touch src/main.rs Cargo.toml");
    assert_hit(&before, &t.run(&[]), "touch only");
    let copy = t.env.dir.path().join("elsewhere");
    // A fresh copy: other path, other inodes, new mtimes.
    let ok = Command::new("cp")
        .arg("-r")
        .arg(&t.dir)
        .arg(&copy)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert_hit(&before, &t.run_at(&copy, &[]), "a fresh copy elsewhere");
}

#[test]
fn two_concurrent_rbuild_processes_run_each_step_once() {
    let env = TestEnv::new("concurrent");
    // The first step holds until the test lets it go, which it does only
    // once one process runs the step and the other says it waits for it.
    let args = [
        &format!("from={BUSYBOX}") as &str,
        "exec=echo inside-the-step; while [ ! -e /tmp/go ]; do sleep 0.05; done; \
         head -c 8 /dev/urandom | od -An -tx1 | tr -d ' ' > /a",
        "exec=cat /a; head -c 8 /dev/urandom | od -An -tx1 | tr -d ' '",
        "print=stdout",
    ];
    // Compile first, so that both processes start their steps together.
    env.steps(&["exit=0"]);
    let start = || {
        let mut command = env.command();
        command
            .arg("run")
            .arg(steps_pipeline())
            .arg("--")
            .args(args);
        Running::spawn(command)
    };
    let (mut a, mut b) = (start(), start());
    let waiting = "waiting for another rbuild process that runs";
    let deadline = std::time::Instant::now() + running::HANG;
    while !(a.stderr() + &b.stderr()).contains(waiting) {
        assert!(
            std::time::Instant::now() < deadline,
            "neither process waited for the other:\n{}\n{}",
            a.stderr(),
            b.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let runner = if a.stderr().contains(waiting) {
        &mut b
    } else {
        &mut a
    };
    runner.wait_for_line("| inside-the-step");
    // Both are in the step now: one running it, the other waiting.
    let tasks = env.ctr(&["tasks", "ls"]);
    let id = tasks
        .lines()
        .skip(1)
        .find(|l| l.contains("RUNNING"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no running step: {tasks}"))
        .to_string();
    let go = env.ctr(&["tasks", "exec", "--exec-id", "go", &id, "touch", "/tmp/go"]);
    assert!(go.is_empty(), "{go}");
    let (sa, sb) = (a.finish(), b.finish());
    assert!(
        sa.success() && sb.success(),
        "{}\n{}",
        a.stderr(),
        b.stderr()
    );
    assert_eq!(a.stdout(), b.stdout(), "both see the same results");
    let stderr = format!("{}{}", a.stderr(), b.stderr());
    let done = stderr
        .lines()
        .filter(|l| l.contains(" DONE in") && !l.contains('('))
        .count();
    let cached = stderr.lines().filter(|l| l.ends_with(" CACHED")).count();
    assert_eq!(
        (done, cached),
        (2, 2),
        "each step ran once, in one of the two: {stderr}"
    );
}

/// Sets `path`'s mtime to `when` (touch -d syntax).
fn set_mtime(path: &Path, when: &str) {
    let ok = Command::new("touch")
        .args(["-m", "-d", when])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "touch -d {when} {}", path.display());
}

#[test]
fn cargo_inside_sees_an_edit_whose_size_and_mtime_were_restored() {
    // The README's first example, one level down: target/ lives on a cache
    // volume, and cargo decides by mtime. A same-size edit with its old
    // mtime put back (git-mtimestamp, an editor's undo) must still rebuild;
    // a touch that changes nothing must not.
    let env = TestEnv::new("mtime-cargo");
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        "[package]\nname = \"mtime-test\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    let main = project.join("src/main.rs");
    std::fs::write(&main, "fn main() { println!(\"AAAA\"); }\n").unwrap();
    set_mtime(&main, "2001-01-01 00:00:00");
    let pipeline = repo_root().join("fixtures/pipelines/mtime.rs");
    let run = || env.run(&pipeline, &[project.to_str().unwrap()]).ok();

    assert_eq!(run().stdout, "AAAA\ncompiled\n");

    // Same size, same (old) mtime, new bytes.
    std::fs::write(&main, "fn main() { println!(\"BBBB\"); }\n").unwrap();
    set_mtime(&main, "2001-01-01 00:00:00");
    let edited = run();
    assert_eq!(edited.stdout, "BBBB\ncompiled\n", "{}", edited.stderr);

    // The step runs again (a new file beside), main.rs is only touched:
    // cargo finds nothing to do.
    std::fs::write(project.join("NOTES"), "unrelated\n").unwrap();
    set_mtime(&main, "2030-01-01 00:00:00");
    let touched = run();
    assert_eq!(touched.ran(), 1, "{}", touched.stderr);
    assert_eq!(touched.stdout, "BBBB\nfresh\n", "{}", touched.stderr);
}
