//! Solver logic against a fake worker: which steps run, which hit, what
//! a failure leaves behind. (The same behaviour against real containerd is
//! covered by tests/.)

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rbuild_snapshotter::host_scan::{HostScan, Known};
use rbuild_snapshotter::tree::{HostListing, KnownHashes};
use rbuild_snapshotter::{BlobDesc, ImageRef, PullReport};

use crate::graph::{
    ContainerDef, ContainerOp, DirectoryDef, DirectoryOp, DirectorySource, Expect, FileDef,
    SecretDef, Sharing,
};

use super::interpret::expand_env;

/// The API the solver's tests run under unless they say otherwise.
const V01: crate::api::Api = crate::api::UNDECLARED;
const V02: crate::api::Api = crate::api::Api { major: 0, minor: 2 };
use super::*;

#[derive(Default)]
struct Fake {
    execs: Mutex<Vec<Vec<String>>>,
    /// For each exec, in order: whether it had a network namespace.
    namespaced: Mutex<Vec<bool>>,
    /// containerd's snapshots: they outlive a run, so runs of one harness share them.
    snapshots: Arc<Mutex<HashSet<String>>>,
    counter: AtomicU64,
    pulls: AtomicU64,
    /// Steps whose command says `rendezvous=N` wait inside their exec
    /// until N of them are there at once.
    rendezvous: Mutex<Option<Arc<tokio::sync::Barrier>>>,
}

fn digest(s: &str) -> String {
    format!("sha256:{}", blake3::hash(s.as_bytes()).to_hex())
}

impl Worker for Fake {
    async fn resolve_digest(&self, image: &ImageRef) -> Result<String, SolveError> {
        if image.repository().contains("missing") {
            return Err(SolveError::Image(format!("image {image} not found")));
        }
        Ok(digest(&image.to_string()))
    }

    async fn describe_image(
        &self,
        image: &ImageRef,
        digest_: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, SolveError> {
        let blob = |d: String| BlobDesc {
            media_type: "x".into(),
            digest: d,
            size: 1,
        };
        Ok(ResolvedImage {
            reference: image.to_string(),
            platform: platform.clone(),
            target: blob(digest_.to_string()),
            index_json: None,
            manifest: blob(digest_.to_string()),
            manifest_json: "{}".into(),
            config: blob(digest("config")),
            config_json: serde_json::json!({
                "architecture": "amd64", "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [digest("layer")]},
                "config": {"Env": ["PATH=/bin"], "WorkingDir": "/srv"}
            })
            .to_string(),
            layers: vec![blob(digest("layer"))],
            diff_ids: vec![digest("layer")],
        })
    }

    async fn pull_image(
        &self,
        _image: &ResolvedImage,
    ) -> Result<(Option<SnapshotId>, PullReport), SolveError> {
        self.pulls.fetch_add(1, Ordering::SeqCst);
        Ok((Some(SnapshotId("image-top".into())), PullReport::default()))
    }

    async fn snapshot_exists(&self, snapshot: &SnapshotId) -> Result<bool, SolveError> {
        Ok(self.snapshots.lock().unwrap().contains(&snapshot.0))
    }

    async fn exec(
        &self,
        req: ExecRequest,
        _c: CancellationToken,
    ) -> Result<ExecOutcome, SolveError> {
        tokio::task::yield_now().await;
        // As the real worker: the process starts once the gate opens, with
        // the services' addresses in its hosts.
        let mut req = req;
        if let Some(ready) = req.start_gate.as_ref().and_then(|g| g.take()) {
            let hosts = ready
                .await
                .map_err(|e| SolveError::Internal(format!("not started: {e}")))?;
            if let Some(net) = req.network.as_mut() {
                net.hosts = hosts;
            }
        }
        if let Some(n) = req.args.iter().find_map(|a| a.strip_prefix("rendezvous=")) {
            let barrier = self
                .rendezvous
                .lock()
                .unwrap()
                .get_or_insert_with(|| Arc::new(tokio::sync::Barrier::new(n.parse().unwrap())))
                .clone();
            // A hang detector, not a speed bound: steps run one after the
            // other never all arrive.
            tokio::time::timeout(std::time::Duration::from_secs(30), barrier.wait())
                .await
                .expect("the steps were never all running at once");
        }
        self.execs.lock().unwrap().push(req.args.clone());
        self.namespaced.lock().unwrap().push(req.network.is_some());
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        if let Some(code) = req.args.iter().find_map(|a| a.strip_prefix("exit=")) {
            return Ok(ExecOutcome {
                exit_code: code.parse().unwrap(),
                stdout: vec![],
                stderr: b"line1\nboom\n".to_vec(),
                snapshot: None,
                changes: None,
                upper: None,
                full_filesystem: None,
                commit_ms: 0,
            });
        }
        let name = req.name.0.clone();
        self.snapshots.lock().unwrap().insert(name.clone());
        // A step whose command mentions "same-output" changes the tree the
        // same way whatever else its command says (early cutoff's case).
        let changes = req
            .args
            .iter()
            .any(|a| a.contains("same-output"))
            .then(|| "blake3:fixed-changes".to_string());
        Ok(ExecOutcome {
            changes,
            exit_code: 0,
            // A counter makes every real execution's output unique, like random bytes.
            stdout: format!(
                "{} run {n} in {} env {}",
                req.args.join(" "),
                req.cwd,
                req.env.join(",")
            )
            .into_bytes(),
            stderr: vec![],
            snapshot: Some(SnapshotId(name)),
            upper: None,
            full_filesystem: None,
            commit_ms: 0,
        })
    }

    async fn apply(&self, req: ApplyRequest) -> Result<SnapshotId, SolveError> {
        self.execs
            .lock()
            .unwrap()
            .push(vec![format!("apply {}", req.actions.len())]);
        let name = req.name.0.clone();
        self.snapshots.lock().unwrap().insert(name.clone());
        Ok(SnapshotId(name))
    }

    async fn read(&self, _source: Source, _op: ReadOp) -> Result<ReadAnswer, SolveError> {
        Ok(ReadAnswer::Done)
    }

    async fn keep(&self, _snapshot: &SnapshotId) -> Result<(), SolveError> {
        Ok(())
    }

    async fn usage(&self, _snapshot: &SnapshotId) -> Result<i64, SolveError> {
        Ok(1)
    }

    async fn scan_host(
        &self,
        scan: HostScan,
        known: Known,
    ) -> Result<(HostListing, KnownHashes), SolveError> {
        // Host scans are pure host work: the fake scans for real.
        Ok(rbuild_snapshotter::host_scan::scan(&scan, known)?)
    }

    // Services run for real in tests/services.rs; here a service is a
    // listener on each of its ports, at a loopback address of its own.
    async fn attach(&self) -> Result<Attachment, SolveError> {
        let n = self.counter.fetch_add(1, Ordering::SeqCst) as u32;
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(127, 77, 0, 2)) + n);
        Ok(Attachment {
            id: format!("fake-{n}"),
            netns: PathBuf::from("/nonexistent"),
            ip,
            gateway: std::net::Ipv4Addr::new(127, 77, 0, 1),
        })
    }

    async fn detach(&self, _a: Attachment) -> Result<(), SolveError> {
        Ok(())
    }

    async fn start_service(&self, req: ServiceRequest) -> Result<ServiceHandle, SolveError> {
        let mut listeners = Vec::new();
        for port in &req.ports {
            let l = tokio::net::TcpListener::bind((req.network.attachment.ip, *port))
                .await
                .map_err(|e| SolveError::Internal(format!("fake service listener: {e}")))?;
            listeners.push(l);
        }
        let (tx, exited) = tokio::sync::watch::channel(None);
        Ok(ServiceHandle {
            exited,
            control: Arc::new(FakeService(Mutex::new(Some((tx, listeners))))),
        })
    }
    // Images out are tested against real containerd and registries
    // (tests/images.rs): the fake offers no image verbs.
}

