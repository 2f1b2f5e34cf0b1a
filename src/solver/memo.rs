//! Memoization of work within one run: the same identity asked twice at
//! once is computed once (DESIGN.md invariant 5, within a process).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio_util::task::TaskTracker;

use super::SolveError;

pub(super) type MemoFuture<T> = Shared<BoxFuture<'static, Result<T, SolveError>>>;

/// Results being computed or computed in this run, by identity: the same
/// identity asked twice at once is computed once.
pub(super) struct Memo<T: Clone> {
    map: Mutex<HashMap<String, MemoFuture<T>>>,
}

impl<T: Clone + Send + Sync + 'static> Memo<T> {
    pub(super) fn new() -> Self {
        Memo {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The running or finished computation for `id`, or a new one. It runs
    /// in its own task so that it completes (and cleans up) even when every
    /// requester has gone away.
    pub(super) fn get_or_start<F>(
        &self,
        tasks: &TaskTracker,
        id: String,
        start: impl FnOnce() -> F,
    ) -> MemoFuture<T>
    where
        F: Future<Output = Result<T, SolveError>> + Send + 'static,
    {
        let mut map = self.map.lock().expect("memo lock poisoned");
        if let Some(f) = map.get(&id) {
            return f.clone();
        }
        let handle = tasks.spawn(start());
        let fut = async move {
            handle
                .await
                .unwrap_or_else(|e| Err(SolveError::Internal(format!("step task failed: {e}"))))
        }
        .boxed()
        .shared();
        map.insert(id, fut.clone());
        fut
    }
}
