//! File trees on the host: scanning a host directory into a content
//! listing with a Merkle digest (DESIGN.md invariant 1), copying trees into
//! mounted snapshots, and digesting what a step changed (an overlay upper
//! directory) for early cutoff.
//!
//! Content identity never involves an mtime, an inode or a host path. Stat
//! data is only used to skip re-hashing a file whose (device, inode, size,
//! mtime, ctime) all match what was recorded when it was last hashed.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::Error;

/// What identifies a file's content without reading it: if all of these
/// are unchanged, so is the content (ctime cannot be set back by tools
/// that restore mtimes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StatKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl StatKey {
    pub fn of(m: &fs::Metadata) -> StatKey {
        StatKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}

pub type Hash = [u8; 32];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File { hash: Hash, size: u64 },
    Symlink { target: Vec<u8> },
}

/// One entry of a scanned host directory.
#[derive(Clone, Debug)]
pub struct HostEntry {
    /// Path relative to the scanned root, `/`-separated, no leading slash.
    pub rel: String,
    pub kind: EntryKind,
    /// Permission bits (mode & 0o7777).
    pub mode: u32,
    pub stat: StatKey,
    pub mtime: (i64, i64),
}

/// A host directory as selected by a [`Filter`], with its content digest.
#[derive(Clone, Debug)]
pub struct HostListing {
    pub root: PathBuf,
    /// Sorted by `rel`; parents before children.
    pub entries: Vec<HostEntry>,
    /// `blake3:<hex>` Merkle digest over (name, type, permission bits,
    /// symlink target, content hash).
    pub digest: String,
    pub files_hashed: usize,
    pub bytes_hashed: u64,
}

/// Which files of a host directory are taken. Patterns use `.gitignore`
/// syntax: `target/` matches a directory named target at any depth,
/// `/target` only at the root, `**/Cargo.toml` any Cargo.toml.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Also honour `.gitignore` files (in the tree and its parents).
    pub gitignore: bool,
}

struct Matchers {
    include: Option<Gitignore>,
    exclude: Option<Gitignore>,
}

fn matcher(root: &Path, patterns: &[String], what: &str) -> Result<Option<Gitignore>, Error> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GitignoreBuilder::new(root);
    for p in patterns {
        b.add_line(None, p).map_err(|e| Error::InvalidPattern {
            pattern: p.clone(),
            reason: format!("{what} pattern: {e}"),
        })?;
    }
    b.build().map(Some).map_err(|e| Error::InvalidPattern {
        pattern: patterns.join(", "),
        reason: e.to_string(),
    })
}

impl Matchers {
    fn new(root: &Path, filter: &Filter) -> Result<Matchers, Error> {
        Ok(Matchers {
            include: matcher(root, &filter.include, "include")?,
            exclude: matcher(root, &filter.exclude, "exclude")?,
        })
    }

    fn excluded(&self, rel: &Path, is_dir: bool) -> bool {
        self.exclude
            .as_ref()
            .is_some_and(|m| m.matched_path_or_any_parents(rel, is_dir).is_ignore())
    }

    fn included(&self, rel: &Path, is_dir: bool) -> bool {
        match &self.include {
            None => true,
            Some(m) => m.matched_path_or_any_parents(rel, is_dir).is_ignore(),
        }
    }
}

/// What the stat cache knew, and what it should learn.
pub type KnownHashes = HashMap<String, (StatKey, Hash)>;

/// Scans `root` under `filter`. `known` maps relative paths to the stat
/// key and hash recorded last time; files whose stat key matches are not
/// read again. Returns the listing and the (relative path → stat key, hash)
/// records of files that were hashed now.
pub fn scan_host_dir(
    root: &Path,
    filter: &Filter,
    known: &KnownHashes,
) -> Result<(HostListing, KnownHashes), Error> {
    scan_host_dir_with(root, filter, || known)
}

