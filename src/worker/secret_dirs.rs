//! The RAM directories (`/dev/shm/rbuild-secrets-*`) that hold a step's
//! mounted secrets while it runs. Their names carry the owning process
//! and the namespace (`rbuild-secrets-PID-START-RANDOM-NAMESPACE`), so that
//! after a `kill -9` the next run on the namespace finds the ones whose
//! process is gone and removes them, plaintext and all.

use std::path::{Path, PathBuf};

use rbuild_containerd::Owner;

const SHM: &str = "/dev/shm";
const PREFIX: &str = "rbuild-secrets-";

/// A new directory for one step's secrets; removed when dropped.
pub(super) fn create(namespace: &str) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", Owner::current().file_tag()))
        .suffix(&format!("-{namespace}"))
        .tempdir_in(SHM)
}

/// Directories of `namespace` whose process is gone, with its pid.
pub fn orphans(namespace: &str) -> Vec<(PathBuf, u32)> {
    orphans_in(Path::new(SHM), namespace)
}

fn orphans_in(dir: &Path, namespace: &str) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(tagged) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        let Some((owner, rest)) = Owner::parse_file_tag(tagged) else {
            continue;
        };
        // RANDOM (alphanumeric) - NAMESPACE
        let ours = rest.split_once('-').is_some_and(|(_, ns)| ns == namespace);
        if ours && !owner.is_alive() {
            out.push((entry.path(), owner.pid()));
        }
    }
    out.sort();
    out
}

/// Removes the directories of `namespace` whose process is gone.
pub fn remove_orphans(namespace: &str) -> usize {
    let mut removed = 0;
    for (dir, _) in orphans(namespace) {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "could not remove a dead run's secret directory")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_owners_of_the_namespace_are_orphans() {
        let shm = tempfile::tempdir().unwrap();
        let me = Owner::current().file_tag();
        let pid = std::process::id();
        for name in [
            format!("{PREFIX}{me}-abc123-ns-one"),
            format!("{PREFIX}{pid}-1-abc123-ns-one"),
            format!("{PREFIX}{pid}-1-abc123-ns-two"),
            format!("{PREFIX}abc123"),
            "unrelated".to_string(),
        ] {
            std::fs::create_dir(shm.path().join(name)).unwrap();
        }
        let found = orphans_in(shm.path(), "ns-one");
        assert_eq!(
            found,
            [(
                shm.path().join(format!("{PREFIX}{pid}-1-abc123-ns-one")),
                pid
            )],
            "this process with another start time is a dead one; other namespaces and old names are left alone"
        );
    }
}
