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

use rustix::fs::FlockOperation;

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

    /// Takes an instance of volume `name`: `private` never waits (it takes
    /// a new instance instead); `shared` and `locked` wait for their lock,
    /// calling `waiting` once if they must, until it is free or `cancel`
    /// fires (`Waited::Cancelled`).
    pub async fn acquire(
        &self,
        name: &str,
        sharing: Sharing,
        cancel: &rbuild_runtime::CancellationToken,
        waiting: impl FnOnce(),
    ) -> Result<VolumeUse, crate::locks::Waited> {
        use crate::locks::{Waited, try_flock, wait_for_lock};
        let dir = self.dir(name);
        std::fs::create_dir_all(&dir).map_err(Waited::Failed)?;
        // For `rbuild cache volumes`: its name (the directory's is
        // shortened and made safe) and when it was last used.
        let _ = std::fs::write(dir.join(NAME_FILE), name);
        let _ = std::fs::write(dir.join(USED_FILE), crate::gc::now_secs().to_string());
        let mode = match sharing {
            Sharing::Shared => FlockOperation::NonBlockingLockShared,
            Sharing::Locked => FlockOperation::NonBlockingLockExclusive,
            Sharing::Private => return private_instance(&dir).map_err(Waited::Failed),
        };
        let (path, lock) = open_lock(&dir, "data").map_err(Waited::Failed)?;
        wait_for_lock(
            cancel,
            waiting,
            || Ok(try_flock(&lock, mode)?.then_some(())),
        )
        .await?;
        Ok(VolumeUse { path, _lock: lock })
    }

    /// Every volume: its name, size, last use and whether a step holds it
    /// now; largest first.
    pub fn list(&self) -> Vec<VolumeInfo> {
        let Ok(dirs) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<VolumeInfo> = dirs
            .flatten()
            .filter(|d| d.path().is_dir() && !d.file_name().to_string_lossy().starts_with('.'))
            .map(|d| {
                let dir = d.path();
                let name = std::fs::read_to_string(dir.join(NAME_FILE))
                    .unwrap_or_else(|_| d.file_name().to_string_lossy().into_owned());
                let last_used = std::fs::read_to_string(dir.join(USED_FILE))
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
                VolumeInfo {
                    size: instances(&dir).iter().map(|i| crate::cache::du(i)).sum(),
                    in_use: held(&dir),
                    name,
                    last_used,
                }
            })
            .collect();
        out.sort_by(|a, b| b.size.cmp(&a.size).then(a.name.cmp(&b.name)));
        out
    }

    /// Removes the volume `name` (every instance), unless a step holds it.
    pub fn remove(&self, name: &str) -> Result<u64, String> {
        let dir = self.dir(name);
        if !dir.is_dir() {
            return Err(format!(
                "no cache volume {name:?} (`rbuild cache volumes` lists them)"
            ));
        }
        // Each instance locked exclusively while it goes, so that no step
        // takes it meanwhile.
        let mut size = 0;
        let mut taken = Vec::new();
        for i in instances(&dir) {
            let instance = i
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            match try_instance(&dir, &instance).map_err(|e| e.to_string())? {
                Some(u) => taken.push(u),
                None => {
                    return Err(format!(
                        "cache volume {name:?} is in use by a running step: try again when it ends"
                    ));
                }
            }
            size += crate::cache::du(&i);
        }
        std::fs::remove_dir_all(&dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
        drop(taken);
        Ok(size)
    }

    /// The primary instance of volume `name` (made if new), exclusively,
    /// without waiting: an error naming it when a step holds it.
    pub fn take_primary(&self, name: &str) -> Result<VolumeUse, String> {
        let dir = self.dir(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let _ = std::fs::write(dir.join(NAME_FILE), name);
        try_instance(&dir, "data")
            .map_err(|e| format!("cache volume {name:?}: {e}"))?
            .ok_or_else(|| {
                format!("cache volume {name:?} is in use by a running step: try again when it ends")
            })
    }

    /// Puts the directory `with` (on the same filesystem, under the state
    /// root) in place of the held instance's contents.
    pub fn replace(&self, held: &VolumeUse, with: &Path) -> std::io::Result<()> {
        let old = held
            .path
            .with_extension(format!("old-{}", std::process::id()));
        std::fs::rename(&held.path, &old)?;
        std::fs::rename(with, &held.path)?;
        std::fs::remove_dir_all(&old)
    }

    /// Where a pull unpacks before it replaces a volume (beside the volumes).
    pub fn scratch(&self) -> PathBuf {
        self.root.join(".incoming")
    }

    /// Removes every volume instance nobody holds; returns how many volumes went entirely.
    pub fn remove_unused(&self) -> std::io::Result<usize> {
        let Ok(dirs) = std::fs::read_dir(&self.root) else {
            return Ok(0);
        };
        let mut removed = 0;
        for dir in dirs.flatten() {
            if dir.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
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

/// A volume's name, as the pipeline gave it.
const NAME_FILE: &str = "name";
/// When it was last taken (Unix seconds).
const USED_FILE: &str = "last-used";

/// What `rbuild cache volumes` shows of a volume.
#[derive(Debug)]
pub struct VolumeInfo {
    pub name: String,
    pub size: u64,
    pub last_used: Option<i64>,
    pub in_use: bool,
}

/// A volume's instance directories (`data`, `private-N`).
fn instances(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a step holds an instance of the volume now.
fn held(dir: &Path) -> bool {
    instances(dir).iter().any(|i| {
        let name = i
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        matches!(try_instance(dir, &name), Ok(None))
    })
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

/// The first instance of a volume nobody holds, a new one if all are held.
fn private_instance(dir: &Path) -> std::io::Result<VolumeUse> {
    for n in 0.. {
        let name = if n == 0 {
            "data".to_string()
        } else {
            format!("private-{n}")
        };
        if let Some(u) = try_instance(dir, &name)? {
            return Ok(u);
        }
    }
    unreachable!("the loop only ends by returning")
}

fn try_instance(dir: &Path, name: &str) -> std::io::Result<Option<VolumeUse>> {
    let (path, lock) = open_lock(dir, name)?;
    Ok(
        crate::locks::try_flock(&lock, FlockOperation::NonBlockingLockExclusive)?
            .then_some(VolumeUse { path, _lock: lock }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_runtime::CancellationToken;

    async fn take(v: &Volumes, name: &str, sharing: Sharing) -> VolumeUse {
        let none = CancellationToken::new();
        v.acquire(name, sharing, &none, || panic!("{name} is free: no wait"))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn private_users_get_their_own_instance_and_reuse_it_later() {
        let root = tempfile::tempdir().unwrap();
        let v = Volumes::new(root.path());
        let a = take(&v, "go-mod", Sharing::Private).await;
        let b = take(&v, "go-mod", Sharing::Private).await;
        assert_ne!(a.path, b.path);
        let a_path = a.path.clone();
        drop(a);
        let c = take(&v, "go-mod", Sharing::Private).await;
        assert_eq!(c.path, a_path, "a free instance is reused");
    }

    #[tokio::test]
    async fn shared_users_share_and_locked_users_wait() {
        let root = tempfile::tempdir().unwrap();
        let v = Volumes::new(root.path());
        let s1 = take(&v, "npm", Sharing::Shared).await;
        let s2 = take(&v, "npm", Sharing::Shared).await;
        assert_eq!(s1.path, s2.path);
        // A locked user (another process: its own Volumes and lock file
        // handle) says it waits; it gets the volume once both shared users
        // are gone.
        let (said_waiting, waits) = tokio::sync::oneshot::channel();
        let root2 = root.path().to_path_buf();
        let locked = tokio::spawn(async move {
            let none = CancellationToken::new();
            Volumes::new(&root2)
                .acquire("npm", Sharing::Locked, &none, move || {
                    let _ = said_waiting.send(());
                })
                .await
                .map(|u| u.path)
        });
        waits
            .await
            .expect("locked waits while shared users hold it");
        assert!(!locked.is_finished());
        drop((s1, s2));
        assert_eq!(locked.await.unwrap().unwrap(), v.dir("npm").join("data"));
    }

    #[tokio::test]
    async fn a_wait_for_a_locked_volume_ends_when_the_run_is_cancelled() {
        let root = tempfile::tempdir().unwrap();
        let v = Volumes::new(root.path());
        let held = take(&v, "npm", Sharing::Locked).await;
        let cancel = CancellationToken::new();
        cancel.cancel();
        let r = v.acquire("npm", Sharing::Locked, &cancel, || {}).await;
        assert!(matches!(r, Err(crate::locks::Waited::Cancelled)));
        drop(held);
        take(&v, "npm", Sharing::Locked).await;
    }

    #[tokio::test]
    async fn volumes_are_listed_by_name_and_removed_unless_held() {
        let root = tempfile::tempdir().unwrap();
        let v = Volumes::new(root.path());
        let held = take(&v, "cargo registry", Sharing::Shared).await;
        std::fs::write(held.path.join("crate"), vec![0u8; 4096]).unwrap();
        drop(take(&v, "npm", Sharing::Private).await);
        let listed = v.list();
        assert_eq!(
            listed.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["cargo registry", "npm"]
        );
        assert_eq!(listed[0].size, 4096);
        assert!(listed[0].in_use && !listed[1].in_use);
        assert!(listed[1].last_used.is_some());
        let e = v.remove("cargo registry").unwrap_err();
        assert!(e.contains("in use by a running step"), "{e}");
        drop(held);
        assert_eq!(v.remove("cargo registry").unwrap(), 4096);
        assert!(
            v.remove("cargo registry")
                .unwrap_err()
                .contains("no cache volume")
        );
        assert_eq!(v.list().len(), 1);
    }

    #[test]
    fn names_map_to_distinct_safe_directories() {
        let v = Volumes::new(Path::new("/r"));
        assert_ne!(v.dir("a/b"), v.dir("a_b"));
        assert!(v.dir("../../etc").starts_with("/r/volumes"));
    }
}
