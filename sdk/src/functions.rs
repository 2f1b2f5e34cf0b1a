//! Functions a pipeline exposes to `rbuild functions` and `rbuild call`:
//! declaring them, answering the listing, and running the one called.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use crate::client::{connect, Client};
use crate::container::Container;
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::file::File;
use crate::options::DirOpts;
use crate::secret::Secret;
use crate::service::{EndpointOpts, Service};
use crate::wire::{self, Action, ArgDecl, CallSpec, FunctionDecl, Listing};

pub use crate::wire::ArgKind;

/// Prints the listing `rbuild functions` reads (`None`: no functions).
pub(crate) fn print_listing(functions: Option<Vec<FunctionDecl>>) {
    println!("{}", listing_line(functions));
}

fn listing_line(functions: Option<Vec<FunctionDecl>>) -> String {
    let listing = Listing {
        protocol: wire::PROTOCOL,
        sdk: wire::SDK_VERSION.into(),
        functions,
    };
    serde_json::to_string(&listing).expect("a listing encodes as JSON")
}

type FunctionBody = Box<
    dyn Fn(Client, Args) -> Pin<Box<dyn Future<Output = Result<Returned>> + Send>> + Send + Sync,
>;

struct FunctionDef {
    decl: FunctionDecl,
    body: FunctionBody,
}

/// What a function returns; `rbuild call` can print it, export it, publish
/// it or open a terminal in it (and run a service: `rbuild call FN up`).
pub enum Returned {
    Nothing,
    Text(String),
    Container(Container),
    Directory(Directory),
    File(File),
    /// Printed as its endpoint (or hostname, when it exposes no port).
    Service(Service),
}

impl From<String> for Returned {
    fn from(s: String) -> Self {
        Returned::Text(s)
    }
}
impl From<&str> for Returned {
    fn from(s: &str) -> Self {
        Returned::Text(s.to_string())
    }
}
impl From<()> for Returned {
    fn from(_: ()) -> Self {
        Returned::Nothing
    }
}
impl From<Container> for Returned {
    fn from(c: Container) -> Self {
        Returned::Container(c)
    }
}
impl From<Directory> for Returned {
    fn from(d: Directory) -> Self {
        Returned::Directory(d)
    }
}
impl From<File> for Returned {
    fn from(f: File) -> Self {
        Returned::File(f)
    }
}
impl From<Service> for Returned {
    fn from(s: Service) -> Self {
        Returned::Service(s)
    }
}

/// What a module's function sends back for `r`: for the engine's protocol
/// conformance test.
#[doc(hidden)]
pub async fn hand_back(client: &Client, r: Returned) -> Result<()> {
    give_back(&client.session, r).await
}

/// Hands a module function's result to the engine, for the pipeline that
/// called it.
async fn give_back(session: &std::sync::Arc<crate::session::Session>, r: Returned) -> Result<()> {
    use wire::ReturnedDef;
    let value = match r {
        Returned::Nothing => ReturnedDef::Nothing,
        Returned::Text(text) => ReturnedDef::Text { text },
        Returned::Container(c) => ReturnedDef::Container { container: c.def() },
        Returned::Directory(d) => ReturnedDef::Directory { directory: d.def() },
        Returned::File(f) => ReturnedDef::File { file: f.def },
        Returned::Service(_) => {
            return Err(Error::new(
                "a module function cannot return a service yet: return the container and call as_service on it in the caller",
            ))
        }
    };
    crate::session::ask::<serde_json::Value>(session, wire::Query::ModuleReturn { value })
        .await
        .map(|_| ())
}

/// How a function's directory argument is taken from the host (Dagger's
/// `+defaultPath` and `+ignore`); see [`FunctionBuilder::arg_directory`].
#[derive(Clone, Debug, Default)]
pub struct DirArg {
    default_path: Option<String>,
    ignore: Vec<String>,
    gitignore: bool,
}

impl DirArg {
    pub fn new() -> DirArg {
        DirArg::default()
    }

    /// Used when the argument is not given: relative to the pipeline
    /// file's directory, or, with a leading `/`, to its context (the git
    /// repository holding the pipeline, else the pipeline's directory):
    /// `"/"` is the whole repository.
    pub fn default_path(mut self, path: &str) -> DirArg {
        self.default_path = Some(path.into());
        self
    }

