//! The cache's invariants between the index and containerd (DESIGN.md 2, 3):
//! every row has its committed snapshot and that snapshot is a GC root; no
//! GC-rooted step snapshot lacks a row. [`check`] reports what breaks them
//! (with what dead runs left) for `rbuild cache verify`; [`repair`] puts
//! back what a killed run or prune left half done, at the start of the next
//! run or prune:
//!
//! - killed between a step's row and its GC root: the row is complete, so
//!   its snapshot is made a root (before the dead run's lease goes, which
//!   would let containerd collect it);
//! - killed in a prune between the rows and the roots: the prune is
//!   finished, its snapshots released;
//! - a row whose snapshot is gone is removed (the step runs again).
//!
//! Both are safe beside a live rbuild on the same namespace: snapshots are
//! listed before rows (a run writes its row before it roots the snapshot,
//! so a root seen has its row seen), and a root added is taken back if
//! the row went meanwhile (a prune removes rows before roots).

use std::collections::HashSet;

use anyhow::Result;

use crate::index::Index;
use crate::worker::ContainerdWorker;

/// One broken invariant or leftover, as a user reads it.
pub type Violation = String;

/// Every violation, index and containerd and host; empty when all is well.
pub async fn check(index: &Index, worker: &ContainerdWorker) -> Result<Vec<Violation>> {
    let mut out = Vec::new();
    for problem in index.integrity_check()? {
        out.push(format!("index: PRAGMA integrity_check: {problem}"));
    }
    let snapshots = worker.step_snapshots().await?;
    let held = worker.held_by_live_runs().await?;
    let entries = index.entries()?;
    let recorded: HashSet<_> = entries.iter().map(|e| e.snapshot.clone()).collect();
    for e in &entries {
        match snapshots.get(&e.snapshot) {
            Some(true) => {}
            Some(false) if held.contains(&e.snapshot) => {} // being recorded now
            Some(false) => out.push(format!(
                "index row {} ({}): its snapshot {} is not a GC root; containerd may collect it",
                &e.key[..12],
                e.description,
                e.snapshot.0
            )),
            None => {
                if !crate::solver::Worker::snapshot_exists(worker, &e.snapshot).await? {
                    out.push(format!(
                        "index row {} ({}): its snapshot {} does not exist",
                        &e.key[..12],
                        e.description,
                        e.snapshot.0
                    ));
                }
            }
        }
    }
    let mut unrecorded: Vec<_> = snapshots
        .iter()
        .filter(|(s, rooted)| **rooted && !recorded.contains(*s))
        .map(|(s, _)| s.0.clone())
        .collect();
    unrecorded.sort();
    for s in unrecorded {
        out.push(format!(
            "snapshot {s} is a GC root but no index row has it (never collected)"
        ));
    }
    out.extend(worker.leftovers().await?);
    Ok(out)
}

/// What [`repair`] did.
#[derive(Debug, Default)]
pub struct Repaired {
    pub rooted: usize,
    pub released: usize,
    pub rows_removed: usize,
}

/// Restores the invariants a killed run or prune left broken (see the
/// module's comment). Run before the dead runs' leases are removed.
pub async fn repair(index: &Index, worker: &ContainerdWorker) -> Result<Repaired> {
    let mut done = Repaired::default();
    // Snapshots before rows: see the module's comment.
    let snapshots = worker.step_snapshots().await?;
    let entries = index.entries()?;
    let recorded: HashSet<_> = entries.iter().map(|e| e.snapshot.clone()).collect();
    for (s, rooted) in &snapshots {
        if *rooted && !recorded.contains(s) {
            worker.release(s).await?;
            done.released += 1;
        }
    }
    let mut gone = Vec::new();
    for e in entries {
        match snapshots.get(&e.snapshot) {
            Some(true) => {}
            Some(false) => {
                crate::solver::Worker::keep(worker, &e.snapshot).await?;
                // A prune may have taken the row meanwhile: then no root.
                if !index
                    .entries()?
                    .iter()
                    .any(|now| now.key == e.key && now.snapshot == e.snapshot)
                {
                    worker.release(&e.snapshot).await?;
                } else {
                    done.rooted += 1;
                }
            }
            None => {
                if !crate::solver::Worker::snapshot_exists(worker, &e.snapshot).await? {
                    gone.push(e);
                }
            }
        }
    }
    done.rows_removed = gone.len();
    index.forget(&gone, "lost (its snapshot was gone)")?;
    if done.rooted + done.released + done.rows_removed > 0 {
        tracing::info!(
            rooted = done.rooted,
            released = done.released,
            rows_removed = done.rows_removed,
            "finished what an interrupted run or prune left half done"
        );
    }
    Ok(done)
}
