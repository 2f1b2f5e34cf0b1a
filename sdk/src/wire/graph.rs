//! The pipeline graph as it travels: values (containers, directories,
//! files, secrets) as the chains of builder calls that made them, oldest
//! first. Pure data; evaluating it is the engine's job.

#[cfg(feature = "engine")]
use serde::Deserialize;

use serde_json::Value;

use super::module::ModuleCallDef;
use super::{json_as_str, tagged, ToJson};

/// One builder call on a `Container`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "engine",
    derive(Deserialize),
    serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)
)]
pub enum ContainerOp {
    From {
        address: String,
    },
    WithExec {
        args: Vec<String>,
        #[cfg_attr(feature = "engine", serde(default))]
        expect: Expect,
        #[cfg_attr(feature = "engine", serde(default))]
        stdin: Option<String>,
        #[cfg_attr(feature = "engine", serde(default))]
        use_entrypoint: bool,
    },
    WithEnvVariable {
        name: String,
        value: String,
        #[cfg_attr(feature = "engine", serde(default))]
        expand: bool,
    },
    WithoutEnvVariable {
        name: String,
    },
    WithSecretVariable {
        name: String,
        secret: SecretDef,
    },
    WithWorkdir {
        path: String,
    },
    WithUser {
        name: String,
    },
    WithEntrypoint {
        args: Vec<String>,
    },
    WithDefaultArgs {
        args: Vec<String>,
    },
    WithLabel {
        name: String,
        value: String,
    },
    WithDirectory {
        path: String,
        directory: DirectoryDef,
        #[cfg_attr(feature = "engine", serde(default))]
        include: Vec<String>,
        #[cfg_attr(feature = "engine", serde(default))]
        exclude: Vec<String>,
        #[cfg_attr(feature = "engine", serde(default))]
        owner: Option<String>,
    },
    WithFile {
        path: String,
        file: FileDef,
        #[cfg_attr(feature = "engine", serde(default))]
        permissions: Option<u32>,
        #[cfg_attr(feature = "engine", serde(default))]
        owner: Option<String>,
    },
    WithNewFile {
        path: String,
        contents: String,
        #[cfg_attr(feature = "engine", serde(default))]
        permissions: Option<u32>,
        #[cfg_attr(feature = "engine", serde(default))]
        owner: Option<String>,
    },
    WithoutFile {
        path: String,
    },
    WithoutDirectory {
        path: String,
    },
    WithMountedDirectory {
        path: String,
        directory: DirectoryDef,
    },
    WithMountedFile {
        path: String,
        file: FileDef,
    },
    WithMountedCache {
        path: String,
        volume: String,
        #[cfg_attr(feature = "engine", serde(default))]
        sharing: Sharing,
    },
    WithMountedTemp {
        path: String,
    },
    WithMountedSecret {
        path: String,
        secret: SecretDef,
        #[cfg_attr(feature = "engine", serde(default))]
        mode: Option<u32>,
    },
    WithoutMount {
        path: String,
    },
    /// Replaces the container with the image in an OCI tarball.
    Import {
        file: FileDef,
    },
    WithExposedPort {
        port: u16,
        #[cfg_attr(feature = "engine", serde(default = "tcp"))]
        protocol: String,
    },
    WithRegistryAuth {
        address: String,
        username: String,
        secret: SecretDef,
    },
    /// Protocol 2: the service reachable as `alias` from the container's
    /// later `with_exec`s.
    WithServiceBinding {
        alias: String,
        service: ServiceDef,
    },
    /// Protocol 2: how a service of this container shows it is ready.
    /// `shell`: `args` are one command line for `/bin/sh -c` (Docker's
    /// `CMD-SHELL`), else argv (`CMD`).
    WithDockerHealthcheck {
        args: Vec<String>,
        #[cfg_attr(feature = "engine", serde(default))]
        shell: bool,
        #[cfg_attr(feature = "engine", serde(default))]
        interval_ms: Option<u64>,
        #[cfg_attr(feature = "engine", serde(default))]
        timeout_ms: Option<u64>,
        #[cfg_attr(feature = "engine", serde(default))]
        start_period_ms: Option<u64>,
        #[cfg_attr(feature = "engine", serde(default))]
        retries: Option<u32>,
    },
    /// Protocol 3: the container a module's function returns (a first op,
    /// like `from`).
    Module {
        call: ModuleCallDef,
    },
    /// Protocol 3, in a module: the caller's container given as an
    /// argument, by the handle the engine gave it (a first op).
    Value {
        handle: String,
    },
}

