//! Images out: layers from snapshot diffs, image configs and manifests, OCI
//! tarballs, and tarballs back in.
//!
//! A layer is the diff between a snapshot and an ancestor: read straight
//! from the overlay directories between them (`overlay_diff`), or, when
//! the snapshot is not such a stack, computed by containerd's Diff
//! service. For reproducible images (the default) the diff is then
//! rewritten with every timestamp set to the Unix epoch before it is
//! compressed, so the same content always gives the same layer digest, on
//! any machine and whenever the steps ran.

use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rbuild_containerd::containerd_client::services::v1::DiffRequest;
use rbuild_containerd::containerd_client::types::Mount;
use rbuild_containerd::{Containerd, LeaseId};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::content::{self, BlobTarget};
use crate::image::{BlobDesc, Platform, ResolvedImage};
use crate::{Error, snapshots, unique_suffix};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// How layers are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    Uncompressed,
}

/// Which family of media types the manifest uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MediaTypes {
    #[default]
    Oci,
    Docker,
}

/// How an image's layers and config are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ImageFormat {
    pub compression: Compression,
    pub media_types: MediaTypes,
    /// Keep the real timestamps of files and of the image (not reproducible).
    pub real_timestamps: bool,
}

impl ImageFormat {
    /// A short stable name, for cache keys.
    pub fn id(&self) -> String {
        format!(
            "{:?}/{:?}/{}",
            self.compression,
            self.media_types,
            if self.real_timestamps {
                "real-time"
            } else {
                "epoch"
            }
        )
    }

    fn layer_media_type(&self) -> Result<&'static str, Error> {
        Ok(match (self.media_types, self.compression) {
            (MediaTypes::Oci, Compression::Gzip) => OCI_LAYER_GZIP,
            (MediaTypes::Oci, Compression::Zstd) => OCI_LAYER_ZSTD,
            (MediaTypes::Oci, Compression::Uncompressed) => OCI_LAYER,
            (MediaTypes::Docker, Compression::Gzip) => DOCKER_LAYER_GZIP,
            (MediaTypes::Docker, Compression::Uncompressed) => DOCKER_LAYER,
            (MediaTypes::Docker, Compression::Zstd) => {
                return Err(Error::Export(
                    "zstd layers need OCI media types; Docker's manifest format has no zstd layer type".into(),
                ));
            }
        })
    }

    /// A base image layer's media type in this format (same bytes).
    fn convert(&self, media_type: &str) -> Result<String, Error> {
        let family_gzip = [OCI_LAYER_GZIP, DOCKER_LAYER_GZIP].contains(&media_type);
        let family_tar = [OCI_LAYER, DOCKER_LAYER].contains(&media_type);
        Ok(match self.media_types {
            MediaTypes::Oci if family_gzip => OCI_LAYER_GZIP.into(),
            MediaTypes::Oci if family_tar => OCI_LAYER.into(),
            MediaTypes::Docker if family_gzip => DOCKER_LAYER_GZIP.into(),
            MediaTypes::Docker if family_tar => DOCKER_LAYER.into(),
            MediaTypes::Docker if media_type == OCI_LAYER_ZSTD => {
                return Err(Error::Export(
                    "the base image has zstd layers, which Docker media types cannot describe; publish with OCI media types".into(),
                ));
            }
            _ => media_type.to_string(),
        })
    }
}

/// A layer in the content store, and the digest of its uncompressed tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub desc: BlobDesc,
    pub diff_id: String,
}

/// A sha256 hasher shared by writers in a pipeline of writers.
#[derive(Clone, Default)]
struct Hashed(Arc<Mutex<(Sha256, u64)>>);

impl Hashed {
    fn finish(&self) -> (String, u64) {
        let g = self.0.lock().unwrap();
        (
            format!("sha256:{}", hex::encode(g.0.clone().finalize())),
            g.1,
        )
    }
}

