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

#[test]
fn under_progress_json_every_line_on_stderr_is_an_event() {
    let env = TestEnv::new("json-only");
    // New source, so that cargo compiles it (and says so); undeclared, so
    // that rbuild hints how to declare an API version.
    let pipeline = env.dir.path().join("talkative.rs");
    std::fs::write(
        &pipeline,
        format!(
            r#"use rbuild_sdk as rb;
#[tokio::main]
async fn main() -> rb::Result<()> {{
    let client = rb::connect().await?;
    eprintln!("from the pipeline {{}}", "{}");
    print!("{{}}", client.container().from("{BUSYBOX}").with_exec(["echo", "out"]).stdout().await?);
    Ok(())
}}
"#,
            env.namespace
        ),
    )
    .unwrap();
    let (out, _) = run_json(&env, &pipeline, &[]);
    let out = out.ok();
    let mut kinds = std::collections::BTreeSet::new();
    for line in out.stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{}", out.stderr));
        kinds.insert(
            v["event"]
                .as_str()
                .unwrap_or_else(|| panic!("no event: {line}"))
                .to_string(),
        );
        if v["event"] == "pipeline_output" {
            assert_eq!(v["line"], format!("from the pipeline {}", env.namespace));
        }
    }
    for k in ["compile", "message", "pipeline_output", "summary"] {
        assert!(kinds.contains(k), "no {k} event: {kinds:?}\n{}", out.stderr);
    }
    assert_eq!(out.stdout, "out\n", "stdout stays the pipeline's own");
}

#[test]
fn a_step_cannot_clear_the_screen_of_plain_output() {
    let env = TestEnv::new("escapes");
    let out = env
        .run_command(
            &steps_pipeline(),
            &[
                &format!("from={BUSYBOX}"),
                "exec=printf '\\033[2J\\033[Hscreen cleared?\\n'; printf 'bell\\007\\n' >&2",
                "print=stdout",
            ],
        )
        .env("RBUILD_PROGRESS", "plain")
        .output()
        .unwrap();
    let out = Outcome::from(out).ok();
    assert!(
        !out.stderr.contains('\u{1b}') && !out.stderr.contains('\u{7}'),
        "a raw escape reached the terminal: {:?}",
        out.stderr
    );
    assert!(
        out.stderr.contains("| \\x1b[2J\\x1b[Hscreen cleared?"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("| bell\\x07"), "{}", out.stderr);
    // The bytes themselves are the step's: stdout() returns them as written.
    assert!(out.stdout.contains("\u{1b}[2J"), "{:?}", out.stdout);
}

#[test]
fn output_that_is_not_utf8_is_replaced_as_text_and_exact_as_bytes() {
    let env = TestEnv::new("bytes");
    let out = env.run(&declaring(&env, "0.3"), &["bytes"]).ok();
    assert!(
        out.stdout.contains("text: \"ok\u{fffd}\u{fffd}\\n\""),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("bytes: [111, 107, 255, 254, 10]"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("stderr bytes: [101, 128]"),
        "{}",
        out.stdout
    );
}

#[test]
fn extra_ca_certificates_join_each_steps_trust_store_keyed_by_content() {
    let env = TestEnv::new("ca-certs");
    let pem = |tag: &str| {
        format!("-----BEGIN CERTIFICATE-----\nrbuild-test-{tag}\n-----END CERTIFICATE-----\n")
    };
    let (one, moved) = (
        env.dir.path().join("corp.crt"),
        env.dir.path().join("elsewhere.crt"),
    );
    std::fs::write(&one, pem("one")).unwrap();
    std::fs::write(&moved, pem("one")).unwrap();
    // The first step makes the image's bundle; the second reads its trust store.
    let args = [
        format!("from={BUSYBOX}"),
        "exec=mkdir -p /etc/ssl/certs && echo image-root > /etc/ssl/certs/ca-certificates.crt"
            .to_string(),
        "exec=cat /etc/ssl/certs/ca-certificates.crt; echo node=$NODE_EXTRA_CA_CERTS".to_string(),
        "print=stdout".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = |ca: Option<&std::path::Path>| {
        let mut cmd = env.run_command(&steps_pipeline(), &args);
        match ca {
            Some(p) => cmd.env("RBUILD_CA_CERTS", p),
            None => cmd.env_remove("RBUILD_CA_CERTS"),
        };
        Outcome::from(cmd.output().unwrap()).ok()
    };
    let first = run(Some(&one));
    assert_eq!(
        first.stdout,
        format!(
            "image-root\n{}node=/etc/ssl/certs/ca-certificates.crt\n",
            pem("one")
        ),
        "{}",
        first.stderr
    );
    // The same certificate from another file: the same key, nothing runs.
    let again = run(Some(&moved));
    assert_eq!(again.stdout, first.stdout);
    assert_eq!(again.ran(), 0, "{}", again.stderr);
    // Another certificate: the steps run again and trust it (each exec
    // step's key covers the certificates: which bundles its root
    // filesystem has is only looked at when it runs, so that planning a
    // step never needs its image's files).
    std::fs::write(&one, pem("two")).unwrap();
    let changed = run(Some(&one));
    assert!(
        changed.stdout.contains("rbuild-test-two"),
        "{}",
        changed.stdout
    );
    assert_eq!(changed.ran(), 2, "{}", changed.stderr);
    // None: the image's own bundle, as it is.
    let none = run(None);
    assert_eq!(none.stdout, "image-root\nnode=\n");
    // A file that is not a certificate is refused, naming it.
    let bad = env.dir.path().join("not-a-cert.txt");
    std::fs::write(&bad, "hello").unwrap();
    let mut cmd = env.run_command(&steps_pipeline(), &args);
    let refused = Outcome::from(cmd.env("RBUILD_CA_CERTS", &bad).output().unwrap());
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains(&format!(
            "CA certificate {} (--ca-cert, RBUILD_CA_CERTS) holds no PEM certificate",
            bad.display()
        )),
        "{}",
        refused.stderr
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}
