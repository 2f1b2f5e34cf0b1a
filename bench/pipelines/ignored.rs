//! Benchmark pipeline: a function whose `Directory` argument ignores the
//! project's `target/`, as Dagger's `+ignore=["target/"]` does.
//!
//! `bench/run.sh` calls it as `rbuild call bench/pipelines/ignored.rs count
//! --source PROJECT` on a generated project whose `target/` holds 200 MB.
//! The declared ignore applies while the host is scanned, so nothing under
//! `target/` is listed or read, and a change there changes no key: the
//! unchanged and the target-changed calls both hit the copy and the step.
//! Prints the number of files seen in the container.

use rbuild_sdk as rb;

const IMAGE: &str = "127.0.0.1:5000/busybox:latest";

#[tokio::main]
async fn main() -> rb::Result<()> {
    rb::Functions::new()
        .function("count", "Counts the project's files, without its target/")
        .arg_directory(
            "source",
            "the project",
            rb::DirArg::new().ignore(["target/"]),
        )
        .returns(|client, args| async move {
            Ok(client
                .container()
                .from(IMAGE)
                .with_directory("/src", &args.directory("source")?)
                .with_exec(["sh", "-c", "find /src -type f | wc -l"]))
        })
        .serve()
        .await
}
