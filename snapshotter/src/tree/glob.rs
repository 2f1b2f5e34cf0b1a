//! Names in a tree: a directory's entries, and the paths below it that
//! match a glob (`*` within one component, `**` across them).
//!
//! For reading results; what a host directory or a copy takes is
//! `filter`'s business.

use std::fs;
use std::path::Path;

use crate::Error;

/// Entries (names) of a directory, sorted.
pub fn entries(dir: &Path) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .map_err(|e| Error::io("list", dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    Ok(out)
}

/// A glob over relative paths (`*` stays within one path component, `**` crosses them).
pub fn glob_matcher(pattern: &str) -> Result<globset::GlobMatcher, Error> {
    Ok(globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| Error::InvalidPattern {
            pattern: pattern.to_string(),
            reason: e.to_string(),
        })?
        .compile_matcher())
}

/// Paths below `dir` (relative, `/`-separated) that match a glob.
pub fn glob(dir: &Path, pattern: &str) -> Result<Vec<String>, Error> {
    let glob = glob_matcher(pattern)?;
    let mut out = Vec::new();
    for e in ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .build()
        .flatten()
    {
        if let Ok(rel) = e.path().strip_prefix(dir)
            && !rel.as_os_str().is_empty()
            && glob.is_match(rel)
        {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(out)
}
