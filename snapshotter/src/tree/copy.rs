//! Copies into mounted snapshots: a scanned host listing (checked against
//! its scan while it is copied), or a tree from one mounted snapshot to
//! another, keeping modes, owners, symlinks, device nodes and mtimes.
//!
//! Callers resolve destinations first (`crate::confine`); this module
//! never writes through what is at a destination, it replaces it.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::filter::CopyFilter;
use super::par_for_each;
use super::scan::{EntryKind, HostEntry, HostListing, StatKey};
use crate::Error;

/// Makes the directories of `path` below `root` exist (mode 0755, root-owned).
pub fn make_parents(root: &Path, path: &Path) -> Result<(), Error> {
    if let Some(parent) = path.parent()
        && parent.starts_with(root)
    {
        fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
    }
    Ok(())
}

/// Removes whatever is at `path` (file, symlink or whole directory).
pub fn remove_path(path: &Path) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("stat", path, e)),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(|e| Error::io("remove", path, e)),
        Ok(_) => fs::remove_file(path).map_err(|e| Error::io("remove", path, e)),
    }
}

/// Copies a scanned host listing to `dest` (a directory in a mounted
/// snapshot), owned by `owner` (uid, gid). Each file is checked against its
/// scanned stat key after copying, so content that changed during the copy
/// is an error rather than a wrongly keyed result.
pub fn copy_listing(listing: &HostListing, dest: &Path, owner: (u32, u32)) -> Result<u64, Error> {
    fs::create_dir_all(dest).map_err(|e| Error::io("create directory", dest, e))?;
    // Directories first (parents before children), then files and symlinks
    // in parallel: creating files is what a cold import spends its time on.
    let (dirs, leaves): (Vec<&HostEntry>, Vec<&HostEntry>) = listing
        .entries
        .iter()
        .partition(|e| e.kind == EntryKind::Dir);
    for e in &dirs {
        let dst = dest.join(&e.rel);
        match fs::symlink_metadata(&dst) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&dst).map_err(|err| Error::io("replace", &dst, err))?;
                fs::create_dir(&dst).map_err(|err| Error::io("create directory", &dst, err))?;
            }
            Err(_) => {
                fs::create_dir(&dst).map_err(|err| Error::io("create directory", &dst, err))?
            }
        }
        lchown(&dst, owner.0, owner.1).map_err(|err| Error::io("chown", &dst, err))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(e.mode))
            .map_err(|err| Error::io("chmod", &dst, err))?;
    }
    let bytes = std::sync::atomic::AtomicU64::new(0);
    par_for_each(&leaves, |e| {
        let src = listing.root.join(&e.rel);
        let dst = dest.join(&e.rel);
        // Never write through whatever is there (it could be a symlink out of the tree).
        remove_if_not_dir(&dst)?;
        match &e.kind {
            EntryKind::File { size, .. } => {
                fs::copy(&src, &dst).map_err(|err| Error::io("copy", &src, err))?;
                let now = fs::symlink_metadata(&src).map_err(|err| Error::io("stat", &src, err))?;
                if StatKey::of(&now) != e.stat {
                    return Err(Error::io(
                        "import",
                        &src,
                        std::io::Error::other(
                            "the file changed while it was being imported; run again",
                        ),
                    ));
                }
                bytes.fetch_add(*size, std::sync::atomic::Ordering::Relaxed);
                lchown(&dst, owner.0, owner.1).map_err(|err| Error::io("chown", &dst, err))?;
                // fs::copy set the permission bits; chown cleared set-id bits.
                if e.mode & 0o7000 != 0 {
                    fs::set_permissions(&dst, fs::Permissions::from_mode(e.mode))
                        .map_err(|err| Error::io("chmod", &dst, err))?;
                }
                set_mtime(&dst, e.mtime.0, e.mtime.1)
                    .map_err(|err| Error::io("set mtime", &dst, err))
            }
            EntryKind::Symlink { target } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &dst)
                    .map_err(|err| Error::io("create symlink", &dst, err))?;
                lchown(&dst, owner.0, owner.1).map_err(|err| Error::io("chown", &dst, err))?;
                let _ = set_mtime(&dst, e.mtime.0, e.mtime.1);
                Ok(())
            }
            EntryKind::Dir => Ok(()),
        }
    })?;
    // Directory mtimes last: creating their children changed them.
    for e in dirs.iter().rev() {
        let _ = set_mtime(&dest.join(&e.rel), e.mtime.0, e.mtime.1);
    }
    Ok(bytes.into_inner())
}

fn remove_if_not_dir(p: &Path) -> Result<(), Error> {
    match fs::symlink_metadata(p) {
        Ok(m) if !m.is_dir() => fs::remove_file(p).map_err(|e| Error::io("replace", p, e)),
        Ok(_) => remove_path(p),
        Err(_) => Ok(()),
    }
}

