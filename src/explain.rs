//! Why a step missed the cache: what its key was made of, recorded when it
//! ran, against the step it most likely replaces (the same call site and
//! position in its chain, from earlier runs), compared part by part.
//!
//! A [`Recorded`] holds what a key covers as named [`Part`]s: values (a
//! command, an environment variable's value, a workdir), secrets by name
//! only, and the inputs by their identities and where they came from (an
//! image's reference and digest, a host directory's root and Merkle
//! digest, an upstream step's key and output). Never a file's contents or
//! a secret's value; every value is bounded ([`bounded`]). Host
//! directories' listings (path, kind, mode, content hash) are recorded
//! beside, by digest, so that a changed directory can say which paths.
//!
//! This file is pure logic; the index keeps the records
//! (`index::explain`) and the solver makes them (`solver::explain`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// At most this many characters of a value are kept; a longer one is its
/// head and its hash (so that two long values still compare unequal).
pub const MAX_VALUE: usize = 200;

/// A host listing with more entries than this is recorded by digest only.
pub const MAX_LISTED: usize = 50_000;

/// What one step's key was made of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// Its call site and depth: `ci/pipeline.rs:14#3`.
    pub site: String,
    /// Its description (`exec make test`).
    pub what: String,
    /// The pipeline's declared API version.
    pub api: String,
    pub parts: BTreeMap<String, Part>,
}

/// One named part of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Part {
    /// A value compared as it is (bounded).
    Value { value: String },
    /// A secret, by name only.
    Secret { name: String },
    /// Nothing (an empty tree).
    Empty,
    /// An image, by reference and manifest digest; `path` inside it.
    Image {
        reference: String,
        digest: String,
        path: String,
    },
    /// A host directory, by its root and listing digest; `path` inside it.
    Host {
        root: String,
        digest: String,
        path: String,
    },
    /// A regular host file, by permission bits and content hash.
    HostFile {
        root: String,
        path: String,
        mode: u32,
        hash: String,
    },
    /// An upstream step's result: its key and its output's identity.
    Step {
        key: String,
        output: String,
        what: String,
        path: String,
    },
}

impl Part {
    pub fn value(v: &str) -> Part {
        Part::Value { value: bounded(v) }
    }

    /// What of it feeds the key: two parts with the same identity are the
    /// same input however they were reached.
    fn identity(&self) -> String {
        match self {
            Part::Value { value } => format!("v:{value}"),
            Part::Secret { name } => format!("s:{name}"),
            Part::Empty => "empty".into(),
            Part::Image { digest, path, .. } => format!("i:{digest}:{path}"),
            Part::Host { digest, path, .. } => format!("h:{digest}:{path}"),
            Part::HostFile { mode, hash, .. } => format!("f:{mode:o}:{hash}"),
            Part::Step { output, path, .. } => format!("o:{output}:{path}"),
        }
    }

    /// As shown in a full comparison.
    pub fn shown(&self) -> String {
        let at = |path: &str| {
            if path.is_empty() || path == "/" {
                String::new()
            } else {
                format!(" at {path}")
            }
        };
        match self {
            Part::Value { value } => format!("{value:?}"),
            Part::Secret { name } => format!("secret {name} (value not shown)"),
            Part::Empty => "nothing (empty)".into(),
            Part::Image {
                reference,
                digest,
                path,
            } => format!("image {reference} ({}){}", short_digest(digest), at(path)),
            Part::Host { root, digest, path } => {
                format!(
                    "host directory {root} ({}){}",
                    short_digest(digest),
                    at(path)
                )
            }
            Part::HostFile {
                root,
                path,
                mode,
                hash,
            } => format!(
                "host file {} (mode {mode:o}, {})",
                join_host(root, path),
                short_digest(hash)
            ),
            Part::Step {
                key,
                output,
                what,
                path,
            } => format!(
                "step {what:?} (key {}, output {}){}",
                &key[..key.len().min(12)],
                short_digest(output),
                at(path)
            ),
        }
    }
}

