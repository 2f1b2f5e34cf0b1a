//! The command line end to end: progress formats, failures, functions and
//! calls, cache management, history, the managed containerd, and the
//! interactive paths under a real pseudo-terminal (tmux).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn steps(env: &TestEnv, progress: &str, args: &[&str]) -> Outcome {
    let out = env
        .command()
        .arg("--progress")
        .arg(progress)
        .arg("run")
        .arg(steps_pipeline())
        .arg("--")
        .args(args)
        .output()
        .unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn two_steps(second: &str) -> Vec<String> {
    vec![
        format!("from={BUSYBOX}"),
        "exec=echo first".into(),
        format!("exec=echo {second}; echo to-stderr >&2"),
        "print=stdout".into(),
    ]
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn plain_progress_is_one_line_per_event_with_output_prefixed() {
    let env = TestEnv::new("plain");
    steps(&env, "plain", &refs(&two_steps("one"))).ok();
    let out = steps(&env, "plain", &refs(&two_steps("two"))).ok();
    let lines: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with('#')).collect();
    assert!(
        lines.contains(&"#1 exec sh -c 'echo first' CACHED"),
        "{}",
        out.stderr
    );
    let started = lines
        .iter()
        .find(|l| l.ends_with("exec sh -c 'echo two; echo to-stderr >&2'"))
        .unwrap_or_else(|| panic!("no start line: {}", out.stderr));
    let no = started.split_whitespace().next().unwrap();
    assert!(
        lines.contains(&format!("{no} | two").as_str()),
        "{}",
        out.stderr
    );
    assert!(
        lines.contains(&format!("{no} | to-stderr").as_str()),
        "{}",
        out.stderr
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{no} DONE in "))),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("rbuild: 1 steps run, 1 cached (50% hits), in "),
        "{}",
        out.stderr
    );
}

#[test]
fn json_progress_is_one_object_per_event() {
    let env = TestEnv::new("json");
    steps(&env, "plain", &refs(&two_steps("one"))).ok();
    let out = steps(&env, "json", &refs(&two_steps("three"))).ok();
    let events: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let kind = |k: &str| events.iter().filter(|e| e["event"] == k).count();
    assert_eq!(kind("cached"), 1, "{}", out.stderr);
    assert_eq!(kind("queued"), 1);
    assert!(kind("started") >= 1, "{}", out.stderr);
    assert_eq!(kind("done"), kind("started"), "every started step ends");
    let mut output: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "output")
        .map(|e| e["line"].as_str().unwrap())
        .collect();
    // stdout and stderr arrive through separate pipes: their relative order
    // is not defined, only that each line arrives once.
    output.sort_unstable();
    assert_eq!(output, ["three", "to-stderr"]);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "output" && e["stream"] == "stderr")
    );
    let summary = events.iter().find(|e| e["event"] == "summary").unwrap();
    assert_eq!(
        (
            summary["steps_run"].as_i64(),
            summary["steps_cached"].as_i64()
        ),
        (Some(1), Some(1))
    );
    assert!(events.iter().all(|e| e["time_ms"].is_u64()));
    assert_eq!(
        out.stdout, "three\n",
        "the pipeline's own output stays on stdout"
    );
}

#[test]
fn a_failure_names_command_exit_code_stderr_and_pipeline_call() {
    let env = TestEnv::new("failmsg");
    let out = steps(
        &env,
        "plain",
        &[
            &format!("from={BUSYBOX}"),
            "exec=echo bad news >&2; exit 9",
            "print=stdout",
        ],
    );
    assert_ne!(out.code, 0);
    for want in [
        "FAILED: exec sh -c 'echo bad news >&2; exit 9'",
        "exit code 9",
        "| bad news",
        "created at",
        "fixtures/pipelines/steps.rs:",
        // The run's summary counts it.
        "cached (0% hits), 1 failed, in ",
    ] {
        assert!(
            out.stderr.contains(want),
            "{want:?} missing:\n{}",
            out.stderr
        );
    }
}

