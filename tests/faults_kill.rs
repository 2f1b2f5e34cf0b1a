//! The fault suite's kills: rbuild dies by SIGKILL at a named kill point
//! (`RBUILD_KILL_AT`, compiled into debug builds only: see
//! containerd/src/kill_point.rs), or is killed with `kill -9` / SIGHUP
//! mid-step. Each test then checks what `rbuild cache verify` reports, that
//! the next run succeeds with the right output and the right cache hits and
//! misses, and that `verify` is clean afterwards.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use common::running::Running;
use common::*;
use rustix::process::Signal;

/// `rbuild run steps.rs -- ARGS`
fn run(env: &TestEnv, args: &[&str]) -> Outcome {
    env.steps(args)
}

/// Runs `rbuild ARGS` with `RBUILD_KILL_AT=point` and checks that it died
/// there: by SIGKILL, after the point's marker. Returns its stderr.
fn killed_at(env: &TestEnv, point: &str, rbuild_args: &[&str]) -> String {
    let out = env
        .command()
        .env("RBUILD_KILL_AT", point)
        .args(rbuild_args)
        .output()
        .expect("start rbuild");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "rbuild was not killed ({:?})\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains(&format!("rbuild: kill point {point}\n")),
        "rbuild died elsewhere than at {point}:\n{stderr}"
    );
    stderr
}

fn run_killed_at(env: &TestEnv, point: &str, args: &[&str]) -> String {
    let pipeline = steps_pipeline();
    let mut all = vec!["run", pipeline.to_str().unwrap(), "--"];
    all.extend_from_slice(args);
    killed_at(env, point, &all)
}

/// `rbuild cache verify`
fn verify(env: &TestEnv) -> Outcome {
    let out = env
        .command()
        .args(["cache", "verify"])
        .output()
        .expect("start rbuild");
    Outcome::from(out)
}

/// Asserts that verify fails and reports each of `expected`.
fn verify_reports(env: &TestEnv, expected: &[&str]) -> String {
    let v = verify(env);
    assert_eq!(
        v.code, 1,
        "verify found nothing\n{}\n{}",
        v.stdout, v.stderr
    );
    for e in expected {
        assert!(
            v.stdout.contains(e),
            "verify does not report {e:?}:\n{}",
            v.stdout
        );
    }
    v.stdout
}

fn verify_clean(env: &TestEnv) {
    let v = verify(env);
    assert_eq!(
        v.code, 0,
        "verify is not clean:\n{}\n{}",
        v.stdout, v.stderr
    );
    assert!(v.stdout.starts_with("ok: "), "{}", v.stdout);
}

/// Everything of the test's namespace that must not outlive a run:
/// containers, active snapshots, shims, step processes, secret directories.
fn everything_left(env: &TestEnv) -> Vec<String> {
    let mut left = env.leftovers();
    left.extend(
        shims(&env.namespace)
            .into_iter()
            .map(|pid| format!("shim {pid}")),
    );
    left.extend(
        step_processes(&env.namespace)
            .into_iter()
            .map(|pid| format!("step process {pid}")),
    );
    left.extend(
        secret_dirs(&env.namespace)
            .into_iter()
            .map(|d| format!("secret directory {}", d.display())),
    );
    left
}

fn proc_entries() -> Vec<PathBuf> {
    let entries: Vec<PathBuf> = std::fs::read_dir("/proc")
        .expect("/proc is readable")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .map(|e| e.path())
        .collect();
    assert!(entries.len() > 1, "the process search sees other processes");
    entries
}

/// `containerd-shim-runc-v2` processes serving the namespace.
fn shims(namespace: &str) -> Vec<String> {
    proc_entries()
        .into_iter()
        .filter(|p| {
            let cmdline = std::fs::read(p.join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first()
                .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"))
                && args
                    .windows(2)
                    .any(|w| w[0] == b"-namespace" && w[1] == namespace.as_bytes())
        })
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Processes in the namespace's container cgroups (`/NAMESPACE/ID`).
fn step_processes(namespace: &str) -> Vec<String> {
    let needle = format!(":/{namespace}/");
    proc_entries()
        .into_iter()
        .filter(|p| std::fs::read_to_string(p.join("cgroup")).is_ok_and(|c| c.contains(&needle)))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// `/dev/shm/rbuild-secrets-*` directories of the namespace.
fn secret_dirs(namespace: &str) -> Vec<PathBuf> {
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "/dev/shm exists");
    let suffix = format!("-{namespace}");
    std::fs::read_dir(shm)
        .expect("/dev/shm is readable")
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("rbuild-secrets-") && name.ends_with(&suffix)
        })
        .map(|e| e.path())
        .collect()
}