fn join_host(root: &str, path: &str) -> String {
    format!(
        "{}/{}",
        root.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// `sha256:0123456789ab` from a digest or a content identity.
pub fn short_digest(d: &str) -> String {
    let (algo, hex) = match d.rsplit_once(':') {
        Some((a, h)) => (a.rsplit(':').next().unwrap_or(a), h),
        None => ("", d),
    };
    let hex = &hex[..hex.len().min(12)];
    if algo.is_empty() {
        hex.to_string()
    } else {
        format!("{algo}:{hex}")
    }
}

/// `v` when short, else its head and its blake3 hash.
pub fn bounded(v: &str) -> String {
    if v.chars().count() <= MAX_VALUE {
        return v.to_string();
    }
    let head: String = v.chars().take(MAX_VALUE - 40).collect();
    format!(
        "{head}… ({} chars, blake3 {})",
        v.chars().count(),
        &blake3::hash(v.as_bytes()).to_hex()[..16]
    )
}

/// One entry of a host listing as recorded: kind (`d`, `f`, `l`), mode
/// and, for a file its content hash, for a symlink its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedEntry {
    pub kind: char,
    pub mode: u32,
    pub what: String,
}

/// A recorded host listing, by relative path.
pub type Listing = BTreeMap<String, ListedEntry>;

/// The lines a listing is stored as: `rel\tkind\tmode\twhat`.
pub fn listing_lines(listing: &Listing) -> String {
    let mut out = String::new();
    for (rel, e) in listing {
        out.push_str(&format!("{rel}\t{}\t{:o}\t{}\n", e.kind, e.mode, e.what));
    }
    out
}

pub fn parse_listing(text: &str) -> Listing {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, '\t');
            let rel = f.next()?.to_string();
            let kind = f.next()?.chars().next()?;
            let mode = u32::from_str_radix(f.next()?, 8).ok()?;
            let what = f.next().unwrap_or_default().to_string();
            Some((rel, ListedEntry { kind, mode, what }))
        })
        .collect()
}

/// What changed between two listings of a host directory, as short phrases.
pub fn listing_changes(old: &Listing, new: &Listing) -> Vec<String> {
    let kind_name = |k: char| match k {
        'd' => "directory",
        'l' => "symlink",
        _ => "file",
    };
    let mut changed = Vec::new();
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for (rel, n) in new {
        match old.get(rel) {
            None => added.push(rel.clone()),
            Some(o) if o == n => {}
            Some(o) if o.kind != n.kind => changed.push(format!(
                "{rel} ({} → {})",
                kind_name(o.kind),
                kind_name(n.kind)
            )),
            Some(o) => {
                let mut what = Vec::new();
                if o.what != n.what {
                    what.push(match n.kind {
                        'l' => format!("symlink target {:?} → {:?}", o.what, n.what),
                        _ => "content".to_string(),
                    });
                }
                if o.mode != n.mode {
                    what.push(format!("mode {:o} → {:o}", o.mode, n.mode));
                }
                changed.push(format!("{rel} ({})", what.join(", ")));
            }
        }
    }
    for rel in old.keys() {
        if !new.contains_key(rel) {
            removed.push(rel.clone());
        }
    }
    let mut out = Vec::new();
    for (label, list) in [("changed", changed), ("added", added), ("removed", removed)] {
        if list.is_empty() {
            continue;
        }
        let n = list.len();
        let mut shown: Vec<String> = list.into_iter().take(5).collect();
        if n > 5 {
            shown.push(format!("and {} more", n - 5));
        }
        out.push(format!("{label} {}", shown.join(", ")));
    }
    out
}

/// Answers a listing by its digest, when one was recorded.
pub trait Listings {
    fn listing(&self, digest: &str) -> Option<Listing>;
}

impl<F: Fn(&str) -> Option<Listing>> Listings for F {
    fn listing(&self, digest: &str) -> Option<Listing> {
        self(digest)
    }
}

/// One difference between the replaced step's key and this one's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub part: String,
    /// What changed, as one phrase: `env FOO changed: "1" → "2"`.
    pub text: String,
}

