//! The pipeline API on real containerd: containers, directories, files,
//! host sources, cache volumes, secrets — one test per group, each asserting
//! the bytes that come out (see fixtures/pipelines/api.rs).

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;

fn api(env: &TestEnv, args: &[&str]) -> (HashMap<String, String>, Outcome) {
    let out = env
        .run(&repo_root().join("fixtures/pipelines/api.rs"), args)
        .ok();
    let map = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (map, out)
}

/// Step lines of a run that were not answered from the cache, except those
/// that contain one of `expected` (a step that fails on purpose runs every time).
fn steps_run(out: &Outcome, expected: &[&str]) -> Vec<String> {
    out.stderr
        .lines()
        .filter(|l| {
            let body = l.split_once(' ').map_or("", |(_, b)| b);
            ["exec ", "write ", "copy ", "remove "]
                .iter()
                .any(|k| body.starts_with(k))
        })
        .filter(|l| !l.ends_with(" CACHED") && !expected.iter().any(|e| l.contains(e)))
        .map(String::from)
        .collect()
}

fn expect(map: &HashMap<String, String>, key: &str, want: &str) {
    assert_eq!(
        map.get(key).map(String::as_str),
        Some(want),
        "{key} in {map:#?}"
    );
}

#[test]
fn container_files_config_exec_options_and_mounts() {
    let env = TestEnv::new("containers");
    let (m, out) = api(&env, &["containers"]);
    expect(&m, "new_file", "hello");
    expect(&m, "perms", "755");
    expect(&m, "executable", "ran");
    expect(&m, "with_file", "from-other");
    expect(&m, "with_directory", "./sub/y|./sub/z.log|./x");
    expect(&m, "with_directory_opts", "./sub/y|./x");
    expect(&m, "owner", "65534");
    expect(&m, "without", "0");
    expect(&m, "symlink_write", "inside");
    assert!(
        !Path::new("/etc/rbuild-escaped").exists(),
        "a file operation followed a container symlink onto the host"
    );
    expect(&m, "user", "65534");
    expect(&m, "entrypoint", "via-entrypoint");
    expect(&m, "default_args", "defaults");
    expect(&m, "expand", "1-1-x");
    expect(&m, "without_env", "[unset]");
    expect(&m, "label", "labelled");
    expect(&m, "expect_failure", "3");
    expect(&m, "expect_failure_stderr", "oops");
    expect(&m, "expect_any", "0");
    let wrong = &m["expect_failure_but_succeeded"];
    assert!(
        wrong.contains("exit code: 0 (a failure was expected)"),
        "{wrong}"
    );
    expect(&m, "stdin", "piped in");
    expect(&m, "entries", "group,passwd");
    expect(&m, "contents", "root:x:0:|nobody:x:65534:");
    expect(&m, "temp_fresh", "0");
    expect(&m, "temp_no_stub", "absent");
    expect(&m, "mounted", "12");
    expect(&m, "mounted_discarded", "1");
    expect(&m, "mounted_no_stub", "0");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    // Everything, file operations included, is cached the second time.
    let (again, out2) = api(&env, &["containers"]);
    assert_eq!(again, m);
    assert_eq!(steps_run(&out2, &["exec true"]), Vec::<String>::new());
    assert!(out.stderr.contains("write /a/hello.txt"), "{}", out.stderr);
}

