//! The request a pipeline sends for each value it asks for, and the
//! engine's answer.

#[cfg(feature = "engine")]
use serde::Deserialize;
use serde_json::Value;

use super::graph::{
    ContainerDef, DirectoryDef, FileDef, ImageFormatDef, PortForwardDef, ServiceDef,
};
use super::module::{ModuleCallDef, ReturnedDef};
use super::{tagged, ToJson};

/// One query, with who asks and in which protocol version:
/// `{"protocol": 1, "token": "...", "sdk": "0.1.0", "query": {"kind": ...}}`.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "engine", derive(Deserialize))]
pub struct Request {
    /// The protocol version the SDK speaks; absent before versioning (1).
    #[cfg_attr(feature = "engine", serde(default = "first_protocol"))]
    pub protocol: u32,
    pub token: String,
    /// The SDK's crate version, for messages.
    #[cfg_attr(feature = "engine", serde(default))]
    pub sdk: String,
    pub query: Query,
}

/// What the engine reads of a request or a [`Listing`](super::Listing)
/// before it knows that it can read the rest: the protocol version, the
/// SDK's version and (a request's) token.
#[cfg(feature = "engine")]
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Header {
    #[serde(default = "first_protocol")]
    pub protocol: u32,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub sdk: String,
}

#[cfg(feature = "engine")]
pub(crate) fn first_protocol() -> u32 {
    1
}

impl ToJson for Request {
    fn to_json(&self) -> Value {
        let Request {
            protocol,
            token,
            sdk,
            query,
        } = self;
        tagged!(protocol, token, sdk, query)
    }
}

