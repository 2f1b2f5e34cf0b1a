//! `rbuild engine status|start|stop` and `rbuild doctor`.

use std::path::Path;

use anyhow::Result;
use rbuild_containerd::Containerd;
use rbuild_containerd::managed::{ManagedContainerd, ManagedState, missing_program};

use super::out;
use crate::cli::{EngineCommand, GlobalOpts};
use crate::engine::{EngineConfig, connect};

pub async fn engine(global: &GlobalOpts, command: EngineCommand) -> Result<i32> {
    let config = EngineConfig::from(global);
    let managed = ManagedContainerd::new(&config.root);
    let system = Containerd::connect(&config.address, &config.namespace)
        .await
        .is_ok();
    match command {
        EngineCommand::Status => {
            if system {
                out(format_args!(
                    "containerd at {}: running (rbuild uses it)",
                    config.address.display()
                ));
            } else {
                out(format_args!(
                    "containerd at {}: not answering",
                    config.address.display()
                ));
            }
            match managed.state() {
                ManagedState::Running { pid } => out(format_args!(
                    "rbuild's own containerd: running (pid {pid}, socket {}){}",
                    managed.socket().display(),
                    if system { "" } else { " — rbuild uses it" }
                )),
                ManagedState::Stopped => out("rbuild's own containerd: stopped"),
            }
            Ok(0)
        }
        EngineCommand::Start => {
            if system {
                out(format_args!(
                    "containerd at {} is running; rbuild uses it (nothing to start)",
                    config.address.display()
                ));
            } else {
                connect(&config).await?;
                out(format_args!(
                    "rbuild's own containerd is running (socket {})",
                    managed.socket().display()
                ));
            }
            Ok(0)
        }
        EngineCommand::Stop => {
            if managed.stop().await? {
                out("rbuild's own containerd: stopped");
            } else {
                out(
                    "rbuild's own containerd was not running (a system containerd is never stopped by rbuild)",
                );
            }
            Ok(0)
        }
    }
}

struct Check {
    ok: bool,
    required: bool,
}

fn report(ok: bool, required: bool, what: &str, fix: &str) -> Check {
    if ok {
        out(format_args!("ok    {what}"));
    } else {
        out(format_args!(
            "{}  {what}\n      {fix}",
            if required { "FAIL" } else { "warn" }
        ));
    }
    Check { ok, required }
}

/// `rbuild doctor`: what rbuild needs from this machine, checked.
pub async fn doctor(global: &GlobalOpts, registries: Vec<String>) -> Result<i32> {
    let config = EngineConfig::from(global);
    let mut checks = Vec::new();
    for program in ["containerd", "runc", "cargo"] {
        let missing = missing_program(program);
        let fix = match program {
            "cargo" => "install Rust (rustup.rs): rbuild compiles pipelines with cargo".to_string(),
            p => format!("apt-get install {p}"),
        };
        checks.push(report(
            missing.is_none(),
            true,
            &format!("{program} is installed"),
            &fix,
        ));
    }
    let managed = ManagedContainerd::new(&config.root);
    let reachable = match Containerd::connect(&config.address, &config.namespace).await {
        Ok(_) => Some(format!(
            "containerd answers at {}",
            config.address.display()
        )),
        Err(_) => match managed.state() {
            ManagedState::Running { .. } => Some(format!(
                "rbuild's own containerd answers at {}",
                managed.socket().display()
            )),
            ManagedState::Stopped => None,
        },
    };
    checks.push(report(
        reachable.is_some(),
        false,
        reachable.as_deref().unwrap_or("containerd is running"),
        &format!(
            "none answers at {}; rbuild starts its own on the next run (or now: `rbuild engine start`)",
            config.address.display()
        ),
    ));
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    checks.push(report(
        filesystems
            .lines()
            .any(|l| l.trim_end().ends_with("overlay")),
        true,
        "the kernel supports overlayfs",
        "load it: modprobe overlay",
    ));
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let v1 = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("cgroup"));
    let v2 = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("cgroup2"));
    let cgroups = match (v1, v2) {
        (true, true) => "cgroups: hybrid (v1 + v2); runc works with it (crun does not)",
        (true, false) => "cgroups: v1",
        (false, true) => "cgroups: v2",
        (false, false) => "cgroups: none mounted",
    };
    checks.push(report(
        v1 || v2,
        true,
        cgroups,
        "mount a cgroup hierarchy (containers need one)",
    ));
    let (size, free) = disk(&config.root).unwrap_or((0, 0));
    checks.push(report(
        free > 5 << 30 && free > size / 10,
        false,
        &format!(
            "disk space under {}: {} free of {}",
            config.root.display(),
            crate::gc::human_bytes(free),
            crate::gc::human_bytes(size)
        ),
        "free space, or prune the cache: rbuild cache prune --keep-storage 5GB",
    ));
    for r in &registries {
        let reached = registry_answers(r).await;
        checks.push(report(
            reached.is_ok(),
            false,
            &format!("registry {r} answers"),
            &reached.err().unwrap_or_default(),
        ));
    }
    let failed = checks.iter().any(|c| c.required && !c.ok);
    Ok(if failed { 1 } else { 0 })
}

fn disk(path: &Path) -> Option<(u64, u64)> {
    let probe = if path.exists() { path } else { Path::new("/") };
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a statvfs to fill.
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0).then(|| {
        (
            st.f_blocks as u64 * st.f_frsize as u64,
            st.f_bavail as u64 * st.f_frsize as u64,
        )
    })
}

/// GET /v2/ over HTTP for loopback registries, HTTPS otherwise; 200 and 401 mean it is there.
async fn registry_answers(host: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let loopback = rbuild_snapshotter::reference::is_loopback_host(host);
    if !loopback {
        let addr = if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:443")
        };
        return tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::net::TcpStream::connect(&addr),
        )
        .await
        .map_err(|_| format!("no answer from {addr} within 5 s"))?
        .map(|_| ())
        .map_err(|e| format!("cannot connect to {addr}: {e}"));
    }
    let mut conn = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("cannot connect to {host}: {e}; is the registry running?"))?;
    conn.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf).await.map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&buf[..n]);
    if head.contains(" 200") || head.contains(" 401") {
        Ok(())
    } else {
        Err(format!(
            "unexpected answer: {}",
            head.lines().next().unwrap_or("")
        ))
    }
}