fn nonce() -> String {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    format!("{:016x}", u64::from_le_bytes(b))
}

// ------------------------------------------------------------- kill points

#[test]
fn killed_mid_unpack() {
    let env = TestEnv::new("kill-unpack");
    let args = [
        &format!("from={BUSYBOX}") as &str,
        "exec=echo unpacked",
        "print=stdout",
    ];
    run_killed_at(&env, "unpack-mid", &args);
    verify_reports(&env, &["active snapshot", "lease rbuild-run-", "is gone"]);

    let out = run(&env, &args).ok();
    assert_eq!(out.stdout, "unpacked\n");
    assert_eq!(out.ran(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("1 unpacked"),
        "the layer is unpacked again: {}",
        out.stderr
    );
    verify_clean(&env);
    assert_eq!(run(&env, &args).ok().cached(), 1);
}

#[test]
fn killed_after_a_commit_before_its_row() {
    let env = TestEnv::new("kill-commit");
    let args = [
        &format!("from={BUSYBOX}") as &str,
        "exec=echo committed",
        "print=stdout",
    ];
    run_killed_at(&env, "step-committed", &args);
    verify_reports(&env, &["lease rbuild-run-"]);

    // Not recorded: the step runs again (and takes the committed snapshot).
    let out = run(&env, &args).ok();
    assert_eq!(out.stdout, "committed\n");
    assert_eq!((out.ran(), out.cached()), (1, 0), "{}", out.stderr);
    verify_clean(&env);
    let again = run(&env, &args).ok();
    assert_eq!((again.ran(), again.cached()), (0, 1), "{}", again.stderr);
    assert_eq!(again.stdout, "committed\n");
}

#[test]
fn killed_between_a_row_and_its_gc_root() {
    let env = TestEnv::new("kill-row");
    let from = format!("from={BUSYBOX}");
    let args = [
        &from as &str,
        "exec=echo recorded > /r && cat /r",
        "print=stdout",
    ];
    run_killed_at(&env, "step-recorded", &args);
    verify_reports(&env, &["is not a GC root"]);

    // The row is complete: the next run keeps its snapshot and hits.
    let out = run(&env, &args).ok();
    assert_eq!(out.stdout, "recorded\n");
    assert_eq!((out.ran(), out.cached()), (0, 1), "{}", out.stderr);
    verify_clean(&env);
    // A garbage collection (a prune that removes nothing) keeps it: a step
    // on top of it finds its files.
    let pruned = env
        .command()
        .args(["cache", "prune", "--keep-duration", "1000d"])
        .output()
        .unwrap();
    assert!(pruned.status.success(), "{pruned:?}");
    let on_top = run(
        &env,
        &[
            &from,
            "exec=echo recorded > /r && cat /r",
            "exec=cat /r",
            "print=stdout",
        ],
    )
    .ok();
    assert_eq!(on_top.stdout, "recorded\n");
    assert_eq!((on_top.ran(), on_top.cached()), (1, 1), "{}", on_top.stderr);
    assert!(!on_top.stderr.contains("is gone"), "{}", on_top.stderr);
    verify_clean(&env);
}

#[test]
fn killed_mid_prune() {
    let env = TestEnv::new("kill-prune");
    let from = format!("from={BUSYBOX}");
    let args = [
        &from as &str,
        "exec=echo one > /one",
        "exec=cat /one",
        "print=stdout",
    ];
    assert_eq!(run(&env, &args).ok().ran(), 2);
    verify_clean(&env);

    killed_at(&env, "prune-mid", &["cache", "prune", "--all"]);
    verify_reports(&env, &["is a GC root but no index row has it"]);

    // The prune is finished by the next start: the rows are gone, so the
    // steps run again, and nothing is left rooted without a row.
    let out = run(&env, &args).ok();
    assert_eq!(out.stdout, "one\n");
    assert_eq!((out.ran(), out.cached()), (2, 0), "{}", out.stderr);
    verify_clean(&env);
}

#[test]
fn killed_mid_publish() {
    let env = TestEnv::new("kill-publish");
    let from = format!("from={BUSYBOX}");
    let target = format!("{REGISTRY}/faults-kill/{}:1", env.namespace);
    let publish = format!("publish={target}");
    let args = [&from as &str, "exec=echo published > /pub", &publish];
    run_killed_at(&env, "publish-mid", &args);
    verify_reports(&env, &["lease rbuild-run-"]);

    let out = run(&env, &args).ok();
    assert!(
        out.stdout
            .starts_with(&format!("published: {target}@sha256:")),
        "{}",
        out.stdout
    );
    assert_eq!((out.ran(), out.cached()), (0, 1), "{}", out.stderr);
    verify_clean(&env);
    // What the registry has is the whole image.
    let back = run(
        &env,
        &[&format!("from={target}"), "exec=cat /pub", "print=stdout"],
    )
    .ok();
    assert_eq!(back.stdout, "published\n");
}

#[test]
fn killed_mid_export() {
    let env = TestEnv::new("kill-export");
    let from = format!("from={BUSYBOX}");
    let dest = env.dir.path().join("exported");
    let export = format!("export_dir=/out:{}", dest.display());
    let args = [
        &from as &str,
        "exec=mkdir /out && echo a > /out/a && echo b > /out/b && echo c > /out/c",
        &export,
    ];
    run_killed_at(&env, "copy-mid", &args);
    let partial: Vec<_> = std::fs::read_dir(&dest).unwrap().flatten().collect();
    assert_eq!(partial.len(), 1, "killed after the first file: {partial:?}");
    verify_reports(&env, &["lease rbuild-run-"]);

    let out = run(&env, &args).ok();
    assert_eq!((out.ran(), out.cached()), (0, 1), "{}", out.stderr);
    for f in ["a", "b", "c"] {
        assert_eq!(
            std::fs::read_to_string(dest.join(f)).unwrap(),
            format!("{f}\n")
        );
    }
    verify_clean(&env);
}

// --------------------------------------------------------- steps and shims

/// Starts a run whose step mounts a secret and then sleeps; returns once
/// the step's process has printed that it is running.
fn start_secret_step(env: &TestEnv, secret_file: &Path) -> Running {
    let secret = format!("secret=/run/secret:{}", secret_file.display());
    let mut running = env.start(
        &steps_pipeline(),
        &[
            &format!("from={BUSYBOX}"),
            &secret,
            "exec=test -s /run/secret && echo step-is-running && sleep 600",
            "print=stdout",
        ],
    );
    running.wait_for_line("| step-is-running");
    running
}

#[test]
fn a_killed_runs_secrets_and_processes_are_removed_by_the_next_run() {
    let env = TestEnv::new("kill-secret");
    let value = format!("plaintext-{}", nonce());
    let secret = env.dir.path().join("secret");
    std::fs::write(&secret, &value).unwrap();
    let mut step = start_secret_step(&env, &secret);
    step.signal(Signal::KILL); // no chance to clean up
    step.finish();

    // What kill -9 leaves: the plaintext in RAM, the step still running.
    let dirs = secret_dirs(&env.namespace);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert_eq!(
        std::fs::read_to_string(dirs[0].join("secret-0")).unwrap(),
        value
    );
    assert!(!shims(&env.namespace).is_empty(), "the step's shim runs on");
    assert!(
        !step_processes(&env.namespace).is_empty(),
        "the step runs on"
    );
    let report = verify_reports(
        &env,
        &[
            "secret directory /dev/shm/rbuild-secrets-",
            "container rbuild-",
            "shim ",
            "step process ",
            "lease rbuild-run-",
        ],
    );
    assert!(!report.contains(&value), "verify shows no secret: {report}");

    let out = run(
        &env,
        &[
            &format!("from={BUSYBOX}"),
            "exec=echo after the kill",
            "print=stdout",
        ],
    )
    .ok();
    assert_eq!(out.stdout, "after the kill\n");
    assert!(
        !dirs[0].exists(),
        "the dead run's secret directory is removed"
    );
    let left = everything_left(&env);
    assert!(left.is_empty(), "left behind: {left:?}");
    verify_clean(&env);
}

#[test]
fn sighup_stops_the_step_and_cleans_up() {
    let env = TestEnv::new("sighup");
    let secret = env.dir.path().join("secret");
    std::fs::write(&secret, format!("plaintext-{}", nonce())).unwrap();
    let mut step = start_secret_step(&env, &secret);
    assert_eq!(
        secret_dirs(&env.namespace).len(),
        1,
        "the step has its secret directory"
    );
    step.signal(Signal::HUP);
    let status = step.finish();
    let stderr = step.stderr();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let left = everything_left(&env);
    assert!(left.is_empty(), "left behind: {left:?}");
    verify_clean(&env);
}

#[test]
fn a_run_killed_between_task_create_and_start_leaves_no_shim() {
    let env = TestEnv::new("kill-task");
    let args = [
        &format!("from={BUSYBOX}") as &str,
        "exec=echo started",
        "print=stdout",
    ];
    run_killed_at(&env, "task-created", &args);
    assert!(
        !shims(&env.namespace).is_empty(),
        "a created task has its shim"
    );
    assert!(
        secret_dirs(&env.namespace).is_empty(),
        "a step that mounts no secret has no secret directory to leave behind"
    );
    verify_reports(&env, &["container rbuild-", "task rbuild-", "shim "]);

    let out = run(&env, &args).ok();
    assert_eq!(out.stdout, "started\n");
    assert_eq!(out.ran(), 1, "{}", out.stderr);
    let left = everything_left(&env);
    assert!(left.is_empty(), "left behind: {left:?}");
    verify_clean(&env);
}

/// The container record gone, its task's shim and process still running:
/// containerd's API can no longer delete that task, so the next run stops
/// the processes itself.
#[test]
fn a_shim_whose_container_is_gone_is_stopped_by_the_next_run() {
    let env = TestEnv::new("kill-shim");
    let secret = env.dir.path().join("secret");
    std::fs::write(&secret, format!("plaintext-{}", nonce())).unwrap();
    let mut step = start_secret_step(&env, &secret);
    step.signal(Signal::KILL);
    step.finish();
    let containers: Vec<String> = env
        .ctr(&["containers", "ls", "-q"])
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(containers.len(), 1, "{containers:?}");
    delete_container_record(&env.namespace, &containers[0]);
    assert!(env.ctr(&["containers", "ls", "-q"]).trim().is_empty());
    assert!(!shims(&env.namespace).is_empty(), "the shim runs on");
    verify_reports(&env, &["is gone", "shim ", "step process "]);

    let out = run(
        &env,
        &[
            &format!("from={BUSYBOX}"),
            "exec=echo after",
            "print=stdout",
        ],
    )
    .ok();
    assert_eq!(out.stdout, "after\n");
    let left = everything_left(&env);
    assert!(left.is_empty(), "left behind: {left:?}");
    verify_clean(&env);
}

/// Containers.Delete straight through the API (ctr refuses while a task runs).
fn delete_container_record(namespace: &str, id: &str) {
    use rbuild_containerd::containerd_client::services::v1::DeleteContainerRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ctd = rbuild_containerd::Containerd::connect(Path::new(CONTAINERD_SOCKET), namespace)
            .await
            .unwrap();
        ctd.containers()
            .delete(ctd.request(DeleteContainerRequest { id: id.to_string() }))
            .await
            .unwrap();
    });
}

#[test]
fn verify_on_a_fresh_cache_is_clean_and_names_a_missing_root() {
    let env = TestEnv::new("verify");
    let missing = verify(&env);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("index.db"), "{}", missing.stderr);
    assert_eq!(
        run(
            &env,
            &[&format!("from={BUSYBOX}"), "exec=echo hi", "print=stdout"]
        )
        .ok()
        .stdout,
        "hi\n"
    );
    verify_clean(&env);
}
