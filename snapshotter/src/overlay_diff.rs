//! A layer read straight from overlay upper directories.
//!
//! A step's snapshot directory holds exactly what the step changed: new and
//! changed files, overlay's whiteouts (0/0 character devices) for what it
//! deleted, and `trusted.overlay.opaque` on directories whose lower contents
//! it hid. So the diff between a snapshot and one of its ancestors is the
//! merge of the directories between them, top first, in OCI's terms
//! (`.wh.NAME`, `.wh..wh..opq`). Unlike containerd's walking differ, which
//! walks both whole trees and compares the content of every file whose size
//! and whole-second mtime agree (every file of a pulled layer), this reads
//! only what changed. It is the reverse of `unpack.rs`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rbuild_containerd::containerd_client::types::Mount;

use crate::xattr::{OPAQUE, get_xattr, is_overlay_private, list_xattrs};

/// Overlay's opaque marker, and its name when mounted with `userxattr`.
const OPAQUE_XATTRS: [&str; 2] = [OPAQUE, "user.overlay.opaque"];

/// The layer directories a read-only view mounts, top first: an overlay's
/// `lowerdir` list, or the one directory of a bind mount. None for anything
/// else (then containerd's differ is used).
fn layer_dirs(mounts: &[Mount]) -> Option<Vec<PathBuf>> {
    let [m] = mounts else { return None };
    match m.r#type.as_str() {
        "bind" => Some(vec![PathBuf::from(&m.source)]),
        "overlay" => match crate::snapshots::overlay_options(m) {
            (None, lowers) if !lowers.is_empty() => Some(lowers),
            _ => None,
        },
        _ => None,
    }
}

/// The directories `upper`'s view stacks on top of `lower`'s, top first:
/// what the diff between them consists of. None when `upper` is not
/// `lower` plus layers (e.g. a flattened snapshot), or nothing was added.
pub fn added_dirs(lower: &[Mount], upper: &[Mount]) -> Option<Vec<PathBuf>> {
    let low = layer_dirs(lower)?;
    let up = layer_dirs(upper)?;
    if up.len() <= low.len() || !up.ends_with(&low) {
        return None;
    }
    Some(up[..up.len() - low.len()].to_vec())
}

/// What one directory of the stack has at a path.
struct Version {
    path: PathBuf,
    meta: fs::Metadata,
}