struct HashingWriter<W: Write> {
    inner: W,
    hash: Hashed,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let mut g = self.hash.0.lock().unwrap();
        g.0.update(&buf[..n]);
        g.1 += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the whole content of committed snapshot `snapshot` into a new
/// committed snapshot `name` without a parent, through containerd's Diff
/// service (a full, uncompressed tar of it, applied to an empty snapshot):
/// owners, modes, xattrs and hard links come across as containerd keeps
/// them. For snapshots whose stack of overlay layers got too deep to mount.
/// An existing `name` is taken as it is.
pub async fn flatten(
    ctd: &Containerd,
    lease: &LeaseId,
    snapshot: &str,
    name: &str,
) -> Result<(), Error> {
    if snapshots::stat(ctd, name).await?.is_some() {
        return Ok(());
    }
    let view_key = format!("rbuild-flatten-view-{}", unique_suffix());
    let view = snapshots::view(ctd, lease, &view_key, snapshot).await?;
    let diffed = ctd
        .diff()
        .diff(ctd.leased(
            DiffRequest {
                left: Vec::new(),
                right: view,
                media_type: OCI_LAYER.into(),
                r#ref: format!("rbuild-flatten-{}", unique_suffix()),
                ..Default::default()
            },
            lease,
        ))
        .await
        .map_err(|s| rbuild_containerd::Error::rpc("flatten snapshot", snapshot, s));
    let _ = snapshots::remove(ctd, &view_key).await;
    let tar = diffed?
        .into_inner()
        .diff
        .ok_or_else(|| Error::Export(format!("containerd returned no diff for {snapshot}")))?;
    let active = format!("rbuild-flatten-{}", unique_suffix());
    let mounts = snapshots::prepare(ctd, lease, &active, None, HashMap::new()).await?;
    let result = async {
        ctd.diff()
            .apply(ctd.leased(
                rbuild_containerd::containerd_client::services::v1::ApplyRequest {
                    diff: Some(rbuild_containerd::containerd_client::types::Descriptor {
                        media_type: tar.media_type.clone(),
                        digest: tar.digest.clone(),
                        size: tar.size,
                        annotations: HashMap::new(),
                    }),
                    mounts,
                    ..Default::default()
                },
                lease,
            ))
            .await
            .map_err(|s| rbuild_containerd::Error::rpc("flatten snapshot", snapshot, s))?;
        snapshots::commit(ctd, lease, &active, name, HashMap::new()).await
    }
    .await;
    let _ = content::delete(ctd, &tar.digest).await;
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = snapshots::remove(ctd, &active).await;
            // Flattened at the same time by another step: as good.
            if snapshots::stat(ctd, name).await?.is_some() {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
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
    lower: Option<&str>,
    upper: &str,
    format: ImageFormat,
) -> Result<Layer, Error> {
    let media_type = format.layer_media_type()?;
    let view = |parent: String| async move {
        let key = format!("rbuild-diff-view-{}", unique_suffix());
        let mounts = snapshots::view(ctd, lease, &key, &parent).await?;
        Ok::<(String, Vec<Mount>), Error>((key, mounts))
    };
    let left = match lower {
        Some(l) => Some(view(l.to_string()).await?),
        None => None,
    };
    let right = view(upper.to_string()).await;
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

/// Rewrites a layer tar (timestamps to the epoch when `epoch`) and
/// compresses it. Returns (uncompressed digest, compressed digest, size).
fn rewrite_layer(
    input: &Path,
    output: &Path,
    compression: Compression,
    epoch: bool,
) -> Result<(String, String, u64), Error> {
    let out = std::fs::File::create(output).map_err(|e| Error::io("create", output, e))?;
    let compressed = Hashed::default();
    let sink = HashingWriter {
        inner: std::io::BufWriter::with_capacity(1 << 20, out),
        hash: compressed.clone(),
    };
    let uncompressed = Hashed::default();
    let io = |e: std::io::Error| Error::io("write layer", output, e);
    match compression {
        Compression::Gzip => {
            let enc = flate2::write::GzEncoder::new(sink, flate2::Compression::default());
            let enc = copy_entries(input, enc, &uncompressed, epoch)?;
            enc.finish().map_err(io)?.flush().map_err(io)?;
        }
        Compression::Zstd => {
            let enc = zstd::stream::write::Encoder::new(sink, 3).map_err(io)?;
            let enc = copy_entries(input, enc, &uncompressed, epoch)?;
            enc.finish().map_err(io)?.flush().map_err(io)?;
        }
        Compression::Uncompressed => {
            copy_entries(input, sink, &uncompressed, epoch)?
                .flush()
                .map_err(io)?;
        }
    }
    let (diff_id, _) = uncompressed.finish();
    let (digest, size) = compressed.finish();
    Ok((diff_id, digest, size))
}

/// Copies the entries of a tar into `out`, optionally with every timestamp
/// at the epoch (PAX time records dropped, GNU atime/ctime zeroed). Long
/// names and links, xattrs and other PAX records are kept.
fn copy_entries<W: Write>(
    input: &Path,
    out: W,
    uncompressed: &Hashed,
    epoch: bool,
) -> Result<W, Error> {
    let io = |e: std::io::Error| Error::io("rewrite layer", input, e);
    let f = std::fs::File::open(input).map_err(io)?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, f));
    let mut builder = tar::Builder::new(HashingWriter {
        inner: out,
        hash: uncompressed.clone(),
    });
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(io)? {
            for ext in exts {
                let ext = ext.map_err(io)?;
                let key = ext
                    .key()
                    .map_err(|_| io(std::io::Error::other("bad PAX key")))?;
                let time = matches!(key, "mtime" | "atime" | "ctime");
                if matches!(key, "path" | "linkpath") || (epoch && time) {
                    continue;
                }
                records.push((key.to_string(), ext.value_bytes().to_vec()));
            }
        }
        let path = entry.path_bytes().into_owned();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let mut header = entry.header().clone();
        set_name_field(&mut header, 0, &path, "path", &mut records);
        if let Some(link) = &link {
            set_name_field(&mut header, 157, link, "linkpath", &mut records);
        }
        let gnu = &header.as_bytes()[257..265] == b"ustar  \0";
        let bytes = header.as_mut_bytes();
        if gnu {
            if epoch {
                bytes[345..369].fill(0); // GNU atime, ctime
            }
        } else {
            bytes[345..500].fill(0); // ustar prefix: the full path is in name or PAX
        }
        if epoch {
            header.set_mtime(0);
        }
        header.set_cksum();
        if !records.is_empty() {
            let data = pax_records(&records);
            let mut ph = tar::Header::new_ustar();
            ph.set_entry_type(tar::EntryType::XHeader);
            ph.set_path("PaxHeaders/entry").map_err(io)?;
            ph.set_size(data.len() as u64);
            ph.set_mode(0o644);
            ph.set_mtime(0);
            ph.set_cksum();
            builder.append(&ph, &data[..]).map_err(io)?;
        }
        builder.append(&header, &mut entry).map_err(io)?;
    }
    builder.into_inner().map_err(io).map(|w| w.inner)
}