fn call(env: &TestEnv, args: &[&str]) -> Outcome {
    let out = env
        .command()
        .arg("call")
        .arg(repo_root().join("fixtures/pipelines/functions.rs"))
        .args(args)
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What `rbuild functions` prints for the functions fixture.
fn list_functions(env: &TestEnv) -> String {
    let listed = env
        .command()
        .arg("functions")
        .arg(repo_root().join("fixtures/pipelines/functions.rs"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&listed.stdout).into_owned()
}

#[test]
fn functions_are_listed_and_called_with_each_argument_type() {
    let env = TestEnv::new("functions");
    let listed = list_functions(&env);
    assert!(
        listed.contains("scalars  Echoes its string, int, float and bool arguments"),
        "{listed}"
    );
    assert!(
        listed.contains("--ratio <float> (default: 0.5)  a number"),
        "{listed}"
    );
    assert!(listed.contains("--token <secret> (required)"), "{listed}");
    // `history` shows which function a call ran.
    call(&env, &["scalars", "--text", "hi", "--count", "2"]).ok();
    let history = env.command().arg("history").output().unwrap();
    let history = String::from_utf8_lossy(&history.stdout);
    assert!(history.contains("functions.rs scalars"), "{history}");

    let out = call(
        &env,
        &["scalars", "--text", "hi", "--count", "3", "--loud=true"],
    )
    .ok();
    assert_eq!(out.stdout, "HI x3 at 0.5\n");
    let bad = call(&env, &["scalars", "--text", "hi", "--count", "many"]);
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr
            .contains("argument --count: \"many\" is not an integer"),
        "{}",
        bad.stderr
    );
    let missing = call(&env, &["scalars", "--text", "hi"]);
    assert!(
        missing.stderr.contains("missing argument --count"),
        "{}",
        missing.stderr
    );

    // Host paths are relative to where rbuild is started.
    std::fs::create_dir_all(env.dir.path().join("src/sub")).unwrap();
    std::fs::write(env.dir.path().join("src/sub/x.txt"), "x").unwrap();
    std::fs::write(env.dir.path().join("note.txt"), "from a file").unwrap();
    let out = call(&env, &["files", "--src", "src", "--file", "note.txt"]).ok();
    assert_eq!(out.stdout, "./sub/x.txt\nfrom a file");

    let out = env
        .command()
        .env("RBUILD_TEST_TOKEN", "s3cr3t-v4lue")
        .arg("call")
        .arg(repo_root().join("fixtures/pipelines/functions.rs"))
        .args(["secret", "--token", "env:RBUILD_TEST_TOKEN"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, "token has 12 characters: ***\n");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cr3t"));

    let out = call(&env, &["image", "--base", BUSYBOX]).ok();
    assert_eq!(out.stdout, "made by a function");

    let dest = env.dir.path().join("exported");
    let out = call(&env, &["tree", "export", "--path", dest.to_str().unwrap()]).ok();
    assert!(out.stdout.contains("exported"), "{}", out.stdout);
    assert_eq!(
        std::fs::read_to_string(dest.join("sub/b.txt")).unwrap(),
        "beta"
    );

    let tar = env.dir.path().join("image.tar");
    call(
        &env,
        &[
            "image",
            "--base",
            BUSYBOX,
            "export",
            "--path",
            tar.to_str().unwrap(),
        ],
    )
    .ok();
    assert!(
        std::fs::metadata(&tar).unwrap().len() > 1_000_000,
        "a container exports as an image tarball"
    );
}

/// The "context …: N entries, K files read (X MB)" progress line's K and X.
fn files_read(stderr: &str) -> (u64, f64) {
    let line = stderr
        .lines()
        .find(|l| l.contains("context ") && l.contains(" files read ("))
        .unwrap_or_else(|| panic!("no context line in:\n{stderr}"));
    let (before, after) = line.split_once(" files read (").unwrap();
    let files = before.rsplit(' ').next().unwrap().parse().unwrap();
    let mb = after.split(' ').next().unwrap().parse().unwrap();
    (files, mb)
}

#[test]
fn a_directory_argument_never_reads_what_it_ignores() {
    let env = TestEnv::new("fn-ignore");
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(project.join("target/debug/deps")).unwrap();
    std::fs::write(project.join("a.txt"), "alpha\n").unwrap();
    // Settled, as a checked-out source is: a file changed (its ctime)
    // within a timestamp tick (100 ms here) of a scan is read again by the
    // next (git's racily clean rule), and with the pipeline already
    // compiled the first call comes that soon.
    std::thread::sleep(std::time::Duration::from_millis(250));
    // 200 MB in the ignored target/, as a local `cargo build` leaves it
    // (sparse: cheap to make, but 200 MB to anyone who reads it).
    let big = project.join("target/debug/app");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    for i in 0..200 {
        std::fs::write(project.join(format!("target/debug/deps/{i}.o")), "obj").unwrap();
    }
    let listed = list_functions(&env);
    assert!(
        listed.contains(&format!(
            "--source <directory> (default: {}) [ignores target/]  the project",
            repo_root().display()
        )),
        "{listed}"
    );

    let call_project = || {
        env.command()
            .env("RBUILD_PROGRESS", "json")
            .arg("call")
            .arg(repo_root().join("fixtures/pipelines/functions.rs"))
            .args(["project", "--source", "."])
            .current_dir(&project)
            .output()
            .unwrap()
    };
    let first = Outcome::from(call_project()).ok();
    assert_eq!(first.stdout, ".\n./a.txt\nalpha\n", "{}", first.stderr);
    let (files, mb) = files_read(&first.stderr);
    assert_eq!(files, 1, "only a.txt is read: {}", first.stderr);
    assert!(mb < 0.1, "{mb} MB read: {}", first.stderr);

    // A build writes into target/: nothing is read, nothing runs again.
    std::fs::write(&big, "relinked").unwrap();
    std::fs::write(project.join("target/debug/deps/new.o"), "new").unwrap();
    let second = Outcome::from(call_project()).ok();
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(files_read(&second.stderr).0, 0, "{}", second.stderr);
    let summary = |stderr: &str| {
        events(stderr)
            .into_iter()
            .find(|e| e["event"] == "summary")
            .unwrap_or_else(|| panic!("no summary in:\n{stderr}"))
    };
    assert!(summary(&first.stderr)["steps_run"].as_u64().unwrap() >= 1);
    assert_eq!(
        summary(&second.stderr)["steps_run"],
        0,
        "nothing runs again: {}",
        second.stderr
    );
}

#[test]
fn init_creates_a_pipeline_whose_functions_work() {
    let env = TestEnv::new("init");
    let made = env
        .command()
        .arg("init")
        .arg(env.dir.path())
        .output()
        .unwrap();
    assert!(made.status.success());
    let again = env
        .command()
        .arg("init")
        .arg(env.dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success(), "init never overwrites");
    let starter = std::fs::read_to_string(env.dir.path().join("ci/pipeline.rs")).unwrap();
    // rbuild's own major.minor is the current API.
    let current = env!("CARGO_PKG_VERSION").rsplit_once('.').unwrap().0;
    assert!(
        starter.contains(&format!(
            "//! [package.metadata.rbuild]\n//! api = \"{current}\"\n"
        )),
        "the starter declares the current API: {starter}"
    );
    let out = env
        .command()
        .args(["call", "hello", "--name", "tester"])
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello tester\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("declares no API version"));
}

#[test]
fn a_declared_api_version_is_checked_before_anything_runs() {
    let env = TestEnv::new("api-version");
    let write = |name: &str, cargo_block: &str| {
        let path = env.dir.path().join(name);
        let block: String = cargo_block.lines().map(|l| format!("//! {l}\n")).collect();
        std::fs::write(
            &path,
            format!("//! ```cargo\n{block}//! ```\n\nfn main() {{\n    println!(\"ran\");\n}}\n"),
        )
        .unwrap();
        path
    };
    let run = |path: &Path| {
        let out = env.command().arg("run").arg(path).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Refused before cargo compiles anything, let alone runs.
    for (name, block, wants) in [
        (
            "too-new.rs",
            "[package.metadata.rbuild]\napi = \"9.9\"",
            &[
                "declares rbuild API 9.9, newer than this rbuild",
                "upgrade rbuild to 9.9",
            ][..],
        ),
        (
            "too-old.rs",
            "[package.metadata.rbuild]\napi = \"0.0\"",
            &[
                "declares rbuild API 0.0, older than the oldest",
                "(API 0.1)",
            ][..],
        ),
        (
            "pinned.rs",
            "[dependencies]\nrbuild-sdk = \"0.3\"",
            &[
                "pins rbuild-sdk \"0.3\"",
                "builds pipelines with rbuild-sdk 0.1.0",
            ][..],
        ),
    ] {
        let (code, stdout, stderr) = run(&write(name, block));
        assert_ne!(code, Some(0), "{name}: {stderr}");
        assert_eq!(stdout, "", "{name}: nothing ran");
        assert!(
            !stderr.contains("Compiling"),
            "{name}: nothing compiled: {stderr}"
        );
        for want in wants {
            assert!(stderr.contains(want), "{name}: no {want:?} in: {stderr}");
        }
    }

    // No declaration: API 0.1's behaviour, and how to declare it, said once.
    let undeclared = env.dir.path().join("undeclared.rs");
    std::fs::write(&undeclared, "fn main() {\n    println!(\"ran\");\n}\n").unwrap();
    let hint = "declares no API version, so it gets API 0.1's behaviour";
    let (code, stdout, first) = run(&undeclared);
    assert_eq!((code, stdout.as_str()), (Some(0), "ran\n"), "{first}");
    assert!(first.contains(hint), "{first}");
    assert!(
        first.contains("[package.metadata.rbuild]\n  api = \"0.1\""),
        "{first}"
    );
    let (_, _, second) = run(&undeclared);
    assert!(!second.contains(hint), "said once: {second}");

    // Declared: no hint.
    let (code, stdout, stderr) = run(&write(
        "declared.rs",
        "[package.metadata.rbuild]\napi = \"0.1\"",
    ));
    assert_eq!((code, stdout.as_str()), (Some(0), "ran\n"), "{stderr}");
    assert!(!stderr.contains(hint), "{stderr}");
}

/// The version a lock file pins for a package (its first entry).
fn locked_version(lock: &str, package: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{package}\"") {
            return lines
                .next()?
                .strip_prefix("version = \"")?
                .strip_suffix('"')
                .map(str::to_string);
        }
    }
    None
}

