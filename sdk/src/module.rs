//! Calling another module's functions: [`Client::module`], then
//! [`Module::call`] with typed arguments.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use crate::client::Client;
use crate::container::Container;
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::file::File;
use crate::ops::Ops;
use crate::secret::Secret;
use crate::session::{ask, Session};
use crate::wire::{ContainerOp, DirectorySource, FileDef, ModuleArgDef, ModuleCallDef, Query};

/// The environment variable in which the engine tells a pipeline where it
/// lives (its file's or crate's directory): relative module paths start
/// there.
pub const PIPELINE_DIR_ENV: &str = "RBUILD_PIPELINE_DIR";

/// Another pipeline crate or file that exposes functions
/// ([`Functions`](crate::Functions)). Its functions run in its own process,
/// under the API version *it* declares; what they return is an rbuild value
/// the caller builds on.
///
/// ```no_run
/// # async fn f(client: rbuild_sdk::Client) -> rbuild_sdk::Result<()> {
/// let source = client.host().directory(".", Default::default());
/// let tested = client
///     .module("../modules/rust")
///     .call("test")
///     .arg("source", &source)
///     .container();
/// println!("{}", tested.stdout().await?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Module {
    session: Arc<Session>,
    path: String,
}

impl Client {
    /// The module at `path`: a `.rs` file or a crate directory, relative to
    /// the calling pipeline's own directory (or absolute).
    pub fn module(&self, path: impl AsRef<Path>) -> Module {
        let path = path.as_ref();
        let base = std::env::var_os(PIPELINE_DIR_ENV)
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_default();
        let joined = base.join(path);
        let tidy: std::path::PathBuf = joined.components().collect();
        Module {
            session: self.session.clone(),
            path: tidy.display().to_string(),
        }
    }
}

impl Module {
    /// A call of the function `name` (as the module's `rbuild functions`
    /// lists it); give its arguments with [`ModuleCall::arg`].
    pub fn call(&self, name: impl Into<String>) -> ModuleCall {
        ModuleCall {
            session: self.session.clone(),
            def: ModuleCallDef {
                path: self.path.clone(),
                function: name.into(),
                args: BTreeMap::new(),
            },
        }
    }
}

/// A function call on a module, lazy like every value: nothing runs until
/// what it returns is used.
#[derive(Clone)]
pub struct ModuleCall {
    session: Arc<Session>,
    def: ModuleCallDef,
}

/// A value a module's function takes: text, numbers and booleans, or one
/// of the caller's directories, files, containers or secrets (passed as
/// values, not copied through the host).
pub struct ModuleArg(ModuleArgDef);

impl ModuleCall {
    /// Gives the argument `name`.
    pub fn arg(&self, name: impl Into<String>, value: impl Into<ModuleArg>) -> ModuleCall {
        let mut def = self.def.clone();
        def.args.insert(name.into(), value.into().0);
        ModuleCall {
            session: self.session.clone(),
            def,
        }
    }

    /// The container the function returns.
    #[track_caller]
    pub fn container(&self) -> Container {
        Container {
            session: self.session.clone(),
            ops: Ops::default(),
        }
        .with(ContainerOp::Module {
            call: self.def.clone(),
        })
    }

    /// The directory the function returns.
    pub fn directory(&self) -> Directory {
        Directory {
            session: self.session.clone(),
            source: DirectorySource::Module {
                call: self.def.clone(),
            },
            ops: Ops::default(),
        }
    }

    /// The file the function returns.
    pub fn file(&self) -> File {
        File {
            session: self.session.clone(),
            def: FileDef::Module {
                call: self.def.clone(),
            },
        }
    }

    /// The text the function returns (runs it now).
    pub fn text(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        let answer = ask::<serde_json::Value>(
            &self.session,
            Query::ModuleCall {
                call: self.def.clone(),
            },
        );
        let function = self.def.function.clone();
        async move {
            match answer.await? {
                serde_json::Value::String(s) => Ok(s),
                serde_json::Value::Null => Ok(String::new()),
                other => Err(Error::new(format!(
                    "module function {function} answered {other}, not text"
                ))),
            }
        }
    }

    /// The number the function returns (its text, parsed).
    pub fn number(&self) -> impl Future<Output = Result<f64>> + Send + 'static {
        let text = self.text();
        let function = self.def.function.clone();
        async move {
            let t = text.await?;
            t.trim().parse().map_err(|_| {
                Error::new(format!(
                    "module function {function} returned {t:?}, not a number"
                ))
            })
        }
    }
}

impl From<&str> for ModuleArg {
    fn from(s: &str) -> Self {
        ModuleArg(ModuleArgDef::Text { value: s.into() })
    }
}
impl From<String> for ModuleArg {
    fn from(value: String) -> Self {
        ModuleArg(ModuleArgDef::Text { value })
    }
}
macro_rules! text_arg {
    ($($ty:ty),*) => {$(
        impl From<$ty> for ModuleArg {
            fn from(v: $ty) -> Self {
                ModuleArg(ModuleArgDef::Text { value: v.to_string() })
            }
        }
    )*};
}
text_arg!(i64, i32, u32, u64, f64, bool);

impl From<&Directory> for ModuleArg {
    fn from(d: &Directory) -> Self {
        ModuleArg(ModuleArgDef::Directory { directory: d.def() })
    }
}
impl From<&File> for ModuleArg {
    fn from(f: &File) -> Self {
        ModuleArg(ModuleArgDef::File {
            file: f.def.clone(),
        })
    }
}
impl From<&Container> for ModuleArg {
    fn from(c: &Container) -> Self {
        ModuleArg(ModuleArgDef::Container { container: c.def() })
    }
}
impl From<&Secret> for ModuleArg {
    fn from(s: &Secret) -> Self {
        ModuleArg(ModuleArgDef::Secret {
            secret: s.def.clone(),
        })
    }
}
