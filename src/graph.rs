//! The pipeline graph as the SDK describes it: values (containers,
//! directories, files, secrets) built from chains of operations, sent over
//! the session as JSON. Pure data; evaluating it is the solver's job.

use serde::Deserialize;

/// One builder call on a `Container`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ContainerOp {
    From {
        address: String,
    },
    WithExec {
        args: Vec<String>,
        #[serde(default)]
        expect: Expect,
        #[serde(default)]
        stdin: Option<String>,
        #[serde(default)]
        use_entrypoint: bool,
    },
    WithEnvVariable {
        name: String,
        value: String,
        #[serde(default)]
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
        #[serde(default)]
        include: Vec<String>,
        #[serde(default)]
        exclude: Vec<String>,
        #[serde(default)]
        owner: Option<String>,
    },
    WithFile {
        path: String,
        file: FileDef,
        #[serde(default)]
        permissions: Option<u32>,
        #[serde(default)]
        owner: Option<String>,
    },
    WithNewFile {
        path: String,
        contents: String,
        #[serde(default)]
        permissions: Option<u32>,
        #[serde(default)]
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
        #[serde(default)]
        sharing: Sharing,
    },
    WithMountedTemp {
        path: String,
    },
    WithMountedSecret {
        path: String,
        secret: SecretDef,
        #[serde(default)]
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
        #[serde(default = "tcp")]
        protocol: String,
    },
    WithRegistryAuth {
        address: String,
        username: String,
        secret: SecretDef,
    },
}

fn tcp() -> String {
    "tcp".into()
}

/// How a published or exported image is written.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct ImageFormatDef {
    pub compression: CompressionDef,
    pub media_types: MediaTypesDef,
    pub real_timestamps: bool,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum CompressionDef {
    #[default]
    Gzip,
    Zstd,
    Uncompressed,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum MediaTypesDef {
    #[default]
    Oci,
    Docker,
}

impl ImageFormatDef {
    pub fn format(&self) -> rbuild_snapshotter::export::ImageFormat {
        use rbuild_snapshotter::export::{Compression, ImageFormat, MediaTypes};
        ImageFormat {
            compression: match self.compression {
                CompressionDef::Gzip => Compression::Gzip,
                CompressionDef::Zstd => Compression::Zstd,
                CompressionDef::Uncompressed => Compression::Uncompressed,
            },
            media_types: match self.media_types {
                MediaTypesDef::Oci => MediaTypes::Oci,
                MediaTypesDef::Docker => MediaTypes::Docker,
            },
            real_timestamps: self.real_timestamps,
        }
    }
}

/// What a `with_exec` must end with to count as a result.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
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
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
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

/// A `Container` value: the operations that built it, oldest first.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ContainerDef {
    pub ops: Vec<ContainerOp>,
    /// Where each op was called in the pipeline (`file:line`), when the SDK knows.
    #[serde(default)]
    pub at: Vec<Option<String>>,
}

/// Where a `Directory` starts.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum DirectorySource {
    /// `client.directory()`
    Empty,
    /// `client.host().directory(path, opts)`; `path` is absolute.
    Host {
        path: String,
        #[serde(default)]
        include: Vec<String>,
        #[serde(default)]
        exclude: Vec<String>,
        #[serde(default)]
        gitignore: bool,
    },
    /// `container.directory(path)`
    Container {
        container: ContainerDef,
        path: String,
    },
}

/// One builder call on a `Directory`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum DirectoryOp {
    Directory {
        path: String,
    },
    WithNewFile {
        path: String,
        contents: String,
        #[serde(default)]
        permissions: Option<u32>,
    },
    WithFile {
        path: String,
        file: FileDef,
        #[serde(default)]
        permissions: Option<u32>,
    },
    WithDirectory {
        path: String,
        directory: DirectoryDef,
        #[serde(default)]
        include: Vec<String>,
        #[serde(default)]
        exclude: Vec<String>,
    },
    WithoutFile {
        path: String,
    },
    WithoutDirectory {
        path: String,
    },
    Filter {
        #[serde(default)]
        include: Vec<String>,
        #[serde(default)]
        exclude: Vec<String>,
    },
    Diff {
        other: DirectoryDef,
    },
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DirectoryDef {
    pub source: DirectorySource,
    #[serde(default)]
    pub ops: Vec<DirectoryOp>,
}

/// A `File` value.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
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
        #[serde(default)]
        format: ImageFormatDef,
        #[serde(default)]
        name: Option<String>,
    },
}

/// A `Secret` value: a name (what cache keys and messages show) and where
/// the plaintext comes from.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct SecretDef {
    pub name: String,
    /// `env:NAME`, `file:PATH` or `cmd:COMMAND`; absent for `set_secret`.
    #[serde(default)]
    pub uri: Option<String>,
    /// The plaintext, for `set_secret` only.
    #[serde(default)]
    pub plaintext: Option<String>,
}

/// Quotes argv for display the way a shell would accept it back.
pub fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sdk_ops() {
        let def: ContainerDef = serde_json::from_value(serde_json::json!({"ops": [
            {"op": "from", "address": "127.0.0.1:5000/busybox:latest"},
            {"op": "with_env_variable", "name": "A", "value": "1"},
            {"op": "with_workdir", "path": "/src"},
            {"op": "with_directory", "path": "/src", "directory": {
                "source": {"source": "host", "path": "/tmp/x", "exclude": ["target/"]},
                "ops": [{"op": "with_new_file", "path": "a.txt", "contents": "hi"}]
            }},
            {"op": "with_mounted_cache", "path": "/cache", "volume": "v", "sharing": "locked"},
            {"op": "with_exec", "args": ["sh", "-c", "echo hi"], "expect": "any"},
        ]}))
        .unwrap();
        assert_eq!(def.ops.len(), 6);
        assert!(matches!(
            def.ops[5],
            ContainerOp::WithExec {
                expect: Expect::Any,
                ..
            }
        ));
        assert!(matches!(
            def.ops[4],
            ContainerOp::WithMountedCache {
                sharing: Sharing::Locked,
                ..
            }
        ));
    }

    #[test]
    fn unknown_ops_are_rejected() {
        let r: Result<ContainerDef, _> =
            serde_json::from_value(serde_json::json!({"ops": [{"op": "teleport"}]}));
        assert!(r.is_err());
    }

    #[test]
    fn expectations() {
        assert!(Expect::Success.accepts(0) && !Expect::Success.accepts(1));
        assert!(Expect::Failure.accepts(2) && !Expect::Failure.accepts(0));
        assert!(Expect::Any.accepts(0) && Expect::Any.accepts(9));
    }

    #[test]
    fn shell_words_quotes_what_needs_it() {
        let args: Vec<String> = ["sh", "-c", "echo 'hi' $X", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(shell_words(&args), r#"sh -c 'echo '\''hi'\'' $X' ''"#);
    }
}
