//! Host directories and single host files scanned into a [`HostListing`]:
//! the selected entries with their kind, permission bits and content hash,
//! and the listing's Merkle digest.
//!
//! Content identity never involves an mtime, an inode or a host path. Stat
//! data is only used to skip re-hashing a file whose (device, inode, size,
//! mtime, ctime) all match what was recorded when it was last hashed. How
//! the digest is formed is `digest`; which paths are taken is `filter`.
//!
//! The mtime a file gets where it is copied (its entry's `mtime`) is not
//! the host's: it is when rbuild first saw that content at that path (the
//! stat cache keeps it). The tools inside a step (cargo, make, tsc) decide
//! by mtime, and a cache volume keeps what they built: a host mtime may lie
//! (restored by `git-mtimestamp`, kept by a same-size edit undone in an
//! editor), so an edit could look older than the artefact built from the
//! content before it. A changed content is always "seen now", newer than
//! anything built from the old one; an unchanged one keeps its time, even
//! when the host file was touched, so nothing inside rebuilds for nothing.
//! Directories and symlinks keep the host's mtime.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::digest::{hash_file, hash_files, merkle_digest};
use super::filter::{Filter, Matchers};
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

    /// Whether the file was last changed before `horizon_ns` (nanoseconds
    /// since the epoch), so that a later change cannot carry the same
    /// mtime and ctime: only then may the stat cache vouch for it.
    fn settled_before(&self, horizon_ns: i64) -> bool {
        self.mtime_ns < horizon_ns && self.ctime_ns < horizon_ns
    }

    /// This key, or one that matches no file when it was taken too close
    /// to its file's last change to vouch for the content (so the next
    /// scan reads the file again, while the record still keeps its hash
    /// and when that content was first seen).
    fn vouching_before(self, horizon_ns: i64) -> StatKey {
        if self.settled_before(horizon_ns) {
            self
        } else {
            StatKey {
                mtime_ns: i64::MIN,
                ..self
            }
        }
    }
}

/// The moment before which a file's timestamps are trusted by a scan
/// starting now on `root`'s filesystem: git's "racily clean" rule. A file
/// written within one timestamp tick of its hashing could be written again
/// in the same tick, same size, and keep every stat field; such a file is
/// hashed for this scan and recorded with a stat key that vouches for
/// nothing, so the next scan reads it again.
fn trust_horizon(root: &Path) -> i64 {
    now_ns() - timestamp_granularity_ns(root)
}