#[test]
fn a_new_single_file_pipeline_compiles_with_rbuilds_own_lock_file() {
    let env = TestEnv::new("lockfile");
    let file = env.dir.path().join("fresh.rs");
    std::fs::write(
        &file,
        "#[tokio::main]\nasync fn main() -> rbuild_sdk::Result<()> {\n    \
         let c = rbuild_sdk::connect().await?;\n    \
         let out = c.container().from(\"127.0.0.1:5000/busybox:latest\")\n        \
         .with_exec([\"echo\", \"fresh\"]).stdout().await?;\n    \
         print!(\"{out}\");\n    Ok(())\n}\n",
    )
    .unwrap();
    let first = env.run(&file, &[]);
    assert!(
        !first.stderr.contains("Updating crates.io index"),
        "a new pipeline's first compile needs no index update (nor network):\n{}",
        first.stderr
    );
    let first = first.ok();
    assert_eq!(first.stdout, "fresh\n");
    // Its lock file pins the versions rbuild was tested with.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rbuild-pipelines/pipelines");
    let wanted = format!("path = {:?}", file.display().to_string());
    let lock = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .find(|p| {
            std::fs::read_to_string(p.path().join("Cargo.toml"))
                .is_ok_and(|m| m.lines().any(|l| l == wanted))
        })
        .map(|p| std::fs::read_to_string(p.path().join("Cargo.lock")).unwrap())
        .expect("the pipeline's generated crate");
    let ours = std::fs::read_to_string(repo_root().join("Cargo.lock")).unwrap();
    for package in ["tokio", "serde_json"] {
        assert_eq!(
            locked_version(&lock, package),
            locked_version(&ours, package),
            "{package}"
        );
    }
}

