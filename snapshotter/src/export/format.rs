//! How an image is written: the media types of manifests, configs and
//! layers, layer compression, and whether timestamps are kept.
//!
//! Plain values only — nothing here touches containerd or a file. What
//! produces the bytes in a format is in `layer`, `assemble` and `archive`.

use crate::Error;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(super) const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub(super) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(super) const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(super) const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub(super) const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub(super) const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

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

    pub(super) fn layer_media_type(&self) -> Result<&'static str, Error> {
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
    pub(super) fn convert(&self, media_type: &str) -> Result<String, Error> {
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
