//! Harness for integration tests: real containerd, real registries (started
//! by `make setup`), the real `rbuild` binary. Each test gets its own state
//! root and containerd namespace, removed again when the test ends.

#![allow(dead_code)]

pub mod fault_proxy;
pub mod running;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub const REGISTRY: &str = "127.0.0.1:5000";
pub const AUTH_REGISTRY: &str = "127.0.0.1:5001";
pub const BUSYBOX: &str = "127.0.0.1:5000/busybox:latest";
/// The host's CA bundle (Debian's location).
pub const HOST_CA: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Debian's rustc/cargo (fixtures/setup.sh).
pub const RUST: &str = "127.0.0.1:5000/rust:1";
/// Debian's PostgreSQL 15: env POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB
/// like the official image's, port 5432, a HEALTHCHECK (pg_isready), logs
/// "database system is ready to accept connections".
pub const POSTGRES: &str = "127.0.0.1:5000/postgres:15";
/// Debian's redis-server 7: port 6379, no protected mode, no healthcheck.
pub const REDIS: &str = "127.0.0.1:5000/redis:7";
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// A repository of the test registry no earlier run has used, as
/// `REGISTRY/rbuild-test-NONCE/NAME:1`.
pub fn repo(name: &str) -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{REGISTRY}/rbuild-test-{nonce:x}/{name}:1")
}

/// Runs `cmd` to its end: its stdout, or a panic naming it with its
/// stderr when it failed.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The argument-driven test pipeline (compiled once for all tests).
pub fn steps_pipeline() -> PathBuf {
    repo_root().join("fixtures/pipelines/steps.rs")
}

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub namespace: String,
    /// A DOCKER_CONFIG directory of the test's own, so the host's credentials never leak in.
    pub docker_config: PathBuf,
}

pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn from(out: Output) -> Outcome {
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with both streams when the run did not succeed.
    pub fn ok(self) -> Outcome {
        assert_eq!(
            self.code, 0,
            "rbuild failed\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The `name: value` lines of stdout, by name.
    pub fn fields(&self) -> std::collections::HashMap<String, String> {
        self.stdout
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()
    }

    /// Progress lines that report a step answered from the cache.
    pub fn cached(&self) -> usize {
        self.stderr
            .lines()
            .filter(|l| l.ends_with(" CACHED"))
            .count()
    }

    /// Progress lines that report a step answered from a remote cache.
    pub fn remote_cached(&self) -> usize {
        self.stderr
            .lines()
            .filter(|l| l.starts_with('#') && l.contains(" CACHED (remote "))
            .count()
    }

    /// Progress lines that report a step that ran (containers started).
    pub fn ran(&self) -> usize {
        self.stderr
            .lines()
            .filter(|l| {
                l.starts_with('#')
                    && l.contains(" exec ")
                    && !l.ends_with(" CACHED")
                    && !l.contains(" CACHED (remote ")
                    && l.split_whitespace()
                        .nth(1)
                        .is_none_or(|w| w != "download" && w != "read" && w != "cache")
            })
            .count()
    }
}

fn require_setup() {
    let registry = TcpStream::connect_timeout(&REGISTRY.parse().unwrap(), Duration::from_secs(2));
    assert!(
        Path::new(CONTAINERD_SOCKET).exists() && registry.is_ok(),
        "containerd or the test registry is not running: run `make setup` first"
    );
}

impl TestEnv {
    pub fn new(name: &str) -> TestEnv {
        require_setup();
        let dir = tempfile::Builder::new()
            .prefix(&format!("rbuild-test-{name}-"))
            .tempdir()
            .unwrap();
        let docker_config = dir.path().join("docker");
        std::fs::create_dir_all(&docker_config).unwrap();
        let namespace = format!("rbuild-test-{name}-{}", std::process::id());
        remove_namespace(&namespace);
        TestEnv {
            dir,
            namespace,
            docker_config,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rbuild"));
        cmd.env("RBUILD_ROOT", self.root())
            .env("RBUILD_NAMESPACE", &self.namespace)
            // Compiled pipelines are shared between tests, so cargo builds the SDK once.
            .env(
                "RBUILD_CACHE_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("rbuild-pipelines"),
            )
            .env("DOCKER_CONFIG", &self.docker_config)
            .env_remove("RBUILD_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// The command `rbuild run PIPELINE -- ARGS`, not started.
    pub fn run_command(&self, pipeline: &Path, args: &[&str]) -> Command {
        let mut cmd = self.command();
        cmd.arg("run").arg(pipeline).arg("--").args(args);
        cmd
    }

    /// `rbuild run PIPELINE -- ARGS`
    pub fn run(&self, pipeline: &Path, args: &[&str]) -> Outcome {
        let out = self
            .run_command(pipeline, args)
            .output()
            .expect("start rbuild");
        Outcome::from(out)
    }

    /// `rbuild run PIPELINE -- ARGS` with the host's CA bundle added to
    /// every step's trust store (`RBUILD_CA_CERTS`): what a step fetching
    /// from crates.io through this machine's TLS-inspecting proxy needs.
    pub fn run_trusting_host_ca(&self, pipeline: &Path, args: &[&str]) -> Outcome {
        let mut cmd = self.run_command(pipeline, args);
        if Path::new(HOST_CA).exists() {
            cmd.env("RBUILD_CA_CERTS", HOST_CA);
        }
        Outcome::from(cmd.output().expect("start rbuild"))
    }

    /// A copy of fixtures/rust-project in the test's directory (to edit).
    pub fn rust_project(&self) -> PathBuf {
        let project = self.dir.path().join("project");
        std::fs::create_dir_all(project.join("src")).unwrap();
        for f in ["Cargo.toml", "Cargo.lock", "src/main.rs"] {
            std::fs::copy(
                repo_root().join("fixtures/rust-project").join(f),
                project.join(f),
            )
            .unwrap();
        }
        project
    }

    /// `rbuild run PIPELINE -- ARGS` in the background.
    pub fn start(&self, pipeline: &Path, args: &[&str]) -> running::Running {
        let mut command = self.command();
        command.arg("run").arg(pipeline).arg("--").args(args);
        running::Running::spawn(command)
    }

    /// Runs the argument-driven pipeline (see fixtures/pipelines/steps.rs).
    pub fn steps(&self, args: &[&str]) -> Outcome {
        self.run(&steps_pipeline(), args)
    }

    pub fn write_docker_config(&self, registry: &str, user: &str, password: &str) {
        use std::io::Write;
        let auth = base64(&format!("{user}:{password}"));
        let mut f = std::fs::File::create(self.docker_config.join("config.json")).unwrap();
        write!(f, r#"{{"auths": {{"{registry}": {{"auth": "{auth}"}}}}}}"#).unwrap();
    }

    pub fn ctr(&self, args: &[&str]) -> String {
        ctr(&self.namespace, args)
    }

    /// Containers and active snapshots in the namespace: what a run must never leave behind.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .ctr(&["containers", "ls", "-q"])
            .lines()
            .map(|l| format!("container {l}"))
            .collect();
        out.extend(
            self.ctr(&["snapshots", "ls"])
                .lines()
                .skip(1)
                .filter(|l| l.trim_end().ends_with("Active"))
                .map(|l| format!("active snapshot {l}")),
        );
        out
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        remove_namespace(&self.namespace);
    }
}

pub fn ctr(namespace: &str, args: &[&str]) -> String {
    let out = Command::new("ctr")
        .arg("-n")
        .arg(namespace)
        .args(args)
        .output()
        .expect("run ctr");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes everything in a containerd namespace, then the namespace.
pub fn remove_namespace(ns: &str) {
    let ids = |args: &[&str]| -> Vec<String> {
        ctr(ns, args)
            .lines()
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    for task in ids(&["tasks", "ls", "-q"]) {
        ctr(ns, &["tasks", "kill", "-s", "SIGKILL", &task]);
        ctr(ns, &["tasks", "rm", "-f", &task]);
    }
    for c in ids(&["containers", "ls", "-q"]) {
        ctr(ns, &["containers", "rm", &c]);
    }
    for i in ids(&["images", "ls", "-q"]) {
        ctr(ns, &["images", "rm", &i]);
    }
    for l in ids(&["leases", "ls", "-q"]) {
        ctr(ns, &["leases", "rm", &l]);
    }
    // Children before parents.
    for _ in 0..100 {
        let listing = ctr(ns, &["snapshots", "ls"]);
        let rows: Vec<(String, String)> = listing
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f.len() {
                    3 => Some((f[0].to_string(), f[1].to_string())),
                    2 => Some((f[0].to_string(), String::new())),
                    _ => None,
                }
            })
            .collect();
        if rows.is_empty() {
            break;
        }
        for (key, _) in rows
            .iter()
            .filter(|(k, _)| !rows.iter().any(|(_, p)| p == k))
        {
            ctr(ns, &["snapshots", "rm", key]);
        }
    }
    for d in ids(&["content", "ls", "-q"]) {
        ctr(ns, &["content", "rm", &d]);
    }
    let _ = Command::new("ctr").args(["namespaces", "rm", ns]).output();
}

fn base64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `rbuild run PIPELINE -- ARGS` with `--progress json`: the outcome and
/// its progress events, in order.
pub fn run_json(
    env: &TestEnv,
    pipeline: &Path,
    args: &[&str],
) -> (Outcome, Vec<serde_json::Value>) {
    let out = env
        .run_command(pipeline, args)
        .env("RBUILD_PROGRESS", "json")
        .output()
        .expect("start rbuild");
    let outcome = Outcome::from(out);
    let events = events(&outcome.stderr);
    (outcome, events)
}

/// The progress events (`--progress json`) among stderr's lines.
pub fn events(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("event").is_some())
        .collect()
}

/// How many events of `kind` there are.
pub fn count_events(events: &[serde_json::Value], kind: &str) -> usize {
    events.iter().filter(|e| e["event"] == kind).count()
}
