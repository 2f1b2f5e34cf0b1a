//! Path confinement (DESIGN.md invariant 11): resolving a container path
//! below the root of a mounted filesystem without leaving it, and writing
//! to what was resolved without following a symlink on the way.
//!
//! Two halves:
//!
//! - Resolution. [`resolve_in`] follows symlinks the way the container
//!   would see them (an absolute target restarts at the root, `..` stops at
//!   it, the kernel's limit of [`MAX_SYMLINKS`] links ends in an error);
//!   [`resolve_entry_in`] does the same for an entry's parent and keeps the
//!   entry itself; [`under`] is purely lexical. These compute paths on a
//!   live tree.
//! - Writing. [`Dir`] and [`Entry`] hold directories open and reach every
//!   component with `O_NOFOLLOW` (an `openat` walk from an open root, or
//!   `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so a symlink
//!   that appears after resolution, or that a step planted at an export
//!   destination, is never written through: an entry that is a symlink is
//!   replaced, a directory on the way that is a symlink is an error.
//!
//! What is written where (copies, file writes, exports) lives with the
//! callers (`tree`, `fileops`).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::{Error, unique_suffix};

/// How many symlinks one resolution may follow: the kernel's own limit
/// (`MAXSYMLINKS`), after which it answers `ELOOP`.
pub const MAX_SYMLINKS: usize = 40;

fn too_many_links(path: &str) -> Error {
    Error::Invalid(format!(
        "cannot resolve {path:?}: too many levels of symbolic links (more than {MAX_SYMLINKS} \
         followed; a symlink loop or a chain that long); point the path at a real file or \
         directory"
    ))
}

/// Resolves a container path inside a root filesystem mounted at `root`,
/// following symlinks the way the container would see them: an absolute
/// target restarts at `root`, `..` stops at it. Host-side file operations
/// use this so that a symlink in an image (`/app -> /etc`) can never lead
/// them out of the tree. Components that do not exist are appended as is.
/// More than [`MAX_SYMLINKS`] links is an error, as it is for the kernel,
/// so the result is never a path that still ends in a symlink.
pub fn resolve_in(root: &Path, path: &str) -> Result<PathBuf, Error> {
    let mut todo: Vec<Vec<u8>> = segments(path.as_bytes());
    let mut cur = root.to_path_buf();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        match part.as_slice() {
            b"." => {}
            b".." => {
                if cur != root {
                    cur.pop();
                }
            }
            name => {
                let next = cur.join(OsStr::from_bytes(name));
                match fs::symlink_metadata(&next) {
                    Ok(m) if m.file_type().is_symlink() => {
                        links += 1;
                        if links > MAX_SYMLINKS {
                            return Err(too_many_links(path));
                        }
                        let target = fs::read_link(&next)
                            .map_err(|e| Error::io("read symlink", &next, e))?;
                        let t = target.as_os_str().as_bytes();
                        if t.starts_with(b"/") {
                            cur = root.to_path_buf();
                        }
                        todo.extend(segments(t));
                    }
                    _ => cur = next,
                }
            }
        }
    }
    Ok(cur)
}

/// A path's non-empty components, last first (a stack to pop from).
fn segments(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|b| *b == b'/')
        .rev()
        .filter(|p| !p.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Like [`resolve_in`] for the directory of `path`, keeping its last
/// component as is: the entry itself, for replacing or removing it (a
/// symlink is removed, not what it points to).
pub fn resolve_entry_in(root: &Path, path: &str) -> Result<PathBuf, Error> {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((parent, name)) if !name.is_empty() && name != "." && name != ".." => {
            Ok(resolve_in(root, parent)?.join(name))
        }
        _ => resolve_in(root, path),
    }
}

/// Resolves `rel` (an absolute container path or a relative one) below
/// `root` lexically, refusing to leave it (symlinks are not followed).
pub fn under(root: &Path, rel: &str) -> PathBuf {
    let mut out = root.to_path_buf();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out != root {
                    out.pop();
                }
            }
            p => out.push(p),
        }
    }
    out
}

fn errno(op: &'static str, path: &Path, e: Errno) -> Error {
    Error::io(op, path, e.into())
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// A directory held open, reached without following symlinks below the
/// root it was opened from. Everything written through it is written with
/// `*at` calls relative to it, never by path.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// For messages only.
    path: PathBuf,
}

