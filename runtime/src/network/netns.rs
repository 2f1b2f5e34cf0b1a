//! Network namespaces as files: made by `unshare(CLONE_NEWNET)` on a
//! thread of their own, kept alive by a bind mount of that thread's
//! `/proc/thread-self/ns/net` onto a file (what `ip netns add` does), and
//! destroyed by unmounting and removing the file. Their names begin with
//! the owner's tag (`PID-STARTTIME-N`, see rbuild-containerd's `Owner`),
//! so that the next run can tell a dead owner's namespaces from a live one's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rbuild_containerd::Owner;
use rustix::mount::{UnmountFlags, mount_bind, unmount};
use rustix::thread::UnshareFlags;

use crate::Error;

/// A name for a new namespace of `owner_tag` (unique within the process).
pub fn new_name(owner_tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{owner_tag}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Makes a new network namespace, pinned at `path` (which must not exist).
pub fn create(path: &Path) -> Result<(), Error> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io("create network namespace file", path, e))?;
    let target = path.to_path_buf();
    // unshare changes the calling thread's namespace: a thread that ends
    // right after, so no other work ever runs in the new namespace.
    let pinned = std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: only the network namespace is unshared (not the file
        // table), on a thread that shares no file descriptors with others.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET)? };
        mount_bind("/proc/thread-self/ns/net", &target)?;
        Ok(())
    })
    .join()
    .map_err(|_| Error::Network("the namespace thread panicked".into()))?;
    if let Err(e) = pinned {
        let _ = std::fs::remove_file(path);
        return Err(Error::io("make network namespace", path, e));
    }
    Ok(())
}

/// Unmounts and removes a namespace file; one already gone is fine.
pub fn destroy(path: &Path) -> Result<(), Error> {
    match unmount(path, UnmountFlags::DETACH) {
        Ok(()) => {}
        // Not a mount point (half made), or no file at all.
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(Error::io("unmount network namespace", path, e.into())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove network namespace file", path, e)),
    }
}

/// The owner a namespace (or reservation) name begins with, if it is rbuild's.
pub fn owner_of(name: &str) -> Option<Owner> {
    Owner::parse_file_tag(name).map(|(o, _)| o)
}

/// The namespace files in `dir` whose owner is gone: (path, pid).
pub fn dead_in(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".json") {
            continue;
        }
        if let Some(owner) = owner_of(name)
            && !owner.is_alive()
        {
            out.push((entry.path(), owner.pid()));
        }
    }
    out.sort();
    out
}

/// Whether `path` is a mount point (a live namespace pinned there).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}