/// The parts that differ between `old` and `new`, as phrases; the API
/// version's change last, when it changed too.
pub fn compare(old: &Recorded, new: &Recorded, listings: &dyn Listings) -> Vec<Change> {
    let names: BTreeSet<&String> = old.parts.keys().chain(new.parts.keys()).collect();
    let mut out = Vec::new();
    for name in names {
        let text = match (old.parts.get(name), new.parts.get(name)) {
            (None, Some(n)) => format!("{name} added: {}", n.shown()),
            (Some(o), None) => format!("{name} removed (was {})", o.shown()),
            (Some(o), Some(n)) if o.identity() == n.identity() => continue,
            (Some(o), Some(n)) => changed(name, o, n, listings),
            (None, None) => continue,
        };
        out.push(Change {
            part: name.clone(),
            text,
        });
    }
    // An input image that changed comes first: what else changed (its
    // env, say) follows from it.
    out.sort_by_key(|c| {
        !matches!(
            (old.parts.get(&c.part), new.parts.get(&c.part)),
            (Some(Part::Image { .. }), Some(Part::Image { .. }))
        )
    });
    if old.api != new.api {
        out.push(Change {
            part: "api".into(),
            text: format!(
                "the pipeline's API version changed: {} → {}",
                old.api, new.api
            ),
        });
    }
    out
}

/// How many parts differ (for choosing the step a miss most likely replaces).
pub fn distance(old: &Recorded, new: &Recorded) -> usize {
    let names: BTreeSet<&String> = old.parts.keys().chain(new.parts.keys()).collect();
    names
        .into_iter()
        .filter(|n| old.parts.get(*n).map(Part::identity) != new.parts.get(*n).map(Part::identity))
        .count()
}

fn changed(name: &str, old: &Part, new: &Part, listings: &dyn Listings) -> String {
    match (old, new) {
        (Part::Value { value: o }, Part::Value { value: n }) => {
            if name == "command" {
                format!("the command changed: {} → {}", quoted(o), quoted(n))
            } else {
                format!("{name} changed: {} → {}", quoted(o), quoted(n))
            }
        }
        (
            Part::Image {
                reference: or,
                digest: od,
                ..
            },
            Part::Image {
                reference: nr,
                digest: nd,
                ..
            },
        ) => {
            if or == nr && od != nd {
                format!(
                    "base image {nr} changed: {} → {}",
                    short_digest(od),
                    short_digest(nd)
                )
            } else {
                format!(
                    "{name} changed: image {or} ({}) → {nr} ({})",
                    short_digest(od),
                    short_digest(nd)
                )
            }
        }
        (
            Part::Host {
                root: or,
                digest: od,
                ..
            },
            Part::Host {
                root: nr,
                digest: nd,
                ..
            },
        ) if or == nr && od != nd => match (listings.listing(od), listings.listing(nd)) {
            (Some(o), Some(n)) => {
                let what = listing_changes(&o, &n);
                if what.is_empty() {
                    format!("host directory {nr} changed")
                } else {
                    format!("host directory {nr}: {}", what.join("; "))
                }
            }
            _ => format!(
                "host directory {nr} changed ({} → {}; which paths is not recorded: \
                 too many entries, or recorded too long ago)",
                short_digest(od),
                short_digest(nd)
            ),
        },
        (
            Part::HostFile {
                root,
                path,
                mode: om,
                hash: oh,
            },
            Part::HostFile {
                mode: nm, hash: nh, ..
            },
        ) => {
            let mut what = Vec::new();
            if oh != nh {
                what.push("content".to_string());
            }
            if om != nm {
                what.push(format!("mode {om:o} → {nm:o}"));
            }
            format!(
                "host file {} changed ({})",
                join_host(root, path),
                what.join(", ")
            )
        }
        (
            Part::Step { key: ok, .. },
            Part::Step {
                key: nk, what: nw, ..
            },
        ) => {
            if ok == nk {
                format!("its input {nw:?} ran again and produced different output")
            } else {
                format!("its input {nw:?} changed (see that step's reason)")
            }
        }
        (Part::Secret { name: o }, Part::Secret { name: n }) => {
            format!("{name} changed: secret {o} → secret {n}")
        }
        (o, n) => format!("{name} changed: {} → {}", o.shown(), n.shown()),
    }
}

fn quoted(v: &str) -> String {
    let short: String = v.chars().take(60).collect();
    if short.len() < v.len() {
        format!("{short:?}…")
    } else {
        format!("{v:?}")
    }
}