/// `scan_host_dir`, asking for the stat cache's records only once the walk
/// is done (so that reading them can overlap with it).
pub fn scan_host_dir_with<K: std::borrow::Borrow<KnownHashes>>(
    root: &Path,
    filter: &Filter,
    known: impl FnOnce() -> K,
) -> Result<(HostListing, KnownHashes), Error> {
    let meta = fs::metadata(root).map_err(|e| Error::io("read host directory", root, e))?;
    if !meta.is_dir() {
        return Err(Error::io(
            "read host directory",
            root,
            std::io::Error::other("not a directory"),
        ));
    }
    let matchers = Matchers::new(root, filter)?;
    let mut walk = ignore::WalkBuilder::new(root);
    walk.standard_filters(false)
        .follow_links(false)
        .git_ignore(filter.gitignore)
        .git_exclude(false)
        .git_global(false)
        .require_git(false)
        .parents(filter.gitignore)
        .threads(
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(8),
        );
    {
        let root = root.to_path_buf();
        let ex = matchers.exclude.clone();
        walk.filter_entry(move |e| {
            let Ok(rel) = e.path().strip_prefix(&root) else {
                return true;
            };
            let is_dir = e.file_type().is_some_and(|t| t.is_dir());
            !ex.as_ref().is_some_and(|m| {
                !rel.as_os_str().is_empty()
                    && m.matched_path_or_any_parents(rel, is_dir).is_ignore()
            })
        });
    }

    // The walk and a stat of every entry, on several threads (the order
    // does not matter: what is kept goes into sorted maps).
    let found: Mutex<Vec<(PathBuf, fs::Metadata)>> = Mutex::new(Vec::new());
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    walk.build_parallel().run(|| {
        let failed = &failed;
        let mut batch = Batch {
            items: Vec::new(),
            sink: &found,
        };
        Box::new(move |entry| {
            use ignore::WalkState;
            let stat = entry
                .map_err(|e| {
                    Error::io(
                        "scan host directory",
                        root,
                        std::io::Error::other(e.to_string()),
                    )
                })
                .and_then(|entry| {
                    let path = entry.into_path();
                    fs::symlink_metadata(&path)
                        .map(|m| (path.clone(), m))
                        .map_err(|e| Error::io("stat", &path, e))
                });
            match stat {
                Ok(found_one) => {
                    batch.items.push(found_one);
                    if batch.items.len() >= 256 {
                        batch.flush();
                    }
                    WalkState::Continue
                }
                Err(e) => {
                    failed.lock().unwrap().get_or_insert(e);
                    WalkState::Quit
                }
            }
        })
    });
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    let found = found.into_inner().unwrap();

    // What is selected, with stat data; directories are decided after their
    // contents (a directory is kept when it is selected itself or holds
    // something selected).
    let mut picked: BTreeMap<String, (fs::Metadata, PathBuf)> = BTreeMap::new();
    let mut dirs: BTreeMap<String, fs::Metadata> = BTreeMap::new();
    for (path, m) in found {
        let rel_path = path.strip_prefix(root).expect("walk stays under root");
        if rel_path.as_os_str().is_empty() {
            continue;
        }
        let rel = rel_str(rel_path)?;
        let ft = m.file_type();
        if ft.is_dir() {
            if matchers.excluded(rel_path, true) {
                continue;
            }
            if matchers.include.is_some() && matchers.included(rel_path, true) {
                picked.insert(rel.clone(), (m.clone(), path.clone()));
            }
            dirs.insert(rel, m);
        } else if ft.is_file() || ft.is_symlink() {
            if matchers.excluded(rel_path, false) || !matchers.included(rel_path, false) {
                continue;
            }
            picked.insert(rel, (m, path));
        }
        // Sockets, FIFOs and devices are not build inputs; they are skipped.
    }
    // Without an include filter every directory is an entry (an added empty
    // directory changes the digest); with one, only parents of what is kept.
    if matchers.include.is_none() {
        for (rel, m) in &dirs {
            picked.insert(rel.clone(), (m.clone(), root.join(rel)));
        }
    } else {
        let parents: Vec<String> = picked.keys().flat_map(|rel| ancestors(rel)).collect();
        for p in parents {
            if !picked.contains_key(&p)
                && let Some(m) = dirs.get(&p)
            {
                picked.insert(p.clone(), (m.clone(), root.join(&p)));
            }
        }
    }

    // Hash what the stat cache cannot vouch for, in parallel.
    let known = known();
    let known = known.borrow();
    let todo: Vec<(String, PathBuf, StatKey)> = picked
        .iter()
        .filter(|(_, (m, _))| m.file_type().is_file())
        .filter_map(|(rel, (m, path))| {
            let key = StatKey::of(m);
            match known.get(rel) {
                Some((k, _)) if *k == key => None,
                _ => Some((rel.clone(), path.clone(), key)),
            }
        })
        .collect();
    let fresh = hash_files(&todo)?;
    let bytes_hashed = todo.iter().map(|t| t.2.size).sum();

    let mut entries = Vec::with_capacity(picked.len());
    for (rel, (m, path)) in picked {
        let stat = StatKey::of(&m);
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(|e| Error::io("read symlink", &path, e))?;
            EntryKind::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            }
        } else {
            let hash = match fresh.get(&rel) {
                Some((_, h)) => *h,
                None => known[&rel].1,
            };
            EntryKind::File {
                hash,
                size: m.size(),
            }
        };
        entries.push(HostEntry {
            rel,
            kind,
            mode: m.permissions().mode() & 0o7777,
            stat,
            mtime: (m.mtime(), m.mtime_nsec()),
        });
    }
    let digest = merkle_digest(&entries);
    Ok((
        HostListing {
            root: root.to_path_buf(),
            files_hashed: todo.len(),
            bytes_hashed,
            entries,
            digest,
        },
        fresh,
    ))
}