#[cfg(feature = "engine")]
fn tcp() -> String {
    "tcp".into()
}

impl ContainerOp {
    /// The op's name on the wire (`with_exec`).
    pub fn name(&self) -> &'static str {
        match self {
            ContainerOp::From { .. } => "from",
            ContainerOp::WithExec { .. } => "with_exec",
            ContainerOp::WithEnvVariable { .. } => "with_env_variable",
            ContainerOp::WithoutEnvVariable { .. } => "without_env_variable",
            ContainerOp::WithSecretVariable { .. } => "with_secret_variable",
            ContainerOp::WithWorkdir { .. } => "with_workdir",
            ContainerOp::WithUser { .. } => "with_user",
            ContainerOp::WithEntrypoint { .. } => "with_entrypoint",
            ContainerOp::WithDefaultArgs { .. } => "with_default_args",
            ContainerOp::WithLabel { .. } => "with_label",
            ContainerOp::WithDirectory { .. } => "with_directory",
            ContainerOp::WithFile { .. } => "with_file",
            ContainerOp::WithNewFile { .. } => "with_new_file",
            ContainerOp::WithoutFile { .. } => "without_file",
            ContainerOp::WithoutDirectory { .. } => "without_directory",
            ContainerOp::WithMountedDirectory { .. } => "with_mounted_directory",
            ContainerOp::WithMountedFile { .. } => "with_mounted_file",
            ContainerOp::WithMountedCache { .. } => "with_mounted_cache",
            ContainerOp::WithMountedTemp { .. } => "with_mounted_temp",
            ContainerOp::WithMountedSecret { .. } => "with_mounted_secret",
            ContainerOp::WithoutMount { .. } => "without_mount",
            ContainerOp::Import { .. } => "import",
            ContainerOp::WithExposedPort { .. } => "with_exposed_port",
            ContainerOp::WithRegistryAuth { .. } => "with_registry_auth",
            ContainerOp::WithServiceBinding { .. } => "with_service_binding",
            ContainerOp::WithDockerHealthcheck { .. } => "with_docker_healthcheck",
            ContainerOp::Module { .. } => "module",
            ContainerOp::Value { .. } => "value",
        }
    }
}

impl ToJson for ContainerOp {
    fn to_json(&self) -> Value {
        use ContainerOp::*;
        let op = self.name();
        match self {
            From { address } => tagged!("op" = op, address),
            WithExec {
                args,
                expect,
                stdin,
                use_entrypoint,
            } => tagged!("op" = op, args, expect, stdin, use_entrypoint),
            WithEnvVariable {
                name,
                value,
                expand,
            } => tagged!("op" = op, name, value, expand),
            WithoutEnvVariable { name } | WithUser { name } => tagged!("op" = op, name),
            WithSecretVariable { name, secret } => tagged!("op" = op, name, secret),
            WithWorkdir { path }
            | WithoutFile { path }
            | WithoutDirectory { path }
            | WithMountedTemp { path }
            | WithoutMount { path } => tagged!("op" = op, path),
            WithEntrypoint { args } | WithDefaultArgs { args } => tagged!("op" = op, args),
            WithLabel { name, value } => tagged!("op" = op, name, value),
            WithDirectory {
                path,
                directory,
                include,
                exclude,
                owner,
            } => tagged!("op" = op, path, directory, include, exclude, owner),
            WithFile {
                path,
                file,
                permissions,
                owner,
            } => tagged!("op" = op, path, file, permissions, owner),
            WithNewFile {
                path,
                contents,
                permissions,
                owner,
            } => tagged!("op" = op, path, contents, permissions, owner),
            WithMountedDirectory { path, directory } => tagged!("op" = op, path, directory),
            WithMountedFile { path, file } => tagged!("op" = op, path, file),
            WithMountedCache {
                path,
                volume,
                sharing,
            } => tagged!("op" = op, path, volume, sharing),
            WithMountedSecret { path, secret, mode } => {
                tagged!("op" = op, path, secret, mode)
            }
            Import { file } => tagged!("op" = op, file),
            WithExposedPort { port, protocol } => tagged!("op" = op, port, protocol),
            WithRegistryAuth {
                address,
                username,
                secret,
            } => tagged!("op" = op, address, username, secret),
            WithServiceBinding { alias, service } => tagged!("op" = op, alias, service),
            WithDockerHealthcheck {
                args,
                shell,
                interval_ms,
                timeout_ms,
                start_period_ms,
                retries,
            } => tagged!(
                "op" = op,
                args,
                shell,
                interval_ms,
                timeout_ms,
                start_period_ms,
                retries
            ),
            Module { call } => tagged!("op" = op, call),
            Value { handle } => tagged!("op" = op, handle),
        }
    }
}

