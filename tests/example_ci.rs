//! examples/ci: the GitLab and GitHub Actions files are documentation, and
//! their commands are what this test runs, line by line, as written (with
//! the variables the CI would set): three fresh runners share one cache
//! through the CI's own registry (the test registry with htpasswd auth,
//! where the cache needs the credentials the jobs write to the Docker
//! config), pull requests read it, main writes it, main publishes.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{AUTH_REGISTRY, Outcome, TestEnv, repo_root};

/// The example, copied to be the checkout a CI job starts in.
fn checkout(env: &TestEnv) -> PathBuf {
    let to = env.dir.path().join("checkout");
    let status = Command::new("cp")
        .arg("-a")
        .arg(repo_root().join("examples/ci"))
        .arg(&to)
        .status()
        .unwrap();
    assert!(status.success());
    to
}

/// The shell lines of a GitLab job: `before_script:` (the default's) then
/// its `script:`.
fn gitlab_lines(job: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("examples/ci/.gitlab-ci.yml")).unwrap();
    let list = |owner: &str, key: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut in_owner = false;
        let mut in_list = false;
        for line in text.lines() {
            if !line.starts_with(' ') && !line.is_empty() {
                in_owner = line.trim_end() == format!("{owner}:");
                in_list = false;
            } else if in_owner && line.trim_start().starts_with(&format!("{key}:")) {
                in_list = true;
            } else if in_list && !line.trim_start().starts_with('#') {
                match line.trim_start().strip_prefix("- ") {
                    Some(cmd) => out.push(cmd.to_string()),
                    None => in_list = false,
                }
            }
        }
        out
    };
    let mut lines = list("default", "before_script");
    lines.extend(list(job, "script"));
    assert!(lines.len() >= 2, "no script for {job}: {lines:?}");
    lines
}

/// The `run:` lines of a GitHub Actions job.
fn github_lines(job: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(repo_root().join("examples/ci/.github/workflows/ci.yml")).unwrap();
    let mut out = Vec::new();
    let mut in_job = false;
    for line in text.lines() {
        if line.starts_with("  ") && !line.starts_with("   ") {
            in_job = line.trim_end() == format!("  {job}:");
        } else if in_job && let Some(cmd) = line.trim_start().strip_prefix("run: ") {
            out.push(cmd.to_string());
        }
    }
    assert!(out.len() >= 2, "no run lines for {job}");
    out
}

/// Runs a job's lines in `dir` with `vars`, as the runner's shell would;
/// the outcome of the last (the rbuild call).
fn job(env: &TestEnv, dir: &Path, lines: &[String], vars: &HashMap<&str, String>) -> Outcome {
    let rbuild = env.command();
    let bin = Path::new(rbuild.get_program())
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut last = None;
    for line in lines {
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(line).current_dir(dir).env("PATH", &path);
        for (k, v) in rbuild.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        sh.envs(vars.iter());
        let out = Outcome::from(sh.output().unwrap());
        assert_eq!(out.code, 0, "{line}\n{}\n{}", out.stdout, out.stderr);
        last = Some(out);
    }
    last.unwrap()
}

#[test]
fn the_ci_examples_share_a_cache_through_the_projects_registry() {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let image = format!("{AUTH_REGISTRY}/rbuild-test-{nonce:x}/project");
    let cache = format!("{image}/rbuild-cache");
    let gitlab = |main: bool| {
        let mut v = HashMap::from([
            ("CI_REGISTRY", AUTH_REGISTRY.to_string()),
            ("CI_REGISTRY_IMAGE", image.clone()),
            ("CI_REGISTRY_USER", "rbuild".to_string()),
            ("CI_REGISTRY_PASSWORD", "rbuild-pass".to_string()),
            ("CI_COMMIT_SHORT_SHA", "abc1234".to_string()),
            ("RBUILD_CACHE_FROM", cache.clone()),
            ("RBUILD_PROGRESS", "plain".to_string()),
        ]);
        if main {
            v.insert("RBUILD_CACHE_TO", cache.clone());
        }
        v
    };

    // Runner 1, the default branch: tests run and are pushed; it publishes.
    let r1 = TestEnv::new("ci-gitlab-main");
    let dir = checkout(&r1);
    let test = job(&r1, &dir, &gitlab_lines("test"), &gitlab(true));
    assert!(test.stdout.contains("tests passed"), "{}", test.stdout);
    assert!(test.ran() >= 2, "{}", test.stderr);
    assert!(
        test.stderr
            .contains(&format!("remote cache {cache}: pushed")),
        "{}",
        test.stderr
    );
    let publish = job(&r1, &dir, &gitlab_lines("publish"), &gitlab(true));
    assert!(
        publish
            .stdout
            .contains(&format!("{image}/app:abc1234@sha256:")),
        "{}\n{}",
        publish.stdout,
        publish.stderr
    );

    // Runner 2, a merge request: everything from the cache, nothing pulled.
    let r2 = TestEnv::new("ci-gitlab-mr");
    let dir = checkout(&r2);
    let mr = job(&r2, &dir, &gitlab_lines("test"), &gitlab(false));
    assert!(mr.stdout.contains("tests passed"), "{}", mr.stdout);
    assert_eq!(mr.ran(), 0, "{}", mr.stderr);
    assert!(!mr.stderr.contains("pull "), "{}", mr.stderr);
    assert!(!mr.stderr.contains("pushed"), "{}", mr.stderr);

    // Runner 3, GitHub Actions on main, the same registry: cached, and it
    // publishes too (the image's layers come from the cache).
    let github = HashMap::from([
        ("REGISTRY", image.clone()),
        ("REGISTRY_USER", "rbuild".to_string()),
        ("REGISTRY_PASSWORD", "rbuild-pass".to_string()),
        ("RBUILD_CACHE_FROM", cache.clone()),
        ("RBUILD_CACHE_TO", cache.clone()),
        ("RBUILD_PROGRESS", "plain".to_string()),
        ("GITHUB_SHA", "0123abcd".to_string()),
    ]);
    let r3 = TestEnv::new("ci-github-main");
    let dir = checkout(&r3);
    let test = job(&r3, &dir, &github_lines("test"), &github);
    assert!(test.stdout.contains("tests passed"), "{}", test.stdout);
    assert_eq!(test.ran(), 0, "{}", test.stderr);
    let publish = job(&r3, &dir, &github_lines("publish"), &github);
    assert!(
        publish
            .stdout
            .contains(&format!("{image}/app:0123abcd@sha256:")),
        "{}\n{}",
        publish.stdout,
        publish.stderr
    );
    assert_eq!(publish.ran(), 0, "{}", publish.stderr);
}