/// What one walker thread found, handed over in batches (and the rest when
/// the thread is done with it).
struct Batch<'a> {
    items: Vec<(PathBuf, fs::Metadata)>,
    sink: &'a Mutex<Vec<(PathBuf, fs::Metadata)>>,
}

impl Batch<'_> {
    fn flush(&mut self) {
        self.sink.lock().unwrap().append(&mut self.items);
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Scans a single host file (a listing rooted at its directory with one entry).
pub fn scan_host_file(
    path: &Path,
    known: &KnownHashes,
) -> Result<(HostListing, KnownHashes), Error> {
    let (Some(root), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::io(
            "read host file",
            path,
            std::io::Error::other("not a file path"),
        ));
    };
    let rel = rel_str(Path::new(name))?;
    let m = fs::symlink_metadata(path).map_err(|e| Error::io("read host file", path, e))?;
    if m.is_dir() {
        return Err(Error::io(
            "read host file",
            path,
            std::io::Error::other("is a directory; use host().directory()"),
        ));
    }
    let stat = StatKey::of(&m);
    let mut fresh = KnownHashes::new();
    let kind = if m.file_type().is_symlink() {
        let target = fs::read_link(path).map_err(|e| Error::io("read symlink", path, e))?;
        EntryKind::Symlink {
            target: target.as_os_str().as_bytes().to_vec(),
        }
    } else {
        let hash = match known.get(&rel) {
            Some((k, h)) if *k == stat => *h,
            _ => {
                let h = hash_file(path)?;
                fresh.insert(rel.clone(), (stat, h));
                h
            }
        };
        EntryKind::File {
            hash,
            size: m.size(),
        }
    };
    let entries = vec![HostEntry {
        rel,
        kind,
        mode: m.permissions().mode() & 0o7777,
        stat,
        mtime: (m.mtime(), m.mtime_nsec()),
    }];
    let digest = merkle_digest(&entries);
    Ok((
        HostListing {
            root: root.to_path_buf(),
            files_hashed: fresh.len(),
            bytes_hashed: if fresh.is_empty() { 0 } else { m.size() },
            entries,
            digest,
        },
        fresh,
    ))
}

/// What is at a path of a host listing.
pub enum HostNode<'a> {
    Dir(HostListing),
    File(&'a HostEntry),
}

