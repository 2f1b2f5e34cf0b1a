//! File operations and reads on snapshots: mounts what a step's actions
//! read and the tree they write, runs rbuild-snapshotter's [`fileops`] on
//! them off the async threads, and commits the result.

use super::*;

/// Where a source's tree is on the host while an operation runs.
fn origin(source: &Source, mounted: Option<&HostMount>) -> Origin {
    match (source, mounted) {
        (Source::Host { listing, path }, _) => Origin::Host {
            listing: listing.clone(),
            path: path.clone(),
        },
        (Source::Snapshot { path, .. }, Some(m)) => Origin::Mounted {
            root: m.path().to_path_buf(),
            path: path.clone(),
        },
        (Source::Snapshot { .. }, None) => unreachable!("a snapshot source is mounted"),
    }
}

/// The file operations of `actions` on the sources mounted in `opened`
/// (in the order the actions name their sources).
fn file_ops(actions: &[FileAction], opened: &[Option<HostMount>]) -> Vec<FileOp> {
    let mut mounted = opened.iter().map(Option::as_ref);
    actions
        .iter()
        .map(|a| a.map_sources(|s| origin(s, mounted.next().flatten())))
        .collect()
}

impl ContainerdWorker {
    /// Applies file operations; see [`Worker::apply`].
    pub(super) async fn run_apply(&self, req: ApplyRequest) -> Result<SnapshotId, SolveError> {
        let active = ActiveKey::unique(&format!("rbuild-active-{}", req.key.short()));
        let labels = HashMap::from([(KEY_LABEL.to_string(), req.key.to_hex())]);
        let (target, _) = self
            .writable(active.clone(), req.parent.as_ref(), labels)
            .await?;
        let mut sources: Vec<Option<HostMount>> = Vec::new();
        let mut result = Ok(());
        for a in &req.actions {
            for s in a.sources() {
                match self.open_source(s).await {
                    Ok(m) => sources.push(m),
                    Err(e) => result = Err(e),
                }
            }
        }
        if result.is_ok() {
            let ops = file_ops(&req.actions, &sources);
            let root = target.path().to_path_buf();
            result = tokio::task::spawn_blocking(move || fileops::apply(&root, &ops))
                .await
                .map_err(|e| SolveError::Internal(format!("file operation task: {e}")))
                .and_then(|r| r.map_err(SolveError::from));
        }
        for m in sources.into_iter().flatten() {
            self.close(m, false).await;
        }
        // Unmount before committing (or removing): containerd owns the bytes again.
        let HostMount { mount, .. } = target;
        drop(mount);
        let committed = match result {
            Ok(()) => self.commit(&active, &req.name, &req.key).await,
            Err(e) => Err(e),
        };
        if committed.is_err() {
            let _ = snapshots::remove(&self.ctd, &active).await;
        }
        committed
    }

    /// Answers a read; see [`Worker::read`].
    pub(super) async fn run_read(
        &self,
        source: Source,
        op: ReadOp,
    ) -> Result<ReadAnswer, SolveError> {
        let read_task = |e: tokio::task::JoinError| SolveError::Internal(format!("read task: {e}"));
        match source {
            Source::Host { listing, path } => {
                tokio::task::spawn_blocking(move || fileops::read_host(&listing, &path, op))
                    .await
                    .map_err(read_task)?
                    .map_err(SolveError::from)
            }
            Source::Snapshot { snapshot, path } => {
                let mounted = self.view(snapshot.as_ref()).await?;
                let root = mounted.path().to_path_buf();
                let answer =
                    tokio::task::spawn_blocking(move || fileops::read_tree(&root, &path, op)).await;
                self.close(mounted, false).await;
                Ok(answer.map_err(read_task)??)
            }
        }
    }
}
