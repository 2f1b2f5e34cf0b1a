//! `rbuild.lock`: the digest each image tag a pipeline uses resolved to,
//! beside the pipeline (as Cargo.lock is beside a crate).
//!
//! Without the file, tags resolve live, as they always did. With it, a tag
//! it names resolves to its pinned digest without asking the registry, so
//! a fully cached run makes no network request; a tag it does not name
//! resolves live and is added when the run ends. `--locked` (for CI)
//! refuses a run whose lock is missing or lacks a tag the pipeline uses,
//! before anything of that value is built. `rbuild lock update` resolves
//! every pinned tag again and rewrites the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use rbuild_snapshotter::ImageRef;

/// The file's name, beside the pipeline.
pub const FILE: &str = "rbuild.lock";

const HEADER: &str = "# rbuild.lock: the digest each image tag resolved to. Written by rbuild\n\
# (`rbuild lock update` refreshes every entry); commit it to pin images.\n";

/// A pipeline's lock, as the run uses it.
#[derive(Debug)]
pub struct ImageLock {
    path: PathBuf,
    pinned: BTreeMap<String, String>,
    /// Whether a tag missing from it is an error (`--locked`).
    locked: bool,
    /// Tags resolved live in this run, to add when it ends.
    added: Mutex<BTreeMap<String, String>>,
}

impl ImageLock {
    /// The lock beside a pipeline in `dir`: `None` when there is none and
    /// `locked` is not asked for.
    pub fn open(dir: &Path, locked: bool) -> Result<Option<ImageLock>> {
        let path = dir.join(FILE);
        let pinned = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text).with_context(|| format!("{}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if locked {
                    bail!(
                        "--locked: {} does not exist: run `rbuild lock update` (or a run without --locked) to write it, and commit it",
                        path.display()
                    );
                }
                return Ok(None);
            }
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        Ok(Some(ImageLock {
            path,
            pinned,
            locked,
            added: Mutex::new(BTreeMap::new()),
        }))
    }

    /// The digest `image` is pinned to; `Err` under `--locked` for a tag
    /// the lock does not name. A reference by digest needs no entry.
    pub fn pinned(&self, image: &ImageRef) -> Result<Option<String>, String> {
        if image.digest().is_some() {
            return Ok(None);
        }
        let name = image.to_string();
        if let Some(d) = self.pinned.get(&name) {
            return Ok(Some(d.clone()));
        }
        if self.locked {
            return Err(format!(
                "--locked: {} has no entry for {name}: run `rbuild lock update` after a run without --locked adds it",
                self.path.display()
            ));
        }
        Ok(None)
    }

    /// A tag resolved live in this run (added to the file when it ends).
    pub fn resolved(&self, image: &ImageRef, digest: &str) {
        if image.digest().is_none() && !self.locked {
            self.added
                .lock()
                .expect("lock mutex poisoned")
                .insert(image.to_string(), digest.to_string());
        }
    }

    /// Writes the tags this run added, if any.
    pub fn save(&self) -> Result<()> {
        let added = self.added.lock().expect("lock mutex poisoned").clone();
        if added.is_empty() {
            return Ok(());
        }
        let mut all = self.pinned.clone();
        all.extend(added);
        write(&self.path, &all)
    }

    /// Every pinned tag.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.pinned
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn parse(text: &str) -> Result<BTreeMap<String, String>> {
    let doc: toml::Table = toml::from_str(text)?;
    let mut out = BTreeMap::new();
    if let Some(images) = doc.get("images").and_then(toml::Value::as_table) {
        for (tag, digest) in images {
            let Some(d) = digest.as_str().filter(|d| d.starts_with("sha256:")) else {
                bail!("the entry for {tag} is not a sha256: digest");
            };
            out.insert(tag.clone(), d.to_string());
        }
    }
    Ok(out)
}

/// Writes the lock (atomically: a reader sees the old file or the new).
pub fn write(path: &Path, images: &BTreeMap<String, String>) -> Result<()> {
    let mut text = String::from(HEADER);
    text.push_str("version = 1\n\n[images]\n");
    for (tag, digest) in images {
        text.push_str(&format!(
            "{} = \"{digest}\"\n",
            toml::Value::from(tag.as_str())
        ));
    }
    let tmp = path.with_extension(format!("lock.tmp-{}", rbuild_snapshotter::unique_suffix()));
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn a_lock_pins_what_it_names_and_adds_what_a_run_resolved() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ImageLock::open(dir.path(), false).unwrap().is_none());
        let e = ImageLock::open(dir.path(), true).unwrap_err();
        assert!(
            e.to_string()
                .contains("does not exist: run `rbuild lock update`"),
            "{e}"
        );

        let busybox = ImageRef::parse("127.0.0.1:5000/busybox:latest").unwrap();
        let alpine = ImageRef::parse("alpine").unwrap();
        write(
            &dir.path().join(FILE),
            &BTreeMap::from([(busybox.to_string(), D1.to_string())]),
        )
        .unwrap();
        let lock = ImageLock::open(dir.path(), false).unwrap().unwrap();
        assert_eq!(lock.pinned(&busybox).unwrap().as_deref(), Some(D1));
        assert_eq!(lock.pinned(&alpine).unwrap(), None);
        lock.resolved(&alpine, D2);
        lock.save().unwrap();
        let again = ImageLock::open(dir.path(), true).unwrap().unwrap();
        assert_eq!(again.entries().len(), 2);
        assert_eq!(
            again.pinned(&alpine).unwrap().as_deref(),
            Some(D2),
            "docker.io/library/alpine:latest"
        );
        let other = ImageRef::parse("127.0.0.1:5000/other:1").unwrap();
        let e = again.pinned(&other).unwrap_err();
        assert!(e.contains("has no entry for 127.0.0.1:5000/other:1"), "{e}");
        // A reference by digest needs no entry.
        let by_digest = ImageRef::parse(&format!("127.0.0.1:5000/other@{D1}")).unwrap();
        assert_eq!(again.pinned(&by_digest).unwrap(), None);
    }

    #[test]
    fn a_malformed_entry_is_refused() {
        let e = parse("[images]\n\"a:1\" = \"latest\"\n").unwrap_err();
        assert!(e.to_string().contains("not a sha256: digest"), "{e}");
    }
}