impl HostListing {
    /// The directory or file at `path` ("/" is the root), re-rooted for a directory.
    pub fn at(&self, path: &str) -> Option<HostNode<'_>> {
        let rel = path.trim_matches('/');
        if rel.is_empty() {
            return Some(HostNode::Dir(self.clone()));
        }
        let entry = self.entries.iter().find(|e| e.rel == rel)?;
        if entry.kind != EntryKind::Dir {
            return Some(HostNode::File(entry));
        }
        let prefix = format!("{rel}/");
        let entries: Vec<HostEntry> = self
            .entries
            .iter()
            .filter_map(|e| {
                e.rel.strip_prefix(&prefix).map(|r| HostEntry {
                    rel: r.to_string(),
                    ..e.clone()
                })
            })
            .collect();
        let digest = merkle_digest(&entries);
        Some(HostNode::Dir(HostListing {
            root: self.root.join(rel),
            entries,
            digest,
            files_hashed: 0,
            bytes_hashed: 0,
        }))
    }

    /// Keeps only what `filter` selects (include/exclude; `.gitignore` is not re-read).
    pub fn filtered(&self, include: &[String], exclude: &[String]) -> Result<HostListing, Error> {
        if include.is_empty() && exclude.is_empty() {
            return Ok(self.clone());
        }
        let m = Matchers::new(
            &self.root,
            &Filter {
                include: include.to_vec(),
                exclude: exclude.to_vec(),
                gitignore: false,
            },
        )?;
        let kept: Vec<&HostEntry> = self
            .entries
            .iter()
            .filter(|e| {
                let is_dir = e.kind == EntryKind::Dir;
                let p = Path::new(&e.rel);
                !m.excluded(p, is_dir) && (is_dir && m.include.is_none() || m.included(p, is_dir))
            })
            .collect();
        let mut rels: std::collections::BTreeSet<String> =
            kept.iter().map(|e| e.rel.clone()).collect();
        for e in &kept {
            rels.extend(ancestors(&e.rel));
        }
        let entries: Vec<HostEntry> = self
            .entries
            .iter()
            .filter(|e| rels.contains(&e.rel))
            .cloned()
            .collect();
        let digest = merkle_digest(&entries);
        Ok(HostListing {
            root: self.root.clone(),
            entries,
            digest,
            files_hashed: 0,
            bytes_hashed: 0,
        })
    }

    /// Reads a file of the listing, checking it still has the scanned content.
    pub fn read(&self, entry: &HostEntry) -> Result<Vec<u8>, Error> {
        let path = self.root.join(&entry.rel);
        let data = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        if let EntryKind::File { hash, .. } = entry.kind
            && *blake3::hash(&data).as_bytes() != hash
        {
            return Err(Error::io(
                "read",
                &path,
                std::io::Error::other("the file changed since it was scanned; run again"),
            ));
        }
        Ok(data)
    }
}

fn rel_str(rel: &Path) -> Result<String, Error> {
    rel.to_str().map(|s| s.to_string()).ok_or_else(|| {
        Error::io(
            "read host directory",
            rel,
            std::io::Error::other("path is not UTF-8"),
        )
    })
}

/// "a/b/c" → ["a", "a/b"]
fn ancestors(rel: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = rel;
    while let Some((parent, _)) = cur.rsplit_once('/') {
        out.push(parent.to_string());
        cur = parent;
    }
    out
}

/// Runs `f` on every item, on as many threads as there are CPUs; the first error wins.
fn par_for_each<T: Sync>(
    items: &[T],
    f: impl Fn(&T) -> Result<(), Error> + Sync,
) -> Result<(), Error> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let err: Mutex<Option<Error>> = Mutex::new(None);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(items.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while err.lock().unwrap().is_none() {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else {
                        break;
                    };
                    if let Err(e) = f(item) {
                        *err.lock().unwrap() = Some(e);
                    }
                }
            });
        }
    });
    match err.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Hashes files in parallel.
fn hash_files(todo: &[(String, PathBuf, StatKey)]) -> Result<KnownHashes, Error> {
    let out = Mutex::new(HashMap::with_capacity(todo.len()));
    par_for_each(todo, |(rel, path, key)| {
        let h = hash_file(path)?;
        out.lock().unwrap().insert(rel.clone(), (*key, h));
        Ok(())
    })?;
    Ok(out.into_inner().unwrap())
}

pub fn hash_file(path: &Path) -> Result<Hash, Error> {
    let mut h = blake3::Hasher::new();
    let m = fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    if m.len() > 1 << 20 {
        h.update_mmap(path)
            .map_err(|e| Error::io("read", path, e))?;
    } else {
        let data = fs::read(path).map_err(|e| Error::io("read", path, e))?;
        h.update(&data);
    }
    Ok(*h.finalize().as_bytes())
}

