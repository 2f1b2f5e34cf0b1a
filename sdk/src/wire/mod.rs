//! The session protocol between a pipeline (this crate) and the rbuild
//! engine: one definition of every message, used by both ends. Pipelines do
//! not need this module; the SDK's builders and results speak it for them.
//!
//! What travels, and in which direction:
//!
//! - a [`Request`] per query, pipeline → engine: one JSON line on a fresh
//!   connection to the session socket (`RBUILD_SESSION`), carrying the
//!   session token (`RBUILD_SESSION_TOKEN`) and a [`Query`] whose values are
//!   the graph ([`ContainerDef`], [`DirectoryDef`], [`FileDef`], [`SecretDef`],
//!   [`ServiceDef`]:
//!   the chains of builder calls that made the values);
//! - a [`Response`] per request, engine → pipeline: one JSON line,
//!   `{"ok": <answer>}` or `{"error": {"message": "..."}}`;
//! - the [`Listing`] of a pipeline's functions, pipeline → engine: the last
//!   line of its standard output when it runs with `RBUILD_FUNCTIONS_LIST`
//!   set;
//! - the [`CallSpec`] of `rbuild call`, engine → pipeline: the
//!   `RBUILD_CALL` environment variable.
//!
//! # Versions
//!
//! Every request and listing carries the protocol version the SDK speaks
//! ([`PROTOCOL`]). An engine accepts [`OLDEST_PROTOCOL`]`..=`[`PROTOCOL`] of
//! the SDK it was built with and answers anything else with an error that
//! names both versions and what to upgrade (rbuild, or the pipeline's pinned
//! rbuild-sdk). A request without a version comes from an SDK older than
//! versioning, which spoke protocol 1. The `{"error": {"message"}}` answer
//! is the same in every version, so any SDK can show that error.
//!
//! | protocol | rbuild-sdk | what changed                                          |
//! |----------|------------|-------------------------------------------------------|
//! | 1        | 0.1        | the first (older 0.1 SDKs send no version)            |
//! | 2        | 0.1        | services: `with_service_binding`, `with_docker_healthcheck`, `service.*` queries |
//! | 3        | 0.1        | modules: `module` and `value` sources, `module.*` queries, a call's `values` and the `return` action; `container.stdout_bytes`/`stderr_bytes` |
//!
//! A change to any shape here (a new op, field or query, a different
//! default) is a new protocol version: bump [`PROTOCOL`], add a row above,
//! and raise [`OLDEST_PROTOCOL`] only when the engine stops reading the old
//! shapes.
//!
//! # Encoding
//!
//! The SDK side writes these types as `serde_json::Value`s built by plain
//! functions ([`ToJson`]), not derived or generic `Serialize` impls:
//! serde_derive would be compiled by every pipeline's first build, which it
//! otherwise does not need, and generic impls are code-generated there too. The engine reads them with
//! derived `Deserialize` impls (strict: unknown fields are refused), enabled
//! by this crate's `engine` feature. The engine's conformance test drives
//! every builder of the SDK and parses what it sends with the engine's own
//! parser, so the two cannot drift apart. Messages the engine writes
//! ([`Response`], [`CallSpec`]) are written and read by the code here on
//! both sides.

mod functions;
mod graph;
mod module;
mod request;

pub use functions::{Action, ArgDecl, ArgKind, CallSpec, FunctionDecl, Listing};
pub use graph::{
    CompressionDef, ContainerDef, ContainerOp, DirectoryDef, DirectoryOp, DirectorySource, Expect,
    FileDef, ImageFormatDef, MediaTypesDef, PortForwardDef, SecretDef, ServiceDef, ServiceSource,
    Sharing,
};
pub use module::{secret_handle, ModuleArgDef, ModuleCallDef, ReturnedDef, SECRET_HANDLE};
#[cfg(feature = "engine")]
pub use request::Header;
pub use request::{ErrorAnswer, Query, Request, Response};

/// The protocol version this SDK speaks.
pub const PROTOCOL: u32 = 3;

/// The oldest protocol version an engine built with this crate still reads.
pub const OLDEST_PROTOCOL: u32 = 1;

/// This crate's version, as requests and listings name it.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The session socket's path, set by `rbuild run` for the pipeline.
pub const SOCKET_ENV: &str = "RBUILD_SESSION";
/// The session's token, which every request must carry.
pub const TOKEN_ENV: &str = "RBUILD_SESSION_TOKEN";
/// Set (to anything) when the engine asks for the [`Listing`].
pub const LIST_ENV: &str = "RBUILD_FUNCTIONS_LIST";
/// The [`CallSpec`] of `rbuild call`, as JSON.
pub const CALL_ENV: &str = "RBUILD_CALL";