/// A fake service: listeners held until it stops.
type FakeRunning = (
    tokio::sync::watch::Sender<Option<i64>>,
    Vec<tokio::net::TcpListener>,
);
struct FakeService(Mutex<Option<FakeRunning>>);

impl ServiceControl for FakeService {
    fn exec(
        &self,
        _args: Vec<String>,
        _timeout: std::time::Duration,
    ) -> futures::future::BoxFuture<'_, Result<(i64, Vec<u8>), SolveError>> {
        Box::pin(async { Ok((0, Vec::new())) })
    }

    fn stop(
        &self,
        _grace: std::time::Duration,
    ) -> futures::future::BoxFuture<'_, Result<(), SolveError>> {
        if let Some((tx, _)) = self.0.lock().unwrap().take() {
            let _ = tx.send(Some(0));
        }
        Box::pin(async { Ok(()) })
    }
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    index: Arc<Index>,
    snapshots: Arc<Mutex<HashSet<String>>>,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(Index::open(&dir.path().join("index.db")).unwrap());
        Harness {
            _dir: dir,
            index,
            snapshots: Arc::default(),
        }
    }

    /// A solver for one "run" (each run starts with empty in-memory state, like a new process).
    fn run(&self) -> (Arc<Solver<Fake>>, Captured) {
        let fake = Fake {
            snapshots: self.snapshots.clone(),
            ..Fake::default()
        };
        let out = Captured::default();
        let secrets = Arc::new(Secrets::default());
        let progress = Arc::new(Progress::new(
            crate::progress::Mode::Plain,
            Box::new(out.clone()),
            secrets.clone(),
        ));
        let config = SolverConfig {
            platform: Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
            },
            jobs: 4,
            lock_dir: self._dir.path().join("locks"),
            secrets,
            debug_shell: None,
            cancel: CancellationToken::new(),
            outputs: crate::output::OutputStore::new(self._dir.path()),
            pipelines: None,
            extra_ca: None,
            remote: Default::default(),
            expect_cached: false,
        };
        (Solver::new(fake, self.index.clone(), progress, config), out)
    }
}

fn pipeline(steps: &[&[&str]], env: Option<(&str, &str)>) -> ContainerDef {
    let mut ops = vec![ContainerOp::From {
        address: "127.0.0.1:5000/busybox:latest".into(),
    }];
    for (i, s) in steps.iter().enumerate() {
        if i == 1
            && let Some((n, v)) = env
        {
            ops.push(ContainerOp::WithEnvVariable {
                name: n.into(),
                value: v.into(),
                expand: false,
            });
        }
        ops.push(exec(s));
    }
    let at = (1..=ops.len())
        .map(|i| Some(format!("ci.rs:{i}")))
        .collect();
    ContainerDef { ops, at }
}

fn exec(args: &[&str]) -> ContainerOp {
    ContainerOp::WithExec {
        args: args.iter().map(|a| a.to_string()).collect(),
        expect: Expect::Success,
        stdin: None,
        use_entrypoint: false,
    }
}

