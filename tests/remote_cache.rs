//! The remote step cache (issue 16): a fleet of runners sharing one cache
//! through a real registry (Debian's docker-registry), seen through the
//! fault proxy, which logs every request and breaks the ones a test picks.
//!
//! Each runner is a `TestEnv`: its own state root and containerd
//! namespace, so it starts with an empty local cache, as an ephemeral CI
//! runner does. Random bytes in a step's output prove whether it ran.

mod common;

use common::fault_proxy::{Fault, FaultProxy, Match, Rule};
use common::{AUTH_REGISTRY, BUSYBOX, Outcome, TestEnv, steps_pipeline};

/// A repository no earlier run has used, on `host`.
fn cache_repo(host: &str) -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{host}/rbuild-test-{nonce:x}/cache")
}

/// Two steps: the first makes random bytes and a 300 kB file, the second
/// (on top of it) prints them. `last` is the second step's command.
fn pipeline_args(last: &str) -> Vec<String> {
    vec![
        format!("from={BUSYBOX}"),
        "exec=head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /rand; head -c 300000 /dev/urandom > /big; echo made".into(),
        format!("exec={last}"),
        "print=stdout".into(),
    ]
}

const PRINT: &str = "echo rand=$(cat /rand) big=$(wc -c < /big) | tee /report";

fn run(env: &TestEnv, flags: &[&str], args: &[String]) -> Outcome {
    let mut cmd = env.command();
    cmd.args(["--progress", "plain"]).args(flags);
    cmd.arg("run").arg(steps_pipeline()).arg("--").args(args);
    Outcome::from(cmd.output().expect("start rbuild"))
}

fn field(out: &Outcome, name: &str) -> String {
    out.stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {:?}\n{}", out.stdout, out.stderr))
        .to_string()
}

