//! Applying a layer tarball straight into an active overlay snapshot, the
//! way containerd's own overlay applier does since 1.7: entries are written
//! into the snapshot's upper directory, whiteouts become overlay whiteouts
//! (a 0/0 character device for a deleted path, the `trusted.overlay.opaque`
//! attribute for a directory whose lower content is hidden), and the
//! uncompressed stream is hashed on the way so its digest can be checked
//! against the image's diff ID.
//!
//! This runs on a blocking thread fed by the download, so a layer is
//! unpacked while it arrives (containerd 1.6's Diff service only starts once
//! the whole blob is in its content store, and decompresses with Go's gzip).
//! What it does not handle — a path through a symbolic link of a lower
//! layer, a hard link to a file of a lower layer, an unknown compression —
//! it reports as [`ApplyError::Unsupported`], and the caller lets
//! containerd's Diff service apply that layer instead.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::xattr::{OPAQUE, set_xattr};

/// How a layer blob is compressed, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// None for a media type that is not a layer tarball rbuild knows.
    pub fn of_media_type(media_type: &str) -> Option<Compression> {
        if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
            Some(Compression::Gzip)
        } else if media_type.ends_with("+zstd") {
            Some(Compression::Zstd)
        } else if media_type.ends_with(".tar") || media_type.ends_with("layer.v1.tar") {
            Some(Compression::None)
        } else {
            None
        }
    }
}

/// Where a layer goes: an active snapshot's writable directory and the
/// directories below it, topmost first.
#[derive(Debug)]
pub struct Target {
    pub root: PathBuf,
    pub lowers: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Something this applier leaves to containerd's Diff service.
    #[error("{0}")]
    Unsupported(String),
    /// The layer is not a valid tarball, or names a path outside the root.
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    /// The layer decompresses to more than the limit (a decompression bomb?).
    #[error("the layer unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
}

/// The default limit on a layer's uncompressed size: 16 GiB. Real layers
/// rarely pass a few GiB (the largest, CUDA and ML toolkits, stay under
/// 10); a ratio to the compressed size would be a worse guard, since a
/// file of zeros legitimately compresses a thousandfold.
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 16 << 30;

/// The limit on a layer's uncompressed size: `RBUILD_MAX_LAYER_SIZE`
/// (bytes, or with a K, M or G suffix, binary), else [`DEFAULT_MAX_LAYER_SIZE`].
pub fn max_layer_size() -> u64 {
    std::env::var("RBUILD_MAX_LAYER_SIZE")
        .ok()
        .and_then(|v| parse_size(&v))
        .unwrap_or(DEFAULT_MAX_LAYER_SIZE)
}

fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (digits, shift) = match v.as_bytes().last()?.to_ascii_uppercase() {
        b'K' => (&v[..v.len() - 1], 10),
        b'M' => (&v[..v.len() - 1], 20),
        b'G' => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Whether an I/O error says the filesystem is full (or the quota spent).
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Reads at most `left` bytes of its input; past that, an error and `exceeded`.
struct Limited<R> {
    inner: R,
    left: u64,
    exceeded: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.exceeded.set(true);
            return Err(io::Error::other("layer size limit exceeded"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn io_err(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> ApplyError {
    move |source| ApplyError::Io {
        what: what(),
        source,
    }
}

struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Applies the layer read from `blob` to `target`. Returns the digest of
/// the uncompressed tarball (`sha256:…`), to be compared with the diff ID.
/// A layer that decompresses to more than `limit` bytes is refused
/// ([`ApplyError::TooLarge`]); what was written stays in `target` for the
/// caller to remove with its snapshot.
pub fn apply(
    blob: impl Read,
    compression: Compression,
    target: &Target,
    limit: u64,
) -> Result<String, ApplyError> {
    let exceeded = std::rc::Rc::new(std::cell::Cell::new(false));
    let r = apply_limited(blob, compression, target, limit, exceeded.clone());
    match r {
        Err(_) if exceeded.get() => Err(ApplyError::TooLarge { limit }),
        other => other,
    }
}

fn apply_limited(
    blob: impl Read,
    compression: Compression,
    target: &Target,
    limit: u64,
    exceeded: std::rc::Rc<std::cell::Cell<bool>>,
) -> Result<String, ApplyError> {
    let mut hashed = decoded(blob, compression, limit, exceeded)?;
    let mut dirs = Vec::new();
    each_entry(&mut hashed, |entry| {
        apply_entry(entry, target, &mut dirs)?;
        rbuild_containerd::kill_point("unpack-mid");
        Ok(())
    })?;
    // The digest covers the whole stream, the end-of-archive blocks too.
    io::copy(&mut hashed, &mut io::sink())
        .map_err(|e| ApplyError::Invalid(format!("broken layer stream: {e}")))?;
    // Directory times last: creating entries in them changed their mtime.
    for (dir, mtime) in dirs.iter().rev() {
        times(dir, *mtime)?;
    }
    Ok(format!("sha256:{:x}", hashed.hasher.finalize()))
}

/// A layer blob decompressed, bounded to `limit` bytes and hashed as it is read.
fn decoded<'a>(
    blob: impl Read + 'a,
    compression: Compression,
    limit: u64,
    exceeded: std::rc::Rc<std::cell::Cell<bool>>,
) -> Result<Hashing<Limited<Box<dyn Read + 'a>>>, ApplyError> {
    let blob = BufReader::with_capacity(1 << 20, blob);
    let decoded: Box<dyn Read + 'a> = match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(
            zstd::Decoder::with_buffer(blob)
                .map_err(io_err(|| "start zstd decompression".into()))?,
        ),
    };
    Ok(Hashing {
        inner: Limited {
            inner: decoded,
            left: limit,
            exceeded,
        },
        hasher: Sha256::new(),
    })
}

/// Looks for the regular file `path` in a layer and, when it is there,
/// writes its bytes (with its mode) to `dest`. `true` only when the layer
/// alone decides what is at `path`: a regular file entry, and each of its
/// parents a directory entry of the layer (so nothing of the layers below
/// shows through; a symlink below is replaced by the directory above).
/// Reads the whole blob either way and returns the digest of the
/// uncompressed tar, for the caller to compare with the diff ID before it
/// uses what was written.
pub fn file_in_layer(
    blob: impl Read,
    compression: Compression,
    path: &str,
    dest: &Path,
    limit: u64,
) -> Result<(bool, String), ApplyError> {
    let exceeded = std::rc::Rc::new(std::cell::Cell::new(false));
    let mut hashed = decoded(blob, compression, limit, exceeded)?;
    let wanted: Vec<&OsStr> = match clean(Path::new(path)) {
        Ok(p) if !p.is_empty() => p,
        _ => return Ok((false, String::new())),
    };
    let mut parents_seen = vec![false; wanted.len() - 1];
    let mut found = false;
    each_entry(&mut hashed, |entry| {
        let entry_path = entry
            .path()
            .map_err(|e| ApplyError::Invalid(format!("bad entry path: {e}")))?
            .into_owned();
        let parts = clean(&entry_path)?;
        let kind = entry.header().entry_type();
        if parts == wanted {
            found = false;
            if kind == tar::EntryType::Regular {
                let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
                if let Some(dir) = dest.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(io_err(|| format!("create {}", dir.display())))?;
                }
                let mut out = std::fs::File::create(dest)
                    .map_err(io_err(|| format!("create {}", dest.display())))?;
                io::copy(entry, &mut out)
                    .map_err(io_err(|| format!("write {}", dest.display())))?;
                std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode))
                    .map_err(io_err(|| format!("chmod {}", dest.display())))?;
                found = true;
            }
        } else if parts.len() < wanted.len() && wanted.starts_with(&parts) && !parts.is_empty() {
            parents_seen[parts.len() - 1] = kind.is_dir();
        }
        Ok(())
    })?;
    io::copy(&mut hashed, &mut io::sink())
        .map_err(|e| ApplyError::Invalid(format!("broken layer stream: {e}")))?;
    let digest = format!("sha256:{:x}", hashed.hasher.finalize());
    Ok((found && parents_seen.iter().all(|s| *s), digest))
}

/// Calls `f` on each entry of the tar read from `r`. The stream may end in
/// the padding after the last entry's data or without end-of-archive
/// blocks (some tools write layers so); containerd's Go reader takes that
/// as the end, and so does this one. Every entry so far was read whole,
/// and the caller's digest still has to match.
fn each_entry<R: Read>(
    r: R,
    mut f: impl FnMut(&mut tar::Entry<'_, R>) -> Result<(), ApplyError>,
) -> Result<(), ApplyError> {
    let mut archive = tar::Archive::new(r);
    let entries = archive
        .entries()
        .map_err(|e| ApplyError::Invalid(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.to_string().contains("unexpected EOF") => break,
            Err(e) => return Err(ApplyError::Invalid(format!("broken tar archive: {e}"))),
        };
        f(&mut entry)?;
    }
    Ok(())
}

/// The components of an entry's path below the root; an error for `..`.
fn clean(path: &Path) -> Result<Vec<&OsStr>, ApplyError> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(ApplyError::Invalid(format!(
                    "entry {} leaves the root with `..`",
                    path.display()
                )));
            }
        }
    }
    Ok(parts)
}

