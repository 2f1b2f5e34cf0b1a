//! File operations on mounted trees, and reads of them: what a step that
//! copies, writes, removes or diffs files does to its new snapshot once it
//! is mounted on the host, and the answers to `entries`, `glob`,
//! `contents`, `size`, `digest` and `export` about a mounted tree or a
//! scanned host directory.
//!
//! Pure filesystem work: the caller mounts the snapshots (and unmounts and
//! commits them after); nothing here speaks to containerd. Paths inside a
//! tree are resolved with [`crate::confine`], never leaving their root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::confine::{Dir, Entry};
use crate::tree::{self, CopyFilter, HostListing, HostNode};
use crate::{Error, confine, user};

/// Where a copy's or a diff's content is on the host.
#[derive(Clone, Debug)]
pub enum Origin {
    /// `path` in a scanned host directory (read from the host and checked
    /// against the scan).
    Host {
        listing: Arc<HostListing>,
        path: String,
    },
    /// `path` in a tree mounted at `root`.
    Mounted { root: PathBuf, path: String },
}

/// One file operation on the tree being built, reading from sources of
/// type `S`: [`Origin`]s on the host when it runs; the engine describes the
/// same operation with its own source type first ([`FileOp::map_sources`]).
#[derive(Clone, Debug)]
pub enum FileOp<S = Origin> {
    /// Copy a directory's contents (or a file) to `dest`.
    Copy {
        dest: String,
        source: S,
        include: Vec<String>,
        exclude: Vec<String>,
        /// A user spec, resolved with the target tree's passwd and group.
        owner: Option<String>,
        permissions: Option<u32>,
    },
    Write {
        dest: String,
        contents: Arc<Vec<u8>>,
        permissions: u32,
        owner: Option<String>,
    },
    Remove {
        path: String,
    },
    /// Copy what in `other` differs from `base` to the root.
    Diff {
        base: S,
        other: S,
    },
}

impl<S> FileOp<S> {
    /// The sources the operation reads, in order.
    pub fn sources(&self) -> Vec<&S> {
        match self {
            FileOp::Copy { source, .. } => vec![source],
            FileOp::Diff { base, other } => vec![base, other],
            FileOp::Write { .. } | FileOp::Remove { .. } => Vec::new(),
        }
    }

    /// The same operation reading `f(source)` for each of its sources, in order.
    pub fn map_sources<T>(&self, mut f: impl FnMut(&S) -> T) -> FileOp<T> {
        match self {
            FileOp::Copy {
                dest,
                source,
                include,
                exclude,
                owner,
                permissions,
            } => FileOp::Copy {
                dest: dest.clone(),
                source: f(source),
                include: include.clone(),
                exclude: exclude.clone(),
                owner: owner.clone(),
                permissions: *permissions,
            },
            FileOp::Write {
                dest,
                contents,
                permissions,
                owner,
            } => FileOp::Write {
                dest: dest.clone(),
                contents: contents.clone(),
                permissions: *permissions,
                owner: owner.clone(),
            },
            FileOp::Remove { path } => FileOp::Remove { path: path.clone() },
            FileOp::Diff { base, other } => {
                let base = f(base);
                FileOp::Diff {
                    base,
                    other: f(other),
                }
            }
        }
    }
}