/// Copies the tree at `src` (file, symlink or directory) to `dst`,
/// preserving modes, owners (unless `owner` is given), symlinks and mtimes;
/// directories merge into existing ones. Returns the bytes copied.
pub fn copy_tree(
    src: &Path,
    dst: &Path,
    filter: &CopyFilter,
    owner: Option<(u32, u32)>,
) -> Result<u64, Error> {
    let m = fs::symlink_metadata(src).map_err(|e| Error::io("read", src, e))?;
    let mut bytes = 0;
    copy_node(src, dst, &m, Path::new(""), filter, owner, &mut bytes)?;
    Ok(bytes)
}

fn copy_node(
    src: &Path,
    dst: &Path,
    m: &fs::Metadata,
    rel: &Path,
    filter: &CopyFilter,
    owner: Option<(u32, u32)>,
    bytes: &mut u64,
) -> Result<(), Error> {
    let ft = m.file_type();
    if let Some(f) = &filter.matchers
        && !rel.as_os_str().is_empty()
        && f.excluded(rel, ft.is_dir())
    {
        return Ok(());
    }
    let (uid, gid) = owner.unwrap_or((m.uid(), m.gid()));
    if ft.is_dir() {
        match fs::symlink_metadata(dst) {
            Ok(d) if d.is_dir() => {}
            Ok(_) => {
                fs::remove_file(dst).map_err(|e| Error::io("replace", dst, e))?;
                fs::create_dir(dst).map_err(|e| Error::io("create directory", dst, e))?;
            }
            Err(_) => fs::create_dir(dst).map_err(|e| Error::io("create directory", dst, e))?,
        }
        let mut names: Vec<_> = fs::read_dir(src)
            .map_err(|e| Error::io("list", src, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for name in names {
            let s = src.join(&name);
            let cm = fs::symlink_metadata(&s).map_err(|e| Error::io("stat", &s, e))?;
            copy_node(
                &s,
                &dst.join(&name),
                &cm,
                &rel.join(&name),
                filter,
                owner,
                bytes,
            )?;
        }
        // An include filter keeps a directory only if something in it was kept.
        if let Some(f) = &filter.matchers
            && f.include.is_some()
            && !rel.as_os_str().is_empty()
            && !f.included(rel, true)
            && fs::read_dir(dst)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false)
        {
            let _ = fs::remove_dir(dst);
            return Ok(());
        }
    } else {
        if let Some(f) = &filter.matchers
            && !f.included(rel, false)
        {
            return Ok(());
        }
        remove_if_not_dir(dst)?;
        if ft.is_symlink() {
            let target = fs::read_link(src).map_err(|e| Error::io("read symlink", src, e))?;
            std::os::unix::fs::symlink(&target, dst)
                .map_err(|e| Error::io("create symlink", dst, e))?;
        } else if ft.is_file() {
            *bytes += fs::copy(src, dst).map_err(|e| Error::io("copy", src, e))?;
        } else {
            // Devices, FIFOs, sockets: recreate the node.
            rustix::fs::mknodat(
                rustix::fs::CWD,
                dst,
                rustix::fs::FileType::from_raw_mode(m.mode()),
                rustix::fs::Mode::from_raw_mode(m.mode()),
                m.rdev(),
            )
            .map_err(|e| Error::io("create node", dst, e.into()))?;
        }
    }
    lchown(dst, uid, gid).map_err(|e| Error::io("chown", dst, e))?;
    if !ft.is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(|e| Error::io("chmod", dst, e))?;
    }
    let _ = set_mtime(dst, m.mtime(), m.mtime_nsec());
    Ok(())
}

/// Sets a path's mtime (and atime) without following symlinks.
fn set_mtime(path: &Path, sec: i64, nsec: i64) -> std::io::Result<()> {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

fn lchown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;
    use std::process::Command;

    use super::*;

    #[test]
    fn copied_nodes_and_symlinks_keep_their_kind_mode_and_mtime() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir(&src).unwrap();
        let fifo = src.join("fifo");
        assert!(
            Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        fs::set_permissions(&fifo, fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("fifo", src.join("link")).unwrap();
        for (p, t) in [(&fifo, 1_000_000_000), (&src.join("link"), 1_000_000_007)] {
            set_mtime(p, t, 5).unwrap();
        }
        let dst = d.path().join("dst");
        copy_tree(&src, &dst, &CopyFilter::all(), None).unwrap();
        let m = fs::symlink_metadata(dst.join("fifo")).unwrap();
        assert!(m.file_type().is_fifo());
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000_000, 5));
        let l = fs::symlink_metadata(dst.join("link")).unwrap();
        assert!(l.file_type().is_symlink(), "the symlink is not followed");
        assert_eq!((l.mtime(), l.mtime_nsec()), (1_000_000_007, 5));
    }
}
