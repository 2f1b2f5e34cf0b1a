//! Everyday behaviours a new user relies on (issue 15), on real
//! containerd: secrets that read alike from every source, and a missing
//! secret reported before anything is built.

mod common;

use std::path::PathBuf;

use common::*;

/// fixtures/pipelines/friction.rs declaring `api`, in the test's directory.
fn declaring(env: &TestEnv, api: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("fixtures/pipelines/friction.rs")).unwrap();
    let path = env.dir.path().join(format!("friction-{api}.rs"));
    std::fs::write(
        &path,
        text.replace("//! api = \"0.3\"", &format!("//! api = \"{api}\"")),
    )
    .unwrap();
    path
}

fn length(out: &Outcome) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("length: "))
        .unwrap_or_else(|| panic!("no length in {}\n{}", out.stdout, out.stderr))
        .to_string()
}

#[test]
fn from_api_0_3_every_secret_source_drops_one_trailing_newline() {
    let env = TestEnv::new("secret-newline");
    // A token written with `echo`: five bytes and a newline.
    let file = env.dir.path().join("token");
    std::fs::write(&file, "t0k3n\n").unwrap();
    let file = format!("file:{}", file.display());
    let env_uri = "env:RBUILD_TEST_TOKEN";
    let run = |api: &str, uri: &str| {
        let out = env
            .run_command(&declaring(&env, api), &["secret-length", uri])
            .env("RBUILD_TEST_TOKEN", "t0k3n\n")
            .output()
            .unwrap();
        length(&Outcome::from(out).ok())
    };
    for uri in [file.as_str(), env_uri, "cmd:echo t0k3n"] {
        assert_eq!(run("0.3", uri), "5", "{uri} under 0.3");
    }
    // Under 0.2, as before: only cmd: drops it.
    assert_eq!(run("0.2", &file), "6");
    assert_eq!(run("0.2", env_uri), "6");
    assert_eq!(run("0.2", "cmd:echo t0k3n"), "5");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn a_secret_that_cannot_be_read_fails_the_run_before_any_step() {
    let env = TestEnv::new("secret-missing");
    let pipeline = declaring(&env, "0.3");
    let out = env.run(&pipeline, &["late-secret", "env:RBUILD_TEST_NOT_SET"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("environment variable RBUILD_TEST_NOT_SET is not set"),
        "{}",
        out.stderr
    );
    assert_eq!(out.ran(), 0, "a step ran first: {}", out.stderr);
    let missing = env.dir.path().join("no-such-file");
    let out = env.run(
        &pipeline,
        &["late-secret", &format!("file:{}", missing.display())],
    );
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains(&format!("cannot read {}", missing.display())),
        "{}",
        out.stderr
    );
    assert_eq!(out.ran(), 0, "a step ran first: {}", out.stderr);
}

#[test]
fn a_crate_that_does_not_use_the_sdk_is_refused_not_run() {
    let env = TestEnv::new("not-a-pipeline");
    let app = env.dir.path().join("app");
    std::fs::create_dir_all(app.join("src")).unwrap();
    std::fs::write(
        app.join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        app.join("src/main.rs"),
        "fn main() { println!(\"the application ran\"); }\n",
    )
    .unwrap();
    let out = env.run(&app, &[]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("does not depend on rbuild-sdk, so it is not a pipeline"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("the application ran"),
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains("Compiling"), "{}", out.stderr);
}

#[test]
fn cache_volumes_are_listed_with_their_size_and_removed_by_name() {
    let env = TestEnv::new("volumes-ls");
    env.steps(&[
        &format!("from={BUSYBOX}"),
        "cache=deps store:/cache",
        "exec=head -c 300000 /dev/zero > /cache/blob",
        "print=stdout",
    ])
    .ok();
    let volumes = |args: &[&str]| {
        Outcome::from(
            env.command()
                .args(["cache", "volumes"])
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let listed = volumes(&[]).ok();
    let row = listed
        .stdout
        .lines()
        .find(|l| l.ends_with("  deps store"))
        .unwrap_or_else(|| panic!("{}", listed.stdout));
    assert!(row.contains("300.0 kB"), "{row}");
    assert!(row.contains(" ago"), "{row}");
    let removed = volumes(&["rm", "deps store"]).ok();
    assert!(
        removed
            .stdout
            .contains("removed cache volume \"deps store\""),
        "{}",
        removed.stdout
    );
    assert!(!volumes(&[]).ok().stdout.contains("deps store"));
    let missing = volumes(&["rm", "deps store"]);
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("no cache volume \"deps store\""),
        "{}",
        missing.stderr
    );
}
