//! Modules on real containerd, CNI and the test registry: a pipeline
//! declaring API 0.2 calls a module declaring 0.1
//! (fixtures/pipelines/modules/), which runs as its own process under its
//! own version, listing included; an unchanged call starts no process.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// old.rs's functions, as it declares them.
const FUNCTIONS: [&str; 6] = [
    "build_image",
    "step_network",
    "count_files",
    "listing",
    "version_of",
    "mixed",
];

fn fixture(name: &str) -> PathBuf {
    repo_root().join("fixtures/pipelines/modules").join(name)
}

/// A source directory for the caller to hand the module.
fn source(env: &TestEnv) -> PathBuf {
    let src = env.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("VERSION"), "1.2\n").unwrap();
    std::fs::write(src.join("a.txt"), "a").unwrap();
    src
}

/// `rbuild run caller -- SOURCE`, the module's process starts traced in `trace`.
fn run_caller(env: &TestEnv, caller: &Path, src: &Path, trace: &Path) -> Outcome {
    let out = env
        .run_command(caller, &[src.to_str().unwrap()])
        .env("MODULE_TRACE", trace)
        .output()
        .unwrap();
    Outcome::from(out)
}

/// The module's process starts since the trace was last taken: `(listing)`
/// or the function called.
fn take_trace(trace: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(trace).unwrap_or_default();
    let _ = std::fs::remove_file(trace);
    text.lines()
        .map(|l| {
            if l == "(listing)" {
                return l.to_string();
            }
            let call: serde_json::Value = serde_json::from_str(l).unwrap();
            call["function"].as_str().unwrap().to_string()
        })
        .collect()
}

