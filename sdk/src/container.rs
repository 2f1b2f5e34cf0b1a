//! [`Container`]: a root filesystem and the configuration to run commands
//! in it, its builder calls and the results it can be asked for.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use serde_core::de::{DeserializeOwned, IgnoredAny};

use crate::cache_volume::{CacheVolume, Sharing};
use crate::directory::Directory;
use crate::error::Result;
use crate::file::File;
use crate::host::host_path;
use crate::ops::{call_site, Ops};
use crate::options::{list, DirectoryOpts, ExecOpts, FileOpts, ImageOpts};
use crate::secret::Secret;
use crate::session::{ask, Session};
use crate::wire::{ContainerDef, ContainerOp, DirectorySource, FileDef, Query};

/// A container: a root filesystem and the configuration to run commands in it.
///
/// Immutable and lazy; every builder method returns a new `Container`.
#[derive(Clone)]
pub struct Container {
    pub(crate) session: Arc<Session>,
    pub(crate) ops: Ops<ContainerOp>,
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Container")
            .field("ops", &self.ops.to_vecs().0)
            .finish()
    }
}

impl Container {
    #[track_caller]
    pub(crate) fn with(&self, op: ContainerOp) -> Container {
        Container {
            session: self.session.clone(),
            ops: self.ops.push(op, call_site()),
        }
    }

    pub(crate) fn def(&self) -> ContainerDef {
        let (ops, at) = self.ops.to_vecs();
        ContainerDef { ops, at }
    }

    /// Starts from an image in a registry (`registry/repository:tag` or `@sha256:…`).
    /// Its environment, working directory, user, entrypoint and default
    /// args become the container's.
    #[track_caller]
    pub fn from(&self, address: impl Into<String>) -> Container {
        self.with(ContainerOp::From {
            address: address.into(),
        })
    }