fn execs(s: &Solver<Fake>) -> Vec<String> {
    s.worker()
        .execs
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.join(" "))
        .collect()
}

async fn stdout(s: &Arc<Solver<Fake>>, def: &ContainerDef) -> String {
    let st = s.container(def, V01).await.unwrap();
    String::from_utf8(st.last_exec("stdout").unwrap().stdout.clone()).unwrap()
}

#[tokio::test]
async fn a_second_run_executes_nothing_and_returns_the_same_bytes() {
    let h = Harness::new();
    let def = pipeline(&[&["a"], &["b"], &["c"]], None);
    let (first, _) = h.run();
    let out1 = stdout(&first, &def).await;
    assert_eq!(execs(&first), ["a", "b", "c"]);
    assert_eq!(first.worker().pulls.load(Ordering::SeqCst), 1);

    let (second, progress) = h.run();
    let out2 = stdout(&second, &def).await;
    assert_eq!(out1, out2);
    assert!(execs(&second).is_empty());
    assert_eq!(
        second.worker().pulls.load(Ordering::SeqCst),
        0,
        "a fully cached run pulls nothing"
    );
    let text = String::from_utf8(progress.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.matches("CACHED").count(), 3, "{text}");
}

#[tokio::test]
async fn changing_argv_reruns_that_step_and_those_after_it() {
    let h = Harness::new();
    let (first, _) = h.run();
    stdout(&first, &pipeline(&[&["a"], &["b"], &["c"]], None)).await;
    let (second, _) = h.run();
    stdout(&second, &pipeline(&[&["a"], &["B"], &["c"]], None)).await;
    assert_eq!(execs(&second), ["B", "c"]);
}

#[tokio::test]
async fn changing_env_reruns_the_steps_after_it_only() {
    let h = Harness::new();
    let (first, _) = h.run();
    stdout(
        &first,
        &pipeline(&[&["a"], &["b"], &["c"]], Some(("X", "1"))),
    )
    .await;
    let (second, _) = h.run();
    let out = stdout(
        &second,
        &pipeline(&[&["a"], &["b"], &["c"]], Some(("X", "2"))),
    )
    .await;
    assert_eq!(execs(&second), ["b", "c"]);
    assert!(out.contains("X=2"), "{out}");
}