/// A read-only question about a tree.
#[derive(Clone, Debug)]
pub enum ReadOp {
    Entries,
    Glob(String),
    Contents,
    Size,
    Digest,
    Export(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadAnswer {
    Names(Vec<String>),
    Bytes(Vec<u8>),
    Size(u64),
    Digest(String),
    Done,
}

fn invalid(message: String) -> Error {
    Error::Invalid(message)
}

fn resolve_user(spec: &str, rootfs: &Path) -> Result<user::ResolvedUser, Error> {
    user::resolve_in_rootfs(spec, rootfs).map_err(invalid)
}

/// Runs file operations against the tree mounted at `target`.
pub fn apply(target: &Path, ops: &[FileOp]) -> Result<(), Error> {
    let owner_of = |o: &Option<String>| -> Result<Option<(u32, u32)>, Error> {
        o.as_deref()
            .map(|spec| resolve_user(spec, target).map(|u| (u.uid, u.gid)))
            .transpose()
    };
    for op in ops {
        match op {
            FileOp::Copy {
                dest,
                source: origin,
                include,
                exclude,
                owner,
                permissions,
            } => {
                let owner = owner_of(owner)?;
                copy_into(target, dest, origin, include, exclude, owner, *permissions)?;
            }
            FileOp::Write {
                dest,
                contents,
                permissions,
                owner,
            } => {
                let dst = confine::resolve_entry_in(target, dest)?;
                let owner = owner_of(owner)?.unwrap_or((0, 0));
                entry_in(target, &dst, dest)?
                    .replace_file(&mut contents.as_slice(), *permissions, Some(owner))
                    .map_err(|e| invalid(format!("write {dest}: {e}")))?;
            }
            FileOp::Remove { path } => {
                tree::remove_path(target, &confine::resolve_entry_in(target, path)?)?;
            }
            FileOp::Diff { base, other } => {
                let (
                    Origin::Mounted {
                        root: base_root,
                        path: bp,
                    },
                    Origin::Mounted {
                        root: other_root,
                        path: op,
                    },
                ) = (base, other)
                else {
                    return Err(invalid("a diff compares two mounted trees".into()));
                };
                let b = confine::resolve_in(base_root, bp)?;
                let o = confine::resolve_in(other_root, op)?;
                copy_differences(&b, &o, target, Path::new(""))?;
            }
        }
    }
    Ok(())
}

/// The entry at `resolved` in the tree at `target` (its parents made),
/// for writing a file `dest` names.
fn entry_in(target: &Path, resolved: &Path, dest: &str) -> Result<Entry, Error> {
    Entry::in_tree(target, resolved)?
        .ok_or_else(|| invalid(format!("{dest} is the root directory, not a file")))
}

/// The directory at `resolved` in the tree at `target`, made if missing
/// (with its parents); a file or symlink there is replaced by it.
fn dir_in(target: &Path, resolved: &Path) -> Result<Dir, Error> {
    match Entry::in_tree(target, resolved)? {
        Some(entry) => entry.dir(),
        None => Dir::open_in_tree(target, target),
    }
}

/// One copy: a directory merges into what `dest` leads to (following
/// symlinks inside the tree); a file replaces the entry at `dest`.
fn copy_into(
    target: &Path,
    dest: &str,
    origin: &Origin,
    include: &[String],
    exclude: &[String],
    owner: Option<(u32, u32)>,
    permissions: Option<u32>,
) -> Result<(), Error> {
    let placed = match origin {
        Origin::Host { listing, path } => match listing.at(path) {
            Some(HostNode::Dir(sub)) => {
                let dst = confine::resolve_in(target, dest)?;
                let sub = sub.filtered(include, exclude)?;
                tree::copy_listing(&sub, &dir_in(target, &dst)?, owner.unwrap_or((0, 0)))?;
                dst
            }
            Some(HostNode::File(entry)) => {
                let dst = confine::resolve_entry_in(target, dest)?;
                let at = entry_in(target, &dst, dest)?;
                tree::copy_host_entry(listing, entry, &at, owner.unwrap_or((0, 0)))?;
                dst
            }
            None => {
                return Err(invalid(format!(
                    "{path} does not exist in host directory {}",
                    listing.root.display()
                )));
            }
        },
        Origin::Mounted { root, path } => {
            let src = confine::resolve_in(root, path)?;
            let meta = std::fs::symlink_metadata(&src)
                .map_err(|_| invalid(format!("{path} does not exist in the copied value")))?;
            let filter = CopyFilter::new(&src, include, exclude)?;
            if meta.is_dir() {
                let dst = confine::resolve_in(target, dest)?;
                tree::copy_tree_into(&src, &dir_in(target, &dst)?, &filter, owner)?;
                dst
            } else {
                let dst = confine::resolve_entry_in(target, dest)?;
                tree::copy_tree(&src, &entry_in(target, &dst, dest)?, &filter, owner)?;
                dst
            }
        }
    };
    if let Some(p) = permissions {
        // Not following what was placed: a copied symlink keeps pointing
        // where it did, and what it points to is not changed.
        match Entry::in_tree(target, &placed)? {
            Some(entry) => entry.set_mode(p),
            None => std::fs::set_permissions(&placed, std::fs::Permissions::from_mode(p))
                .map_err(|e| Error::io("chmod", &placed, e)),
        }
        .map_err(|e| invalid(format!("chmod {dest}: {e}")))?;
    }
    Ok(())
}

/// Copies entries of `other` that are absent from `base` or differ from it.
fn copy_differences(base: &Path, other: &Path, out: &Path, rel: &Path) -> Result<(), Error> {
    let dir = other.join(rel);
    for name in tree::entries(&dir)? {
        let r = rel.join(&name);
        let o = other.join(&r);
        let b = base.join(&r);
        let om = std::fs::symlink_metadata(&o).map_err(|e| Error::io("inspect", &o, e))?;
        let bm = std::fs::symlink_metadata(&b).ok();
        if om.is_dir() {
            if !bm.as_ref().is_some_and(|m| m.is_dir()) {
                let at = Entry::in_tree(out, &out.join(&r))?.ok_or_else(|| {
                    invalid(format!("{} is not below {}", r.display(), out.display()))
                })?;
                tree::copy_tree(&o, &at, &CopyFilter::all(), None)?;
            } else {
                copy_differences(base, other, out, &r)?;
            }
            continue;
        }
        let same = match &bm {
            Some(bm)
                if bm.file_type() == om.file_type() && bm.permissions() == om.permissions() =>
            {
                if om.file_type().is_symlink() {
                    std::fs::read_link(&o).ok() == std::fs::read_link(&b).ok()
                } else {
                    bm.len() == om.len() && tree::hash_file(&o)? == tree::hash_file(&b)?
                }
            }
            _ => false,
        };
        if !same {
            let at = Entry::in_tree(out, &out.join(&r))?.ok_or_else(|| {
                invalid(format!("{} is not below {}", r.display(), out.display()))
            })?;
            tree::copy_tree(&o, &at, &CopyFilter::all(), None)?;
        }
    }
    Ok(())
}

fn not_found(path: &str) -> Error {
    invalid(format!("{path}: no such file or directory"))
}

/// Answers a read-only question about `path` in a scanned host directory.
pub fn read_host(listing: &HostListing, path: &str, op: ReadOp) -> Result<ReadAnswer, Error> {
    let node = listing.at(path).ok_or_else(|| not_found(path))?;
    Ok(match (node, op) {
        (HostNode::Dir(d), ReadOp::Entries) => ReadAnswer::Names(
            d.entries
                .iter()
                .filter(|e| !e.rel.contains('/'))
                .map(|e| e.rel.clone())
                .collect(),
        ),
        (HostNode::Dir(d), ReadOp::Glob(pattern)) => {
            let glob = tree::glob_matcher(&pattern)?;
            ReadAnswer::Names(
                d.entries
                    .iter()
                    .filter(|e| glob.is_match(&e.rel))
                    .map(|e| e.rel.clone())
                    .collect(),
            )
        }
        (HostNode::Dir(d), ReadOp::Digest) => ReadAnswer::Digest(d.digest),
        (HostNode::Dir(d), ReadOp::Export(dest)) => {
            tree::copy_listing(&d, &Entry::on_host(&dest)?.dir()?, (0, 0))?;
            ReadAnswer::Done
        }
        (HostNode::File(e), ReadOp::Contents) => ReadAnswer::Bytes(listing.read(e)?),
        (HostNode::File(e), ReadOp::Size) => ReadAnswer::Size(match e.kind {
            tree::EntryKind::File { size, .. } => size,
            _ => 0,
        }),
        (HostNode::File(e), ReadOp::Digest) => ReadAnswer::Digest(format!(
            "blake3:{}",
            blake3::hash(&listing.read(e)?).to_hex()
        )),
        (HostNode::File(e), ReadOp::Export(dest)) => {
            // The destination is replaced, never written through (it may
            // be a symlink an earlier export put there).
            Entry::on_host(&dest)?
                .replace_file(&mut listing.read(e)?.as_slice(), e.mode, None)
                .map_err(|err| invalid(format!("export to {}: {err}", dest.display())))?;
            ReadAnswer::Done
        }
        (HostNode::Dir(_), _) => {
            return Err(invalid(format!("{path} is a directory, not a file")));
        }
        (HostNode::File(_), _) => {
            return Err(invalid(format!("{path} is a file, not a directory")));
        }
    })
}

/// Answers a read-only question about `path` in the tree mounted at `root`.
pub fn read_tree(root: &Path, path: &str, op: ReadOp) -> Result<ReadAnswer, Error> {
    let node = &confine::resolve_in(root, path)?;
    let meta = std::fs::symlink_metadata(node).map_err(|_| not_found(path))?;
    let is_dir = meta.is_dir();
    Ok(match op {
        ReadOp::Entries if is_dir => ReadAnswer::Names(tree::entries(node)?),
        ReadOp::Glob(p) if is_dir => ReadAnswer::Names(tree::glob(node, &p)?),
        ReadOp::Digest if is_dir => ReadAnswer::Digest(tree::tree_digest(node)?),
        ReadOp::Export(dest) if is_dir => {
            let at = Entry::on_host(&dest)?.dir()?;
            tree::copy_tree_into(node, &at, &CopyFilter::all(), None)?;
            ReadAnswer::Done
        }
        ReadOp::Contents if !is_dir => ReadAnswer::Bytes(
            std::fs::read(node).map_err(|e| invalid(format!("read {path}: {e}")))?,
        ),
        ReadOp::Size if !is_dir => {
            ReadAnswer::Size(std::fs::metadata(node).map(|m| m.len()).unwrap_or(0))
        }
        ReadOp::Digest => {
            ReadAnswer::Digest(format!("blake3:{}", hex::encode(tree::hash_file(node)?)))
        }
        ReadOp::Export(dest) => {
            // The destination is replaced, never written through (it may
            // be a symlink an earlier export put there).
            let mut from =
                std::fs::File::open(node).map_err(|e| invalid(format!("read {path}: {e}")))?;
            Entry::on_host(&dest)?
                .replace_file(&mut from, meta.permissions().mode(), None)
                .map_err(|e| invalid(format!("export to {}: {e}", dest.display())))?;
            ReadAnswer::Done
        }
        _ if is_dir => {
            return Err(invalid(format!("{path} is a directory, not a file")));
        }
        _ => {
            return Err(invalid(format!("{path} is a file, not a directory")));
        }
    })
}

#[cfg(test)]
mod tests {
    //! Every host-side write of a file operation or an export, against a
    //! tree (standing in for a mounted snapshot) and export destinations
    //! with hostile symlinks planted: an absolute symlink to the host, a
    //! `..` chain that climbs out, a chain of 41 links. The host's files
    //! never change.

    use std::fs;
    use std::os::unix::fs::{MetadataExt, symlink};

    use super::*;
    use crate::tree::{Filter, KnownHashes, scan_host_dir};

    struct Hostile {
        tree: tempfile::TempDir,
        host: tempfile::TempDir,
        /// Another tree to copy from.
        src: tempfile::TempDir,
    }

    /// The parent-directory plants: every one of them leads out of the tree
    /// if the host kernel follows it.
    const PARENTS: [&str; 3] = ["abs", "d/e/up", "l0"];

    impl Hostile {
        fn new() -> Hostile {
            let h = Hostile {
                tree: tempfile::tempdir().unwrap(),
                host: tempfile::tempdir().unwrap(),
                src: tempfile::tempdir().unwrap(),
            };
            let (t, host) = (h.tree.path(), h.host.path());
            fs::write(host.join("victim"), "host bytes").unwrap();
            fs::set_permissions(host.join("victim"), fs::Permissions::from_mode(0o600)).unwrap();
            fs::create_dir(host.join("victim_dir")).unwrap();
            fs::write(host.join("victim_dir/kept"), "kept").unwrap();
            let victim_dir = host.join("victim_dir");
            symlink(&victim_dir, t.join("abs")).unwrap();
            fs::create_dir_all(t.join("d/e")).unwrap();
            let climb = format!("{}{}", "../".repeat(12), victim_dir.display());
            symlink(&climb, t.join("d/e/up")).unwrap();
            for i in 0..41 {
                let to = if i == 40 {
                    victim_dir.display().to_string()
                } else {
                    format!("l{}", i + 1)
                };
                symlink(to, t.join(format!("l{i}"))).unwrap();
            }
            symlink(host.join("victim"), t.join("fabs")).unwrap();
            symlink(
                format!("{}{}", "../".repeat(12), host.join("victim").display()),
                t.join("fup"),
            )
            .unwrap();
            // What is copied in.
            let s = h.src.path();
            fs::write(s.join("file"), "copied").unwrap();
            fs::create_dir_all(s.join("dir/sub")).unwrap();
            fs::write(s.join("dir/sub/x"), "x").unwrap();
            fs::write(s.join("dir/kept"), "overwritten?").unwrap();
            symlink(host.join("victim"), s.join("dir/link")).unwrap();
            h
        }

        fn mounted(&self, path: &str) -> Origin {
            Origin::Mounted {
                root: self.src.path().to_path_buf(),
                path: path.into(),
            }
        }

        fn host_origin(&self, path: &str) -> Origin {
            let (listing, _) =
                scan_host_dir(self.src.path(), &Filter::default(), &KnownHashes::new()).unwrap();
            Origin::Host {
                listing: Arc::new(listing),
                path: path.into(),
            }
        }

        /// The host's files are as they were.
        fn assert_host_untouched(&self, what: &str) {
            let host = self.host.path();
            assert_eq!(
                fs::read_to_string(host.join("victim")).unwrap(),
                "host bytes",
                "{what}: the host file was written through a symlink"
            );
            let m = fs::metadata(host.join("victim")).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o600, "{what}: chmod");
            assert_eq!((m.uid(), m.gid()), (0, 0), "{what}: chown");
            let mut names: Vec<_> = fs::read_dir(host.join("victim_dir"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            assert_eq!(names, ["kept"], "{what}: written into a host directory");
            assert_eq!(
                fs::read_to_string(host.join("victim_dir/kept")).unwrap(),
                "kept",
                "{what}"
            );
        }
    }

    fn copy(dest: &str, source: Origin) -> FileOp {
        FileOp::Copy {
            dest: dest.into(),
            source,
            include: vec![],
            exclude: vec![],
            owner: Some("65534:65534".into()),
            permissions: Some(0o777),
        }
    }

    fn write(dest: &str) -> FileOp {
        FileOp::Write {
            dest: dest.into(),
            contents: Arc::new(b"written".to_vec()),
            permissions: 0o755,
            owner: Some("65534:65534".into()),
        }
    }

    fn expect_loop(r: Result<impl std::fmt::Debug, Error>, what: &str) {
        let err = r.expect_err(what).to_string();
        assert!(
            err.contains("too many levels of symbolic links"),
            "{what}: {err}"
        );
    }

    #[test]
    fn file_operations_never_follow_a_planted_symlink_out_of_the_tree() {
        for parent in PARENTS {
            let h = Hostile::new();
            let ops = [
                ("with_new_file", write(&format!("/{parent}/new"))),
                (
                    "file copy",
                    copy(&format!("/{parent}/new"), h.mounted("/file")),
                ),
                (
                    "directory copy",
                    copy(&format!("/{parent}"), h.mounted("/dir")),
                ),
                (
                    "host file copy",
                    copy(&format!("/{parent}/new"), h.host_origin("file")),
                ),
                (
                    "host directory copy",
                    copy(&format!("/{parent}"), h.host_origin("dir")),
                ),
                (
                    "remove",
                    FileOp::Remove {
                        path: format!("/{parent}/kept"),
                    },
                ),
            ];
            for (what, op) in ops {
                let what = format!("{what} through {parent}");
                let r = apply(h.tree.path(), std::slice::from_ref(&op));
                if parent == "l0" {
                    expect_loop(r, &what);
                } else {
                    r.unwrap_or_else(|e| panic!("{what}: {e}"));
                    // What an absolute or climbing symlink leads to, inside the tree.
                    let inside = h
                        .tree
                        .path()
                        .join(h.host.path().join("victim_dir").strip_prefix("/").unwrap());
                    if !matches!(op, FileOp::Remove { .. }) {
                        assert!(inside.exists(), "{what}: written inside the tree");
                    }
                }
                h.assert_host_untouched(&what);
            }
        }
    }

    #[test]
    fn a_symlink_at_the_destination_is_replaced_not_written_through() {
        for entry in ["fabs", "fup"] {
            let h = Hostile::new();
            let ops = [
                ("with_new_file", write(&format!("/{entry}"))),
                ("file copy", copy(&format!("/{entry}"), h.mounted("/file"))),
                (
                    "host file copy",
                    copy(&format!("/{entry}"), h.host_origin("file")),
                ),
                // A directory holding a symlink to the host, given a mode.
                ("directory copy", copy("/copied", h.mounted("/dir"))),
            ];
            for (what, op) in ops {
                let what = format!("{what} to {entry}");
                apply(h.tree.path(), std::slice::from_ref(&op))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                h.assert_host_untouched(&what);
            }
            let m = fs::symlink_metadata(h.tree.path().join(entry)).unwrap();
            assert!(m.is_file(), "{entry} is now a file of the tree");
        }
    }

    #[test]
    fn exports_replace_a_planted_symlink_and_never_write_through_one() {
        let h = Hostile::new();
        let out = h.host.path().join("out");
        fs::create_dir(&out).unwrap();
        // What an earlier export of a step's directory put on the host.
        symlink(h.host.path().join("victim"), out.join("report.txt")).unwrap();
        symlink(h.host.path().join("victim_dir"), out.join("sub")).unwrap();
        symlink(h.host.path().join("victim_dir"), h.host.path().join("out2")).unwrap();
        let src = h.src.path();
        let (listing, _) = scan_host_dir(src, &Filter::default(), &KnownHashes::new()).unwrap();
        type Export<'a> = Box<dyn Fn() -> Result<ReadAnswer, Error> + 'a>;
        let exports: [(&str, Export); 6] = [
            (
                "file export",
                Box::new(|| read_tree(src, "/file", ReadOp::Export(out.join("report.txt")))),
            ),
            (
                "host file export",
                Box::new(|| read_host(&listing, "file", ReadOp::Export(out.join("report.txt")))),
            ),
            (
                "directory export over a symlinked subdirectory",
                Box::new(|| read_tree(src, "/dir", ReadOp::Export(out.clone()))),
            ),
            (
                "host directory export over a symlinked subdirectory",
                Box::new(|| read_host(&listing, "dir", ReadOp::Export(out.clone()))),
            ),
            (
                "directory export to a symlink",
                Box::new(|| read_tree(src, "/dir", ReadOp::Export(h.host.path().join("out2")))),
            ),
            (
                "host directory export to a symlink",
                Box::new(|| read_host(&listing, "dir", ReadOp::Export(h.host.path().join("out2")))),
            ),
        ];
        for (what, export) in exports {
            export().unwrap_or_else(|e| panic!("{what}: {e}"));
            h.assert_host_untouched(what);
        }
        assert_eq!(
            fs::read_to_string(out.join("report.txt")).unwrap(),
            "copied"
        );
        assert!(!out.join("report.txt").is_symlink());
        assert_eq!(fs::read_to_string(out.join("sub/x")).unwrap(), "x");
        assert!(h.host.path().join("out2").is_dir() && !h.host.path().join("out2").is_symlink());
        // The exported symlink is a symlink again, not the file it names.
        assert!(out.join("link").is_symlink());
    }

    #[test]
    fn reads_and_exports_through_a_chain_of_41_links_are_an_error() {
        let h = Hostile::new();
        let dest = h.host.path().join("exported");
        for op in [
            ReadOp::Contents,
            ReadOp::Export(dest.clone()),
            ReadOp::Entries,
        ] {
            expect_loop(
                read_tree(h.tree.path(), "/l0", op.clone()),
                &format!("{op:?}"),
            );
            expect_loop(read_tree(h.tree.path(), "/l0/kept", op), "through a parent");
        }
        assert!(!dest.exists());
        // A `..` chain stays in the tree: there is no `kept` in it.
        let r = read_tree(h.tree.path(), "/d/e/up/kept", ReadOp::Contents);
        assert!(r.is_err(), "read the host's file through ..: {r:?}");
        h.assert_host_untouched("reads");
    }
}