/// Puts `value` in a 100-byte name field at `at`, or — when it does not
/// fit — its start there and the whole in a PAX record.
fn set_name_field(
    header: &mut tar::Header,
    at: usize,
    value: &[u8],
    pax_key: &str,
    records: &mut Vec<(String, Vec<u8>)>,
) {
    let field = &mut header.as_mut_bytes()[at..at + 100];
    field.fill(0);
    if value.len() <= 100 {
        field[..value.len()].copy_from_slice(value);
    } else {
        field.copy_from_slice(&value[..100]);
        records.push((pax_key.to_string(), value.to_vec()));
    }
}

/// PAX extended header records: "<len> <key>=<value>\n", len counting itself.
fn pax_records(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = body + body.to_string().len();
        if len.to_string().len() + body != len {
            len += 1;
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// What goes into an image config besides the layers.
#[derive(Clone, Debug, Default)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub exposed_ports: Vec<String>,
}

/// An image assembled in the content store.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub manifest: BlobDesc,
    pub manifest_json: String,
    pub config: BlobDesc,
    pub config_json: String,
    pub layers: Vec<BlobDesc>,
    pub diff_ids: Vec<String>,
    /// Which of `layers` come from the base image (the first n).
    pub base_layers: usize,
    /// Where the base image came from, for cross-repository mounts.
    pub base_reference: Option<String>,
}

