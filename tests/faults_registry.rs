//! The registry part of the fault suite (issue 11, items 7 and 4): pulls
//! and pushes through a fault-injecting proxy in front of the real test
//! registry, on real containerd. Transient faults are retried (the proxy's
//! counters say how often), lasting ones fail with a message naming the
//! image, the registry and what happened, the cache stays consistent (the
//! next clean run succeeds and hits), and SIGTERM ends a run whose registry
//! request or key-lock wait hangs.

mod common;

use std::path::Path;
use std::process::Command;

use common::fault_proxy::{Fault, FaultProxy, Match, Rule};
use common::running::{HANG, Running};
use common::{Outcome, TestEnv, steps_pipeline};

/// The digest of busybox's one layer in the fixture registry is whatever
/// `make setup` built; the second blob GET of a pull is that layer (the
/// first is the image config).
const LAYER_GET: usize = 2;

fn run(env: &TestEnv, vars: &[(&str, &str)], args: &[&str]) -> Outcome {
    let out = env
        .command()
        .envs(vars.iter().copied())
        .arg("run")
        .arg(steps_pipeline())
        .arg("--")
        .args(args)
        .output()
        .expect("start rbuild");
    Outcome::from(out)
}

fn hello(image: &str) -> Vec<String> {
    vec![
        format!("from={image}"),
        "exec=echo hello from busybox".into(),
        "print=stdout".into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// After a faulty run: nothing left behind, and a clean run through the
/// same proxy (faults off) succeeds — the cache index and containerd's
/// stores are consistent.
fn clean_run_succeeds(env: &TestEnv, proxy: &FaultProxy) -> Outcome {
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    proxy.set_rules(Vec::new());
    let args = hello(&proxy.image("busybox:latest"));
    let out = run(env, &[], &strs(&args)).ok();
    assert_eq!(out.stdout, "hello from busybox\n", "{}", out.stderr);
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    out
}

/// A transient fault is retried and the run succeeds; returns the proxy.
fn survives(name: &str, rules: Vec<Rule>) -> (TestEnv, FaultProxy, Outcome) {
    let env = TestEnv::new(name);
    let proxy = FaultProxy::start(rules);
    let args = hello(&proxy.image("busybox:latest"));
    let out = run(&env, &[], &strs(&args));
    assert_eq!(
        out.code,
        0,
        "rbuild failed\n{}\nrequests: {:?}",
        out.stderr,
        proxy.log()
    );
    assert_eq!(out.stdout, "hello from busybox\n", "{}", out.stderr);
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    (env, proxy, out)
}

#[test]
fn server_errors_on_blob_downloads_are_retried() {
    let (env, proxy, _) = survives(
        "fault-500",
        vec![Rule::first(2, Match::BlobGet, Fault::Status(500))],
    );
    assert_eq!(proxy.faults(), 2);
    // Config and layer once each, plus the two failed attempts.
    assert_eq!(proxy.requests(Match::BlobGet), 2 + 2, "{:?}", proxy.log());
    let again = clean_run_succeeds(&env, &proxy);
    assert_eq!(again.ran(), 0, "the step is a cache hit: {}", again.stderr);
}

#[test]
fn a_server_error_on_the_nth_request_is_retried() {
    // Every kind of request in turn: the tag's HEAD, the manifest, the
    // config, the layer.
    for n in 1..=4 {
        let env = TestEnv::new(&format!("fault-nth{n}"));
        let proxy = FaultProxy::start(vec![Rule::nth(n, Match::Any, Fault::Status(503))]);
        let args = hello(&proxy.image("busybox:latest"));
        let out = run(&env, &[], &strs(&args));
        assert_eq!(
            out.code,
            0,
            "request {n}: {}\n{:?}",
            out.stderr,
            proxy.log()
        );
        assert_eq!(proxy.faults(), 1, "{:?}", proxy.log());
        assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    }
}

#[test]
fn a_connection_reset_mid_layer_resumes_the_download() {
    let (env, proxy, _) = survives(
        "fault-reset",
        vec![Rule::nth(LAYER_GET, Match::BlobGet, Fault::ResetMidBody)],
    );
    assert_eq!(proxy.faults(), 1);
    assert_eq!(proxy.requests(Match::BlobGet), 3, "{:?}", proxy.log());
    clean_run_succeeds(&env, &proxy);
}

#[test]
fn a_body_cut_short_resumes_the_download() {
    for (name, fault) in [
        ("fault-trunc", Fault::TruncatedBody),
        ("fault-shortlen", Fault::ShortContentLength),
    ] {
        let (env, proxy, _) = survives(name, vec![Rule::nth(LAYER_GET, Match::BlobGet, fault)]);
        assert_eq!(proxy.faults(), 1, "{fault:?}");
        assert_eq!(
            proxy.requests(Match::BlobGet),
            3,
            "{fault:?}: {:?}",
            proxy.log()
        );
        clean_run_succeeds(&env, &proxy);
    }
}

#[test]
fn a_corrupted_blob_is_fetched_once_more() {
    let (env, proxy, _) = survives(
        "fault-wrong1",
        vec![Rule::nth(LAYER_GET, Match::BlobGet, Fault::WrongBytes)],
    );
    assert_eq!(proxy.requests(Match::BlobGet), 3, "{:?}", proxy.log());
    clean_run_succeeds(&env, &proxy);
}

#[test]
fn a_blob_corrupted_every_time_fails_naming_its_digest() {
    let env = TestEnv::new("fault-wrong");
    let proxy = FaultProxy::start(vec![Rule {
        matches: Match::BlobGet,
        fault: Fault::WrongBytes,
        skip: LAYER_GET - 1,
        times: None,
    }]);
    let image = proxy.image("busybox:latest");
    let out = run(&env, &[], &strs(&hello(&image)));
    assert_ne!(out.code, 0, "{}", out.stderr);
    let layer = layer_digest(&proxy.image("busybox:latest"));
    let expected = format!(
        "layer {layer} of {image} from {} does not match its digest",
        proxy.host()
    );
    assert!(
        out.stderr.contains(&expected),
        "wanted {expected:?} in\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("fetched twice"), "{}", out.stderr);
    // Fetched twice, not more.
    assert_eq!(proxy.requests(Match::BlobGet), 3, "{:?}", proxy.log());
    clean_run_succeeds(&env, &proxy);
}

#[test]
fn lasting_faults_fail_after_the_retries_naming_image_registry_and_what_happened() {
    let cases = [
        (Fault::Status(500), "the registry answered HTTP 500"),
        (Fault::ResetMidBody, "connection reset"),
        (
            Fault::TruncatedBody,
            "connection closed before the end of the body",
        ),
    ];
    for (n, (fault, reason)) in cases.into_iter().enumerate() {
        let env = TestEnv::new(&format!("fault-lasting{n}"));
        let proxy = FaultProxy::start(vec![Rule {
            matches: Match::BlobGet,
            fault,
            skip: LAYER_GET - 1,
            times: None,
        }]);
        let image = proxy.image("busybox:latest");
        let out = run(
            &env,
            &[("RBUILD_REGISTRY_RETRIES", "2")],
            &strs(&hello(&image)),
        );
        assert_ne!(out.code, 0, "{fault:?}: {}", out.stderr);
        let layer = layer_digest(&image);
        let expected = format!(
            "{reason} while downloading layer {layer} of {image} from {} (gave up after 3 attempts",
            proxy.host()
        );
        assert!(
            out.stderr.contains(&expected),
            "{fault:?}: wanted {expected:?} in\n{}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("error decoding response body"),
            "{}",
            out.stderr
        );
        // The first attempt and two retries.
        assert_eq!(proxy.faults(), 3, "{fault:?}: {:?}", proxy.log());
        clean_run_succeeds(&env, &proxy);
    }
}

#[test]
fn unauthorized_without_a_challenge_says_authentication_failed_and_how_to_log_in() {
    let env = TestEnv::new("fault-401");
    let proxy = FaultProxy::start(vec![Rule::always(
        Match::Any,
        Fault::UnauthorizedNoChallenge,
    )]);
    let image = proxy.image("busybox:latest");
    let out = run(&env, &[], &strs(&hello(&image)));
    assert_ne!(out.code, 0);
    let host = proxy.host();
    for wanted in [
        format!("authentication failed: registry {host} denied access to {image}"),
        format!("docker login {host}"),
    ] {
        assert!(
            out.stderr.contains(&wanted),
            "wanted {wanted:?} in\n{}",
            out.stderr
        );
    }
    // Not retried: asking again changes nothing.
    assert!(proxy.requests(Match::Any) <= 4, "{:?}", proxy.log());
    clean_run_succeeds(&env, &proxy);
}

#[test]
fn pushes_retry_server_errors_on_uploads() {
    let env = TestEnv::new("fault-push");
    // The pull goes straight to the registry; the first upload request fails.
    let proxy = FaultProxy::start(vec![Rule::first(1, Match::Upload, Fault::Status(500))]);
    let target = proxy.image(&format!(
        "rbuild-test-{:x}/faulty-push:latest",
        std::process::id()
    ));
    let out = run(
        &env,
        &[],
        &[
            &format!("from={}", common::BUSYBOX),
            "exec=echo pushed > /pushed",
            &format!("publish={target}"),
        ],
    )
    .ok();
    assert!(out.stdout.contains("published: "), "{}", out.stdout);
    assert_eq!(proxy.faults(), 1, "{:?}", proxy.log());
    // What was pushed is there: the pushed image runs.
    proxy.set_rules(Vec::new());
    let read = run(&env, &[], &[&format!("from={target}"), "read=/pushed"]).ok();
    assert_eq!(read.stdout, "pushed\n");
}

// ------------------------------------------------------------- cancellation

/// `rbuild run steps.rs -- ARGS` in the background.
fn start(env: &TestEnv, args: &[&str]) -> Running {
    env.start(&steps_pipeline(), args)
}

const INTERRUPTED: &str = "rbuild: interrupted; running steps were stopped and cleaned up";

#[test]
fn sigterm_ends_a_run_whose_layer_download_hangs() {
    let env = TestEnv::new("fault-stall");
    let proxy = FaultProxy::start(vec![Rule {
        matches: Match::BlobGet,
        fault: Fault::Stall,
        skip: LAYER_GET - 1,
        times: None,
    }]);
    let args = hello(&proxy.image("busybox:latest"));
    let mut rbuild = start(&env, &strs(&args));
    proxy.wait_for("the layer request to stall", HANG, |p| p.stalled() == 1);
    rbuild.terminate();
    let code = rbuild.wait();
    assert_eq!(code, 130, "{}", rbuild.stderr());
    assert!(rbuild.stderr().contains(INTERRUPTED), "{}", rbuild.stderr());
    // rbuild hung up: the stalled connection is gone.
    proxy.wait_for("the stalled connection to close", HANG, |p| {
        p.stalled() == 0
    });
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    clean_run_succeeds(&env, &proxy);
}

#[test]
fn sigterm_ends_a_run_whose_tag_lookup_hangs() {
    let env = TestEnv::new("fault-stallhead");
    let proxy = FaultProxy::start(vec![Rule::always(Match::Manifest, Fault::Stall)]);
    let args = hello(&proxy.image("busybox:latest"));
    let mut rbuild = start(&env, &strs(&args));
    proxy.wait_for("the manifest request to stall", HANG, |p| p.stalled() == 1);
    rbuild.terminate();
    assert_eq!(rbuild.wait(), 130, "{}", rbuild.stderr());
    assert!(rbuild.stderr().contains(INTERRUPTED), "{}", rbuild.stderr());
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn sigterm_ends_a_run_whose_push_hangs() {
    let env = TestEnv::new("fault-stallpush");
    let proxy = FaultProxy::start(vec![Rule::always(Match::Upload, Fault::Stall)]);
    let target = proxy.image(&format!(
        "rbuild-test-{:x}/stalled-push:latest",
        std::process::id()
    ));
    let args = [
        &format!("from={}", common::BUSYBOX)[..],
        "exec=echo pushed > /pushed",
        &format!("publish={target}"),
    ];
    let mut rbuild = start(&env, &args);
    proxy.wait_for("an upload to stall", HANG, |p| p.stalled() == 1);
    rbuild.terminate();
    assert_eq!(rbuild.wait(), 130, "{}", rbuild.stderr());
    assert!(rbuild.stderr().contains(INTERRUPTED), "{}", rbuild.stderr());
    proxy.wait_for("the stalled upload to close", HANG, |p| p.stalled() == 0);
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn sigterm_ends_a_wait_for_a_key_lock_held_by_another_rbuild() {
    let env = TestEnv::new("fault-keylock");
    let args = [
        &format!("from={}", common::BUSYBOX)[..],
        "exec=echo inside-the-step; sleep 600",
        "print=stdout",
    ];
    let mut first = start(&env, &args);
    first.wait_for_line("| inside-the-step");
    let mut second = start(&env, &args);
    second.wait_for_line("waiting for another rbuild process that runs");
    second.terminate();
    assert_eq!(second.wait(), 130, "{}", second.stderr());
    assert!(second.stderr().contains(INTERRUPTED), "{}", second.stderr());
    first.terminate();
    assert_eq!(first.wait(), 130, "{}", first.stderr());
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

// ------------------------------------------------------------ gzip bombs

/// The digest of an image's single layer, read from the registry.
fn layer_digest(image: &str) -> String {
    let (host, rest) = image.split_once('/').unwrap();
    let (repo, tag) = rest.rsplit_once(':').unwrap();
    // Straight from the registry: the proxy may be corrupting things.
    let _ = host;
    let out = Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        ])
        .arg(format!("http://{}/v2/{repo}/manifests/{tag}", common::REGISTRY))
        .output()
        .unwrap();
    assert!(out.status.success(), "curl the manifest of {image}");
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn sh(script: &str, dir: &Path) -> String {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Writes an OCI layout holding an image whose one layer is 64 MiB of
/// zeros (about 64 KiB gzipped) beside the host's static busybox (a shell
/// to look at it with), and pushes it with skopeo; returns its reference.
fn push_zeros_image(dir: &Path) -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    sh(
        "mkdir -p rootfs/bin layout/blobs/sha256
         dd if=/dev/zero of=rootfs/zeros bs=1M count=64 2>/dev/null
         cp /bin/busybox rootfs/bin/busybox
         ln -s busybox rootfs/bin/sh
         ln -s busybox rootfs/bin/wc
         tar -C rootfs -cf layer.tar bin zeros
         gzip -9 -n -c layer.tar > layer.tar.gz",
        dir,
    );
    let sha = |f: &str| sh(&format!("sha256sum {f} | cut -d' ' -f1"), dir);
    let size = |f: &str| std::fs::metadata(dir.join(f)).unwrap().len();
    let blob = |name: &str| {
        let d = sha(name);
        std::fs::copy(dir.join(name), dir.join("layout/blobs/sha256").join(&d)).unwrap();
        d
    };
    let diff_id = sha("layer.tar");
    let layer = blob("layer.tar.gz");
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let config_digest = blob("config.json");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": size("config.json")},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": format!("sha256:{layer}"), "size": size("layer.tar.gz")}],
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    let manifest_digest = blob("manifest.json");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{manifest_digest}"), "size": size("manifest.json"),
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
    });
    std::fs::write(dir.join("layout/index.json"), index.to_string()).unwrap();
    std::fs::write(
        dir.join("layout/oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let reference = format!(
        "{}/rbuild-test-{:x}-{}/zeros:latest",
        common::REGISTRY,
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    sh(
        &format!("skopeo copy -q --dest-tls-verify=false oci:layout:latest docker://{reference}"),
        dir,
    );
    reference
}

#[test]
fn a_layer_that_unpacks_past_the_limit_is_refused_with_a_clear_error() {
    let env = TestEnv::new("fault-bomb");
    let work = env.dir.path().join("bomb");
    std::fs::create_dir_all(&work).unwrap();
    let image = push_zeros_image(&work);
    let args = [
        &format!("from={image}")[..],
        "exec=wc -c < /zeros",
        "print=stdout",
    ];
    let out = run(&env, &[("RBUILD_MAX_LAYER_SIZE", "8M")], &args);
    assert_ne!(out.code, 0, "{}", out.stderr);
    let layer = layer_digest(&image);
    let expected =
        format!("layer {layer} of {image} unpacks to more than 8388608 bytes, the limit per layer");
    assert!(
        out.stderr.contains(&expected),
        "wanted {expected:?} in\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("RBUILD_MAX_LAYER_SIZE"),
        "{}",
        out.stderr
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    // Under the default limit the same image is fine.
    let out = run(&env, &[], &args).ok();
    assert_eq!(out.stdout.trim(), (64 << 20).to_string(), "{}", out.stderr);
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}