    /// Runs a command. `args[0]` is looked up in the container's `PATH`; no
    /// shell is involved unless you call one (`["sh", "-c", "..."]`).
    /// Accepts arrays, slices and vectors of `&str` or `String`.
    #[track_caller]
    pub fn with_exec<I, S>(&self, args: I) -> Container
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.with_exec_opts(args, ExecOpts::default())
    }

    /// [`Container::with_exec`] with an expected outcome, stdin, or the entrypoint.
    #[track_caller]
    pub fn with_exec_opts<I, S>(&self, args: I, opts: ExecOpts) -> Container
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.with(ContainerOp::WithExec {
            args: list(args),
            expect: opts.expect.into(),
            stdin: opts.stdin,
            use_entrypoint: opts.use_entrypoint,
        })
    }

    /// Sets an environment variable for the commands that follow.
    #[track_caller]
    pub fn with_env_variable(
        &self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Container {
        self.with_env_variable_opts(name, value, false)
    }

    /// With `expand`, `$VAR` and `${VAR}` in `value` are replaced with the
    /// container's current values.
    #[track_caller]
    pub fn with_env_variable_opts(
        &self,
        name: impl Into<String>,
        value: impl Into<String>,
        expand: bool,
    ) -> Container {
        self.with(ContainerOp::WithEnvVariable {
            name: name.into(),
            value: value.into(),
            expand,
        })
    }

    #[track_caller]
    pub fn without_env_variable(&self, name: impl Into<String>) -> Container {
        self.with(ContainerOp::WithoutEnvVariable { name: name.into() })
    }

    /// An environment variable whose value is a secret.
    #[track_caller]
    pub fn with_secret_variable(
        &self,
        name: impl Into<String>,
        secret: impl Borrow<Secret>,
    ) -> Container {
        self.with(ContainerOp::WithSecretVariable {
            name: name.into(),
            secret: secret.borrow().def.clone(),
        })
    }

    /// Sets the working directory (relative paths are relative to the current one).
    #[track_caller]
    pub fn with_workdir(&self, path: impl Into<String>) -> Container {
        self.with(ContainerOp::WithWorkdir { path: path.into() })
    }

    /// The user commands run as: `name`, `uid`, `name:group` or `uid:gid`.
    #[track_caller]
    pub fn with_user(&self, name: impl Into<String>) -> Container {
        self.with(ContainerOp::WithUser { name: name.into() })
    }

    #[track_caller]
    pub fn with_entrypoint<I, S>(&self, args: I) -> Container
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.with(ContainerOp::WithEntrypoint { args: list(args) })
    }

    /// The command `with_exec([])` runs.
    #[track_caller]
    pub fn with_default_args<I, S>(&self, args: I) -> Container
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.with(ContainerOp::WithDefaultArgs { args: list(args) })
    }

    #[track_caller]
    pub fn with_label(&self, name: impl Into<String>, value: impl Into<String>) -> Container {
        self.with(ContainerOp::WithLabel {
            name: name.into(),
            value: value.into(),
        })
    }

    /// Copies a directory's contents to `path` (merging with what is there).
    #[track_caller]
    pub fn with_directory(
        &self,
        path: impl Into<String>,
        dir: impl Borrow<Directory>,
    ) -> Container {
        self.with_directory_opts(path, dir, DirectoryOpts::default())
    }

    #[track_caller]
    pub fn with_directory_opts(
        &self,
        path: impl Into<String>,
        dir: impl Borrow<Directory>,
        opts: DirectoryOpts,
    ) -> Container {
        self.with(ContainerOp::WithDirectory {
            path: path.into(),
            directory: dir.borrow().def(),
            include: opts.include,
            exclude: opts.exclude,
            owner: opts.owner,
        })
    }

    /// Copies a file to `path`.
    #[track_caller]
    pub fn with_file(&self, path: impl Into<String>, file: impl Borrow<File>) -> Container {
        self.with_file_opts(path, file, FileOpts::default())
    }

    #[track_caller]
    pub fn with_file_opts(
        &self,
        path: impl Into<String>,
        file: impl Borrow<File>,
        opts: FileOpts,
    ) -> Container {
        self.with(ContainerOp::WithFile {
            path: path.into(),
            file: file.borrow().def.clone(),
            permissions: opts.permissions,
            owner: opts.owner,
        })
    }

    /// Writes a new file (mode 0644 unless given).
    #[track_caller]
    pub fn with_new_file(&self, path: impl Into<String>, contents: impl Into<String>) -> Container {
        self.with_new_file_opts(path, contents, FileOpts::default())
    }

    #[track_caller]
    pub fn with_new_file_opts(
        &self,
        path: impl Into<String>,
        contents: impl Into<String>,
        opts: FileOpts,
    ) -> Container {
        self.with(ContainerOp::WithNewFile {
            path: path.into(),
            contents: contents.into(),
            permissions: opts.permissions,
            owner: opts.owner,
        })
    }

    #[track_caller]
    pub fn without_file(&self, path: impl Into<String>) -> Container {
        self.with(ContainerOp::WithoutFile { path: path.into() })
    }

    #[track_caller]
    pub fn without_directory(&self, path: impl Into<String>) -> Container {
        self.with(ContainerOp::WithoutDirectory { path: path.into() })
    }

    /// Mounts a directory for the commands that follow; what they change in
    /// it is not kept.
    #[track_caller]
    pub fn with_mounted_directory(
        &self,
        path: impl Into<String>,
        dir: impl Borrow<Directory>,
    ) -> Container {
        self.with(ContainerOp::WithMountedDirectory {
            path: path.into(),
            directory: dir.borrow().def(),
        })
    }

    #[track_caller]
    pub fn with_mounted_file(&self, path: impl Into<String>, file: impl Borrow<File>) -> Container {
        self.with(ContainerOp::WithMountedFile {
            path: path.into(),
            file: file.borrow().def.clone(),
        })
    }

    /// Mounts a cache volume (shared between concurrent users).
    #[track_caller]
    pub fn with_mounted_cache(
        &self,
        path: impl Into<String>,
        cache: impl Borrow<CacheVolume>,
    ) -> Container {
        self.with_mounted_cache_opts(path, cache, Sharing::Shared)
    }

    #[track_caller]
    pub fn with_mounted_cache_opts(
        &self,
        path: impl Into<String>,
        cache: impl Borrow<CacheVolume>,
        sharing: Sharing,
    ) -> Container {
        self.with(ContainerOp::WithMountedCache {
            path: path.into(),
            volume: cache.borrow().name.clone(),
            sharing,
        })
    }

    /// Mounts an empty tmpfs.
    #[track_caller]
    pub fn with_mounted_temp(&self, path: impl Into<String>) -> Container {
        self.with(ContainerOp::WithMountedTemp { path: path.into() })
    }

    /// Mounts a secret as a read-only file (mode 0400 unless given).
    #[track_caller]
    pub fn with_mounted_secret(
        &self,
        path: impl Into<String>,
        secret: impl Borrow<Secret>,
    ) -> Container {
        self.with_mounted_secret_opts(path, secret, None)
    }

    #[track_caller]
    pub fn with_mounted_secret_opts(
        &self,
        path: impl Into<String>,
        secret: impl Borrow<Secret>,
        mode: Option<u32>,
    ) -> Container {
        self.with(ContainerOp::WithMountedSecret {
            path: path.into(),
            secret: secret.borrow().def.clone(),
            mode,
        })
    }

    #[track_caller]
    pub fn without_mount(&self, path: impl Into<String>) -> Container {
        self.with(ContainerOp::WithoutMount { path: path.into() })
    }

    /// Declares a port the image listens on (`with_exposed_port(8080)`), for its config.
    #[track_caller]
    pub fn with_exposed_port(&self, port: u16) -> Container {
        self.with_exposed_port_opts(port, "tcp")
    }

    #[track_caller]
    pub fn with_exposed_port_opts(&self, port: u16, protocol: impl Into<String>) -> Container {
        self.with(ContainerOp::WithExposedPort {
            port,
            protocol: protocol.into(),
        })
    }

    /// Credentials for publishing to `address`'s registry (instead of the Docker config's).
    #[track_caller]
    pub fn with_registry_auth(
        &self,
        address: impl Into<String>,
        username: impl Into<String>,
        secret: impl Borrow<Secret>,
    ) -> Container {
        self.with(ContainerOp::WithRegistryAuth {
            address: address.into(),
            username: username.into(),
            secret: secret.borrow().def.clone(),
        })
    }

    /// This container replaced by the image in an OCI image tarball
    /// (`export`'s or `as_tarball`'s, or `skopeo copy … oci-archive:`).
    #[track_caller]
    pub fn import(&self, file: impl Borrow<File>) -> Container {
        self.with(ContainerOp::Import {
            file: file.borrow().def.clone(),
        })
    }

    /// Opens an interactive shell (`/bin/sh`) in this container on the
    /// terminal `rbuild run` was started from; returns its exit code. What
    /// the shell changes is not kept.
    pub fn terminal(&self) -> impl Future<Output = Result<i64>> + Send + 'static {
        self.terminal_opts(Vec::<String>::new())
    }

    /// [`Container::terminal`] with another command (`["bash", "-l"]`).
    pub fn terminal_opts<I, S>(
        &self,
        command: I,
    ) -> impl Future<Output = Result<i64>> + Send + 'static
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.ask(Query::Terminal {
            container: self.def(),
            command: list(command),
        })
    }

    /// Pushes this container as an image to `address` (`registry/repo:tag`);
    /// returns the pushed reference with its digest. Base image layers are
    /// not uploaded again when the registry has them.
    pub fn publish(
        &self,
        address: impl Into<String>,
    ) -> impl Future<Output = Result<String>> + Send + 'static {
        self.publish_opts(address, ImageOpts::default())
    }

    pub fn publish_opts(
        &self,
        address: impl Into<String>,
        opts: ImageOpts,
    ) -> impl Future<Output = Result<String>> + Send + 'static {
        self.ask(Query::Publish {
            container: self.def(),
            address: address.into(),
            format: opts.format(),
        })
    }

    /// Writes this container as an OCI image tarball (also loadable by
    /// `docker load`) to a host path; returns the path.
    pub fn export(
        &self,
        path: impl AsRef<Path>,
    ) -> impl Future<Output = Result<String>> + Send + 'static {
        self.export_opts(path, ImageOpts::default())
    }

    pub fn export_opts(
        &self,
        path: impl AsRef<Path>,
        opts: ImageOpts,
    ) -> impl Future<Output = Result<String>> + Send + 'static {
        self.ask(Query::Export {
            container: self.def(),
            path: host_path(path),
            format: opts.format(),
            name: opts.name,
        })
    }

    /// This container as an OCI image tarball file.
    pub fn as_tarball(&self) -> File {
        self.as_tarball_opts(ImageOpts::default())
    }

    pub fn as_tarball_opts(&self, opts: ImageOpts) -> File {
        File {
            session: self.session.clone(),
            def: FileDef::Tarball {
                container: self.def(),
                format: opts.format(),
                name: opts.name,
            },
        }
    }

    /// A directory of this container's filesystem.
    pub fn directory(&self, path: impl Into<String>) -> Directory {
        Directory {
            session: self.session.clone(),
            source: DirectorySource::Container {
                container: self.def(),
                path: path.into(),
            },
            ops: Ops::default(),
        }
    }

    /// A file of this container's filesystem.
    pub fn file(&self, path: impl Into<String>) -> File {
        File {
            session: self.session.clone(),
            def: FileDef::Container {
                container: self.def(),
                path: path.into(),
            },
        }
    }

    fn ask<T: DeserializeOwned + Send + 'static>(
        &self,
        query: Query,
    ) -> impl Future<Output = Result<T>> + Send + 'static {
        ask(&self.session, query)
    }

    /// What the last `with_exec` wrote to standard output (secrets scrubbed).
    ///
    /// The output comes back whole, however long. Beyond 1 MiB, rbuild
    /// keeps it in a file under its state root (`ROOT/outputs/BLAKE3`,
    /// removed when the cache entry is pruned) and reads it back for this;
    /// its index keeps only the first and last 512 KiB, which is what this
    /// returns, with a line between them (`[rbuild: N bytes of output left
    /// out here; all T bytes are in PATH]`), should that file be gone.
    /// Output of hundreds of megabytes is better written to a file in the
    /// container and read from there (`file(path)`, `export`).
    ///
    /// As text: bytes that are not UTF-8 are replaced with U+FFFD (`�`);
    /// [`Container::stdout_bytes`] returns them exactly.
    pub fn stdout(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        self.ask(Query::Stdout {
            container: self.def(),
        })
    }

    /// What the last `with_exec` wrote to standard error (secrets scrubbed),
    /// whole, like [`Container::stdout`] (and as text, like it).
    pub fn stderr(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        self.ask(Query::Stderr {
            container: self.def(),
        })
    }

    /// [`Container::stdout`]'s bytes exactly as the step wrote them
    /// (secrets scrubbed), UTF-8 or not (protocol 3).
    pub fn stdout_bytes(&self) -> impl Future<Output = Result<Vec<u8>>> + Send + 'static {
        let hex = self.ask::<String>(Query::StdoutBytes {
            container: self.def(),
        });
        async move { from_hex(&hex.await?) }
    }

    /// [`Container::stderr`]'s bytes exactly (protocol 3).
    pub fn stderr_bytes(&self) -> impl Future<Output = Result<Vec<u8>>> + Send + 'static {
        let hex = self.ask::<String>(Query::StderrBytes {
            container: self.def(),
        });
        async move { from_hex(&hex.await?) }
    }

    /// The exit code of the last `with_exec`.
    pub fn exit_code(&self) -> impl Future<Output = Result<i64>> + Send + 'static {
        self.ask(Query::ExitCode {
            container: self.def(),
        })
    }

    /// Runs everything this container needs, and returns it.
    pub fn sync(&self) -> impl Future<Output = Result<Container>> + Send + 'static {
        let answer = self.ask::<IgnoredAny>(Query::Sync {
            container: self.def(),
        });
        let this = self.clone();
        async move {
            answer.await?;
            Ok(this)
        }
    }
}

/// Bytes from the engine's hex (JSON carries no raw bytes; a hex decoder
/// here costs a pipeline's compile nothing, a base64 crate would).
fn from_hex(hex: &str) -> Result<Vec<u8>> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    hex.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [h, l] => Some(digit(*h)? << 4 | digit(*l)?),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| {
            crate::error::Error::new("the engine sent output bytes in a form this SDK cannot read")
        })
}
