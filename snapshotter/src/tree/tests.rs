//! The cache-correctness cases of invariant 1 at the level of host
//! directory digests, on real files.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use super::*;

fn write(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "Cargo.toml", "[package]\n");
    write(d.path(), "src/main.rs", "fn main() {}\n");
    write(d.path(), "src/lib.rs", "pub fn a() {}\n");
    write(d.path(), "target/debug/out", "binary");
    symlink("src/main.rs", d.path().join("link")).unwrap();
    d
}

/// Scans with a persistent stat cache, like consecutive rbuild runs (and
/// trusting every timestamp: these tests edit files faster than a
/// timestamp tick on purpose, which the racily-clean tests below cover).
struct Scanner {
    known: KnownHashes,
}

impl Scanner {
    fn new() -> Scanner {
        Scanner {
            known: KnownHashes::new(),
        }
    }
    fn scan(&mut self, root: &Path, filter: &Filter) -> HostListing {
        let (listing, fresh) = scan::scan_dir(root, filter, || &self.known, i64::MAX).unwrap();
        self.known.extend(fresh);
        listing
    }
}

fn digest(s: &mut Scanner, root: &Path) -> String {
    s.scan(root, &Filter::default()).digest
}

#[test]
fn an_edit_that_keeps_size_and_mtime_changes_the_digest() {
    let d = tree();
    let mut s = Scanner::new();
    let before = digest(&mut s, d.path());
    let f = d.path().join("src/main.rs");
    let stamp = d.path().join("stamp");
    fs::write(&stamp, "").unwrap();
    assert!(
        Command::new("touch")
            .arg("-r")
            .arg(&f)
            .arg(&stamp)
            .status()
            .unwrap()
            .success()
    );
    // Same length, different bytes, mtime put back: what `git checkout` with
    // restored timestamps, or a fast clone, produces.
    fs::write(&f, "fn main() {;}\n".replace(";}", "}")).unwrap();
    fs::write(&f, "fn niam() {}\n").unwrap();
    assert!(
        Command::new("touch")
            .arg("-r")
            .arg(&stamp)
            .arg(&f)
            .status()
            .unwrap()
            .success()
    );
    let after = digest(&mut s, d.path());
    assert_ne!(before, after);
}

