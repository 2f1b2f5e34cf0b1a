//! Copies into mounted snapshots and export destinations: a scanned host
//! listing (checked against its scan while it is copied), or a tree from
//! one mounted snapshot to another, keeping modes, owners, symlinks, device
//! nodes and mtimes.
//!
//! Destinations are open directories ([`Dir`], [`Entry`] from
//! `crate::confine`) and every entry below them is written with `*at`
//! calls that do not follow symlinks: whatever is at a destination (a
//! symlink out of the tree, say) is replaced, never written through.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::FileType;

use super::filter::CopyFilter;
use super::par_for_each;
use super::scan::{EntryKind, HostEntry, HostListing, StatKey};
use crate::Error;
use crate::confine::{Dir, Entry};

/// Removes whatever is at `path` (file, symlink or whole directory),
/// following no symlink below `root`.
pub fn remove_path(root: &Path, path: &Path) -> Result<(), Error> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    if path == root || !parent.starts_with(root) {
        return Ok(());
    }
    let rel = parent.strip_prefix(root).unwrap_or(Path::new(""));
    match Dir::open_host(root)?.open_beneath(rel)? {
        Some(dir) => dir.remove(name),
        // Nothing there (or not reachable without a symlink): nothing to remove.
        None => Ok(()),
    }
}

/// The directory of `rel` (a `/`-separated relative path) and its name.
fn split_rel(rel: &str) -> (&Path, &OsStr) {
    match rel.rsplit_once('/') {
        Some((dir, name)) => (Path::new(dir), OsStr::new(name)),
        None => (Path::new(""), OsStr::new(rel)),
    }
}

/// The open parent directory of `rel` below `dest`, reached without
/// following a symlink, and the entry's name in it.
fn parent_of(dest: &Dir, rel: &str) -> Result<(Dir, OsString), Error> {
    let (dir, name) = split_rel(rel);
    if dir.as_os_str().is_empty() {
        return Ok((dest.try_clone()?, name.to_os_string()));
    }
    let opened = dest.open_beneath(dir)?.ok_or_else(|| {
        Error::Invalid(format!(
            "{} is not a directory below {}; it was changed while rbuild wrote into it",
            dir.display(),
            dest.path().display()
        ))
    })?;
    Ok((opened, name.to_os_string()))
}

/// Copies a scanned host listing into the open directory `dest`, owned by
/// `owner` (uid, gid). Each file is checked against its scanned stat key
/// after copying, so content that changed during the copy is an error
/// rather than a wrongly keyed result.
pub fn copy_listing(listing: &HostListing, dest: &Dir, owner: (u32, u32)) -> Result<u64, Error> {
    // Directories first (parents before children), then files and symlinks
    // in parallel: creating files is what a cold import spends its time on.
    let (dirs, leaves): (Vec<&HostEntry>, Vec<&HostEntry>) = listing
        .entries
        .iter()
        .partition(|e| e.kind == EntryKind::Dir);
    for e in &dirs {
        let (parent, name) = parent_of(dest, &e.rel)?;
        drop(parent.replace_with_dir(&name)?);
        parent.set_owner(&name, owner.0, owner.1)?;
        parent.set_mode(&name, e.mode)?;
    }
    let bytes = std::sync::atomic::AtomicU64::new(0);
    par_for_each(&leaves, |e| {
        let (parent, name) = parent_of(dest, &e.rel)?;
        let n = copy_leaf(listing, e, &parent, &name, owner)?;
        bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    })?;
    // Directory mtimes last: creating their children changed them.
    for e in dirs.iter().rev() {
        let (parent, name) = parent_of(dest, &e.rel)?;
        let _ = parent.set_mtime(&name, e.mtime.0, e.mtime.1);
    }
    Ok(bytes.into_inner())
}

/// Copies one file or symlink of a scanned host listing to the entry
/// `dst`, replacing what is there. Returns the bytes copied.
pub fn copy_host_entry(
    listing: &HostListing,
    entry: &HostEntry,
    dst: &Entry,
    owner: (u32, u32),
) -> Result<u64, Error> {
    copy_leaf(listing, entry, &dst.parent, &dst.name, owner)
}

fn copy_leaf(
    listing: &HostListing,
    e: &HostEntry,
    parent: &Dir,
    name: &OsStr,
    owner: (u32, u32),
) -> Result<u64, Error> {
    let src = listing.root.join(&e.rel);
    match &e.kind {
        EntryKind::File { size, .. } => {
            let mut from = fs::File::open(&src).map_err(|err| Error::io("copy", &src, err))?;
            parent.replace_file(name, &mut from, e.mode, Some(owner))?;
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
            parent.set_mtime(name, e.mtime.0, e.mtime.1)?;
            Ok(*size)
        }
        EntryKind::Symlink { target } => {
            parent.replace_with_symlink(name, OsStr::from_bytes(target))?;
            parent.set_owner(name, owner.0, owner.1)?;
            let _ = parent.set_mtime(name, e.mtime.0, e.mtime.1);
            Ok(0)
        }
        EntryKind::Dir => Ok(0),
    }
}