/// Writes the config and manifest of an image made of `base` plus `layers`
/// (each with the step that made it) to the content store.
#[allow(clippy::too_many_arguments)]
pub async fn assemble(
    ctd: &Containerd,
    lease: &LeaseId,
    base: Option<&ResolvedImage>,
    layers: &[(Layer, String)],
    config: &ImageConfig,
    platform: &Platform,
    format: ImageFormat,
    created: &str,
) -> Result<BuiltImage, Error> {
    let mut doc: Value = match base {
        Some(b) => serde_json::from_str(&b.config_json)
            .map_err(|e| Error::Export(format!("base image config: {e}")))?,
        None => json!({}),
    };
    doc["architecture"] = json!(platform.architecture);
    doc["os"] = json!(platform.os);
    doc["created"] = json!(created);
    let mut c = doc.get("config").cloned().unwrap_or_else(|| json!({}));
    let set = |c: &mut Value, k: &str, v: Value, empty: bool| {
        if empty {
            if let Some(o) = c.as_object_mut() {
                o.remove(k);
            }
        } else {
            c[k] = v;
        }
    };
    set(&mut c, "Env", json!(config.env), config.env.is_empty());
    set(
        &mut c,
        "Entrypoint",
        json!(config.entrypoint),
        config.entrypoint.is_empty(),
    );
    set(&mut c, "Cmd", json!(config.cmd), config.cmd.is_empty());
    set(
        &mut c,
        "WorkingDir",
        json!(config.working_dir),
        config.working_dir.is_empty() || config.working_dir == "/",
    );
    set(&mut c, "User", json!(config.user), config.user.is_empty());
    set(
        &mut c,
        "Labels",
        json!(config.labels),
        config.labels.is_empty(),
    );
    let ports: serde_json::Map<String, Value> = config
        .exposed_ports
        .iter()
        .map(|p| (p.clone(), json!({})))
        .collect();
    set(
        &mut c,
        "ExposedPorts",
        Value::Object(ports),
        config.exposed_ports.is_empty(),
    );
    doc["config"] = c;
    let mut diff_ids: Vec<String> = base.map(|b| b.diff_ids.clone()).unwrap_or_default();
    diff_ids.extend(layers.iter().map(|(l, _)| l.diff_id.clone()));
    doc["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    let mut history: Vec<Value> = doc
        .get("history")
        .and_then(|h| h.as_array().cloned())
        .unwrap_or_default();
    for (_, created_by) in layers {
        history.push(json!({"created": created, "created_by": created_by, "comment": "rbuild"}));
    }
    doc["history"] = Value::Array(history);
    let config_json = serde_json::to_string(&doc).expect("JSON encodes");
    let config_desc = BlobDesc {
        media_type: match format.media_types {
            MediaTypes::Oci => OCI_CONFIG,
            MediaTypes::Docker => DOCKER_CONFIG,
        }
        .into(),
        digest: format!(
            "sha256:{}",
            hex::encode(Sha256::digest(config_json.as_bytes()))
        ),
        size: config_json.len() as i64,
    };

    let mut all_layers = Vec::new();
    for l in base.map(|b| b.layers.as_slice()).unwrap_or_default() {
        all_layers.push(BlobDesc {
            media_type: format.convert(&l.media_type)?,
            ..l.clone()
        });
    }
    all_layers.extend(layers.iter().map(|(l, _)| l.desc.clone()));
    let desc_json =
        |d: &BlobDesc| json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size});
    let manifest_type = match format.media_types {
        MediaTypes::Oci => OCI_MANIFEST,
        MediaTypes::Docker => DOCKER_MANIFEST,
    };
    let manifest_json = serde_json::to_string(&json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": desc_json(&config_desc),
        "layers": all_layers.iter().map(desc_json).collect::<Vec<_>>(),
    }))
    .expect("JSON encodes");
    let manifest = BlobDesc {
        media_type: manifest_type.into(),
        digest: format!(
            "sha256:{}",
            hex::encode(Sha256::digest(manifest_json.as_bytes()))
        ),
        size: manifest_json.len() as i64,
    };

    // Into the content store, labelled so that the manifest holds the rest.
    content::write_bytes(
        ctd,
        lease,
        BlobTarget {
            digest: &config_desc.digest,
            size: config_desc.size,
            labels: HashMap::new(),
        },
        bytes::Bytes::from(config_json.clone()),
    )
    .await?;
    let mut labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        config_desc.digest.clone(),
    )]);
    for (i, l) in all_layers.iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    if content::write_bytes(
        ctd,
        lease,
        BlobTarget {
            digest: &manifest.digest,
            size: manifest.size,
            labels: labels.clone(),
        },
        bytes::Bytes::from(manifest_json.clone()),
    )
    .await?
        == content::Written::Present
    {
        content::set_labels(ctd, &manifest.digest, labels).await?;
    }
    Ok(BuiltImage {
        manifest,
        manifest_json,
        config: config_desc,
        config_json,
        base_layers: base.map_or(0, |b| b.layers.len()),
        base_reference: base.map(|b| b.reference.clone()),
        layers: all_layers,
        diff_ids,
    })
}