/// What a pipeline asks of a value; the comment on each says what the
/// `ok` answer holds.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(
    feature = "engine",
    derive(Deserialize),
    serde(tag = "kind", deny_unknown_fields)
)]
pub enum Query {
    /// Text: what the last `with_exec` wrote to standard output.
    #[cfg_attr(feature = "engine", serde(rename = "container.stdout"))]
    Stdout { container: ContainerDef },
    /// Text: what the last `with_exec` wrote to standard error.
    #[cfg_attr(feature = "engine", serde(rename = "container.stderr"))]
    Stderr { container: ContainerDef },
    /// Text: the lowercase hex of the last `with_exec`'s standard output,
    /// byte for byte (protocol 3).
    #[cfg_attr(feature = "engine", serde(rename = "container.stdout_bytes"))]
    StdoutBytes { container: ContainerDef },
    /// Text: the same of its standard error (protocol 3).
    #[cfg_attr(feature = "engine", serde(rename = "container.stderr_bytes"))]
    StderrBytes { container: ContainerDef },
    /// A number: the last `with_exec`'s exit code.
    #[cfg_attr(feature = "engine", serde(rename = "container.exit_code"))]
    ExitCode { container: ContainerDef },
    /// Null, once everything the container needs has run.
    #[cfg_attr(feature = "engine", serde(rename = "container.sync"))]
    Sync { container: ContainerDef },
    /// A number: the exit code of the interactive command.
    #[cfg_attr(feature = "engine", serde(rename = "container.terminal"))]
    Terminal {
        container: ContainerDef,
        /// Empty: the default shell.
        #[cfg_attr(feature = "engine", serde(default))]
        command: Vec<String>,
    },
    /// Text: the pushed reference with its digest.
    #[cfg_attr(feature = "engine", serde(rename = "container.publish"))]
    Publish {
        container: ContainerDef,
        address: String,
        #[cfg_attr(feature = "engine", serde(default))]
        format: ImageFormatDef,
    },
    /// Text: the path written (an OCI image tarball).
    #[cfg_attr(feature = "engine", serde(rename = "container.export"))]
    Export {
        container: ContainerDef,
        /// Absolute, on the host.
        path: String,
        /// The name `docker load` gives the image.
        #[cfg_attr(feature = "engine", serde(default))]
        name: Option<String>,
        #[cfg_attr(feature = "engine", serde(default))]
        format: ImageFormatDef,
    },
    /// A list of text: the sorted entry names (of `path` in it, if given).
    #[cfg_attr(feature = "engine", serde(rename = "directory.entries"))]
    Entries {
        directory: DirectoryDef,
        #[cfg_attr(feature = "engine", serde(default))]
        path: Option<String>,
    },
    /// A list of text: the sorted relative paths that match.
    #[cfg_attr(feature = "engine", serde(rename = "directory.glob"))]
    Glob {
        directory: DirectoryDef,
        pattern: String,
    },
    /// Text: `blake3:…` over the tree.
    #[cfg_attr(feature = "engine", serde(rename = "directory.digest"))]
    DirDigest { directory: DirectoryDef },
    /// Text: the host path written.
    #[cfg_attr(feature = "engine", serde(rename = "directory.export"))]
    DirExport {
        directory: DirectoryDef,
        /// Absolute, on the host.
        path: String,
    },
    /// Null, once the directory exists.
    #[cfg_attr(feature = "engine", serde(rename = "directory.sync"))]
    DirSync { directory: DirectoryDef },
    /// Text: the file's contents (invalid UTF-8 replaced).
    #[cfg_attr(feature = "engine", serde(rename = "file.contents"))]
    Contents { file: FileDef },
    /// A number: the size in bytes.
    #[cfg_attr(feature = "engine", serde(rename = "file.size"))]
    Size { file: FileDef },
    /// Text: the last path component.
    #[cfg_attr(feature = "engine", serde(rename = "file.name"))]
    Name { file: FileDef },
    /// Text: `blake3:…` of the contents.
    #[cfg_attr(feature = "engine", serde(rename = "file.digest"))]
    FileDigest { file: FileDef },
    /// Text: the host path written.
    #[cfg_attr(feature = "engine", serde(rename = "file.export"))]
    FileExport {
        file: FileDef,
        /// Absolute, on the host.
        path: String,
    },
    /// Null, once the file exists.
    #[cfg_attr(feature = "engine", serde(rename = "file.sync"))]
    FileSync { file: FileDef },
    /// Text: the hostname the service is reached by (protocol 2).
    #[cfg_attr(feature = "engine", serde(rename = "service.hostname"))]
    ServiceHostname { service: ServiceDef },
    /// Text: `host:port`, or `scheme://host:port` (protocol 2).
    #[cfg_attr(feature = "engine", serde(rename = "service.endpoint"))]
    ServiceEndpoint {
        service: ServiceDef,
        /// Absent: the service's first exposed port.
        #[cfg_attr(feature = "engine", serde(default))]
        port: Option<u16>,
        #[cfg_attr(feature = "engine", serde(default))]
        scheme: Option<String>,
    },
    /// Null, once the service is running and ready (protocol 2).
    #[cfg_attr(feature = "engine", serde(rename = "service.start"))]
    ServiceStart { service: ServiceDef },
    /// Null, once the service has stopped (protocol 2).
    #[cfg_attr(feature = "engine", serde(rename = "service.stop"))]
    ServiceStop { service: ServiceDef },
    /// Null, when the user stops the service, which runs with `ports`
    /// forwarded from the host until then (protocol 2).
    #[cfg_attr(feature = "engine", serde(rename = "service.up"))]
    ServiceUp {
        service: ServiceDef,
        #[cfg_attr(feature = "engine", serde(default))]
        ports: Vec<PortForwardDef>,
    },
    /// Text, a number or null: what a module's function returned, when it
    /// is not a value (protocol 3).
    #[cfg_attr(feature = "engine", serde(rename = "module.call"))]
    ModuleCall { call: ModuleCallDef },
    /// Null: a module hands back its function's result (protocol 3; only a
    /// module's session takes it).
    #[cfg_attr(feature = "engine", serde(rename = "module.return"))]
    ModuleReturn { value: ReturnedDef },
}

impl Query {
    /// The query's name on the wire (`container.stdout`).
    pub fn kind(&self) -> &'static str {
        match self {
            Query::Stdout { .. } => "container.stdout",
            Query::Stderr { .. } => "container.stderr",
            Query::StdoutBytes { .. } => "container.stdout_bytes",
            Query::StderrBytes { .. } => "container.stderr_bytes",
            Query::ExitCode { .. } => "container.exit_code",
            Query::Sync { .. } => "container.sync",
            Query::Terminal { .. } => "container.terminal",
            Query::Publish { .. } => "container.publish",
            Query::Export { .. } => "container.export",
            Query::Entries { .. } => "directory.entries",
            Query::Glob { .. } => "directory.glob",
            Query::DirDigest { .. } => "directory.digest",
            Query::DirExport { .. } => "directory.export",
            Query::DirSync { .. } => "directory.sync",
            Query::Contents { .. } => "file.contents",
            Query::Size { .. } => "file.size",
            Query::Name { .. } => "file.name",
            Query::FileDigest { .. } => "file.digest",
            Query::FileExport { .. } => "file.export",
            Query::FileSync { .. } => "file.sync",
            Query::ServiceHostname { .. } => "service.hostname",
            Query::ServiceEndpoint { .. } => "service.endpoint",
            Query::ServiceStart { .. } => "service.start",
            Query::ServiceStop { .. } => "service.stop",
            Query::ServiceUp { .. } => "service.up",
            Query::ModuleCall { .. } => "module.call",
            Query::ModuleReturn { .. } => "module.return",
        }
    }
}

