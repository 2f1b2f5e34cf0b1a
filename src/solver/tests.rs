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

use crate::graph::{ContainerDef, ContainerOp, Expect, SecretDef, Sharing};

use super::interpret::expand_env;
use super::*;

#[derive(Default)]
struct Fake {
    execs: Mutex<Vec<Vec<String>>>,
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
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        if let Some(code) = req.args.iter().find_map(|a| a.strip_prefix("exit=")) {
            return Ok(ExecOutcome {
                exit_code: code.parse().unwrap(),
                stdout: vec![],
                stderr: b"line1\nboom\n".to_vec(),
                snapshot: None,
                changes: None,
                full_filesystem: None,
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
            full_filesystem: None,
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

    async fn attach(&self) -> Result<Attachment, SolveError> {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        Ok(Attachment {
            id: format!("fake-{n}"),
            netns: format!("/nonexistent/netns/fake-{n}").into(),
            ip: std::net::Ipv4Addr::new(10, 0, 0, 2 + (n % 250) as u8),
            gateway: std::net::Ipv4Addr::new(10, 0, 0, 1),
        })
    }

    async fn detach(&self, _a: Attachment) -> Result<(), SolveError> {
        Ok(())
    }

    async fn start_service(&self, _req: ServiceRequest) -> Result<ServiceHandle, SolveError> {
        Err(SolveError::Internal("services are not in the fake".into()))
    }
    // Images out are tested against real containerd and registries
    // (tests/images.rs): the fake offers no image verbs.
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
    let st = s.container(def).await.unwrap();
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
    let err = first.container(&def).await.unwrap_err();
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
    assert!(second.container(&def).await.is_err());
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
    let (x, y) = tokio::join!(s.container(&def), s.container(&def));
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
    let results = futures::future::join_all(defs.iter().map(|d| s.container(d))).await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(execs(&s).len(), 4);
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
    let e = s.container(&no_image).await.unwrap_err().to_string();
    assert!(e.contains(".from("), "{e}");
    let st = s.container(&pipeline(&[], None)).await.unwrap();
    let e = st.last_exec("stdout").unwrap_err().to_string();
    assert!(e.contains("with_exec"), "{e}");
    let missing = ContainerDef {
        at: vec![],
        ops: vec![ContainerOp::From {
            address: "127.0.0.1:5000/missing:1".into(),
        }],
    };
    let e = s.container(&missing).await.unwrap_err().to_string();
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
