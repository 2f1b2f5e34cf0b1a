//! The fault suite's full disk: a small ext4 filesystem, loop-mounted,
//! holds the state root (only it: containerd's root stays where it is, so
//! what fills up is the index, scratch space, cache volumes and stored
//! output). Every command on it ends with an exit code and a message that
//! says the disk is full, never with a signal; `cache prune` frees space on
//! it; a step that runs out of space fails clearly and costs the cache
//! nothing.
//!
//! Needs root and a loop device; without them each test says so and passes.

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A loop-mounted ext4 filesystem of its own, unmounted and deleted on drop.
struct LoopFs {
    image: PathBuf,
    mount: PathBuf,
}

impl LoopFs {
    /// None (after saying why) when this machine cannot make one.
    fn new(env: &TestEnv, megabytes: u64) -> Option<LoopFs> {
        if !rustix::process::geteuid().is_root() || !Path::new("/dev/loop-control").exists() {
            eprintln!(
                "SKIPPED: the full-disk tests need root and a loop device (/dev/loop-control)"
            );
            return None;
        }
        let image = PathBuf::from(format!(
            "/var/tmp/rbuild-faults-disk-{}-{}.img",
            std::process::id(),
            env.namespace.len() + env.dir.path().as_os_str().len()
        ));
        let mount = env.dir.path().join("disk");
        std::fs::create_dir_all(&mount).unwrap();
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(megabytes << 20).unwrap();
        drop(f);
        let fs = LoopFs { image, mount };
        // mke2fs's defaults for a small filesystem: 1 KiB blocks, what made SQLite's WAL index fault.
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&fs.image)
            .status()
            .unwrap();
        assert!(mkfs.success(), "mkfs.ext4 {}", fs.image.display());
        let mounted = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&fs.image)
            .arg(&fs.mount)
            .status()
            .unwrap();
        if !mounted.success() {
            eprintln!(
                "SKIPPED: could not loop-mount {} (no free loop device?)",
                fs.image.display()
            );
            return None;
        }
        Some(fs)
    }

    fn root(&self) -> PathBuf {
        self.mount.join("root")
    }

    /// Bytes an unprivileged user could still write.
    fn free(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.mount).unwrap();
        st.f_bavail * st.f_frsize
    }

    /// Fills the filesystem but for about `left` bytes (as root, reserved blocks included).
    fn fill(&self, left: usize) -> PathBuf {
        let pad = self.mount.join("pad");
        if left > 0 {
            std::fs::write(&pad, vec![0u8; left]).unwrap();
        }
        let filler = self.mount.join("filler");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&filler)
            .unwrap();
        for chunk in [1 << 20, 1 << 10] {
            let buf = vec![0u8; chunk];
            loop {
                match f.write_all(&buf) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(e) => panic!("fill {}: {e}", filler.display()),
                }
            }
        }
        let _ = f.sync_all();
        drop(f);
        if left > 0 {
            std::fs::remove_file(&pad).unwrap();
        }
        assert!(self.free() < 1 << 20, "the filesystem is full");
        filler
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.mount).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `rbuild ARGS` with the state root on the small filesystem; never killed by a signal.
fn rbuild(env: &TestEnv, fs: &LoopFs, args: &[&str]) -> Ran {
    let out = env
        .command()
        .env("RBUILD_ROOT", fs.root())
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.signal(),
        None,
        "rbuild {args:?} was killed by a signal\n{stderr}"
    );
    Ran {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}

fn pipeline() -> String {
    repo_root()
        .join("fixtures/pipelines/steps.rs")
        .display()
        .to_string()
}

fn run(env: &TestEnv, fs: &LoopFs, ops: &[&str]) -> Ran {
    let p = pipeline();
    let mut args = vec![
        "--progress",
        "plain",
        "run",
        &p,
        "--",
        "from=127.0.0.1:5000/busybox:latest",
    ];
    args.extend_from_slice(ops);
    rbuild(env, fs, &args)
}

fn says_the_disk_is_full(r: &Ran) -> bool {
    let e = r.stderr.to_lowercase();
    e.contains("no space left on device") || e.contains("disk is full")
}

