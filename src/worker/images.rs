//! Images out on containerd: layers from steps' snapshots, image assembly
//! in the content store, publishing, tarballs and their import.

use futures::future::BoxFuture;

use super::*;

impl ImageWorker for ContainerdWorker {
    fn layer<'a>(
        &'a self,
        lower: Option<&'a SnapshotId>,
        upper: &'a SnapshotId,
        format: ImageFormat,
    ) -> BoxFuture<'a, Result<Layer, SolveError>> {
        Box::pin(async move {
            let lease = self.lease().await?;
            Ok(export::diff_layer(&self.ctd, lease, &self.scratch, lower, upper, format).await?)
        })
    }

    fn has_blob<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<bool, SolveError>> {
        Box::pin(async move {
            let lease = self.lease().await?;
            Ok(rbuild_snapshotter::content::hold(&self.ctd, lease, digest).await?)
        })
    }

    fn assemble<'a>(
        &'a self,
        base: Option<&'a ResolvedImage>,
        layers: &'a [(Layer, String)],
        config: &'a ImageConfig,
        format: ImageFormat,
    ) -> BoxFuture<'a, Result<BuiltImage, SolveError>> {
        Box::pin(async move {
            let lease = self.lease().await?;
            let platform = base
                .map(|b| b.platform.clone())
                .unwrap_or_else(rbuild_snapshotter::host_platform);
            // Reproducible by default: the epoch, not the time of the build.
            let created = if format.real_timestamps {
                rbuild_containerd::rfc3339(SystemTime::now())
            } else {
                "1970-01-01T00:00:00Z".to_string()
            };
            Ok(export::assemble(
                &self.ctd, lease, base, layers, config, &platform, format, &created,
            )
            .await?)
        })
    }

    fn publish<'a>(
        &'a self,
        image: &'a BuiltImage,
        target: &'a ImageRef,
        auth: Option<(String, Arc<Vec<u8>>)>,
        report: &'a (dyn Fn(&BlobDesc, BlobPush) + Send + Sync),
    ) -> BoxFuture<'a, Result<String, SolveError>> {
        Box::pin(async move {
            if let Some((user, password)) = auth {
                self.registry.set_credentials(
                    target.registry(),
                    &user,
                    &String::from_utf8_lossy(&password),
                );
            }
            let digest = export::publish(&self.ctd, &self.registry, image, target, report).await?;
            // containerd keeps what was published, as after `docker push`.
            rbuild_snapshotter::pull::put_image_record(
                &self.ctd,
                &target.to_string(),
                &image.manifest,
            )
            .await?;
            Ok(digest)
        })
    }

    fn tarball<'a>(
        &'a self,
        image: &'a BuiltImage,
        name: Option<&'a str>,
        dest: TarballDest,
    ) -> BoxFuture<'a, Result<Option<SnapshotId>, SolveError>> {
        Box::pin(async move {
            match dest {
                TarballDest::Host(path) => {
                    export::write_tarball(&self.ctd, image, name, &path).await?;
                    if let Some(n) = name {
                        rbuild_snapshotter::pull::put_image_record(&self.ctd, n, &image.manifest)
                            .await?;
                    }
                    Ok(None)
                }
                TarballDest::Snapshot {
                    key,
                    name: commit_as,
                } => {
                    let active = ActiveKey::unique(&format!("rbuild-active-{}", key.short()));
                    let labels = HashMap::from([(KEY_LABEL.to_string(), key.to_hex())]);
                    let (mnt, _) = self.writable(active.clone(), None, labels).await?;
                    let written = export::write_tarball(
                        &self.ctd,
                        image,
                        name,
                        &mnt.path().join("image.tar"),
                    )
                    .await;
                    let HostMount { mount, .. } = mnt;
                    drop(mount);
                    let result = match written {
                        Ok(()) => self.commit(&active, &commit_as, &key).await.map(Some),
                        Err(e) => Err(e.into()),
                    };
                    if result.is_err() {
                        let _ = snapshots::remove(&self.ctd, &active).await;
                    }
                    result
                }
            }
        })
    }

    fn cache_lookup<'a>(
        &'a self,
        entry: &'a ImageRef,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, SolveError>> {
        Box::pin(async move {
            Ok(self
                .registry
                .manifest_if_tagged(entry)
                .await?
                .map(|(body, _)| body.to_vec()))
        })
    }

    fn cache_blob<'a>(
        &'a self,
        repo: &'a ImageRef,
        desc: &'a BlobDesc,
    ) -> BoxFuture<'a, Result<Vec<u8>, SolveError>> {
        Box::pin(async move {
            Ok(self
                .registry
                .fetch_blob(repo, &desc.as_oci_client())
                .await?)
        })
    }

    fn cache_push<'a>(
        &'a self,
        entry_ref: &'a ImageRef,
        lower: Option<&'a SnapshotId>,
        upper: &'a SnapshotId,
        upper_dir: Option<&'a std::path::Path>,
        mut entry: crate::remote::Entry,
        outputs: [Vec<u8>; 2],
    ) -> BoxFuture<'a, Result<u64, SolveError>> {
        use crate::remote::{self, Stream};
        Box::pin(async move {
            let started = std::time::Instant::now();
            let mut uploaded = 0u64;
            let layer = match upper_dir.filter(|d| d.is_dir()) {
                // One pass over the step's own directory, into a file.
                Some(dir) => {
                    let file = tempfile::NamedTempFile::new_in(&self.scratch)
                        .map_err(|e| SolveError::Internal(format!("scratch file: {e}")))?;
                    let (dir, out) = (dir.to_path_buf(), file.path().to_path_buf());
                    let (diff_id, digest, size) =
                        tokio::task::spawn_blocking(move || export::pack_dir(&dir, &out))
                            .await
                            .map_err(|e| SolveError::Internal(format!("layer task: {e}")))??;
                    if self
                        .registry
                        .push_file(entry_ref, file.path(), &digest, size)
                        .await?
                    {
                        uploaded += size;
                    }
                    Layer {
                        desc: BlobDesc {
                            media_type: remote::LAYER_TYPE.into(),
                            digest,
                            size: size as i64,
                        },
                        diff_id,
                    }
                }
                None => {
                    let lease = self.lease().await?;
                    let format = ImageFormat {
                        compression: export::Compression::Zstd,
                        media_types: export::MediaTypes::Oci,
                        real_timestamps: true,
                    };
                    let layer =
                        export::diff_layer(&self.ctd, lease, &self.scratch, lower, upper, format)
                            .await?;
                    let digest = layer.desc.digest.clone();
                    if !self.registry.blob_exists(entry_ref, &digest).await? {
                        let open = || async {
                            rbuild_snapshotter::content::read_stream(&self.ctd, &digest).await
                        };
                        self.registry
                            .push_blob(entry_ref, &digest, layer.desc.size as u64, open)
                            .await?;
                        uploaded += layer.desc.size as u64;
                    }
                    layer
                }
            };
            tracing::debug!(
                ms = started.elapsed().as_millis() as u64,
                size = layer.desc.size,
                "remote cache: the step's layer pushed"
            );
            entry.layer = layer.desc;
            entry.diff_id = layer.diff_id;
            for (stream, bytes, media_type) in [
                (&mut entry.stdout, &outputs[0], remote::STDOUT_TYPE),
                (&mut entry.stderr, &outputs[1], remote::STDERR_TYPE),
            ] {
                if bytes.len() > remote::INLINE_OUTPUT {
                    let digest = self.registry.push_bytes(entry_ref, bytes.clone()).await?;
                    uploaded += bytes.len() as u64;
                    *stream = Stream::Blob(BlobDesc {
                        media_type: media_type.into(),
                        digest,
                        size: bytes.len() as i64,
                    });
                } else {
                    *stream = Stream::Inline(bytes.clone());
                }
            }
            self.registry
                .push_bytes(entry_ref, remote::EMPTY_BODY)
                .await?;
            self.registry
                .push_manifest(entry_ref, &entry.manifest(), remote::MANIFEST_TYPE)
                .await?;
            Ok(uploaded)
        })
    }

    fn cache_unpack<'a>(
        &'a self,
        repo: &'a ImageRef,
        entry: &'a crate::remote::Entry,
        parent: Option<&'a SnapshotId>,
        name: &'a SnapshotId,
    ) -> BoxFuture<'a, Result<u64, SolveError>> {
        Box::pin(async move {
            let lease = self.lease().await?;
            let onto = rbuild_snapshotter::pull::LayerOnto {
                reference: repo,
                desc: &entry.layer,
                diff_id: &entry.diff_id,
                name,
                parent,
            };
            let fetched =
                rbuild_snapshotter::pull::unpack_onto(&self.ctd, &self.registry, lease, onto)
                    .await?;
            Ok(fetched.unwrap_or(0))
        })
    }

    fn cache_read<'a>(
        &'a self,
        repo: &'a ImageRef,
        entry: &'a crate::remote::Entry,
        path: &'a str,
        op: ReadOp,
    ) -> BoxFuture<'a, Result<Option<ReadAnswer>, SolveError>> {
        use rbuild_snapshotter::unpack;
        Box::pin(async move {
            let Some(compression) = unpack::Compression::of_media_type(&entry.layer.media_type)
            else {
                return Ok(None);
            };
            let dir = tempfile::Builder::new()
                .prefix("remote-read-")
                .tempdir_in(&self.scratch)
                .map_err(|e| SolveError::Internal(format!("scratch directory: {e}")))?;
            let root = dir.path().join("root");
            let dest = root.join(path.trim_start_matches('/'));
            let stream = self
                .registry
                .blob_stream(repo, &entry.layer.as_oci_client(), "layer")
                .await?;
            let wanted = path.to_string();
            let found = rbuild_snapshotter::content::read_blocking(stream, move |reader| {
                unpack::file_in_layer(
                    reader,
                    compression,
                    &wanted,
                    &dest,
                    unpack::max_layer_size(),
                )
            })
            .await
            .map_err(|e| SolveError::Internal(format!("layer reader: {e}")))?;
            match found {
                // Only bytes whose layer matched its digests are used.
                Ok((true, digest)) if digest == entry.diff_id => {
                    let path = path.to_string();
                    tokio::task::spawn_blocking(move || {
                        let answer = rbuild_snapshotter::fileops::read_tree(&root, &path, op);
                        drop(dir);
                        answer
                    })
                    .await
                    .map_err(|e| SolveError::Internal(format!("read task: {e}")))?
                    .map(Some)
                    .map_err(SolveError::from)
                }
                Ok(_) => Ok(None),
                Err(e) => Err(SolveError::Image(format!(
                    "layer {} of {}: {e}",
                    entry.layer.digest,
                    crate::remote::shown(repo)
                ))),
            }
        })
    }

    fn import_image<'a>(
        &'a self,
        source: Source,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<ResolvedImage, SolveError>> {
        Box::pin(async move {
            let lease = self.lease().await?;
            match &source {
                Source::Host { listing, path } => {
                    let Some(HostNode::File(entry)) = listing.at(path) else {
                        return Err(SolveError::Invalid(format!("{path} is not a file")));
                    };
                    let file = listing.root.join(&entry.rel);
                    Ok(export::import_tarball(&self.ctd, lease, &file, platform).await?)
                }
                Source::Snapshot { snapshot, path } => {
                    let mounted = self.view(snapshot.as_ref()).await?;
                    let result = match confine::resolve_in(mounted.path(), path) {
                        Ok(file) => export::import_tarball(&self.ctd, lease, &file, platform).await,
                        Err(e) => Err(e),
                    };
                    self.close(mounted, false).await;
                    Ok(result?)
                }
            }
        })
    }
}