/// Copies a directory tree (files and directories only).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

#[test]
fn a_pipeline_whose_sdk_speaks_a_newer_protocol_is_told_what_to_upgrade() {
    let env = TestEnv::new("protocol");
    // A pipeline crate pinned (by path) to an SDK from the future.
    let sdk = env.dir.path().join("rbuild-sdk-next");
    copy_tree(&repo_root().join("sdk"), &sdk);
    let wire = sdk.join("src/wire/mod.rs");
    let text = std::fs::read_to_string(&wire).unwrap();
    let constant = |name: &str| -> u32 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("pub const {name}: u32 = ")))
            .and_then(|v| v.strip_suffix(';'))
            .unwrap_or_else(|| panic!("{name} in {}", wire.display()))
            .parse()
            .unwrap()
    };
    let (oldest, current) = (constant("OLDEST_PROTOCOL"), constant("PROTOCOL"));
    let next = current + 1;
    std::fs::write(
        &wire,
        text.replace(
            &format!("pub const PROTOCOL: u32 = {current};"),
            &format!("pub const PROTOCOL: u32 = {next};"),
        ),
    )
    .unwrap();
    let project = env.dir.path().join("pipeline");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"newer-sdk\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             [dependencies]\nrbuild-sdk = {{ path = {:?} }}\n\
             tokio = {{ version = \"1\", features = [\"macros\", \"rt-multi-thread\"] }}\n\
             [workspace]\n",
            sdk.display().to_string()
        ),
    )
    .unwrap();
    // rbuild's own lock file, so that cargo needs no index (nor network).
    std::fs::copy(repo_root().join("Cargo.lock"), project.join("Cargo.lock")).unwrap();
    std::fs::write(
        project.join("src/main.rs"),
        format!(
            "#[tokio::main]\nasync fn main() -> rbuild_sdk::Result<()> {{\n    \
             let c = rbuild_sdk::connect().await?;\n    \
             let out = c.container().from({BUSYBOX:?}).with_exec([\"echo\", \"hi\"]).stdout().await?;\n    \
             print!(\"{{out}}\");\n    Ok(())\n}}\n"
        ),
    )
    .unwrap();

    let out = env.run(&project, &[]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    let sdk_version = locked_version(
        &std::fs::read_to_string(repo_root().join("Cargo.lock")).unwrap(),
        "rbuild-sdk",
    )
    .unwrap();
    let accepted = if oldest == current {
        format!("protocol {current}")
    } else {
        format!("protocols {oldest}..={current}")
    };
    let want = format!(
        "Error: this pipeline's rbuild-sdk {sdk_version} speaks protocol {next}; this rbuild \
         ({}) accepts {accepted}: upgrade rbuild, or pin the pipeline's rbuild-sdk to \
         {sdk_version} (the SDK this rbuild embeds; a registry dependency gets it without a pin)",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        out.stderr.contains(&want),
        "{want:?} missing:\n{}",
        out.stderr
    );
    assert_eq!(
        out.ran(),
        0,
        "nothing runs for a request the engine cannot read"
    );
}