#[test]
fn mode_symlink_deletion_and_empty_dirs_change_the_digest() {
    let d = tree();
    let mut s = Scanner::new();
    let mut seen = vec![digest(&mut s, d.path())];
    let mut expect_new = |s: &mut Scanner, what: &str| {
        let dg = digest(s, d.path());
        assert!(!seen.contains(&dg), "{what} did not change the digest");
        seen.push(dg);
    };
    fs::set_permissions(
        d.path().join("src/lib.rs"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    expect_new(&mut s, "chmod");
    fs::remove_file(d.path().join("link")).unwrap();
    symlink("src/lib.rs", d.path().join("link")).unwrap();
    expect_new(&mut s, "symlink retarget");
    fs::remove_file(d.path().join("Cargo.toml")).unwrap();
    expect_new(&mut s, "deletion");
    fs::create_dir(d.path().join("empty")).unwrap();
    expect_new(&mut s, "an added empty directory");
}

#[test]
fn touch_and_a_fresh_copy_keep_the_digest() {
    let d = tree();
    let mut s = Scanner::new();
    let before = digest(&mut s, d.path());
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(
        Command::new("touch")
            .arg(d.path().join("src/main.rs"))
            .status()
            .unwrap()
            .success()
    );
    let touched = s.scan(d.path(), &Filter::default());
    assert_eq!(touched.digest, before);
    assert_eq!(
        touched.files_hashed, 1,
        "only the touched file was read again"
    );
    let unchanged = s.scan(d.path(), &Filter::default());
    assert_eq!(
        unchanged.files_hashed, 0,
        "the stat cache vouches for every file"
    );

    let copy = tempfile::tempdir().unwrap();
    assert!(
        Command::new("cp")
            .arg("-r")
            .arg(format!("{}/.", d.path().display()))
            .arg(copy.path())
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(digest(&mut Scanner::new(), copy.path()), before);
}

#[test]
fn include_and_exclude_select_what_counts() {
    let d = tree();
    let mut s = Scanner::new();
    let deps = Filter {
        include: vec!["**/Cargo.toml".into(), "Cargo.lock".into()],
        ..Filter::default()
    };
    let listing = s.scan(d.path(), &deps);
    let rels: Vec<&str> = listing.entries.iter().map(|e| e.rel.as_str()).collect();
    assert_eq!(rels, ["Cargo.toml"]);
    let before = listing.digest;
    write(d.path(), "src/main.rs", "fn main() { println!(); }\n");
    assert_eq!(
        s.scan(d.path(), &deps).digest,
        before,
        "sources are not part of the deps digest"
    );
    write(d.path(), "Cargo.lock", "# lock\n");
    assert_ne!(
        s.scan(d.path(), &deps).digest,
        before,
        "a file included now changes it"
    );

    let src = Filter {
        exclude: vec!["target/".into()],
        ..Filter::default()
    };
    let listing = s.scan(d.path(), &src);
    assert!(listing.entries.iter().all(|e| !e.rel.starts_with("target")));
    let before = listing.digest;
    write(d.path(), "target/debug/out", "other binary");
    assert_eq!(s.scan(d.path(), &src).digest, before);

    let nested = Filter {
        include: vec!["src/".into()],
        exclude: vec!["lib.rs".into()],
        ..Filter::default()
    };
    let rels: Vec<String> = s
        .scan(d.path(), &nested)
        .entries
        .into_iter()
        .map(|e| e.rel)
        .collect();
    assert_eq!(rels, ["src", "src/main.rs"]);
}

#[test]
fn gitignore_is_honoured_on_request() {
    let d = tree();
    write(d.path(), ".gitignore", "target/\n*.log\n");
    write(d.path(), "debug.log", "noise");
    let mut s = Scanner::new();
    let with = s.scan(
        d.path(),
        &Filter {
            gitignore: true,
            ..Filter::default()
        },
    );
    let rels: Vec<&str> = with.entries.iter().map(|e| e.rel.as_str()).collect();
    assert!(
        !rels
            .iter()
            .any(|r| r.starts_with("target") || r.ends_with(".log")),
        "{rels:?}"
    );
    assert!(rels.contains(&".gitignore"));
    let without = s.scan(d.path(), &Filter::default());
    assert!(without.entries.iter().any(|e| e.rel == "debug.log"));
}

#[test]
fn copies_reproduce_the_digest() {
    let d = tree();
    let listing = Scanner::new().scan(d.path(), &Filter::default());
    let out = tempfile::tempdir().unwrap();
    let at = |name: &str| {
        crate::confine::Entry::in_tree(out.path(), &out.path().join(name))
            .unwrap()
            .unwrap()
    };
    copy_listing(&listing, &at("a").dir().unwrap(), (0, 0)).unwrap();
    assert_eq!(tree_digest(&out.path().join("a")).unwrap(), listing.digest);
    copy_tree(&out.path().join("a"), &at("b"), &CopyFilter::all(), None).unwrap();
    assert_eq!(tree_digest(&out.path().join("b")).unwrap(), listing.digest);
    let f = CopyFilter::new(&out.path().join("a"), &[], &["target/".to_string()]).unwrap();
    copy_tree(&out.path().join("a"), &at("c"), &f, None).unwrap();
    assert!(!out.path().join("c/target").exists());
    assert!(out.path().join("c/src/lib.rs").exists());
}

#[test]
fn upper_digest_is_content_based_and_bounded() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write(a.path(), "out/x", "same bytes");
    std::thread::sleep(std::time::Duration::from_millis(10));
    write(b.path(), "out/x", "same bytes");
    let da = upper_digest(a.path(), 1 << 20).unwrap().unwrap();
    assert_eq!(Some(da.clone()), upper_digest(b.path(), 1 << 20).unwrap());
    write(b.path(), "out/x", "other bytes");
    assert_ne!(Some(da), upper_digest(b.path(), 1 << 20).unwrap());
    assert_eq!(
        upper_digest(b.path(), 3).unwrap(),
        None,
        "over budget: unknown"
    );
}

#[test]
fn upper_digest_covers_the_xattrs_layers_carry() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write(a.path(), "bin/ping", "elf");
    write(b.path(), "bin/ping", "elf");
    let plain = upper_digest(a.path(), 1 << 20).unwrap().unwrap();
    assert_eq!(
        Some(plain.clone()),
        upper_digest(b.path(), 1 << 20).unwrap()
    );
    // `setcap cap_net_raw+ep`: vfs_cap_data revision 2, effective, bit 13.
    let mut cap = Vec::new();
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        cap.extend_from_slice(&word.to_le_bytes());
    }
    crate::xattr::set_xattr(&b.path().join("bin/ping"), "security.capability", &cap).unwrap();
    let with_cap = upper_digest(b.path(), 1 << 20).unwrap().unwrap();
    assert_ne!(
        plain, with_cap,
        "a file capability is part of what a step changed"
    );
    // overlayfs' own bookkeeping is not.
    crate::xattr::set_xattr(&a.path().join("bin/ping"), "trusted.overlay.origin", b"x").unwrap();
    assert_eq!(Some(plain), upper_digest(a.path(), 1 << 20).unwrap());
}