fn apply_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    target: &Target,
    dirs: &mut Vec<(PathBuf, i64)>,
) -> Result<(), ApplyError> {
    let path = entry
        .path()
        .map_err(|e| ApplyError::Invalid(format!("bad entry path: {e}")))?
        .into_owned();
    let parts = clean(&path)?;
    let header = entry.header();
    let kind = header.entry_type();
    let meta = Meta {
        uid: header.uid().unwrap_or(0) as u32,
        gid: header.gid().unwrap_or(0) as u32,
        mode: header.mode().unwrap_or(0o644) & 0o7777,
        mtime: header.mtime().unwrap_or(0) as i64,
    };
    let Some((name, parents)) = parts.split_last() else {
        // The root directory itself.
        if kind.is_dir() {
            meta.apply(&target.root, None, false)?;
            dirs.push((target.root.clone(), meta.mtime));
        }
        return Ok(());
    };
    let parent = ensure_dirs(target, parents)?;
    let dst = parent.join(name);
    let name = name.as_bytes();

    if let Some(hidden) = name.strip_prefix(b".wh.") {
        if hidden == b".wh..opq" {
            if !target.lowers.is_empty() {
                set_xattr(&parent, OPAQUE, b"y")
                    .map_err(io_err(|| format!("mark {} opaque", parent.display())))?;
            }
        } else if !hidden.starts_with(b".wh.") {
            let gone = parent.join(OsStr::from_bytes(hidden));
            remove_existing(&gone)?;
            if !target.lowers.is_empty() {
                mknod(&gone, rustix::fs::FileType::CharacterDevice, 0)
                    .map_err(io_err(|| format!("create whiteout {}", gone.display())))?;
                meta.chown(&gone)?;
            }
        }
        return Ok(());
    }

    let existing = fs::symlink_metadata(&dst).ok();
    if let Some(m) = &existing
        && !(kind.is_dir() && m.is_dir())
    {
        remove_existing(&dst)?;
    }
    let xattrs = xattrs(entry)?;
    let kind = entry.header().entry_type();
    use tar::EntryType as T;
    match kind {
        T::Regular | T::Continuous | T::GNUSparse => {
            let mut f = File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dst)
                .map_err(io_err(|| format!("create {}", dst.display())))?;
            let size = entry.size();
            let written =
                io::copy(entry, &mut f).map_err(io_err(|| format!("write {}", dst.display())))?;
            if written != size {
                return Err(ApplyError::Invalid(format!(
                    "entry {} ends after {written} of its {size} bytes",
                    path.display()
                )));
            }
            meta.apply(&dst, Some(&xattrs), false)?;
            times(&dst, meta.mtime)?;
        }
        T::Directory => {
            if existing.is_none() {
                fs::create_dir(&dst).map_err(io_err(|| format!("create {}", dst.display())))?;
            }
            meta.apply(&dst, Some(&xattrs), false)?;
            dirs.push((dst, meta.mtime));
        }
        T::Symlink => {
            let link = link_name(entry)?;
            std::os::unix::fs::symlink(&link, &dst)
                .map_err(io_err(|| format!("create symbolic link {}", dst.display())))?;
            meta.apply(&dst, Some(&xattrs), true)?;
            times(&dst, meta.mtime)?;
        }
        T::Link => {
            let link = link_name(entry)?;
            let src = resolve_in_layer(target, &link)?;
            fs::hard_link(&src, &dst).map_err(io_err(|| {
                format!("hard link {} to {}", dst.display(), src.display())
            }))?;
            // As containerd: the link's own header sets the (shared) inode's metadata.
            let symlink = fs::symlink_metadata(&dst).is_ok_and(|m| m.file_type().is_symlink());
            meta.apply(&dst, Some(&xattrs), symlink)?;
            times(&dst, meta.mtime)?;
        }
        T::Char | T::Block | T::Fifo => {
            let header = entry.header();
            let fmt = match kind {
                T::Char => rustix::fs::FileType::CharacterDevice,
                T::Block => rustix::fs::FileType::BlockDevice,
                _ => rustix::fs::FileType::Fifo,
            };
            let dev = rustix::fs::makedev(
                header.device_major().ok().flatten().unwrap_or(0),
                header.device_minor().ok().flatten().unwrap_or(0),
            );
            mknod(&dst, fmt, dev).map_err(io_err(|| format!("create {}", dst.display())))?;
            meta.apply(&dst, Some(&xattrs), false)?;
            times(&dst, meta.mtime)?;
        }
        T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
        other => {
            return Err(ApplyError::Unsupported(format!(
                "entry {} of tar type {:?}",
                path.display(),
                other.as_byte() as char
            )));
        }
    }
    Ok(())
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<PathBuf, ApplyError> {
    entry
        .link_name()
        .map_err(|e| ApplyError::Invalid(format!("bad link name: {e}")))?
        .map(|l| l.into_owned())
        .filter(|l| !l.as_os_str().is_empty())
        .ok_or_else(|| ApplyError::Invalid("a link entry without a target".into()))
}

