//! The chain of builder calls behind a value, as a persistent list:
//! extending a value is O(1) and shares the description of its parent.

use std::sync::Arc;

struct OpNode<T> {
    parent: Option<Arc<OpNode<T>>>,
    op: T,
    /// Where the pipeline made this call (`file:line`), for error messages.
    at: Option<String>,
}

pub(crate) struct Ops<T>(Option<Arc<OpNode<T>>>);

// Not derived: a derive would ask `T: Clone`/`T: Default`, which sharing the list does not need.
impl<T> Clone for Ops<T> {
    fn clone(&self) -> Self {
        Ops(self.0.clone())
    }
}

impl<T> Default for Ops<T> {
    fn default() -> Self {
        Ops(None)
    }
}

impl<T: Clone> Ops<T> {
    pub(crate) fn push(&self, op: T, at: Option<String>) -> Ops<T> {
        Ops(Some(Arc::new(OpNode {
            parent: self.0.clone(),
            op,
            at,
        })))
    }

    /// The operations, oldest first, and where each was called.
    pub(crate) fn to_vecs(&self) -> (Vec<T>, Vec<Option<String>>) {
        let mut ops = Vec::new();
        let mut at = Vec::new();
        let mut node = self.0.as_deref();
        while let Some(n) = node {
            ops.push(n.op.clone());
            at.push(n.at.clone());
            node = n.parent.as_deref();
        }
        ops.reverse();
        at.reverse();
        (ops, at)
    }
}

/// `file:line` of the builder call a `#[track_caller]` method was called from.
#[track_caller]
pub(crate) fn call_site() -> Option<String> {
    let at = std::panic::Location::caller();
    Some(format!("{}:{}", at.file(), at.line()))
}
