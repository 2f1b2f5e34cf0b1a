//! The mount points runc creates in a step's upper directory for mounts
//! whose targets were not in the image, removed so that they do not end up
//! in the step's result.
//!
//! Only empty files and directories that no lower layer has are removed;
//! anything the step wrote stays.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Error;

/// Removes the mount points runc created in a step's upper directory for
/// mounts that did not exist in the image (an empty file or directory, and
/// the empty parents made for it), so they do not end up in the result.
pub fn remove_mount_stubs(
    upper: &Path,
    lowers: &[PathBuf],
    targets: &[String],
) -> Result<(), Error> {
    for target in targets {
        let rel = target.trim_start_matches('/');
        if rel.is_empty() {
            continue;
        }
        let mut cur = rel.to_string();
        loop {
            let in_lower = lowers
                .iter()
                .any(|l| fs::symlink_metadata(l.join(&cur)).is_ok());
            if in_lower {
                break;
            }
            let p = upper.join(&cur);
            let Ok(m) = fs::symlink_metadata(&p) else {
                break;
            };
            let empty = if m.is_dir() {
                fs::read_dir(&p)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false)
            } else {
                m.is_file() && m.len() == 0
            };
            if !empty {
                break;
            }
            if m.is_dir() {
                fs::remove_dir(&p).map_err(|e| Error::io("remove mount point", &p, e))?;
            } else {
                fs::remove_file(&p).map_err(|e| Error::io("remove mount point", &p, e))?;
            }
            match cur.rsplit_once('/') {
                Some((parent, _)) => cur = parent.to_string(),
                None => break,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_stubs_are_removed_but_real_content_stays() {
        let upper = tempfile::tempdir().unwrap();
        let lower = tempfile::tempdir().unwrap();
        fs::create_dir_all(lower.path().join("run")).unwrap();
        // runc made /run/secrets/token (file) and /cache (dir) as mount points.
        fs::create_dir_all(upper.path().join("run/secrets")).unwrap();
        fs::write(upper.path().join("run/secrets/token"), "").unwrap();
        fs::create_dir_all(upper.path().join("cache")).unwrap();
        // The step wrote a real file next to one stub.
        fs::create_dir_all(upper.path().join("data")).unwrap();
        fs::write(upper.path().join("data/kept"), "x").unwrap();
        fs::create_dir_all(upper.path().join("data/mnt")).unwrap();
        remove_mount_stubs(
            upper.path(),
            &[lower.path().to_path_buf()],
            &[
                "/run/secrets/token".into(),
                "/cache".into(),
                "/data/mnt".into(),
            ],
        )
        .unwrap();
        assert!(!upper.path().join("run/secrets").exists());
        assert!(!upper.path().join("cache").exists());
        assert!(!upper.path().join("data/mnt").exists());
        assert!(upper.path().join("data/kept").exists());
    }
}
