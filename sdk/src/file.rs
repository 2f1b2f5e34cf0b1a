//! [`File`]: one file from the host, a container, a directory or an image
//! tarball, and the results it can be asked for.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use serde_core::de::{DeserializeOwned, IgnoredAny};

use crate::error::Result;
use crate::host::host_path;
use crate::session::{ask, Session};
use crate::wire::{FileDef, Query};

/// A file.
#[derive(Clone)]
pub struct File {
    pub(crate) session: Arc<Session>,
    pub(crate) def: FileDef,
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File").field("def", &self.def).finish()
    }
}

impl File {
    fn ask<T: DeserializeOwned + Send + 'static>(
        &self,
        query: Query,
    ) -> impl Future<Output = Result<T>> + Send + 'static {
        ask(&self.session, query)
    }

    /// The file's contents (as text; invalid UTF-8 is replaced).
    pub fn contents(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        self.ask(Query::Contents {
            file: self.def.clone(),
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> impl Future<Output = Result<u64>> + Send + 'static {
        self.ask(Query::Size {
            file: self.def.clone(),
        })
    }

    /// The file's name (the last path component).
    pub fn name(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        self.ask(Query::Name {
            file: self.def.clone(),
        })
    }

    /// `blake3:…` of the contents.
    pub fn digest(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        self.ask(Query::FileDigest {
            file: self.def.clone(),
        })
    }

    /// Writes the file to a host path; returns that path.
    pub fn export(
        &self,
        path: impl AsRef<Path>,
    ) -> impl Future<Output = Result<String>> + Send + 'static {
        self.ask(Query::FileExport {
            file: self.def.clone(),
            path: host_path(path),
        })
    }

    pub fn sync(&self) -> impl Future<Output = Result<File>> + Send + 'static {
        let answer = self.ask::<IgnoredAny>(Query::FileSync {
            file: self.def.clone(),
        });
        let this = self.clone();
        async move {
            answer.await?;
            Ok(this)
        }
    }
}
