//! [`Directory`]: a tree of files from the host, a container, or built up,
//! its builder calls and the results it can be asked for.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use serde_core::de::{DeserializeOwned, IgnoredAny};

use crate::error::Result;
use crate::file::File;
use crate::host::host_path;
use crate::ops::Ops;
use crate::options::DirectoryOpts;
use crate::session::{ask, Session};
use crate::wire::{DirectoryDef, DirectoryOp, DirectorySource, FileDef, Query};

/// A directory: a tree of files, from the host, a container, or built up.
#[derive(Clone)]
pub struct Directory {
    pub(crate) session: Arc<Session>,
    pub(crate) source: DirectorySource,
    pub(crate) ops: Ops<DirectoryOp>,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("def", &self.def())
            .finish()
    }
}

impl Directory {
    fn with(&self, op: DirectoryOp) -> Directory {
        Directory {
            session: self.session.clone(),
            source: self.source.clone(),
            ops: self.ops.push(op, None),
        }
    }

    pub(crate) fn def(&self) -> DirectoryDef {
        DirectoryDef {
            source: self.source.clone(),
            ops: self.ops.to_vecs().0,
        }
    }

    fn ask<T: DeserializeOwned + Send + 'static>(
        &self,
        query: Query,
    ) -> impl Future<Output = Result<T>> + Send + 'static {
        ask(&self.session, query)
    }

    /// A subdirectory.
    pub fn directory(&self, path: impl Into<String>) -> Directory {
        self.with(DirectoryOp::Directory { path: path.into() })
    }

    /// A file in this directory.
    pub fn file(&self, path: impl Into<String>) -> File {
        File {
            session: self.session.clone(),
            def: FileDef::Directory {
                directory: self.def(),
                path: path.into(),
            },
        }
    }

    pub fn with_new_file(&self, path: impl Into<String>, contents: impl Into<String>) -> Directory {
        self.with_new_file_opts(path, contents, None)
    }

    pub fn with_new_file_opts(
        &self,
        path: impl Into<String>,
        contents: impl Into<String>,
        permissions: Option<u32>,
    ) -> Directory {
        self.with(DirectoryOp::WithNewFile {
            path: path.into(),
            contents: contents.into(),
            permissions,
        })
    }

    pub fn with_file(&self, path: impl Into<String>, file: impl Borrow<File>) -> Directory {
        self.with(DirectoryOp::WithFile {
            path: path.into(),
            file: file.borrow().def.clone(),
            permissions: None,
        })
    }

    pub fn with_directory(
        &self,
        path: impl Into<String>,
        dir: impl Borrow<Directory>,
    ) -> Directory {
        self.with_directory_opts(path, dir, DirectoryOpts::default())
    }

    pub fn with_directory_opts(
        &self,
        path: impl Into<String>,
        dir: impl Borrow<Directory>,
        opts: DirectoryOpts,
    ) -> Directory {
        self.with(DirectoryOp::WithDirectory {
            path: path.into(),
            directory: dir.borrow().def(),
            include: opts.include,
            exclude: opts.exclude,
        })
    }

    pub fn without_file(&self, path: impl Into<String>) -> Directory {
        self.with(DirectoryOp::WithoutFile { path: path.into() })
    }

    pub fn without_directory(&self, path: impl Into<String>) -> Directory {
        self.with(DirectoryOp::WithoutDirectory { path: path.into() })
    }

    /// Only what the include/exclude patterns select.
    pub fn filter(&self, opts: DirectoryOpts) -> Directory {
        self.with(DirectoryOp::Filter {
            include: opts.include,
            exclude: opts.exclude,
        })
    }

    /// What in `other` is new or different compared to this directory.
    pub fn diff(&self, other: impl Borrow<Directory>) -> Directory {
        self.with(DirectoryOp::Diff {
            other: other.borrow().def(),
        })
    }

    /// Names of the entries at the top of this directory, sorted.
    pub fn entries(&self) -> impl Future<Output = Result<Vec<String>>> + Send + 'static {
        self.ask(Query::Entries {
            directory: self.def(),
            path: None,
        })
    }

    /// Relative paths that match a glob (`*.rs`, `**/*.toml`), sorted.
    pub fn glob(
        &self,
        pattern: impl Into<String>,
    ) -> impl Future<Output = Result<Vec<String>>> + Send + 'static {
        self.ask(Query::Glob {
            directory: self.def(),
            pattern: pattern.into(),
        })
    }

    /// The content digest (`blake3:…`) over names, types, permission bits,
    /// symlink targets and file contents.
    pub fn digest(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        self.ask(Query::DirDigest {
            directory: self.def(),
        })
    }

    /// Writes the directory's contents to a host path; returns that path.
    pub fn export(
        &self,
        path: impl AsRef<Path>,
    ) -> impl Future<Output = Result<String>> + Send + 'static {
        self.ask(Query::DirExport {
            directory: self.def(),
            path: host_path(path),
        })
    }

    pub fn sync(&self) -> impl Future<Output = Result<Directory>> + Send + 'static {
        let answer = self.ask::<IgnoredAny>(Query::DirSync {
            directory: self.def(),
        });
        let this = self.clone();
        async move {
            answer.await?;
            Ok(this)
        }
    }
}
