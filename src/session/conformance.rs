//! The protocol conformance test: every builder call and query of the SDK,
//! as the SDK writes it on the wire, read back by the engine's own parser
//! (and the same for function listings and calls). No containerd needed.
//!
//! The SDK writes with hand-written `Serialize` impls and the engine reads
//! with derived `Deserialize` impls, so this is where a shape of one side
//! that the other does not read fails. A new op, source, query or argument
//! kind fails to compile in the `variants!` lists below until it is added,
//! and then fails the test until a builder call here makes the SDK send it.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use rbuild_sdk::wire::{
    self, Action, ArgKind, CallSpec, ContainerDef, ContainerOp, DirectoryDef, DirectoryOp,
    DirectorySource, ErrorAnswer, Expect, FileDef, ModuleArgDef, ModuleCallDef, PortForwardDef,
    Query, Response, ReturnedDef, ServiceDef, ServiceSource, Sharing,
};
use rbuild_sdk::{
    self as rb, DirOpts, DirectoryOpts, EndpointOpts, ExecOpts, FileOpts, HealthcheckOpts,
    ImageLayerCompression, ImageMediaTypes, ImageOpts, PortForward, ReturnType, ServiceOpts,
};
use serde_json::{Value, json};

use super::read_request;

const TOKEN: &str = "conformance-token";

/// `(name of a value's variant, every variant's name)`; the match is made
/// from the list, so the list must name every variant to compile.
macro_rules! variants {
    ($ty:ident { $($v:ident),* $(,)? }) => {{
        fn name(x: &$ty) -> &'static str {
            match x {
                $( $ty::$v { .. } => stringify!($v), )*
            }
        }
        (name as fn(&$ty) -> &'static str, [$(stringify!($v)),*])
    }};
}

#[derive(Default)]
struct Seen {
    queries: BTreeSet<&'static str>,
    container_ops: BTreeSet<&'static str>,
    directory_ops: BTreeSet<&'static str>,
    sources: BTreeSet<&'static str>,
    files: BTreeSet<&'static str>,
    services: BTreeSet<&'static str>,
    expects: BTreeSet<&'static str>,
    sharings: BTreeSet<&'static str>,
    module_args: BTreeSet<&'static str>,
    /// The builder calls' recorded call sites.
    at: Vec<Option<String>>,
}

impl Seen {
    fn query(&mut self, q: &Query) {
        self.queries.insert(QUERY.0(q));
        match q {
            Query::Stdout { container }
            | Query::Stderr { container }
            | Query::StdoutBytes { container }
            | Query::StderrBytes { container }
            | Query::ExitCode { container }
            | Query::Sync { container }
            | Query::Terminal { container, .. }
            | Query::Publish { container, .. }
            | Query::Export { container, .. } => self.container(container),
            Query::Entries { directory, .. }
            | Query::Glob { directory, .. }
            | Query::DirDigest { directory }
            | Query::DirExport { directory, .. }
            | Query::DirSync { directory } => self.directory(directory),
            Query::Contents { file }
            | Query::Size { file }
            | Query::Name { file }
            | Query::FileDigest { file }
            | Query::FileExport { file, .. }
            | Query::FileSync { file } => self.file(file),
            Query::ServiceHostname { service }
            | Query::ServiceEndpoint { service, .. }
            | Query::ServiceStart { service }
            | Query::ServiceStop { service }
            | Query::ServiceUp { service, .. } => self.service(service),
            Query::ModuleCall { call } => self.module(call),
            Query::ModuleReturn { value } => match value {
                ReturnedDef::Container { container } => self.container(container),
                ReturnedDef::Directory { directory } => self.directory(directory),
                ReturnedDef::File { file } => self.file(file),
                ReturnedDef::Text { .. } | ReturnedDef::Nothing => {}
            },
        }
    }

