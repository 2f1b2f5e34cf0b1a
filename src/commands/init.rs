//! `rbuild init [DIR]`: a starter pipeline with two functions.

use std::path::Path;

use anyhow::{Context, Result, bail};

const STARTER: &str = r#"//! An rbuild pipeline. Try:
//!   rbuild functions
//!   rbuild call hello --name you
//!   rbuild call build --src . export --path ./out
//!   rbuild call build --src . terminal
//!
//! ```cargo
//! [package.metadata.rbuild]
//! api = "@API@"
//! ```

use rbuild_sdk::{self as rb, ArgKind};

/// The image steps start from: change it to one your registry has.
const IMAGE: &str = "127.0.0.1:5000/busybox:latest";

#[tokio::main]
async fn main() -> rb::Result<()> {
    rb::Functions::new()
        .function("hello", "Greets someone from a container")
        .arg_default("name", ArgKind::String, "who to greet", "world")
        .returns(|client, args| async move {
            let name = args.string("name")?;
            Ok(client.container().from(IMAGE).with_exec(["echo", "hello", &name]))
        })
        .function("build", "Copies the sources in and lists them (a stand-in for a real build)")
        .arg_default("src", ArgKind::Directory, "the project's sources", ".")
        .returns(|client, args| async move {
            let src = args.directory("src")?.filter(rb::DirectoryOpts {
                exclude: vec!["target/".into(), ".git/".into()],
                ..Default::default()
            });
            Ok(client
                .container()
                .from(IMAGE)
                .with_directory("/src", &src)
                .with_workdir("/src")
                .with_exec(["sh", "-c", "find . -type f | sort"]))
        })
        .serve()
        .await
}
"#;

pub fn init(dir: &Path) -> Result<i32> {
    let path = dir.join("ci/pipeline.rs");
    if path.exists() {
        bail!("{} exists already; not overwriting it", path.display());
    }
    std::fs::create_dir_all(path.parent().expect("has a parent"))
        .with_context(|| format!("create {}", dir.join("ci").display()))?;
    let starter = STARTER.replace("@API@", &crate::api::CURRENT.to_string());
    std::fs::write(&path, starter).with_context(|| format!("write {}", path.display()))?;
    super::out(format_args!(
        "created {}; try `rbuild functions` and `rbuild call hello`",
        path.display()
    ));
    Ok(0)
}
