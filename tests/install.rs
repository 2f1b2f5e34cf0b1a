//! Installing rbuild on a runner (issue 16): the Debian package built from
//! this repository (`packaging/deb.sh`, what `make deb` runs) installed
//! with apt on a clean Debian 13 root filesystem (fixtures/setup.sh's
//! debootstrap minbase, nothing added) brings everything rbuild drives —
//! containerd, runc, the CNI plugins — and a cargo that compiles
//! pipelines, and the installed rbuild runs. Needs Debian's archive (the
//! machine reaches it; packages come over plain HTTP).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const CLEAN_ROOTFS: &str = "/var/lib/rbuild-fixtures/rootfs/debian-trixie-minbase.tar";

fn sh(what: &str, cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The root filesystem, with /proc mounted while it is used.
struct Chroot {
    root: PathBuf,
}

impl Chroot {
    fn run(&self, what: &str, args: &[&str]) -> String {
        let mut cmd = Command::new("chroot");
        cmd.arg(&self.root)
            .args([
                "env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
            ])
            .arg("DEBIAN_FRONTEND=noninteractive")
            .args(args);
        sh(what, &mut cmd)
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.root.join("proc")).status();
    }
}

#[test]
fn the_debian_package_installs_and_runs_on_a_clean_debian() {
    assert!(
        Path::new(CLEAN_ROOTFS).exists(),
        "{CLEAN_ROOTFS} is missing: run `make setup` first"
    );
    let dir = tempfile::tempdir().unwrap();
    // The test's own (debug) build, without its debug info, packaged
    // quickly; `make deb` packages the release build.
    let bin = dir.path().join("rbuild");
    sh(
        "strip",
        Command::new("strip")
            .arg("-o")
            .arg(&bin)
            .arg(env!("CARGO_BIN_EXE_rbuild")),
    );
    let deb = sh(
        "packaging/deb.sh",
        Command::new("bash")
            .arg(common::repo_root().join("packaging/deb.sh"))
            .arg(&bin)
            .arg(dir.path().join("out"))
            .env("DEB_COMPRESSION", "gzip"),
    );
    let deb = PathBuf::from(deb.trim());

    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    sh(
        "unpack the clean rootfs",
        Command::new("tar")
            .arg("-xf")
            .arg(CLEAN_ROOTFS)
            .arg("-C")
            .arg(&root),
    );
    assert!(
        !root.join("usr/bin/containerd").exists() && !root.join("usr/bin/cargo").exists(),
        "the rootfs is not clean"
    );
    std::fs::copy(&deb, root.join("tmp/rbuild.deb")).unwrap();
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf")).unwrap();
    // No service starts inside the chroot.
    std::fs::write(root.join("usr/sbin/policy-rc.d"), "#!/bin/sh\nexit 101\n").unwrap();
    sh(
        "chmod policy-rc.d",
        Command::new("chmod")
            .arg("755")
            .arg(root.join("usr/sbin/policy-rc.d")),
    );
    sh(
        "mount /proc",
        Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(root.join("proc")),
    );
    let chroot = Chroot { root };

    // The documented installation (examples/ci/README.md).
    chroot.run("apt-get update", &["apt-get", "update", "-q"]);
    chroot.run(
        "apt-get install ./rbuild.deb",
        &["apt-get", "install", "-y", "-q", "/tmp/rbuild.deb"],
    );

    let version = chroot.run("rbuild --version", &["rbuild", "--version"]);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    for tool in ["containerd", "runc", "cargo"] {
        chroot.run(
            &format!("{tool} is installed"),
            &["sh", "-c", &format!("command -v {tool}")],
        );
    }
    assert!(
        chroot.root.join("usr/lib/cni/bridge").exists(),
        "the CNI plugins"
    );
    let cargo = chroot.run("cargo --version", &["cargo", "--version"]);
    let minor: u32 = cargo
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("{cargo}"));
    assert!(minor >= 85, "cargo too old to compile pipelines: {cargo}");
    // The installed rbuild works: it parses a pipeline's declaration and
    // writes a starter pipeline.
    chroot.run("rbuild init", &["rbuild", "init", "/tmp/project"]);
    assert!(chroot.root.join("tmp/project/ci/pipeline.rs").exists());
    let help = chroot.run("rbuild --help", &["rbuild", "run", "--help"]);
    assert!(help.contains("--cache-from"), "{help}");
    let completion = std::fs::read_to_string(
        chroot
            .root
            .join("usr/share/bash-completion/completions/rbuild"),
    )
    .unwrap();
    assert!(completion.contains("rbuild"));
}