/// How a published or exported image is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "engine",
    derive(Deserialize),
    serde(deny_unknown_fields, default)
)]
pub struct ImageFormatDef {
    pub compression: CompressionDef,
    pub media_types: MediaTypesDef,
    pub real_timestamps: bool,
}

impl ToJson for ImageFormatDef {
    fn to_json(&self) -> Value {
        let ImageFormatDef {
            compression,
            media_types,
            real_timestamps,
        } = self;
        tagged!(compression, media_types, real_timestamps)
    }
}

/// Compression of the layers rbuild makes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "engine",
    derive(Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum CompressionDef {
    #[default]
    Gzip,
    Zstd,
    Uncompressed,
}

impl CompressionDef {
    pub fn as_str(self) -> &'static str {
        match self {
            CompressionDef::Gzip => "gzip",
            CompressionDef::Zstd => "zstd",
            CompressionDef::Uncompressed => "uncompressed",
        }
    }
}

/// Media types of an image's manifest, config and layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "engine",
    derive(Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum MediaTypesDef {
    #[default]
    Oci,
    Docker,
}

impl MediaTypesDef {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaTypesDef::Oci => "oci",
            MediaTypesDef::Docker => "docker",
        }
    }
}

/// What a `with_exec` must end with to count as a result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "engine",
    derive(Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Expect {
    #[default]
    Success,
    Failure,
    Any,
}

impl Expect {
    pub fn accepts(self, exit_code: i64) -> bool {
        match self {
            Expect::Success => exit_code == 0,
            Expect::Failure => exit_code != 0,
            Expect::Any => true,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Expect::Success => "success",
            Expect::Failure => "failure",
            Expect::Any => "any",
        }
    }
}

/// How concurrent users share a cache volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "engine",
    derive(Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Sharing {
    /// Everyone uses the same directory at once.
    #[default]
    Shared,
    /// A concurrent user gets a directory of its own.
    Private,
    /// Users take turns.
    Locked,
}

impl Sharing {
    pub fn as_str(self) -> &'static str {
        match self {
            Sharing::Shared => "shared",
            Sharing::Private => "private",
            Sharing::Locked => "locked",
        }
    }
}

json_as_str!(CompressionDef, MediaTypesDef, Expect, Sharing);

/// A `Container` value: the operations that built it, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "engine", derive(Deserialize), serde(deny_unknown_fields))]
pub struct ContainerDef {
    pub ops: Vec<ContainerOp>,
    /// Where each op was called in the pipeline (`file:line`), when the SDK knows.
    #[cfg_attr(feature = "engine", serde(default))]
    pub at: Vec<Option<String>>,
}

impl ToJson for ContainerDef {
    fn to_json(&self) -> Value {
        let ContainerDef { ops, at } = self;
        tagged!(ops, at)
    }
}

/// Where a `Directory` starts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "engine",
    derive(Deserialize),
    serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)
)]
pub enum DirectorySource {
    /// `client.directory()`
    Empty,
    /// `client.host().directory(path, opts)`; `path` is absolute.
    Host {
        path: String,
        #[cfg_attr(feature = "engine", serde(default))]
        include: Vec<String>,
        #[cfg_attr(feature = "engine", serde(default))]
        exclude: Vec<String>,
        #[cfg_attr(feature = "engine", serde(default))]
        gitignore: bool,
    },
    /// `container.directory(path)`
    Container {
        container: ContainerDef,
        path: String,
    },
    /// Protocol 3: the directory a module's function returns.
    Module { call: ModuleCallDef },
    /// Protocol 3, in a module: the caller's directory given as an argument.
    Value { handle: String },
}