impl ToJson for Query {
    fn to_json(&self) -> Value {
        let kind = self.kind();
        match self {
            Query::Stdout { container }
            | Query::Stderr { container }
            | Query::StdoutBytes { container }
            | Query::StderrBytes { container }
            | Query::ExitCode { container }
            | Query::Sync { container } => tagged!("kind" = kind, container),
            Query::Terminal { container, command } => {
                tagged!("kind" = kind, container, command)
            }
            Query::Publish {
                container,
                address,
                format,
            } => tagged!("kind" = kind, container, address, format),
            Query::Export {
                container,
                path,
                name,
                format,
            } => tagged!("kind" = kind, container, path, name, format),
            Query::Entries { directory, path } => tagged!("kind" = kind, directory, path),
            Query::Glob { directory, pattern } => tagged!("kind" = kind, directory, pattern),
            Query::DirDigest { directory } | Query::DirSync { directory } => {
                tagged!("kind" = kind, directory)
            }
            Query::DirExport { directory, path } => tagged!("kind" = kind, directory, path),
            Query::Contents { file }
            | Query::Size { file }
            | Query::Name { file }
            | Query::FileDigest { file }
            | Query::FileSync { file } => tagged!("kind" = kind, file),
            Query::FileExport { file, path } => tagged!("kind" = kind, file, path),
            Query::ServiceHostname { service }
            | Query::ServiceStart { service }
            | Query::ServiceStop { service } => tagged!("kind" = kind, service),
            Query::ServiceEndpoint {
                service,
                port,
                scheme,
            } => tagged!("kind" = kind, service, port, scheme),
            Query::ServiceUp { service, ports } => tagged!("kind" = kind, service, ports),
            Query::ModuleCall { call } => tagged!("kind" = kind, call),
            Query::ModuleReturn { value } => tagged!("kind" = kind, value),
        }
    }
}

/// The engine's answer: `{"ok": <answer>}` (what the [`Query`] asked for)
/// or `{"error": {"message": "..."}}`. This envelope is the same in every
/// protocol version.
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    Ok(Value),
    Error(ErrorAnswer),
}

/// Why the engine could not answer, written for the pipeline's user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorAnswer {
    pub message: String,
}

impl ToJson for Response {
    fn to_json(&self) -> Value {
        match self {
            Response::Ok(ok) => tagged!(ok),
            Response::Error(ErrorAnswer { message }) => {
                let error = &ErrorBody { message };
                tagged!(error)
            }
        }
    }
}

struct ErrorBody<'a> {
    message: &'a str,
}

impl ToJson for ErrorBody<'_> {
    fn to_json(&self) -> Value {
        let ErrorBody { message } = self;
        tagged!(message)
    }
}

impl Response {
    /// Reads an answer line; `Err` says what was wrong with it.
    pub fn from_json(line: &[u8]) -> Result<Response, String> {
        let mut v: Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        if let Some(error) = v.get("error") {
            let message = super::str_field(error, "message", "error")?
                .unwrap_or("unknown engine error")
                .to_string();
            return Ok(Response::Error(ErrorAnswer { message }));
        }
        match v.get_mut("ok") {
            Some(ok) => Ok(Response::Ok(ok.take())),
            None => Err(format!("neither ok nor error in {v}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_ok_or_an_error_with_a_message() {
        assert_eq!(
            Response::from_json(br#"{"ok": ["a"]}"#).unwrap(),
            Response::Ok(serde_json::json!(["a"]))
        );
        assert_eq!(
            Response::from_json(br#"{"error": {}}"#).unwrap(),
            Response::Error(ErrorAnswer {
                message: "unknown engine error".into()
            })
        );
        assert!(Response::from_json(br#"{"answer": 1}"#).is_err());
        assert!(Response::from_json(b"").is_err());
    }
}