/// Why a step missed: what the index knows of its key and its call site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// Nothing was ever recorded at its call site.
    New,
    /// The same key ran before, and its result is gone: how and when.
    Gone { cause: String, at: i64 },
    /// The same key ran before and never finished (it failed or was
    /// interrupted), so nothing was cached.
    Unfinished { at: i64 },
    /// It replaces `old` (recorded at `at`): these parts changed.
    Changed {
        old_key: String,
        at: i64,
        changes: Vec<Change>,
    },
}

impl Why {
    /// The short reason shown in progress output.
    pub fn short(&self) -> String {
        match self {
            Why::New => "new step (no earlier run of it is recorded)".into(),
            Why::Gone { cause, at } => format!(
                "same definition as before, but its cached result was {cause} at {}",
                when(*at)
            ),
            Why::Unfinished { at } => format!(
                "same definition as before; its run at {} did not finish (failed or interrupted)",
                when(*at)
            ),
            Why::Changed { changes, .. } => match changes.as_slice() {
                [] => "its key changed in a part rbuild does not record (another rbuild version?)"
                    .into(),
                [one] => one.text.clone(),
                [first, rest @ ..] => format!("{} (and {} more)", first.text, rest.len()),
            },
        }
    }
}

/// A time in seconds since the epoch, as RFC 3339 (UTC, seconds).
pub fn when(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Chooses the step `new` most likely replaces among `candidates` (other
/// keys recorded at its site, newest first): the one with the fewest
/// differing parts, the newest of those.
pub fn replaced<'a>(
    new: &Recorded,
    candidates: &'a [(String, i64, Recorded)],
) -> Option<&'a (String, i64, Recorded)> {
    candidates
        .iter()
        .enumerate()
        .min_by_key(|(i, (_, _, old))| (distance(old, new), *i))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(parts: &[(&str, Part)]) -> Recorded {
        Recorded {
            site: "p.rs:3#1".into(),
            what: "exec make".into(),
            api: "0.3".into(),
            parts: parts
                .iter()
                .map(|(n, p)| (n.to_string(), p.clone()))
                .collect(),
        }
    }

    fn no_listings(_: &str) -> Option<Listing> {
        None
    }

    #[test]
    fn an_env_value_change_is_named_with_both_values() {
        let old = rec(&[
            ("env FOO", Part::value("1")),
            ("command", Part::value("make")),
        ]);
        let new = rec(&[
            ("env FOO", Part::value("2")),
            ("command", Part::value("make")),
        ]);
        let c = compare(&old, &new, &no_listings);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].text, r#"env FOO changed: "1" → "2""#);
    }

    #[test]
    fn a_secret_is_compared_by_name_and_never_shows_a_value() {
        let old = rec(&[("env TOKEN", Part::Secret { name: "a".into() })]);
        let new = rec(&[("env TOKEN", Part::Secret { name: "b".into() })]);
        assert_eq!(
            compare(&old, &new, &no_listings)[0].text,
            "env TOKEN changed: secret a → secret b"
        );
    }

    #[test]
    fn a_base_tag_that_moved_names_both_digests() {
        let img = |d: &str| Part::Image {
            reference: "localhost:5000/alpine:3".into(),
            digest: format!("sha256:{d}"),
            path: "/".into(),
        };
        let old = rec(&[("input", img(&"a".repeat(64)))]);
        let new = rec(&[("input", img(&"b".repeat(64)))]);
        assert_eq!(
            compare(&old, &new, &no_listings)[0].text,
            "base image localhost:5000/alpine:3 changed: sha256:aaaaaaaaaaaa → sha256:bbbbbbbbbbbb"
        );
    }

    #[test]
    fn a_host_directory_change_names_its_paths() {
        let entry = |kind, mode, what: &str| ListedEntry {
            kind,
            mode,
            what: what.into(),
        };
        let old: Listing = [
            ("a.txt".to_string(), entry('f', 0o644, "h1")),
            ("run.sh".to_string(), entry('f', 0o644, "h2")),
            ("gone".to_string(), entry('f', 0o644, "h3")),
            ("link".to_string(), entry('l', 0o777, "a.txt")),
        ]
        .into();
        let new: Listing = [
            ("a.txt".to_string(), entry('f', 0o644, "h9")),
            ("run.sh".to_string(), entry('f', 0o755, "h2")),
            ("new".to_string(), entry('f', 0o644, "h4")),
            ("link".to_string(), entry('l', 0o777, "run.sh")),
        ]
        .into();
        let stored = |d: &str| match d {
            "blake3:old" => Some(old.clone()),
            "blake3:new" => Some(new.clone()),
            _ => None,
        };
        let host = |d: &str| Part::Host {
            root: "/src".into(),
            digest: d.into(),
            path: "/".into(),
        };
        let c = compare(
            &rec(&[("input", host("blake3:old"))]),
            &rec(&[("input", host("blake3:new"))]),
            &stored,
        );
        assert_eq!(
            c[0].text,
            "host directory /src: changed a.txt (content), link (symlink target \"a.txt\" → \
             \"run.sh\"), run.sh (mode 644 → 755); added new; removed gone"
        );
        // Round trip through the stored form.
        assert_eq!(parse_listing(&listing_lines(&old)), old);
    }

    #[test]
    fn an_upstream_step_that_ran_again_differently_is_told_apart_from_one_that_changed() {
        let step = |key: &str, out: &str| Part::Step {
            key: key.into(),
            output: out.into(),
            what: "exec date".into(),
            path: "/".into(),
        };
        let same_key = compare(
            &rec(&[("input", step("k1", "out:1"))]),
            &rec(&[("input", step("k1", "out:2"))]),
            &no_listings,
        );
        assert_eq!(
            same_key[0].text,
            "its input \"exec date\" ran again and produced different output"
        );
        let other_key = compare(
            &rec(&[("input", step("k1", "out:1"))]),
            &rec(&[("input", step("k2", "out:2"))]),
            &no_listings,
        );
        assert!(
            other_key[0]
                .text
                .contains("changed (see that step's reason)")
        );
        // The same output by another key is no change at all.
        assert!(
            compare(
                &rec(&[("input", step("k1", "out:1"))]),
                &rec(&[("input", step("k2", "out:1"))]),
                &no_listings,
            )
            .is_empty()
        );
    }

    #[test]
    fn the_replaced_step_is_the_closest_then_the_newest() {
        let new = rec(&[
            ("command", Part::value("make")),
            ("env A", Part::value("2")),
        ]);
        let far = rec(&[
            ("command", Part::value("other")),
            ("env A", Part::value("9")),
        ]);
        let near = rec(&[
            ("command", Part::value("make")),
            ("env A", Part::value("1")),
        ]);
        let candidates = vec![
            ("k-far".to_string(), 3, far),
            ("k-near-new".to_string(), 2, near.clone()),
            ("k-near-old".to_string(), 1, near),
        ];
        assert_eq!(replaced(&new, &candidates).unwrap().0, "k-near-new");
    }

    #[test]
    fn an_api_version_change_is_named_after_what_it_changed() {
        let mut old = rec(&[("network", Part::value("the host's"))]);
        old.api = "0.1".into();
        let new = rec(&[("network", Part::value("a namespace of its own"))]);
        let c = compare(&old, &new, &no_listings);
        assert_eq!(
            c.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(),
            [
                r#"network changed: "the host's" → "a namespace of its own""#,
                "the pipeline's API version changed: 0.1 → 0.3"
            ]
        );
    }

    #[test]
    fn values_are_bounded_but_still_compare() {
        let a = "x".repeat(1000);
        let b = format!("{}y", "x".repeat(999));
        assert!(bounded(&a).chars().count() <= MAX_VALUE + 60);
        assert_ne!(bounded(&a), bounded(&b));
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn short_reasons() {
        assert!(
            Why::Gone {
                cause: "pruned (rbuild cache prune)".into(),
                at: 0
            }
            .short()
            .contains("pruned (rbuild cache prune) at 1970-01-01T00:00:00Z")
        );
        let two = Why::Changed {
            old_key: "k".into(),
            at: 0,
            changes: vec![
                Change {
                    part: "a".into(),
                    text: "a changed".into(),
                },
                Change {
                    part: "b".into(),
                    text: "b changed".into(),
                },
            ],
        };
        assert_eq!(two.short(), "a changed (and 1 more)");
    }
}
