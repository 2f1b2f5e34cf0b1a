//! Pulling an image into containerd the way its own Go client does: blobs
//! into the content store with the GC reference labels, layers unpacked
//! with the Diff service into snapshots named by chain ID, then an image
//! record — so `ctr images check` and `ctr snapshots ls` see a normal image,
//! and containerd's garbage collector keeps exactly what is referenced.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use rbuild_runtime::containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, GetImageRequest, Image, UpdateImageRequest,
};
use rbuild_runtime::containerd_client::tonic::Code;
use rbuild_runtime::containerd_client::types::Descriptor;
use rbuild_runtime::{Containerd, LeaseId, SNAPSHOTTER};

use crate::content::{self, BlobTarget, Written};
use crate::image::{BlobDesc, ResolvedImage};
use crate::reference::ImageRef;
use crate::registry::Registry;
use crate::{Error, snapshots};

const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";
/// How many layers download at once.
const PARALLEL_DOWNLOADS: usize = 3;

/// What a pull did.
#[derive(Clone, Debug, Default)]
pub struct PullReport {
    pub layers: usize,
    pub blobs_fetched: usize,
    pub bytes_fetched: u64,
    pub layers_unpacked: usize,
    pub millis: u128,
}

impl std::fmt::Display for PullReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} layers fetched ({:.1} MB), {} unpacked",
            self.blobs_fetched,
            self.layers,
            self.bytes_fetched as f64 / 1e6,
            self.layers_unpacked
        )
    }
}

/// Makes `image` present in containerd: content, unpacked snapshots, image
/// record. Returns the snapshot name of its root filesystem (None when the
/// image has no layers). Blobs and snapshots already present are not
/// fetched or unpacked again.
pub async fn pull(
    ctd: &Containerd,
    registry: &Registry,
    lease: &LeaseId,
    image: &ResolvedImage,
) -> Result<(Option<String>, PullReport), Error> {
    let started = Instant::now();
    let reference = ImageRef::parse(&image.reference)?;
    let chain = image.chain_ids();
    let top = chain.last().cloned();
    let mut report = PullReport {
        layers: image.layers.len(),
        ..PullReport::default()
    };

    if let Some(top) = &top
        && snapshots::stat(ctd, top).await?.is_some()
        && image_record_matches(ctd, image).await?
    {
        report.millis = started.elapsed().as_millis();
        return Ok((Some(top.clone()), report));
    }

    let source_label = (
        format!("containerd.io/distribution.source.{}", reference.registry()),
        reference.repository().to_string(),
    );

    // Layers first, in parallel: they are the bulk of the bytes.
    let mut layer_writes: Vec<BoxFuture<'_, Result<Option<u64>, Error>>> = Vec::new();
    for (layer, diff_id) in image.layers.iter().zip(&image.diff_ids) {
        let labels = HashMap::from([
            source_label.clone(),
            (UNCOMPRESSED_LABEL.to_string(), diff_id.clone()),
        ]);
        layer_writes.push(Box::pin(fetch_blob(
            ctd, registry, lease, &reference, layer, labels,
        )));
    }
    let results: Vec<Result<Option<u64>, Error>> = futures::stream::iter(layer_writes)
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .collect()
        .await;
    for r in results {
        if let Some(bytes) = r? {
            report.blobs_fetched += 1;
            report.bytes_fetched += bytes;
        }
    }

    // Then the documents, each labelled with what it references so that the
    // image record roots the whole graph for containerd's GC.
    write_doc(
        ctd,
        lease,
        &image.config,
        &image.config_json,
        HashMap::from([source_label.clone()]),
    )
    .await?;
    let mut manifest_labels = HashMap::from([
        source_label.clone(),
        (
            "containerd.io/gc.ref.content.config".to_string(),
            image.config.digest.clone(),
        ),
    ]);
    for (i, l) in image.layers.iter().enumerate() {
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    write_doc(
        ctd,
        lease,
        &image.manifest,
        &image.manifest_json,
        manifest_labels,
    )
    .await?;
    if let Some(index) = &image.index_json {
        let labels = HashMap::from([
            source_label.clone(),
            (
                "containerd.io/gc.ref.content.m.0".to_string(),
                image.manifest.digest.clone(),
            ),
        ]);
        write_doc(ctd, lease, &image.target, index, labels).await?;
    }

    // Unpack bottom-up, skipping layers already unpacked.
    for (i, layer) in image.layers.iter().enumerate() {
        if snapshots::stat(ctd, &chain[i]).await?.is_some() {
            continue;
        }
        let parent = (i > 0).then(|| chain[i - 1].as_str());
        unpack_layer(
            ctd,
            lease,
            &reference,
            layer,
            &image.diff_ids[i],
            &chain[i],
            parent,
        )
        .await?;
        report.layers_unpacked += 1;
    }
    if let Some(top) = &top {
        content::set_labels(
            ctd,
            &image.config.digest,
            HashMap::from([(
                format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
                top.clone(),
            )]),
        )
        .await?;
    }
    put_image_record(ctd, &image.reference, &image.target).await?;
    report.millis = started.elapsed().as_millis();
    Ok((top, report))
}

/// Fetches a blob into the content store unless it is there. Returns the
/// bytes downloaded, None when nothing was fetched.
async fn fetch_blob(
    ctd: &Containerd,
    registry: &Registry,
    lease: &LeaseId,
    reference: &ImageRef,
    desc: &BlobDesc,
    labels: HashMap<String, String>,
) -> Result<Option<u64>, Error> {
    if content::info(ctd, &desc.digest).await?.is_some() {
        content::set_labels(ctd, &desc.digest, labels).await?;
        return Ok(None);
    }
    let stream = registry
        .blob_stream(reference, &desc.as_oci_client())
        .await?;
    let target = BlobTarget {
        digest: &desc.digest,
        size: desc.size,
        labels: labels.clone(),
    };
    match content::write_stream(ctd, lease, target, stream).await? {
        Written::New => Ok(Some(desc.size as u64)),
        Written::Present => {
            content::set_labels(ctd, &desc.digest, labels).await?;
            Ok(None)
        }
    }
}

async fn write_doc(
    ctd: &Containerd,
    lease: &LeaseId,
    desc: &BlobDesc,
    json: &str,
    labels: HashMap<String, String>,
) -> Result<(), Error> {
    let target = BlobTarget {
        digest: &desc.digest,
        size: desc.size,
        labels: labels.clone(),
    };
    if content::write_bytes(ctd, lease, target, Bytes::from(json.to_string())).await?
        == Written::Present
    {
        content::set_labels(ctd, &desc.digest, labels).await?;
    }
    Ok(())
}

async fn unpack_layer(
    ctd: &Containerd,
    lease: &LeaseId,
    reference: &ImageRef,
    layer: &BlobDesc,
    diff_id: &str,
    chain_id: &str,
    parent: Option<&str>,
) -> Result<(), Error> {
    let key = format!("extract-{} {chain_id}", crate::unique_suffix());
    let labels = HashMap::from([(
        "containerd.io/snapshot.ref".to_string(),
        chain_id.to_string(),
    )]);
    let mounts = snapshots::prepare(ctd, lease, &key, parent, labels).await?;
    let result = async {
        let applied = ctd
            .diff()
            .apply(ctd.leased(
                ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: layer.media_type.clone(),
                        digest: layer.digest.clone(),
                        size: layer.size,
                        annotations: HashMap::new(),
                    }),
                    mounts,
                    ..Default::default()
                },
                lease,
            ))
            .await
            .map_err(|s| rbuild_runtime::Error::rpc("unpack layer", &layer.digest, s))?
            .into_inner()
            .applied;
        let applied_digest = applied.map(|d| d.digest).unwrap_or_default();
        if applied_digest != diff_id {
            return Err(Error::BadImage {
                reference: reference.to_string(),
                reason: format!(
                    "layer {} unpacked to {applied_digest}, but the image config says {diff_id}",
                    layer.digest
                ),
            });
        }
        match snapshots::commit(ctd, lease, &key, chain_id, HashMap::new()).await {
            // Someone else unpacked the same layer meanwhile: theirs is as good.
            Err(Error::Containerd(e)) if e.is_already_exists() => Err(Error::AlreadyUnpacked),
            other => other,
        }
    }
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(Error::AlreadyUnpacked) => snapshots::remove(ctd, &key).await,
        Err(e) => {
            let _ = snapshots::remove(ctd, &key).await;
            Err(e)
        }
    }
}

