//! Module calls as the solver sees them: a call is a source, evaluated by
//! running the module ([`crate::modules`]) once per run and content key,
//! and what it returns is evaluated under the module's own API version. A
//! caller's value given to a module is bound to a handle here; the
//! module's result reaches it through that handle, evaluated under the
//! caller's version.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::{SolveError, Solver, Worker};
use crate::api::Api;
use crate::graph::{ModuleArgDef, ModuleCallDef, ReturnedDef};

/// What a module call gave back, and the API version it is served under.
#[derive(Clone, Debug)]
pub struct Called {
    pub returned: ReturnedDef,
    pub api: Api,
    /// `module PATH: FUNCTION`, for messages.
    pub what: String,
}

impl Called {
    fn wrong(&self, wanted: &str) -> SolveError {
        SolveError::Invalid(format!(
            "{} returned {}, not {wanted}: use the call's {}() instead",
            self.what,
            article(self.returned.kind()),
            match self.returned.kind() {
                "nothing" | "text" => "text",
                k => k,
            }
        ))
    }
}

/// A kind of value or argument as a sentence names it: "a directory",
/// "an int", "text", "nothing".
pub(crate) fn article(kind: &str) -> String {
    match kind {
        "nothing" | "text" => kind.to_string(),
        k if k.starts_with(['a', 'e', 'i', 'o', 'u']) => format!("an {k}"),
        k => format!("a {k}"),
    }
}

/// The caller's values bound to handles in this run.
#[derive(Default)]
pub(super) struct Bound {
    map: Mutex<HashMap<String, (ModuleArgDef, Api)>>,
}

impl<W: Worker> Solver<W> {
    /// Runs (or finds) the call, from a caller declaring `caller`.
    pub(crate) async fn module_call(
        self: &Arc<Self>,
        call: &ModuleCallDef,
        caller: Api,
    ) -> Result<Called, SolveError> {
        let mut text = BTreeMap::new();
        let mut handles = BTreeMap::new();
        for (name, arg) in &call.args {
            match arg {
                ModuleArgDef::Text { value } => {
                    text.insert(name.clone(), value.clone());
                }
                value => {
                    let handle = self.bind(value, caller);
                    handles.insert(name.clone(), (value.kind(), handle));
                }
            }
        }
        let id = {
            let mut h = blake3::Hasher::new();
            h.update(serde_json::to_string(call).unwrap_or_default().as_bytes());
            h.update(caller.to_string().as_bytes());
            h.finalize().to_hex().to_string()
        };
        let solver = self.clone();
        let call = call.clone();
        self.module_calls
            .get_or_start(&self.tasks, id, move || async move {
                crate::modules::run(&solver, &call, text, handles).await
            })
            .await
    }

    /// Binds a caller's value to its handle. Two secrets of one name and
    /// source whose plaintexts differ (`set_secret`) get handles of their
    /// own in this run.
    fn bind(&self, value: &ModuleArgDef, caller: Api) -> String {
        let base = handle_of(value, caller);
        let mut map = self.bound.map.lock().expect("bound values lock poisoned");
        let mut handle = base.clone();
        for n in 2.. {
            match map.get(&handle) {
                Some((v, a)) if v == value && *a == caller => break,
                Some(_) => handle = format!("{base}-{n}"),
                None => {
                    map.insert(handle.clone(), (value.clone(), caller));
                    break;
                }
            }
        }
        handle
    }

    /// A caller's value given to a module, by its handle.
    pub(super) fn bound(&self, handle: &str) -> Result<(ModuleArgDef, Api), SolveError> {
        self.bound
            .map
            .lock()
            .expect("bound values lock poisoned")
            .get(handle)
            .cloned()
            .ok_or_else(|| {
                SolveError::Invalid(format!(
                    "no value is bound to handle {handle:?}: a value node only comes from a module's argument, in that module's call"
                ))
            })
    }

    /// The container a module returned, evaluated under its version.
    pub(super) async fn module_container(
        self: &Arc<Self>,
        call: &ModuleCallDef,
        caller: Api,
    ) -> Result<super::ContainerState, SolveError> {
        let called = self.module_call(call, caller).await?;
        match &called.returned {
            ReturnedDef::Container { container } => self.container(container, called.api).await,
            _ => Err(called.wrong("a container")),
        }
    }