/// How far apart two writes must be for the filesystem to give them
/// different timestamps, with a margin. Local Linux filesystems keep
/// nanoseconds but stamp from the kernel's coarse clock (a jiffy, at most
/// 10 ms); anything else (FAT's 2 s, network filesystems' server clocks)
/// gets two seconds.
fn timestamp_granularity_ns(root: &Path) -> i64 {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    const TMPFS: i64 = 0x0102_1994;
    const OVERLAYFS: i64 = 0x794C_7630;
    const F2FS: i64 = 0xF2F5_2010;
    const ZFS: i64 = 0x2FC1_2FC1;
    // f_type is a long on x86_64 but narrower on some architectures.
    #[allow(clippy::unnecessary_cast)]
    let fs_type = rustix::fs::statfs(root).map(|s| s.f_type as i64);
    match fs_type {
        Ok(EXT4 | XFS | BTRFS | TMPFS | OVERLAYFS | F2FS | ZFS) => 100_000_000,
        _ => 2_000_000_000,
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

/// What the stat cache knows of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatRecord {
    /// Its stat key when it was hashed.
    pub stat: StatKey,
    pub hash: Hash,
    /// When rbuild first saw this content at this path, in nanoseconds
    /// since the epoch; 0 in a record from before rbuild kept it.
    pub seen_ns: i64,
}

impl StatRecord {
    /// When the content `hash` at `rel` was first seen; a file hashed in
    /// this scan (`rehashed`: the stat key to record it with) goes into
    /// `fresh` for the stat cache.
    fn note(
        fresh: &mut KnownHashes,
        rel: &str,
        known: Option<&StatRecord>,
        hash: Hash,
        rehashed: Option<StatKey>,
        now_ns: i64,
    ) -> i64 {
        let seen_ns = StatRecord::seen(known, &hash, now_ns);
        if let Some(stat) = rehashed {
            fresh.insert(
                rel.to_string(),
                StatRecord {
                    stat,
                    hash,
                    seen_ns,
                },
            );
        }
        seen_ns
    }

    /// When the content `hash` was first seen at this record's path: the
    /// record's time if it is that content, else `now_ns`.
    fn seen(known: Option<&StatRecord>, hash: &Hash, now_ns: i64) -> i64 {
        match known {
            Some(k) if k.hash == *hash && k.seen_ns > 0 => k.seen_ns,
            // Recorded before the time was kept: the mtime it had then.
            Some(k) if k.hash == *hash => k.stat.mtime_ns,
            _ => now_ns,
        }
    }
}

/// What the stat cache knew, and what it should learn, by relative path.
pub type KnownHashes = HashMap<String, StatRecord>;

/// Nanoseconds since the epoch as an mtime (seconds, nanoseconds).
fn as_mtime(ns: i64) -> (i64, i64) {
    (ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

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
    scan_dir(root, filter, known, trust_horizon(root))
}

/// The scan itself; of the files hashed, only those changed before
/// `horizon_ns` are returned as records for the stat cache.
pub(super) fn scan_dir<K: std::borrow::Borrow<KnownHashes>>(
    root: &Path,
    filter: &Filter,
    known: impl FnOnce() -> K,
    horizon_ns: i64,
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
    let now = now_ns();
    let todo: Vec<(String, PathBuf, StatKey)> = picked
        .iter()
        .filter(|(_, (m, _))| m.file_type().is_file())
        .filter_map(|(rel, (m, path))| {
            let key = StatKey::of(m);
            match known.get(rel) {
                Some(k) if k.stat == key => None,
                _ => Some((rel.clone(), path.clone(), key)),
            }
        })
        .collect();
    let mut hashed = hash_files(&todo)?;
    let mut fresh = KnownHashes::with_capacity(hashed.len());
    let bytes_hashed = todo.iter().map(|t| t.2.size).sum();

    let mut entries = Vec::with_capacity(picked.len());
    for (rel, (m, path)) in picked {
        let stat = StatKey::of(&m);
        let ft = m.file_type();
        let mut mtime = (m.mtime(), m.mtime_nsec());
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(|e| Error::io("read symlink", &path, e))?;
            EntryKind::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            }
        } else {
            let record = known.get(&rel);
            let (hash, rehashed) = match hashed.remove(&rel) {
                Some((stat, hash)) => (hash, Some(stat)),
                None => (known[&rel].hash, None),
            };
            let seen_ns = StatRecord::note(&mut fresh, &rel, record, hash, rehashed, now);
            mtime = as_mtime(seen_ns);
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
            mtime,
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
        {
            for r in fresh.values_mut() {
                r.stat = r.stat.vouching_before(horizon_ns);
            }
            fresh
        },
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
    let horizon = trust_horizon(path.parent().unwrap_or(Path::new("/")));
    scan_file(path, known, horizon)
}

/// `scan_host_file`, recording the hash only of a file changed before
/// `horizon_ns`.
pub(super) fn scan_file(
    path: &Path,
    known: &KnownHashes,
    horizon_ns: i64,
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
    let mut hashed = false;
    let mut mtime = (m.mtime(), m.mtime_nsec());
    let kind = if m.file_type().is_symlink() {
        let target = fs::read_link(path).map_err(|e| Error::io("read symlink", path, e))?;
        EntryKind::Symlink {
            target: target.as_os_str().as_bytes().to_vec(),
        }
    } else {
        let record = known.get(&rel);
        let now = now_ns();
        let hash = match record {
            Some(k) if k.stat == stat => k.hash,
            _ => {
                hashed = true;
                hash_file(path)?
            }
        };
        let rehashed = hashed.then(|| stat.vouching_before(horizon_ns));
        let seen_ns = StatRecord::note(&mut fresh, &rel, record, hash, rehashed, now);
        mtime = as_mtime(seen_ns);
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
        mtime,
    }];
    let digest = merkle_digest(&entries);
    Ok((
        HostListing {
            root: root.to_path_buf(),
            files_hashed: usize::from(hashed),
            bytes_hashed: if hashed { m.size() } else { 0 },
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
