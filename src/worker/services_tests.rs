//! The worker's service verbs against real containerd, runc, CNI and the
//! test registry (`make setup`): a service reachable by its alias from a
//! step in another namespace, exec in it, and a stop that leaves nothing.
//! (The engine is a binary crate, so these live beside the code rather
//! than in tests/.)

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use rbuild_snapshotter::{RegistryOptions, host_platform};

use super::*;
use crate::graph::Expect;
use crate::key::KeyBuilder;
use crate::solver::StartGate;

const SOCKET: &str = "/run/containerd/containerd.sock";
const BUSYBOX: &str = "127.0.0.1:5000/busybox:latest";

fn ctr(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ctr")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ctr {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn veths(bridge: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .unwrap();
    assert!(out.status.success(), "ip link: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// Everything of the namespace, then the namespace.
fn remove_namespace(ns: &str) {
    let script = format!(
        "for c in $(ctr -n {ns} c ls -q); do ctr -n {ns} t kill -s SIGKILL $c; ctr -n {ns} t rm -f $c; ctr -n {ns} c rm $c; done; \
         for l in $(ctr -n {ns} leases ls -q); do ctr -n {ns} leases rm $l; done; \
         for i in $(ctr -n {ns} i ls -q); do ctr -n {ns} i rm $i; done; \
         for n in 1 2 3 4 5 6 7 8; do for s in $(ctr -n {ns} snapshots ls | awk 'NR>1 {{print $1}}'); do ctr -n {ns} snapshots rm $s 2>/dev/null; done; done; \
         for d in $(ctr -n {ns} content ls -q); do ctr -n {ns} content rm $d; done; ctr namespaces rm {ns}"
    );
    let _ = Command::new("sh").arg("-c").arg(script).output();
}

/// On the way out, even from a failed assertion: the test's namespaces
/// unmounted and removed, its bridge deleted (a stale bridge's route would make the
/// next run's subnet overlap).
struct NetworkGuard {
    bridge: String,
    netns_dir: std::path::PathBuf,
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        // Only this process's (named "PID-…"): other tests' runs share the
        // directory.
        let own = format!("{}-", std::process::id());
        for entry in std::fs::read_dir(&self.netns_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&own))
        {
            let _ = rustix::mount::unmount(entry.path(), rustix::mount::UnmountFlags::DETACH);
            let _ = std::fs::remove_file(entry.path());
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

#[tokio::test]
async fn a_service_is_reachable_by_alias_execs_and_stops_without_leftovers() {
    if !std::path::Path::new(SOCKET).exists() {
        panic!("containerd is not running: run `make setup` first");
    }
    let ns = format!("rbuild-unit-services-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let bridge = format!("rbw{}", std::process::id() % 100_000);
    let config = NetworkConfig {
        bridge: bridge.clone(),
        subnet: Some("10.201.40.0/24".parse().unwrap()),
        run_dir: dir.path().join("run"),
        plugin_dir: network::DEFAULT_PLUGIN_DIR.into(),
        pool_size: 1,
    };
    let run_dir = config.run_dir.clone();
    let _guard = NetworkGuard {
        bridge: bridge.clone(),
        netns_dir: config.netns_dir(),
    };
    let scratch = dir.path().join("tmp");
    std::fs::create_dir_all(&scratch).unwrap();
    let ctd = Containerd::connect(std::path::Path::new(SOCKET), &ns)
        .await
        .unwrap();
    let worker = ContainerdWorker::new(
        ctd,
        Registry::new(RegistryOptions::default()),
        Volumes::new(dir.path()),
        scratch,
    )
    .with_network_config(config);

    let image = ImageRef::parse(BUSYBOX).unwrap();
    let digest = worker.resolve_digest(&image).await.unwrap();
    let resolved = worker
        .describe_image(&image, &digest, &host_platform())
        .await
        .unwrap();
    let (rootfs, _) = worker.pull_image(&resolved).await.unwrap();

    let service_ns = worker.attach().await.unwrap();
    let step_ns = worker.attach().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let service = worker
        .start_service(ServiceRequest {
            id: format!("test-{}", unique_suffix()),
            parent: rootfs.clone(),
            args: vec![
                "sh".into(),
                "-c".into(),
                "mkdir -p /www && echo served-by-db > /www/index.html && exec httpd -f -p 8080 -h /www".into(),
            ],
            env: vec!["PATH=/bin:/usr/bin".into()],
            ports: vec![8080],
            cwd: "/".into(),
            user: String::new(),
            mounts: vec![],
            network: NetworkUse {
                attachment: service_ns.clone(),
                hostname: "db".into(),
                hosts: vec![],
            },
            output: tx,
        })
        .await
        .unwrap();

    // Ready when its own healthcheck says so.
    let mut ready = false;
    for _ in 0..100 {
        let (code, _) = service
            .control
            .exec(
                vec![
                    "wget".into(),
                    "-q".into(),
                    "-O-".into(),
                    "http://127.0.0.1:8080/".into(),
                ],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        if code == 0 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the service answered its healthcheck");
    let (code, out) = service
        .control
        .exec(
            vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 3".into(),
            ],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(code, 3);
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("out") && out.contains("err"),
        "combined output: {out}"
    );
    // Quick execs one after another: a process that ends before the shim
    // has opened its stderr must not leave that open waiting for a reader
    // (it did when both streams shared one FIFO: 30 s, then an error).
    for i in 0..40i64 {
        let (code, _) = service
            .control
            .exec(
                vec!["sh".into(), "-c".into(), format!("exit {}", i % 3)],
                Duration::from_secs(5),
            )
            .await
            .unwrap_or_else(|e| panic!("quick exec {i}: {e}"));
        assert_eq!(code, i % 3, "quick exec {i}");
    }
    let (code, out) = service
        .control
        .exec(
            vec!["sleep".into(), "30".into()],
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    assert_eq!(code, -1, "killed after its timeout");
    assert!(String::from_utf8_lossy(&out).contains("killed after"));

    // A step in another namespace reaches it by its alias.
    let key = KeyBuilder::new("services-test")
        .field("n", &unique_suffix())
        .finish();
    let outcome = worker
        .exec(
            ExecRequest {
                key,
                name: SnapshotId(format!("rbuild-test-step-{}", key.short())),
                parent: rootfs.clone(),
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    "cat /etc/hosts; hostname; wget -q -O- http://db:8080/".into(),
                ],
                env: vec!["PATH=/bin:/usr/bin".into()],
                cwd: "/".into(),
                user: String::new(),
                mounts: vec![],
                stdin: None,
                expect: Expect::Success,
                output: None,
                terminal: TerminalUse::None,
                network: Some(NetworkUse {
                    attachment: step_ns.clone(),
                    hostname: "step".into(),
                    // Known only once the gate opens, as when the step's
                    // task is made while its services start.
                    hosts: vec![],
                }),
                start_gate: Some(StartGate::new({
                    let ip = service_ns.ip;
                    async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(vec![("db".to_string(), ip)])
                    }
                })),
            },
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    assert_eq!(
        outcome.exit_code,
        0,
        "{stdout}{}",
        String::from_utf8_lossy(&outcome.stderr)
    );
    assert!(
        stdout.contains(&format!("{}\tdb", service_ns.ip)),
        "{stdout}"
    );
    assert!(stdout.contains("\nstep\n"), "its own hostname: {stdout}");
    assert!(stdout.contains("served-by-db"), "{stdout}");
    assert_ne!(service_ns.ip, Ipv4Addr::UNSPECIFIED);

    // A gate that fails (its services never got ready): the process never
    // runs, and the created task and container go (checked below).
    let key = KeyBuilder::new("services-test")
        .field("n", &unique_suffix())
        .finish();
    let err = worker
        .exec(
            ExecRequest {
                key,
                name: SnapshotId(format!("rbuild-test-step-{}", key.short())),
                parent: rootfs.clone(),
                args: vec!["sh".into(), "-c".into(), "echo ran".into()],
                env: vec!["PATH=/bin:/usr/bin".into()],
                cwd: "/".into(),
                user: String::new(),
                mounts: vec![],
                stdin: None,
                expect: Expect::Success,
                output: None,
                terminal: TerminalUse::None,
                network: Some(NetworkUse {
                    attachment: step_ns.clone(),
                    hostname: "step".into(),
                    hosts: vec![],
                }),
                start_gate: Some(StartGate::new(async {
                    Err("service db (tcp 8080) exited with code 1 before it was ready".into())
                })),
            },
            CancellationToken::new(),
        )
        .await
        .expect_err("a failed gate fails the step");
    assert!(
        err.to_string()
            .contains("not started: service db (tcp 8080) exited"),
        "{err}"
    );

    let mut exited = service.exited.clone();
    service.control.stop(Duration::from_secs(2)).await.unwrap();
    assert!(
        exited.borrow_and_update().is_some(),
        "the process has ended"
    );
    service
        .control
        .stop(Duration::from_secs(2))
        .await
        .expect("stop is idempotent");
    assert_eq!(ctr(&ns, &["containers", "ls", "-q"]), "", "no container");
    assert_eq!(ctr(&ns, &["tasks", "ls", "-q"]), "", "no task");
    let actives: Vec<String> = ctr(&ns, &["snapshots", "ls"])
        .lines()
        .filter(|l| l.trim_end().ends_with("Active"))
        .map(String::from)
        .collect();
    assert!(actives.is_empty(), "no active snapshot: {actives:?}");
    let io = dir.path().join("tmp/io");
    assert!(
        std::fs::read_dir(&io).map(|d| d.count()).unwrap_or(0) == 0,
        "no FIFOs"
    );
    // Given back: one into the pool (size 1) for the next consumer, the
    // other destroyed; both gone at finish (below).
    worker.detach(service_ns.clone()).await.unwrap();
    worker.detach(step_ns.clone()).await.unwrap();

    // A killed run's namespace: listed by verify, swept by the next start.
    let dead = network::Network::open(worker.network_config.clone().unwrap())
        .unwrap()
        .create_owned_by(&format!("{}-1", std::process::id()))
        .await
        .unwrap();
    let leftovers = worker.leftovers().await.unwrap();
    assert!(
        leftovers
            .iter()
            .any(|l| l.starts_with("network namespace") && l.contains(&dead.id)),
        "{leftovers:?}"
    );
    worker.remove_orphans().await.unwrap();
    assert!(!dead.netns.exists(), "swept");
    assert!(
        network::find_orphans(&run_dir).is_empty(),
        "{:?}",
        network::find_orphans(&run_dir)
    );

    worker.finish().await;
    assert_eq!(
        veths(&bridge),
        Vec::<String>::new(),
        "no veth: the pool's went at finish"
    );
    assert!(
        !service_ns.netns.exists() && !step_ns.netns.exists(),
        "no netns"
    );

    remove_namespace(&ns);
}