fn functions_listed(env: &TestEnv, module: &Path) -> Vec<String> {
    let out = Outcome::from(env.command().arg("functions").arg(module).output().unwrap()).ok();
    out.stdout
        .lines()
        .filter(|l| !l.starts_with(' '))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn a_module_declaring_0_1_keeps_its_behaviour_and_names_under_a_0_2_caller() {
    let env = TestEnv::new("modules-api");
    let src = source(&env);
    let trace = env.dir.path().join("trace");
    let out = run_caller(&env, &fixture("caller.rs"), &src, &trace).ok();
    let got = out.fields();

    // with_entrypoint in the module keeps the base's default args (0.1);
    // in the caller it resets them (0.2).
    assert_eq!(got["module entry"], "entry sh", "{}", out.stderr);
    assert_eq!(got["own entry"], "entry");
    // The module's step is on the host's network, the caller's is not.
    assert!(
        !got["module network"].starts_with("step-"),
        "{}",
        got["module network"]
    );
    assert!(
        got["own network"].starts_with("step-"),
        "{}",
        got["own network"]
    );
    // The caller's directory reached the module as a value, and the
    // caller built on what the module returned.
    assert_eq!(got["files"], "2 things");
    assert_eq!(got["entries"], "VERSION a.txt");
    assert_eq!(got["version"], "v1.2");
    // The caller's container, file and secret, as values: the secret's
    // plaintext reached neither the module's process nor the index.
    assert_eq!(got["mixed"], "caller hello 18");
    let calls = std::fs::read_to_string(&trace).unwrap();
    assert!(calls.contains("\"mixed\""), "{calls}");
    assert!(!calls.contains("s3cr3t"), "{calls}");
    let index = std::fs::read(env.root().join("index.db")).unwrap();
    assert!(
        !index.windows(6).any(|w| w == b"s3cr3t"),
        "the index holds the secret"
    );
    // It ran as its own process: the listing, then each function.
    let started = take_trace(&trace);
    assert!(started.contains(&"(listing)".to_string()), "{started:?}");
    for f in FUNCTIONS {
        assert_eq!(
            started.iter().filter(|s| *s == f).count(),
            1,
            "{f}: {started:?}"
        );
    }

    // Its listing is read under its own version: 0.1 names as declared
    // (the caller called `build_image`, which 0.2 would name
    // `build-image`); the same module declaring 0.2 is named in kebab-case.
    let old_names = functions_listed(&env, &fixture("old.rs"));
    assert_eq!(old_names, FUNCTIONS);
    let text = std::fs::read_to_string(fixture("old.rs")).unwrap();
    let newer = env.dir.path().join("new.rs");
    std::fs::write(&newer, text.replace("api = \"0.1\"", "api = \"0.2\"")).unwrap();
    let new_names = functions_listed(&env, &newer);
    assert_eq!(new_names, FUNCTIONS.map(|f| f.replace('_', "-")));
    // `rbuild call` takes each module's own names, and serves its version.
    let call = |module: &Path, f: &str| {
        Outcome::from(
            env.command()
                .arg("call")
                .arg(module)
                .arg(f)
                .output()
                .unwrap(),
        )
    };
    let old = call(&fixture("old.rs"), "step_network").ok();
    assert!(!old.stdout.trim().starts_with("step-"), "{}", old.stdout);
    let new = call(&newer, "step-network").ok();
    assert!(new.stdout.trim().starts_with("step-"), "{}", new.stdout);
    let wrong = call(&newer, "step_network");
    assert_ne!(wrong.code, 0);
    assert!(
        wrong.stderr.contains("has no function \"step_network\""),
        "{}",
        wrong.stderr
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn an_unchanged_module_call_starts_no_process_and_a_changed_one_runs_again() {
    let env = TestEnv::new("modules-cache");
    let src = source(&env);
    let trace = env.dir.path().join("trace");
    // Copies, so that the module can be edited.
    let (caller, module) = (
        env.dir.path().join("caller.rs"),
        env.dir.path().join("old.rs"),
    );
    std::fs::copy(fixture("caller.rs"), &caller).unwrap();
    std::fs::copy(fixture("old.rs"), &module).unwrap();

    let first = run_caller(&env, &caller, &src, &trace).ok();
    assert!(take_trace(&trace).contains(&"build_image".to_string()));

    // Unchanged: no function that only built values runs again, nor the
    // listing they would need. version_of asked the engine for a file's
    // contents, so its result is not remembered: it runs (and lists) again.
    let second = run_caller(&env, &caller, &src, &trace).ok();
    assert_eq!(second.fields(), first.fields());
    assert_eq!(take_trace(&trace), ["(listing)", "version_of"]);
    assert_eq!(second.ran(), 0, "{}", second.stderr);

    // The caller's file changed, same size, same mtime: the module sees it.
    let version = src.join("VERSION");
    let mtime = std::fs::metadata(&version).unwrap().modified().unwrap();
    std::fs::write(&version, "1.3\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&version)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let third = run_caller(&env, &caller, &src, &trace).ok();
    assert_eq!(third.fields()["version"], "v1.3");
    assert_eq!(take_trace(&trace), ["(listing)", "version_of"]);

    // The module's source changed: each call runs it again.
    let text = std::fs::read_to_string(&module).unwrap();
    std::fs::write(&module, format!("{text}\n// edited\n")).unwrap();
    let fourth = run_caller(&env, &caller, &src, &trace).ok();
    assert_eq!(fourth.fields()["files"], "2 things");
    let started = take_trace(&trace);
    for f in FUNCTIONS {
        assert!(started.contains(&f.to_string()), "{f}: {started:?}");
    }
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn a_call_the_module_does_not_declare_is_refused_naming_what_it_has() {
    let env = TestEnv::new("modules-errors");
    let module = fixture("old.rs");
    let bad = env.dir.path().join("bad.rs");
    std::fs::write(
        &bad,
        format!(
            r#"//! ```cargo
//! [package.metadata.rbuild]
//! api = "0.2"
//! ```
use rbuild_sdk as rb;
#[tokio::main]
async fn main() -> rb::Result<()> {{
    let client = rb::connect().await?;
    let m = client.module({module:?});
    let call = match std::env::args().nth(1).as_deref() {{
        Some("name") => m.call("build-image"),
        Some("kind") => m.call("count_files").arg("source", "/tmp"),
        _ => m.call("count_files").arg("sources", &client.directory()),
    }};
    call.container().sync().await?;
    Ok(())
}}
"#
        ),
    )
    .unwrap();
    let failed = |case: &str, message: &str| {
        let out = env.run(&bad, &[case]);
        assert_ne!(out.code, 0, "{case}");
        assert!(out.stderr.contains(message), "{case}: {}", out.stderr);
    };
    // The module's own (0.1) names, not the caller's (0.2) kebab-case.
    failed(
        "name",
        "has no function \"build-image\" (under its API 0.1 it has: build_image, step_network, count_files, listing, version_of, mixed)",
    );
    failed(
        "kind",
        "count_files: argument \"source\" takes a directory, not text",
    );
    failed("arg", "count_files: unknown argument \"sources\"");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}