#[tokio::test]
async fn a_failed_step_is_not_cached_and_is_retried() {
    let h = Harness::new();
    let def = pipeline(&[&["a"], &["exit=3"], &["c"]], None);
    let (first, progress) = h.run();
    let err = first.container(&def, V01).await.unwrap_err();
    match &err {
        SolveError::ExecFailed {
            command,
            exit_code,
            stderr_tail,
            ..
        } => {
            assert_eq!(command, "exit=3");
            assert_eq!(*exit_code, 3);
            assert!(stderr_tail.ends_with("boom"), "{stderr_tail}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("exit=3") && msg.contains("exit code: 3") && msg.contains("boom"),
        "{msg}"
    );
    assert!(
        msg.contains("created at: ci.rs:3"),
        "the pipeline call is named: {msg}"
    );
    let text = String::from_utf8(progress.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("FAILED") && text.contains("boom"), "{text}");
    assert_eq!(
        execs(&first),
        ["a", "exit=3"],
        "the step after a failure does not run"
    );

    let (second, _) = h.run();
    assert!(second.container(&def, V01).await.is_err());
    assert_eq!(
        execs(&second),
        ["exit=3"],
        "the failure was retried, its predecessor hit"
    );
}

#[tokio::test]
async fn identical_work_requested_twice_at_once_runs_once() {
    let h = Harness::new();
    let (s, _) = h.run();
    let def = pipeline(&[&["a"], &["b"]], None);
    let (x, y) = tokio::join!(s.container(&def, V01), s.container(&def, V01));
    x.unwrap();
    y.unwrap();
    assert_eq!(execs(&s), ["a", "b"]);
}

#[tokio::test]
async fn independent_branches_run_concurrently() {
    let h = Harness::new();
    let (s, _) = h.run();
    // Each branch's step waits inside its exec until all four are there.
    let defs: Vec<_> = (0..4)
        .map(|i| pipeline(&[&[&format!("branch{i}"), "rendezvous=4"]], None))
        .collect();
    let results = futures::future::join_all(defs.iter().map(|d| s.container(d, V01))).await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(execs(&s).len(), 4);
}

#[tokio::test]
async fn a_values_inputs_from_independent_branches_run_at_once_without_a_join() {
    let h = Harness::new();
    let (s, _) = h.run();
    // One container; its three files come from three branches whose steps
    // each wait inside their exec until all three are there: solved one
    // after the other, they never all arrive.
    let mut def = pipeline(&[], None);
    for i in 0..3 {
        let branch = pipeline(&[&[&format!("branch{i}"), "rendezvous=3"]], None);
        def.ops.push(ContainerOp::WithFile {
            path: format!("/from{i}"),
            file: crate::graph::FileDef::Container {
                container: branch,
                path: "/out".into(),
            },
            permissions: None,
            owner: None,
        });
    }
    def.ops.push(exec(&["final"]));
    def.at.clear();
    s.container(&def, V01).await.unwrap();
    let ran = execs(&s);
    let branches: HashSet<&str> = ran[..3].iter().map(String::as_str).collect();
    let want = HashSet::from([
        "branch0 rendezvous=3",
        "branch1 rendezvous=3",
        "branch2 rendezvous=3",
    ]);
    assert_eq!(branches, want, "{ran:?}");
    assert_eq!(ran.last().map(String::as_str), Some("final"), "{ran:?}");
}

#[tokio::test]
async fn a_lost_snapshot_is_rebuilt_when_a_later_step_needs_it() {
    let h = Harness::new();
    let (first, _) = h.run();
    stdout(&first, &pipeline(&[&["a"], &["b"]], None)).await;
    // containerd lost the snapshots (pruned behind rbuild's back).
    h.snapshots.lock().unwrap().clear();
    let (second, _) = h.run();
    stdout(&second, &pipeline(&[&["a"], &["b"], &["c"]], None)).await;
    assert_eq!(
        execs(&second),
        ["a", "b", "c"],
        "each lost ancestor is rebuilt, in order, before the new step"
    );
    // Their rows were rewritten: a third run hits everything.
    let (third, _) = h.run();
    stdout(&third, &pipeline(&[&["a"], &["b"], &["c"]], None)).await;
    assert!(execs(&third).is_empty());
}

#[tokio::test]
async fn image_defaults_apply_and_workdir_resolves_relative_paths() {
    let h = Harness::new();
    let (s, _) = h.run();
    let mut def = pipeline(&[], None);
    def.ops.push(ContainerOp::WithWorkdir {
        path: "sub/../app".into(),
    });
    def.ops.push(exec(&["pwd"]));
    let out = stdout(&s, &def).await;
    assert!(out.contains("in /srv/app"), "{out}");
    assert!(out.contains("PATH=/bin"), "{out}");
}

#[tokio::test]
async fn bad_input_is_a_clear_error() {
    let h = Harness::new();
    let (s, _) = h.run();
    let no_image = ContainerDef {
        at: vec![Some("ci.rs:7".into())],
        ops: vec![exec(&["true"])],
    };
    let e = s.container(&no_image, V01).await.unwrap_err().to_string();
    assert!(e.contains(".from("), "{e}");
    let st = s.container(&pipeline(&[], None), V01).await.unwrap();
    let e = st.last_exec("stdout").unwrap_err().to_string();
    assert!(e.contains("with_exec"), "{e}");
    let missing = ContainerDef {
        at: vec![],
        ops: vec![ContainerOp::From {
            address: "127.0.0.1:5000/missing:1".into(),
        }],
    };
    let e = s.container(&missing, V01).await.unwrap_err().to_string();
    assert!(e.contains("127.0.0.1:5000/missing:1"), "{e}");
}

#[test]
fn join_path_behaves_like_cd() {
    assert_eq!(join_path("/", "src"), "/src");
    assert_eq!(join_path("/a/b", "../c"), "/a/c");
    assert_eq!(join_path("/a", "/abs/./x"), "/abs/x");
    assert_eq!(join_path("/", ".."), "/");
}

#[tokio::test]
async fn identical_changes_let_the_next_step_hit_early_cutoff() {
    let h = Harness::new();
    let (first, _) = h.run();
    stdout(
        &first,
        &pipeline(&[&["make same-output v1"], &["next"]], None),
    )
    .await;
    let (second, progress) = h.run();
    stdout(
        &second,
        &pipeline(&[&["make same-output v2"], &["next"]], None),
    )
    .await;
    assert_eq!(
        execs(&second),
        ["make same-output v2"],
        "the changed step ran, produced the same tree, and the next one hit"
    );
    let text = String::from_utf8(progress.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("exec next CACHED"), "{text}");
}

fn secret_pipeline(value: &str, volume: &str) -> ContainerDef {
    let mut def = pipeline(&[], None);
    def.ops.push(ContainerOp::WithSecretVariable {
        name: "TOKEN".into(),
        secret: SecretDef {
            name: "token".into(),
            uri: None,
            plaintext: Some(value.into()),
        },
    });
    def.ops.push(ContainerOp::WithMountedCache {
        path: "/cache".into(),
        volume: volume.into(),
        sharing: Sharing::Shared,
    });
    def.ops.push(exec(&["use-token"]));
    def
}

#[tokio::test]
async fn secret_values_and_volume_contents_stay_out_of_keys_but_names_do_not() {
    let h = Harness::new();
    let (first, _) = h.run();
    stdout(&first, &secret_pipeline("value-one", "deps")).await;
    let (second, _) = h.run();
    stdout(&second, &secret_pipeline("value-two", "deps")).await;
    assert!(
        execs(&second).is_empty(),
        "a new secret value is not a new key"
    );
    let (third, _) = h.run();
    stdout(&third, &secret_pipeline("value-two", "other-volume")).await;
    assert_eq!(
        execs(&third),
        ["use-token"],
        "another volume is another key"
    );
}

#[tokio::test]
async fn file_operations_are_cached_steps_too() {
    let h = Harness::new();
    let mut def = pipeline(&[], None);
    def.ops.push(ContainerOp::WithNewFile {
        path: "a.txt".into(),
        contents: "hello".into(),
        permissions: None,
        owner: None,
    });
    def.ops.push(exec(&["cat", "a.txt"]));
    let (first, _) = h.run();
    stdout(&first, &def).await;
    assert_eq!(execs(&first), ["apply 1", "cat a.txt"]);
    let (second, _) = h.run();
    stdout(&second, &def).await;
    assert!(execs(&second).is_empty());
    if let ContainerOp::WithNewFile { contents, .. } = &mut def.ops[1] {
        *contents = "changed".into();
    }
    let (third, _) = h.run();
    stdout(&third, &def).await;
    assert_eq!(execs(&third), ["apply 1", "cat a.txt"]);
}

#[test]
fn env_expansion() {
    let env = |n: &str| match n {
        "HOME" => Some("/root".to_string()),
        "V" => Some("1".to_string()),
        _ => None,
    };
    assert_eq!(
        expand_env("$HOME/bin:${V}x:$NOPE:$", env),
        "/root/bin:1x::$"
    );
}

// ---------------------------------------------------------------- services

use crate::graph::{PortForwardDef, ServiceDef, ServiceSource};
use services::ServiceKind;

/// A service of the fake image running `args` (the fake image has no
/// entrypoint or default args), with `extra` ops on its container first.
fn service_def(extra: Vec<ContainerOp>, args: &[&str]) -> ServiceDef {
    let mut container = pipeline(&[], None);
    container.ops.extend(extra);
    ServiceDef {
        source: ServiceSource::Container {
            container,
            args: args.iter().map(|a| a.to_string()).collect(),
            use_entrypoint: false,
            ready_log: None,
            ready_timeout_ms: None,
            private: false,
        },
        hostname: None,
    }
}

fn port(port: u16) -> ContainerOp {
    ContainerOp::WithExposedPort {
        port,
        protocol: "tcp".into(),
    }
}

fn bound(alias: &str, service: &ServiceDef, args: &[&str]) -> ContainerDef {
    let mut def = pipeline(&[], None);
    def.ops.push(ContainerOp::WithServiceBinding {
        alias: alias.into(),
        service: service.clone(),
    });
    def.ops.push(exec(args));
    def
}

async fn consumer_key(s: &Arc<Solver<Fake>>, def: &ContainerDef) -> crate::key::CacheKey {
    s.container(def, V01)
        .await
        .unwrap()
        .last_exec("key")
        .unwrap()
        .key
}

#[tokio::test]
async fn a_service_plan_is_stable_across_runs_and_starts_nothing() {
    let h = Harness::new();
    let def = service_def(vec![exec(&["build"]), port(5432), port(80)], &["serve"]);
    let (first, _) = h.run();
    let a = first.service(&def, V01).await.unwrap();
    assert_eq!(
        execs(&first),
        ["build"],
        "its build step ran, the service did not"
    );
    assert_eq!(a.identity.len(), 64);
    assert_eq!(a.hostname, format!("svc-{}", &a.identity[..12]));
    assert!(
        Arc::ptr_eq(&a, &first.service(&def, V01).await.unwrap()),
        "planned once per run"
    );
    let ServiceKind::Container {
        args,
        ports,
        cwd,
        ready_timeout,
        ..
    } = &a.kind
    else {
        panic!("a container service: {a:?}")
    };
    assert_eq!(args, &["serve"]);
    assert_eq!(ports, &[(5432, "tcp".into()), (80, "tcp".into())]);
    assert_eq!(cwd, "/srv");
    assert_eq!(*ready_timeout, services::DEFAULT_READY_TIMEOUT);
    assert!(
        a.description.contains(&a.hostname) && a.description.contains("5432/tcp"),
        "{}",
        a.description
    );

    let (second, _) = h.run();
    let b = second.service(&def, V01).await.unwrap();
    assert!(execs(&second).is_empty(), "the build step hit the cache");
    assert_eq!((&a.identity, &a.hostname), (&b.identity, &b.hostname));

    let named = ServiceDef {
        hostname: Some("db".into()),
        ..def.clone()
    };
    let c = second.service(&named, V01).await.unwrap();
    assert_eq!(c.hostname, "db");
    assert_ne!(
        c.identity, a.identity,
        "with_hostname is part of the identity"
    );
}

#[tokio::test]
async fn endpoints_are_host_and_port_from_planning() {
    let h = Harness::new();
    let (s, _) = h.run();
    let def = ServiceDef {
        hostname: Some("web".into()),
        ..service_def(vec![port(8080), port(9090)], &["serve"])
    };
    let plan = s.service(&def, V01).await.unwrap();
    let ep = |p, sc| services::endpoint(&plan, p, sc).unwrap();
    assert_eq!(ep(None, None), "web:8080", "the first exposed port");
    assert_eq!(ep(Some(9090), None), "web:9090");
    assert_eq!(ep(None, Some("http")), "http://web:8080");

    let none = s
        .service(&service_def(vec![], &["serve"]), V01)
        .await
        .unwrap();
    let e = services::endpoint(&none, None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&none.hostname)
            && e.contains("exposes no port")
            && e.contains("with_exposed_port"),
        "{e}"
    );
    assert_eq!(
        services::endpoint(&none, Some(7), None).unwrap(),
        format!("{}:7", none.hostname)
    );

    let host = ServiceDef {
        source: ServiceSource::Host {
            ports: vec![
                PortForwardDef {
                    frontend: Some(80),
                    backend: 8080,
                },
                PortForwardDef {
                    frontend: None,
                    backend: 9000,
                },
            ],
        },
        hostname: None,
    };
    let plan = s.service(&host, V01).await.unwrap();
    assert!(
        matches!(&plan.kind, ServiceKind::Host { ports } if ports == &[(Some(80), 8080), (None, 9000)])
    );
    assert_eq!(
        services::endpoint(&plan, None, None).unwrap(),
        format!("{}:80", plan.hostname),
        "a host service is reached at its frontend port"
    );
    assert_eq!(s.service(&host, V01).await.unwrap().identity, plan.identity);
}

#[tokio::test]
async fn a_service_runs_entrypoint_and_default_args_unless_given_args() {
    let h = Harness::new();
    let (s, _) = h.run();
    let cmd = vec![
        ContainerOp::WithEntrypoint {
            args: vec!["docker-entrypoint.sh".into()],
        },
        ContainerOp::WithDefaultArgs {
            args: vec!["postgres".into()],
        },
    ];
    let args_of = |plan: &ServicePlan| match &plan.kind {
        ServiceKind::Container { args, .. } => args.join(" "),
        other => panic!("{other:?}"),
    };
    let plain = s
        .service(&service_def(cmd.clone(), &[]), V01)
        .await
        .unwrap();
    assert_eq!(args_of(&plain), "docker-entrypoint.sh postgres");
    let given = s
        .service(&service_def(cmd.clone(), &["redis"]), V01)
        .await
        .unwrap();
    assert_eq!(args_of(&given), "redis");
    let mut with_entry = service_def(cmd, &["redis"]);
    if let ServiceSource::Container { use_entrypoint, .. } = &mut with_entry.source {
        *use_entrypoint = true;
    }
    let with_entry = s.service(&with_entry, V01).await.unwrap();
    assert_eq!(args_of(&with_entry), "docker-entrypoint.sh redis");
}

#[tokio::test]
async fn bad_services_are_clear_errors() {
    let h = Harness::new();
    let (s, _) = h.run();
    let e = s
        .service(&service_def(vec![], &[]), V01)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("127.0.0.1:5000/busybox:latest")
            && e.contains("give args")
            && e.contains("with_entrypoint"),
        "{e}"
    );
    let bad_host = ServiceDef {
        hostname: Some("my_db".into()),
        ..service_def(vec![], &["serve"])
    };
    let e = s.service(&bad_host, V01).await.unwrap_err().to_string();
    assert!(
        e.starts_with("with_hostname: hostname \"my_db\" is not a hostname"),
        "{e}"
    );
    let e = s
        .container(
            &bound("-db", &service_def(vec![], &["serve"]), &["psql"]),
            V01,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("with_service_binding: alias \"-db\" is not a hostname"),
        "{e}"
    );
    let mut bad_log = service_def(vec![], &["serve"]);
    if let ServiceSource::Container { ready_log, .. } = &mut bad_log.source {
        *ready_log = Some("(unclosed".into());
    }
    let e = s.service(&bad_log, V01).await.unwrap_err().to_string();
    assert!(
        e.contains("ready_log \"(unclosed\" is not a regular expression"),
        "{e}"
    );
    let e = s
        .service(
            &service_def(
                vec![ContainerOp::WithDockerHealthcheck {
                    args: vec![],
                    shell: false,
                    interval_ms: None,
                    timeout_ms: None,
                    start_period_ms: None,
                    retries: None,
                }],
                &["serve"],
            ),
            V01,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("with_docker_healthcheck: no command"), "{e}");
}

