//! `rbuild doctor`: what rbuild needs from this machine, checked one by
//! one — programs, a containerd that answers, overlayfs, cgroups, disk
//! space, and the registries a user names. It reports; it changes nothing.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rbuild_containerd::Containerd;
use rbuild_containerd::managed::{ManagedContainerd, ManagedState, missing_program};
use rbuild_snapshotter::{Registry, RegistryOptions};

use crate::engine::EngineConfig;
use crate::gc::human_bytes;

/// How long a registry has to answer.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// One thing checked.
#[derive(Debug)]
pub struct Check {
    pub ok: bool,
    /// rbuild cannot work without it (a failed optional check is a warning).
    pub required: bool,
    pub what: String,
    /// What to do about a failure.
    pub fix: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ok {
            write!(f, "ok    {}", self.what)
        } else {
            let label = if self.required { "FAIL" } else { "warn" };
            write!(f, "{label}  {}\n      {}", self.what, self.fix)
        }
    }
}

fn check(ok: bool, required: bool, what: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        ok,
        required,
        what: what.into(),
        fix: fix.into(),
    }
}

/// Runs every check, handing each to `report` as soon as it is done;
/// true when all the required ones passed.
pub async fn examine(
    config: &EngineConfig,
    registries: &[String],
    mut report: impl FnMut(&Check),
) -> bool {
    let mut healthy = true;
    let mut record = |c: Check| {
        healthy &= c.ok || !c.required;
        report(&c);
    };
    for program in ["containerd", "runc", "cargo"] {
        record(installed(program));
    }
    record(containerd_answers(config).await);
    record(overlayfs());
    record(cgroups());
    record(disk_space(&config.root));
    let registry = Registry::new(RegistryOptions {
        insecure_hosts: config.insecure_registries.clone(),
        https_marker: None,
        ..RegistryOptions::default()
    });
    for r in registries {
        let answer = registry.ping(r, REGISTRY_TIMEOUT).await;
        record(check(
            answer.is_ok(),
            false,
            format!("registry {r} answers"),
            answer.err().map(|e| e.to_string()).unwrap_or_default(),
        ));
    }
    healthy
}

fn installed(program: &str) -> Check {
    let fix = match program {
        "cargo" => "install Rust (rustup.rs): rbuild compiles pipelines with cargo".to_string(),
        p => format!("apt-get install {p}"),
    };
    check(
        missing_program(program).is_none(),
        true,
        format!("{program} is installed"),
        fix,
    )
}

async fn containerd_answers(config: &EngineConfig) -> Check {
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
    check(
        reachable.is_some(),
        false,
        reachable.unwrap_or_else(|| "containerd is running".into()),
        format!(
            "none answers at {}; rbuild starts its own on the next run (or now: `rbuild engine start`)",
            config.address.display()
        ),
    )
}

fn overlayfs() -> Check {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    check(
        filesystems
            .lines()
            .any(|l| l.trim_end().ends_with("overlay")),
        true,
        "the kernel supports overlayfs",
        "load it: modprobe overlay",
    )
}

fn cgroups() -> Check {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = |fstype| {
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some(fstype))
    };
    let (v1, v2) = (mounted("cgroup"), mounted("cgroup2"));
    let what = match (v1, v2) {
        (true, true) => "cgroups: hybrid (v1 + v2); runc works with it (crun does not)",
        (true, false) => "cgroups: v1",
        (false, true) => "cgroups: v2",
        (false, false) => "cgroups: none mounted",
    };
    check(
        v1 || v2,
        true,
        what,
        "mount a cgroup hierarchy (containers need one)",
    )
}

fn disk_space(root: &Path) -> Check {
    // Before the first run the state root does not exist yet.
    let probe = if root.exists() { root } else { Path::new("/") };
    let (size, free) = crate::gc::filesystem(probe).unwrap_or((0, 0));
    check(
        free > 5 << 30 && free > size / 10,
        false,
        format!(
            "disk space under {}: {} free of {}",
            root.display(),
            human_bytes(free),
            human_bytes(size)
        ),
        "free space, or prune the cache: rbuild cache prune --keep-storage 5GB",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_says_how_bad_and_what_to_do() {
        let passed = check(true, true, "runc is installed", "apt-get install runc");
        assert_eq!(passed.to_string(), "ok    runc is installed");
        let failed = check(false, true, "runc is installed", "apt-get install runc");
        assert_eq!(
            failed.to_string(),
            "FAIL  runc is installed\n      apt-get install runc"
        );
        let warned = check(false, false, "registry r answers", "no answer");
        assert_eq!(
            warned.to_string(),
            "warn  registry r answers\n      no answer"
        );
    }
}