/// Writes an image as a tarball that `docker load` (its `manifest.json`),
/// `skopeo` (`oci-archive:`) and `ctr images import` (its OCI layout) all
/// accept. Deterministic: the same image gives the same bytes.
pub async fn write_tarball(
    ctd: &Containerd,
    image: &BuiltImage,
    name: Option<&str>,
    out: &Path,
) -> Result<(), Error> {
    let mut blobs: Vec<BlobDesc> = vec![image.config.clone(), image.manifest.clone()];
    blobs.extend(image.layers.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    blobs.retain(|b| seen.insert(b.digest.clone()));
    let blob_path = |d: &str| format!("blobs/{}", d.replacen(':', "/", 1));

    let mut annotations = serde_json::Map::new();
    if let Some(n) = name {
        annotations.insert("io.containerd.image.name".into(), json!(n));
        let tag = n
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .map_or("latest", |(_, t)| t);
        annotations.insert("org.opencontainers.image.ref.name".into(), json!(tag));
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": image.manifest.media_type,
            "digest": image.manifest.digest,
            "size": image.manifest.size,
            "annotations": annotations,
        }],
    }))
    .expect("JSON encodes");
    let docker = serde_json::to_vec(&json!([{
        "Config": blob_path(&image.config.digest),
        "RepoTags": name.map(|n| vec![n.to_string()]).unwrap_or_default(),
        "Layers": image.layers.iter().map(|l| blob_path(&l.digest)).collect::<Vec<_>>(),
    }]))
    .expect("JSON encodes");

    // Blobs stream from containerd into the tar on a blocking thread.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(
        BlobDesc,
        tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    )>(1);
    let out_path = out.to_path_buf();
    let writer = tokio::task::spawn_blocking(move || -> Result<(), Error> {
        let io = |e: std::io::Error| Error::io("write image tarball", &out_path, e);
        if let Some(parent) = out_path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let f = std::fs::File::create(&out_path).map_err(io)?;
        let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
        let add = |tar: &mut tar::Builder<_>, path: &str, size: u64, data: &mut dyn Read| {
            let mut h = tar::Header::new_ustar();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, path, data)
        };
        add(
            &mut tar,
            "oci-layout",
            30,
            &mut &br#"{"imageLayoutVersion":"1.0.0"}"#[..],
        )
        .map_err(io)?;
        for (desc, chunks) in rx {
            let mut reader = content::ChannelReader::new(chunks);
            add(
                &mut tar,
                &blob_path(&desc.digest),
                desc.size as u64,
                &mut reader,
            )
            .map_err(io)?;
        }
        add(&mut tar, "index.json", index.len() as u64, &mut &index[..]).map_err(io)?;
        add(
            &mut tar,
            "manifest.json",
            docker.len() as u64,
            &mut &docker[..],
        )
        .map_err(io)?;
        tar.into_inner().map_err(io)?.flush().map_err(io)
    });
    for b in blobs {
        let (ctx, crx) = tokio::sync::mpsc::channel(4);
        if tx.send((b.clone(), crx)).is_err() {
            break;
        }
        let mut stream = content::read_stream(ctd, &b.digest).await?;
        use futures::StreamExt;
        while let Some(chunk) = stream.next().await {
            if ctx.send(chunk).await.is_err() {
                break;
            }
        }
    }
    drop(tx);
    writer
        .await
        .map_err(|e| Error::Export(format!("tarball task: {e}")))?
}

/// Where each blob's data starts in a tarball file, and its size, by digest.
type BlobOffsets = HashMap<String, (u64, u64)>;