#[test]
fn a_step_without_bindings_keeps_the_key_it_had_before_services() {
    let exec = |bindings| ExecPlan {
        args: vec!["echo".into(), "hi".into()],
        at: None,
        env: vec![("A".into(), EnvValue::Plain("1".into()))],
        cwd: "/src".into(),
        user: "1000".into(),
        mounts: vec![("/cache".into(), MountSpec::Temp)],
        stdin: Some("in".into()),
        expect: Expect::Success,
        bindings,
        own_network: false,
        api: "0.1".into(),
    };
    let key = StepPlan::exec(Tree::Empty, exec(Vec::new()), "linux/amd64").key;
    // The key as it was made before services existed, field by field.
    let before = crate::key::KeyBuilder::new("exec")
        .list("args", &["echo", "hi"])
        .list("env", &["A=1"])
        .field("workdir", "/src")
        .field("user", "1000")
        .field("platform", "linux/amd64")
        .field("input.rootfs", "empty")
        .list("mounts", &["/cache\0tmpfs"])
        .field("stdin", &blake3::hash(b"in").to_hex())
        .field("expect", "success")
        .finish();
    assert_eq!(key, before);
    assert_eq!(
        key.to_hex(),
        "b7119b607e0c2178d78ee42fe0f2f2f0236a6d66f9b80fdd6701ac1719a5b862",
        "a bindings-free exec key (rbuild-key-v2) must not change"
    );
}

