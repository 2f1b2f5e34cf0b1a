//! The module's functions: what `rbuild functions examples/modules/rust`
//! lists and other pipelines call.

use rbuild_sdk::{self as rb, ArgKind};

#[tokio::main]
async fn main() -> rb::Result<()> {
    rb::Functions::new()
        .function(
            "build",
            "Builds a Cargo project in release mode, dependencies cached apart from sources",
        )
        .arg("source", ArgKind::Directory, "the project")
        .arg("bin", ArgKind::String, "the binary to install in /usr/local/bin")
        .returns(|client, args| async move {
            let source = args.directory("source")?;
            Ok(rust_module::build(&client, &source, &args.string("bin")?))
        })
        .function("test", "Runs a Cargo project's tests")
        .arg("source", ArgKind::Directory, "the project")
        .returns(|client, args| async move {
            Ok(rust_module::test(&client, &args.directory("source")?))
        })
        .serve()
        .await
}
