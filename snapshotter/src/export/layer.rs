//! Layers from snapshot diffs: the diff between a snapshot and an ancestor,
//! written to containerd's content store as a layer in the asked format.
//!
//! The diff is read straight from the overlay directories between them
//! (`overlay_diff`), or, when the snapshot is not such a stack, computed by
//! containerd's Diff service; `rewrite` then makes it reproducible and
//! compresses it. Assembling layers into an image is `assemble`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rbuild_containerd::containerd_client::services::v1::DiffRequest;
use rbuild_containerd::containerd_client::types::Mount;
use rbuild_containerd::{Containerd, LeaseId};

use super::format::{Compression, ImageFormat, OCI_LAYER};
use super::rewrite::rewrite_layer;
use crate::content::{self, BlobTarget};
use crate::image::BlobDesc;
use crate::snapshots::{ActiveKey, SnapshotId};
use crate::{Error, snapshots, unique_suffix};

/// A layer in the content store, and the digest of its uncompressed tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub desc: BlobDesc,
    pub diff_id: String,
}

/// The diff of snapshot `upper` against `lower` (None: against nothing),
/// as a layer in `format`, written to the content store under `lease`.
///
/// When `upper` is `lower` plus overlay layers (every step's snapshot on its
/// base), the layer is read straight from those layers' directories
/// (`overlay_diff`); otherwise containerd's Diff service computes it.
pub async fn diff_layer(
    ctd: &Containerd,
    lease: &LeaseId,
    scratch: &Path,
    lower: Option<&SnapshotId>,
    upper: &SnapshotId,
    format: ImageFormat,
) -> Result<Layer, Error> {
    let media_type = format.layer_media_type()?;
    let view = |parent: SnapshotId| async move {
        let key = ActiveKey::unique("rbuild-diff-view");
        let mounts = snapshots::view(ctd, lease, &key, &parent).await?;
        Ok::<(ActiveKey, Vec<Mount>), Error>((key, mounts))
    };
    let left = match lower {
        Some(l) => Some(view(l.clone()).await?),
        None => None,
    };
    let right = view(upper.clone()).await;
    let upper = upper.0.as_str();
    let result = match &right {
        Ok((_, right_mounts)) => {
            let left_mounts = left.as_ref().map(|l| l.1.as_slice());
            let added = left_mounts.and_then(|l| crate::overlay_diff::added_dirs(l, right_mounts));
            match added {
                Some(dirs) => layer_from_dirs(ctd, lease, scratch, dirs, format, media_type).await,
                None => {
                    let left_mounts = left_mounts.unwrap_or_default();
                    layer_from_differ(
                        ctd,
                        lease,
                        scratch,
                        left_mounts,
                        right_mounts,
                        upper,
                        format,
                    )
                    .await
                }
            }
        }
        Err(_) => Err(Error::Export(format!("cannot view snapshot {upper}"))),
    };
    for key in [left.map(|l| l.0), right.ok().map(|r| r.0)]
        .into_iter()
        .flatten()
    {
        let _ = snapshots::remove(ctd, &key).await;
    }
    result
}

/// The layer of the overlay directories `dirs` (top first), merged.
async fn layer_from_dirs(
    ctd: &Containerd,
    lease: &LeaseId,
    scratch: &Path,
    dirs: Vec<PathBuf>,
    format: ImageFormat,
    media_type: &str,
) -> Result<Layer, Error> {
    with_scratch(scratch, |dir| async move {
        let input = dir.join("diff.tar");
        let inp = input.clone();
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::create(&inp).map_err(|e| Error::io("create", &inp, e))?;
            crate::overlay_diff::write_layer(&dirs, std::io::BufWriter::with_capacity(1 << 20, f))
                .and_then(|mut w| w.flush())
                .map_err(|e| Error::io("write the layer of", &inp, e))
        })
        .await
        .map_err(|e| Error::Export(format!("layer task: {e}")))??;
        store_layer(ctd, lease, &dir, &input, format, media_type).await
    })
    .await
}

/// The layer containerd's Diff service computes between two views.
async fn layer_from_differ(
    ctd: &Containerd,
    lease: &LeaseId,
    scratch: &Path,
    left: &[Mount],
    right: &[Mount],
    upper: &str,
    format: ImageFormat,
) -> Result<Layer, Error> {
    let media_type = format.layer_media_type()?;
    let raw = ctd
        .diff()
        .diff(ctd.leased(
            DiffRequest {
                left: left.to_vec(),
                right: right.to_vec(),
                media_type: OCI_LAYER.into(),
                r#ref: format!("rbuild-diff-{}", unique_suffix()),
                ..Default::default()
            },
            lease,
        ))
        .await
        .map_err(|s| rbuild_containerd::Error::rpc("compute the diff of snapshot", upper, s))?
        .into_inner()
        .diff
        .ok_or_else(|| Error::Export(format!("containerd returned no diff for {upper}")))?;
    if format.compression == Compression::Uncompressed && format.real_timestamps {
        content::set_labels(
            ctd,
            &raw.digest,
            HashMap::from([("containerd.io/uncompressed".to_string(), raw.digest.clone())]),
        )
        .await?;
        return Ok(Layer {
            desc: BlobDesc {
                media_type: media_type.into(),
                digest: raw.digest.clone(),
                size: raw.size,
            },
            diff_id: raw.digest,
        });
    }
    let raw_digest = &raw.digest;
    let layer = with_scratch(scratch, |dir| async move {
        let input = dir.join("diff.tar");
        content::read_to_file(ctd, raw_digest, &input).await?;
        store_layer(ctd, lease, &dir, &input, format, media_type).await
    })
    .await?;
    if layer.desc.digest != raw.digest {
        content::delete(ctd, &raw.digest).await?;
    }
    Ok(layer)
}

/// Runs `f` with a new directory under `scratch`, removed afterwards.
async fn with_scratch<F, Fut, T>(scratch: &Path, f: F) -> Result<T, Error>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let dir = scratch.join(format!("layer-{}", unique_suffix()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    let result = f(dir.clone()).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Rewrites the layer tar `input` (epoch timestamps unless real ones were
/// asked for), compresses it, and writes it to the content store.
async fn store_layer(
    ctd: &Containerd,
    lease: &LeaseId,
    dir: &Path,
    input: &Path,
    format: ImageFormat,
    media_type: &str,
) -> Result<Layer, Error> {
    let output = dir.join("layer");
    let (inp, outp) = (input.to_path_buf(), output.clone());
    let (diff_id, digest, size) = tokio::task::spawn_blocking(move || {
        rewrite_layer(&inp, &outp, format.compression, !format.real_timestamps)
    })
    .await
    .map_err(|e| Error::Export(format!("layer task: {e}")))??;
    let target = BlobTarget {
        digest: &digest,
        size: size as i64,
        labels: HashMap::from([("containerd.io/uncompressed".to_string(), diff_id.clone())]),
    };
    if content::write_file(ctd, lease, target, &output).await? == content::Written::Present {
        content::set_labels(
            ctd,
            &digest,
            HashMap::from([("containerd.io/uncompressed".to_string(), diff_id.clone())]),
        )
        .await?;
    }
    Ok(Layer {
        desc: BlobDesc {
            media_type: media_type.into(),
            digest,
            size: size as i64,
        },
        diff_id,
    })
}

/// Where temporary layer files go.
pub fn scratch_dir(root: &Path) -> PathBuf {
    root.join("layers")
}
