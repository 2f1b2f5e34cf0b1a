//! A step's key as named parts (see [`crate::explain`]), recorded when it
//! misses, and the reason it missed: against its own key's record (gone,
//! or never finished), else against the step it most likely replaces at
//! its call site.

use std::collections::BTreeMap;
use std::sync::Arc;

use rbuild_snapshotter::tree::{EntryKind, HostListing, HostNode};

use super::*;
use crate::explain::{self, ListedEntry, Listing, Part, Recorded, Why};
use crate::graph::shell_words;
use crate::timeline::StepTag;

/// A step's parts, and the host listings they name.
pub(super) struct Described {
    pub recorded: Recorded,
    listings: Vec<Arc<HostListing>>,
}

impl<W: Worker> Solver<W> {
    /// What `plan`'s key is made of.
    pub(super) fn describe(&self, plan: &StepPlan) -> Described {
        let mut d = Parts {
            parts: BTreeMap::new(),
            listings: Vec::new(),
            secrets: &self.secrets,
        };
        d.tree("input", &plan.parent, "/");
        let (site, api) = match &plan.kind {
            StepKind::Exec(exec) => {
                d.exec(exec, &self.platform.to_string());
                (
                    exec.at
                        .as_deref()
                        .map(portable_site)
                        .unwrap_or_else(|| plan.description.clone()),
                    exec.api.clone(),
                )
            }
            StepKind::Apply(actions) => (d.actions(actions), String::new()),
            StepKind::Tarball { image, name } => {
                d.value("image", &image.manifest.digest);
                d.value("name", name.as_deref().unwrap_or_default());
                ("tarball".to_string(), String::new())
            }
        };
        Described {
            recorded: Recorded {
                site: format!("{site}#{}", depth(&plan.parent)),
                what: self.secrets.scrub_str(&plan.description),
                api,
                parts: d.parts,
            },
            listings: d.listings,
        }
    }

    /// Why `plan` missed, from what the index recorded of earlier runs.
    pub(super) fn why_missed(&self, plan: &StepPlan, now: &Recorded) -> Why {
        let key = plan.key.to_hex();
        match self.index.inputs(&key) {
            Ok(Some(same)) if same.gone > 0 => {
                return Why::Gone {
                    cause: same.gone_cause,
                    at: same.gone,
                };
            }
            Ok(Some(same)) => return Why::Unfinished { at: same.created },
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the recorded keys"),
        }
        let candidates: Vec<(String, i64, Recorded)> = match self.index.inputs_at(&now.site, &key) {
            Ok(c) => c
                .into_iter()
                .map(|r| (r.key, r.created, r.recorded))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the recorded keys");
                Vec::new()
            }
        };
        match explain::replaced(now, &candidates) {
            None => Why::New,
            Some((old_key, at, old)) => {
                let listings = |d: &str| self.index.listing(d).ok().flatten();
                Why::Changed {
                    old_key: old_key.clone(),
                    at: *at,
                    changes: explain::compare(old, now, &listings),
                }
            }
        }
    }

    /// Records the host listings a step's key names (once each), so that
    /// a changed directory can say which paths changed: before the miss
    /// is explained, which compares this run's listing with the last.
    pub(super) fn remember_listings(&self, described: &Described) {
        let result = (|| {
            for l in &described.listings {
                if l.entries.len() > explain::MAX_LISTED || self.index.has_listing(&l.digest)? {
                    continue;
                }
                self.index
                    .put_listing(&l.digest, &l.root.display().to_string(), &listed(l))?;
            }
            Ok::<_, crate::index::IndexError>(())
        })();
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record a host listing for explanations");
        }
    }

    /// Records what a step's key is made of alone (for a step that did
    /// not record a row; its listings were recorded before its miss was
    /// explained). A failure to record is only a warning: it costs an
    /// explanation, not the run.
    pub(super) fn remember(&self, key: &crate::key::CacheKey, described: &Described) {
        if let Err(e) = self.index.put_inputs(&key.to_hex(), &described.recorded) {
            tracing::warn!(error = %e, "could not record a step's key for explanations");
        }
    }
}