/// Loads an OCI image tarball (an OCI layout with `index.json`, as `export`
/// writes and `docker save` ≥ 25 or `skopeo copy … oci-archive:` make) into
/// the content store, and describes the image for `platform`.
pub async fn import_tarball(
    ctd: &Containerd,
    lease: &LeaseId,
    path: &Path,
    platform: &Platform,
) -> Result<ResolvedImage, Error> {
    let p = path.to_path_buf();
    // Where each entry's data sits in the file, and the small JSON documents.
    let scan = tokio::task::spawn_blocking(
        move || -> Result<(BlobOffsets, HashMap<String, Vec<u8>>), Error> {
            let io = |e: std::io::Error| Error::io("read image tarball", &p, e);
            let f = std::fs::File::open(&p).map_err(io)?;
            let mut archive = tar::Archive::new(BufReader::new(f));
            let mut offsets = HashMap::new();
            let mut docs = HashMap::new();
            for entry in archive.entries().map_err(io)? {
                let mut entry = entry.map_err(io)?;
                let name = entry
                    .path()
                    .map_err(io)?
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .to_string();
                if name == "index.json" || name == "manifest.json" || name == "oci-layout" {
                    let mut v = Vec::new();
                    entry.read_to_end(&mut v).map_err(io)?;
                    docs.insert(name, v);
                } else if let Some(rest) = name.strip_prefix("blobs/") {
                    let digest = rest.replacen('/', ":", 1);
                    offsets.insert(digest, (entry.raw_file_position(), entry.size()));
                }
            }
            Ok((offsets, docs))
        },
    );
    let (offsets, docs) = scan
        .await
        .map_err(|e| Error::Export(format!("tarball task: {e}")))??;
    let bad = |reason: String| Error::BadImage {
        reference: path.display().to_string(),
        reason,
    };
    let Some(index) = docs.get("index.json") else {
        return Err(bad(
            "no index.json: only OCI image tarballs can be imported (rbuild's export, `skopeo copy … oci-archive:`, `docker save` from Docker 25 on)".into(),
        ));
    };
    let blob = |digest: &str| -> Result<Vec<u8>, Error> {
        let (off, size) = *offsets
            .get(digest)
            .ok_or_else(|| bad(format!("blob {digest} is missing from the tarball")))?;
        let mut f = std::fs::File::open(path).map_err(|e| Error::io("read", path, e))?;
        f.seek(std::io::SeekFrom::Start(off))
            .map_err(|e| Error::io("read", path, e))?;
        let mut v = vec![0; size as usize];
        f.read_exact(&mut v)
            .map_err(|e| Error::io("read", path, e))?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&v)));
        if actual != digest {
            return Err(bad(format!("blob {digest} has digest {actual}")));
        }
        Ok(v)
    };
    let index: Value =
        serde_json::from_slice(index).map_err(|e| bad(format!("index.json: {e}")))?;
    let entry = index["manifests"]
        .as_array()
        .and_then(|m| m.first())
        .ok_or_else(|| bad("index.json lists no image".into()))?;
    let mut target = desc_of(entry).ok_or_else(|| bad("index.json entry without digest".into()))?;
    let mut index_json = None;
    let mut manifest_desc = target.clone();
    let mut manifest_bytes = blob(&target.digest)?;
    let doc: Value =
        serde_json::from_slice(&manifest_bytes).map_err(|e| bad(format!("manifest: {e}")))?;
    if doc.get("manifests").is_some() {
        // A multi-platform index: take this platform's manifest.
        let m = doc["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| {
                m["platform"]["os"] == platform.os.as_str()
                    && m["platform"]["architecture"] == platform.architecture.as_str()
            })
            .ok_or_else(|| bad(format!("no manifest for {platform}")))?;
        manifest_desc = desc_of(m).ok_or_else(|| bad("index entry without digest".into()))?;
        index_json = Some(String::from_utf8_lossy(&manifest_bytes).into_owned());
        manifest_bytes = blob(&manifest_desc.digest)?;
    } else {
        target.media_type = doc["mediaType"]
            .as_str()
            .unwrap_or(OCI_MANIFEST)
            .to_string();
        manifest_desc.media_type = target.media_type.clone();
    }
    let manifest: Value =
        serde_json::from_slice(&manifest_bytes).map_err(|e| bad(format!("manifest: {e}")))?;
    let config_desc =
        desc_of(&manifest["config"]).ok_or_else(|| bad("manifest has no config".into()))?;
    let config_bytes = blob(&config_desc.digest)?;
    let config: Value =
        serde_json::from_slice(&config_bytes).map_err(|e| bad(format!("config: {e}")))?;
    let layers: Vec<BlobDesc> = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(desc_of)
        .collect();
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(String::from))
        .collect();
    if diff_ids.len() != layers.len() {
        return Err(bad("layers and diff IDs do not match".into()));
    }
    // Layers into the content store, straight from their place in the file.
    for (l, diff_id) in layers.iter().zip(&diff_ids) {
        let (off, size) = *offsets
            .get(&l.digest)
            .ok_or_else(|| bad(format!("layer {} is missing from the tarball", l.digest)))?;
        let mut f = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io("read", path, e))?;
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        f.seek(std::io::SeekFrom::Start(off))
            .await
            .map_err(|e| Error::io("read", path, e))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(f.take(size), 1 << 20);
        content::write_stream(
            ctd,
            lease,
            BlobTarget {
                digest: &l.digest,
                size: l.size,
                labels: HashMap::from([(
                    "containerd.io/uncompressed".to_string(),
                    diff_id.clone(),
                )]),
            },
            stream,
        )
        .await?;
    }
    let name = entry["annotations"]["io.containerd.image.name"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| format!("import.rbuild.local/image:{}", &manifest_desc.digest[7..19]));
    Ok(ResolvedImage {
        reference: name,
        platform: platform.clone(),
        target,
        index_json,
        manifest: manifest_desc,
        manifest_json: String::from_utf8_lossy(&manifest_bytes).into_owned(),
        config: config_desc,
        config_json: String::from_utf8_lossy(&config_bytes).into_owned(),
        layers,
        diff_ids,
    })
}

