//! The files of the machine running the pipeline.

use std::path::Path;
use std::sync::Arc;

use crate::directory::Directory;
use crate::file::File;
use crate::ops::Ops;
use crate::options::DirOpts;
use crate::session::Session;
use crate::wire::{DirectorySource, FileDef};

/// A host path as the engine needs it: absolute (relative to this process's
/// working directory).
pub(crate) fn host_path(path: impl AsRef<Path>) -> String {
    std::path::absolute(path.as_ref())
        .unwrap_or_else(|_| path.as_ref().to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// The host's files.
#[derive(Clone)]
pub struct Host {
    pub(crate) session: Arc<Session>,
}

impl Host {
    /// A host directory, identified by the content of what the options
    /// select (never by mtimes): an edit that keeps size and mtime still
    /// invalidates, a `touch` does not.
    pub fn directory(&self, path: impl AsRef<Path>, opts: DirOpts) -> Directory {
        Directory {
            session: self.session.clone(),
            source: DirectorySource::Host {
                path: host_path(path),
                include: opts.include,
                exclude: opts.exclude,
                gitignore: opts.gitignore,
            },
            ops: Ops::default(),
        }
    }

    /// A host file.
    pub fn file(&self, path: impl AsRef<Path>) -> File {
        File {
            session: self.session.clone(),
            def: FileDef::Host {
                path: host_path(path),
            },
        }
    }
}