/// A wire type as the JSON it travels as. Written out rather than as
/// `Serialize` impls: a plain function per type is code-generated once,
/// where serde's generic impls were instantiated for the serializer and
/// doubled the SDK's share of a pipeline's first compile. Every wire type
/// still implements `Serialize` (through this), for the engine's side.
pub trait ToJson {
    fn to_json(&self) -> serde_json::Value;
}

/// An object of the given entries (the keys are the wire's names).
/// Inserted one by one: collecting would sort (and code-generate the sort)
/// in every crate that builds the SDK.
pub(crate) fn object(entries: Vec<(&'static str, serde_json::Value)>) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (k, v) in entries {
        map.insert(k.to_string(), v);
    }
    serde_json::Value::Object(map)
}

/// Writes a JSON object entry by entry: `tagged!("op" = "from", address)`
/// writes `{"op": "from", "address": <address>}`, each further entry under
/// the name of the binding that holds it, so a field's name on the wire is
/// its name in the type.
macro_rules! tagged {
    ($tag:literal = $name:expr $(, $field:ident)* $(,)?) => {
        $crate::wire::object(vec![
            ($tag, serde_json::Value::from($name)),
            $((stringify!($field), $crate::wire::ToJson::to_json($field)),)*
        ])
    };
    ($($field:ident),* $(,)?) => {
        $crate::wire::object(vec![
            $((stringify!($field), $crate::wire::ToJson::to_json($field)),)*
        ])
    };
}
pub(crate) use tagged;

/// A unit enum written as its name (`"gzip"`, `"locked"`).
macro_rules! json_as_str {
    ($($ty:ty),* $(,)?) => {$(
        impl $crate::wire::ToJson for $ty {
            fn to_json(&self) -> serde_json::Value {
                serde_json::Value::from(self.as_str())
            }
        }
    )*};
}
pub(crate) use json_as_str;

/// `Serialize` for wire types, through [`ToJson`]: one small generic
/// function each, instantiated only where a crate serializes that type.
macro_rules! serialize_via_json {
    ($($ty:ty),* $(,)?) => {$(
        impl serde_core::Serialize for $ty {
            fn serialize<S: serde_core::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serde_core::Serialize::serialize(&$crate::wire::ToJson::to_json(self), s)
            }
        }
    )*};
}

serialize_via_json!(
    ContainerOp,
    ContainerDef,
    DirectoryDef,
    DirectoryOp,
    DirectorySource,
    FileDef,
    SecretDef,
    ImageFormatDef,
    CompressionDef,
    MediaTypesDef,
    Expect,
    Sharing,
    ServiceDef,
    ServiceSource,
    PortForwardDef,
    Request,
    Query,
    Response,
    Listing,
    FunctionDecl,
    ArgDecl,
    ArgKind,
    CallSpec,
    Action,
    ModuleCallDef,
    ModuleArgDef,
    ReturnedDef,
);

impl ToJson for String {
    fn to_json(&self) -> serde_json::Value {
        serde_json::Value::from(self.as_str())
    }
}

impl ToJson for str {
    fn to_json(&self) -> serde_json::Value {
        serde_json::Value::from(self)
    }
}

impl ToJson for bool {
    fn to_json(&self) -> serde_json::Value {
        serde_json::Value::from(*self)
    }
}

impl ToJson for u16 {
    fn to_json(&self) -> serde_json::Value {
        serde_json::Value::from(*self)
    }
}

impl ToJson for u32 {
    fn to_json(&self) -> serde_json::Value {
        serde_json::Value::from(*self)
    }
}

impl ToJson for u64 {
    fn to_json(&self) -> serde_json::Value {
        serde_json::Value::from(*self)
    }
}

impl ToJson for serde_json::Value {
    fn to_json(&self) -> serde_json::Value {
        self.clone()
    }
}

impl<T: ToJson + ?Sized> ToJson for &T {
    fn to_json(&self) -> serde_json::Value {
        (**self).to_json()
    }
}

impl<T: ToJson> ToJson for Option<T> {
    fn to_json(&self) -> serde_json::Value {
        self.as_ref().map_or(serde_json::Value::Null, T::to_json)
    }
}

impl<T: ToJson> ToJson for Vec<T> {
    fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(self.iter().map(T::to_json).collect())
    }
}

impl ToJson for std::collections::BTreeMap<String, String> {
    fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (k, v) in self {
            map.insert(k.clone(), serde_json::Value::from(v.as_str()));
        }
        serde_json::Value::Object(map)
    }
}

/// Reads a JSON object field as a string (engine-written messages).
fn str_field<'a>(
    v: &'a serde_json::Value,
    key: &str,
    what: &str,
) -> Result<Option<&'a str>, String> {
    match v.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{what}: {key} is {other}, not text")),
    }
}