/// The Merkle digest of a sorted listing: each directory's digest covers
/// its children's names, types, permission bits and digests.
pub fn merkle_digest(entries: &[HostEntry]) -> String {
    // children[dir] = [(name, node digest)], filled bottom-up.
    let mut children: HashMap<&str, Vec<(&str, Hash)>> = HashMap::new();
    // Deepest first, so a directory's children are done before it.
    let mut order: Vec<(usize, &HostEntry)> = entries.iter().map(|e| (depth(&e.rel), e)).collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.rel.cmp(&b.1.rel)));
    for (_, e) in order {
        let mut h = blake3::Hasher::new();
        match &e.kind {
            EntryKind::File { hash, .. } => {
                h.update(b"file\0");
                h.update(&e.mode.to_le_bytes());
                h.update(hash);
            }
            EntryKind::Symlink { target } => {
                h.update(b"symlink\0");
                h.update(&(target.len() as u64).to_le_bytes());
                h.update(target);
            }
            EntryKind::Dir => {
                h.update(b"dir\0");
                h.update(&e.mode.to_le_bytes());
                hash_children(&mut h, children.remove(e.rel.as_str()).unwrap_or_default());
            }
        }
        let d = *h.finalize().as_bytes();
        let (parent, name) = e.rel.rsplit_once('/').unwrap_or(("", &e.rel));
        children.entry(parent).or_default().push((name, d));
    }
    let mut root = blake3::Hasher::new();
    root.update(b"root\0");
    hash_children(&mut root, children.remove("").unwrap_or_default());
    format!("blake3:{}", root.finalize().to_hex())
}

fn hash_children(h: &mut blake3::Hasher, mut kids: Vec<(&str, Hash)>) {
    kids.sort_unstable();
    h.update(&(kids.len() as u64).to_le_bytes());
    for (name, d) in kids {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&d);
    }
}