impl<W: Worker> Solver<W> {
    /// What progress records of a step: its kind, key, call site, why it
    /// missed (`why`; None for a hit) and the inputs it waited for.
    pub(super) fn tag(&self, plan: &StepPlan, why: Option<&Why>) -> StepTag {
        let mut deps = Vec::new();
        let mut dep = |t: &Tree| match t {
            Tree::Step(s) => deps.push(s.key.to_hex()),
            Tree::Image(i) => deps.push(format!("image:{}", i.manifest.digest)),
            _ => {}
        };
        dep(&plan.parent);
        let (kind, at) = match &plan.kind {
            StepKind::Exec(exec) => {
                for (_, m) in &exec.mounts {
                    match m {
                        MountSpec::Directory(d) => dep(&d.tree),
                        MountSpec::File(f) => dep(&f.tree),
                        _ => {}
                    }
                }
                ("exec", exec.at.clone().unwrap_or_default())
            }
            StepKind::Apply(actions) => {
                for a in actions {
                    match a {
                        PlannedAction::CopyDir { source, .. } => dep(&source.tree),
                        PlannedAction::CopyFile { source, .. } => dep(&source.tree),
                        PlannedAction::Diff { base, other } => {
                            dep(&base.tree);
                            dep(&other.tree);
                        }
                        _ => {}
                    }
                }
                ("apply", String::new())
            }
            StepKind::Tarball { .. } => ("tarball", String::new()),
        };
        StepTag {
            kind,
            key: plan.key.to_hex(),
            at,
            reason: why.map(Why::short).unwrap_or_default(),
            replaced: match why {
                Some(Why::Changed { old_key, .. }) => old_key.clone(),
                _ => String::new(),
            },
            deps,
        }
    }
}

/// A call site (`/home/ci/builds/2/app/ci/pipeline.rs:14`) as its last
/// directory, file and line (`ci/pipeline.rs:14`), so that the same
/// pipeline checked out elsewhere (another CI build directory) has the
/// same sites.
fn portable_site(at: &str) -> String {
    let mut parts = at.rsplitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(file), Some(dir), Some(_)) => format!("{dir}/{file}"),
        _ => at.to_string(),
    }
}

/// How many steps `tree` is made of, down to its image or host directory.
fn depth(tree: &Tree) -> usize {
    let mut n = 0;
    let mut t = tree;
    while let Tree::Step(s) = t {
        n += 1;
        t = &s.plan.parent;
    }
    n
}

/// A host listing as recorded: kind, mode and content hash or target.
fn listed(l: &HostListing) -> Listing {
    l.entries
        .iter()
        .map(|e| {
            let (kind, what) = match &e.kind {
                EntryKind::Dir => ('d', String::new()),
                // 64 bits of the content hash tell a change apart; the
                // whole hash would double what a listing takes.
                EntryKind::File { hash, .. } => ('f', hex::encode(&hash[..8])),
                EntryKind::Symlink { target } => {
                    ('l', String::from_utf8_lossy(target).into_owned())
                }
            };
            (
                e.rel.clone(),
                ListedEntry {
                    kind,
                    mode: e.mode,
                    what,
                },
            )
        })
        .collect()
}

struct Parts<'a> {
    parts: BTreeMap<String, Part>,
    listings: Vec<Arc<HostListing>>,
    secrets: &'a crate::secrets::Secrets,
}