    fn module(&mut self, call: &ModuleCallDef) {
        for arg in call.args.values() {
            self.module_args.insert(arg.kind());
            match arg {
                ModuleArgDef::Directory { directory } => self.directory(directory),
                ModuleArgDef::File { file } => self.file(file),
                ModuleArgDef::Container { container } => self.container(container),
                ModuleArgDef::Text { .. } | ModuleArgDef::Secret { .. } => {}
            }
        }
    }

    fn service(&mut self, s: &ServiceDef) {
        self.services.insert(SERVICE.0(&s.source));
        if let ServiceSource::Container { container, .. } = &s.source {
            self.container(container);
        }
    }

    fn container(&mut self, c: &ContainerDef) {
        self.at.extend(c.at.iter().cloned());
        for op in &c.ops {
            self.container_ops.insert(CONTAINER_OP.0(op));
            match op {
                ContainerOp::WithExec { expect, .. } => {
                    self.expects.insert(expect.as_str());
                }
                ContainerOp::WithMountedCache { sharing, .. } => {
                    self.sharings.insert(sharing.as_str());
                }
                ContainerOp::WithDirectory { directory, .. }
                | ContainerOp::WithMountedDirectory { directory, .. } => self.directory(directory),
                ContainerOp::WithFile { file, .. }
                | ContainerOp::WithMountedFile { file, .. }
                | ContainerOp::Import { file } => self.file(file),
                ContainerOp::WithServiceBinding { service, .. } => self.service(service),
                ContainerOp::Module { call } => self.module(call),
                _ => {}
            }
        }
    }

    fn directory(&mut self, d: &DirectoryDef) {
        self.sources.insert(SOURCE.0(&d.source));
        match &d.source {
            DirectorySource::Container { container, .. } => self.container(container),
            DirectorySource::Module { call } => self.module(call),
            _ => {}
        }
        for op in &d.ops {
            self.directory_ops.insert(DIRECTORY_OP.0(op));
            match op {
                DirectoryOp::WithFile { file, .. } => self.file(file),
                DirectoryOp::WithDirectory { directory, .. } => self.directory(directory),
                DirectoryOp::Diff { other } => self.directory(other),
                _ => {}
            }
        }
    }

    fn file(&mut self, f: &FileDef) {
        self.files.insert(FILE.0(f));
        match f {
            FileDef::Host { .. } | FileDef::Value { .. } => {}
            FileDef::Module { call } => self.module(call),
            FileDef::Container { container, .. } | FileDef::Tarball { container, .. } => {
                self.container(container)
            }
            FileDef::Directory { directory, .. } => self.directory(directory),
        }
    }
}

type Variants<T, const N: usize> = (fn(&T) -> &'static str, [&'static str; N]);

const QUERY: Variants<Query, 27> = variants!(Query {
    Stdout,
    Stderr,
    StdoutBytes,
    StderrBytes,
    ExitCode,
    Sync,
    Terminal,
    Publish,
    Export,
    Entries,
    Glob,
    DirDigest,
    DirExport,
    DirSync,
    Contents,
    Size,
    Name,
    FileDigest,
    FileExport,
    FileSync,
    ServiceHostname,
    ServiceEndpoint,
    ServiceStart,
    ServiceStop,
    ServiceUp,
    ModuleCall,
    ModuleReturn,
});
const CONTAINER_OP: Variants<ContainerOp, 28> = variants!(ContainerOp {
    From,
    WithExec,
    WithEnvVariable,
    WithoutEnvVariable,
    WithSecretVariable,
    WithWorkdir,
    WithUser,
    WithEntrypoint,
    WithDefaultArgs,
    WithLabel,
    WithDirectory,
    WithFile,
    WithNewFile,
    WithoutFile,
    WithoutDirectory,
    WithMountedDirectory,
    WithMountedFile,
    WithMountedCache,
    WithMountedTemp,
    WithMountedSecret,
    WithoutMount,
    Import,
    WithExposedPort,
    WithRegistryAuth,
    WithServiceBinding,
    WithDockerHealthcheck,
    Module,
    Value,
});
const SERVICE: Variants<ServiceSource, 2> = variants!(ServiceSource { Container, Host });
const DIRECTORY_OP: Variants<DirectoryOp, 8> = variants!(DirectoryOp {
    Directory,
    WithNewFile,
    WithFile,
    WithDirectory,
    WithoutFile,
    WithoutDirectory,
    Filter,
    Diff,
});
const SOURCE: Variants<DirectorySource, 5> = variants!(DirectorySource {
    Empty,
    Host,
    Container,
    Module,
    Value,
});
const FILE: Variants<FileDef, 6> = variants!(FileDef {
    Host,
    Container,
    Directory,
    Tarball,
    Module,
    Value,
});
const MODULE_ARG: Variants<ModuleArgDef, 5> = variants!(ModuleArgDef {
    Text,
    Directory,
    File,
    Container,
    Secret,
});
const ARG_KIND: Variants<ArgKind, 8> = variants!(ArgKind {
    String,
    Int,
    Float,
    Bool,
    Directory,
    File,
    Secret,
    Container,
});