fn desc_of(v: &Value) -> Option<BlobDesc> {
    Some(BlobDesc {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_string(),
        digest: v["digest"].as_str()?.to_string(),
        size: v["size"].as_i64()?,
    })
}

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
            let stream = content::read_stream(ctd, &blob.digest).await.map_err(|e| {
                Error::Export(format!(
                    "layer {} is not in containerd's content store ({e}); pull or build the image again",
                    blob.digest
                ))
            })?;
            registry
                .push_blob(target, &blob.digest, blob.size as u64, stream)
                .await?;
            BlobPush::Uploaded
        };
        report(blob, how);
    }
    registry
        .push_manifest(target, &image.manifest_json, &image.manifest.media_type)
        .await?;
    Ok(image.manifest.digest.clone())
}

/// Where temporary layer files go.
pub fn scratch_dir(root: &Path) -> PathBuf {
    root.join("layers")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        let out = pax_records(&[("path".into(), b"a".to_vec())]);
        assert_eq!(out, b"9 path=a\n".to_vec());
        let long = "x".repeat(95);
        let out = pax_records(&[("path".into(), long.as_bytes().to_vec())]);
        let s = String::from_utf8(out).unwrap();
        let (len, _) = s.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), s.len());
    }

    fn tar_with(entries: &[(&str, &[u8], u64)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, mtime) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(*mtime);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn rewritten_layers_depend_on_content_only() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("dir/{}", "n".repeat(150));
        let a = tar_with(&[("a.txt", b"same", 1000), (&long, b"x", 5)]);
        let b = tar_with(&[("a.txt", b"same", 2000), (&long, b"x", 9)]);
        let digest = |tar: &[u8], name: &str, comp| {
            let input = dir.path().join(format!("{name}.tar"));
            std::fs::write(&input, tar).unwrap();
            let output = dir.path().join(format!("{name}.out"));
            rewrite_layer(&input, &output, comp, true).unwrap()
        };
        for comp in [
            Compression::Gzip,
            Compression::Zstd,
            Compression::Uncompressed,
        ] {
            let (da, ca, _) = digest(&a, "a", comp);
            let (db, cb, _) = digest(&b, "b", comp);
            assert_eq!((da, ca), (db, cb), "{comp:?}: only mtimes differ");
        }
        // The long name survives the rewrite.
        let out = dir.path().join("a.out");
        let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["a.txt".to_string(), long]);
    }
}
