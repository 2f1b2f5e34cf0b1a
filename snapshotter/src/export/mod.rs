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
//!
//! - `format`: media types, compression, timestamps ([`ImageFormat`]).
//! - `flatten`: one snapshot's content into a parentless one ([`flatten`]).
//! - `layer`: a snapshot diff as a layer in the content store ([`diff_layer`]).
//! - `rewrite`: the epoch-timestamped, compressed form of a layer tar.
//! - `assemble`: config and manifest of base + layers ([`assemble`]).
//! - `archive`: OCI tarballs out and in ([`write_tarball`], [`import_tarball`]).
//! - `push`: an assembled image to a registry ([`publish`]).
//!
//! Pulling and unpacking images is not here: see `pull` and `unpack`.

mod archive;
mod assemble;
mod flatten;
mod format;
mod layer;
mod push;
mod rewrite;

pub use archive::{import_tarball, write_tarball};
pub use assemble::{BuiltImage, ImageConfig, assemble};
pub use flatten::flatten;
pub use format::{
    Compression, DOCKER_MANIFEST, ImageFormat, MediaTypes, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST,
};
pub use layer::{Layer, diff_layer, scratch_dir};
pub use push::{BlobPush, publish};
pub use rewrite::pack_dir;