    /// Paths never read, in `.gitignore` syntax (`target/` is a directory
    /// named target at any depth, `/dist` only at the top).
    pub fn ignore<I, S>(mut self, patterns: I) -> DirArg
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.ignore = patterns
            .into_iter()
            .map(|p| p.as_ref().to_string())
            .collect();
        self
    }

    /// Also leave out what the tree's `.gitignore` files ignore.
    pub fn gitignore(mut self, respect: bool) -> DirArg {
        self.gitignore = respect;
        self
    }
}

/// The arguments a function was called with, converted to their types.
pub struct Args {
    client: Client,
    values: HashMap<String, String>,
    /// How each directory argument is scanned (its declared ignores).
    dirs: HashMap<String, DirOpts>,
    /// A module call's arguments that are the caller's values, by handle.
    handles: HashMap<String, String>,
}

impl Args {
    /// The arguments a module's function would get for `handles` (name,
    /// handle): for the engine's protocol conformance test.
    #[doc(hidden)]
    pub fn with_handles(client: &Client, handles: &[(&str, &str)]) -> Args {
        Args {
            client: client.clone(),
            values: HashMap::new(),
            dirs: HashMap::new(),
            handles: handles
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn raw(&self, name: &str) -> Result<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| Error::new(format!("missing argument --{name}")))
    }

    fn parse<T: std::str::FromStr>(&self, name: &str, what: &str) -> Result<T> {
        let v = self.raw(name)?;
        v.parse()
            .map_err(|_| Error::new(format!("argument --{name}: {v:?} is not {what}")))
    }

    pub fn string(&self, name: &str) -> Result<String> {
        self.raw(name).map(String::from)
    }
    pub fn int(&self, name: &str) -> Result<i64> {
        self.parse(name, "an integer")
    }
    pub fn float(&self, name: &str) -> Result<f64> {
        self.parse(name, "a number")
    }
    pub fn bool(&self, name: &str) -> Result<bool> {
        self.parse(name, "true or false")
    }
    /// A host directory: everything in it but what the argument's
    /// declaration ignores ([`FunctionBuilder::arg_directory`]).
    pub fn directory(&self, name: &str) -> Result<Directory> {
        if let Some(handle) = self.handles.get(name) {
            return Ok(Directory {
                session: self.client.session.clone(),
                source: wire::DirectorySource::Value {
                    handle: handle.clone(),
                },
                ops: Default::default(),
            });
        }
        let opts = self.dirs.get(name).cloned().unwrap_or_default();
        Ok(self.client.host().directory(self.raw(name)?, opts))
    }
    pub fn file(&self, name: &str) -> Result<File> {
        if let Some(handle) = self.handles.get(name) {
            return Ok(File {
                session: self.client.session.clone(),
                def: wire::FileDef::Value {
                    handle: handle.clone(),
                },
            });
        }
        Ok(self.client.host().file(self.raw(name)?))
    }
    pub fn secret(&self, name: &str) -> Result<Secret> {
        if let Some(handle) = self.handles.get(name) {
            return Ok(Secret {
                def: wire::secret_handle(name, handle),
            });
        }
        Ok(self.client.secret(self.raw(name)?))
    }
    /// A container started from the image reference given (or, in a
    /// module call, the caller's container).
    #[track_caller]
    pub fn container(&self, name: &str) -> Result<Container> {
        if let Some(handle) = self.handles.get(name) {
            return Ok(self.client.container().with(wire::ContainerOp::Value {
                handle: handle.clone(),
            }));
        }
        Ok(self.client.container().from(self.raw(name)?))
    }
}

/// Functions a pipeline exposes: `rbuild functions` lists them, `rbuild
/// call FN --arg value …` calls one.
///
/// ```no_run
/// use rbuild_sdk as rb;
///
/// #[tokio::main]
/// async fn main() -> rb::Result<()> {
///     rb::Functions::new()
///         .function("hello", "Says hello from a container")
///         .arg("name", rb::ArgKind::String, "who to greet")
///         .returns(|client, args| async move {
///             let name = args.string("name")?;
///             Ok(client
///                 .container()
///                 .from("127.0.0.1:5000/busybox:latest")
///                 .with_exec(["echo", "hello", &name]))
///         })
///         .serve()
///         .await
/// }
/// ```
#[derive(Default)]
pub struct Functions {
    functions: Vec<FunctionDef>,
}

