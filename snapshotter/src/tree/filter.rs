//! Which paths of a tree are taken: include and exclude patterns in
//! `.gitignore` syntax (the `ignore` crate's matcher), for host scans
//! ([`Filter`]) and for copies between snapshots ([`CopyFilter`]).
//!
//! Globs over relative paths (`tree::glob`) are not this: they select
//! results to read, not what a tree consists of.

use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::Error;

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

/// A [`Filter`]'s patterns, compiled.
pub(super) struct Matchers {
    pub(super) include: Option<Gitignore>,
    pub(super) exclude: Option<Gitignore>,
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
    pub(super) fn new(root: &Path, filter: &Filter) -> Result<Matchers, Error> {
        Ok(Matchers {
            include: matcher(root, &filter.include, "include")?,
            exclude: matcher(root, &filter.exclude, "exclude")?,
        })
    }

    pub(super) fn excluded(&self, rel: &Path, is_dir: bool) -> bool {
        self.exclude
            .as_ref()
            .is_some_and(|m| m.matched_path_or_any_parents(rel, is_dir).is_ignore())
    }

    pub(super) fn included(&self, rel: &Path, is_dir: bool) -> bool {
        match &self.include {
            None => true,
            Some(m) => m.matched_path_or_any_parents(rel, is_dir).is_ignore(),
        }
    }
}

/// Which paths a tree copy takes (relative to the copied root).
pub struct CopyFilter {
    pub(super) matchers: Option<Matchers>,
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
