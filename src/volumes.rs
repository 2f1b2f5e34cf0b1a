//! Cache volumes: directories under the state root that steps mount and
//! that outlive runs. Their contents never enter a cache key (only their
//! name and sharing mode do).
//!
//! Sharing between concurrent users, also across rbuild processes, is
//! enforced with `flock` on a lock file beside each instance:
//! `shared` takes a shared lock on the primary instance, `locked` an
//! exclusive one (users take turns), and `private` takes the first instance
//! nobody holds — a new, empty one when all are in use (as BuildKit does).

use std::fs::File;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

use crate::graph::Sharing;

pub struct Volumes {
    root: PathBuf,
}

/// A volume instance in use; the lock is released on drop.
pub struct VolumeUse {
    pub path: PathBuf,
    _lock: File,
}

impl Volumes {
    pub fn new(state_root: &Path) -> Volumes {
        Volumes {
            root: state_root.join("volumes"),
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(48)
            .collect();
        let h = blake3::hash(name.as_bytes()).to_hex();
        self.root.join(format!("{safe}-{}", &h[..8]))
    }

    /// Takes an instance of volume `name`, waiting if the mode says so.
    /// Blocking: call from a blocking thread.
    pub fn acquire(&self, name: &str, sharing: Sharing) -> std::io::Result<VolumeUse> {
        let dir = self.dir(name);
        std::fs::create_dir_all(&dir)?;
        match sharing {
            Sharing::Shared => instance(&dir, "data", FlockOperation::LockShared),
            Sharing::Locked => instance(&dir, "data", FlockOperation::LockExclusive),
            Sharing::Private => {
                for n in 0.. {
                    let name = if n == 0 {
                        "data".to_string()
                    } else {
                        format!("private-{n}")
                    };
                    if let Some(u) = try_instance(&dir, &name)? {
                        return Ok(u);
                    }
                }
                unreachable!("the loop only ends by returning")
            }
        }
    }
}

impl Volumes {
    /// As [`Volumes::acquire`], but a wait for a `shared` or `locked`
    /// instance ends when `cancel` fires (`Waited::Cancelled`).
    pub async fn acquire_cancellable(
        &self,
        name: &str,
        sharing: Sharing,
        cancel: &rbuild_runtime::CancellationToken,
    ) -> Result<VolumeUse, crate::locks::Waited> {
        use crate::locks::{Waited, try_flock, wait_for_lock};
        let dir = self.dir(name);
        let mode = match sharing {
            Sharing::Shared => FlockOperation::NonBlockingLockShared,
            Sharing::Locked => FlockOperation::NonBlockingLockExclusive,
            // Never waits: it takes a new instance instead.
            Sharing::Private => return self.acquire(name, sharing).map_err(Waited::Failed),
        };
        std::fs::create_dir_all(&dir).map_err(Waited::Failed)?;
        let (path, lock) = open_lock(&dir, "data").map_err(Waited::Failed)?;
        wait_for_lock(cancel, || {}, || Ok(try_flock(&lock, mode)?.then_some(()))).await?;
        Ok(VolumeUse { path, _lock: lock })
    }

    /// Removes every volume instance nobody holds; returns how many volumes went entirely.
    pub fn remove_unused(&self) -> std::io::Result<usize> {
        let Ok(dirs) = std::fs::read_dir(&self.root) else {
            return Ok(0);
        };
        let mut removed = 0;
        for dir in dirs.flatten() {
            let dir = dir.path();
            let mut busy = false;
            for entry in std::fs::read_dir(&dir)?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".lock") || !entry.path().is_dir() {
                    continue;
                }
                match try_instance(&dir, &name)? {
                    Some(held) => {
                        std::fs::remove_dir_all(&held.path)?;
                        let _ = std::fs::remove_file(dir.join(format!("{name}.lock")));
                    }
                    None => busy = true,
                }
            }
            if !busy {
                let _ = std::fs::remove_dir_all(&dir);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn open_lock(dir: &Path, name: &str) -> std::io::Result<(PathBuf, File)> {
    let path = dir.join(name);
    std::fs::create_dir_all(&path)?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{name}.lock")))?;
    Ok((path, lock))
}

fn instance(dir: &Path, name: &str, mode: FlockOperation) -> std::io::Result<VolumeUse> {
    let (path, lock) = open_lock(dir, name)?;
    flock(&lock, mode)?;
    Ok(VolumeUse { path, _lock: lock })
}

fn try_instance(dir: &Path, name: &str) -> std::io::Result<Option<VolumeUse>> {
    let (path, lock) = open_lock(dir, name)?;
    match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(VolumeUse { path, _lock: lock })),
        Err(Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_users_get_their_own_instance_and_reuse_it_later() {
        let root = tempfile::tempdir().unwrap();
        let v = Volumes::new(root.path());
        let a = v.acquire("go-mod", Sharing::Private).unwrap();
        let b = v.acquire("go-mod", Sharing::Private).unwrap();
        assert_ne!(a.path, b.path);
        let a_path = a.path.clone();
        drop(a);
        let c = v.acquire("go-mod", Sharing::Private).unwrap();
        assert_eq!(c.path, a_path, "a free instance is reused");
    }

    #[test]
    fn shared_users_share_and_locked_users_wait() {
        let root = tempfile::tempdir().unwrap();
        let v = Volumes::new(root.path());
        let s1 = v.acquire("npm", Sharing::Shared).unwrap();
        let s2 = v.acquire("npm", Sharing::Shared).unwrap();
        assert_eq!(s1.path, s2.path);
        let (tx, rx) = std::sync::mpsc::channel();
        let root2 = root.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            let v = Volumes::new(&root2);
            let l = v.acquire("npm", Sharing::Locked).unwrap();
            tx.send(()).unwrap();
            drop(l);
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            rx.try_recv().is_err(),
            "locked waits while shared users hold it"
        );
        drop((s1, s2));
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        waiter.join().unwrap();
    }

    #[tokio::test]
    async fn a_wait_for_a_locked_volume_ends_when_the_run_is_cancelled() {
        let root = tempfile::tempdir().unwrap();
        let v = Volumes::new(root.path());
        let none = rbuild_runtime::CancellationToken::new();
        let held = v
            .acquire_cancellable("npm", Sharing::Locked, &none)
            .await
            .unwrap();
        let cancel = rbuild_runtime::CancellationToken::new();
        cancel.cancel();
        let r = v.acquire_cancellable("npm", Sharing::Locked, &cancel).await;
        assert!(matches!(r, Err(crate::locks::Waited::Cancelled)));
        drop(held);
        v.acquire_cancellable("npm", Sharing::Locked, &none)
            .await
            .unwrap();
    }

    #[test]
    fn names_map_to_distinct_safe_directories() {
        let v = Volumes::new(Path::new("/r"));
        assert_ne!(v.dir("a/b"), v.dir("a_b"));
        assert!(v.dir("../../etc").starts_with("/r/volumes"));
    }
}
