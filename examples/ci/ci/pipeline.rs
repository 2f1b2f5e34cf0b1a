//! The CI pipeline of examples/ci: `test` and `publish`, called by the
//! GitHub Actions workflow (.github/workflows/ci.yml) and by .gitlab-ci.yml
//! exactly as a developer calls them on a laptop:
//!
//! ```sh
//! rbuild call test --source=.
//! rbuild call publish --source=. --address=REGISTRY/app:TAG --username=USER --password=env:PASSWORD
//! ```
//!
//! ```cargo
//! [package.metadata.rbuild]
//! api = "0.3"
//! ```

use rbuild_sdk::{self as rb, ArgKind, Client, Container, Directory};

/// The image the steps run in (the test registry's busybox; a real project
/// names its own, pinned in rbuild.lock).
fn image() -> String {
    std::env::var("CI_EXAMPLE_IMAGE").unwrap_or_else(|_| "127.0.0.1:5000/busybox:latest".into())
}

/// The project built: its sources in /app, `build.sh` run.
fn built(client: &Client, source: &Directory) -> Container {
    client
        .container()
        .from(image())
        .with_workdir("/app")
        .with_directory("/app", source)
        .with_exec(["sh", "build.sh"])
}

#[tokio::main]
async fn main() -> rb::Result<()> {
    rb::Functions::new()
        .function("test", "Builds the project and runs its tests")
        .arg("source", ArgKind::Directory, "the project")
        .returns(|client, args| async move {
            Ok(built(&client, &args.directory("source")?).with_exec(["sh", "test.sh"]))
        })
        .function("publish", "Builds the project and publishes it as an image")
        .arg("source", ArgKind::Directory, "the project")
        .arg("address", ArgKind::String, "where to publish, REGISTRY/REPOSITORY:TAG")
        .arg("username", ArgKind::String, "the registry user")
        .arg("password", ArgKind::Secret, "the registry password (env:NAME, file:PATH)")
        .returns(|client, args| async move {
            let address = args.string("address")?;
            let registry = address.split('/').next().unwrap_or_default().to_string();
            let image = built(&client, &args.directory("source")?)
                .with_entrypoint(["/app/out/greet"])
                .with_registry_auth(registry, args.string("username")?, &args.secret("password")?);
            image.publish(address).await
        })
        .serve()
        .await
}