/// A function being declared; finish it with [`FunctionBuilder::returns`].
pub struct FunctionBuilder {
    functions: Functions,
    decl: FunctionDecl,
}

impl FunctionBuilder {
    /// A required argument.
    pub fn arg(mut self, name: &str, kind: ArgKind, doc: &str) -> Self {
        self.decl.args.push(ArgDecl {
            name: name.into(),
            kind,
            doc: doc.into(),
            ..ArgDecl::default()
        });
        self
    }

    /// An optional argument with a default (as it would be typed on the command line).
    pub fn arg_default(mut self, name: &str, kind: ArgKind, doc: &str, default: &str) -> Self {
        self.decl.args.push(ArgDecl {
            name: name.into(),
            kind,
            doc: doc.into(),
            default: Some(default.into()),
            ..ArgDecl::default()
        });
        self
    }

    /// A directory argument taken from the host as `how` declares: what it
    /// ignores is never read, and without a default path it is required.
    /// `rbuild functions` shows both.
    ///
    /// ```no_run
    /// # use rbuild_sdk as rb;
    /// # fn f(b: rb::FunctionBuilder) -> rb::FunctionBuilder {
    /// b.arg_directory(
    ///     "source",
    ///     "the project",
    ///     rb::DirArg::new().default_path("/").ignore(["target/", ".git/"]),
    /// )
    /// # }
    /// ```
    pub fn arg_directory(mut self, name: &str, doc: &str, how: DirArg) -> Self {
        self.decl.args.push(ArgDecl {
            name: name.into(),
            kind: ArgKind::Directory,
            doc: doc.into(),
            default: None,
            default_path: how.default_path,
            ignore: how.ignore,
            gitignore: how.gitignore,
        });
        self
    }

    /// The function's body.
    pub fn returns<F, Fut, R>(mut self, body: F) -> Functions
    where
        F: Fn(Client, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: Into<Returned>,
    {
        self.functions.functions.push(FunctionDef {
            decl: self.decl,
            body: Box::new(move |client, args| {
                let fut = body(client, args);
                Box::pin(async move { fut.await.map(Into::into) })
            }),
        });
        self.functions
    }
}

impl Functions {
    pub fn new() -> Functions {
        Functions::default()
    }

    /// Declares a function (its doc is what `rbuild functions` shows).
    pub fn function(self, name: &str, doc: &str) -> FunctionBuilder {
        FunctionBuilder {
            functions: self,
            decl: FunctionDecl {
                name: name.into(),
                doc: doc.into(),
                args: Vec::new(),
            },
        }
    }

    /// The line `serve` prints for `rbuild functions`.
    #[doc(hidden)]
    pub fn listing_line(&self) -> String {
        listing_line(Some(
            self.functions.iter().map(|f| f.decl.clone()).collect(),
        ))
    }

