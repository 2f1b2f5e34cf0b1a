//! Functions a pipeline exposes: the listing it prints for `rbuild
//! functions`, and the call `rbuild call` hands it.

use std::collections::BTreeMap;

#[cfg(feature = "engine")]
use serde::Deserialize;
use serde_json::Value;

use super::{json_as_str, str_field, tagged, ToJson};

/// What a pipeline prints (as its last line of output) when it runs with
/// `RBUILD_FUNCTIONS_LIST` set: `{"protocol": 1, "sdk": "0.1.0",
/// "functions": [...]}`, or `"functions": null` when it declares none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "engine", derive(Deserialize))]
pub struct Listing {
    /// The protocol version the SDK speaks; absent before versioning (1).
    #[cfg_attr(feature = "engine", serde(default = "super::request::first_protocol"))]
    pub protocol: u32,
    /// The SDK's crate version, for messages.
    #[cfg_attr(feature = "engine", serde(default))]
    pub sdk: String,
    #[cfg_attr(feature = "engine", serde(default))]
    pub functions: Option<Vec<FunctionDecl>>,
}

impl ToJson for Listing {
    fn to_json(&self) -> Value {
        let Listing {
            protocol,
            sdk,
            functions,
        } = self;
        tagged!(protocol, sdk, functions)
    }
}

/// One function: `rbuild functions` shows its name, doc and arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "engine", derive(Deserialize), serde(deny_unknown_fields))]
pub struct FunctionDecl {
    pub name: String,
    pub doc: String,
    pub args: Vec<ArgDecl>,
}

impl ToJson for FunctionDecl {
    fn to_json(&self) -> Value {
        let FunctionDecl { name, doc, args } = self;
        tagged!(name, doc, args)
    }
}

/// One argument of a function, given on the command line as `--name value`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "engine", derive(Deserialize), serde(deny_unknown_fields))]
pub struct ArgDecl {
    pub name: String,
    pub kind: ArgKind,
    pub doc: String,
    /// As it would be typed on the command line; `None`: required.
    pub default: Option<String>,
    /// A directory argument's default when it is not given (Dagger's
    /// `+defaultPath`): relative to the pipeline file's directory, or with
    /// a leading `/` to its context (the git repository holding it, else
    /// that directory). The engine makes it absolute.
    #[cfg_attr(feature = "engine", serde(default))]
    pub default_path: Option<String>,
    /// A directory argument's excluded paths (Dagger's `+ignore`), in
    /// `.gitignore` syntax: applied while the host is scanned, so what
    /// they match is never read.
    #[cfg_attr(feature = "engine", serde(default))]
    pub ignore: Vec<String>,
    /// A directory argument also honours the tree's `.gitignore` files.
    #[cfg_attr(feature = "engine", serde(default))]
    pub gitignore: bool,
}

impl ToJson for ArgDecl {
    fn to_json(&self) -> Value {
        let ArgDecl {
            name,
            kind,
            doc,
            default,
            default_path,
            ignore,
            gitignore,
        } = self;
        let mut v = tagged!(name, kind, doc, default);
        // Written only when declared, so that a listing without them reads
        // as it did before they existed.
        if let Value::Object(map) = &mut v {
            if let Some(p) = default_path {
                map.insert("default_path".into(), Value::from(p.as_str()));
            }
            if !ignore.is_empty() {
                map.insert("ignore".into(), ignore.to_json());
            }
            if *gitignore {
                map.insert("gitignore".into(), Value::from(true));
            }
        }
        v
    }
}

/// The type of a function argument.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "engine",
    derive(Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum ArgKind {
    #[default]
    String,
    Int,
    Float,
    Bool,
    /// A host directory path (relative to where rbuild was started).
    Directory,
    /// A host file path (relative to where rbuild was started).
    File,
    /// `env:NAME`, `file:PATH` or `cmd:COMMAND`.
    Secret,
    /// An image reference.
    Container,
}

impl ArgKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArgKind::String => "string",
            ArgKind::Int => "int",
            ArgKind::Float => "float",
            ArgKind::Bool => "bool",
            ArgKind::Directory => "directory",
            ArgKind::File => "file",
            ArgKind::Secret => "secret",
            ArgKind::Container => "container",
        }
    }
}

json_as_str!(ArgKind);

/// What `rbuild call` asks of the pipeline, in `RBUILD_CALL`:
/// `{"function": "build", "args": {"src": "/abs/path"}, "action": {"kind": "print"}}`.
/// Arguments are as typed on the command line (host paths made absolute);
/// the SDK converts them to the declared kinds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallSpec {
    pub function: String,
    pub args: BTreeMap<String, String>,
    /// Protocol 3, a module call: the arguments that are the caller's
    /// values (directories, files, containers, secrets), each by the
    /// handle the module's SDK builds on (`Value { handle }`).
    pub values: BTreeMap<String, String>,
    pub action: Action,
}

