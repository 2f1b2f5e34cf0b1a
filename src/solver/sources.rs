//! Where a tree's bytes come from: images resolved to digests (once per
//! run, described from the index when known), host directories and files
//! scanned with the stat cache, and the source a read or copy uses.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rbuild_snapshotter::host_scan::HostScan;
use rbuild_snapshotter::tree::{Filter, HostListing, KnownHashes};
use rbuild_snapshotter::{ImageRef, ResolvedImage};

use super::*;

impl<W: Worker> Solver<W> {
    // ----------------------------------------------------------------- reads

    /// Answers a read-only question about a directory or file value.
    pub async fn read(
        self: &Arc<Self>,
        tree: &Tree,
        path: &str,
        op: ReadOp,
    ) -> Result<ReadAnswer, SolveError> {
        if let Some(answer) = self.read_remote(tree, path, &op).await {
            return Ok(answer);
        }
        let source = self.source(tree, path).await?;
        self.worker.read(source, op).await
    }

    /// Where the bytes of `path` in `tree` can be read: the host for a
    /// scanned host directory, else the tree's snapshot.
    pub(super) async fn source(
        self: &Arc<Self>,
        tree: &Tree,
        path: &str,
    ) -> Result<Source, SolveError> {
        Ok(match tree {
            Tree::Host(listing) => Source::Host {
                listing: listing.clone(),
                path: path.to_string(),
            },
            other => Source::Snapshot {
                snapshot: self.materialize(other).await?,
                path: path.to_string(),
            },
        })
    }

    // ------------------------------------------------------------ resolution

    pub(super) async fn resolve_image(
        self: &Arc<Self>,
        address: &str,
    ) -> Result<Arc<ResolvedImage>, SolveError> {
        let reference = ImageRef::parse(address)?;
        let this = self.clone();
        self.images
            .get_or_start(&self.tasks, reference.to_string(), move || async move {
                // A tag rbuild.lock pins resolves with no request.
                let lock = this.image_lock.get();
                let pinned = match lock {
                    Some(l) => l.pinned(&reference).map_err(SolveError::Invalid)?,
                    None => None,
                };
                let digest = match pinned {
                    Some(d) => d,
                    None => {
                        let d = this.worker.resolve_digest(&reference).await?;
                        if let Some(l) = lock {
                            l.resolved(&reference, &d);
                        }
                        d
                    }
                };
                let platform = this.platform.to_string();
                if let Some(json) = this.index.get_image(&digest, &platform)?
                    && let Ok(img) = serde_json::from_str::<ResolvedImage>(&json)
                    && img.reference == reference.to_string()
                {
                    return Ok(Arc::new(img));
                }
                let img = this
                    .worker
                    .describe_image(&reference, &digest, &this.platform)
                    .await?;
                let json = serde_json::to_string(&img)
                    .map_err(|e| SolveError::Internal(format!("encode image: {e}")))?;
                this.index.put_image(&digest, &platform, &json)?;
                Ok(Arc::new(img))
            })
            .await
    }

    /// Scans a host directory once per run, skipping files the stat cache vouches for.
    pub(super) async fn host_dir(
        self: &Arc<Self>,
        path: &str,
        filter: Filter,
    ) -> Result<Arc<HostListing>, SolveError> {
        let id = format!(
            "dir\0{path}\0{}\0{}\0{}",
            filter.include.join("\u{1}"),
            filter.exclude.join("\u{1}"),
            filter.gitignore
        );
        let scan = HostScan::Dir {
            root: PathBuf::from(path),
            filter,
        };
        self.host_scan(id, scan, None).await
    }

    /// Scans a single host file (a listing of its directory holding just it).
    pub(super) async fn host_file(
        self: &Arc<Self>,
        path: &str,
    ) -> Result<Arc<HostListing>, SolveError> {
        let file = PathBuf::from(path);
        let (Some(_), Some(name)) = (file.parent(), file.file_name()) else {
            return Err(SolveError::Invalid(format!(
                "host file {path:?} is not a file path"
            )));
        };
        let name = name.to_string_lossy().into_owned();
        self.host_scan(
            format!("file\0{path}"),
            HostScan::File { path: file },
            Some(name),
        )
        .await
    }

    /// Runs a host scan on the worker once per run, with the stat cache's
    /// knowledge of its root (or of just `only` in it), and records what
    /// the scan hashed.
    pub(super) async fn host_scan(
        self: &Arc<Self>,
        id: String,
        scan: HostScan,
        only: Option<String>,
    ) -> Result<Arc<HostListing>, SolveError> {
        let root = scan.root();
        if !root.is_absolute() {
            return Err(SolveError::Invalid(format!(
                "host path {} must be absolute",
                root.display()
            )));
        }
        let this = self.clone();
        self.hosts
            .get_or_start(&self.tasks, id, move || async move {
                let started = Instant::now();
                // The stat cache's records load while the walk runs.
                let query = {
                    let (index, dir) = (this.index.clone(), root.clone());
                    std::thread::spawn(move || match &only {
                        Some(name) => index.known_hash(&dir, name),
                        None => index.known_hashes(&dir),
                    })
                };
                let known = Box::new(move || match query.join() {
                    Ok(Ok(known)) => known,
                    // Only an optimisation: without it, every file is read.
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "could not read the stat cache");
                        KnownHashes::new()
                    }
                    Err(_) => KnownHashes::new(),
                });
                let (listing, fresh) = this.worker.scan_host(scan, known).await?;
                let (index, dir) = (this.index.clone(), root.clone());
                tokio::task::spawn_blocking(move || index.put_known_hashes(&dir, &fresh))
                    .await
                    .map_err(|e| SolveError::Internal(format!("stat cache task: {e}")))??;
                this.progress.past(
                    &format!(
                        "context {}: {} entries, {} files read ({:.1} MB) in {} ms",
                        root.display(),
                        listing.entries.len(),
                        listing.files_hashed,
                        listing.bytes_hashed as f64 / 1e6,
                        started.elapsed().as_millis()
                    ),
                    "scan",
                    started,
                );
                Ok(Arc::new(listing))
            })
            .await
    }
}
