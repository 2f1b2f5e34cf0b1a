//! Content hashes and digests: blake3 of a file, the Merkle digest of a
//! listing (what a host directory's cache-key part is), of a tree in a
//! mounted snapshot, and of what a step changed (its overlay upper
//! directory) for early cutoff.
//!
//! Every digest covers names, types, permission bits, symlink targets and
//! content; never an mtime, an inode or a host path.

use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::filter::Filter;
use super::par_for_each;
use super::scan::{EntryKind, Hash, HostEntry, KnownHashes, StatKey, scan_host_dir};
use crate::Error;

/// Hashes files in parallel: relative path → (stat key, hash).
pub(super) fn hash_files(
    todo: &[(String, PathBuf, StatKey)],
) -> Result<HashMap<String, (StatKey, Hash)>, Error> {
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
        digest_xattrs(&c, h)?;
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

/// The extended attributes a layer would carry (`security.capability`,
/// ACLs, `user.*`), not overlayfs' own bookkeeping. Nothing is added for
/// an entry without any, so digests of such trees are as they were.
fn digest_xattrs(p: &Path, h: &mut blake3::Hasher) -> Result<(), Error> {
    let xattrs: Vec<(String, Vec<u8>)> = crate::xattr::list_xattrs(p)
        .map_err(|e| Error::io("read extended attributes", p, e))?
        .into_iter()
        .filter(|(k, _)| !crate::xattr::is_overlay_private(k))
        .collect();
    if xattrs.is_empty() {
        return Ok(());
    }
    h.update(b"\0xattrs\0");
    h.update(&(xattrs.len() as u64).to_le_bytes());
    for (k, v) in xattrs {
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(&v);
    }
    Ok(())
}

fn is_opaque(dir: &Path) -> bool {
    crate::xattr::get_xattr(dir, crate::xattr::OPAQUE)
        .ok()
        .flatten()
        .as_deref()
        == Some(b"y")
}

/// Content digest of a tree in a mounted snapshot (same Merkle form as a
/// host directory without filters, so equal trees have equal digests).
pub fn tree_digest(dir: &Path) -> Result<String, Error> {
    let (listing, _) = scan_host_dir(dir, &Filter::default(), &KnownHashes::new())?;
    Ok(listing.digest)
}