/// Git's "racily clean" rule: a file changed within one timestamp tick of
/// its hashing could change again in the same tick with the same size and
/// keep every stat field, so the stat cache must not vouch for it.
#[test]
fn a_file_changed_just_before_the_scan_is_hashed_but_not_vouched_for() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "old", "settled");
    // More than a tick of the kernel's coarse clock (at most 10 ms), so
    // that the two files' timestamps differ.
    std::thread::sleep(std::time::Duration::from_millis(30));
    write(d.path(), "new", "just written");
    let old_stat = StatKey::of(&fs::metadata(d.path().join("old")).unwrap());
    // "old" changed before the horizon, "new" at or after it.
    let horizon = old_stat.mtime_ns.max(old_stat.ctime_ns) + 1;
    let (listing, fresh) =
        scan::scan_dir(d.path(), &Filter::default(), KnownHashes::new, horizon).unwrap();
    assert_eq!(listing.files_hashed, 2, "both files were read");
    let new_entry = listing.entries.iter().find(|e| e.rel == "new").unwrap();
    assert_eq!(
        new_entry.kind,
        EntryKind::File {
            hash: *blake3::hash(b"just written").as_bytes(),
            size: 12
        }
    );
    assert!(StatKey::of(&fs::metadata(d.path().join("new")).unwrap()).mtime_ns >= horizon);
    let vouches = |fresh: &KnownHashes, rel: &str, path: &Path| {
        fresh[rel].stat == StatKey::of(&fs::metadata(path).unwrap())
    };
    assert!(
        !vouches(&fresh, "new", &d.path().join("new")),
        "a racy file's record vouches for nothing"
    );
    assert!(
        vouches(&fresh, "old", &d.path().join("old")),
        "a settled file's does"
    );

    // With the real clock, a file written a moment ago is not recorded by
    // either kind of scan; the next scan reads it again.
    write(d.path(), "now", "0123");
    let now = d.path().join("now");
    let (_, fresh) = scan_host_dir(d.path(), &Filter::default(), &KnownHashes::new()).unwrap();
    assert!(!vouches(&fresh, "now", &now), "{fresh:?}");
    let (listing, fresh) = scan_host_file(&now, &KnownHashes::new()).unwrap();
    assert!(!vouches(&fresh, "now", &now), "{fresh:?}");
    assert_eq!(listing.files_hashed, 1);
    assert_eq!(listing.bytes_hashed, 4);
    // The next scan reads it again.
    let (listing, _) = scan_host_file(&now, &fresh).unwrap();
    assert_eq!(listing.files_hashed, 1);
    let (_, fresh) = scan::scan_file(&now, &KnownHashes::new(), i64::MAX).unwrap();
    assert!(
        vouches(&fresh, "now", &now),
        "a settled single file's record vouches"
    );
}

/// A file's entry mtime (where it is copied) as nanoseconds.
fn entry_mtime_ns(listing: &HostListing, rel: &str) -> i64 {
    let e = listing.entries.iter().find(|e| e.rel == rel).unwrap();
    e.mtime.0 * 1_000_000_000 + e.mtime.1
}

#[test]
fn a_copied_file_is_as_new_as_its_content_not_its_host_mtime() {
    let d = tree();
    let f = d.path().join("src/main.rs");
    let set_mtime = |when: &str| {
        assert!(
            Command::new("touch")
                .args(["-m", "-d", when])
                .arg(&f)
                .status()
                .unwrap()
                .success()
        );
    };
    set_mtime("2001-01-01 00:00:00");
    let mut s = Scanner::new();
    let t0 = now_ns();
    let first = s.scan(d.path(), &Filter::default());
    // First seen now: not the host's year 2001.
    let seen = entry_mtime_ns(&first, "src/main.rs");
    assert!(seen >= t0, "first seen at the scan, not the host mtime");

    // Touched, content unchanged: the same mtime, so nothing inside rebuilds.
    set_mtime("2030-01-01 00:00:00");
    let touched = s.scan(d.path(), &Filter::default());
    assert_eq!(entry_mtime_ns(&touched, "src/main.rs"), seen);

    // A same-size edit with the old mtime put back: newer than before.
    let len = fs::metadata(&f).unwrap().len() as usize;
    fs::write(&f, "x".repeat(len)).unwrap();
    set_mtime("2001-01-01 00:00:00");
    let t1 = now_ns();
    let edited = s.scan(d.path(), &Filter::default());
    assert_ne!(edited.digest, first.digest);
    assert!(entry_mtime_ns(&edited, "src/main.rs") >= t1);
    assert!(entry_mtime_ns(&edited, "src/main.rs") > seen);
    // And stable from then on.
    let again = s.scan(d.path(), &Filter::default());
    assert_eq!(
        entry_mtime_ns(&again, "src/main.rs"),
        entry_mtime_ns(&edited, "src/main.rs")
    );

    // A record from before the time was kept (seen 0): the mtime it had.
    let record = s.known.get_mut("src/main.rs").unwrap();
    record.seen_ns = 0;
    let recorded_mtime = record.stat.mtime_ns;
    let old = s.scan(d.path(), &Filter::default());
    assert_eq!(entry_mtime_ns(&old, "src/main.rs"), recorded_mtime);

    // A single host file follows the same rule.
    let known = KnownHashes::from([("main.rs".to_string(), s.known["src/main.rs"])]);
    let (single, _) = scan::scan_file(&f, &known, i64::MAX).unwrap();
    assert_eq!(entry_mtime_ns(&single, "main.rs"), recorded_mtime);
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}