/// Step snapshots of the test namespace.
fn step_snapshots(env: &TestEnv) -> Vec<String> {
    env.ctr(&["snapshots", "ls"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|k| k.starts_with("rbuild-step-"))
        .map(String::from)
        .collect()
}

fn cache_keys(env: &TestEnv) -> Vec<String> {
    let out = env.command().args(["cache", "ls"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// Moves every entry's creation and last use `secs` into the past, as if
/// that much time had gone by since (the index's clock is in seconds).
fn age_entries(env: &TestEnv, secs: i64) {
    let db = rusqlite::Connection::open(env.root().join("index.db")).unwrap();
    db.busy_timeout(Duration::from_secs(30)).unwrap();
    let n = db
        .execute(
            "UPDATE steps SET created = created - ?1, last_used = last_used - ?1",
            [secs],
        )
        .unwrap();
    assert!(n > 0, "no entries to age");
}

fn prune(env: &TestEnv, args: &[&str]) -> String {
    stdout_of(env.command().args(["cache", "prune"]).args(args))
}

#[test]
fn prune_policies_remove_exactly_what_they_say() {
    let env = TestEnv::new("prune");
    let old = [
        &format!("from={BUSYBOX}") as &str,
        "exec=head -c 1000000 /dev/urandom > /old",
        "print=stdout",
    ];
    let new = [
        &format!("from={BUSYBOX}") as &str,
        "exec=head -c 1000000 /dev/urandom > /new",
        "print=stdout",
    ];
    env.steps(&old).ok();
    // An hour passes (in the index), then `new` runs.
    age_entries(&env, 3600);
    env.steps(&new).ok();
    assert_eq!(cache_keys(&env).len(), 2);
    assert_eq!(step_snapshots(&env).len(), 2);
    let du = env.command().args(["cache", "du"]).output().unwrap();
    assert!(String::from_utf8_lossy(&du.stdout).contains("2 entries"));

    // By age: the older entry goes, rows and snapshot; the newer one still hits.
    assert!(prune(&env, &["--keep-duration", "30m"]).contains("removed 1 entries"));
    assert_eq!(cache_keys(&env).len(), 1);
    assert_eq!(
        step_snapshots(&env).len(),
        1,
        "the snapshot went with its row"
    );
    let hit = env.steps(&new).ok();
    assert_eq!(hit.cached(), 1, "{}", hit.stderr);

    // By size: the least recently used entries go until the rest fits.
    env.steps(&old).ok();
    age_entries(&env, 10);
    env.steps(&new).ok(); // `new` is the most recently used again
    assert!(prune(&env, &["--keep-storage", "1.5MB"]).contains("removed 1 entries"));
    assert_eq!(env.steps(&new).ok().cached(), 1);
    assert_eq!(
        env.steps(&old).ok().cached(),
        0,
        "`old` was pruned and ran again"
    );

    // Everything, images and content included.
    assert!(prune(&env, &["--all"]).contains("removed 2 entries"));
    assert!(cache_keys(&env).is_empty());
    assert!(step_snapshots(&env).is_empty());
    assert_eq!(
        env.ctr(&["images", "ls", "-q"]).trim(),
        "",
        "rbuild's images are gone"
    );
    assert_eq!(
        env.ctr(&["content", "ls", "-q"]).trim(),
        "",
        "and their content"
    );
    let again = env.steps(&new).ok();
    assert!(
        again.stderr.contains(" pull "),
        "the image is pulled again: {}",
        again.stderr
    );

    let history = env.command().arg("history").output().unwrap();
    let history = String::from_utf8_lossy(&history.stdout);
    assert!(history.lines().count() >= 7, "{history}");
    assert!(history.contains("steps.rs"), "{history}");
}

#[test]
fn the_automatic_policy_trims_the_cache_after_a_run() {
    let env = TestEnv::new("autogc");
    let out = env
        .command()
        .env("RBUILD_GC_KEEP_STORAGE", "1B")
        .arg("run")
        .arg(steps_pipeline())
        .arg("--")
        .args([
            &format!("from={BUSYBOX}") as &str,
            "exec=head -c 100000 /dev/urandom > /x",
            "print=stdout",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the cache was over its limit: removed 1"),
        "{stderr}"
    );
    assert!(cache_keys(&env).is_empty());
}

#[test]
fn a_managed_containerd_starts_from_nothing_and_stops() {
    let env = TestEnv::new("managed");
    let nowhere = env.dir.path().join("no-containerd.sock");
    let rbuild = || {
        let mut c = env.command();
        c.arg("--address").arg(&nowhere);
        c
    };
    let out = rbuild()
        .arg("run")
        .arg(steps_pipeline())
        .arg("--")
        .args([
            &format!("from={BUSYBOX}") as &str,
            "exec=echo on my own containerd",
            "print=stdout",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "on my own containerd\n"
    );
    assert!(stderr.contains("started rbuild's own"), "{stderr}");
    let status =
        String::from_utf8_lossy(&rbuild().args(["engine", "status"]).output().unwrap().stdout)
            .into_owned();
    assert!(
        status.contains("rbuild's own containerd: running"),
        "{status}"
    );
    // The next run reuses it without saying so again.
    let again = rbuild()
        .arg("run")
        .arg(steps_pipeline())
        .arg("--")
        .args([
            &format!("from={BUSYBOX}") as &str,
            "exec=echo on my own containerd",
            "print=stdout",
        ])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&again.stderr).contains("started rbuild's own"));
    let stop = String::from_utf8_lossy(&rbuild().args(["engine", "stop"]).output().unwrap().stdout)
        .into_owned();
    assert!(stop.contains("stopped"), "{stop}");
    let status =
        String::from_utf8_lossy(&rbuild().args(["engine", "status"]).output().unwrap().stdout)
            .into_owned();
    assert!(
        status.contains("rbuild's own containerd: stopped"),
        "{status}"
    );
    let ps = Command::new("pgrep")
        .args(["-f", &env.root().join("containerd").display().to_string()])
        .output()
        .unwrap();
    assert!(ps.stdout.is_empty(), "no process of it is left");
}

#[test]
fn doctor_and_completions() {
    let env = TestEnv::new("doctor");
    let out = env
        .command()
        .args(["doctor", "--registry", REGISTRY])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in [
        "ok    containerd is installed",
        "ok    runc is installed",
        "overlayfs",
        "cgroups:",
        "disk space",
        "registry 127.0.0.1:5000 answers",
    ] {
        assert!(text.contains(want), "{want:?}: {text}");
    }
    let comp = env
        .command()
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&comp.stdout).contains("_rbuild()"));
    let version = env.command().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("rbuild "));
}

/// A command running in a tmux session: a real pseudo-terminal.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(env: &TestEnv, command: &str) -> Tmux {
        let name = format!("rbuild-test-{}-{}", std::process::id(), env.namespace.len());
        let envs = format!(
            "RBUILD_ROOT={} RBUILD_NAMESPACE={} RBUILD_CACHE_DIR={} DOCKER_CONFIG={}",
            env.root().display(),
            env.namespace,
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("rbuild-pipelines")
                .display(),
            env.docker_config.display()
        );
        let ok = Command::new("tmux")
            .args(["new-session", "-d", "-s", &name, "-x", "160", "-y", "40"])
            .arg(format!("{envs} {command}; echo RBUILD-EXIT=$?; sleep 600"))
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux starts");
        Tmux { name }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, what: &str) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "waited for {what:?}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn keys(&self, keys: &str) {
        Command::new("tmux")
            .args(["send-keys", "-t", &self.name, keys, "Enter"])
            .status()
            .unwrap();
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

