//! OCI image tarballs: writing an assembled image as one (`docker load`,
//! `skopeo` and `ctr images import` all read it) and loading one into the
//! content store.
//!
//! Blobs stream between containerd and the tar file; nothing is unpacked
//! here (a loaded image is unpacked like a pulled one, by `unpack`).

use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, Write};
use std::path::Path;

use rbuild_containerd::{Containerd, LeaseId};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::assemble::BuiltImage;
use super::format::{OCI_INDEX, OCI_MANIFEST};
use crate::Error;
use crate::content::{self, BlobTarget};
use crate::image::{BlobDesc, Platform, ResolvedImage};

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
        // A symlink at the destination is replaced, never written through.
        let dest = crate::confine::Entry::on_host(&out_path)?;
        let f = dest.parent.create_file(&dest.name)?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(io)?;
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