#[test]
fn directories_files_and_host_sources() {
    let env = TestEnv::new("directories");
    let host = env.dir.path().join("host");
    std::fs::create_dir_all(host.join("sub")).unwrap();
    std::fs::write(host.join("top.txt"), "top").unwrap();
    std::fs::write(host.join("sub/s.txt"), "s").unwrap();
    std::fs::write(host.join("exec.sh"), "#!/bin/sh\n").unwrap();
    chmod(&host.join("exec.sh"), 0o755);
    let export = env.dir.path().join("export");
    let (m, _) = api(
        &env,
        &[
            "directories",
            host.to_str().unwrap(),
            export.to_str().unwrap(),
        ],
    );
    expect(&m, "entries", "a.txt,src");
    expect(&m, "glob", "src/b.rs,src/c.rs");
    expect(&m, "sub_entries", "b.rs,c.rs");
    expect(&m, "file", "fn b() {}");
    expect(&m, "size", "5");
    expect(&m, "name", "c.rs");
    expect(
        &m,
        "file_digest",
        &format!("blake3:{}", blake3::hash(b"alpha").to_hex()),
    );
    expect(
        &m,
        "composed",
        "a.txt,copy.txt,nested,nested/b.rs,nested/c.rs",
    );
    expect(&m, "filter", "src,src/b.rs,src/c.rs");
    expect(&m, "diff", "a.txt,new.txt");
    expect(&m, "digest_equal", "true");
    expect(&m, "digest_differs", "true");
    expect(&m, "from_container", "m.txt");
    expect(&m, "host_entries", "exec.sh,sub,top.txt");
    expect(&m, "host_file", "top");
    expect(&m, "host_file_in_dir", "3");
    expect(&m, "host_digest_matches_copy", "true");
    expect(
        &m,
        "host_in_container",
        ".|./exec.sh|./sub|./sub/s.txt|./top.txt|7550",
    );
    assert_eq!(
        std::fs::read_to_string(export.join("dir/src/b.rs")).unwrap(),
        "fn b() {}"
    );
    assert_eq!(
        std::fs::read_to_string(export.join("file.txt")).unwrap(),
        "alpha"
    );
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn cache_volumes_persist_across_runs_and_share_as_asked() {
    let env = TestEnv::new("volumes");
    let (m, _) = api(&env, &["cache", "deps", "one"]);
    expect(&m, "log", "one");
    let (m, _) = api(&env, &["cache", "deps", "two"]);
    expect(&m, "log", "one|two");
    // The volume's contents are not part of the key: an unchanged step hits
    // even though the volume changed since.
    let (m, out) = api(&env, &["cache", "deps", "two"]);
    expect(&m, "log", "one|two");
    assert_eq!(out.cached(), 1, "{}", out.stderr);

    let window = |v: &str| -> (bool, f64, f64) {
        let (seen, times) = v.split_once('|').unwrap();
        let (a, b) = times.split_once(' ').unwrap();
        (seen == "saw", a.parse().unwrap(), b.parse().unwrap())
    };
    let (m, _) = api(&env, &["cache-concurrent", "shared"]);
    let (a, b) = (window(&m["a"]), window(&m["b"]));
    assert!(a.0 && b.0, "shared: both see each other's files {m:?}");
    let (m, _) = api(&env, &["cache-concurrent", "locked"]);
    let (a, b) = (window(&m["a"]), window(&m["b"]));
    assert!(!a.0 && !b.0, "locked: never at the same time {m:?}");
    assert!(
        a.2 <= b.1 + 0.05 || b.2 <= a.1 + 0.05,
        "locked: one after the other {m:?}"
    );
    let (m, _) = api(&env, &["cache-concurrent", "private"]);
    let (a, b) = (window(&m["a"]), window(&m["b"]));
    assert!(!a.0 && !b.0, "private: each has its own instance {m:?}");
    assert!(
        a.1 < b.2 && b.1 < a.2,
        "private: they ran at the same time {m:?}"
    );
}

#[test]
fn secrets_are_usable_scrubbed_and_not_part_of_keys() {
    let env = TestEnv::new("secrets");
    let file = env.dir.path().join("secret.txt");
    std::fs::write(&file, "filesecret-31337").unwrap();
    let run = |value: &str| {
        let out = env
            .command()
            .env("RBUILD_TEST_SECRET", value)
            .arg("run")
            .arg(repo_root().join("fixtures/pipelines/api.rs"))
            .arg("--")
            .args(["secrets", file.to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stdout}\n{stderr}");
        (stdout, stderr)
    };
    let (stdout, stderr) = run("envsecret-4242");
    // Every value, also one written in two pieces, is replaced.
    assert!(
        stdout.contains("stdout: token=***|***|***|***|***|440"),
        "{stdout}"
    );
    assert!(stdout.contains("stderr: ***"), "{stdout}");
    assert!(
        stdout.contains("no_stub: 0"),
        "no empty mount points left: {stdout}"
    );
    assert!(stdout.contains("failing with ***"), "{stdout}");
    for leaked in [
        "envsecret-4242",
        "filesecret-31337",
        "set-secret-value-5150",
        "4242-cmd",
    ] {
        assert!(
            !stdout.contains(leaked) && !stderr.contains(leaked),
            "{leaked} leaked"
        );
    }
    // A new value is not a new key (documented): the steps hit.
    let (again, stderr) = run("other-value-1");
    assert!(stderr.contains("CACHED"), "{stderr}");
    let ran: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" exec ") && !l.ends_with(" CACHED") && !l.contains("failing with"))
        .collect();
    assert!(ran.is_empty(), "{ran:?}");
    assert!(again.contains("stdout: token=***"), "{again}");
}

#[test]
fn an_unchanged_tree_after_a_rerun_lets_the_next_step_hit() {
    let env = TestEnv::new("cutoff");
    let first = env
        .run(
            &repo_root().join("fixtures/pipelines/api.rs"),
            &["cutoff", "a-1"],
        )
        .ok();
    let second = env
        .run(
            &repo_root().join("fixtures/pipelines/api.rs"),
            &["cutoff", "a-2"],
        )
        .ok();
    // Step 1 changed (its command), ran, and wrote the same bytes: step 2
    // hit and printed the first run's random token.
    assert_eq!(second.stdout, first.stdout);
    assert_eq!((second.ran(), second.cached()), (1, 1), "{}", second.stderr);
    let third = env
        .run(
            &repo_root().join("fixtures/pipelines/api.rs"),
            &["cutoff", "b-1"],
        )
        .ok();
    assert_ne!(third.stdout, first.stdout);
    assert_eq!(third.ran(), 2);
}