    /// Answers `rbuild functions` and `rbuild call`; under plain `rbuild
    /// run`, lists the functions.
    pub async fn serve(self) -> Result<()> {
        if std::env::var_os(wire::LIST_ENV).is_some() {
            println!("{}", self.listing_line());
            return Ok(());
        }
        let Ok(call) = std::env::var(wire::CALL_ENV) else {
            eprintln!("this pipeline exposes functions; call one with `rbuild call <pipeline> <function> [--arg value]...`:");
            for f in &self.functions {
                eprintln!("  {:<20} {}", f.decl.name, f.decl.doc);
            }
            return Ok(());
        };
        let call = CallSpec::from_json(&call)
            .map_err(|e| Error::new(format!("bad {}: {e}", wire::CALL_ENV)))?;
        let name = call.function.as_str();
        let f = self
            .functions
            .iter()
            .find(|f| f.decl.name == name)
            .ok_or_else(|| {
                Error::new(format!(
                    "no function {name:?}; this pipeline has: {}",
                    self.functions
                        .iter()
                        .map(|f| f.decl.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let decl = &f.decl;
        let mut values = HashMap::new();
        for a in &decl.args {
            if call.values.contains_key(&a.name) {
                continue;
            }
            match call.args.get(&a.name).or(a.default.as_ref()) {
                Some(v) => {
                    values.insert(a.name.clone(), v.clone());
                }
                None => {
                    return Err(Error::new(format!(
                        "{}: missing argument --{} ({}: {})",
                        decl.name,
                        a.name,
                        a.kind.as_str(),
                        a.doc
                    )))
                }
            }
        }
        if let Some(extra) = call
            .args
            .keys()
            .chain(call.values.keys())
            .find(|k| !decl.args.iter().any(|a| &a.name == *k))
        {
            return Err(Error::new(format!(
                "{}: unknown argument --{extra}",
                decl.name
            )));
        }
        let dirs = decl
            .args
            .iter()
            .filter(|a| a.kind == ArgKind::Directory)
            .map(|a| {
                let opts = DirOpts::default().exclude(&a.ignore).gitignore(a.gitignore);
                (a.name.clone(), opts)
            })
            .collect();
        let client = connect().await?;
        let args = Args {
            client: client.clone(),
            values,
            dirs,
            handles: call.values.clone().into_iter().collect(),
        };
        let session = client.session.clone();
        let returned = (f.body)(client, args).await?;
        if call.action == Action::Return {
            return give_back(&session, returned).await;
        }
        act(returned, &call.action).await
    }
}

/// What `rbuild call` asked to do with a function's result.
async fn act(returned: Returned, action: &Action) -> Result<()> {
    match (action, returned) {
        (Action::Print, Returned::Nothing) => Ok(()),
        (Action::Print, Returned::Text(t)) => {
            println!("{t}");
            Ok(())
        }
        (Action::Print, Returned::Container(c)) => {
            print!("{}", c.stdout().await?);
            Ok(())
        }
        (Action::Print, Returned::Directory(d)) => {
            for e in d.entries().await? {
                println!("{e}");
            }
            Ok(())
        }
        (Action::Print, Returned::File(f)) => {
            print!("{}", f.contents().await?);
            Ok(())
        }
        (Action::Print, Returned::Service(s)) => {
            let shown = match s.endpoint(EndpointOpts::default()).await {
                Ok(endpoint) => endpoint,
                Err(_) => s.hostname().await?,
            };
            println!("{shown}");
            Ok(())
        }
        (Action::Export { path }, r) => {
            let path = path
                .as_deref()
                .ok_or_else(|| Error::new("export needs --path"))?;
            let written = match r {
                Returned::Container(c) => c.export(path).await?,
                Returned::Directory(d) => d.export(path).await?,
                Returned::File(f) => f.export(path).await?,
                _ => {
                    return Err(Error::new(
                        "only a container, directory or file can be exported",
                    ))
                }
            };
            println!("{written}");
            Ok(())
        }
        (Action::Publish { address }, Returned::Container(c)) => {
            let address = address
                .as_deref()
                .ok_or_else(|| Error::new("publish needs --address"))?;
            println!("{}", c.publish(address).await?);
            Ok(())
        }
        (Action::Terminal, Returned::Container(c)) => {
            c.terminal().await?;
            Ok(())
        }
        (Action::Up { ports }, Returned::Service(s)) => {
            let mut forwards = Vec::new();
            for p in ports {
                let parsed = p
                    .split_once(':')
                    .and_then(|(h, s)| Some((h.parse().ok()?, s.parse().ok()?)));
                let Some((frontend, backend)) = parsed else {
                    return Err(Error::new(format!(
                        "--ports {p}: expected HOST_PORT:SERVICE_PORT, such as 8080:80"
                    )));
                };
                forwards.push(crate::PortForward {
                    frontend: Some(frontend),
                    backend,
                });
            }
            s.up(&forwards).await
        }
        (Action::Up { .. }, _) => Err(Error::new(
            "up takes a service: return one (Container::as_service) from the function",
        )),
        (action, _) => Err(Error::new(format!(
            "cannot {} this result: publish and terminal take a container",
            action.kind()
        ))),
    }
}
