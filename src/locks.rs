//! Cross-process step locks (DESIGN.md invariant 5): two rbuild processes
//! that need the same cache key at once run it once. The first holds an
//! exclusive `flock` on `locks/<key>` while it runs the step; the second
//! waits for it, then finds the result in the index.
//!
//! Waiting is a non-blocking `flock` tried again and again (every 10 ms at
//! first, backing off to 200 ms) rather than a blocking one on a thread: a
//! blocking `flock` cannot be given up, and a run that is cancelled
//! (Ctrl-C, SIGTERM) must stop waiting at once. [`wait_for_lock`] is that
//! loop; cache volumes (`crate::volumes`) wait with it too.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rbuild_runtime::CancellationToken;
use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

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

    /// Takes the lock of `key`; while another process holds it, calls
    /// `waiting` once and waits, until the lock is free or `cancel` fires
    /// ([`SolveError::Cancelled`]).
    pub async fn lock(
        &self,
        key: CacheKey,
        cancel: &CancellationToken,
        waiting: impl FnOnce(),
    ) -> Result<KeyLock, SolveError> {
        let path = self.dir.join(key.to_hex());
        let cannot = |e: std::io::Error| {
            SolveError::Internal(format!(
                "cannot lock step {} ({}): {e}",
                key.short(),
                path.display()
            ))
        };
        std::fs::create_dir_all(&self.dir).map_err(cannot)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(cannot)?;
        let file = wait_for_lock(cancel, waiting, || {
            try_flock(&file, FlockOperation::NonBlockingLockExclusive)
                .map(|taken| taken.then_some(()))
        })
        .await
        .map_err(|e| match e {
            Waited::Cancelled => SolveError::Cancelled,
            Waited::Failed(e) => cannot(e),
        })
        .map(|()| file)?;
        Ok(KeyLock { _file: file })
    }
}

/// Takes a non-blocking `flock`: false when someone else holds it.
pub fn try_flock(file: &File, op: FlockOperation) -> std::io::Result<bool> {
    match flock(file, op) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Why [`wait_for_lock`] came back without the lock.
#[derive(Debug)]
pub enum Waited {
    Cancelled,
    Failed(std::io::Error),
}

/// Calls `try_take` (which must not block) until it takes the lock
/// (Some), calling `waiting` once before the first wait; gives up when
/// `cancel` fires.
pub async fn wait_for_lock<T>(
    cancel: &CancellationToken,
    waiting: impl FnOnce(),
    mut try_take: impl FnMut() -> std::io::Result<Option<T>>,
) -> Result<T, Waited> {
    let mut waiting = Some(waiting);
    let mut pause = Duration::from_millis(10);
    loop {
        if cancel.is_cancelled() {
            return Err(Waited::Cancelled);
        }
        if let Some(taken) = try_take().map_err(Waited::Failed)? {
            return Ok(taken);
        }
        if let Some(w) = waiting.take() {
            w();
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(Waited::Cancelled),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CacheKey {
        crate::key::KeyBuilder::new("lock-test").finish()
    }

    #[tokio::test]
    async fn a_wait_for_a_held_lock_ends_when_the_run_is_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let locks = KeyLocks::new(dir.path());
        let none = CancellationToken::new();
        let held = locks.lock(key(), &none, || {}).await.unwrap();
        let cancel = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let cancel = cancel.clone();
            let dir = dir.path().to_path_buf();
            tokio::spawn(async move {
                KeyLocks::new(&dir)
                    .lock(key(), &cancel, move || {
                        let _ = tx.send(());
                    })
                    .await
                    .map(|_| ())
            })
        };
        // The second taker is waiting (it said so); cancelling ends its wait.
        rx.await.unwrap();
        cancel.cancel();
        let r = waiter.await.unwrap();
        assert!(matches!(r, Err(SolveError::Cancelled)), "{:?}", r.err());
        drop(held);
        let again = locks.lock(key(), &none, || panic!("free: no wait")).await;
        assert!(again.is_ok());
    }
}
