//! Images out: a container's image built from its steps' layers, then
//! published to a registry, exported as a tarball, kept as a tarball
//! step, or loaded back from one.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rbuild_snapshotter::export::{BlobPush, BuiltImage, ImageFormat, Layer};
use rbuild_snapshotter::snapshots::SnapshotId;
use rbuild_snapshotter::{ImageRef, ResolvedImage};

use super::worker::ImageWorker;
use super::*;

impl<W: Worker> Solver<W> {
    /// The worker's image verbs; a worker without them cannot build or load images.
    pub(super) fn image_worker(&self) -> Result<&dyn ImageWorker, SolveError> {
        self.worker
            .images()
            .ok_or_else(|| SolveError::Internal("this worker cannot build or load images".into()))
    }

    // ---------------------------------------------------------------- images

    /// Builds the image of a container: the base image's layers plus one
    /// layer per step on top of it, config and manifest in the content store.
    pub async fn build_image(
        self: &Arc<Self>,
        st: &ContainerState,
        format: ImageFormat,
    ) -> Result<BuiltImage, SolveError> {
        let mut chain = Vec::new();
        let mut tree = st.rootfs.clone();
        let base = loop {
            match tree {
                Tree::Step(step) => {
                    tree = step.plan.parent.clone();
                    chain.push(step);
                }
                Tree::Image(img) => break Some(img),
                Tree::Empty => break None,
                Tree::Host(_) => {
                    return Err(SolveError::Internal(
                        "a container's root filesystem is never a host directory".into(),
                    ));
                }
            }
        };
        chain.reverse();
        let mut lower = match &base {
            Some(img) => self.materialize(&Tree::Image(img.clone())).await?,
            None => None,
        };
        let mut layers = Vec::with_capacity(chain.len());
        for step in &chain {
            let upper = self
                .materialize(&Tree::Step(step.clone()))
                .await?
                .expect("a step has a snapshot");
            let layer = self.layer(lower.as_ref(), &upper, format).await?;
            layers.push((layer, step.plan.description.clone()));
            lower = Some(upper);
        }
        self.image_worker()?
            .assemble(base.as_deref(), &layers, &st.image_config(), format)
            .await
    }

    /// A step's layer, from the index when the blob is still in containerd.
    pub(super) async fn layer(
        &self,
        lower: Option<&SnapshotId>,
        upper: &SnapshotId,
        format: ImageFormat,
    ) -> Result<Layer, SolveError> {
        if let Some(l) = self.index.get_layer(&upper.0, &format.id())?
            && self.image_worker()?.has_blob(&l.desc.digest).await?
        {
            return Ok(l);
        }
        let l = self.image_worker()?.layer(lower, upper, format).await?;
        self.index.put_layer(&upper.0, &format.id(), &l)?;
        Ok(l)
    }

    /// `publish`: builds the container's image and pushes it; returns `address@digest`.
    pub async fn publish(
        self: &Arc<Self>,
        st: &ContainerState,
        address: &str,
        format: ImageFormat,
    ) -> Result<String, SolveError> {
        let target = ImageRef::parse(address)?;
        let image = self.build_image(st, format).await?;
        let auth = st
            .registry_auth
            .get(target.registry())
            .map(|(user, secret)| (user.clone(), Arc::new(secret.plaintext().to_vec())));
        let no = self.progress.started(&format!("publish {target}"));
        let started = Instant::now();
        let progress = self.progress.clone();
        let report = move |blob: &rbuild_snapshotter::BlobDesc, how: BlobPush| {
            progress.detail(
                no,
                &format!(
                    "{} {:.1} MB {}",
                    &blob.digest[..19],
                    blob.size as f64 / 1e6,
                    match how {
                        BlobPush::Uploaded => "uploaded",
                        BlobPush::AlreadyPresent => "already present",
                        BlobPush::MountedFromBase => "mounted from the base image's repository",
                    }
                ),
            );
        };
        match self
            .image_worker()?
            .publish(&image, &target, auth, &report)
            .await
        {
            Ok(digest) => {
                let reference = match target.tag() {
                    Some(_) | None => format!("{target}@{digest}"),
                };
                self.progress
                    .finished(no, started.elapsed().as_millis(), &reference);
                Ok(reference)
            }
            Err(e) => {
                self.progress
                    .failed(no, &format!("publish {target}"), &e.to_string(), &[]);
                Err(e)
            }
        }
    }

    /// `export`: writes the container's image as a tarball at a host path.
    pub async fn export(
        self: &Arc<Self>,
        st: &ContainerState,
        path: &Path,
        name: Option<&str>,
        format: ImageFormat,
    ) -> Result<(), SolveError> {
        let image = self.build_image(st, format).await?;
        let no = self
            .progress
            .started(&format!("export image to {}", path.display()));
        let started = Instant::now();
        self.image_worker()?
            .tarball(&image, name, TarballDest::Host(path.to_path_buf()))
            .await?;
        self.progress.finished(
            no,
            started.elapsed().as_millis(),
            &format!(
                "{} layers, manifest {}",
                image.layers.len(),
                image.manifest.digest
            ),
        );
        Ok(())
    }

    /// `as_tarball`: the container's image as a tarball file, kept as a cached step.
    pub(super) async fn tarball(
        self: &Arc<Self>,
        st: &ContainerState,
        format: ImageFormat,
        name: Option<&str>,
    ) -> Result<FileValue, SolveError> {
        let image = Arc::new(self.build_image(st, format).await?);
        let plan = StepPlan::tarball(image, format, name.map(String::from));
        Ok(FileValue {
            tree: Tree::Step(self.step(plan).await?),
            path: "/image.tar".into(),
        })
    }

    /// Loads an image tarball (once per run per file content).
    pub(super) async fn import_image(
        self: &Arc<Self>,
        file: &FileValue,
    ) -> Result<Arc<ResolvedImage>, SolveError> {
        let source = self.source(&file.tree, &file.path).await?;
        let this = self.clone();
        self.imports
            .get_or_start(&self.tasks, file.content_id(), move || async move {
                let no = this.progress.started("import image tarball");
                let started = Instant::now();
                let img = this
                    .image_worker()?
                    .import_image(source, &this.platform)
                    .await?;
                this.progress.finished(
                    no,
                    started.elapsed().as_millis(),
                    &format!("{} ({} layers)", img.manifest.digest, img.layers.len()),
                );
                Ok(Arc::new(img))
            })
            .await
    }
}