impl Parts<'_> {
    fn value(&mut self, name: &str, v: &str) {
        let v = self.secrets.scrub_str(v);
        self.parts.insert(name.to_string(), Part::value(&v));
    }

    fn tree(&mut self, name: &str, tree: &Tree, path: &str) {
        let path = path.to_string();
        let part = match tree {
            Tree::Empty => Part::Empty,
            Tree::Image(img) => Part::Image {
                reference: img.reference.clone(),
                digest: img.manifest.digest.clone(),
                path,
            },
            Tree::Host(l) => {
                self.listings.push(l.clone());
                Part::Host {
                    root: l.root.display().to_string(),
                    digest: l.digest.clone(),
                    path,
                }
            }
            Tree::Step(s) => Part::Step {
                key: s.key.to_hex(),
                output: s.output.clone(),
                what: self.secrets.scrub_str(&s.plan.description),
                path,
            },
        };
        self.parts.insert(name.to_string(), part);
    }

    fn file(&mut self, name: &str, f: &FileValue) {
        if let Tree::Host(l) = &f.tree
            && let Some(HostNode::File(e)) = l.at(&f.path)
            && let EntryKind::File { hash, .. } = &e.kind
        {
            self.parts.insert(
                name.to_string(),
                Part::HostFile {
                    root: l.root.display().to_string(),
                    path: f.path.clone(),
                    mode: e.mode,
                    hash: hex::encode(hash),
                },
            );
            return;
        }
        self.tree(name, &f.tree, &f.path);
    }

    fn exec(&mut self, exec: &ExecPlan, platform: &str) {
        self.value("command", &shell_words(&exec.args));
        for (n, v) in &exec.env {
            let name = format!("env {n}");
            match v {
                EnvValue::Plain(p) => self.value(&name, p),
                EnvValue::Secret(s) => {
                    self.parts.insert(
                        name,
                        Part::Secret {
                            name: s.key_id().replace('\0', " "),
                        },
                    );
                }
            }
        }
        self.value("workdir", &exec.cwd);
        self.value("user", &exec.user);
        self.value("platform", platform);
        if let Some(stdin) = &exec.stdin {
            self.value(
                "stdin",
                &format!("blake3 {}", blake3::hash(stdin.as_bytes())),
            );
        }
        self.value("expect", exec.expect.as_str());
        self.value(
            "network",
            if exec.namespaced() {
                "a namespace of its own"
            } else {
                "the host's"
            },
        );
        if !exec.bindings.is_empty() {
            let services: Vec<String> = exec
                .bindings
                .iter()
                .map(|b| format!("{} ({})", b.alias, b.service.identity))
                .collect();
            self.value("services", &services.join(", "));
        }
        for (target, m) in &exec.mounts {
            let name = format!("mount {target}");
            match m {
                MountSpec::Directory(d) => self.tree(&name, &d.tree, &d.path),
                MountSpec::File(f) => self.file(&name, f),
                MountSpec::Cache { volume, sharing } => self.value(
                    &name,
                    &format!("cache volume {volume} ({})", sharing.as_str()),
                ),
                MountSpec::Temp => self.value(&name, "tmpfs"),
                MountSpec::Secret { secret, mode } => {
                    self.parts.insert(
                        name.clone(),
                        Part::Secret {
                            name: secret.key_id().replace('\0', " "),
                        },
                    );
                    self.value(&format!("{name} mode"), &format!("{mode:o}"));
                }
                MountSpec::Ca(ca) => self.value(
                    &name,
                    &format!("extra CA certificates, blake3 {}", blake3::hash(&ca.pem)),
                ),
            }
        }
    }

    /// The parts of file operations; returns their site (what they do, where).
    fn actions(&mut self, actions: &[PlannedAction]) -> String {
        let mut site = Vec::new();
        for (i, a) in actions.iter().enumerate() {
            let label = if actions.len() == 1 {
                "action".to_string()
            } else {
                format!("action {}", i + 1)
            };
            let owner = |o: &Option<String>| {
                o.as_ref()
                    .map(|o| format!(", owner {o}"))
                    .unwrap_or_default()
            };
            match a {
                PlannedAction::CopyDir {
                    dest,
                    source,
                    include,
                    exclude,
                    owner: o,
                } => {
                    site.push(format!("copy-dir {dest}"));
                    self.value(
                        &label,
                        &format!(
                            "copy a directory to {dest}, include {include:?}, exclude {exclude:?}{}",
                            owner(o)
                        ),
                    );
                    self.tree(&format!("{label} source"), &source.tree, &source.path);
                }
                PlannedAction::CopyFile {
                    dest,
                    source,
                    permissions,
                    owner: o,
                } => {
                    site.push(format!("copy-file {dest}"));
                    self.value(
                        &label,
                        &format!(
                            "copy a file to {dest}{}{}",
                            permissions
                                .map(|p| format!(", mode {p:o}"))
                                .unwrap_or_default(),
                            owner(o)
                        ),
                    );
                    self.file(&format!("{label} source"), source);
                }
                PlannedAction::Write {
                    dest,
                    contents,
                    permissions,
                    owner: o,
                } => {
                    site.push(format!("write {dest}"));
                    self.value(
                        &label,
                        &format!("write {dest}, mode {permissions:o}{}", owner(o)),
                    );
                    self.value(
                        &format!("{label} content"),
                        &format!(
                            "{} bytes, blake3 {}",
                            contents.len(),
                            blake3::hash(contents)
                        ),
                    );
                }
                PlannedAction::Remove { path } => {
                    site.push(format!("remove {path}"));
                    self.value(&label, &format!("remove {path}"));
                }
                PlannedAction::Diff { base, other } => {
                    site.push("diff".into());
                    self.tree(&format!("{label} base"), &base.tree, &base.path);
                    self.tree(&format!("{label} other"), &other.tree, &other.path);
                }
            }
        }
        site.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::portable_site;

    #[test]
    fn a_site_is_the_same_in_another_checkout() {
        assert_eq!(
            portable_site("/home/ci/builds/2/app/ci/pipeline.rs:14"),
            "ci/pipeline.rs:14"
        );
        assert_eq!(
            portable_site("/tmp/x/ci/pipeline.rs:14"),
            portable_site("/srv/y/ci/pipeline.rs:14")
        );
        assert_eq!(portable_site("ci/pipeline.rs:3"), "ci/pipeline.rs:3");
        assert_eq!(portable_site("pipeline.rs:3"), "pipeline.rs:3");
    }
}
