//! examples/rust-deps against fixtures/rust-project in the Debian Rust
//! image: dependencies are built once, a source edit rebuilds only the
//! project's own crate.

mod common;

use common::*;

#[test]
fn dependencies_stay_cached_when_a_source_line_changes() {
    let env = TestEnv::new("rustdeps");
    let project = env.rust_project();
    let pipeline = repo_root().join("examples/rust-deps");
    let run = || {
        env.run_trusting_host_ca(&pipeline, &[project.to_str().unwrap()])
            .ok()
    };

    let first = run();
    assert!(
        first
            .stdout
            .contains("run   | hello from a cached build (25 bytes"),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("test result: ok. 1 passed"),
        "{}",
        first.stdout
    );
    assert!(
        first
            .stderr
            .contains("exec cargo build --release --locked\n"),
        "{}",
        first.stderr
    );

    let second = run();
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(second.ran(), 0, "fully cached: {}", second.stderr);

    let main = project.join("src/main.rs");
    let src = std::fs::read_to_string(&main).unwrap();
    std::fs::write(
        &main,
        src.replace("hello from a cached build", "hello after one edit"),
    )
    .unwrap();
    let third = run();
    assert!(
        third
            .stderr
            .contains("exec cargo build --release --locked CACHED"),
        "the dependency step hits: {}",
        third.stderr
    );
    assert!(
        third.stdout.contains("build |    Compiling hello-deps"),
        "{}",
        third.stdout
    );
    assert!(
        !third.stdout.contains("Compiling itoa") && !third.stdout.contains("Compiling fnv"),
        "dependencies were not rebuilt: {}",
        third.stdout
    );
    assert!(
        third
            .stdout
            .contains("run   | hello after one edit (20 bytes"),
        "{}",
        third.stdout
    );
}