impl Version {
    fn is_whiteout(&self) -> bool {
        self.meta.file_type().is_char_device() && self.meta.rdev() == 0
    }
    fn is_dir(&self) -> bool {
        self.meta.is_dir()
    }
    fn is_opaque(&self) -> io::Result<bool> {
        for name in OPAQUE_XATTRS {
            if get_xattr(&self.path, name)?.as_deref() == Some(b"y") {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Writes the merge of `dirs` (top first) as an OCI layer tar into `out`.
pub fn write_layer<W: Write>(dirs: &[PathBuf], out: W) -> io::Result<W> {
    let mut w = LayerWriter {
        builder: tar::Builder::new(out),
        links: HashMap::new(),
    };
    let roots: Vec<PathBuf> = dirs.to_vec();
    w.merge_dir(Path::new(""), &roots)?;
    w.builder.into_inner()
}

struct LayerWriter<W: Write> {
    builder: tar::Builder<W>,
    /// (device, inode) of files with several links → the first path written.
    links: HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> LayerWriter<W> {
    /// Writes the children of directory `rel`, whose visible versions are
    /// `sources` (top first; each a directory, the lower ones merged under
    /// the upper ones).
    fn merge_dir(&mut self, rel: &Path, sources: &[PathBuf]) -> io::Result<()> {
        let mut children: BTreeMap<OsString, Vec<Version>> = BTreeMap::new();
        for src in sources {
            for entry in fs::read_dir(src)? {
                let entry = entry?;
                let path = entry.path();
                let meta = fs::symlink_metadata(&path)?;
                children
                    .entry(entry.file_name())
                    .or_default()
                    .push(Version { path, meta });
            }
        }
        for (name, versions) in children {
            let child = rel.join(&name);
            let top = &versions[0];
            if top.is_whiteout() {
                self.whiteout(rel, &name)?;
            } else if !top.is_dir() {
                self.entry(&child, top)?;
            } else {
                // The versions below the top one that show through it: down
                // to the first opaque directory; a non-directory below a
                // directory (overlay made that one opaque) ends it too.
                let mut merged = Vec::new();
                let mut opaque = false;
                for v in &versions {
                    if !v.is_dir() {
                        opaque = true;
                        break;
                    }
                    merged.push(v.path.clone());
                    if v.is_opaque()? {
                        opaque = true;
                        break;
                    }
                }
                self.entry(&child, top)?;
                if opaque {
                    self.opaque(&child)?;
                }
                self.merge_dir(&child, &merged)?;
            }
        }
        Ok(())
    }

    fn whiteout(&mut self, parent: &Path, name: &OsStr) -> io::Result<()> {
        let mut wh = OsString::from(".wh.");
        wh.push(name);
        self.marker(&parent.join(wh))
    }

    fn opaque(&mut self, dir: &Path) -> io::Result<()> {
        self.marker(&dir.join(".wh..wh..opq"))
    }

    /// An empty regular file with no permissions: how OCI spells a whiteout.
    fn marker(&mut self, path: &Path) -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        self.builder.append_data(&mut h, path, io::empty())
    }

    fn entry(&mut self, rel: &Path, v: &Version) -> io::Result<()> {
        let meta = &v.meta;
        let ft = meta.file_type();
        if ft.is_socket() {
            return Ok(()); // tar has no sockets; containerd skips them too
        }
        let xattrs = list_xattrs(&v.path)?;
        let records: Vec<(String, Vec<u8>)> = xattrs
            .into_iter()
            .filter(|(k, _)| !is_overlay_private(k))
            .map(|(k, val)| (format!("SCHILY.xattr.{k}"), val))
            .collect();
        if !records.is_empty() {
            self.builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid() as u64);
        h.set_gid(meta.gid() as u64);
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            let mut name = rel.as_os_str().to_owned();
            name.push("/");
            return self
                .builder
                .append_data(&mut h, Path::new(&name), io::empty());
        }
        if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            let target = fs::read_link(&v.path)?;
            return self.builder.append_link(&mut h, rel, target);
        }
        if ft.is_file() {
            if meta.nlink() > 1 {
                let id = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&id) {
                    h.set_entry_type(tar::EntryType::Link);
                    let first = first.clone();
                    return self.builder.append_link(&mut h, rel, first);
                }
                self.links.insert(id, rel.to_path_buf());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(meta.len());
            let f = File::open(&v.path)?;
            return self.builder.append_data(&mut h, rel, f);
        }
        let kind = if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else {
            tar::EntryType::Fifo
        };
        h.set_entry_type(kind);
        if kind != tar::EntryType::Fifo {
            let dev = meta.rdev();
            h.set_device_major(libc::major(dev))?;
            h.set_device_minor(libc::minor(dev))?;
        }
        self.builder.append_data(&mut h, rel, io::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: kind.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn added_dirs_are_the_layers_above_the_lower_view() {
        let base = [mount("bind", "/s/1/fs", &["ro", "rbind"])];
        let two = [mount("overlay", "overlay", &["lowerdir=/s/2/fs:/s/1/fs"])];
        let three = [mount(
            "overlay",
            "overlay",
            &["lowerdir=/s/3/fs:/s/2/fs:/s/1/fs"],
        )];
        assert_eq!(
            added_dirs(&base, &two),
            Some(vec![PathBuf::from("/s/2/fs")])
        );
        assert_eq!(
            added_dirs(&base, &three),
            Some(vec![PathBuf::from("/s/3/fs"), PathBuf::from("/s/2/fs")])
        );
        assert_eq!(
            added_dirs(&two, &three),
            Some(vec![PathBuf::from("/s/3/fs")])
        );
        // Not a stack on top of the lower view (a flattened chain), or nothing added.
        let flat = [mount("overlay", "overlay", &["lowerdir=/s/9/fs:/s/8/fs"])];
        assert_eq!(added_dirs(&base, &flat), None);
        assert_eq!(added_dirs(&two, &two), None);
        // A writable mount is not a view.
        let rw = [mount(
            "overlay",
            "overlay",
            &["upperdir=/s/4/fs", "lowerdir=/s/1/fs"],
        )];
        assert_eq!(added_dirs(&base, &rw), None);
    }
}