#[test]
fn interactive_mode_opens_a_shell_in_the_failed_step() {
    let env = TestEnv::new("interactive");
    let rbuild = env!("CARGO_BIN_EXE_rbuild");
    let tmux = Tmux::start(
        &env,
        &format!(
            "{rbuild} run -i {} -- from={BUSYBOX} workdir=/work env=MARK=debug-me 'exec=echo left-by-the-step > here.txt; exit 4' print=stdout",
            steps_pipeline().display()
        ),
    );
    // What failed is on the screen before the shell opens.
    let screen = tmux.wait_for("/work #");
    let (before, _) = screen.rsplit_once("/work #").unwrap();
    assert!(
        before.contains("FAILED: exec") && before.contains("exit code 4"),
        "{screen}"
    );
    tmux.keys("pwd; cat here.txt; echo mark=$MARK");
    let screen = tmux.wait_for("mark=debug-me");
    assert!(
        screen.contains("\n/work\n") || screen.contains("\r\n/work"),
        "{screen}"
    );
    assert!(screen.contains("left-by-the-step"), "{screen}");
    tmux.keys("exit");
    let screen = tmux.wait_for("RBUILD-EXIT=");
    assert!(screen.contains("RBUILD-EXIT=1"), "{screen}");
    assert!(screen.contains("exit code 4"), "{screen}");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn call_dash_i_opens_a_shell_in_the_failed_step_after_showing_the_failure() {
    let env = TestEnv::new("call-interactive");
    let rbuild = env!("CARGO_BIN_EXE_rbuild");
    let tmux = Tmux::start(
        &env,
        &format!(
            "{rbuild} call -i {} fails",
            repo_root()
                .join("fixtures/pipelines/functions.rs")
                .display()
        ),
    );
    let screen = tmux.wait_for("/work #");
    let (before, _) = screen.rsplit_once("/work #").unwrap();
    assert!(
        before.contains("FAILED: exec")
            && before.contains("exit code 5")
            && before.contains("| oops"),
        "{screen}"
    );
    tmux.keys("cat here.txt");
    tmux.wait_for("left-by-the-call");
    tmux.keys("exit");
    let screen = tmux.wait_for("RBUILD-EXIT=");
    assert!(screen.contains("RBUILD-EXIT=1"), "{screen}");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn a_terminal_can_be_opened_on_purpose() {
    let env = TestEnv::new("terminal");
    let rbuild = env!("CARGO_BIN_EXE_rbuild");
    let tmux = Tmux::start(
        &env,
        &format!(
            "{rbuild} call {} image --base {BUSYBOX} terminal",
            repo_root()
                .join("fixtures/pipelines/functions.rs")
                .display()
        ),
    );
    tmux.wait_for("/work #");
    tmux.keys("cat made.txt; echo; echo done-$((40+2))");
    let screen = tmux.wait_for("done-42");
    assert!(screen.contains("made by a function"), "{screen}");
    tmux.keys("exit");
    let screen = tmux.wait_for("RBUILD-EXIT=");
    assert!(screen.contains("RBUILD-EXIT=0"), "{screen}");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}
