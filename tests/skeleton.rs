//! `rbuild run` end to end on real containerd, runc and registries: the
//! demo, caching and invalidation, failures, registry errors, auth, interop
//! with ctr, interruption and crash cleanup.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// A step that appends a random token to /log, so a re-run is visible in the bytes.
fn logged(name: &str) -> String {
    format!("exec=echo {name} $(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' ') >> /log")
}

#[test]
fn demo_prints_its_output_and_a_second_run_is_fully_cached() {
    let env = TestEnv::new("demo");
    let demo = repo_root().join("examples/hello/pipeline.rs");
    let first = env.run(&demo, &[]).ok();
    assert!(
        first.stdout.contains("hello from rbuild\n"),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("-rw-r--r-- 18 greeting.txt\n"),
        "{}",
        first.stdout
    );
    let random = first
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("random bytes: "))
        .expect("random bytes line")
        .to_string();
    assert_eq!(random.len(), 32, "16 random bytes in hex: {random}");
    assert_eq!(first.ran(), 4, "{}", first.stderr);

    let second = env.run(&demo, &[]).ok();
    // Identical output, random bytes included: no step ran again.
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(second.cached(), 4, "{}", second.stderr);
    assert_eq!(second.ran(), 0, "{}", second.stderr);
    assert!(
        !second.stderr.contains(" pull "),
        "a cached run pulls nothing: {}",
        second.stderr
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn changing_argv_reruns_that_step_and_the_ones_after_it_only() {
    let env = TestEnv::new("argv");
    let pipeline = |second: &str| {
        vec![
            format!("from={BUSYBOX}"),
            logged("one"),
            logged(second),
            logged("three"),
            "exec=cat /log".to_string(),
            "print=stdout".to_string(),
        ]
    };
    let a = pipeline("two");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let first = env.steps(&a).ok();
    let lines1: Vec<&str> = first.stdout.lines().collect();
    assert_eq!(lines1.len(), 3, "{}", first.stdout);

    let b = pipeline("TWO");
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    let second = env.steps(&b).ok();
    let lines2: Vec<&str> = second.stdout.lines().collect();
    assert_eq!(
        lines2[0], lines1[0],
        "the step before the change was cached"
    );
    assert!(lines2[1].starts_with("TWO "), "{}", second.stdout);
    assert!(lines2[2].starts_with("three "));
    assert_ne!(lines2[2], lines1[2], "the step after the change ran again");
    assert_eq!((second.cached(), second.ran()), (1, 3), "{}", second.stderr);
}

#[test]
fn changing_env_reruns_the_steps_after_it_only() {
    let env = TestEnv::new("env");
    let run = |value: &str| {
        let args = [
            format!("from={BUSYBOX}"),
            logged("one"),
            format!("env=COLOR={value}"),
            "exec=echo color=$COLOR >> /log".to_string(),
            logged("three"),
            "exec=cat /log".to_string(),
            "print=stdout".to_string(),
        ];
        env.steps(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .ok()
    };
    let first = run("red");
    let second = run("blue");
    let l1: Vec<&str> = first.stdout.lines().collect();
    let l2: Vec<&str> = second.stdout.lines().collect();
    assert_eq!(l2[0], l1[0]);
    assert_eq!(l2[1], "color=blue");
    assert_ne!(l2[2], l1[2]);
    assert_eq!((second.cached(), second.ran()), (1, 3), "{}", second.stderr);
    // And unchanged again: everything hits.
    let third = run("blue");
    assert_eq!(third.stdout, second.stdout);
    assert_eq!(third.ran(), 0);
}

#[test]
fn a_failing_command_is_reported_not_cached_and_retried() {
    let env = TestEnv::new("fail");
    let args = [
        &format!("from={BUSYBOX}") as &str,
        "exec=echo prepared > /p",
        "exec=echo about to fail >&2; echo 'the real reason' >&2; exit 7",
        "print=stdout",
    ];
    let first = env.steps(&args);
    assert_ne!(first.code, 0);
    let cmd = "sh -c 'echo about to fail >&2; echo '\\''the real reason'\\'' >&2; exit 7'";
    assert!(
        first.stderr.contains(cmd),
        "command shown: {}",
        first.stderr
    );
    assert!(first.stderr.contains("exit code 7") || first.stderr.contains("exit code: 7"));
    assert!(
        first.stderr.contains("the real reason"),
        "stderr tail: {}",
        first.stderr
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());

    let second = env.steps(&args);
    assert_ne!(second.code, 0);
    assert_eq!(
        second.cached(),
        1,
        "the step before the failure hits: {}",
        second.stderr
    );
    assert!(
        second
            .stderr
            .lines()
            .any(|l| l.contains("exit 7") && !l.ends_with("CACHED")),
        "the failed step ran again: {}",
        second.stderr
    );
}

/// A chain of steps deeper than the kernel lets one overlay mount stack
/// (its options fit in a page: about 55 of containerd's layer paths) still
/// runs, reads files and copies directories, and is cached like any other.
#[test]
fn a_chain_deeper_than_one_mount_can_stack_runs_reads_and_copies() {
    let env = TestEnv::new("deep");
    let mut args = vec![format!("from={BUSYBOX}")];
    args.extend((0..70).map(|i| format!("exec=echo {i} > /f{i}")));
    args.push("read=/f69".into());
    args.push("copy=/etc:/etc-copy".into());
    args.push("exec=cat /f0 /f35 /etc-copy/group | head -n 3".into());
    args.push("print=stdout".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = env.steps(&args).ok();
    assert_eq!(first.stdout, "69\n0\n35\nroot:x:0:\n", "{}", first.stderr);
    assert_eq!(first.cached(), 0, "{}", first.stderr);
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    let second = env.steps(&args).ok();
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(second.ran(), 0, "{}", second.stderr);
}

#[test]
fn registry_problems_are_clear_errors_naming_the_reference() {
    let env = TestEnv::new("regerr");
    let cases = [
        (
            "127.0.0.1:5000/no-such-image:latest",
            "has no repository no-such-image",
        ),
        (
            "127.0.0.1:5000/busybox:no-such-tag",
            "no tag \"no-such-tag\"",
        ),
        (
            "127.0.0.1:5999/busybox:latest",
            "cannot reach registry 127.0.0.1:5999",
        ),
        ("127.0.0.1:5001/busybox:latest", "denied access"),
    ];
    for (reference, expected) in cases {
        let out = env.steps(&[&format!("from={reference}"), "exec=true", "print=stdout"]);
        assert_ne!(out.code, 0, "{reference}");
        assert!(
            out.stderr.contains(reference),
            "{reference} not named: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(expected),
            "{reference}: wanted {expected:?} in {}",
            out.stderr
        );
    }
    env.write_docker_config(AUTH_REGISTRY, "rbuild", "wrong-password");
    let out = env.steps(&[
        "from=127.0.0.1:5001/busybox:latest",
        "exec=true",
        "print=stdout",
    ]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("denied access to 127.0.0.1:5001/busybox:latest"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("were refused"), "{}", out.stderr);
}

#[test]
fn pulls_from_the_auth_registry_with_docker_config_credentials() {
    let env = TestEnv::new("auth");
    env.write_docker_config(AUTH_REGISTRY, "rbuild", "rbuild-pass");
    let out = env
        .steps(&[
            "from=127.0.0.1:5001/busybox:latest",
            "exec=echo authenticated",
            "print=stdout",
        ])
        .ok();
    assert_eq!(out.stdout, "authenticated\n");
}

#[test]
fn a_pulled_image_is_complete_for_ctr_and_its_config_applies() {
    let env = TestEnv::new("interop");
    let out = env
        .steps(&[
            "from=127.0.0.1:5000/busybox-env:latest",
            "exec=pwd; cat marker.txt; echo $GREETING",
            "print=stdout",
        ])
        .ok();
    assert_eq!(out.stdout, "/srv\nimage-workdir\nhello-from-image\n");
    let check = env.ctr(&["images", "check"]);
    let line = check
        .lines()
        .find(|l| l.starts_with("127.0.0.1:5000/busybox-env:latest"))
        .unwrap_or_else(|| panic!("image not listed: {check}"));
    assert!(line.contains("complete"), "{line}");
    assert!(line.trim_end().ends_with("true"), "unpacked: {line}");
    // ctr can run the image rbuild pulled, from the snapshots rbuild unpacked.
    let id = format!("interop-{}", std::process::id());
    let ran = env.ctr(&[
        "run",
        "--rm",
        "127.0.0.1:5000/busybox-env:latest",
        &id,
        "cat",
        "/srv/marker.txt",
    ]);
    assert_eq!(ran, "image-workdir\n");
}

#[test]
fn an_image_index_resolves_to_this_machines_platform() {
    let env = TestEnv::new("platform");
    let out = env
        .steps(&[
            "from=127.0.0.1:5000/busybox-multi:latest",
            "exec=cat /platform",
            "print=stdout",
        ])
        .ok();
    assert_eq!(out.stdout, "amd64\n");
}

#[test]
fn the_pipeline_exit_code_is_rbuilds() {
    let env = TestEnv::new("exitcode");
    let out = env.steps(&["exit=3"]);
    assert_eq!(out.code, 3);
}

#[test]
fn compile_errors_are_shown_as_cargo_shows_them_and_unchanged_pipelines_skip_cargo() {
    let env = TestEnv::new("compile");
    let broken = env.dir.path().join("broken.rs");
    std::fs::write(&broken, "fn main() { let x: u32 = \"not a number\"; }\n").unwrap();
    let out = env.run(&broken, &[]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("error[E0308]: mismatched types"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("broken.rs:1"), "{}", out.stderr);
    assert!(out.stderr.contains("failed to compile"), "{}", out.stderr);

    let fixed = env.dir.path().join("fixed.rs");
    std::fs::write(&fixed, "fn main() { println!(\"compiled\"); }\n").unwrap();
    let first = env.run(&fixed, &[]).ok();
    assert_eq!(first.stdout, "compiled\n");
    assert!(first.stderr.contains("Compiling"), "{}", first.stderr);
    let second = env.run(&fixed, &[]).ok();
    assert_eq!(second.stdout, "compiled\n");
    assert!(
        !second.stderr.contains("Compiling") && !second.stderr.contains("Finished"),
        "cargo did not run: {}",
        second.stderr
    );
}

/// Starts `rbuild run` on a long step and returns once that step is running.
fn start_sleeping(env: &TestEnv) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let mut child = env
        .command()
        .arg("run")
        .arg(steps_pipeline())
        .arg("--")
        .args([
            &format!("from={BUSYBOX}") as &str,
            "exec=sleep 60",
            "print=stdout",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("exec sh -c 'sleep 60'") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(180))
        .expect("the sleep step did not start");
    // Give runc a moment to actually start the process.
    std::thread::sleep(Duration::from_millis(500));
    (child, reader)
}

#[test]
fn ctrl_c_stops_the_step_and_cleans_up() {
    let env = TestEnv::new("sigint");
    let (mut child, reader) = start_sleeping(&env);
    assert!(
        !env.leftovers().is_empty(),
        "the step's container should be running"
    );
    let started = Instant::now();
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopping took {:?}",
        started.elapsed()
    );
    assert!(
        env.leftovers().is_empty(),
        "left behind: {:?}",
        env.leftovers()
    );
    assert!(stderr.contains("interrupted"), "{stderr}");
}

#[test]
fn a_killed_run_is_cleaned_up_by_the_next_one() {
    let env = TestEnv::new("sigkill");
    let (mut child, reader) = start_sleeping(&env);
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    reader.join().unwrap();
    assert!(
        !env.leftovers().is_empty(),
        "the killed run leaves a container behind"
    );

    let out = env
        .steps(&[
            &format!("from={BUSYBOX}"),
            "exec=echo after the crash",
            "print=stdout",
        ])
        .ok();
    assert_eq!(out.stdout, "after the crash\n");
    assert!(
        env.leftovers().is_empty(),
        "left behind: {:?}",
        env.leftovers()
    );
    // The interrupted step was never recorded: it runs (not hits) next time.
    let again = env
        .steps(&[&format!("from={BUSYBOX}"), "exec=sleep 0.1", "print=stdout"])
        .ok();
    assert_eq!(again.ran(), 1, "{}", again.stderr);
}

#[test]
fn a_pipeline_crate_directory_runs_with_the_embedded_sdk() {
    let env = TestEnv::new("crate");
    let dir = env.dir.path().join("ci");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    // Depends on rbuild-sdk as if from a registry: rbuild patches in its own copy.
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"ci\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nrbuild-sdk = \"0.1\"\ntokio = { version = \"1\", features = [\"macros\", \"rt-multi-thread\"] }\n\n\
         [workspace]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("src/main.rs"),
        format!(
            "use rbuild_sdk as rb;\n#[tokio::main]\nasync fn main() -> rb::Result<()> {{\n\
             let c = rb::connect().await?;\n\
             let out = c.container().from({BUSYBOX:?}).with_exec([\"echo\", \"from a crate\"]).stdout().await?;\n\
             print!(\"{{out}}\");\nOk(())\n}}\n"
        ),
    )
    .unwrap();
    let out = env.run(&dir, &[]).ok();
    assert_eq!(out.stdout, "from a crate\n");
    let again = env.run(&dir, &[]).ok();
    assert!(!again.stderr.contains("Compiling"), "{}", again.stderr);
    assert_eq!(again.cached(), 1);
}

#[test]
fn blobs_and_snapshots_already_in_containerd_are_not_fetched_again() {
    let env = TestEnv::new("reuse");
    let args = [
        &format!("from={BUSYBOX}") as &str,
        "exec=echo reuse",
        "print=stdout",
    ];
    let first = env.steps(&args).ok();
    assert!(
        first.stderr.contains("(1 of 1 layers fetched"),
        "{}",
        first.stderr
    );
    assert!(first.stderr.contains(", 1 unpacked)"), "{}", first.stderr);
    // A second state root (empty index) on the same containerd namespace:
    // the step runs again, but the image is already there.
    let other_root = env.dir.path().join("root2");
    let out = env
        .command()
        .env("RBUILD_ROOT", &other_root)
        .arg("run")
        .arg(steps_pipeline())
        .arg("--")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("(0 of 1 layers fetched (0.0 MB), 0 unpacked)"),
        "{stderr}"
    );
}

#[test]
fn a_digest_reference_pulls_that_exact_manifest() {
    let env = TestEnv::new("digest");
    let head = std::process::Command::new("curl")
        .args([
            "-sfI",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            "http://127.0.0.1:5000/v2/busybox/manifests/latest",
        ])
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&head.stdout);
    let digest = headers
        .lines()
        .find_map(|l| l.strip_prefix("Docker-Content-Digest: "))
        .expect("registry returns the manifest digest")
        .trim();
    let reference = format!("127.0.0.1:5000/busybox@{digest}");
    let out = env
        .steps(&[
            &format!("from={reference}"),
            "exec=echo pinned",
            "print=stdout",
        ])
        .ok();
    assert_eq!(out.stdout, "pinned\n");
    assert!(env.ctr(&["images", "ls", "-q"]).contains(&reference));
}
