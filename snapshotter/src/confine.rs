//! Path confinement: resolving a container path below the root of a
//! mounted filesystem without leaving it (DESIGN.md invariant 11).
//!
//! [`resolve_in`] follows symlinks the way the container would see them
//! (an absolute target restarts at the root, `..` stops at it);
//! [`resolve_entry_in`] does the same for an entry's parent and keeps the
//! entry itself; [`under`] is purely lexical. These are path computations
//! on a live tree, not an open: what is at the result can change before it
//! is used (the next issue makes this an `openat2` walk). Operations on
//! the resolved paths live with their callers (`tree`).

use std::fs;
use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
    //! What confinement does today, so the hardening that follows can show
    //! what it changes. Every result stays inside the root.

    use std::os::unix::fs::symlink;

    use super::*;

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
        assert!(
            resolve_in(r, "/loop").starts_with(r),
            "a symlink loop ends inside the root"
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
    fn a_loop_of_two_ends_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        symlink("/y", r.join("x")).unwrap();
        symlink("/x", r.join("y")).unwrap();
        let p = resolve_in(r, "/x/file");
        assert!(p.starts_with(r), "{}", p.display());
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
}
