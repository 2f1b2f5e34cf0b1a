//! examples/modules: a pipeline calling the reusable Rust module beside it
//! on fixtures/rust-project, in the Debian Rust image. The module's calls
//! are remembered (a second run starts no module process), and a source
//! edit rebuilds the project's crate but not its dependencies.

mod common;

use common::*;

#[test]
fn the_rust_module_builds_and_tests_a_project_for_the_pipeline_that_calls_it() {
    let env = TestEnv::new("example-modules");
    let project = env.rust_project();
    let pipeline = repo_root().join("examples/modules/pipeline.rs");
    let run = || {
        env.run_trusting_host_ca(&pipeline, &[project.to_str().unwrap()])
            .ok()
    };
    let module = repo_root().join("examples/modules/rust");
    let module_ran = |out: &Outcome, f: &str| {
        out.stderr
            .contains(&format!("module {}: {f} (API 0.2)", module.display()))
    };

    let first = run();
    assert!(
        first
            .stdout
            .contains("run   | hello from a cached build (25 bytes"),
        "{}\n{}",
        first.stdout,
        first.stderr
    );
    assert!(
        first.stdout.contains("test result: ok. 1 passed"),
        "{}",
        first.stdout
    );
    assert!(module_ran(&first, "build") && module_ran(&first, "test"));

    let second = run();
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(second.ran(), 0, "fully cached: {}", second.stderr);
    assert!(
        !module_ran(&second, "build") && !module_ran(&second, "test"),
        "an unchanged call starts no module process: {}",
        second.stderr
    );

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
        third
            .stdout
            .contains("run   | hello after one edit (20 bytes"),
        "{}",
        third.stdout
    );
    // The call's arguments are the same values (a host directory by its
    // path): the module is not asked again, the edit is seen all the same.
    assert!(!module_ran(&third, "build"), "{}", third.stderr);
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}