fn depth(rel: &str) -> usize {
    rel.matches('/').count()
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Sets a path's mtime (and atime) without following symlinks.
fn set_mtime(path: &Path, sec: i64, nsec: i64) -> std::io::Result<()> {
    let t = libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = [t, t];
    let c = cstr(path);
    // SAFETY: valid path and two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn lchown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Resolves a container path inside a root filesystem mounted at `root`,
/// following symlinks the way the container would see them: an absolute
/// target restarts at `root`, `..` stops at it. Host-side file operations
/// use this so that a symlink in an image (`/app -> /etc`) can never lead
/// them out of the tree. Components that do not exist are appended as is.
pub fn resolve_in(root: &Path, path: &str) -> PathBuf {
    let mut todo: Vec<String> = path
        .split('/')
        .rev()
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    let mut cur = root.to_path_buf();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        match part.as_str() {
            "." => {}
            ".." => {
                if cur != root {
                    cur.pop();
                }
            }
            name => {
                let next = cur.join(name);
                match fs::symlink_metadata(&next) {
                    Ok(m) if m.file_type().is_symlink() && links < 40 => {
                        links += 1;
                        let Ok(target) = fs::read_link(&next) else {
                            cur = next;
                            continue;
                        };
                        let t = target.to_string_lossy().into_owned();
                        if t.starts_with('/') {
                            cur = root.to_path_buf();
                        }
                        todo.extend(
                            t.split('/')
                                .rev()
                                .filter(|p| !p.is_empty())
                                .map(String::from),
                        );
                    }
                    _ => cur = next,
                }
            }
        }
    }
    cur
}

/// Like [`resolve_in`] for the directory of `path`, keeping its last
/// component as is: the entry itself, for replacing or removing it (a
/// symlink is removed, not what it points to).
pub fn resolve_entry_in(root: &Path, path: &str) -> PathBuf {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((parent, name)) if !name.is_empty() && name != "." && name != ".." => {
            resolve_in(root, parent).join(name)
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

/// Which paths a tree copy takes (relative to the copied root).
pub struct CopyFilter {
    matchers: Option<Matchers>,
}

impl CopyFilter {
    pub fn all() -> CopyFilter {
        CopyFilter { matchers: None }
    }

    pub fn new(root: &Path, include: &[String], exclude: &[String]) -> Result<CopyFilter, Error> {
        if include.is_empty() && exclude.is_empty() {
            return Ok(CopyFilter::all());
        }
        let filter = Filter {
            include: include.to_vec(),
            exclude: exclude.to_vec(),
            gitignore: false,
        };
        Ok(CopyFilter {
            matchers: Some(Matchers::new(root, &filter)?),
        })
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
            let c = cstr(dst);
            // SAFETY: valid path; mode and rdev from the source.
            let rc = unsafe {
                libc::mknod(
                    c.as_ptr(),
                    m.mode() as libc::mode_t,
                    m.rdev() as libc::dev_t,
                )
            };
            if rc != 0 {
                return Err(Error::io(
                    "create node",
                    dst,
                    std::io::Error::last_os_error(),
                ));
            }
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

/// Digest of what a step changed: the overlay upper directory of its
/// snapshot (files, directories with their opaque flag, whiteouts,
/// symlinks, owners and modes). Gives up (None) past `max_bytes` of file
/// content, where knowing the digest would cost more than it saves.
pub fn upper_digest(upper: &Path, max_bytes: u64) -> Result<Option<String>, Error> {
    let mut budget = max_bytes;
    let mut h = blake3::Hasher::new();
    h.update(b"upper\0");
    if !digest_node(upper, &mut h, &mut budget)? {
        return Ok(None);
    }
    Ok(Some(format!("blake3:{}", h.finalize().to_hex())))
}

fn digest_node(p: &Path, h: &mut blake3::Hasher, budget: &mut u64) -> Result<bool, Error> {
    let mut names: Vec<_> = fs::read_dir(p)
        .map_err(|e| Error::io("list", p, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    h.update(&(names.len() as u64).to_le_bytes());
    for name in names {
        let c = p.join(&name);
        let m = fs::symlink_metadata(&c).map_err(|e| Error::io("stat", &c, e))?;
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&m.mode().to_le_bytes());
        h.update(&m.uid().to_le_bytes());
        h.update(&m.gid().to_le_bytes());
        let ft = m.file_type();
        if ft.is_dir() {
            h.update(&[u8::from(is_opaque(&c))]);
            if !digest_node(&c, h, budget)? {
                return Ok(false);
            }
        } else if ft.is_file() {
            if m.size() > *budget {
                return Ok(false);
            }
            *budget -= m.size();
            h.update(&hash_file(&c)?);
        } else if ft.is_symlink() {
            let t = fs::read_link(&c).map_err(|e| Error::io("read symlink", &c, e))?;
            h.update(t.as_os_str().as_bytes());
        } else if ft.is_char_device() || ft.is_block_device() {
            h.update(&m.rdev().to_le_bytes());
        }
    }
    Ok(true)
}

fn is_opaque(dir: &Path) -> bool {
    crate::xattr::get_xattr(dir, crate::xattr::OPAQUE)
        .ok()
        .flatten()
        .as_deref()
        == Some(b"y")
}

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

/// Entries (names) of a directory, sorted.
pub fn entries(dir: &Path) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .map_err(|e| Error::io("list", dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    Ok(out)
}

/// A glob over relative paths (`*` stays within one path component, `**` crosses them).
pub fn glob_matcher(pattern: &str) -> Result<globset::GlobMatcher, Error> {
    Ok(globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| Error::InvalidPattern {
            pattern: pattern.to_string(),
            reason: e.to_string(),
        })?
        .compile_matcher())
}

/// Paths below `dir` (relative, `/`-separated) that match a glob.
pub fn glob(dir: &Path, pattern: &str) -> Result<Vec<String>, Error> {
    let glob = glob_matcher(pattern)?;
    let mut out = Vec::new();
    for e in ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .build()
        .flatten()
    {
        if let Ok(rel) = e.path().strip_prefix(dir)
            && !rel.as_os_str().is_empty()
            && glob.is_match(rel)
        {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(out)
}

/// Content digest of a tree in a mounted snapshot (same Merkle form as a
/// host directory without filters, so equal trees have equal digests).
pub fn tree_digest(dir: &Path) -> Result<String, Error> {
    let (listing, _) = scan_host_dir(dir, &Filter::default(), &KnownHashes::new())?;
    Ok(listing.digest)
}

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
