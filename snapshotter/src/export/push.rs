//! Publishing an assembled image to a registry: blobs the registry lacks
//! (or can mount from the base image's repository), then the manifest.
//!
//! The registry protocol itself is `crate::registry`; this only decides
//! what to send.

use rbuild_containerd::Containerd;

use super::assemble::BuiltImage;
use crate::Error;
use crate::content;
use crate::image::BlobDesc;

/// What publishing did with one blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobPush {
    Uploaded,
    AlreadyPresent,
    MountedFromBase,
}

/// Pushes an image to `target` (its tag): blobs the registry has are not
/// sent again, base layers of another repository on the same registry are
/// mounted from it. Returns the manifest digest.
pub async fn publish(
    ctd: &Containerd,
    registry: &crate::Registry,
    image: &BuiltImage,
    target: &crate::ImageRef,
    report: &(dyn Fn(&BlobDesc, BlobPush) + Send + Sync),
) -> Result<String, Error> {
    let base = image
        .base_reference
        .as_deref()
        .and_then(|r| crate::ImageRef::parse(r).ok());
    let mut blobs: Vec<(usize, &BlobDesc)> = image.layers.iter().enumerate().collect();
    blobs.push((usize::MAX, &image.config));
    for (i, blob) in blobs {
        let how = if registry.blob_exists(target, &blob.digest).await? {
            BlobPush::AlreadyPresent
        } else if i < image.base_layers
            && let Some(base) = &base
            && registry.mount_blob(target, base, &blob.digest).await
        {
            BlobPush::MountedFromBase
        } else {
            // Read again from the content store for each attempt.
            let open = || async {
                content::read_stream(ctd, &blob.digest).await.map_err(|e| {
                    Error::Export(format!(
                        "layer {} is not in containerd's content store ({e}); pull or build the image again",
                        blob.digest
                    ))
                })
            };
            registry
                .push_blob(target, &blob.digest, blob.size as u64, open)
                .await?;
            BlobPush::Uploaded
        };
        report(blob, how);
        rbuild_containerd::kill_point("publish-mid");
    }
    registry
        .push_manifest(target, &image.manifest_json, &image.manifest.media_type)
        .await?;
    Ok(image.manifest.digest.clone())
}