impl Dir {
    /// Opens `resolved`, a path below `root` that [`resolve_in`] computed,
    /// creating missing directories (mode 0755) with an `O_NOFOLLOW` walk
    /// from `root`. A symlink or a non-directory on the way is an error:
    /// the tree changed after it was resolved.
    pub fn open_in_tree(root: &Path, resolved: &Path) -> Result<Dir, Error> {
        let rel = resolved.strip_prefix(root).map_err(|_| {
            Error::Invalid(format!(
                "{} is not inside {}",
                resolved.display(),
                root.display()
            ))
        })?;
        let mut dir = Dir::open_host(root)?;
        for c in rel.components() {
            match c {
                Component::Normal(name) => dir = dir.subdir(name, true)?,
                Component::CurDir => {}
                _ => {
                    return Err(Error::Invalid(format!(
                        "{} is not a resolved path inside {}",
                        resolved.display(),
                        root.display()
                    )));
                }
            }
        }
        Ok(dir)
    }

    /// Opens a directory that exists, following the path as the kernel
    /// does: for a root or a destination a user named.
    pub fn open_host(path: &Path) -> Result<Dir, Error> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno("open directory", path, e))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens `rel` (relative, already resolved) below this directory with
    /// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: no symlink is
    /// followed and nothing outside is reached. `None` when it does not
    /// exist, is not a directory, or a symlink is on the way.
    pub fn open_beneath(&self, rel: &Path) -> Result<Option<Dir>, Error> {
        let path = self.path.join(rel);
        if rel.as_os_str().is_empty() {
            return Ok(Some(self.try_clone()?));
        }
        match rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => Ok(Some(Dir { fd, path })),
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => Ok(None),
            Err(e) => Err(errno("open directory", &path, e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn try_clone(&self) -> Result<Dir, Error> {
        Ok(Dir {
            fd: self
                .fd
                .try_clone()
                .map_err(|e| Error::io("duplicate", &self.path, e))?,
            path: self.path.clone(),
        })
    }

    /// The directory `name` in this one, not following a symlink. With
    /// `create`, a missing one is made (0755); a symlink or another
    /// non-directory is an error either way.
    pub fn subdir(&self, name: &OsStr, create: bool) -> Result<Dir, Error> {
        let path = self.path.join(name);
        match rustix::fs::openat(&self.fd, name, dir_flags(), Mode::empty()) {
            Ok(fd) => return Ok(Dir { fd, path }),
            Err(Errno::NOENT) if create => {}
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return Err(Error::Invalid(format!(
                    "{} is {}, not a directory; it was changed while rbuild wrote below it",
                    path.display(),
                    if self.is_symlink(name) {
                        "a symlink"
                    } else {
                        "a file"
                    }
                )));
            }
            Err(e) => return Err(errno("open directory", &path, e)),
        }
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(errno("create directory", &path, e)),
        }
        let fd = rustix::fs::openat(&self.fd, name, dir_flags(), Mode::empty())
            .map_err(|e| errno("open directory", &path, e))?;
        Ok(Dir { fd, path })
    }

    fn is_symlink(&self, name: &OsStr) -> bool {
        self.kind(name) == Some(FileType::Symlink)
    }

    /// What `name` is, not following a symlink; `None` when it is absent.
    pub fn kind(&self, name: &OsStr) -> Option<FileType> {
        self.stat(name).map(|s| FileType::from_raw_mode(s.st_mode))
    }

    /// `name`'s status, not following a symlink; `None` when it is absent.
    pub fn stat(&self, name: &OsStr) -> Option<rustix::fs::Stat> {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).ok()
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Removes whatever is at `name` (a whole directory too), never
    /// following a symlink: a symlink is removed itself.
    pub fn remove(&self, name: &OsStr) -> Result<(), Error> {
        let path = self.path.join(name);
        match self.kind(name) {
            None => Ok(()),
            Some(FileType::Directory) => {
                let sub = self.subdir(name, false)?;
                for child in sub.names()? {
                    sub.remove(&child)?;
                }
                drop(sub);
                rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)
                    .map_err(|e| errno("remove", &path, e))
            }
            Some(_) => rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())
                .map_err(|e| errno("remove", &path, e)),
        }
    }

    /// The names in this directory (without `.` and `..`), sorted.
    pub fn names(&self) -> Result<Vec<OsString>, Error> {
        let fd = rustix::fs::openat(&self.fd, ".", dir_flags(), Mode::empty())
            .map_err(|e| errno("list", &self.path, e))?;
        let mut out = Vec::new();
        let it = rustix::fs::Dir::new(fd).map_err(|e| errno("list", &self.path, e))?;
        for entry in it {
            let entry = entry.map_err(|e| errno("list", &self.path, e))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// The directory `name`, made if absent; whatever else is there (a
    /// file, a symlink) is replaced by a new empty directory.
    pub fn replace_with_dir(&self, name: &OsStr) -> Result<Dir, Error> {
        if !matches!(self.kind(name), None | Some(FileType::Directory)) {
            self.remove(name)?;
        }
        self.subdir(name, true)
    }

    /// Creates the file `name` afresh (`O_CREAT | O_EXCL | O_NOFOLLOW`, so
    /// nothing that appeared there is written through), after removing
    /// what was there. The file starts with mode 0600; the caller sets the
    /// final owner and mode through the returned handle.
    pub fn create_file(&self, name: &OsStr) -> Result<fs::File, Error> {
        self.remove(name)?;
        let path = self.path.join(name);
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| errno("create", &path, e))?;
        Ok(fs::File::from(fd))
    }

    /// Replaces `name` with a regular file holding `contents`, written to a
    /// new file beside it and renamed over it: a symlink at `name` is
    /// replaced, not followed; a reader never sees half a file.
    pub fn replace_file(
        &self,
        name: &OsStr,
        contents: &mut dyn Read,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<u64, Error> {
        let path = self.path.join(name);
        let mut tmp_name = OsString::from(".rbuild-");
        tmp_name.push(unique_suffix());
        let written = (|| {
            let mut f = self.create_file(&tmp_name)?;
            let n = std::io::copy(contents, &mut f).map_err(|e| Error::io("write", &path, e))?;
            if let Some((uid, gid)) = owner {
                rustix::fs::fchown(
                    &f,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                )
                .map_err(|e| errno("chown", &path, e))?;
            }
            // After the chown, which clears set-id bits.
            rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & 0o7777))
                .map_err(|e| errno("chmod", &path, e))?;
            if self.kind(name) == Some(FileType::Directory) {
                self.remove(name)?;
            }
            rustix::fs::renameat(&self.fd, &tmp_name, &self.fd, name)
                .map_err(|e| errno("replace", &path, e))?;
            Ok(n)
        })();
        if written.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, &tmp_name, AtFlags::empty());
        }
        written
    }

    /// Sets the permission bits of `name` without following a symlink (a
    /// symlink's own bits mean nothing on Linux and are left alone).
    pub fn set_mode(&self, name: &OsStr, mode: u32) -> Result<(), Error> {
        let path = self.path.join(name);
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno("chmod", &path, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| errno("chmod", &path, e))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            return Ok(());
        }
        // An O_PATH descriptor cannot be fchmod'ed; its /proc link names
        // exactly the inode it holds.
        let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        rustix::fs::chmodat(
            rustix::fs::CWD,
            proc.as_str(),
            Mode::from_raw_mode(mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(|e| errno("chmod", &path, e))
    }

    /// Sets the owner of `name`, not following a symlink.
    pub fn set_owner(&self, name: &OsStr, uid: u32, gid: u32) -> Result<(), Error> {
        rustix::fs::chownat(
            &self.fd,
            name,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| errno("chown", &self.path.join(name), e))
    }

    /// Sets the mtime (and atime) of `name`, not following a symlink.
    pub fn set_mtime(&self, name: &OsStr, sec: i64, nsec: i64) -> Result<(), Error> {
        let t = rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(&self.fd, name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| errno("set mtime", &self.path.join(name), e))
    }

    /// Makes the symlink `name -> target`, replacing what was there.
    pub fn replace_with_symlink(&self, name: &OsStr, target: &OsStr) -> Result<(), Error> {
        self.remove(name)?;
        rustix::fs::symlinkat(target, &self.fd, name)
            .map_err(|e| errno("create symlink", &self.path.join(name), e))
    }
}

