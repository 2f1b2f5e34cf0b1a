//! `rbuild lock update [PATH]`: resolves every tag rbuild.lock pins again
//! and rewrites it (see `crate::lock`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use rbuild_snapshotter::{ImageRef, Registry, RegistryOptions};

use super::functions::default_pipeline;
use super::out;
use crate::cli::GlobalOpts;
use crate::lock::{FILE, ImageLock, write};

pub async fn update(global: &GlobalOpts, path: Option<PathBuf>) -> Result<i32> {
    let path = path.map_or_else(default_pipeline, Ok)?;
    let path = std::fs::canonicalize(&path)
        .with_context(|| format!("pipeline {} not found", path.display()))?;
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().map(PathBuf::from).unwrap_or_default()
    };
    let Some(lock) = ImageLock::open(&dir, false)? else {
        let at = dir.join(FILE);
        write(&at, &Default::default())?;
        out(format_args!(
            "wrote an empty {}: the next run records the image tags it uses",
            at.display()
        ));
        return Ok(0);
    };
    let registry = Registry::new(RegistryOptions {
        insecure_hosts: global.insecure_registries.clone(),
        ..RegistryOptions::default()
    });
    let mut fresh = std::collections::BTreeMap::new();
    let mut changed = 0;
    for (tag, old) in lock.entries() {
        let image =
            ImageRef::parse(tag).with_context(|| format!("{}: {tag}", lock.path().display()))?;
        let digest = registry
            .resolve_digest(&image)
            .await
            .with_context(|| format!("resolve {tag}"))?;
        if &digest != old {
            changed += 1;
            out(format_args!("{tag}: {old} -> {digest}"));
        }
        fresh.insert(tag.clone(), digest);
    }
    write(lock.path(), &fresh)?;
    out(format_args!(
        "{}: {} tags, {changed} changed",
        lock.path().display(),
        fresh.len()
    ));
    Ok(0)
}
