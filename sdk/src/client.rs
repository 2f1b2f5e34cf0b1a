//! Reaching the engine ([`connect`]) and the entry point that makes new
//! values ([`Client`]).

use std::sync::Arc;

use crate::cache_volume::CacheVolume;
use crate::container::Container;
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::ops::Ops;
use crate::secret::Secret;
use crate::session::{Recorded, Session};
use crate::wire::{self, DirectorySource, SecretDef};

/// Connects to the engine of the `rbuild run` that started this pipeline.
pub async fn connect() -> Result<Client> {
    if std::env::var_os(wire::LIST_ENV).is_some() {
        // `rbuild functions` on a pipeline that has none: say so, run nothing.
        crate::functions::print_listing(None);
        std::process::exit(0);
    }
    let socket = std::env::var_os(wire::SOCKET_ENV).ok_or_else(|| {
        Error::new(
            "this pipeline is not running under rbuild: start it with `rbuild run <path to pipeline>`",
        )
    })?;
    let token = std::env::var(wire::TOKEN_ENV).map_err(|_| {
        Error::new(format!(
            "{} is not set: start the pipeline with `rbuild run`",
            wire::TOKEN_ENV
        ))
    })?;
    let session = Session::connect(socket.into(), token);
    session.check()?;
    Ok(Client {
        session: Arc::new(session),
    })
}

/// A client that reaches no engine: each query is recorded as the request
/// line it would send with `token`, and answered with an error. For tests
/// that check what the SDK sends (the engine's protocol conformance test).
#[doc(hidden)]
pub fn recording_client(token: &str) -> (Client, Recorded) {
    let (session, recorded) = Session::recording(token.into());
    let client = Client {
        session: Arc::new(session),
    };
    (client, recorded)
}

/// The entry point to the API: makes new values.
#[derive(Clone)]
pub struct Client {
    pub(crate) session: Arc<Session>,
}

impl Client {
    /// An empty container; start it with [`Container::from`].
    pub fn container(&self) -> Container {
        Container {
            session: self.session.clone(),
            ops: Ops::default(),
        }
    }

    /// An empty directory.
    pub fn directory(&self) -> Directory {
        Directory {
            session: self.session.clone(),
            source: DirectorySource::Empty,
            ops: Ops::default(),
        }
    }

    /// Files and directories of the machine running the pipeline.
    pub fn host(&self) -> Host {
        Host {
            session: self.session.clone(),
        }
    }

    /// A named cache volume: contents persist across runs and never enter a
    /// cache key. Mount it with [`Container::with_mounted_cache`].
    pub fn cache_volume(&self, name: impl Into<String>) -> CacheVolume {
        CacheVolume { name: name.into() }
    }

    /// A secret read by the engine from `env:NAME`, `file:PATH` or
    /// `cmd:COMMAND` (its standard output, one trailing newline dropped).
    pub fn secret(&self, uri: impl Into<String>) -> Secret {
        let uri = uri.into();
        Secret {
            def: SecretDef {
                name: uri.clone(),
                uri: Some(uri),
                plaintext: None,
            },
        }
    }

    /// A secret with a value the pipeline already has.
    pub fn set_secret(&self, name: impl Into<String>, value: impl Into<String>) -> Secret {
        Secret {
            def: SecretDef {
                name: name.into(),
                uri: None,
                plaintext: Some(value.into()),
            },
        }
    }
}
