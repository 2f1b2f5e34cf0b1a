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
        api: crate::api::Api,
    ) -> Result<String, SolveError> {
        let target = ImageRef::parse(address)?;
        let auth = match credential_for(&st.registry_auth, &target) {
            Ok(found) => found,
            Err(message) if api >= crate::api::UNMATCHED_REGISTRY_AUTH_FAILS => {
                return Err(SolveError::Invalid(message));
            }
            Err(message) => {
                self.progress.info(&format!("warning: {message}"));
                None
            }
        };
        let image = self.build_image(st, format).await?;
        let auth = auth.map(|(user, secret)| (user.clone(), Arc::new(secret.plaintext().to_vec())));
        let no = self.progress.started(&format!("publish {target}"));
        let started = Instant::now();
        let progress = self.progress.clone();
        let report = move |blob: &rbuild_snapshotter::BlobDesc, how: BlobPush| {
            if matches!(how, BlobPush::Uploaded) {
                progress.bytes(no, 0, blob.size.max(0) as u64);
            }
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

/// What a `with_registry_auth` address covers: a registry host (`ghcr.io`,
/// `127.0.0.1:5001`), or a repository prefix in one (`ghcr.io/org`,
/// `ghcr.io/org/app:1`, whose tag or digest does not count), as Docker's
/// and Dagger's addresses do. A first part that is not a host
/// (`org/app`) is on Docker Hub.
pub(crate) fn auth_scope(address: &str) -> Result<(String, String), SolveError> {
    let a = address.trim();
    let a = a
        .strip_prefix("https://")
        .or_else(|| a.strip_prefix("http://"))
        .unwrap_or(a)
        .trim_end_matches('/');
    if a.is_empty() || a.contains(char::is_whitespace) {
        return Err(SolveError::Invalid(format!(
            "with_registry_auth: {address:?} is not a registry address: give a host (\"ghcr.io\", \"127.0.0.1:5001\") or a repository in one (\"ghcr.io/org/app\")"
        )));
    }
    let (first, rest) = a.split_once('/').unwrap_or((a, ""));
    let hostlike = rest.is_empty() || first.contains(['.', ':']) || first == "localhost";
    let (host, repo) = if hostlike {
        (first, rest)
    } else {
        ("docker.io", a)
    };
    let repo = repo.split_once('@').map_or(repo, |(r, _)| r);
    // A tag is after a colon in the last path component.
    let repo = match repo.rsplit_once('/') {
        Some((dir, last)) => format!("{dir}/{}", last.split(':').next().unwrap_or(last)),
        None => repo.split(':').next().unwrap_or(repo).to_string(),
    };
    Ok((canonical_host(host), repo))
}

fn canonical_host(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        h => h.to_ascii_lowercase(),
    }
}

/// The credential of `auths` (by address) that covers `target`, the most
/// specific first (a repository prefix before its host); none when there
/// are no credentials. `Err`: there are, and none covers it.
#[allow(clippy::type_complexity)]
fn credential_for<'a>(
    auths: &'a std::collections::BTreeMap<String, (String, Arc<crate::secrets::SecretValue>)>,
    target: &ImageRef,
) -> Result<Option<&'a (String, Arc<crate::secrets::SecretValue>)>, String> {
    if auths.is_empty() {
        return Ok(None);
    }
    let host = canonical_host(target.registry());
    let repo = target.repository();
    let covering = auths
        .iter()
        .filter_map(|(address, cred)| {
            let (h, prefix) = auth_scope(address).ok()?;
            let covers = h == host
                && (prefix.is_empty() || repo == prefix || repo.starts_with(&format!("{prefix}/")));
            covers.then_some((prefix.len(), cred))
        })
        .max_by_key(|(len, _)| *len);
    match covering {
        Some((_, cred)) => Ok(Some(cred)),
        None => {
            let given: Vec<String> = auths.keys().map(|a| format!("{a:?}")).collect();
            Err(format!(
                "with_registry_auth({}) covers nothing this publish pushes to: {target} is repository {repo} on registry {host}; give that registry's host (\"{host}\") or a prefix of the repository (\"{host}/{repo}\")",
                given.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod auth_tests {
    use super::*;

    #[test]
    fn an_address_is_a_host_or_a_repository_prefix_in_one() {
        let scope = |a: &str| auth_scope(a).unwrap();
        let pair = |h: &str, r: &str| (h.to_string(), r.to_string());
        assert_eq!(scope("127.0.0.1:5001"), pair("127.0.0.1:5001", ""));
        assert_eq!(scope("ghcr.io"), pair("ghcr.io", ""));
        assert_eq!(scope("https://ghcr.io/"), pair("ghcr.io", ""));
        assert_eq!(scope("ghcr.io/org"), pair("ghcr.io", "org"));
        assert_eq!(scope("ghcr.io/org/app:1"), pair("ghcr.io", "org/app"));
        assert_eq!(
            scope("127.0.0.1:5001/app@sha256:abc"),
            pair("127.0.0.1:5001", "app")
        );
        assert_eq!(scope("localhost/app"), pair("localhost", "app"));
        assert_eq!(scope("org/app"), pair("docker.io", "org/app"));
        assert_eq!(scope("index.docker.io/org"), pair("docker.io", "org"));
        assert!(auth_scope(" ").is_err());
    }

    #[test]
    fn the_most_specific_credential_covering_the_target_is_used() {
        let secrets = crate::secrets::Secrets::default();
        let cred = |user: &str| {
            let def = crate::graph::SecretDef {
                name: user.into(),
                uri: None,
                plaintext: Some(format!("pw-{user}")),
            };
            (
                user.to_string(),
                secrets
                    .resolve(&def, crate::secrets::Rule::AllTrim)
                    .unwrap(),
            )
        };
        let mut auths = std::collections::BTreeMap::new();
        let target = ImageRef::parse("ghcr.io/org/app:1").unwrap();
        assert!(credential_for(&auths, &target).unwrap().is_none());
        auths.insert("ghcr.io".to_string(), cred("host"));
        auths.insert("ghcr.io/org".to_string(), cred("org"));
        auths.insert("ghcr.io/other".to_string(), cred("other"));
        let user = |t: &str| {
            credential_for(&auths, &ImageRef::parse(t).unwrap())
                .unwrap()
                .unwrap()
                .0
                .clone()
        };
        assert_eq!(user("ghcr.io/org/app:1"), "org");
        assert_eq!(user("ghcr.io/organic/app"), "host");
        assert_eq!(user("ghcr.io/x"), "host");
        let e = credential_for(&auths, &ImageRef::parse("quay.io/org/app").unwrap()).unwrap_err();
        assert!(
            e.contains("\"ghcr.io\", \"ghcr.io/org\", \"ghcr.io/other\"")
                && e.contains("quay.io/org/app")
                && e.contains("registry quay.io"),
            "{e}"
        );
    }
}
