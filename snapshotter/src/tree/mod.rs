//! File trees on the host: scanning a host directory into a content
//! listing with a Merkle digest (DESIGN.md invariant 1), copying trees into
//! mounted snapshots, and digesting what a step changed (an overlay upper
//! directory) for early cutoff.
//!
//! - `scan`: host directories and files into a [`HostListing`], with the
//!   stat cache that spares re-hashing ([`scan_host_dir_with`]).
//! - `filter`: include/exclude patterns in `.gitignore` syntax ([`Filter`],
//!   [`CopyFilter`]).
//! - `digest`: content hashes and Merkle digests of listings, trees and
//!   overlay upper directories ([`merkle_digest`], [`upper_digest`]).
//! - `copy`: listings and trees copied into a mounted snapshot
//!   ([`copy_listing`], [`copy_tree`]).
//! - `stubs`: the mount points runc left in an upper directory.
//! - `glob`: names in a tree, one level or by glob.
//!
//! Resolving a path inside a root without leaving it is `crate::confine`
//! (re-exported here for the callers that know it as `tree::resolve_in`).

mod copy;
mod digest;
mod filter;
mod glob;
mod scan;
mod stubs;

use std::sync::Mutex;

use crate::Error;

pub use crate::confine::{resolve_entry_in, resolve_in, under};
pub use copy::{copy_host_entry, copy_listing, copy_tree, copy_tree_into, remove_path};
pub use digest::{hash_file, merkle_digest, tree_digest, upper_digest};
pub use filter::{CopyFilter, Filter};
pub use glob::{entries, glob, glob_matcher};
pub use scan::{
    EntryKind, Hash, HostEntry, HostListing, HostNode, KnownHashes, StatKey, StatRecord,
    scan_host_dir, scan_host_dir_with, scan_host_file,
};
pub use stubs::remove_mount_stubs;

/// Runs `f` on every item, on as many threads as there are CPUs; the first error wins.
fn par_for_each<T: Sync>(
    items: &[T],
    f: impl Fn(&T) -> Result<(), Error> + Sync,
) -> Result<(), Error> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let err: Mutex<Option<Error>> = Mutex::new(None);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(items.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while err.lock().unwrap().is_none() {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else {
                        break;
                    };
                    if let Err(e) = f(item) {
                        *err.lock().unwrap() = Some(e);
                    }
                }
            });
        }
    });
    match err.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