/// `cache verify` is clean and the run left nothing behind.
fn assert_consistent(env: &TestEnv) {
    let verify = env.command().args(["cache", "verify"]).output().unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

fn step_snapshots(env: &TestEnv) -> usize {
    env.ctr(&["snapshots", "ls"])
        .lines()
        .filter(|l| l.starts_with("rbuild-step-"))
        .count()
}

#[test]
fn a_fleet_of_runners_shares_one_cache_through_a_registry() {
    let proxy = FaultProxy::start(Vec::new());
    let repo = cache_repo(&proxy.host());
    let args = pipeline_args(PRINT);

    // Runner 1 runs cold and pushes.
    let r1 = TestEnv::new("fleet1");
    let cold = run(&r1, &["--cache-to", &repo], &args).ok();
    assert_eq!(cold.ran(), 2, "{}", cold.stderr);
    assert!(
        cold.stderr
            .contains(&format!("remote cache {repo}: pushed 2 steps")),
        "{}",
        cold.stderr
    );
    let rand = field(&cold, "rand");
    assert_eq!(rand.len(), 16, "{}", cold.stdout);

    // Runner 2, empty, runs it all from the remote cache: no step runs
    // (the same random bytes), and nothing is downloaded but the two
    // entries' manifests: no layer, no base image, no snapshot made.
    let r2 = TestEnv::new("fleet2");
    let blobs_before = proxy.requests(Match::BlobGet);
    let warm = run(&r2, &["--cache-from", &repo], &args).ok();
    assert_eq!(warm.ran(), 0, "{}", warm.stderr);
    assert_eq!(warm.remote_cached(), 2, "{}", warm.stderr);
    assert_eq!(field(&warm, "rand"), rand);
    assert_eq!(
        proxy.requests(Match::BlobGet),
        blobs_before,
        "a fully cached run downloaded blobs: {:?}",
        proxy.log()
    );
    assert_eq!(step_snapshots(&r2), 0);
    assert!(!warm.stderr.contains("pull "), "{}", warm.stderr);

    // Asked for a file the last step wrote, runner 2 downloads that
    // step's layer alone (the file is read from it; no snapshot is made).
    let mut report = args.clone();
    report.push("read=/report".into());
    let out = run(&r2, &["--cache-from", &repo], &report).ok();
    assert_eq!(out.ran(), 0, "{}", out.stderr);
    assert!(
        out.stdout.ends_with(&format!("rand={rand} big=300000\n")),
        "{}",
        out.stdout
    );
    assert_eq!(
        proxy.requests(Match::BlobGet),
        blobs_before + 1,
        "{:?}",
        proxy.log()
    );
    assert_eq!(step_snapshots(&r2), 0);
    assert!(!out.stderr.contains("pull "), "{}", out.stderr);

    // Asked for a file the first step wrote, it makes the step's files:
    // the base image and both layers (the last one looked into first),
    // recorded locally, so that the next run needs no registry.
    let mut read = args.clone();
    read.push("read=/rand".into());
    let files = run(&r2, &["--cache-from", &repo], &read).ok();
    assert_eq!(files.ran(), 0, "{}", files.stderr);
    assert!(files.stdout.ends_with(&rand), "{}", files.stdout);
    assert_eq!(
        proxy.requests(Match::BlobGet),
        blobs_before + 4,
        "{:?}",
        proxy.log()
    );
    assert_eq!(step_snapshots(&r2), 2);
    let local = run(&r2, &[], &read).ok();
    assert_eq!((local.ran(), local.cached()), (0, 2), "{}", local.stderr);
    assert!(local.stdout.ends_with(&rand));

    // Runner 3, empty, after a one-line change runs only the changed step,
    // on the first step's result from the cache.
    let r3 = TestEnv::new("fleet3");
    let changed = pipeline_args(&format!("echo changed=yes; {PRINT}"));
    let third = run(&r3, &["--cache-from", &repo], &changed).ok();
    assert_eq!(third.ran(), 1, "{}", third.stderr);
    assert_eq!(third.remote_cached(), 1, "{}", third.stderr);
    assert_eq!(field(&third, "rand"), rand);
    assert_eq!(field(&third, "big"), "300000");
    assert_eq!(field(&third, "changed"), "yes");
    for env in [&r1, &r2, &r3] {
        assert_consistent(env);
    }
}

#[test]
fn runners_pushing_the_same_keys_at_once_corrupt_nothing() {
    let repo = cache_repo(common::REGISTRY);
    let args = pipeline_args(PRINT);
    let (a, b) = (TestEnv::new("same1"), TestEnv::new("same2"));
    let start = |env: &TestEnv| {
        let mut cmd = env.command();
        cmd.args(["--progress", "plain", "--cache-to", &repo, "run"])
            .arg(steps_pipeline())
            .arg("--")
            .args(&args);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (start(&a), start(&b));
    let (oa, ob) = (
        Outcome::from(ca.wait_with_output().unwrap()).ok(),
        Outcome::from(cb.wait_with_output().unwrap()).ok(),
    );
    let (ra, rb) = (field(&oa, "rand"), field(&ob, "rand"));
    assert_ne!(ra, rb, "both runners ran their steps");

    // Whichever push landed last is whole: a fresh runner reads one
    // runner's result, files included, consistently.
    let c = TestEnv::new("same3");
    let mut read = args.clone();
    read.push("read=/rand".into());
    let out = run(&c, &["--cache-from", &repo], &read).ok();
    assert_eq!(out.ran(), 0, "{}", out.stderr);
    let rand = field(&out, "rand");
    assert!(rand == ra || rand == rb, "{rand} is neither {ra} nor {rb}");
    assert!(out.stdout.ends_with(&rand), "{}", out.stdout);
}

#[test]
fn a_registry_that_fails_never_fails_the_run() {
    let args = pipeline_args(PRINT);

    // Down (nothing listens): lookups stop after the first, pushes warn.
    let env = TestEnv::new("remote-down");
    let down = run(&env, &["--cache-to", "127.0.0.1:9/cache"], &args).ok();
    assert_eq!(down.ran(), 2, "{}", down.stderr);
    assert_eq!(
        down.stderr
            .matches("remote cache 127.0.0.1:9/cache: looking up a step failed")
            .count(),
        1,
        "{}",
        down.stderr
    );
    assert!(
        down.stderr
            .contains("remote cache 127.0.0.1:9/cache: pushing 2 steps failed"),
        "{}",
        down.stderr
    );

    // Uploads refused with 503 (lookups answer): the run succeeds, warned.
    let proxy = FaultProxy::start(vec![Rule::always(Match::Upload, Fault::Status(503))]);
    let repo = cache_repo(&proxy.host());
    let env = TestEnv::new("remote-503");
    let out = run(&env, &["--cache-to", &repo], &args).ok();
    assert_eq!(out.ran(), 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("remote cache {repo}: pushing 2 steps failed")),
        "{}",
        out.stderr
    );
    assert!(proxy.faults() > 0);

    // 401 on --cache-to: a warning that names the repository.
    let repo = cache_repo(AUTH_REGISTRY);
    let env = TestEnv::new("remote-401");
    let out = run(&env, &["--cache-to", &repo], &args).ok();
    assert_eq!(out.ran(), 2, "{}", out.stderr);
    let warning = out
        .stderr
        .lines()
        .find(|l| l.contains("pushing 2 steps failed"))
        .unwrap_or_else(|| panic!("{}", out.stderr));
    assert!(warning.contains(&repo), "{warning}");
    assert!(
        warning.contains("credentials") || warning.contains("401"),
        "{warning}"
    );
}

#[test]
fn a_blob_with_the_wrong_bytes_is_a_miss() {
    let proxy = FaultProxy::start(Vec::new());
    let repo = cache_repo(&proxy.host());
    let mut args = pipeline_args(PRINT);
    args.push("read=/rand".into());
    let first = TestEnv::new("corrupt1");
    run(&first, &["--cache-to", &repo], &args).ok();

    proxy.set_rules(vec![Rule::always(Match::BlobGet, Fault::WrongBytes)]);
    let env = TestEnv::new("corrupt2");
    let out = run(&env, &["--cache-from", &repo], &args).ok();
    assert!(proxy.faults() > 0, "{:?}", proxy.log());
    // The steps whose layers were needed ran here instead.
    assert!(out.ran() >= 1, "{}", out.stderr);
    assert!(out.stderr.contains("was not usable"), "{}", out.stderr);
    let rand = out.stdout.trim_end().rsplit('\n').next().unwrap();
    assert!(
        rand.ends_with(|c: char| c.is_ascii_hexdigit()),
        "{}",
        out.stdout
    );
    assert_consistent(&env);
}

#[test]
fn old_entries_are_pruned_from_the_registry_and_bad_repositories_refused() {
    let repo = cache_repo(common::REGISTRY);
    let args = pipeline_args(PRINT);
    let env = TestEnv::new("remote-prune");
    run(&env, &["--cache-to", &repo], &args).ok();

    let prune = |keep: &str| {
        common::stdout_of(env.command().args([
            "cache",
            "prune",
            "--remote",
            &repo,
            "--keep-duration",
            keep,
        ]))
    };
    let kept = prune("1h");
    assert!(kept.contains("removed 0 entries, kept 2"), "{kept}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let gone = prune("0s");
    assert!(gone.contains("removed 2 entries, kept 0"), "{gone}");
    let fresh = TestEnv::new("remote-prune2");
    let out = run(&fresh, &["--cache-from", &repo], &args).ok();
    assert_eq!(out.ran(), 2, "{}", out.stderr);

    let bad = run(&env, &["--cache-to", &format!("{repo}:main")], &args);
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("--cache-to") && bad.stderr.contains("no tag or digest"),
        "{}",
        bad.stderr
    );
}

#[test]
fn cache_volumes_travel_by_name() {
    let repo = cache_repo(common::REGISTRY);
    let volume = "remote-test-cargo";
    let write = vec![
        format!("from={BUSYBOX}"),
        format!("cache={volume}:/cache"),
        "exec=mkdir -p /cache/deps && head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /cache/deps/token && touch -d @1700000000 /cache/deps/token && echo wrote".into(),
        "print=stdout".into(),
    ];
    let first = TestEnv::new("volume1");
    run(&first, &[], &write).ok();
    let pushed = common::stdout_of(
        first
            .command()
            .args(["cache", "volumes", "push", volume, &repo]),
    );
    assert!(
        pushed.contains(&format!("pushed cache volume {volume:?} to {repo}")),
        "{pushed}"
    );

    // A fresh runner: nothing to pull under another name; the volume by its own.
    let fresh = TestEnv::new("volume2");
    let none = common::stdout_of(fresh.command().args([
        "cache",
        "volumes",
        "pull",
        "no-such-volume",
        &repo,
    ]));
    assert!(none.contains("left as it is"), "{none}");
    let pulled = common::stdout_of(
        fresh
            .command()
            .args(["cache", "volumes", "pull", volume, &repo]),
    );
    assert!(
        pulled.contains(&format!("pulled cache volume {volume:?}")),
        "{pulled}"
    );
    let read = |env: &TestEnv| {
        let args = vec![
            format!("from={BUSYBOX}"),
            format!("cache={volume}:/cache"),
            "exec=echo token=$(cat /cache/deps/token) mtime=$(stat -c %Y /cache/deps/token)".into(),
            "print=stdout".into(),
        ];
        run(env, &[], &args).ok()
    };
    let there = read(&first);
    let here = read(&fresh);
    assert_eq!(field(&here, "token"), field(&there, "token"));
    assert_eq!(field(&here, "mtime"), "1700000000");
    let listed = common::stdout_of(fresh.command().args(["cache", "volumes"]));
    assert!(
        listed.contains(volume) && !listed.contains(".incoming"),
        "{listed}"
    );
}

#[test]
fn a_fresh_runner_with_extra_cas_needs_no_image_to_plan() {
    let repo = cache_repo(common::REGISTRY);
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("corp.crt");
    std::fs::write(
        &pem,
        "-----BEGIN CERTIFICATE-----\nrbuild-test-fleet\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let args = vec![
        format!("from={BUSYBOX}"),
        "exec=mkdir -p /etc/ssl/certs && echo image-root > /etc/ssl/certs/ca-certificates.crt"
            .to_string(),
        "exec=echo lines=$(wc -l < /etc/ssl/certs/ca-certificates.crt) rand=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \\n')".to_string(),
        "print=stdout".to_string(),
    ];
    let with_ca = |env: &TestEnv, flag: &str| {
        let mut cmd = env.command();
        cmd.env("RBUILD_CA_CERTS", &pem)
            .args(["--progress", "plain", flag, &repo, "run"])
            .arg(steps_pipeline())
            .arg("--")
            .args(&args);
        Outcome::from(cmd.output().unwrap()).ok()
    };
    let first = with_ca(&TestEnv::new("ca-fleet1"), "--cache-to");
    assert_eq!(field(&first, "lines"), "4", "{}", first.stdout);
    let fresh = TestEnv::new("ca-fleet2");
    let second = with_ca(&fresh, "--cache-from");
    assert_eq!(second.ran(), 0, "{}", second.stderr);
    assert_eq!(field(&second, "rand"), field(&first, "rand"));
    assert!(!second.stderr.contains("pull "), "{}", second.stderr);
    assert_eq!(step_snapshots(&fresh), 0);
}