fn set<const N: usize>(names: [&'static str; N]) -> BTreeSet<&'static str> {
    names.into_iter().collect()
}

/// Every builder call of the SDK, in values that every query then asks for.
async fn every_builder_and_query(client: &rb::Client) {
    let image = ImageOpts {
        media_types: ImageMediaTypes::Docker,
        compression: ImageLayerCompression::Zstd,
        real_timestamps: true,
        name: Some("demo:1".into()),
    };
    let token = client.secret("env:TOKEN");
    let password = client.set_secret("password", "hunter2");
    let cache = client.cache_volume("deps");
    let src = client.host().directory(
        "fixtures",
        DirOpts::default()
            .include(["**/*.rs"])
            .exclude(vec![String::from("target/")])
            .gitignore(true),
    );
    let note = client.host().file("README.md");
    let base = client.container().from("127.0.0.1:5000/busybox:latest");
    let dir_opts = || DirectoryOpts {
        include: vec!["a/".into()],
        exclude: vec!["b/".into()],
        owner: Some("1000:1000".into()),
    };
    let built = client
        .directory()
        .with_new_file("a.txt", "a")
        .with_new_file_opts("b.sh", "#!/bin/sh", Some(0o755))
        .with_file("note.md", &note)
        .with_directory("src", &src)
        .with_directory_opts("more", &src, dir_opts())
        .without_file("a.txt")
        .without_directory("gone")
        .filter(dir_opts())
        .diff(client.directory().directory("sub"))
        .directory("sub");
    let ctr = base
        .with_exec(["true"])
        .with_exec_opts(
            vec!["sh".to_string(), "-c".into(), "exit 3".into()],
            ExecOpts {
                expect: ReturnType::Any,
                stdin: Some("in".into()),
                use_entrypoint: true,
            },
        )
        .with_exec_opts(
            ["false"],
            ExecOpts {
                expect: ReturnType::Failure,
                ..ExecOpts::default()
            },
        )
        .with_env_variable("A", "1")
        .with_env_variable_opts("PATH", "$PATH:/x", true)
        .without_env_variable("A")
        .with_secret_variable("TOKEN", &token)
        .with_workdir("/src")
        .with_user("1000:1000")
        .with_entrypoint(["/bin/sh", "-c"])
        .with_default_args(&["echo", "hi"][..])
        .with_label("org.example", "yes")
        .with_directory("/src", &src)
        .with_directory_opts("/more", &built, dir_opts())
        .with_file("/note", &note)
        .with_file_opts(
            "/run.sh",
            base.file("/bin/sh"),
            FileOpts {
                permissions: Some(0o700),
                owner: Some("root".into()),
            },
        )
        .with_new_file("/a", "a")
        .with_new_file_opts(
            "/b",
            "b",
            FileOpts {
                permissions: Some(0o600),
                owner: None,
            },
        )
        .without_file("/a")
        .without_directory("/tmp")
        .with_mounted_directory("/m", base.directory("/etc"))
        .with_mounted_file("/mf", built.file("b.sh"))
        .with_mounted_cache("/cache", &cache)
        .with_mounted_cache_opts("/locked", &cache, Sharing::Locked)
        .with_mounted_cache_opts("/private", &cache, Sharing::Private)
        .with_mounted_temp("/scratch")
        .with_mounted_secret("/run/token", &token)
        .with_mounted_secret_opts("/run/password", &password, Some(0o440))
        .without_mount("/scratch")
        .with_exposed_port(8080)
        .with_exposed_port_opts(53, "udp")
        .with_registry_auth("127.0.0.1:5001", "user", &password);
    let imported = client
        .container()
        .import(base.as_tarball())
        .import(base.as_tarball_opts(image.clone()));
    let db = base
        .with_exposed_port(5432)
        .with_docker_healthcheck(["pg_isready"], HealthcheckOpts::default())
        .with_docker_healthcheck(
            ["pg_isready -U postgres"],
            HealthcheckOpts {
                shell: true,
                interval: Some(Duration::from_millis(500)),
                timeout: Some(Duration::from_secs(2)),
                start_period: Some(Duration::from_secs(1)),
                retries: Some(10),
            },
        )
        .as_service_opts(ServiceOpts {
            args: vec!["postgres".into()],
            use_entrypoint: true,
            ready_log: Some("ready to accept".into()),
            ready_timeout: Some(Duration::from_secs(30)),
            private: true,
        })
        .with_hostname("db");
    let tunnel = client.host().service(&[
        PortForward {
            frontend: Some(80),
            backend: 8080,
        },
        PortForward {
            frontend: None,
            backend: 9000,
        },
    ]);
    let ctr = ctr
        .with_service_binding("db", &db)
        .with_service_binding("web", base.as_service())
        .with_service_binding("host", &tunnel);
    // Module calls (protocol 3): the caller's side, and the module's.
    let call = client
        .module("/modules/rust")
        .call("build")
        .arg("name", "x")
        .arg("jobs", 2i64)
        .arg("release", true)
        .arg("source", &src)
        .arg("notes", &note)
        .arg("base", &base)
        .arg("token", &token);
    let from_module = call
        .container()
        .with_directory("/out", call.directory())
        .with_file("/out/notes", call.file());
    let args = rb::Args::with_handles(
        client,
        &[("d", "h1"), ("f", "h2"), ("c", "h3"), ("s", "h4")],
    );
    let given = args
        .container("c")
        .unwrap()
        .with_directory("/d", args.directory("d").unwrap())
        .with_file("/f", args.file("f").unwrap())
        .with_secret_variable("S", args.secret("s").unwrap());

    let _ = ctr.stdout().await;
    let _ = ctr.stderr().await;
    let _ = ctr.stdout_bytes().await;
    let _ = ctr.stderr_bytes().await;
    let _ = ctr.exit_code().await;
    let _ = ctr.sync().await;
    let _ = ctr.terminal().await;
    let _ = ctr.terminal_opts(["bash", "-l"]).await;
    let _ = ctr.publish("127.0.0.1:5000/out:1").await;
    let _ = imported
        .publish_opts("127.0.0.1:5000/out:2", image.clone())
        .await;
    let _ = ctr.export("out.tar").await;
    let _ = ctr.export_opts("/tmp/out.tar", image).await;
    let dir = ctr.directory("/src");
    let _ = dir.entries().await;
    let _ = dir.glob("**/*.rs").await;
    let _ = built.digest().await;
    let _ = built.export("out").await;
    let _ = src.sync().await;
    let file = dir.file("Cargo.toml");
    let _ = file.contents().await;
    let _ = file.size().await;
    let _ = note.name().await;
    let _ = ctr.file("/etc/hostname").digest().await;
    let _ = file.export("Cargo.toml.out").await;
    let _ = note.sync().await;
    let _ = db.hostname().await;
    let _ = db
        .endpoint(EndpointOpts {
            port: Some(5433),
            scheme: Some("postgres".into()),
        })
        .await;
    let _ = tunnel.start().await;
    let _ = from_module.sync().await;
    let _ = call.text().await;
    let _ = rb::hand_back(client, rb::Returned::Container(given)).await;
    let _ = db.stop().await;
    let _ = db
        .up(&[PortForward {
            frontend: Some(15432),
            backend: 5432,
        }])
        .await;
}

#[tokio::test]
async fn every_request_the_sdk_sends_is_read_by_the_engine_as_sent() {
    let (client, recorded) = rb::recording_client(TOKEN);
    every_builder_and_query(&client).await;
    let lines = recorded.take();
    assert_eq!(lines.len(), 31, "one request per query");

    let mut seen = Seen::default();
    for line in &lines {
        let sent: Value = serde_json::from_slice(line).unwrap();
        assert_eq!(sent["protocol"], json!(wire::PROTOCOL));
        assert_eq!(sent["sdk"], json!(wire::SDK_VERSION));
        let query =
            read_request(line, TOKEN).unwrap_or_else(|e| panic!("the engine refused {sent}: {e}"));
        // Read as sent: nothing dropped, renamed or defaulted on the way.
        assert_eq!(serde_json::to_value(&query).unwrap(), sent["query"]);
        seen.query(&query);
    }

    assert_eq!(seen.queries, set(QUERY.1), "queries the SDK sent");
    assert_eq!(seen.container_ops, set(CONTAINER_OP.1), "container ops");
    assert_eq!(seen.directory_ops, set(DIRECTORY_OP.1), "directory ops");
    assert_eq!(seen.sources, set(SOURCE.1), "directory sources");
    assert_eq!(seen.files, set(FILE.1), "file sources");
    assert_eq!(seen.services, set(SERVICE.1), "service sources");
    assert_eq!(MODULE_ARG.1.len(), 5);
    assert_eq!(
        seen.module_args,
        set(["text", "directory", "file", "container", "secret"]),
        "module arguments"
    );
    assert_eq!(seen.expects, set(["success", "failure", "any"]));
    assert_eq!(seen.sharings, set(["shared", "private", "locked"]));
    // Container ops say where the pipeline made them.
    assert!(!seen.at.is_empty());
    for at in &seen.at {
        let at = at.as_deref().unwrap_or_default();
        assert!(at.starts_with("src/session/conformance.rs:"), "{at}");
    }
}

#[tokio::test]
async fn what_the_sdk_sends_keeps_every_option() {
    let (client, recorded) = rb::recording_client(TOKEN);
    let _ = client
        .container()
        .from("busybox")
        .with_exec_opts(
            ["sh"],
            ExecOpts {
                expect: ReturnType::Any,
                stdin: Some("input".into()),
                use_entrypoint: true,
            },
        )
        .with_mounted_cache_opts("/cache", client.cache_volume("v"), Sharing::Locked)
        .publish_opts(
            "r/a:1",
            ImageOpts {
                media_types: ImageMediaTypes::Docker,
                compression: ImageLayerCompression::Uncompressed,
                real_timestamps: true,
                name: None,
            },
        )
        .await;
    let lines = recorded.take();
    let Query::Publish {
        container,
        address,
        format,
    } = read_request(&lines[0], TOKEN).unwrap()
    else {
        panic!("not a publish")
    };
    assert_eq!(address, "r/a:1");
    assert_eq!(
        format,
        wire::ImageFormatDef {
            compression: wire::CompressionDef::Uncompressed,
            media_types: wire::MediaTypesDef::Docker,
            real_timestamps: true,
        }
    );
    assert_eq!(
        container.ops,
        vec![
            ContainerOp::From {
                address: "busybox".into()
            },
            ContainerOp::WithExec {
                args: vec!["sh".into()],
                expect: Expect::Any,
                stdin: Some("input".into()),
                use_entrypoint: true,
            },
            ContainerOp::WithMountedCache {
                path: "/cache".into(),
                volume: "v".into(),
                sharing: Sharing::Locked,
            },
        ]
    );
}

#[tokio::test]
async fn options_of_files_directories_and_secrets_arrive() {
    let (client, recorded) = rb::recording_client(TOKEN);
    let secret = client.set_secret("pw", "hunter2");
    let src = client
        .host()
        .directory("/src", DirOpts::default().include(["a"]).exclude(["b"]));
    let ctr = client
        .container()
        .with_env_variable_opts("P", "$P:/x", true)
        .with_file_opts(
            "/f",
            client.host().file("/etc/hostname"),
            FileOpts {
                permissions: Some(0o700),
                owner: Some("root".into()),
            },
        )
        .with_new_file_opts(
            "/n",
            "n",
            FileOpts {
                permissions: Some(0o600),
                owner: Some("1:1".into()),
            },
        )
        .with_directory_opts(
            "/d",
            &src,
            DirectoryOpts {
                include: vec!["i".into()],
                exclude: vec!["e".into()],
                owner: Some("2".into()),
            },
        )
        .with_mounted_secret_opts("/s", &secret, Some(0o440))
        .with_exposed_port_opts(53, "udp");
    let _ = ctr
        .export_opts(
            "/out.tar",
            ImageOpts {
                name: Some("demo:1".into()),
                ..ImageOpts::default()
            },
        )
        .await;
    let Query::Export {
        container,
        path,
        name,
        format,
    } = read_request(&recorded.take()[0], TOKEN).unwrap()
    else {
        panic!("not an export")
    };
    assert_eq!(
        (path.as_str(), name.as_deref(), format),
        ("/out.tar", Some("demo:1"), wire::ImageFormatDef::default())
    );
    let host_dir = DirectoryDef {
        source: DirectorySource::Host {
            path: "/src".into(),
            include: vec!["a".into()],
            exclude: vec!["b".into()],
            gitignore: false,
        },
        ops: vec![],
    };
    assert_eq!(
        container.ops,
        vec![
            ContainerOp::WithEnvVariable {
                name: "P".into(),
                value: "$P:/x".into(),
                expand: true,
            },
            ContainerOp::WithFile {
                path: "/f".into(),
                file: FileDef::Host {
                    path: "/etc/hostname".into()
                },
                permissions: Some(0o700),
                owner: Some("root".into()),
            },
            ContainerOp::WithNewFile {
                path: "/n".into(),
                contents: "n".into(),
                permissions: Some(0o600),
                owner: Some("1:1".into()),
            },
            ContainerOp::WithDirectory {
                path: "/d".into(),
                directory: host_dir,
                include: vec!["i".into()],
                exclude: vec!["e".into()],
                owner: Some("2".into()),
            },
            ContainerOp::WithMountedSecret {
                path: "/s".into(),
                secret: wire::SecretDef {
                    name: "pw".into(),
                    uri: None,
                    plaintext: Some("hunter2".into()),
                },
                mode: Some(0o440),
            },
            ContainerOp::WithExposedPort {
                port: 53,
                protocol: "udp".into(),
            },
        ]
    );
}

#[test]
fn the_listing_the_sdk_prints_is_read_by_the_engine() {
    let kinds = [
        ArgKind::String,
        ArgKind::Int,
        ArgKind::Float,
        ArgKind::Bool,
        ArgKind::Directory,
        ArgKind::File,
        ArgKind::Secret,
        ArgKind::Container,
    ];
    let mut functions = rb::Functions::new()
        .function("none", "takes nothing")
        .returns(|_, _| async { Ok(()) });
    for kind in kinds {
        functions = functions
            .function(kind.as_str(), "one of each")
            .arg("required", kind, "must be given")
            .arg_default("optional", kind, "may be left out", "x")
            .returns(|_, _| async { Ok("done") });
    }
    functions = functions
        .function("declared", "a directory as declared")
        .arg_directory(
            "source",
            "the project",
            rb::DirArg::new()
                .default_path("/")
                .ignore(["target/", ".git/"])
                .gitignore(true),
        )
        .returns(|_, _| async { Ok(()) });
    let line = functions.listing_line();
    let printed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(printed["protocol"], json!(wire::PROTOCOL));
    let (protocol, read) =
        crate::functions::read_listing(Path::new("ci.rs"), &format!("noise\n{line}\n"))
            .unwrap_or_else(|e| panic!("the engine refused {line}: {e:#}"));
    assert_eq!(protocol, wire::PROTOCOL);
    assert_eq!(serde_json::to_value(&read).unwrap(), printed["functions"]);
    assert_eq!(read.len(), 10);
    let declared = &read[9].args[0];
    assert_eq!(declared.default_path.as_deref(), Some("/"));
    assert_eq!(declared.ignore, ["target/", ".git/"]);
    assert!(declared.gitignore);
    // An argument that declares none of them is written as before they existed.
    assert!(printed["functions"][1]["args"][0].get("ignore").is_none());
    let seen: BTreeSet<_> = read
        .iter()
        .flat_map(|f| &f.args)
        .map(|a| ARG_KIND.0(&a.kind))
        .collect();
    assert_eq!(seen, set(ARG_KIND.1));
    assert_eq!(read[1].args[1].default.as_deref(), Some("x"));
    assert_eq!(read[1].args[0].default, None);
}

#[test]
fn the_call_the_engine_writes_is_read_by_the_sdk() {
    let functions = [wire::FunctionDecl {
        name: "build".into(),
        doc: "builds".into(),
        args: vec![wire::ArgDecl {
            name: "src".into(),
            kind: ArgKind::Directory,
            doc: "the sources".into(),
            ..wire::ArgDecl::default()
        }],
    }];
    let lines = [
        "build --src .",
        "build --src=. stdout",
        "build export --path out.tar",
        "build export",
        "build publish --address r/a:1",
        "build terminal",
    ];
    let mut actions = BTreeSet::new();
    for words in lines {
        let words: Vec<String> = words.split_whitespace().map(String::from).collect();
        let line = crate::functions::parse_call(&words).unwrap();
        let spec =
            crate::functions::call_spec(&line, &functions, Path::new("ci.rs"), crate::api::CURRENT)
                .unwrap();
        let written = serde_json::to_string(&spec).unwrap();
        let read = CallSpec::from_json(&written).unwrap();
        assert_eq!(read, spec, "{written}");
        actions.insert(read.action.kind());
    }
    assert_eq!(actions, set(["print", "export", "publish", "terminal"]));
    // The SDK's defaults for what an engine leaves out.
    assert_eq!(
        CallSpec::from_json(r#"{"function": "f"}"#).unwrap(),
        CallSpec {
            function: "f".into(),
            args: Default::default(),
            values: Default::default(),
            action: Action::Print,
        }
    );
    // A module call: values by handle, and the result handed back.
    let spec = CallSpec {
        function: "build".into(),
        args: [("jobs".to_string(), "2".to_string())].into(),
        values: [("source".to_string(), "h1".to_string())].into(),
        action: Action::Return,
    };
    let written = serde_json::to_string(&spec).unwrap();
    assert_eq!(CallSpec::from_json(&written).unwrap(), spec, "{written}");
}

#[test]
fn the_answers_the_engine_writes_are_read_by_the_sdk() {
    for response in [
        Response::Ok(json!("text")),
        Response::Ok(json!(["a", "b"])),
        Response::Ok(json!(3)),
        Response::Ok(Value::Null),
        Response::Error(ErrorAnswer {
            message: "step failed".into(),
        }),
    ] {
        let written = serde_json::to_vec(&response).unwrap();
        assert_eq!(Response::from_json(&written).unwrap(), response);
    }
    assert_eq!(
        serde_json::to_value(Response::Error(ErrorAnswer {
            message: "m".into()
        }))
        .unwrap(),
        json!({"error": {"message": "m"}}),
        "the error envelope every SDK version reads"
    );
}

#[tokio::test]
async fn what_the_sdk_sends_for_services_keeps_every_option() {
    let (client, recorded) = rb::recording_client(TOKEN);
    let base = client.container().from("postgres:16");
    let db = base
        .with_docker_healthcheck(
            ["pg_isready", "-U", "postgres"],
            HealthcheckOpts {
                shell: false,
                interval: Some(Duration::from_millis(250)),
                timeout: None,
                start_period: Some(Duration::from_secs(3)),
                retries: Some(7),
            },
        )
        .as_service_opts(ServiceOpts {
            args: vec!["postgres".into(), "-c".into(), "fsync=off".into()],
            use_entrypoint: true,
            ready_log: Some("ready to accept connections".into()),
            ready_timeout: Some(Duration::from_secs(45)),
            private: true,
        })
        .with_hostname("pg");
    let _ = base
        .with_service_binding("db", &db)
        .with_exec(["psql", "-h", "db"])
        .sync()
        .await;
    let _ = db
        .endpoint(EndpointOpts {
            port: None,
            scheme: Some("postgres".into()),
        })
        .await;
    let _ = client
        .host()
        .service(&[PortForward {
            frontend: None,
            backend: 8080,
        }])
        .up(&[PortForward {
            frontend: Some(18080),
            backend: 8080,
        }])
        .await;
    let lines = recorded.take();
    let want_db = ServiceDef {
        source: ServiceSource::Container {
            container: ContainerDef {
                ops: vec![
                    ContainerOp::From {
                        address: "postgres:16".into(),
                    },
                    ContainerOp::WithDockerHealthcheck {
                        args: vec!["pg_isready".into(), "-U".into(), "postgres".into()],
                        shell: false,
                        interval_ms: Some(250),
                        timeout_ms: None,
                        start_period_ms: Some(3000),
                        retries: Some(7),
                    },
                ],
                at: vec![],
            },
            args: vec!["postgres".into(), "-c".into(), "fsync=off".into()],
            use_entrypoint: true,
            ready_log: Some("ready to accept connections".into()),
            ready_timeout_ms: Some(45_000),
            private: true,
        },
        hostname: Some("pg".into()),
    };
    // Call sites are checked elsewhere; compare the rest.
    fn without_at(mut s: ServiceDef) -> ServiceDef {
        if let ServiceSource::Container { container, .. } = &mut s.source {
            container.at.clear();
        }
        s
    }
    let Query::Sync { container } = read_request(&lines[0], TOKEN).unwrap() else {
        panic!("not a sync")
    };
    let ContainerOp::WithServiceBinding { alias, service } = &container.ops[1] else {
        panic!("not a binding: {:?}", container.ops[1])
    };
    assert_eq!(alias, "db");
    assert_eq!(without_at(service.clone()), want_db);
    let Query::ServiceEndpoint {
        service,
        port,
        scheme,
    } = read_request(&lines[1], TOKEN).unwrap()
    else {
        panic!("not an endpoint")
    };
    assert_eq!(without_at(service), want_db);
    assert_eq!((port, scheme.as_deref()), (None, Some("postgres")));
    assert_eq!(
        read_request(&lines[2], TOKEN).unwrap(),
        Query::ServiceUp {
            service: ServiceDef {
                source: ServiceSource::Host {
                    ports: vec![PortForwardDef {
                        frontend: None,
                        backend: 8080
                    }],
                },
                hostname: None,
            },
            ports: vec![PortForwardDef {
                frontend: Some(18080),
                backend: 8080
            }],
        }
    );
}
