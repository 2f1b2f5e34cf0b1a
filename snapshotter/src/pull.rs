//! Pulling an image into containerd the way its own Go client does: blobs
//! into the content store with the GC reference labels, layers unpacked into
//! snapshots named by chain ID, then an image record — so `ctr images check`
//! and `ctr snapshots ls` see a normal image, and containerd's garbage
//! collector keeps exactly what is referenced. A layer is unpacked while it
//! downloads (see [`crate::unpack`]); what that cannot apply goes through
//! containerd's Diff service.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use rbuild_containerd::containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, GetImageRequest, Image, UpdateImageRequest,
};
use rbuild_containerd::containerd_client::tonic::Code;
use rbuild_containerd::containerd_client::types::Descriptor;
use rbuild_containerd::{Containerd, LeaseId, SNAPSHOTTER};
use tokio::sync::mpsc;

use crate::content::{self, BlobTarget, Written};
use crate::image::{BlobDesc, ResolvedImage};
use crate::reference::ImageRef;
use crate::registry::Registry;
use crate::snapshots::{ActiveKey, SnapshotId};
use crate::unpack::{self, Compression};
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
) -> Result<(Option<SnapshotId>, PullReport), Error> {
    let started = Instant::now();
    let reference = ImageRef::parse(&image.reference)?;
    let chain: Vec<SnapshotId> = image.chain_ids().into_iter().map(SnapshotId).collect();
    let top = chain.last().cloned();
    let mut report = PullReport {
        layers: image.layers.len(),
        ..PullReport::default()
    };

    if let Some(top) = &top
        && snapshots::hold(ctd, lease, top).await?
        && image_record_matches(ctd, image).await?
    {
        report.millis = started.elapsed().as_millis();
        return Ok((Some(top.clone()), report));
    }

    let source_label = (
        format!("containerd.io/distribution.source.{}", reference.registry()),
        reference.repository().to_string(),
    );

    // Layers are the bulk of the bytes. Those not unpacked yet are unpacked
    // bottom-up, each while it downloads (into the content store at the same
    // time); the blobs of layers whose snapshots exist are fetched alongside.
    let mut unpacked_below = 0;
    for i in (0..chain.len()).rev() {
        if snapshots::hold(ctd, lease, &chain[i]).await? {
            unpacked_below = i + 1;
            break;
        }
    }
    let layer_labels = |i: usize| {
        HashMap::from([
            source_label.clone(),
            (UNCOMPRESSED_LABEL.to_string(), image.diff_ids[i].clone()),
        ])
    };
    let fetch_only = futures::stream::iter((0..unpacked_below).map(|i| {
        fetch_blob(
            ctd,
            registry,
            lease,
            &reference,
            &image.layers[i],
            layer_labels(i),
        )
    }))
    .buffer_unordered(PARALLEL_DOWNLOADS)
    .collect::<Vec<_>>();
    let unpack = async {
        let mut fetched = Vec::new();
        for i in unpacked_below..chain.len() {
            let layer = LayerJob {
                reference: &reference,
                desc: &image.layers[i],
                diff_id: &image.diff_ids[i],
                chain_id: &chain[i],
                parent: (i > 0).then(|| &chain[i - 1]),
                labels: layer_labels(i),
            };
            fetched.push(unpack_layer(ctd, registry, lease, &layer).await);
        }
        fetched
    };
    let (fetched_only, unpacked) = tokio::join!(fetch_only, unpack);
    report.layers_unpacked = unpacked.len();
    for r in fetched_only.into_iter().chain(unpacked) {
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

    if let Some(top) = &top {
        content::set_labels(
            ctd,
            &image.config.digest,
            HashMap::from([(
                format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
                top.0.clone(),
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
    if content::hold(ctd, lease, &desc.digest).await? {
        content::set_labels(ctd, &desc.digest, labels).await?;
        return Ok(None);
    }
    // A blob whose bytes do not match its digest is fetched once more.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let stream = registry
            .blob_stream(reference, &desc.as_oci_client(), "layer")
            .await?;
        let target = BlobTarget {
            digest: &desc.digest,
            size: desc.size,
            labels: labels.clone(),
        };
        match content::write_stream(ctd, lease, target, stream).await {
            Ok(Written::New) => return Ok(Some(desc.size as u64)),
            Ok(Written::Present) => {
                content::set_labels(ctd, &desc.digest, labels).await?;
                return Ok(None);
            }
            Err(e) if e.is_digest_mismatch() && attempt == 1 => {
                tracing::warn!(layer = %desc.digest, error = %e, "fetching the blob once more");
            }
            Err(Error::Containerd(c)) if c.to_string().contains("no space left on device") => {
                return Err(Error::NoSpace {
                    digest: desc.digest.clone(),
                    reference: reference.to_string(),
                    into: "containerd's content store".into(),
                });
            }
            Err(e) => return Err(e),
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

/// One layer to unpack into snapshot `chain_id` on `parent`.
/// One layer of a repository to unpack onto a snapshot (the remote step
/// cache's import, [`unpack_onto`]).
pub struct LayerOnto<'a> {
    pub reference: &'a ImageRef,
    pub desc: &'a BlobDesc,
    /// The digest of its uncompressed tar, checked.
    pub diff_id: &'a str,
    /// What the result is committed as.
    pub name: &'a SnapshotId,
    pub parent: Option<&'a SnapshotId>,
}

/// Unpacks a layer onto its parent and commits the result under its name:
/// while it downloads, into the content store too, its uncompressed digest
/// checked; a blob with the wrong bytes is fetched once more, then an
/// error. Returns the bytes fetched (None: the content store had it).
pub async fn unpack_onto(
    ctd: &Containerd,
    registry: &Registry,
    lease: &LeaseId,
    onto: LayerOnto<'_>,
) -> Result<Option<u64>, Error> {
    let reference = onto.reference;
    let layer = LayerJob {
        reference,
        desc: onto.desc,
        diff_id: onto.diff_id,
        chain_id: onto.name,
        parent: onto.parent,
        labels: HashMap::from([
            (
                format!("containerd.io/distribution.source.{}", reference.registry()),
                reference.repository().to_string(),
            ),
            (UNCOMPRESSED_LABEL.to_string(), onto.diff_id.to_string()),
        ]),
    };
    unpack_layer(ctd, registry, lease, &layer).await
}

struct LayerJob<'a> {
    reference: &'a ImageRef,
    desc: &'a BlobDesc,
    diff_id: &'a str,
    chain_id: &'a SnapshotId,
    parent: Option<&'a SnapshotId>,
    /// Labels of its blob in the content store.
    labels: HashMap<String, String>,
}

/// Where a streamed unpack reads the blob from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The registry, writing the content store at the same time.
    Registry,
    ContentStore,
}

/// What a streamed unpack came to.
enum Streamed {
    /// Committed (or found committed by a concurrent unpack).
    Done,
    /// The content store had the blob before this stream could write it;
    /// what the unpacker saw may be incomplete: unpack it from there.
    FromStore,
    /// A layer the streaming unpacker leaves to containerd.
    Unsupported(String),
}

/// Unpacks a layer, fetching its blob when the content store lacks it.
/// Returns the bytes downloaded (None: nothing was).
async fn unpack_layer(
    ctd: &Containerd,
    registry: &Registry,
    lease: &LeaseId,
    layer: &LayerJob<'_>,
) -> Result<Option<u64>, Error> {
    let digest = &layer.desc.digest;
    let mut source = if content::hold(ctd, lease, digest).await? {
        content::set_labels(ctd, digest, layer.labels.clone()).await?;
        Source::ContentStore
    } else {
        Source::Registry
    };
    let mut fetched = None;
    let mut refetched = false;
    if let Some(compression) = Compression::of_media_type(&layer.desc.media_type) {
        loop {
            let (streamed, bytes) =
                match stream_layer(ctd, registry, lease, layer, source, compression).await {
                    // Wrong bytes from the registry: once more from the start.
                    Err(e) if e.is_digest_mismatch() && !refetched => {
                        tracing::warn!(layer = %digest, error = %e, "fetching the layer once more");
                        refetched = true;
                        continue;
                    }
                    other => other?,
                };
            fetched = fetched.or(bytes);
            match streamed {
                Streamed::Done => return Ok(fetched),
                Streamed::FromStore if source == Source::Registry => source = Source::ContentStore,
                Streamed::FromStore => {
                    return Err(Error::BadImage {
                        reference: layer.reference.to_string(),
                        reason: format!(
                            "layer {digest} could not be read back from the content store"
                        ),
                    });
                }
                Streamed::Unsupported(reason) => {
                    tracing::info!(layer = %digest, reason, "unpacking with containerd's Diff service");
                    break;
                }
            }
        }
    }
    let bytes = fetch_blob(
        ctd,
        registry,
        lease,
        layer.reference,
        layer.desc,
        layer.labels.clone(),
    )
    .await?;
    fetched = fetched.or(bytes);
    with_diff_service(ctd, lease, layer).await?;
    Ok(fetched)
}

/// Unpacks a layer into a new active snapshot while its blob streams in
/// (from the registry, tee-ing into the content store, or from the content
/// store), checks the uncompressed digest against the diff ID, and commits.
async fn stream_layer(
    ctd: &Containerd,
    registry: &Registry,
    lease: &LeaseId,
    layer: &LayerJob<'_>,
    source: Source,
    compression: Compression,
) -> Result<(Streamed, Option<u64>), Error> {
    let digest = &layer.desc.digest;
    let key = ActiveKey(format!(
        "extract-{} {}",
        crate::unique_suffix(),
        layer.chain_id.0
    ));
    let mounts = match snapshots::prepare(ctd, lease, &key, layer.parent, snapshot_ref(layer)).await
    {
        // Another rbuild unpacked it since we looked (containerd checks the target by its ref label).
        Err(Error::Containerd(e)) if e.is_already_exists() => return Ok((Streamed::Done, None)),
        r => r?,
    };
    let Some((root, lowers)) = snapshots::overlay_dirs(&mounts) else {
        snapshots::remove(ctd, &key).await?;
        return Ok((
            Streamed::Unsupported(format!("snapshot mounts {mounts:?}")),
            None,
        ));
    };
    let upper = root.clone();
    let target = unpack::Target { root, lowers };
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(16);
    let limit = unpack::max_layer_size();
    let applying = tokio::task::spawn_blocking(move || {
        unpack::apply(content::ChannelReader::new(rx), compression, &target, limit)
    });
    let fetched: Result<Option<u64>, Error> = match source {
        Source::Registry => {
            async {
                let stream = registry
                    .blob_stream(layer.reference, &layer.desc.as_oci_client(), "layer")
                    .await?;
                let tee = stream
                    .then(move |chunk| {
                        let tx = tx.clone();
                        async move {
                            if let Ok(bytes) = &chunk {
                                // The unpacker may have stopped; the blob still goes to the store.
                                let _ = tx.send(Ok(bytes.clone())).await;
                            }
                            chunk
                        }
                    })
                    .boxed();
                let target = BlobTarget {
                    digest,
                    size: layer.desc.size,
                    labels: layer.labels.clone(),
                };
                match content::write_stream(ctd, lease, target, tee).await? {
                    Written::New => Ok(Some(layer.desc.size as u64)),
                    Written::Present => {
                        content::set_labels(ctd, digest, layer.labels.clone()).await?;
                        Ok(None)
                    }
                }
            }
            .await
        }
        Source::ContentStore => {
            // `move`: the sender must be gone once the blob has been sent.
            async move {
                let mut stream = content::read_stream(ctd, digest).await?;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| Error::Download {
                        digest: digest.clone(),
                        reason: format!("reading it from the content store: {e}"),
                    })?;
                    if tx.send(Ok(chunk)).await.is_err() {
                        break;
                    }
                }
                Ok(None)
            }
            .await
        }
    };
    // The unpacker ends once the stream has (the sender is gone).
    let applied = applying.await.expect("layer unpacker panicked");
    let outcome = match fetched {
        Err(e) => Err(full_disk(e, layer, "containerd's content store")),
        Ok(fetched) => settle(ctd, lease, layer, &key, source, fetched, applied, &upper)
            .await
            .map(|s| (s, fetched)),
    };
    if !matches!(outcome, Ok((Streamed::Done, _))) {
        let _ = snapshots::remove(ctd, &key).await;
    }
    outcome
}

/// containerd's own report of a full disk (its content store or its Diff
/// service) as a full disk; other errors as they are.
fn full_disk(e: Error, layer: &LayerJob<'_>, into: &str) -> Error {
    match e {
        Error::Containerd(c) if c.to_string().contains("no space left on device") => {
            Error::NoSpace {
                digest: layer.desc.digest.clone(),
                reference: layer.reference.to_string(),
                into: into.to_string(),
            }
        }
        other => other,
    }
}

/// Commits snapshot `key` when the unpack went right; says what to do next otherwise.
#[allow(clippy::too_many_arguments)]
async fn settle(
    ctd: &Containerd,
    lease: &LeaseId,
    layer: &LayerJob<'_>,
    key: &ActiveKey,
    source: Source,
    fetched: Option<u64>,
    applied: Result<String, unpack::ApplyError>,
    upper: &std::path::Path,
) -> Result<Streamed, Error> {
    let digest = &layer.desc.digest;
    let bad = |reason: String| Error::BadImage {
        reference: layer.reference.to_string(),
        reason,
    };
    match applied {
        // The store had the blob before this stream wrote it: the unpacker
        // saw none or part of it.
        Ok(_) | Err(unpack::ApplyError::Invalid(_))
            if source == Source::Registry && fetched.is_none() =>
        {
            Ok(Streamed::FromStore)
        }
        Err(unpack::ApplyError::Unsupported(reason)) => Ok(Streamed::Unsupported(reason)),
        Err(unpack::ApplyError::TooLarge { limit }) => Err(Error::LayerTooLarge {
            digest: digest.clone(),
            reference: layer.reference.to_string(),
            limit,
        }),
        // A full disk is the disk's problem, not the image's.
        Err(unpack::ApplyError::Io { source, .. }) if unpack::is_no_space(&source) => {
            Err(Error::NoSpace {
                digest: digest.clone(),
                reference: layer.reference.to_string(),
                into: upper.display().to_string(),
            })
        }
        Err(unpack::ApplyError::Invalid(reason)) => Err(bad(format!("layer {digest}: {reason}"))),
        Err(unpack::ApplyError::Io { what, source }) => Err(bad(format!(
            "unpacking layer {digest}: cannot {what}: {source}"
        ))),
        Ok(applied) => {
            commit_layer(ctd, lease, key, layer, &applied).await?;
            Ok(Streamed::Done)
        }
    }
}

/// Commits active snapshot `key` as the layer's chain ID once what was
/// unpacked is the layer the image config names.
async fn commit_layer(
    ctd: &Containerd,
    lease: &LeaseId,
    key: &ActiveKey,
    layer: &LayerJob<'_>,
    applied: &str,
) -> Result<(), Error> {
    if applied != layer.diff_id {
        return Err(Error::BadImage {
            reference: layer.reference.to_string(),
            reason: format!(
                "layer {} unpacked to {applied}, but the image config says {}",
                layer.desc.digest, layer.diff_id
            ),
        });
    }
    match snapshots::commit(ctd, lease, key, layer.chain_id, HashMap::new()).await {
        // Someone else unpacked the same layer meanwhile: theirs is as good.
        Err(Error::Containerd(e)) if e.is_already_exists() => snapshots::remove(ctd, key).await,
        other => other,
    }
}

fn snapshot_ref(layer: &LayerJob<'_>) -> HashMap<String, String> {
    HashMap::from([(
        "containerd.io/snapshot.ref".to_string(),
        layer.chain_id.0.clone(),
    )])
}

/// Unpacks a layer already in the content store with containerd's Diff service.
async fn with_diff_service(
    ctd: &Containerd,
    lease: &LeaseId,
    layer: &LayerJob<'_>,
) -> Result<(), Error> {
    let key = ActiveKey(format!(
        "extract-{} {}",
        crate::unique_suffix(),
        layer.chain_id.0
    ));
    let mounts = match snapshots::prepare(ctd, lease, &key, layer.parent, snapshot_ref(layer)).await
    {
        Err(Error::Containerd(e)) if e.is_already_exists() => return Ok(()),
        r => r?,
    };
    let result = async {
        let applied = ctd
            .diff()
            .apply(ctd.leased(
                ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: layer.desc.media_type.clone(),
                        digest: layer.desc.digest.clone(),
                        size: layer.desc.size,
                        annotations: HashMap::new(),
                    }),
                    mounts,
                    ..Default::default()
                },
                lease,
            ))
            .await
            .map_err(|s| rbuild_containerd::Error::rpc("unpack layer", &layer.desc.digest, s))?
            .into_inner()
            .applied;
        let applied_digest = applied.map(|d| d.digest).unwrap_or_default();
        commit_layer(ctd, lease, &key, layer, &applied_digest).await
    }
    .await;
    if result.is_err() {
        let _ = snapshots::remove(ctd, &key).await;
    }
    result.map_err(|e| full_disk(e, layer, "a snapshot (with containerd's Diff service)"))
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
        Err(s) => Err(rbuild_containerd::Error::rpc("look up image", &image.reference, s).into()),
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
                .map_err(|s| rbuild_containerd::Error::rpc("update image", name, s))?;
            Ok(())
        }
        Err(s) => Err(rbuild_containerd::Error::rpc("create image", name, s).into()),
    }
}

/// Deletes every image record in the namespace (what pulls and publishes
/// made); their content goes with containerd's next collection. Returns how
/// many there were.
pub async fn remove_image_records(ctd: &Containerd) -> Result<usize, Error> {
    use rbuild_containerd::containerd_client::services::v1::{
        DeleteImageRequest, ListImagesRequest,
    };
    let images = ctd
        .images()
        .list(ctd.request(ListImagesRequest::default()))
        .await
        .map_err(|s| rbuild_containerd::Error::rpc("list images", ctd.namespace(), s))?
        .into_inner()
        .images;
    for i in &images {
        ctd.images()
            .delete(ctd.request(DeleteImageRequest {
                name: i.name.clone(),
                ..Default::default()
            }))
            .await
            .map_err(|s| rbuild_containerd::Error::rpc("delete image", &i.name, s))?;
    }
    Ok(images.len())
}
