//! Cross-process step locks (DESIGN.md invariant 5): two rbuild processes
//! that need the same cache key at once run it once. The first holds an
//! exclusive `flock` on `locks/<key>` while it runs the step; the second
//! waits for it, then finds the result in the index.

use std::fs::File;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use crate::key::CacheKey;
use crate::solver::SolveError;

pub struct KeyLocks {
    dir: PathBuf,
}

/// Held while a step runs; released on drop (and by the kernel if the process dies).
pub struct KeyLock {
    _file: File,
}

impl KeyLocks {
    pub fn new(dir: &Path) -> KeyLocks {
        KeyLocks {
            dir: dir.to_path_buf(),
        }
    }

    pub async fn lock(&self, key: CacheKey) -> Result<KeyLock, SolveError> {
        let path = self.dir.join(key.to_hex());
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            flock(&file, FlockOperation::LockExclusive)?;
            Ok::<_, std::io::Error>(KeyLock { _file: file })
        })
        .await
        .map_err(|e| SolveError::Internal(format!("lock task: {e}")))?
        .map_err(|e| SolveError::Internal(format!("cannot lock step {}: {e}", key.short())))
    }
}