impl ToJson for DirectorySource {
    fn to_json(&self) -> Value {
        match self {
            DirectorySource::Empty => tagged!("source" = "empty"),
            DirectorySource::Host {
                path,
                include,
                exclude,
                gitignore,
            } => tagged!("source" = "host", path, include, exclude, gitignore),
            DirectorySource::Container { container, path } => {
                tagged!("source" = "container", container, path)
            }
            DirectorySource::Module { call } => tagged!("source" = "module", call),
            DirectorySource::Value { handle } => tagged!("source" = "value", handle),
        }
    }
}

/// One builder call on a `Directory`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "engine",
    derive(Deserialize),
    serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)
)]
pub enum DirectoryOp {
    Directory {
        path: String,
    },
    WithNewFile {
        path: String,
        contents: String,
        #[cfg_attr(feature = "engine", serde(default))]
        permissions: Option<u32>,
    },
    WithFile {
        path: String,
        file: FileDef,
        #[cfg_attr(feature = "engine", serde(default))]
        permissions: Option<u32>,
    },
    WithDirectory {
        path: String,
        directory: DirectoryDef,
        #[cfg_attr(feature = "engine", serde(default))]
        include: Vec<String>,
        #[cfg_attr(feature = "engine", serde(default))]
        exclude: Vec<String>,
    },
    WithoutFile {
        path: String,
    },
    WithoutDirectory {
        path: String,
    },
    Filter {
        #[cfg_attr(feature = "engine", serde(default))]
        include: Vec<String>,
        #[cfg_attr(feature = "engine", serde(default))]
        exclude: Vec<String>,
    },
    Diff {
        other: DirectoryDef,
    },
}

impl DirectoryOp {
    /// The op's name on the wire (`with_new_file`).
    pub fn name(&self) -> &'static str {
        match self {
            DirectoryOp::Directory { .. } => "directory",
            DirectoryOp::WithNewFile { .. } => "with_new_file",
            DirectoryOp::WithFile { .. } => "with_file",
            DirectoryOp::WithDirectory { .. } => "with_directory",
            DirectoryOp::WithoutFile { .. } => "without_file",
            DirectoryOp::WithoutDirectory { .. } => "without_directory",
            DirectoryOp::Filter { .. } => "filter",
            DirectoryOp::Diff { .. } => "diff",
        }
    }
}

impl ToJson for DirectoryOp {
    fn to_json(&self) -> Value {
        use DirectoryOp::*;
        let op = self.name();
        match self {
            Directory { path } | WithoutFile { path } | WithoutDirectory { path } => {
                tagged!("op" = op, path)
            }
            WithNewFile {
                path,
                contents,
                permissions,
            } => tagged!("op" = op, path, contents, permissions),
            WithFile {
                path,
                file,
                permissions,
            } => tagged!("op" = op, path, file, permissions),
            WithDirectory {
                path,
                directory,
                include,
                exclude,
            } => tagged!("op" = op, path, directory, include, exclude),
            Filter { include, exclude } => tagged!("op" = op, include, exclude),
            Diff { other } => tagged!("op" = op, other),
        }
    }
}

/// A `Directory` value: where it starts and the calls that changed it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "engine", derive(Deserialize), serde(deny_unknown_fields))]
pub struct DirectoryDef {
    pub source: DirectorySource,
    #[cfg_attr(feature = "engine", serde(default))]
    pub ops: Vec<DirectoryOp>,
}

impl ToJson for DirectoryDef {
    fn to_json(&self) -> Value {
        let DirectoryDef { source, ops } = self;
        tagged!(source, ops)
    }
}

/// A `File` value.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "engine",
    derive(Deserialize),
    serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)
)]
pub enum FileDef {
    /// `client.host().file(path)`; `path` is absolute.
    Host { path: String },
    /// `container.file(path)`
    Container {
        container: ContainerDef,
        path: String,
    },
    /// `directory.file(path)`
    Directory {
        directory: DirectoryDef,
        path: String,
    },
    /// `container.as_tarball()`: the container as an OCI image tarball.
    Tarball {
        container: ContainerDef,
        #[cfg_attr(feature = "engine", serde(default))]
        format: ImageFormatDef,
        #[cfg_attr(feature = "engine", serde(default))]
        name: Option<String>,
    },
    /// Protocol 3: the file a module's function returns.
    Module { call: ModuleCallDef },
    /// Protocol 3, in a module: the caller's file given as an argument.
    Value { handle: String },
}