/// An entry to write: its parent directory, held open and reached without
/// following symlinks, and its name there. The entry itself, whatever it
/// is (a symlink a step planted, say), is replaced, never followed.
#[derive(Debug)]
pub struct Entry {
    pub parent: Dir,
    pub name: OsString,
}

impl Entry {
    /// The entry at `resolved` (a path below `root` from [`resolve_in`] or
    /// [`resolve_entry_in`]), its missing parents made with an
    /// `O_NOFOLLOW` walk. `None` when `resolved` is `root` itself.
    pub fn in_tree(root: &Path, resolved: &Path) -> Result<Option<Entry>, Error> {
        let (Some(parent), Some(name)) = (resolved.parent(), resolved.file_name()) else {
            return Ok(None);
        };
        if resolved == root || !parent.starts_with(root) {
            return Ok(None);
        }
        Ok(Some(Entry {
            parent: Dir::open_in_tree(root, parent)?,
            name: name.to_os_string(),
        }))
    }

    /// An export destination on the host: its parent directory is the
    /// user's path, made if missing and followed as the kernel does; the
    /// last component is the entry, replaced and never followed.
    pub fn on_host(dest: &Path) -> Result<Entry, Error> {
        let dest = std::path::absolute(dest).map_err(|e| Error::io("export to", dest, e))?;
        let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
            return Err(Error::Invalid(format!(
                "cannot export to {}: name a file or directory below it",
                dest.display()
            )));
        };
        fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
        Ok(Entry {
            parent: Dir::open_host(parent)?,
            name: name.to_os_string(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.parent.path.join(&self.name)
    }

    pub fn kind(&self) -> Option<FileType> {
        self.parent.kind(&self.name)
    }

    /// The entry as a directory: kept if it is one, made if absent,
    /// replaced if it is anything else (a symlink included).
    pub fn dir(&self) -> Result<Dir, Error> {
        self.parent.replace_with_dir(&self.name)
    }

    pub fn remove(&self) -> Result<(), Error> {
        self.parent.remove(&self.name)
    }

    /// See [`Dir::replace_file`].
    pub fn replace_file(
        &self,
        contents: &mut dyn Read,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<u64, Error> {
        self.parent.replace_file(&self.name, contents, mode, owner)
    }

    pub fn set_mode(&self, mode: u32) -> Result<(), Error> {
        self.parent.set_mode(&self.name, mode)
    }
}

#[cfg(test)]
mod tests {
    //! Resolution (every result stays inside the root, agrees with the
    //! kernel's `RESOLVE_IN_ROOT`, and stops at its limit of links) and the
    //! `O_NOFOLLOW` writes (a symlink at or on the way to a destination is
    //! never written through).

    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn resolve_in(root: &Path, path: &str) -> PathBuf {
        super::resolve_in(root, path).unwrap()
    }

    fn resolve_entry_in(root: &Path, path: &str) -> PathBuf {
        super::resolve_entry_in(root, path).unwrap()
    }

    #[test]
    fn paths_stay_under_their_root() {
        let r = Path::new("/mnt/x");
        assert_eq!(under(r, "/a/b"), Path::new("/mnt/x/a/b"));
        assert_eq!(under(r, "../../etc/passwd"), Path::new("/mnt/x/etc/passwd"));
        assert_eq!(under(r, "a/../../b"), Path::new("/mnt/x/b"));
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::create_dir_all(r.join("usr/lib")).unwrap();
        symlink("/etc", r.join("app")).unwrap();
        symlink("../../..", r.join("usr/lib/up")).unwrap();
        symlink("lib", r.join("usr/rel")).unwrap();
        assert_eq!(resolve_in(r, "/app/passwd"), r.join("etc/passwd"));
        assert_eq!(resolve_in(r, "/usr/lib/up/etc"), r.join("etc"));
        assert_eq!(resolve_in(r, "/usr/rel/x"), r.join("usr/lib/x"));
        assert_eq!(resolve_in(r, "/new/dir/file"), r.join("new/dir/file"));
        symlink("loop", r.join("loop")).unwrap();
        let err = super::resolve_in(r, "/loop").unwrap_err().to_string();
        assert!(
            err.contains("\"/loop\"") && err.contains("too many levels of symbolic links"),
            "a symlink loop is an error naming the path: {err}"
        );
    }

    #[test]
    fn a_planted_absolute_symlink_restarts_at_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        symlink("/", r.join("top")).unwrap();
        symlink("/../../../etc", r.join("esc")).unwrap();
        symlink("/etc/shadow", r.join("shadow")).unwrap();
        assert_eq!(resolve_in(r, "/top/etc/passwd"), r.join("etc/passwd"));
        assert_eq!(resolve_in(r, "/top/../../x"), r.join("x"));
        assert_eq!(resolve_in(r, "/esc/passwd"), r.join("etc/passwd"));
        assert_eq!(resolve_in(r, "/shadow"), r.join("etc/shadow"));
    }

    #[test]
    fn dot_dot_chains_stop_at_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        symlink("../../../../../outside", r.join("a/b/out")).unwrap();
        symlink("..", r.join("parent")).unwrap();
        assert_eq!(resolve_in(r, "/../../../etc/passwd"), r.join("etc/passwd"));
        assert_eq!(resolve_in(r, "a/b/../../../../x"), r.join("x"));
        assert_eq!(resolve_in(r, "/a/b/out"), r.join("outside"));
        assert_eq!(resolve_in(r, "/parent/parent/x"), r.join("x"));
    }

    #[test]
    fn chains_relative_paths_and_empty_components() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        symlink("b", r.join("a")).unwrap();
        symlink("/etc", r.join("b")).unwrap();
        assert_eq!(resolve_in(r, "/a/passwd"), r.join("etc/passwd"));
        assert_eq!(
            resolve_in(r, "a/passwd"),
            r.join("etc/passwd"),
            "a relative path resolves from the root"
        );
        assert_eq!(resolve_in(r, "//./a/.//passwd"), r.join("etc/passwd"));
        assert_eq!(resolve_in(r, "/"), r);
        assert_eq!(resolve_in(r, ""), r);
    }

