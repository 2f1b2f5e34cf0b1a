//! Options of the builder and result methods (the `*_opts` variants), and
//! how each becomes its part of the wire protocol.

use crate::wire::{CompressionDef, Expect, ImageFormatDef, MediaTypesDef};

/// Argument lists accept arrays, slices and vectors of `&str` or `String`.
pub(crate) fn list<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    items.into_iter().map(|s| s.as_ref().to_string()).collect()
}

/// Options of [`Host::directory`](crate::Host::directory). Patterns use
/// `.gitignore` syntax: `target/` is a directory named target at any depth,
/// `/target` only the top-level one, `**/Cargo.toml` every Cargo.toml.
#[derive(Clone, Debug, Default)]
pub struct DirOpts {
    pub(crate) include: Vec<String>,
    pub(crate) exclude: Vec<String>,
    pub(crate) gitignore: bool,
}

impl DirOpts {
    /// Take only what matches one of these patterns (and the directories leading to it).
    pub fn include<I, S>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.include = list(patterns);
        self
    }

    /// Leave out what matches one of these patterns.
    pub fn exclude<I, S>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.exclude = list(patterns);
        self
    }

    /// Also leave out what the tree's `.gitignore` files ignore.
    pub fn gitignore(mut self, respect: bool) -> Self {
        self.gitignore = respect;
        self
    }
}

/// What a [`Container::with_exec_opts`](crate::Container::with_exec_opts)
/// must end with to count as a result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReturnType {
    /// Exit code 0 (the default): anything else fails the pipeline.
    #[default]
    Success,
    /// A non-zero exit code; 0 fails.
    Failure,
    /// Any exit code; read it with [`Container::exit_code`](crate::Container::exit_code).
    Any,
}

impl From<ReturnType> for Expect {
    fn from(r: ReturnType) -> Expect {
        match r {
            ReturnType::Success => Expect::Success,
            ReturnType::Failure => Expect::Failure,
            ReturnType::Any => Expect::Any,
        }
    }
}

/// Options of [`Container::with_exec_opts`](crate::Container::with_exec_opts).
#[derive(Clone, Debug, Default)]
pub struct ExecOpts {
    pub expect: ReturnType,
    /// Written to the command's standard input.
    pub stdin: Option<String>,
    /// Prefix the command with the container's entrypoint.
    pub use_entrypoint: bool,
}

/// Options of the `*_opts` file methods.
#[derive(Clone, Debug, Default)]
pub struct FileOpts {
    /// Permission bits, e.g. `0o755`.
    pub permissions: Option<u32>,
    /// `user[:group]`, names or numbers, resolved in the container.
    pub owner: Option<String>,
}

/// Options of `with_directory_opts` and [`Directory::filter`](crate::Directory::filter).
#[derive(Clone, Debug, Default)]
pub struct DirectoryOpts {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// `user[:group]` for everything copied (containers only).
    pub owner: Option<String>,
}

/// Media types of a published or exported image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageMediaTypes {
    /// `application/vnd.oci.image.*` (the default).
    #[default]
    Oci,
    /// `application/vnd.docker.*`, for old registries and tools.
    Docker,
}

/// Compression of the layers rbuild makes (base image layers stay as they are).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageLayerCompression {
    #[default]
    Gzip,
    Zstd,
    Uncompressed,
}

/// How an image is written by `publish_opts`, `export_opts` and `as_tarball_opts`.
#[derive(Clone, Debug, Default)]
pub struct ImageOpts {
    pub media_types: ImageMediaTypes,
    pub compression: ImageLayerCompression,
    /// Keep the files' and the image's real timestamps. By default they are
    /// the Unix epoch, so that the same content always has the same digest.
    pub real_timestamps: bool,
    /// The name a tarball gives the image (`docker load` tags it so).
    pub name: Option<String>,
}

impl ImageOpts {
    pub(crate) fn format(&self) -> ImageFormatDef {
        ImageFormatDef {
            media_types: match self.media_types {
                ImageMediaTypes::Oci => MediaTypesDef::Oci,
                ImageMediaTypes::Docker => MediaTypesDef::Docker,
            },
            compression: match self.compression {
                ImageLayerCompression::Gzip => CompressionDef::Gzip,
                ImageLayerCompression::Zstd => CompressionDef::Zstd,
                ImageLayerCompression::Uncompressed => CompressionDef::Uncompressed,
            },
            real_timestamps: self.real_timestamps,
        }
    }
}