#[tokio::test]
async fn a_changed_service_changes_its_consumers_keys_and_private_does_not() {
    let h = Harness::new();
    let (s, _) = h.run();
    let db = service_def(vec![port(5432)], &["postgres"]);
    let plain = consumer_key(&s, &pipeline(&[&["psql"]], None)).await;
    let with_db = consumer_key(&s, &bound("db", &db, &["psql"])).await;
    assert_ne!(plain, with_db, "a binding is part of the key");

    let changed = service_def(vec![port(5432)], &["postgres", "-c", "fsync=off"]);
    assert_ne!(
        with_db,
        consumer_key(&s, &bound("db", &changed, &["psql"])).await,
        "another service definition is another key"
    );
    let mut env = db.clone();
    if let ServiceSource::Container { container, .. } = &mut env.source {
        container.ops.push(ContainerOp::WithEnvVariable {
            name: "POSTGRES_PASSWORD".into(),
            value: "x".into(),
            expand: false,
        });
    }
    assert_ne!(
        with_db,
        consumer_key(&s, &bound("db", &env, &["psql"])).await
    );
    assert_ne!(
        with_db,
        consumer_key(&s, &bound("pg", &db, &["psql"])).await,
        "the alias is part of the key"
    );

    let mut private = db.clone();
    if let ServiceSource::Container { private: p, .. } = &mut private.source {
        *p = true;
    }
    assert_eq!(
        with_db,
        consumer_key(&s, &bound("db", &private, &["psql"])).await,
        "a private instance runs the same service"
    );
    let healthchecked = service_def(
        vec![
            port(5432),
            ContainerOp::WithDockerHealthcheck {
                args: vec!["pg_isready".into()],
                shell: false,
                interval_ms: None,
                timeout_ms: None,
                start_period_ms: None,
                retries: None,
            },
        ],
        &["postgres"],
    );
    assert_ne!(
        s.service(&healthchecked, V01).await.unwrap().identity,
        s.service(&db, V01).await.unwrap().identity,
        "a healthcheck is part of the identity"
    );
}