fn image_record(name: &str, target: &BlobDesc) -> Image {
    Image {
        name: name.to_string(),
        target: Some(Descriptor {
            media_type: target.media_type.clone(),
            digest: target.digest.clone(),
            size: target.size,
            annotations: HashMap::new(),
        }),
        ..Default::default()
    }
}

async fn image_record_matches(ctd: &Containerd, image: &ResolvedImage) -> Result<bool, Error> {
    match ctd
        .images()
        .get(ctd.request(GetImageRequest {
            name: image.reference.clone(),
        }))
        .await
    {
        Ok(r) => Ok(r
            .into_inner()
            .image
            .and_then(|i| i.target)
            .is_some_and(|t| t.digest == image.target.digest)),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(rbuild_runtime::Error::rpc("look up image", &image.reference, s).into()),
    }
}

/// Creates or updates the image record `name` → `target`, as `ctr` sees images;
/// it also roots what the target references for containerd's garbage collector.
pub async fn put_image_record(
    ctd: &Containerd,
    name: &str,
    target: &BlobDesc,
) -> Result<(), Error> {
    match ctd
        .images()
        .create(ctd.request(CreateImageRequest {
            image: Some(image_record(name, target)),
            ..Default::default()
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::AlreadyExists => {
            ctd.images()
                .update(ctd.request(UpdateImageRequest {
                    image: Some(image_record(name, target)),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".into()],
                    }),
                    ..Default::default()
                }))
                .await
                .map_err(|s| rbuild_runtime::Error::rpc("update image", name, s))?;
            Ok(())
        }
        Err(s) => Err(rbuild_runtime::Error::rpc("create image", name, s).into()),
    }
}
