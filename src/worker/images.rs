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