    #[test]
    fn a_loop_of_two_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        symlink("/y", r.join("x")).unwrap();
        symlink("/x", r.join("y")).unwrap();
        let err = super::resolve_in(r, "/x/file").unwrap_err().to_string();
        assert!(
            err.contains("/x/file") && err.contains("too many levels of symbolic links"),
            "{err}"
        );
        assert!(super::resolve_entry_in(r, "/x/file").is_err());
        // The entry itself is not followed: a loop can still be removed.
        assert_eq!(resolve_entry_in(r, "/x"), r.join("x"));
    }

    #[test]
    fn entries_keep_their_last_component() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        symlink("/etc", r.join("app")).unwrap();
        // The symlink itself, for removing or replacing it.
        assert_eq!(resolve_entry_in(r, "/app"), r.join("app"));
        assert_eq!(resolve_entry_in(r, "/app/"), r.join("app"));
        // Its parent is resolved.
        assert_eq!(resolve_entry_in(r, "/app/passwd"), r.join("etc/passwd"));
        assert_eq!(resolve_entry_in(r, "/../app/x"), r.join("etc/x"));
        // A last `..` or `.` is not an entry: the whole path is resolved.
        assert_eq!(resolve_entry_in(r, "/app/.."), r);
        assert_eq!(resolve_entry_in(r, "/etc/."), r.join("etc"));
        // Today a path with no `/` at all is resolved whole, following a
        // symlink as its last component.
        assert_eq!(resolve_entry_in(r, "app"), r.join("etc"));
    }

    #[test]
    fn under_is_lexical() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        symlink("/etc", r.join("app")).unwrap();
        assert_eq!(under(r, "/app/passwd"), r.join("app/passwd"));
        assert_eq!(under(r, "./a/./b/"), r.join("a/b"));
        assert_eq!(under(r, "/.."), r);
    }

    /// `l0 -> l1 -> ... -> l{n-1} -> target`: `n` links.
    fn chain(r: &Path, n: usize, target: &str) {
        for i in 0..n {
            let to = if i + 1 == n {
                target.to_string()
            } else {
                format!("l{}", i + 1)
            };
            symlink(to, r.join(format!("l{i}"))).unwrap();
        }
    }

    /// What the kernel makes of `path` below `root` with `RESOLVE_IN_ROOT`
    /// (the container's view): the path it reached, or its error.
    fn kernel_resolve(root: &Path, path: &str) -> Result<PathBuf, Errno> {
        let dir = Dir::open_host(root).unwrap();
        let fd = rustix::fs::openat2(
            dir.as_fd(),
            path,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT,
        )?;
        let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        Ok(fs::read_link(proc).unwrap())
    }

    #[test]
    fn forty_links_resolve_and_the_forty_first_is_an_error_as_in_the_kernel() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(r.join("etc/passwd"), "").unwrap();
        // l0 .. l40: 41 links from l0, 40 from l1; the last is absolute,
        // which the host kernel would follow to the host's /etc.
        chain(r, 41, "/etc");
        assert_eq!(resolve_in(r, "/l1/passwd"), r.join("etc/passwd"));
        assert_eq!(
            kernel_resolve(r, "/l1/passwd").unwrap(),
            r.join("etc/passwd")
        );
        let err = super::resolve_in(r, "/l0/passwd").unwrap_err().to_string();
        assert!(err.contains("\"/l0/passwd\""), "names the path: {err}");
        assert!(
            err.contains("too many levels of symbolic links"),
            "says why: {err}"
        );
        assert_eq!(kernel_resolve(r, "/l0/passwd"), Err(Errno::LOOP));
        // Through a parent, and for an entry's parent.
        assert!(super::resolve_entry_in(r, "/l0/new").is_err());
        assert_eq!(resolve_entry_in(r, "/l0"), r.join("l0"));
    }

    #[test]
    fn a_long_chain_never_hands_back_a_path_the_host_would_follow() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        // Today's fall-through would return r/l40 after 40 links: a symlink
        // to a host path. Now there is no path to hand back at all.
        chain(r, 41, outside.path().to_str().unwrap());
        for p in ["/l0", "/l0/x", "l0/../l0/x"] {
            assert!(super::resolve_in(r, p).is_err(), "{p}");
        }
    }

    #[test]
    fn a_replaced_file_does_not_write_through_a_symlink_at_its_name() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, "host bytes").unwrap();
        let r = root.path();
        symlink(&victim, r.join("report.txt")).unwrap();
        let e = Entry::in_tree(r, &r.join("report.txt")).unwrap().unwrap();
        e.replace_file(&mut &b"new"[..], 0o640, None).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "host bytes");
        let m = fs::symlink_metadata(r.join("report.txt")).unwrap();
        assert!(m.is_file(), "the symlink was replaced by a file");
        assert_eq!(m.permissions().mode() & 0o7777, 0o640);
        assert_eq!(fs::read_to_string(r.join("report.txt")).unwrap(), "new");
        // The same for a host destination.
        let dest = outside.path().join("out/report.txt");
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        symlink(&victim, &dest).unwrap();
        Entry::on_host(&dest)
            .unwrap()
            .replace_file(&mut &b"exported"[..], 0o644, None)
            .unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "host bytes");
        assert_eq!(fs::read_to_string(&dest).unwrap(), "exported");
        assert!(
            !fs::symlink_metadata(&dest)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn a_directory_entry_replaces_a_symlink_and_a_walk_refuses_one() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        symlink(outside.path(), r.join("out")).unwrap();
        // On the way to a destination: an error, nothing written outside.
        let err = Dir::open_in_tree(r, &r.join("out/sub"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a symlink, not a directory"), "{err}");
        assert!(Entry::in_tree(r, &r.join("out/sub/file")).is_err());
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
        // `..` is not a resolved path.
        assert!(Dir::open_in_tree(r, &r.join("a/../../x")).is_err());
        // At the destination: replaced by a directory.
        let e = Entry::in_tree(r, &r.join("out")).unwrap().unwrap();
        let d = e.dir().unwrap();
        d.replace_file(OsStr::new("x"), &mut &b"x"[..], 0o644, None)
            .unwrap();
        assert!(r.join("out").is_dir() && !r.join("out").is_symlink());
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
        // Removing a symlink removes the link, not what it points to.
        symlink(outside.path(), r.join("link")).unwrap();
        fs::write(outside.path().join("kept"), "k").unwrap();
        Dir::open_host(r)
            .unwrap()
            .remove(OsStr::new("link"))
            .unwrap();
        assert!(outside.path().join("kept").exists());
        assert!(fs::symlink_metadata(r.join("link")).is_err());
    }

    #[test]
    fn modes_are_set_without_following_a_symlink() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, "v").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        let r = root.path();
        symlink(&victim, r.join("link")).unwrap();
        let dir = Dir::open_host(r).unwrap();
        dir.set_mode(OsStr::new("link"), 0o777).unwrap();
        dir.set_owner(OsStr::new("link"), 65534, 65534).unwrap();
        let m = fs::metadata(&victim).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&m), 0);
    }

    /// A small random tree: directories, files and symlinks whose targets
    /// are made of `..`, `.`, names and absolute roots, with loops likely.
    /// Hand-rolled over `rand` (seeded, so a failure is reproducible) rather
    /// than a property-testing crate: the generator is a dozen lines.
    fn random_tree(rng: &mut rand::rngs::StdRng, r: &Path, outside: &Path) {
        use rand::Rng;
        let names = ["a", "b", "c", "d"];
        let seg = |rng: &mut rand::rngs::StdRng| -> &str {
            match rng.random_range(0..7) {
                0 | 1 => "..",
                2 => ".",
                n => names[n - 3],
            }
        };
        for _ in 0..rng.random_range(1..10) {
            let depth = rng.random_range(0..3);
            let mut p = r.to_path_buf();
            for _ in 0..depth {
                p.push(names[rng.random_range(0..names.len())]);
            }
            let _ = fs::create_dir_all(&p);
            let leaf = p.join(names[rng.random_range(0..names.len())]);
            if fs::symlink_metadata(&leaf).is_ok() {
                continue;
            }
            match rng.random_range(0..4) {
                0 => {
                    let _ = fs::write(&leaf, "f");
                }
                1 => {
                    // An absolute host path: must never be reached.
                    let _ = symlink(outside, &leaf);
                }
                _ => {
                    let n = rng.random_range(1..5);
                    let mut t: Vec<&str> = (0..n).map(|_| seg(rng)).collect();
                    if rng.random_bool(0.3) {
                        t.insert(0, "");
                    }
                    let _ = symlink(t.join("/"), &leaf);
                }
            }
        }
    }

    #[test]
    fn every_resolved_path_stays_under_its_root_and_agrees_with_the_kernel() {
        use rand::{Rng, SeedableRng};
        let outside = tempfile::tempdir().unwrap();
        let mut compared = 0;
        for seed in 0..400u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let root = tempfile::tempdir().unwrap();
            let r = root.path();
            random_tree(&mut rng, r, outside.path());
            for _ in 0..20 {
                let n = rng.random_range(0..6);
                let path: Vec<&str> = (0..n)
                    .map(|_| ["a", "b", "c", "d", "..", ".", ""][rng.random_range(0..7)])
                    .collect();
                let path = format!(
                    "{}{}",
                    if rng.random_bool(0.5) { "/" } else { "" },
                    path.join("/")
                );
                let ours = super::resolve_in(r, &path);
                let kernel = kernel_resolve(r, &path);
                match &ours {
                    Ok(p) => {
                        assert!(
                            p.starts_with(r)
                                && p.strip_prefix(r)
                                    .unwrap()
                                    .components()
                                    .all(|c| matches!(c, Component::Normal(_))),
                            "seed {seed}: {path:?} resolved to {}",
                            p.display()
                        );
                        assert!(
                            !fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()),
                            "seed {seed}: {path:?} resolved to a symlink {}",
                            p.display()
                        );
                        let entry = super::resolve_entry_in(r, &path);
                        assert!(
                            entry.as_ref().is_ok_and(|e| e.starts_with(r)) || entry.is_err(),
                            "seed {seed}: entry {path:?}"
                        );
                    }
                    Err(e) => assert!(
                        e.to_string().contains("too many levels"),
                        "seed {seed}: {path:?}: {e}"
                    ),
                }
                match kernel {
                    Ok(k) => {
                        compared += 1;
                        assert_eq!(ours.ok(), Some(k), "seed {seed}: {path:?}");
                    }
                    Err(Errno::LOOP) => assert!(ours.is_err(), "seed {seed}: {path:?}"),
                    // Missing or not-a-directory components: we append them.
                    Err(_) => {}
                }
            }
        }
        assert!(
            compared > 1000,
            "only {compared} paths were checked against the kernel"
        );
    }
}
