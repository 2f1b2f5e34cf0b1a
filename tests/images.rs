//! Images out, checked with the real consumers: the registry (skopeo), ctr,
//! and Debian's docker (dockerd started by `make setup`).

mod common;

use std::process::Command;

use common::*;

const DOCKER_HOST: &str = "unix:///run/rbuild-fixtures/docker.sock";

fn images(env: &TestEnv, args: &[&str]) -> Outcome {
    env.run(&repo_root().join("fixtures/pipelines/images.rs"), args)
}

/// A repository name of this test run, so that "first push" really is one.
fn published(out: &Outcome) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("published: "))
        .unwrap_or_else(|| panic!("no published line: {}\n{}", out.stdout, out.stderr))
        .to_string()
}

fn run(cmd: &str, args: &[&str]) -> String {
    stdout_of(Command::new(cmd).args(args).env("DOCKER_HOST", DOCKER_HOST))
}

fn skopeo(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["inspect", "--tls-verify=false"];
    all.extend_from_slice(args);
    serde_json::from_str(&run("skopeo", &all)).unwrap()
}

#[test]
fn a_published_image_has_its_config_and_runs_under_ctr() {
    let env = TestEnv::new("publish");
    let target = repo("app");
    let first = images(&env, &["publish", &target]).ok();
    let reference = published(&first);
    assert!(
        reference.starts_with(&format!("{target}@sha256:")),
        "{reference}"
    );
    assert!(first.stderr.contains("uploaded"), "{}", first.stderr);

    let config = skopeo(&["--config", &format!("docker://{target}")]);
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["hello"]));
    assert_eq!(c["Cmd"], serde_json::json!(["world"]));
    assert_eq!(c["WorkingDir"], "/srv");
    assert!(
        c["Env"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("GREETING=hello"))
    );
    assert_eq!(
        c["Labels"]["org.opencontainers.image.title"],
        "rbuild-test-app"
    );
    assert!(c["ExposedPorts"].get("8080/tcp").is_some());
    assert_eq!(
        config["created"], "1970-01-01T00:00:00Z",
        "reproducible by default"
    );
    let history = config["history"].as_array().unwrap();
    assert!(
        history
            .iter()
            .any(|h| h["created_by"] == "write /usr/local/bin/hello")
    );

    env.ctr(&["images", "pull", "--plain-http", &target]);
    let id = format!("publish-{}", std::process::id());
    assert_eq!(
        env.ctr(&["run", "--rm", &target, &id]),
        "hello world from /srv as 0\n"
    );

    // The same pipeline again: the same digest, and no layer uploaded.
    let second = images(&env, &["publish", &target]).ok();
    assert_eq!(published(&second), reference);
    assert!(!second.stderr.contains("uploaded"), "{}", second.stderr);
    assert_eq!(
        second.stderr.matches("already present").count(),
        4,
        "{}",
        second.stderr
    );
}

#[test]
fn the_same_pipeline_publishes_the_same_digest_from_a_cold_cache() {
    // Two state roots and namespaces: every step runs again, at other times.
    let a = TestEnv::new("repro-a");
    let b = TestEnv::new("repro-b");
    let target = repo("repro");
    let da = published(&images(&a, &["publish", &target]).ok());
    let db = published(&images(&b, &["publish", &target]).ok());
    assert_eq!(
        da, db,
        "epoch timestamps: the digest depends on content only"
    );
    let real = published(&images(&a, &["publish", &target, "real-time"]).ok());
    assert_ne!(real, da, "real timestamps are another image");
}