    pub(super) async fn module_directory(
        self: &Arc<Self>,
        call: &ModuleCallDef,
        caller: Api,
    ) -> Result<super::DirValue, SolveError> {
        let called = self.module_call(call, caller).await?;
        match &called.returned {
            ReturnedDef::Directory { directory } => self.directory(directory, called.api).await,
            _ => Err(called.wrong("a directory")),
        }
    }

    pub(super) async fn module_file(
        self: &Arc<Self>,
        call: &ModuleCallDef,
        caller: Api,
    ) -> Result<super::FileValue, SolveError> {
        let called = self.module_call(call, caller).await?;
        match &called.returned {
            ReturnedDef::File { file } => Box::pin(self.file(file, called.api)).await,
            _ => Err(called.wrong("a file")),
        }
    }

    /// The text a module returned (null for nothing).
    pub async fn module_text(
        self: &Arc<Self>,
        call: &ModuleCallDef,
        caller: Api,
    ) -> Result<Option<String>, SolveError> {
        let called = self.module_call(call, caller).await?;
        match &called.returned {
            ReturnedDef::Text { text } => Ok(Some(text.clone())),
            ReturnedDef::Nothing => Ok(None),
            other => Err(SolveError::Invalid(format!(
                "{} returned a {}: use the call's {}() instead of text()",
                called.what,
                other.kind(),
                other.kind()
            ))),
        }
    }

    pub(super) async fn bound_container(
        self: &Arc<Self>,
        handle: &str,
    ) -> Result<super::ContainerState, SolveError> {
        match self.bound(handle)? {
            (ModuleArgDef::Container { container }, api) => self.container(&container, api).await,
            (other, _) => Err(mismatch(handle, "container", &other)),
        }
    }

    pub(super) async fn bound_directory(
        self: &Arc<Self>,
        handle: &str,
    ) -> Result<super::DirValue, SolveError> {
        match self.bound(handle)? {
            (ModuleArgDef::Directory { directory }, api) => self.directory(&directory, api).await,
            (other, _) => Err(mismatch(handle, "directory", &other)),
        }
    }

    pub(super) async fn bound_file(
        self: &Arc<Self>,
        handle: &str,
    ) -> Result<super::FileValue, SolveError> {
        match self.bound(handle)? {
            (ModuleArgDef::File { file }, api) => Box::pin(self.file(&file, api)).await,
            (other, _) => Err(mismatch(handle, "file", &other)),
        }
    }
}

fn mismatch(handle: &str, wanted: &str, got: &ModuleArgDef) -> SolveError {
    SolveError::Invalid(format!(
        "the argument bound to {handle:?} is a {}, not a {wanted}",
        got.kind()
    ))
}

/// A caller's value's handle: its definition and the caller's version, so
/// that the same value from the same caller is the same argument (and a
/// module call's content key can name it). A secret's is its name and
/// source, never its plaintext (which a hash would not keep secret).
fn handle_of(value: &ModuleArgDef, caller: Api) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"rbuild-module-value\0");
    h.update(caller.to_string().as_bytes());
    h.update(b"\0");
    let def = match value {
        ModuleArgDef::Secret { secret } => ModuleArgDef::Secret {
            secret: crate::graph::SecretDef {
                plaintext: None,
                ..secret.clone()
            },
        },
        other => other.clone(),
    };
    h.update(serde_json::to_string(&def).unwrap_or_default().as_bytes());
    h.finalize().to_hex()[..32].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::SecretDef;

    fn secret(plaintext: &str) -> ModuleArgDef {
        ModuleArgDef::Secret {
            secret: SecretDef {
                name: "token".into(),
                uri: None,
                plaintext: Some(plaintext.into()),
            },
        }
    }

    #[test]
    fn a_secrets_handle_does_not_depend_on_its_plaintext() {
        let api = crate::api::CURRENT;
        assert_eq!(
            handle_of(&secret("one"), api),
            handle_of(&secret("two"), api)
        );
        let text = |v: &str| ModuleArgDef::Text { value: v.into() };
        assert_ne!(handle_of(&text("a"), api), handle_of(&text("b"), api));
        assert_ne!(
            handle_of(&text("a"), api),
            handle_of(&text("a"), crate::api::OLDEST)
        );
    }
}