/// Copies the tree at `src` (file, symlink or directory) to the entry
/// `dst`, preserving modes, owners (unless `owner` is given), symlinks and
/// mtimes; a directory merges into an existing one, anything else replaces
/// what is there. Returns the bytes copied.
pub fn copy_tree(
    src: &Path,
    dst: &Entry,
    filter: &CopyFilter,
    owner: Option<(u32, u32)>,
) -> Result<u64, Error> {
    let m = fs::symlink_metadata(src).map_err(|e| Error::io("read", src, e))?;
    let mut bytes = 0;
    copy_node(
        src,
        &dst.parent,
        &dst.name,
        &m,
        Path::new(""),
        filter,
        owner,
        &mut bytes,
    )?;
    Ok(bytes)
}

/// Copies what is in the directory `src` into the open directory `dst`
/// (merging), and gives `dst` the mode and owner of `src`.
pub fn copy_tree_into(
    src: &Path,
    dst: &Dir,
    filter: &CopyFilter,
    owner: Option<(u32, u32)>,
) -> Result<u64, Error> {
    let m = fs::symlink_metadata(src).map_err(|e| Error::io("read", src, e))?;
    let mut bytes = 0;
    copy_children(src, dst, Path::new(""), filter, owner, &mut bytes)?;
    let (uid, gid) = owner.unwrap_or((m.uid(), m.gid()));
    rustix::fs::fchown(
        dst.as_fd(),
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(|e| Error::io("chown", dst.path(), e.into()))?;
    rustix::fs::fchmod(
        dst.as_fd(),
        rustix::fs::Mode::from_raw_mode(m.mode() & 0o7777),
    )
    .map_err(|e| Error::io("chmod", dst.path(), e.into()))?;
    Ok(bytes)
}

fn copy_children(
    src: &Path,
    dst: &Dir,
    rel: &Path,
    filter: &CopyFilter,
    owner: Option<(u32, u32)>,
    bytes: &mut u64,
) -> Result<(), Error> {
    let mut names: Vec<_> = fs::read_dir(src)
        .map_err(|e| Error::io("list", src, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let s = src.join(&name);
        let cm = fs::symlink_metadata(&s).map_err(|e| Error::io("stat", &s, e))?;
        copy_node(&s, dst, &name, &cm, &rel.join(&name), filter, owner, bytes)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn copy_node(
    src: &Path,
    parent: &Dir,
    name: &OsStr,
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
        let dir = parent.replace_with_dir(name)?;
        copy_children(src, &dir, rel, filter, owner, bytes)?;
        // An include filter keeps a directory only if something in it was kept.
        if let Some(f) = &filter.matchers
            && f.include.is_some()
            && !rel.as_os_str().is_empty()
            && !f.included(rel, true)
            && dir.names().map(|n| n.is_empty()).unwrap_or(false)
        {
            drop(dir);
            let _ = parent.remove(name);
            return Ok(());
        }
    } else {
        if let Some(f) = &filter.matchers
            && !f.included(rel, false)
        {
            return Ok(());
        }
        if ft.is_symlink() {
            let target = fs::read_link(src).map_err(|e| Error::io("read symlink", src, e))?;
            parent.replace_with_symlink(name, target.as_os_str())?;
        } else if ft.is_file() {
            let mut from = fs::File::open(src).map_err(|e| Error::io("copy", src, e))?;
            *bytes += parent.replace_file(name, &mut from, m.mode(), Some((uid, gid)))?;
            // One file copied, the rest not: mid-export when the copy is one.
            rbuild_containerd::kill_point("copy-mid");
        } else {
            // Devices, FIFOs, sockets: recreate the node.
            parent.remove(name)?;
            rustix::fs::mknodat(
                parent.as_fd(),
                name,
                FileType::from_raw_mode(m.mode()),
                rustix::fs::Mode::from_raw_mode(m.mode()),
                m.rdev(),
            )
            .map_err(|e| Error::io("create node", &parent.path().join(name), e.into()))?;
        }
    }
    parent.set_owner(name, uid, gid)?;
    if !ft.is_symlink() {
        parent.set_mode(name, m.mode() & 0o7777)?;
    }
    let _ = parent.set_mtime(name, m.mtime(), m.mtime_nsec());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
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
        let at = Dir::open_host(&src).unwrap();
        for (p, t) in [("fifo", 1_000_000_000), ("link", 1_000_000_007)] {
            at.set_mtime(OsStr::new(p), t, 5).unwrap();
        }
        let dst = d.path().join("dst");
        let entry = Entry::in_tree(d.path(), &dst).unwrap().unwrap();
        copy_tree(&src, &entry, &CopyFilter::all(), None).unwrap();
        let m = fs::symlink_metadata(dst.join("fifo")).unwrap();
        assert!(m.file_type().is_fifo());
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000_000, 5));
        let l = fs::symlink_metadata(dst.join("link")).unwrap();
        assert!(l.file_type().is_symlink(), "the symlink is not followed");
        assert_eq!((l.mtime(), l.mtime_nsec()), (1_000_000_007, 5));
    }
}