#[test]
fn every_command_on_a_full_disk_exits_with_a_clear_error_or_succeeds() {
    let env = TestEnv::new("faults-disk-commands");
    let Some(fs) = LoopFs::new(&env, 300) else {
        return;
    };
    let good = run(&env, &fs, &["exec=echo good", "print=stdout"]);
    assert_eq!(good.code, 0, "{}", good.stderr);
    // SQLite's fault came with a few KiB left (enough for it to extend its
    // WAL index by one block per page, not for the rest of the page).
    for left in [0, 4 << 10, 8 << 10, 12 << 10, 16 << 10, 64 << 10] {
        let filler = fs.fill(left);
        for args in [&["cache", "ls"][..], &["cache", "du"], &["history"]] {
            let r = rbuild(&env, &fs, args);
            assert!(
                r.code == 0 || says_the_disk_is_full(&r),
                "{left} B free: rbuild {args:?} failed without saying why\n{}",
                r.stderr
            );
        }
        let hit = run(&env, &fs, &["exec=echo good", "print=stdout"]);
        assert_eq!(
            hit.code, 0,
            "{left} B free: a cached step still answers\n{}",
            hit.stderr
        );
        assert_eq!(hit.stdout, "good\n");
        let new = format!("exec=echo new-{left}");
        let miss = run(&env, &fs, &[&new, "print=stdout"]);
        assert!(
            miss.code == 0 || says_the_disk_is_full(&miss),
            "{left} B free: a new step failed without saying the disk is full\n{}",
            miss.stderr
        );
        std::fs::remove_file(filler).unwrap();
    }
    fs.fill(0);
    let pruned = rbuild(&env, &fs, &["cache", "prune", "--all"]);
    assert_eq!(
        pruned.code, 0,
        "cache prune works on a full disk\n{}",
        pruned.stderr
    );
    let listed = rbuild(&env, &fs, &["cache", "ls"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(
        !listed.stdout.contains("echo good"),
        "pruned:\n{}",
        listed.stdout
    );
}

#[test]
fn a_step_that_fills_the_disk_fails_clearly_and_prune_frees_the_space() {
    let env = TestEnv::new("faults-disk-step");
    let Some(fs) = LoopFs::new(&env, 300) else {
        return;
    };
    let older = run(&env, &fs, &["exec=echo older", "print=stdout"]);
    assert_eq!(older.code, 0, "{}", older.stderr);
    let free_before = fs.free();
    // A good step, then one that writes into a cache volume (on the state root) until the disk is full.
    let failed = run(
        &env,
        &fs,
        &[
            "exec=echo good",
            "cache=fill:/fill",
            "exec=dd if=/dev/zero of=/fill/big bs=1M",
            "print=stdout",
        ],
    );
    assert_ne!(failed.code, 0);
    assert!(
        failed
            .stderr
            .contains("no space left on device: the filesystem holding"),
        "the failure names the full filesystem\n{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains("(cache volume \"fill\") is full"),
        "{}",
        failed.stderr
    );
    assert!(fs.free() < 1 << 20, "the step filled the disk");
    assert!(
        !failed.stderr.contains("the cache was over its limit"),
        "the automatic GC removed entries\n{}",
        failed.stderr
    );
    // Good results of this run and of the one before survive.
    for step in ["exec=echo good", "exec=echo older"] {
        let again = run(&env, &fs, &[step, "print=stdout"]);
        assert_eq!(again.code, 0, "{}", again.stderr);
        assert!(
            again.stderr.contains(" CACHED"),
            "{step} is still cached\n{}",
            again.stderr
        );
    }
    let pruned = rbuild(&env, &fs, &["cache", "prune", "--all"]);
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    assert!(
        pruned.stdout.contains("1 cache volumes"),
        "the volume that filled the disk was removed: {}",
        pruned.stdout
    );
    assert!(
        fs.free() + (16 << 20) > free_before,
        "prune gave the space back: {} free, {} before the step",
        fs.free(),
        free_before
    );
}