impl ToJson for FileDef {
    fn to_json(&self) -> Value {
        match self {
            FileDef::Host { path } => tagged!("source" = "host", path),
            FileDef::Container { container, path } => {
                tagged!("source" = "container", container, path)
            }
            FileDef::Directory { directory, path } => {
                tagged!("source" = "directory", directory, path)
            }
            FileDef::Tarball {
                container,
                format,
                name,
            } => tagged!("source" = "tarball", container, format, name),
            FileDef::Module { call } => tagged!("source" = "module", call),
            FileDef::Value { handle } => tagged!("source" = "value", handle),
        }
    }
}

/// A `Secret` value: a name (what cache keys and messages show) and where
/// the plaintext comes from.
#[derive(Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "engine", derive(Deserialize), serde(deny_unknown_fields))]
pub struct SecretDef {
    pub name: String,
    /// `env:NAME`, `file:PATH` or `cmd:COMMAND`; absent for `set_secret`.
    #[cfg_attr(feature = "engine", serde(default))]
    pub uri: Option<String>,
    /// The plaintext, for `set_secret` only.
    #[cfg_attr(feature = "engine", serde(default))]
    pub plaintext: Option<String>,
}

/// Never the plaintext: a graph printed for debugging (or in a panic)
/// must not carry a `set_secret` value (invariant 4).
impl std::fmt::Debug for SecretDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretDef")
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("plaintext", &self.plaintext.as_ref().map(|_| "***"))
            .finish()
    }
}

impl ToJson for SecretDef {
    fn to_json(&self) -> Value {
        let SecretDef {
            name,
            uri,
            plaintext,
        } = self;
        tagged!(name, uri, plaintext)
    }
}

/// A `Service` value (protocol 2): what runs, and the hostname it is
/// reached by when `with_hostname` gave one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "engine", derive(Deserialize), serde(deny_unknown_fields))]
pub struct ServiceDef {
    pub source: ServiceSource,
    #[cfg_attr(feature = "engine", serde(default))]
    pub hostname: Option<String>,
}

impl ToJson for ServiceDef {
    fn to_json(&self) -> Value {
        let ServiceDef { source, hostname } = self;
        tagged!(source, hostname)
    }
}

/// Where a service comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "engine",
    derive(Deserialize),
    serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)
)]
pub enum ServiceSource {
    /// `container.as_service_opts(opts)`: `args` empty runs the
    /// entrypoint and default args.
    Container {
        container: ContainerDef,
        #[cfg_attr(feature = "engine", serde(default))]
        args: Vec<String>,
        #[cfg_attr(feature = "engine", serde(default))]
        use_entrypoint: bool,
        /// A regular expression: ready once a line of output matches.
        #[cfg_attr(feature = "engine", serde(default))]
        ready_log: Option<String>,
        #[cfg_attr(feature = "engine", serde(default))]
        ready_timeout_ms: Option<u64>,
        #[cfg_attr(feature = "engine", serde(default))]
        private: bool,
    },
    /// `host.service(ports)`: ports of the machine running rbuild.
    Host { ports: Vec<PortForwardDef> },
}

impl ToJson for ServiceSource {
    fn to_json(&self) -> Value {
        match self {
            ServiceSource::Container {
                container,
                args,
                use_entrypoint,
                ready_log,
                ready_timeout_ms,
                private,
            } => tagged!(
                "source" = "container",
                container,
                args,
                use_entrypoint,
                ready_log,
                ready_timeout_ms,
                private
            ),
            ServiceSource::Host { ports } => tagged!("source" = "host", ports),
        }
    }
}

/// A port forwarded to a service: `frontend` (default: `backend`) is
/// where it is reached, `backend` where the service listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "engine", derive(Deserialize), serde(deny_unknown_fields))]
pub struct PortForwardDef {
    #[cfg_attr(feature = "engine", serde(default))]
    pub frontend: Option<u16>,
    pub backend: u16,
}

impl ToJson for PortForwardDef {
    fn to_json(&self) -> Value {
        let PortForwardDef { frontend, backend } = self;
        tagged!(frontend, backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_definition_prints_without_its_plaintext() {
        let s = SecretDef {
            name: "token".into(),
            uri: None,
            plaintext: Some("hunter2-plaintext".into()),
        };
        let printed = format!("{s:?} {:?}", vec![s.clone()]);
        assert!(!printed.contains("hunter2-plaintext"), "{printed}");
        assert!(
            printed.contains("token") && printed.contains("***"),
            "{printed}"
        );
    }
}
