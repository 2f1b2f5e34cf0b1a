//! Plants secret values, uses them every way the API allows (environment,
//! mounted files, `cmd:`, `set_secret`; printed whole and in pieces, in a
//! failing step), then searches everything rbuild wrote for them: its state
//! root (index, WAL, volumes, compiled pipelines), containerd's snapshots,
//! the logs and the progress output.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Files under `dir` whose bytes contain `needle`.
fn grep(dir: &Path, needle: &str) -> Vec<String> {
    let out = Command::new("grep")
        .args(["-r", "-l", "-a", "-F", needle])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
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

    let out = env
        .command()
        .env("RBUILD_TEST_SECRET", &env_value)
        .env("RBUILD_LOG", "debug")
        .arg("run")
        .arg(repo_root().join("fixtures/pipelines/api.rs"))
        .arg("--")
        .args(["secrets", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("token=***"),
        "the step did use the secret: {stdout}"
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
        let snapshots =
            Path::new("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots");
        let in_snapshots = grep(snapshots, value);
        assert!(
            in_snapshots.is_empty(),
            "{value} in a snapshot: {in_snapshots:?}"
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
