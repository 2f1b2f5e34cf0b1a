//! The OCI runtime spec of a step's container, built deliberately.
//!
//! `oci_spec::runtime::Spec::default()` is youki's idea of a shell, not what a
//! build step expects. This module writes down what a step gets: the mounts
//! `ctr run` gives a container (/proc, /dev, /dev/pts, /dev/shm, /dev/mqueue,
//! /sys read-only), Docker's default capability set, its own pid, ipc, uts,
//! mount and network namespaces, the masked and read-only /proc paths, and
//! `noNewPrivileges`. It does not own the root filesystem: containerd mounts
//! the snapshot the caller prepared at `rootfs/`. Its network is the host's
//! (a step's, so that it can fetch dependencies) or a namespace on rbuild's
//! CNI bridge (a service's, and a step's bound to services).

use std::collections::HashSet;
use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::Error;

/// What runs in a step's container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in the container's PATH by runc.
    pub args: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// Absolute working directory inside the container.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Run on a pseudo-terminal (an interactive shell) of this size (columns, rows).
    pub terminal: Option<(u16, u16)>,
}

/// Which network namespace a container is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    /// The host's own (steps: they fetch dependencies through it).
    Host,
    /// A namespace rbuild made (see [`crate::network`]), pinned at `path`;
    /// the container's hostname is `hostname`.
    Namespace { path: PathBuf, hostname: String },
}

/// A mount added to the container besides its root filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraMount {
    pub destination: String,
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Docker's default capability set: what a `RUN` step in a Dockerfile gets.
const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Builds the runtime spec for a container `id` in containerd namespace `namespace`.
pub fn build_spec(
    id: &str,
    namespace: &str,
    process: &ProcessSpec,
    extra_mounts: &[ExtraMount],
    network: &NetworkMode,
) -> Result<Spec, Error> {
    let spec_err = |e: oci_spec::OciSpecError| Error::Spec(e.to_string());
    let process_spec = build_process(process)?;

    let mut mounts = default_mounts().map_err(spec_err)?;
    for m in extra_mounts {
        mounts.push(
            MountBuilder::default()
                .destination(&m.destination)
                .typ(&m.kind)
                .source(&m.source)
                .options(m.options.clone())
                .build()
                .map_err(spec_err)?,
        );
    }

    let kinds = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    let mut namespaces = kinds
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(spec_err)?;
    let mut hostname = "rbuild".to_string();
    if let NetworkMode::Namespace {
        path,
        hostname: name,
    } = network
    {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path.clone())
                .build()
                .map_err(spec_err)?,
        );
        hostname = name.clone();
    }

    // Deny all devices; runc adds its default set (null, zero, full, tty,
    // random, urandom, ptmx) on top, as for `ctr run`.
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .map_err(spec_err)?,
        ])
        .build()
        .map_err(spec_err)?;

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(PathBuf::from(format!("/{namespace}/{id}")))
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(spec_err)?;

    SpecBuilder::default()
        .version("1.0.2-dev")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()
                .map_err(spec_err)?,
        )
        .process(process_spec)
        .hostname(hostname)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(spec_err)
}

/// The process part of the spec: also what an exec in a running container gets.
pub fn build_process(process: &ProcessSpec) -> Result<oci_spec::runtime::Process, Error> {
    let spec_err = |e: oci_spec::OciSpecError| Error::Spec(e.to_string());
    let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(spec_err)?;

    let user = UserBuilder::default()
        .uid(process.uid)
        .gid(process.gid)
        .additional_gids(process.additional_gids.clone())
        .build()
        .map_err(spec_err)?;

    let mut process_builder = ProcessBuilder::default();
    if let Some((cols, rows)) = process.terminal {
        process_builder = process_builder.console_size(
            oci_spec::runtime::BoxBuilder::default()
                .width(cols as u64)
                .height(rows as u64)
                .build()
                .map_err(spec_err)?,
        );
    }
    process_builder
        .terminal(process.terminal.is_some())
        .user(user)
        .args(process.args.clone())
        .env(process.env.clone())
        .cwd(PathBuf::from(&process.cwd))
        .capabilities(capabilities)
        // No rlimits: the process inherits containerd's, as a Docker build
        // step inherits dockerd's. Raising them can fail in sandboxes without
        // CAP_SYS_RESOURCE.
        .rlimits(Vec::new())
        .no_new_privileges(true)
        .build()
        .map_err(spec_err)
}

fn default_mounts() -> Result<Vec<Mount>, oci_spec::OciSpecError> {
    let m = |dest: &str, typ: &str, src: &str, opts: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(src)
            .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
    };
    Ok(vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        m(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_has_what_a_step_expects() {
        let process = ProcessSpec {
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/src".into(),
            uid: 1000,
            gid: 1000,
            additional_gids: vec![],
            terminal: None,
        };
        let netns = NetworkMode::Namespace {
            path: "/run/rbuild/netns/1-2-0".into(),
            hostname: "svc-db".into(),
        };
        let spec = build_spec("c1", "rbuild", &process, &[], &netns).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["process"]["args"][2], "true");
        assert_eq!(json["process"]["cwd"], "/src");
        assert_eq!(json["process"]["user"]["uid"], 1000);
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["root"]["path"], "rootfs");
        let caps = json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert!(caps.iter().any(|c| c == "CAP_CHOWN"));
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        let dests: Vec<_> = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap().to_string())
            .collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
        ] {
            assert!(dests.iter().any(|x| x == d), "missing mount {d}");
        }
        let ns: Vec<_> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
        assert_eq!(
            json["linux"]["namespaces"][4]["path"],
            "/run/rbuild/netns/1-2-0"
        );
        assert_eq!(json["hostname"], "svc-db");
        assert_eq!(json["linux"]["cgroupsPath"], "/rbuild/c1");
        let host = build_spec("c1", "rbuild", &process, &[], &NetworkMode::Host).unwrap();
        let json = serde_json::to_value(&host).unwrap();
        assert_eq!(json["linux"]["namespaces"].as_array().unwrap().len(), 4);
    }
}
