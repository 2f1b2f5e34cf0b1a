//! Plants secret values, uses them every way the API allows (environment,
//! mounted files, `cmd:`, `set_secret`; printed whole and in pieces, in a
//! failing step), then searches everything rbuild wrote for them: its state
//! root (index, WAL, volumes, compiled pipelines), containerd's snapshots,
//! metadata and content store (the layers of an image built from the step,
//! decompressed), that image's tarball, the logs and the progress output.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// containerd's root on the test machine (fixtures/setup.sh runs the
/// system containerd with its default root).
const CONTAINERD_ROOT: &str = "/var/lib/containerd";

/// Files under `dir` whose bytes contain `needle`. `dir` must exist, and
/// grep must have searched it: a file vanishing mid-search (another
/// test's snapshot removed) is the only error let through.
fn grep(dir: &Path, needle: &str) -> Vec<String> {
    assert!(dir.exists(), "{} to search does not exist", dir.display());
    let out = Command::new("grep")
        .args(["-r", "-l", "-a", "-F", needle])
        .arg(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) | Some(1) => {}
        Some(2)
            if stderr
                .lines()
                .all(|l| l.ends_with("No such file or directory")) => {}
        _ => panic!(
            "grep in {} failed: {:?} {stderr}",
            dir.display(),
            out.status
        ),
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// Whether `file`, decompressed if it is gzip (a layer), contains `needle`.
fn blob_contains(file: &Path, needle: &str) -> bool {
    // Content no lease holds any more (a layer the run made for its export)
    // may be collected by containerd between the listing and this look:
    // gone, it holds nothing.
    if !file.exists() {
        return false;
    }
    assert!(file.is_file(), "{} is not a file", file.display());
    let status = Command::new("sh")
        .arg("-c")
        .arg("zcat -f -- \"$1\" | grep -q -a -F -- \"$2\"")
        .arg("sh")
        .arg(file)
        .arg(needle)
        .status()
        .unwrap();
    match status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("searching {} failed: {status:?}", file.display()),
    }
}

#[test]
fn secret_values_appear_nowhere_rbuild_writes() {
    let env = TestEnv::new("leak");
    // Random values, so that nothing else on the machine can match them.
    let nonce = format!("{:016x}", rand_u64());
    let env_value = format!("envleak{nonce}");
    let file_value = format!("fileleak{nonce}");
    let file = env.dir.path().join("secret-source");
    std::fs::write(&file, &file_value).unwrap();
    let image = env.dir.path().join("image.tar");

    let out = env
        .command()
        .env("RBUILD_TEST_SECRET", &env_value)
        .env("RBUILD_LOG", "debug")
        .arg("run")
        .arg(repo_root().join("fixtures/pipelines/api.rs"))
        .arg("--")
        .args(["secrets", file.to_str().unwrap(), image.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("token=***"),
        "the step did use the secret: {stdout}"
    );

    assert!(
        stdout.contains(&format!("image: {}", image.display())),
        "the image was written: {stdout}"
    );
    // What the namespace holds in containerd's content store: at least the
    // exported image's layers, config and manifest.
    let blobs: Vec<_> = env
        .ctr(&["content", "ls", "-q"])
        .lines()
        .map(|digest| {
            let (algo, hex) = digest.split_once(':').expect("a digest");
            Path::new(CONTAINERD_ROOT)
                .join("io.containerd.content.v1.content/blobs")
                .join(algo)
                .join(hex)
        })
        .collect();
    assert!(
        blobs.len() >= 3,
        "the image's blobs are in the content store: {blobs:?}"
    );

    // set_secret's value is fixed in the pipeline; the others are planted here.
    for value in [
        env_value.as_str(),
        file_value.as_str(),
        "set-secret-value-5150",
    ] {
        assert!(!stdout.contains(value), "{value} in the pipeline's output");
        assert!(
            !stderr.contains(value),
            "{value} in progress or logs (RBUILD_LOG=debug)"
        );
        let in_root = grep(&env.root(), value);
        assert!(in_root.is_empty(), "{value} in the state root: {in_root:?}");
        let root = Path::new(CONTAINERD_ROOT);
        let snapshots = root.join("io.containerd.snapshotter.v1.overlayfs/snapshots");
        let in_snapshots = grep(&snapshots, value);
        assert!(
            in_snapshots.is_empty(),
            "{value} in a snapshot: {in_snapshots:?}"
        );
        let meta = root.join("io.containerd.metadata.v1.bolt/meta.db");
        assert!(
            !blob_contains(&meta, value),
            "{value} in containerd's metadata (labels)"
        );
        // The image's layers and config, in the content store and on the host.
        for blob in &blobs {
            assert!(
                !blob_contains(blob, value),
                "{value} in blob {}",
                blob.display()
            );
        }
        assert!(
            !blob_contains(&image, value),
            "{value} in the image tarball"
        );
    }
    // Mounted secrets lived in RAM only and are gone.
    let shm: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("rbuild-secrets-")
        })
        .filter(|e| !grep(&e.path(), &file_value).is_empty())
        .collect();
    assert!(shm.is_empty(), "secret files left in /dev/shm");
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u64::from_le_bytes(b)
}
