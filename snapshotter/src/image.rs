//! What an image reference resolves to: the platform's manifest, its config
//! and layers, their diff IDs and chain IDs.
//!
//! A [`ResolvedImage`] is content-addressed throughout, so it never goes
//! stale and can be kept (the engine keeps it in its index, keyed by the
//! digest the tag pointed at) to avoid asking the registry again.

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::Error;
use crate::reference::ImageRef;
use crate::registry::Registry;

/// The platform rbuild runs steps for: this machine's.
pub fn host_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    Platform {
        os: "linux".into(),
        architecture: arch.into(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

/// A content descriptor: what a manifest says about a blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobDesc {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

impl BlobDesc {
    fn from_oci(d: &oci_spec::image::Descriptor) -> BlobDesc {
        BlobDesc {
            media_type: d.media_type().to_string(),
            digest: d.digest().to_string(),
            size: d.size() as i64,
        }
    }

    pub fn as_oci_client(&self) -> oci_client::manifest::OciDescriptor {
        oci_client::manifest::OciDescriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            ..Default::default()
        }
    }
}

/// An image reference resolved for one platform, with the raw documents
/// needed to write it to containerd's content store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResolvedImage {
    /// The reference as the user gave it, normalised.
    pub reference: String,
    pub platform: Platform,
    /// What the reference points at: an index or a manifest.
    pub target: BlobDesc,
    /// The index document, when `target` is one.
    pub index_json: Option<String>,
    pub manifest: BlobDesc,
    pub manifest_json: String,
    pub config: BlobDesc,
    pub config_json: String,
    pub layers: Vec<BlobDesc>,
    pub diff_ids: Vec<String>,
}

/// What a container started from the image gets by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

impl ResolvedImage {
    /// Fetches the documents behind `digest` (what `image` resolved to) and
    /// selects the manifest for `platform`.
    pub async fn fetch(
        registry: &Registry,
        image: &ImageRef,
        digest: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, Error> {
        let bad = |reason: String| Error::BadImage {
            reference: image.to_string(),
            reason,
        };
        let top = registry.fetch_manifest(image, digest).await?;
        let top_type = media_type_of(&top);
        let (index_json, manifest_desc, manifest_bytes) = if INDEX_TYPES
            .contains(&top_type.as_str())
            || (top_type.is_empty() && looks_like_index(&top))
        {
            let index: ImageIndex = serde_json::from_slice(&top)
                .map_err(|e| bad(format!("invalid image index: {e}")))?;
            let entry =
                select_platform(&index, platform).ok_or_else(|| Error::NoMatchingPlatform {
                    reference: image.to_string(),
                    platform: platform.to_string(),
                    available: index
                        .manifests()
                        .iter()
                        .filter_map(|m| m.platform().as_ref())
                        .map(|p| format!("{}/{}", p.os(), p.architecture()))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            let desc = BlobDesc::from_oci(entry);
            let bytes = registry.fetch_manifest(image, &desc.digest).await?;
            (Some(utf8(&top, image)?), desc, bytes)
        } else {
            let desc = BlobDesc {
                media_type: if top_type.is_empty() {
                    "application/vnd.oci.image.manifest.v1+json".into()
                } else {
                    top_type
                },
                digest: digest.to_string(),
                size: top.len() as i64,
            };
            (None, desc, top.clone())
        };
        let target = BlobDesc {
            media_type: index_json
                .as_ref()
                .map(|_| media_type_or(&top, INDEX_TYPES[0]))
                .unwrap_or_else(|| manifest_desc.media_type.clone()),
            digest: digest.to_string(),
            size: top.len() as i64,
        };

        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| bad(format!("invalid image manifest: {e}")))?;
        let config_desc = BlobDesc::from_oci(manifest.config());
        let config_bytes = registry
            .fetch_blob(image, &config_desc.as_oci_client())
            .await?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| bad(format!("invalid image config: {e}")))?;
        let layers: Vec<BlobDesc> = manifest.layers().iter().map(BlobDesc::from_oci).collect();
        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != layers.len() {
            return Err(bad(format!(
                "manifest lists {} layers but the config has {} diff IDs",
                layers.len(),
                diff_ids.len()
            )));
        }
        Ok(ResolvedImage {
            reference: image.to_string(),
            platform: platform.clone(),
            target,
            index_json,
            manifest: manifest_desc,
            manifest_json: utf8(&manifest_bytes, image)?,
            config: config_desc,
            config_json: utf8(&config_bytes, image)?,
            layers,
            diff_ids,
        })
    }

    /// Chain IDs of the layer stack: the snapshot names of its unpacked layers.
    pub fn chain_ids(&self) -> Vec<String> {
        chain_ids(&self.diff_ids)
    }

    /// The snapshot of the whole image (its top chain ID); None for an image without layers.
    pub fn top_chain_id(&self) -> Option<String> {
        self.chain_ids().pop()
    }

    /// Env, working dir, user, entrypoint and cmd from the image config.
    pub fn defaults(&self) -> ImageDefaults {
        let Ok(config) = serde_json::from_str::<ImageConfiguration>(&self.config_json) else {
            return ImageDefaults::default();
        };
        let Some(c) = config.config() else {
            return ImageDefaults::default();
        };
        ImageDefaults {
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
        }
    }
}

fn utf8(bytes: &[u8], image: &ImageRef) -> Result<String, Error> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::BadImage {
        reference: image.to_string(),
        reason: "a manifest or config is not UTF-8 JSON".into(),
    })
}

fn media_type_of(doc: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Typed {
        #[serde(rename = "mediaType", default)]
        media_type: String,
    }
    serde_json::from_slice::<Typed>(doc)
        .map(|t| t.media_type)
        .unwrap_or_default()
}

fn media_type_or(doc: &[u8], fallback: &str) -> String {
    let t = media_type_of(doc);
    if t.is_empty() {
        fallback.to_string()
    } else {
        t
    }
}

fn looks_like_index(doc: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(doc)
        .map(|v| v.get("manifests").is_some())
        .unwrap_or(false)
}

fn select_platform<'a>(
    index: &'a ImageIndex,
    platform: &Platform,
) -> Option<&'a oci_spec::image::Descriptor> {
    index.manifests().iter().find(|m| {
        m.platform().as_ref().is_some_and(|p| {
            p.os().to_string() == platform.os
                && p.architecture().to_string() == platform.architecture
        })
    })
}

/// containerd's (and the OCI spec's) chain ID: the first layer's diff ID,
/// then `sha256(parent + " " + diff_id)` for each layer above it.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => {
                let h = Sha256::digest(format!("{parent} {d}").as_bytes());
                format!("sha256:{}", hex::encode(h))
            }
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        let expect = Sha256::digest(format!("{a} {b}").as_bytes());
        assert_eq!(ids[1], format!("sha256:{}", hex::encode(expect)));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn selects_the_host_platform_from_an_index() {
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index: ImageIndex = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest('a'),
                 "size": 1, "platform": {"os": "linux", "architecture": "arm64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest('b'),
                 "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
            ]
        }))
        .unwrap();
        let amd64 = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
        };
        let picked = select_platform(&index, &amd64).unwrap();
        assert_eq!(picked.digest().to_string(), digest('b'));
        let s390 = Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
        };
        assert!(select_platform(&index, &s390).is_none());
    }
}
