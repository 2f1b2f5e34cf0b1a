//! Image assembly: the config and manifest of an image made of a base image
//! plus built layers, written to containerd's content store with the GC
//! labels that keep its blobs alive.
//!
//! Works on layers that already exist (`layer` makes them); writing the
//! image somewhere else is `archive` (a tarball) or `push` (a registry).

use std::collections::HashMap;

use rbuild_containerd::{Containerd, LeaseId};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::format::{
    DOCKER_CONFIG, DOCKER_MANIFEST, ImageFormat, MediaTypes, OCI_CONFIG, OCI_MANIFEST,
};
use super::layer::Layer;
use crate::Error;
use crate::content::{self, BlobTarget};
use crate::image::{BlobDesc, Platform, ResolvedImage};

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
