//! The mount points runc creates in a step's upper directory for mounts
//! whose targets were not in the image, removed so that they do not end up
//! in the step's result.
//!
//! Only empty files and directories that no lower layer has are removed;
//! anything the step wrote stays.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use rustix::fs::FileType;

use crate::Error;
use crate::confine::Dir;

/// Removes the mount points runc created in a step's upper directory for
/// mounts that did not exist in the image (an empty file or directory, and
/// the empty parents made for it), so they do not end up in the result.
///
/// The upper directory is the step's own writing: every path in it is
/// reached with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a
/// symlink the step put where a mount point was (`/cache -> /`) stops the
/// walk instead of leading it to the host.
pub fn remove_mount_stubs(
    upper: &Path,
    lowers: &[PathBuf],
    targets: &[String],
) -> Result<(), Error> {
    let upper_dir = Dir::open_host(upper)?;
    let lower_dirs: Vec<Dir> = lowers
        .iter()
        .filter_map(|l| Dir::open_host(l).ok())
        .collect();
    let exists_in = |d: &Dir, cur: &str| -> Result<bool, Error> {
        let (dir, name) = split(cur);
        Ok(d.open_beneath(dir)?.is_some_and(|p| p.kind(name).is_some()))
    };
    for target in targets {
        let rel = target.trim_start_matches('/');
        if rel.is_empty() {
            continue;
        }
        let mut cur = rel.to_string();
        loop {
            let mut in_lower = false;
            for l in &lower_dirs {
                in_lower |= exists_in(l, &cur)?;
            }
            if in_lower {
                break;
            }
            let (dir, name) = split(&cur);
            let Some(parent) = upper_dir.open_beneath(dir)? else {
                break;
            };
            let Some(st) = parent.stat(name) else {
                break;
            };
            let empty = match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => parent
                    .subdir(name, false)
                    .and_then(|d| d.names())
                    .map(|n| n.is_empty())
                    .unwrap_or(false),
                FileType::RegularFile => st.st_size == 0,
                _ => false,
            };
            if !empty {
                break;
            }
            parent.remove(name).map_err(|e| match e {
                Error::Io { path, source, .. } => Error::Io {
                    op: "remove mount point",
                    path,
                    source,
                },
                other => other,
            })?;
            match cur.rsplit_once('/') {
                Some((p, _)) => cur = p.to_string(),
                None => break,
            }
        }
    }
    Ok(())
}

/// The directory part of a `/`-separated relative path and its last name.
fn split(rel: &str) -> (&Path, &OsStr) {
    match rel.rsplit_once('/') {
        Some((dir, name)) => (Path::new(dir), OsStr::new(name)),
        None => (Path::new(""), OsStr::new(rel)),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

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

    #[test]
    fn a_symlink_where_a_mount_point_was_is_not_followed_to_the_host() {
        let upper = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        // Empty host entries that look just like stubs, if reached.
        fs::create_dir_all(host.path().join("dir/empty")).unwrap();
        fs::write(host.path().join("dir/x"), "").unwrap();
        let u = upper.path();
        let dir = host.path().join("dir");
        // The step replaced its mount points' parents with symlinks: an
        // absolute one, a `..` chain, and a chain of 41 links.
        std::os::unix::fs::symlink(&dir, u.join("abs")).unwrap();
        std::os::unix::fs::symlink(
            format!("{}{}", "../".repeat(10), dir.display()),
            u.join("up"),
        )
        .unwrap();
        for i in 0..41 {
            let to = if i == 40 {
                dir.display().to_string()
            } else {
                format!("l{}", i + 1)
            };
            std::os::unix::fs::symlink(to, u.join(format!("l{i}"))).unwrap();
        }
        let targets: Vec<String> = ["abs", "up", "l0"]
            .iter()
            .flat_map(|p| [format!("/{p}/x"), format!("/{p}/empty")])
            .collect();
        remove_mount_stubs(u, &[], &targets).unwrap();
        assert!(host.path().join("dir/x").exists(), "host file removed");
        assert!(
            host.path().join("dir/empty").exists(),
            "host directory removed"
        );
        // The symlinks themselves are the step's content: kept.
        for p in ["abs", "up", "l0", "l40"] {
            assert!(u.join(p).is_symlink(), "{p}");
        }
    }
}