/// What to do with a function's result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Action {
    /// Print it: text as is, a container's stdout, a directory's entries,
    /// a file's contents.
    #[default]
    Print,
    /// Write it to a host path (absolute); a container as an image tarball.
    Export { path: Option<String> },
    /// Push a container to a registry address.
    Publish { address: Option<String> },
    /// Open a shell in a container.
    Terminal,
    /// Run a service until the user stops it, with ports forwarded from
    /// the host: `HOST:SERVICE` each (protocol 2).
    Up { ports: Vec<String> },
    /// Hand the result back to the engine (`module.return`): the function
    /// was called by another pipeline (protocol 3).
    Return,
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Print => "print",
            Action::Export { .. } => "export",
            Action::Publish { .. } => "publish",
            Action::Terminal => "terminal",
            Action::Up { .. } => "up",
            Action::Return => "return",
        }
    }
}

impl ToJson for CallSpec {
    fn to_json(&self) -> Value {
        let CallSpec {
            function,
            args,
            values,
            action,
        } = self;
        let mut v = tagged!(function, args, action);
        // Written only for a module call, so that other calls read as
        // they did before modules.
        if let (Value::Object(map), false) = (&mut v, values.is_empty()) {
            map.insert("values".into(), values.to_json());
        }
        v
    }
}

impl ToJson for Action {
    fn to_json(&self) -> Value {
        let kind = self.kind();
        match self {
            Action::Export { path: Some(path) } => tagged!("kind" = kind, path),
            Action::Publish {
                address: Some(address),
            } => tagged!("kind" = kind, address),
            Action::Up { ports } => tagged!("kind" = kind, ports),
            _ => tagged!("kind" = kind),
        }
    }
}

impl CallSpec {
    /// Reads `RBUILD_CALL`. As lenient as the SDK always was: what is
    /// missing is empty (and reported by the function lookup), an action
    /// without a kind prints.
    pub fn from_json(text: &str) -> Result<CallSpec, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let function = str_field(&v, "function", "call")?
            .unwrap_or_default()
            .to_string();
        // Text values only, or none at all (as reading it into a map did).
        let mut args = BTreeMap::new();
        if let Some(given) = v["args"].as_object() {
            for (name, value) in given {
                match value.as_str() {
                    Some(value) => args.insert(name.clone(), value.to_string()),
                    None => {
                        args.clear();
                        break;
                    }
                };
            }
        }
        let values = v["values"]
            .as_object()
            .map(|given| {
                given
                    .iter()
                    .filter_map(|(k, h)| Some((k.clone(), h.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let a = &v["action"];
        let action = match str_field(a, "kind", "action")?.unwrap_or("print") {
            "print" => Action::Print,
            "export" => Action::Export {
                path: str_field(a, "path", "action")?.map(String::from),
            },
            "publish" => Action::Publish {
                address: str_field(a, "address", "action")?.map(String::from),
            },
            "terminal" => Action::Terminal,
            "return" => Action::Return,
            "up" => Action::Up {
                ports: a["ports"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter_map(|p| p.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            other => return Err(format!("unknown action {other:?}")),
        };
        Ok(CallSpec {
            function,
            args,
            values,
            action,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_reads_leniently_as_the_sdk_always_did() {
        let call = CallSpec::from_json(
            r#"{"function": "f", "args": {"a": "1"}, "action": {"kind": "export", "path": "/o"}}"#,
        )
        .unwrap();
        assert_eq!(call.function, "f");
        assert_eq!(call.args["a"], "1");
        assert_eq!(
            call.action,
            Action::Export {
                path: Some("/o".into())
            }
        );
        assert_eq!(CallSpec::from_json("{}").unwrap(), CallSpec::default());
        assert!(CallSpec::from_json("not json").is_err());
        assert!(CallSpec::from_json(r#"{"action": {"kind": "dance"}}"#)
            .unwrap_err()
            .contains("dance"));
    }

    #[test]
    fn an_action_leaves_out_what_it_does_not_have() {
        let json = |a: Action| serde_json::to_value(&a).unwrap();
        assert_eq!(json(Action::Print), serde_json::json!({"kind": "print"}));
        assert_eq!(
            json(Action::Export { path: None }),
            serde_json::json!({"kind": "export"})
        );
        assert_eq!(
            json(Action::Publish {
                address: Some("r/a:1".into())
            }),
            serde_json::json!({"kind": "publish", "address": "r/a:1"})
        );
    }
}
