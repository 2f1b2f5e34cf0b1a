//! Module calls (protocol 3): a pipeline calling another module's function
//! through the engine, and the module handing its result back.
//!
//! A call is a value source like an image: `ContainerOp::Module`,
//! `DirectorySource::Module` and `FileDef::Module` hold one, and the engine
//! evaluates it by running the module (its own process and session, under
//! its own declared API version). The caller's values given as arguments
//! reach the module as handles (`Value { handle }` nodes), never as copies:
//! the module builds on them without knowing what they are, and the engine
//! evaluates them under the caller's version when the module's result is.

use std::collections::BTreeMap;

#[cfg(feature = "engine")]
use serde::Deserialize;
use serde_json::Value;

use super::graph::{ContainerDef, DirectoryDef, FileDef, SecretDef};
use super::{tagged, ToJson};

/// `module(path).call(function).arg(name, value)…`: which module (an
/// absolute path: a `.rs` file or a crate directory), which function, and
/// its arguments by name.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "engine", derive(Deserialize), serde(deny_unknown_fields))]
pub struct ModuleCallDef {
    pub path: String,
    pub function: String,
    #[cfg_attr(feature = "engine", serde(default))]
    pub args: BTreeMap<String, ModuleArgDef>,
}

impl ToJson for ModuleCallDef {
    fn to_json(&self) -> Value {
        let ModuleCallDef {
            path,
            function,
            args,
        } = self;
        let mut map = serde_json::Map::new();
        for (k, v) in args {
            map.insert(k.clone(), v.to_json());
        }
        let args = &Value::Object(map);
        tagged!(path, function, args)
    }
}

/// One argument of a module call: text (strings, numbers and booleans as
/// they would be typed on the command line) or one of the caller's values.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "engine",
    derive(Deserialize),
    serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)
)]
pub enum ModuleArgDef {
    Text { value: String },
    Directory { directory: DirectoryDef },
    File { file: FileDef },
    Container { container: ContainerDef },
    Secret { secret: SecretDef },
}

impl ModuleArgDef {
    /// What kind of argument this is, as a function declares it.
    pub fn kind(&self) -> &'static str {
        match self {
            ModuleArgDef::Text { .. } => "text",
            ModuleArgDef::Directory { .. } => "directory",
            ModuleArgDef::File { .. } => "file",
            ModuleArgDef::Container { .. } => "container",
            ModuleArgDef::Secret { .. } => "secret",
        }
    }
}

impl ToJson for ModuleArgDef {
    fn to_json(&self) -> Value {
        let kind = self.kind();
        match self {
            ModuleArgDef::Text { value } => tagged!("kind" = kind, value),
            ModuleArgDef::Directory { directory } => tagged!("kind" = kind, directory),
            ModuleArgDef::File { file } => tagged!("kind" = kind, file),
            ModuleArgDef::Container { container } => tagged!("kind" = kind, container),
            ModuleArgDef::Secret { secret } => tagged!("kind" = kind, secret),
        }
    }
}

/// What a module's function handed back (`module.return`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "engine",
    derive(Deserialize),
    serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)
)]
pub enum ReturnedDef {
    Nothing,
    Text { text: String },
    Container { container: ContainerDef },
    Directory { directory: DirectoryDef },
    File { file: FileDef },
}

impl ReturnedDef {
    pub fn kind(&self) -> &'static str {
        match self {
            ReturnedDef::Nothing => "nothing",
            ReturnedDef::Text { .. } => "text",
            ReturnedDef::Container { .. } => "container",
            ReturnedDef::Directory { .. } => "directory",
            ReturnedDef::File { .. } => "file",
        }
    }
}

impl ToJson for ReturnedDef {
    fn to_json(&self) -> Value {
        let kind = self.kind();
        match self {
            ReturnedDef::Nothing => tagged!("kind" = kind),
            ReturnedDef::Text { text } => tagged!("kind" = kind, text),
            ReturnedDef::Container { container } => tagged!("kind" = kind, container),
            ReturnedDef::Directory { directory } => tagged!("kind" = kind, directory),
            ReturnedDef::File { file } => tagged!("kind" = kind, file),
        }
    }
}

/// The secret a module receives for a secret argument: its name is the
/// argument's, and its source a handle the engine resolves to the
/// caller's secret (the plaintext never reaches the module's process).
pub fn secret_handle(name: &str, handle: &str) -> SecretDef {
    SecretDef {
        name: name.into(),
        uri: Some(format!("{SECRET_HANDLE}{handle}")),
        plaintext: None,
    }
}

/// The source prefix of [`secret_handle`]s.
pub const SECRET_HANDLE: &str = "value:";