/// Extended attributes of an entry (PAX `SCHILY.xattr.*` records).
fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(String, Vec<u8>)>, ApplyError> {
    let mut out = Vec::new();
    let Some(exts) = entry
        .pax_extensions()
        .map_err(|e| ApplyError::Invalid(format!("bad PAX header: {e}")))?
    else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext.map_err(|e| ApplyError::Invalid(format!("bad PAX record: {e}")))?;
        if let Ok(key) = ext.key()
            && let Some(name) = key.strip_prefix("SCHILY.xattr.")
        {
            out.push((name.to_string(), ext.value_bytes().to_vec()));
        }
    }
    Ok(out)
}

struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
}

impl Meta {
    /// A directory no layer describes: as `mkdir -p` makes it.
    fn new_dir() -> Meta {
        Meta {
            uid: 0,
            gid: 0,
            mode: 0o755,
            mtime: 0,
        }
    }

    fn chown(&self, path: &Path) -> Result<(), ApplyError> {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .map_err(io_err(|| format!("change owner of {}", path.display())))
    }

    /// Owner first (it clears set-ID bits and capabilities), then mode and
    /// extended attributes.
    fn apply(
        &self,
        path: &Path,
        xattrs: Option<&[(String, Vec<u8>)]>,
        symlink: bool,
    ) -> Result<(), ApplyError> {
        self.chown(path)?;
        if !symlink {
            fs::set_permissions(path, fs::Permissions::from_mode(self.mode))
                .map_err(io_err(|| format!("change mode of {}", path.display())))?;
        }
        for (name, value) in xattrs.unwrap_or_default() {
            match set_xattr(path, name, value) {
                Ok(()) => {}
                // As containerd: attributes a symbolic link cannot carry are dropped.
                Err(e) if symlink && e.raw_os_error() == Some(libc::EPERM) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {}
                Err(e) => {
                    return Err(ApplyError::Io {
                        what: format!("set attribute {name} of {}", path.display()),
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Makes sure the directories `parents` exist in the writable root, copying
/// the mode, owner and times of a directory a lower layer has there (as
/// overlayfs' copy-up would). Returns the innermost one.
fn ensure_dirs(target: &Target, parents: &[&OsStr]) -> Result<PathBuf, ApplyError> {
    let mut dir = target.root.clone();
    let mut rel = PathBuf::new();
    for part in parents {
        dir.push(part);
        rel.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(ApplyError::Unsupported(format!(
                    "{} is not a directory in this layer but holds entries",
                    rel.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(|| format!("look at {}", dir.display()))(e)),
        }
        let below = target
            .lowers
            .iter()
            .find_map(|l| fs::symlink_metadata(l.join(&rel)).ok());
        let (meta, copy) = match below {
            Some(m) if m.is_dir() => (
                Meta {
                    uid: m.uid(),
                    gid: m.gid(),
                    mode: m.mode() & 0o7777,
                    mtime: m.mtime(),
                },
                true,
            ),
            // Deleted below (a whiteout): a new directory.
            Some(m) if m.file_type().is_char_device() && m.rdev() == 0 => (Meta::new_dir(), false),
            Some(_) => {
                return Err(ApplyError::Unsupported(format!(
                    "{} is a symbolic link or file in a lower layer",
                    rel.display()
                )));
            }
            None => (Meta::new_dir(), false),
        };
        fs::create_dir(&dir).map_err(io_err(|| format!("create {}", dir.display())))?;
        meta.apply(&dir, None, false)?;
        if copy {
            times(&dir, meta.mtime)?;
        }
    }
    Ok(dir)
}

/// The file a hard link in this layer points to; it must be in the layer.
fn resolve_in_layer(target: &Target, link: &Path) -> Result<PathBuf, ApplyError> {
    let parts = clean(link)?;
    let mut path = target.root.clone();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        match fs::symlink_metadata(&path) {
            Ok(m) if i + 1 == parts.len() || m.is_dir() => {}
            _ => {
                return Err(ApplyError::Unsupported(format!(
                    "hard link to {}, which is not in this layer",
                    link.display()
                )));
            }
        }
    }
    Ok(path)
}

fn remove_existing(path: &Path) -> Result<(), ApplyError> {
    let r = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    r.map_err(io_err(|| format!("remove {}", path.display())))
}

/// Creates a device node or FIFO with no permission bits (a whiteout keeps
/// none; an entry gets its own from its header afterwards).
fn mknod(path: &Path, kind: rustix::fs::FileType, dev: rustix::fs::Dev) -> io::Result<()> {
    rustix::fs::mknodat(rustix::fs::CWD, path, kind, rustix::fs::Mode::empty(), dev)?;
    Ok(())
}

/// Sets access and modification time of `path` to `mtime`.
fn times(path: &Path, mtime: i64) -> Result<(), ApplyError> {
    set_times(path, mtime).map_err(io_err(|| format!("set times of {}", path.display())))
}

/// Sets access and modification time (without following a symbolic link).
fn set_times(path: &Path, mtime: i64) -> io::Result<()> {
    let t = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzipped tarball holding one file of `size` zero bytes.
    fn zeros_layer(size: usize) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(size as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "zeros", io::repeat(0).take(size as u64))
            .unwrap();
        let tarball = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        io::Write::write_all(&mut gz, &tarball).unwrap();
        gz.finish().unwrap()
    }

    fn target(root: &Path) -> Target {
        Target {
            root: root.to_path_buf(),
            lowers: Vec::new(),
        }
    }

    #[test]
    fn a_layer_that_unpacks_past_the_limit_is_refused() {
        let layer = zeros_layer(4 << 20);
        assert!(layer.len() < 64 << 10, "a small blob: {}", layer.len());
        let dir = tempfile::tempdir().unwrap();
        let e = apply(&layer[..], Compression::Gzip, &target(dir.path()), 1 << 20).unwrap_err();
        assert!(
            matches!(e, ApplyError::TooLarge { limit } if limit == 1 << 20),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        apply(&layer[..], Compression::Gzip, &target(dir.path()), 8 << 20).unwrap();
        assert_eq!(
            fs::metadata(dir.path().join("zeros")).unwrap().len(),
            4 << 20
        );
    }

    #[test]
    fn a_file_is_read_from_a_layer_only_when_the_layer_decides_it() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, body: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(body.len() as u64);
            h.set_mode(0o750);
            if kind == tar::EntryType::Symlink {
                h.set_link_name("f").unwrap();
            }
            h.set_cksum();
            tar.append_data(&mut h, path, body).unwrap();
        };
        add("./a/", tar::EntryType::Directory, b"");
        add("./a/f", tar::EntryType::Regular, b"in a");
        add("./top", tar::EntryType::Regular, b"at the root");
        add("./b/f", tar::EntryType::Regular, b"no parent entry");
        add("./a/link", tar::EntryType::Symlink, b"");
        let layer = tar.into_inner().unwrap();
        let full = apply(
            &layer[..],
            Compression::None,
            &target(tempfile::tempdir().unwrap().path()),
            1 << 20,
        )
        .unwrap();
        let find = |path: &str| {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("out");
            let (found, digest) =
                file_in_layer(&layer[..], Compression::None, path, &dest, 1 << 20).unwrap();
            if found {
                assert_eq!(digest, full, "the whole layer is read and hashed");
            }
            found.then(|| {
                let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
                (fs::read(&dest).unwrap(), mode)
            })
        };
        assert_eq!(find("/a/f"), Some((b"in a".to_vec(), 0o750)));
        assert_eq!(find("top"), Some((b"at the root".to_vec(), 0o750)));
        // What lies below the layer could decide these.
        for undecided in ["/b/f", "/a/missing", "/a/link", "/a", "/", "/../top"] {
            assert_eq!(find(undecided), None, "{undecided}");
        }
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("8M"), Some(8 << 20));
        assert_eq!(parse_size("16g"), Some(16 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("lots"), None);
    }

    /// On a full filesystem the error is an I/O error that says so (pull
    /// reports it as a full disk, not as a malformed image). Needs root
    /// for the small tmpfs.
    #[test]
    fn a_full_filesystem_is_reported_as_no_space() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to mount a small tmpfs");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(mounted.success(), "mount a 256 KiB tmpfs");
        let layer = zeros_layer(1 << 20);
        let r = apply(&layer[..], Compression::Gzip, &target(dir.path()), 1 << 30);
        let _ = std::process::Command::new("umount")
            .arg(dir.path())
            .status();
        match r {
            Err(ApplyError::Io { source, what }) => {
                assert!(is_no_space(&source), "{what}: {source}");
                assert!(what.contains("zeros"), "{what}");
            }
            other => panic!("expected ENOSPC, got {other:?}"),
        }
    }
}