#[test]
fn exported_tarballs_load_in_docker_ctr_and_skopeo() {
    let env = TestEnv::new("export");
    let tar = env.dir.path().join("app.tar");
    let name = format!("rbuild-test/app:{}", std::process::id());
    let out = images(&env, &["export", tar.to_str().unwrap(), &name]).ok();
    assert!(out.stdout.contains("exported: "), "{}", out.stdout);

    let loaded = run("/usr/bin/docker", &["load", "-i", tar.to_str().unwrap()]);
    assert!(loaded.contains(&name), "{loaded}");
    let ran = run("/usr/bin/docker", &["run", "--rm", "--network=none", &name]);
    run("/usr/bin/docker", &["rmi", &name]);
    assert_eq!(ran, "hello world from /srv as 0\n");

    env.ctr(&["images", "import", tar.to_str().unwrap()]);
    let id = format!("export-{}", std::process::id());
    assert_eq!(
        env.ctr(&["run", "--rm", &name, &id, "hello", "imported"]),
        "hello imported from /srv as 0\n"
    );

    let inspected = skopeo(&[&format!("oci-archive:{}", tar.display())]);
    assert_eq!(
        inspected["Labels"]["org.opencontainers.image.title"],
        "rbuild-test-app"
    );
    // And back into rbuild.
    let back = images(&env, &["import", tar.to_str().unwrap()]).ok();
    assert!(
        back.stdout.contains("imported: hello again from /srv as 0"),
        "{}",
        back.stdout
    );
    assert!(
        back.stdout.contains("config: hello world from /srv as 0"),
        "{}",
        back.stdout
    );
}