#[tokio::test]
async fn a_healthcheck_changes_no_step_key_and_a_later_binding_replaces_an_alias() {
    let h = Harness::new();
    let (s, _) = h.run();
    let mut checked = pipeline(&[], None);
    checked.ops.push(ContainerOp::WithDockerHealthcheck {
        args: vec!["true".into()],
        shell: false,
        interval_ms: None,
        timeout_ms: None,
        start_period_ms: None,
        retries: None,
    });
    checked.ops.push(exec(&["a"]));
    assert_eq!(
        consumer_key(&s, &checked).await,
        consumer_key(&s, &pipeline(&[&["a"]], None)).await
    );

    let one = service_def(vec![], &["one"]);
    let two = service_def(vec![], &["two"]);
    let mut twice = pipeline(&[], None);
    for service in [&one, &two] {
        twice.ops.push(ContainerOp::WithServiceBinding {
            alias: "db".into(),
            service: service.clone(),
        });
    }
    twice.ops.push(exec(&["psql"]));
    let st = s.container(&twice, V01).await.unwrap();
    assert_eq!(st.bindings.len(), 1);
    assert_eq!(
        st.bindings[0].service.identity,
        s.service(&two, V01).await.unwrap().identity
    );
    let StepKind::Exec(plan) = &st.last_exec.as_ref().unwrap().plan.kind else {
        panic!("an exec")
    };
    assert_eq!(plan.bindings.len(), 1, "the step carries its bindings");
    assert_eq!(
        consumer_key(&s, &twice).await,
        consumer_key(&s, &bound("db", &two, &["psql"])).await
    );
}

#[tokio::test]
async fn a_service_binds_services_of_its_own_and_their_change_is_its_change() {
    let h = Harness::new();
    let (s, _) = h.run();
    let api = |db_args: &[&str]| {
        service_def(
            vec![
                ContainerOp::WithServiceBinding {
                    alias: "db".into(),
                    service: service_def(vec![port(5432)], db_args),
                },
                port(8080),
            ],
            &["api"],
        )
    };
    let plan = s.service(&api(&["postgres"]), V01).await.unwrap();
    assert_eq!(plan.bindings.len(), 1);
    assert_eq!(plan.bindings[0].alias, "db");
    assert_eq!(
        plan.bindings[0].service.identity,
        s.service(&service_def(vec![port(5432)], &["postgres"]), V01)
            .await
            .unwrap()
            .identity
    );
    let other = s.service(&api(&["mysqld"]), V01).await.unwrap();
    assert_ne!(plan.identity, other.identity);
    assert_ne!(plan.hostname, other.hostname);
    assert_ne!(
        consumer_key(&s, &bound("api", &api(&["postgres"]), &["curl"])).await,
        consumer_key(&s, &bound("api", &api(&["mysqld"]), &["curl"])).await,
        "a consumer of the api reruns when the api's database changes"
    );
}

fn host_dir(path: &std::path::Path, ops: Vec<DirectoryOp>) -> DirectoryDef {
    DirectoryDef {
        source: DirectorySource::Host {
            path: path.display().to_string(),
            include: vec![],
            exclude: vec![],
            gitignore: false,
        },
        ops,
    }
}

fn mounted(dir: DirectoryDef, command: &[&str]) -> ContainerDef {
    let mut def = pipeline(&[], None);
    def.ops.push(ContainerOp::WithMountedDirectory {
        path: "/src".into(),
        directory: dir,
    });
    def.ops.push(exec(command));
    def
}

