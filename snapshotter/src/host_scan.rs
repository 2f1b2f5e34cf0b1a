//! What a host scan is asked for — a directory under a filter, or a single
//! file — and the blocking scan itself, which [`crate::tree`] performs with
//! what the stat cache already knows.

use std::path::PathBuf;

use crate::Error;
use crate::tree::{self, Filter, HostListing, KnownHashes};

/// A host tree to scan.
#[derive(Clone, Debug)]
pub enum HostScan {
    /// A directory, under include/exclude patterns.
    Dir { root: PathBuf, filter: Filter },
    /// One file (a listing of its directory holding just it).
    File { path: PathBuf },
}

impl HostScan {
    /// The directory the stat cache's records are kept for.
    pub fn root(&self) -> PathBuf {
        match self {
            HostScan::Dir { root, .. } => root.clone(),
            HostScan::File { path } => path.parent().map(PathBuf::from).unwrap_or_default(),
        }
    }
}

/// What the stat cache knows of a scan's root, delivered when the scan
/// first needs it (so the lookup can run while the walk starts).
pub type Known = Box<dyn FnOnce() -> KnownHashes + Send>;

/// Scans a host tree; returns the listing and the stat records of the files
/// hashed now. Blocking: run it off the async threads.
pub fn scan(scan: &HostScan, known: Known) -> Result<(HostListing, KnownHashes), Error> {
    match scan {
        HostScan::Dir { root, filter } => tree::scan_host_dir_with(root, filter, known),
        HostScan::File { path } => tree::scan_host_file(path, &known()),
    }
}
