//! Extra CA certificates (`--ca-cert`, `RBUILD_CA_CERTS`): installed in
//! every step's trust store, as Dagger's engine does for its custom CAs,
//! so that `cargo fetch`, `npm ci` or `pip install` behind a TLS-inspecting
//! proxy trust it without the pipeline mounting anything.
//!
//! For each system bundle the step's image has (Debian, Ubuntu, Alpine,
//! RHEL/Fedora, openSUSE locations), the step gets that bundle with the
//! extra certificates appended, mounted over it for the step only: the
//! image and the step's result are unchanged (nothing enters a layer), and
//! Node.js, which keeps its own roots, is pointed at it
//! (`NODE_EXTRA_CA_CERTS`) unless the step sets that itself. The
//! certificates are a key input by their content, so a step re-runs when a
//! certificate changes, not when only the file naming it moves.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;

/// The system trust bundles, where distributions keep them.
pub const TRUST_BUNDLES: [&str; 4] = [
    // Debian, Ubuntu, Alpine, Arch.
    "/etc/ssl/certs/ca-certificates.crt",
    // RHEL, Fedora, CentOS.
    "/etc/pki/tls/certs/ca-bundle.crt",
    // openSUSE.
    "/etc/ssl/ca-bundle.pem",
    // Alpine's and BSD-style OpenSSL/LibreSSL default.
    "/etc/ssl/cert.pem",
];

/// The certificates to add, read once when the engine starts.
#[derive(Clone, Debug)]
pub struct ExtraCa {
    /// The PEM certificates, concatenated.
    pub pem: Arc<Vec<u8>>,
    /// Where the combined bundles are written (content-addressed).
    pub dir: PathBuf,
}

impl ExtraCa {
    /// Reads `files` (PEM); None when there are none. Errors name the file.
    pub fn read(files: &[PathBuf], dir: &Path) -> Result<Option<ExtraCa>, String> {
        if files.is_empty() {
            return Ok(None);
        }
        let mut pem = Vec::new();
        for f in files {
            let text = std::fs::read(f).map_err(|e| {
                format!(
                    "CA certificate {} (--ca-cert, RBUILD_CA_CERTS): cannot read it: {e}",
                    f.display()
                )
            })?;
            if !text
                .windows(27)
                .any(|w| w == b"-----BEGIN CERTIFICATE-----")
            {
                return Err(format!(
                    "CA certificate {} (--ca-cert, RBUILD_CA_CERTS) holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    f.display()
                ));
            }
            pem.extend_from_slice(&text);
            if !pem.ends_with(b"\n") {
                pem.push(b'\n');
            }
        }
        Ok(Some(ExtraCa {
            pem: Arc::new(pem),
            dir: dir.to_path_buf(),
        }))
    }
}

/// The target of a plan's [`MountSpec::Ca`]: it mounts at the bundles the
/// step's root filesystem has, found when the step runs ([`Solver::ca_mounts`]).
pub const CA_MOUNT: &str = "";

impl<W: Worker> Solver<W> {
    /// Adds the extra certificates to `plan`'s trust store (see the module).
    ///
    /// In the key: the certificates' content. Which bundles the root
    /// filesystem has, and what they hold, is already in the key (the
    /// parent's identity), so nothing is read from it until the step runs:
    /// a fresh runner answering the step from the remote cache need not
    /// fetch its image to plan it.
    pub(super) async fn install_ca(
        self: &Arc<Self>,
        rootfs: &Tree,
        plan: &mut ExecPlan,
    ) -> Result<(), SolveError> {
        let Some(ca) = &self.extra_ca else {
            return Ok(());
        };
        if matches!(rootfs, Tree::Empty) {
            return Ok(());
        }
        plan.mounts
            .push((CA_MOUNT.to_string(), MountSpec::Ca(ca.clone())));
        Ok(())
    }

    /// For a step that runs: each system bundle its root filesystem (the
    /// snapshot `parent`) has, with the extra certificates appended, to be
    /// mounted over it; and `NODE_EXTRA_CA_CERTS` (pointing at the first),
    /// unless the step sets that itself.
    pub(super) async fn ca_mounts(
        self: &Arc<Self>,
        exec: &ExecPlan,
        parent: Option<&SnapshotId>,
    ) -> Result<(Vec<MountRequest>, Option<String>), SolveError> {
        let Some(ca) = exec.mounts.iter().find_map(|(_, m)| match m {
            MountSpec::Ca(ca) => Some(ca),
            _ => None,
        }) else {
            return Ok((Vec::new(), None));
        };
        let mut mounts = Vec::new();
        let mut first = None;
        for bundle in TRUST_BUNDLES {
            // A bundle the pipeline mounts itself is its own business.
            if exec.mounts.iter().any(|(t, _)| t == bundle) {
                continue;
            }
            let source = Source::Snapshot {
                snapshot: parent.cloned(),
                path: bundle.to_string(),
            };
            let Ok(ReadAnswer::Bytes(base)) = self.worker.read(source, ReadOp::Contents).await
            else {
                continue;
            };
            let mut combined = base;
            if !combined.is_empty() && !combined.ends_with(b"\n") {
                combined.push(b'\n');
            }
            combined.extend_from_slice(&ca.pem);
            let file = write_bundle(&ca.dir, &combined)?;
            let listing = self.host_file(&file.display().to_string()).await?;
            let name = listing.entries[0].rel.clone();
            mounts.push(MountRequest::Snapshot {
                target: bundle.to_string(),
                snapshot: self.materialize(&Tree::Host(listing)).await?,
                path: format!("/{name}"),
                file: true,
            });
            first.get_or_insert(bundle);
        }
        let node = first
            .filter(|_| !exec.env.iter().any(|(n, _)| n == "NODE_EXTRA_CA_CERTS"))
            .map(|b| format!("NODE_EXTRA_CA_CERTS={b}"));
        Ok((mounts, node))
    }
}

/// Writes a combined bundle under `dir`, named by its content (written
/// once; a concurrent writer's copy is the same bytes).
fn write_bundle(dir: &Path, bytes: &[u8]) -> Result<PathBuf, SolveError> {
    let io = |e: std::io::Error| {
        SolveError::Internal(format!("write a CA bundle in {}: {e}", dir.display()))
    };
    let path = dir.join(format!("{}.pem", &blake3::hash(bytes).to_hex()[..32]));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(".tmp-{}", rbuild_snapshotter::unique_suffix()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_certificates_are_checked_when_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ExtraCa::read(&[], dir.path()).unwrap().is_none());
        let good = dir.path().join("corp.crt");
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
        )
        .unwrap();
        let ca = ExtraCa::read(std::slice::from_ref(&good), dir.path())
            .unwrap()
            .unwrap();
        assert!(ca.pem.ends_with(b"-----END CERTIFICATE-----\n"));
        let bad = dir.path().join("key.pem");
        std::fs::write(&bad, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let e = ExtraCa::read(&[good, bad.clone()], dir.path()).unwrap_err();
        assert!(
            e.contains(&bad.display().to_string()) && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = ExtraCa::read(&[dir.path().join("missing.crt")], dir.path()).unwrap_err();
        assert!(e.contains("cannot read it"), "{e}");
    }

    #[test]
    fn a_bundle_is_named_by_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_bundle(dir.path(), b"one").unwrap();
        assert_eq!(a, write_bundle(dir.path(), b"one").unwrap());
        assert_ne!(a, write_bundle(dir.path(), b"two").unwrap());
    }
}