#[tokio::test]
async fn a_filtered_or_narrowed_host_directory_is_identified_by_what_it_kept() {
    let h = Harness::new();
    let host = tempfile::tempdir().unwrap();
    let write = |rel: &str, s: &str| {
        let p = host.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    write("src/main.rs", "fn main() {}");
    write("target/debug/app", "built 1");
    let filtered = mounted(
        host_dir(
            host.path(),
            vec![DirectoryOp::Filter {
                include: vec![],
                exclude: vec!["target/".into()],
            }],
        ),
        &["ls", "filtered"],
    );
    let narrowed = mounted(
        host_dir(
            host.path(),
            vec![DirectoryOp::Directory { path: "src".into() }],
        ),
        &["ls", "narrowed"],
    );
    let (first, _) = h.run();
    stdout(&first, &filtered).await;
    stdout(&first, &narrowed).await;
    assert_eq!(
        execs(&first),
        ["apply 1", "ls filtered", "apply 1", "ls narrowed"],
        "each imported (no filter step of its own), then run"
    );
    // A change in what the filter excludes (and outside src/) changes neither.
    write("target/debug/app", "built 2, longer");
    write("target/new", "x");
    let (second, _) = h.run();
    stdout(&second, &filtered).await;
    stdout(&second, &narrowed).await;
    assert!(execs(&second).is_empty(), "{:?}", execs(&second));
    // A change in what they keep runs both again.
    write("src/main.rs", "fn main() { println!() }");
    let (third, _) = h.run();
    stdout(&third, &filtered).await;
    stdout(&third, &narrowed).await;
    assert_eq!(
        execs(&third),
        ["apply 1", "ls filtered", "apply 1", "ls narrowed"]
    );
}

#[tokio::test]
async fn the_same_file_reached_through_the_host_and_with_new_file_is_one_input() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new();
    let host = tempfile::tempdir().unwrap();
    let path = host.path().join("a.txt");
    std::fs::write(&path, "hello").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let with = |file: FileDef| {
        let mut def = pipeline(&[], None);
        def.ops.push(ContainerOp::WithFile {
            path: "/a.txt".into(),
            file,
            permissions: None,
            owner: None,
        });
        def.ops.push(exec(&["cat", "/a.txt"]));
        def
    };
    let from_host = with(FileDef::Host {
        path: path.display().to_string(),
    });
    let written = |contents: &str| {
        with(FileDef::Directory {
            directory: DirectoryDef {
                source: DirectorySource::Empty,
                ops: vec![DirectoryOp::WithNewFile {
                    path: "a.txt".into(),
                    contents: contents.into(),
                    permissions: None,
                }],
            },
            path: "a.txt".into(),
        })
    };
    let (first, _) = h.run();
    let out = stdout(&first, &from_host).await;
    assert_eq!(execs(&first), ["apply 1", "cat /a.txt"]);
    let (second, _) = h.run();
    assert_eq!(stdout(&second, &written("hello")).await, out);
    assert_eq!(
        execs(&second),
        ["apply 1"],
        "only the write itself: the copy and the command hit the host route's entries"
    );
    let (third, _) = h.run();
    stdout(&third, &written("hello!")).await;
    assert_eq!(execs(&third), ["apply 1", "apply 1", "cat /a.txt"]);
}

fn entrypoint_then_exec(default_args: &[&str]) -> ContainerDef {
    let mut def = pipeline(&[], None);
    def.ops.push(ContainerOp::WithDefaultArgs {
        args: default_args.iter().map(|a| a.to_string()).collect(),
    });
    def.ops.push(ContainerOp::WithEntrypoint {
        args: vec!["/app".into()],
    });
    // No args: the entrypoint with the default args.
    def.ops.push(exec(&[]));
    def
}

#[tokio::test]
async fn with_entrypoint_resets_the_default_args_from_api_0_2_on() {
    let h = Harness::new();
    let (s, _) = h.run();
    let def = entrypoint_then_exec(&["serve", "--port=80"]);
    let old = s.container(&def, V01).await.unwrap();
    assert_eq!(old.default_args, ["serve", "--port=80"], "0.1 keeps them");
    let new = s.container(&def, V02).await.unwrap();
    assert!(new.default_args.is_empty(), "{:?}", new.default_args);
    assert_eq!(execs(&s), ["/app serve --port=80", "/app"]);
    // Default args set after the entrypoint are the new entrypoint's own.
    let mut after = pipeline(&[], None);
    after.ops.push(ContainerOp::WithEntrypoint {
        args: vec!["/app".into()],
    });
    after.ops.push(ContainerOp::WithDefaultArgs {
        args: vec!["run".into()],
    });
    let st = s.container(&after, V02).await.unwrap();
    assert_eq!(
        (st.entrypoint, st.default_args),
        (vec!["/app".to_string()], vec!["run".to_string()])
    );
}

/// The key of `def`'s last step under API 0.1 and under 0.2, in that order.
async fn keys_under_both(s: &Arc<Solver<Fake>>, def: &ContainerDef) -> [crate::key::CacheKey; 2] {
    let mut keys = Vec::new();
    for api in [V01, V02] {
        keys.push(
            s.container(def, api)
                .await
                .unwrap()
                .last_exec("k")
                .unwrap()
                .key,
        );
    }
    [keys[0], keys[1]]
}

#[tokio::test]
async fn every_step_gets_a_network_of_its_own_from_api_0_2_on_and_a_key_that_says_so() {
    let h = Harness::new();
    let (s, _) = h.run();
    let [old, new] = keys_under_both(&s, &pipeline(&[&["hostname"]], None)).await;
    assert_ne!(old, new, "a 0.1 step and a 0.2 step never share a result");
    assert_eq!(execs(&s), ["hostname", "hostname"], "both ran");
    assert_eq!(*s.worker().namespaced.lock().unwrap(), [false, true]);

    // A step that binds a service has always had a namespace: its key is
    // the same under both.
    let (s, _) = h.run();
    let db = service_def(vec![port(5432)], &["postgres"]);
    let [old, new] = keys_under_both(&s, &bound("db", &db, &["psql"])).await;
    assert_eq!(old, new);
    assert_eq!(execs(&s), ["psql"], "the second hit the first's result");
    assert_eq!(*s.worker().namespaced.lock().unwrap(), [true]);
}