#[test]
fn as_tarball_round_trips_through_import() {
    let env = TestEnv::new("tarball");
    let out = images(&env, &["tarball"]).ok();
    assert!(
        out.stdout.contains("roundtrip: hello back from /srv as 0"),
        "{}",
        out.stdout
    );
    let size: u64 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("tarball_size: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(size > 1_000_000, "base layer included: {size}");
}

#[test]
fn a_multi_stage_image_is_the_slim_base_plus_one_layer() {
    let env = TestEnv::new("multistage");
    let base = skopeo(&[&format!("docker://{BUSYBOX}")]);
    let base_layers = base["Layers"].as_array().unwrap().clone();
    let target = repo("slim");
    images(&env, &["multistage", &target]).ok();
    let slim = skopeo(&[&format!("docker://{target}")]);
    let layers = slim["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), base_layers.len() + 1, "{slim}");
    assert_eq!(&layers[..base_layers.len()], &base_layers[..]);
    // The builder's 100 kB of junk is not in the image.
    let sizes = skopeo(&["--raw", &format!("docker://{target}")]);
    let top = sizes["layers"].as_array().unwrap().last().unwrap()["size"]
        .as_i64()
        .unwrap();
    assert!(
        top < 10_000,
        "the added layer holds one small file: {top} bytes"
    );
}

#[test]
fn media_types_and_compression_on_request() {
    let env = TestEnv::new("formats");
    let docker = repo("docker");
    images(&env, &["publish", &docker, "docker"]).ok();
    let raw = skopeo(&["--raw", &format!("docker://{docker}")]);
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert!(
        raw["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip")
    );
    let zstd = repo("zstd");
    images(&env, &["publish", &zstd, "zstd"]).ok();
    let raw = skopeo(&["--raw", &format!("docker://{zstd}")]);
    assert_eq!(
        raw["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        raw["layers"].as_array().unwrap().last().unwrap()["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    env.ctr(&["images", "pull", "--plain-http", &zstd]);
    let id = format!("zstd-{}", std::process::id());
    assert_eq!(
        env.ctr(&["run", "--rm", &zstd, &id]),
        "hello world from /srv as 0\n"
    );
}

#[test]
fn pushing_to_the_auth_registry_needs_credentials() {
    let env = TestEnv::new("pushauth");
    let target = repo("app").replace(REGISTRY, AUTH_REGISTRY);
    let ok = images(&env, &["auth", &target, "rbuild", "rbuild-pass"]).ok();
    assert!(published(&ok).starts_with(&target));
    let denied = images(&env, &["publish", &target]);
    assert_ne!(denied.code, 0);
    assert!(
        denied.stderr.contains(&format!(
            "registry {AUTH_REGISTRY} denied pushing {target}: no credentials were found"
        )),
        "{}",
        denied.stderr
    );
    // A credential for the registry host, or a repository prefix in it,
    // covers the push (Docker's and Dagger's addresses).
    let prefix = target.rsplit_once('/').unwrap().0;
    for address in [AUTH_REGISTRY, prefix] {
        let ok = images(&env, &["auth", &target, "rbuild", "rbuild-pass", address]);
        assert!(published(&ok.ok()).starts_with(&target), "{address}");
    }
    // One that covers nothing pushed: under API 0.1 a warning naming it
    // (and the push goes on without it); from 0.3 on, an error.
    let elsewhere = "127.0.0.1:5999";
    let warned = images(&env, &["auth", &target, "rbuild", "rbuild-pass", elsewhere]);
    assert_ne!(warned.code, 0);
    assert!(
        warned.stderr.contains(&format!(
            "warning: with_registry_auth(\"{elsewhere}\") covers nothing this publish pushes to"
        )),
        "{}",
        warned.stderr
    );
    let text = std::fs::read_to_string(repo_root().join("fixtures/pipelines/images.rs")).unwrap();
    let declared = env.dir.path().join("images-0.3.rs");
    std::fs::write(
        &declared,
        format!("//! ```cargo\n//! [package.metadata.rbuild]\n//! api = \"0.3\"\n//! ```\n{text}"),
    )
    .unwrap();
    let refused = env.run(
        &declared,
        &["auth", &target, "rbuild", "rbuild-pass", elsewhere],
    );
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains(&format!(
            "with_registry_auth(\"{elsewhere}\") covers nothing this publish pushes to: {target} is repository"
        )) && !refused.stderr.contains("warning: with_registry_auth"),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stderr.contains(&format!(" publish {target}")),
        "nothing was pushed: {}",
        refused.stderr
    );
    let wrong = images(&env, &["auth", &target, "rbuild", "wrong-password"]);
    assert_ne!(wrong.code, 0);
    assert!(wrong.stderr.contains("were refused"), "{}", wrong.stderr);
    assert!(
        !wrong.stderr.contains("wrong-password"),
        "the password never shows"
    );
}

/// Builds the layered test image (fixtures/layered_image.py, `nonce` in
/// /data/nonce.txt) and pushes it to the test registry as `repo(name)`.
fn push_layered_image(name: &str, nonce: &str) -> String {
    let layout = tempfile::tempdir().unwrap();
    run(
        "python3",
        &[
            repo_root()
                .join("fixtures/layered_image.py")
                .to_str()
                .unwrap(),
            layout.path().to_str().unwrap(),
            nonce,
        ],
    );
    let image = repo(name);
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--insecure-policy",
            "--dest-tls-verify=false",
            &format!("oci:{}:layers", layout.path().display()),
            &format!("docker://{image}"),
        ],
    );
    image
}

/// What `sh -c list` prints in `image` pulled and run by containerd itself
/// (`ctr images pull`, `ctr run`), in a namespace of its own.
fn containerd_sees(env: &TestEnv, image: &str, list: &str) -> String {
    let ns = format!("{}-ctr", env.namespace);
    remove_namespace(&ns);
    let pulled = Command::new("ctr")
        .args(["-n", &ns, "images", "pull", "--plain-http", image])
        .output()
        .unwrap();
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let theirs = Command::new("ctr")
        .args([
            "-n",
            &ns,
            "run",
            "--rm",
            image,
            "containerd-sees",
            "sh",
            "-c",
            list,
        ])
        .output()
        .unwrap();
    remove_namespace(&ns);
    String::from_utf8_lossy(&theirs.stdout).into_owned()
}

/// `seen`, a `find | xargs stat` listing, has a line starting with each of
/// `present` and no entry for any path of `absent`.
fn assert_listing(seen: &str, present: &[&str], absent: &[&str]) {
    for want in present {
        assert!(seen.contains(want), "{want:?} not in\n{seen}");
    }
    for gone in absent {
        assert!(
            !seen.contains(&format!("{gone} ")),
            "{gone} still there:\n{seen}"
        );
    }
}

/// Layers with whiteouts, an opaque directory, a directory the layer only
/// writes into, a file turned directory, hard and symbolic links, a device,
/// a FIFO, set-uid and owners (fixtures/layered_image.py): rbuild unpacks
/// them while they download, and the tree a step sees is the one containerd's
/// own pull (`ctr images pull`, `ctr run`) gives.
#[test]
fn layers_unpack_as_containerd_unpacks_them() {
    let env = TestEnv::new("layers");
    let nonce = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let image = push_layered_image("layers", &nonce);
    let list = "find /data /deep /bin | sort | xargs stat -c '%n %F %a %u:%g %s %h %t:%T %N'; \
                find /data /deep ! -type d | sort | xargs stat -c '%n %Y'; cat /data/nonce.txt";
    let out = env
        .steps(&[
            &format!("from={image}"),
            &format!("exec={list}"),
            "print=stdout",
        ])
        .ok();
    assert!(
        out.stderr.contains("2 of 2 layers fetched") && out.stderr.contains("2 unpacked"),
        "{}",
        out.stderr
    );
    let seen = out.stdout;
    assert_listing(
        &seen,
        &[
            "/data/keep directory 700 1000:1000 ",
            "/data/keep/new.txt regular file 600 1000:1000 9 1 ",
            "/data/keep/old.txt regular file 644 1000:1000 4 1 ",
            "/data/opaque/new.txt regular file",
            "/data/replace/inner.txt regular file",
            "/data/setuid regular file 4755 1000:1000 ",
            "/data/hard1 regular file 640 0:0 10 2 ",
            "/data/null character special file 666 0:0 0 1 1:3 ",
            "/data/fifo fifo 600 ",
            "/data/sym symbolic link 777 1000:1000 14 1 0:0 '/data/sym' -> '../bin/busybox'",
            "/deep/new/dir/file.txt regular file 644 0:0 5 1 ",
            "/data/nonce.txt 1700000000\n",
        ],
        &[
            "/data/gone.txt",
            "/data/gone-dir",
            "/data/opaque/a.txt",
            "/data/opaque/sub",
        ],
    );
    assert!(seen.ends_with(&format!("{nonce}\n")), "{seen}");

    // Another namespace: containerd shares the blobs already on disk, so
    // the layers are unpacked from its content store instead of the registry.
    let again = TestEnv::new("layers-again");
    let out = again
        .steps(&[
            &format!("from={image}"),
            &format!("exec={list}"),
            "print=stdout",
        ])
        .ok();
    assert!(out.stderr.contains("2 unpacked"), "{}", out.stderr);
    assert_eq!(out.stdout, seen);
    assert!(again.leftovers().is_empty(), "{:?}", again.leftovers());
    assert_eq!(seen, containerd_sees(&env, &image, list));
}

/// Steps on the layered image of the test above delete base files and
/// directories, recreate a directory (opaque), make hard and symbolic links,
/// a FIFO, set-uid and owners, and delete in one step what an earlier one
/// made. The published image, pulled and run by containerd itself, has the
/// tree the last step saw: the layer rbuild writes from the steps' own
/// overlay directories says exactly what they changed.
#[test]
fn a_published_image_is_the_tree_its_last_step_saw() {
    let env = TestEnv::new("publish-tree");
    let base = push_layered_image("publish-tree-base", "publish-tree");
    let step1 = "rm /data/keep/old.txt && rm -r /data/replace \
                 && mkdir -p /data/made/sub && echo one > /data/made/sub/a.txt \
                 && echo tmp > /data/made/tmp.txt && echo changed > /data/keep/new.txt \
                 && ln /data/made/sub/a.txt /data/made/hard && ln -s ../keep/new.txt /data/made/sym \
                 && mkfifo /data/made/fifo && chmod 4711 /data/made/sub/a.txt \
                 && chown 1000:1000 /data/made/tmp.txt /data/made/sub";
    let step2 = "rm /data/made/tmp.txt && rm -r /data/opaque && mkdir /data/opaque \
                 && echo fresh > /data/opaque/only.txt && mkdir /data/replace \
                 && echo back > /data/replace/x && rm /data/hard2";
    let list = "find /data /deep | sort | xargs stat -c '%n %F %a %u:%g %s %h %t:%T %N'; \
                find /data -type f | sort | xargs cat";
    let target = repo("publish-tree");
    let out = env
        .steps(&[
            &format!("from={base}"),
            &format!("exec={step1}"),
            &format!("exec={step2}"),
            &format!("exec={list}"),
            "print=stdout",
            &format!("publish={target}"),
        ])
        .ok();
    let seen: String = out
        .stdout
        .lines()
        .take_while(|l| !l.starts_with("published: "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_listing(
        &seen,
        &[
            "/data/made/hard regular file 4711 0:0 4 2 ",
            "/data/made/fifo fifo ",
            "/data/opaque/only.txt regular file",
            "/data/replace/x regular file",
        ],
        &[
            "/data/keep/old.txt",
            "/data/made/tmp.txt",
            "/data/opaque/new.txt",
            "/data/replace/inner.txt",
            "/data/hard2",
        ],
    );
    let reference = published(&out);
    assert_eq!(containerd_sees(&env, &reference, list), seen);
}
