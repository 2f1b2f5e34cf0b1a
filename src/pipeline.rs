//! Turning a pipeline (a single `.rs` file, or a directory with a
//! Cargo.toml) into an executable: cargo in a shared target directory under
//! rbuild's cache dir, skipped entirely when neither the pipeline nor the
//! SDK changed.
//!
//! The SDK's source is embedded in the rbuild binary and written out once
//! per SDK version, so a pipeline builds against exactly the engine that
//! runs it, with no registry involved.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};

use crate::api::{self, Declared};

/// The SDK crate's files, as compiled into this binary (a test checks that
/// this is every file of sdk/src).
const SDK_FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../sdk/Cargo.toml")),
    (
        "src/cache_volume.rs",
        include_str!("../sdk/src/cache_volume.rs"),
    ),
    ("src/client.rs", include_str!("../sdk/src/client.rs")),
    ("src/container.rs", include_str!("../sdk/src/container.rs")),
    ("src/directory.rs", include_str!("../sdk/src/directory.rs")),
    ("src/error.rs", include_str!("../sdk/src/error.rs")),
    ("src/file.rs", include_str!("../sdk/src/file.rs")),
    ("src/functions.rs", include_str!("../sdk/src/functions.rs")),
    ("src/host.rs", include_str!("../sdk/src/host.rs")),
    ("src/lib.rs", include_str!("../sdk/src/lib.rs")),
    ("src/module.rs", include_str!("../sdk/src/module.rs")),
    ("src/ops.rs", include_str!("../sdk/src/ops.rs")),
    ("src/options.rs", include_str!("../sdk/src/options.rs")),
    ("src/secret.rs", include_str!("../sdk/src/secret.rs")),
    ("src/service.rs", include_str!("../sdk/src/service.rs")),
    ("src/session.rs", include_str!("../sdk/src/session.rs")),
    (
        "src/wire/functions.rs",
        include_str!("../sdk/src/wire/functions.rs"),
    ),
    (
        "src/wire/graph.rs",
        include_str!("../sdk/src/wire/graph.rs"),
    ),
    ("src/wire/mod.rs", include_str!("../sdk/src/wire/mod.rs")),
    (
        "src/wire/module.rs",
        include_str!("../sdk/src/wire/module.rs"),
    ),
    (
        "src/wire/request.rs",
        include_str!("../sdk/src/wire/request.rs"),
    ),
];

/// The versions rbuild itself was built and tested with. A single-file
/// pipeline's first compile starts from this lock file, so cargo needs no
/// index update (nor network) for the SDK and tokio, and gets the versions
/// the SDK was tested with rather than whatever is newest that day.
const WORKSPACE_LOCK: &str = include_str!("../Cargo.lock");

/// Dependencies every single-file pipeline gets without declaring them.
const DEFAULT_DEPS: &str = r#"
rbuild-sdk = { path = "@SDK@" }
tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
"#;

/// A pipeline ready to run.
pub struct Built {
    pub executable: PathBuf,
    /// The API version it declares (see `crate::api`).
    pub declared: Declared,
    /// Its identity: rbuild's version, the embedded SDK and every source
    /// file's content (the name of the executable).
    pub stamp: String,
    /// Where it lives: its file's directory, or the crate's.
    pub dir: PathBuf,
}

enum Source {
    File(PathBuf),
    Crate(PathBuf),
}

fn locate(path: &Path) -> Result<Source> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("pipeline {} not found", path.display()))?;
    let abs = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve pipeline path {}", path.display()))?;
    if meta.is_dir() {
        if !abs.join("Cargo.toml").is_file() {
            bail!(
                "pipeline directory {} has no Cargo.toml: give a .rs file, or a crate that depends on rbuild-sdk",
                path.display()
            );
        }
        Ok(Source::Crate(abs))
    } else if abs.extension().is_some_and(|e| e == "rs") {
        Ok(Source::File(abs))
    } else {
        bail!(
            "pipeline {} is neither a .rs file nor a directory with a Cargo.toml",
            path.display()
        )
    }
}

fn hash_hex(h: &blake3::Hasher, n: usize) -> String {
    h.finalize().to_hex()[..n].to_string()
}

/// Writes the embedded SDK under `cache/sdk/<hash>` (once) and returns that directory.
fn materialize_sdk(cache: &Path) -> Result<(PathBuf, String)> {
    let mut h = blake3::Hasher::new();
    for (name, text) in SDK_FILES {
        h.update(name.as_bytes());
        h.update(&(text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    let hash = hash_hex(&h, 16);
    let dir = cache.join("sdk").join(&hash);
    if dir.join("Cargo.toml").is_file() {
        return Ok((dir, hash));
    }
    let tmp = cache
        .join("sdk")
        .join(format!(".tmp-{}", rbuild_snapshotter::unique_suffix()));
    for (name, text) in SDK_FILES {
        let p = tmp.join(name);
        std::fs::create_dir_all(p.parent().expect("file has a parent"))?;
        std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
    }
    // Another rbuild may have won the race; its copy is identical.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok((dir, hash))
}

/// The cargo manifest block a single-file pipeline may carry:
/// ```text
/// //! ```cargo
/// //! [dependencies]
/// //! serde = "1"
/// //! ```
/// ```
fn embedded_manifest(source: &str) -> Option<String> {
    let mut lines = source.lines().map(str::trim_start);
    lines.find(|l| {
        l.strip_prefix("//!")
            .is_some_and(|r| r.trim() == "```cargo")
    })?;
    let mut out = String::new();
    for l in lines {
        let Some(rest) = l.strip_prefix("//!") else {
            break;
        };
        if rest.trim() == "```" {
            return Some(out);
        }
        out.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        out.push('\n');
    }
    None
}

fn package_name(file: &Path, id: &str) -> String {
    let stem: String = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("pipeline-{}-{}", stem.trim_matches('-'), &id[..8])
}

/// The generated Cargo.toml for a single-file pipeline.
fn generated_manifest(file: &Path, source: &str, sdk: &Path, id: &str) -> Result<String> {
    let name = package_name(file, id);
    let mut doc: toml::Table = toml::from_str(&format!(
        "[package]\nname = {name:?}\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\
         [[bin]]\nname = {name:?}\npath = {:?}\n\
         [dependencies]\n{}\n\
         [profile.dev]\ndebug = false\n\
         [workspace]\n",
        file.display().to_string(),
        DEFAULT_DEPS.replace("@SDK@", &sdk.display().to_string())
    ))?;
    if let Some(extra) = embedded_manifest(source) {
        let extra: toml::Table = toml::from_str(&extra).with_context(|| {
            format!("the ```cargo block in {} is not valid TOML", file.display())
        })?;
        for (section, value) in extra {
            match (doc.get_mut(&section), value) {
                (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => {
                    for (k, v) in theirs {
                        // The SDK dependency stays the embedded one.
                        if section == "dependencies" && k == "rbuild-sdk" {
                            continue;
                        }
                        mine.insert(k, v);
                    }
                }
                (_, value) => {
                    doc.insert(section, value);
                }
            }
        }
    }
    Ok(toml::to_string(&doc)?)
}

/// What a pipeline's manifest (`where_` in errors) declares: its API
/// version, checked as this rbuild serves it, and an `rbuild-sdk` pin that
/// the embedded SDK must meet (it builds every pipeline).
fn declarations(manifest: &str, where_: &str) -> Result<Declared> {
    let doc: toml::Table =
        toml::from_str(manifest).with_context(|| format!("{where_} is not valid TOML"))?;
    if let Some(req) = api::sdk_requirement(&doc) {
        api::check_sdk_pin(&req, rbuild_sdk::wire::SDK_VERSION, where_)?;
    }
    api::declared(&doc, where_)
}

/// Says once per pipeline (a marker in its cache directory) how to declare
/// an API version, when it declares none.
fn hint_once(dir: &Path, declared: Declared, pipeline: &Path, single_file: bool) {
    if declared != Declared::Nothing {
        return;
    }
    let marker = dir.join("api-hint-shown");
    if marker.exists() {
        return;
    }
    crate::progress::say(&api::undeclared_hint(
        &pipeline.display().to_string(),
        single_file,
    ));
    let _ = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&marker, b""));
}

/// Hashes a crate's files (respecting .gitignore, skipping target/).
fn hash_crate(dir: &Path, h: &mut blake3::Hasher) -> Result<()> {
    let mut files = BTreeMap::new();
    for entry in ignore::WalkBuilder::new(dir)
        .hidden(false)
        .filter_entry(|e| e.file_name() != "target" && e.file_name() != ".git")
        .build()
    {
        let entry = entry?;
        if entry.file_type().is_some_and(|t| t.is_file()) {
            let rel = entry.path().strip_prefix(dir)?.to_path_buf();
            files.insert(rel, entry.path().to_path_buf());
        }
    }
    for (rel, abs) in files {
        let data = std::fs::read(&abs).with_context(|| format!("read {}", abs.display()))?;
        h.update(rel.to_string_lossy().as_bytes());
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(&data);
    }
    Ok(())
}

/// Whether a crate's manifest depends on rbuild-sdk (by name, renamed with
/// `package = "rbuild-sdk"`, or from its workspace), in any dependency
/// table. An unreadable manifest is left to cargo to report.
fn depends_on_sdk(manifest: &str) -> bool {
    let Ok(doc) = toml::from_str::<toml::Table>(manifest) else {
        return true;
    };
    let names_sdk = |deps: Option<&toml::Value>| {
        deps.and_then(toml::Value::as_table).is_some_and(|t| {
            t.iter().any(|(name, spec)| {
                name == "rbuild-sdk"
                    || spec.get("package").and_then(toml::Value::as_str) == Some("rbuild-sdk")
            })
        })
    };
    names_sdk(doc.get("dependencies"))
        || names_sdk(doc.get("workspace").and_then(|w| w.get("dependencies")))
        || doc
            .get("target")
            .and_then(toml::Value::as_table)
            .is_some_and(|targets| targets.values().any(|t| names_sdk(t.get("dependencies"))))
}

/// Whether a crate's manifest takes rbuild-sdk from a registry (and so
/// needs it patched to the embedded copy).
fn wants_sdk_patch(manifest: &str) -> bool {
    let Ok(doc) = toml::from_str::<toml::Table>(manifest) else {
        return false;
    };
    let dep = doc.get("dependencies").and_then(|d| d.get("rbuild-sdk"));
    match dep {
        Some(toml::Value::String(_)) => true,
        Some(toml::Value::Table(t)) => !t.contains_key("path") && !t.contains_key("git"),
        _ => false,
    }
}

/// Builds (or finds already built) the pipeline at `path`.
pub fn build(path: &Path, cache: &Path) -> Result<Built> {
    let source = locate(path)?;
    std::fs::create_dir_all(cache)
        .with_context(|| format!("create cache directory {}", cache.display()))?;
    let (sdk_dir, sdk_hash) = materialize_sdk(cache)?;

    let mut stamp = blake3::Hasher::new();
    stamp.update(env!("CARGO_PKG_VERSION").as_bytes());
    stamp.update(sdk_hash.as_bytes());
    let declared;
    let (project, manifest_path, extra_args) = match &source {
        Source::File(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("read pipeline {}", file.display()))?;
            let id = hash_hex(
                blake3::Hasher::new().update(file.as_os_str().as_encoded_bytes()),
                16,
            );
            let project = cache.join("pipelines").join(&id);
            let manifest = generated_manifest(file, &text, &sdk_dir, &id)?;
            declared = declarations(
                &embedded_manifest(&text).unwrap_or_default(),
                &format!("the ```cargo block of {}", file.display()),
            )?;
            hint_once(&cache.join("pipelines").join(&id), declared, file, true);
            std::fs::create_dir_all(&project)?;
            let manifest_path = project.join("Cargo.toml");
            if std::fs::read_to_string(&manifest_path).ok().as_deref() != Some(manifest.as_str()) {
                std::fs::write(&manifest_path, &manifest)?;
            }
            seed_lock_file(&project)?;
            stamp.update(manifest.as_bytes());
            stamp.update(text.as_bytes());
            (project, manifest_path, Vec::new())
        }
        Source::Crate(dir) => {
            let id = hash_hex(
                blake3::Hasher::new().update(dir.as_os_str().as_encoded_bytes()),
                16,
            );
            let project = cache.join("pipelines").join(&id);
            std::fs::create_dir_all(&project)?;
            hash_crate(dir, &mut stamp)?;
            let manifest_path = dir.join("Cargo.toml");
            let manifest = std::fs::read_to_string(&manifest_path)?;
            if !depends_on_sdk(&manifest) {
                bail!(
                    "{} does not depend on rbuild-sdk, so it is not a pipeline (running it would run that crate's own program): add `rbuild-sdk = \"0.1\"` to its [dependencies], or name the pipeline's .rs file",
                    manifest_path.display()
                );
            }
            declared = declarations(&manifest, &manifest_path.display().to_string())?;
            hint_once(&project, declared, dir, false);
            let mut args = Vec::new();
            if wants_sdk_patch(&manifest) {
                args.push("--config".to_string());
                args.push(format!(
                    "patch.crates-io.rbuild-sdk.path={:?}",
                    sdk_dir.display().to_string()
                ));
            }
            (project, manifest_path, args)
        }
    };
    let stamp = hash_hex(&stamp, 24);
    let bin_dir = project.join("bin");
    let cached = bin_dir.join(&stamp);
    let dir = match &source {
        Source::File(f) => f.parent().map(Path::to_path_buf).unwrap_or_default(),
        Source::Crate(d) => d.clone(),
    };
    if cached.is_file() {
        return Ok(Built {
            executable: cached,
            declared,
            stamp,
            dir,
        });
    }

    // Held while cargo builds: `cache prune` leaves the target dir alone.
    let _building = lock_file(&cache.join("target.lock"), false);
    let built = run_cargo(&manifest_path, &cache.join("target"), &extra_args)
        .with_context(|| format!("pipeline {}", path.display()))?;
    std::fs::create_dir_all(&bin_dir)?;
    let tmp = bin_dir.join(format!(".tmp-{}", rbuild_snapshotter::unique_suffix()));
    std::fs::copy(&built, &tmp)
        .with_context(|| format!("copy {} into the pipeline cache", built.display()))?;
    std::fs::rename(&tmp, &cached)?;
    // Older builds of this pipeline are dead weight once nobody can be
    // about to run them; a concurrent rbuild's temporary copy is not ours.
    let stale = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for entry in std::fs::read_dir(&bin_dir)?.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < stale);
        if entry.path() != cached
            && !entry.file_name().to_string_lossy().starts_with(".tmp-")
            && old
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(Built {
        executable: cached,
        declared,
        stamp,
        dir,
    })
}

/// A `flock` on `path` (created): shared, or exclusive when `exclusive`;
/// `None` when another holds it the other way (never waits).
fn lock_file(path: &Path, exclusive: bool) -> Option<std::fs::File> {
    use rustix::fs::FlockOperation;
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()?;
    let op = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::LockShared
    };
    rustix::fs::flock(&f, op).ok()?;
    Some(f)
}

/// A compiled pipeline running: `cache prune` never removes it.
pub struct InUse {
    _lock: Option<std::fs::File>,
}

/// Marks `executable` as used now (least recently used goes first) and
/// running until the value is dropped.
pub fn hold(executable: &Path) -> InUse {
    // Opened for reading: a write handle on an executable, however brief,
    // makes a concurrent exec of it fail ("Text file busy"). Its owner
    // may set its times through a read handle.
    if let Ok(f) = std::fs::File::open(executable) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
    InUse {
        _lock: lock_file(&executable.with_extension("lock"), false),
    }
}

/// What pruning compiled pipelines removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PipelinesPruned {
    pub executables: usize,
    pub bytes: u64,
    /// The shared cargo target dir (it is rebuilt when a pipeline changes).
    pub target: bool,
}

/// Removes compiled pipelines under `cache`: every one with `all`, else
/// those unused for `keep_duration` and then, least recently used first,
/// until they fit in `keep_storage` (the cargo target dir goes first:
/// it only speeds up recompiles). A running pipeline, or a target dir
/// cargo is building in, is never removed.
pub fn prune_compiled(
    cache: &Path,
    keep_duration: Option<std::time::Duration>,
    keep_storage: Option<u64>,
    all: bool,
) -> PipelinesPruned {
    let mut out = PipelinesPruned::default();
    let mut exes: Vec<(std::time::SystemTime, u64, PathBuf)> = Vec::new();
    for project in std::fs::read_dir(cache.join("pipelines"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for exe in std::fs::read_dir(project.path().join("bin"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = exe.file_name().to_string_lossy().into_owned();
            let Ok(meta) = exe.metadata() else { continue };
            if name.starts_with(".tmp-") || name.ends_with(".lock") || !meta.is_file() {
                continue;
            }
            let used = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            exes.push((used, meta.len(), exe.path()));
        }
    }
    exes.sort();
    let target = cache.join("target");
    let mut total: u64 = exes.iter().map(|e| e.1).sum::<u64>() + crate::cache::du(&target);
    let over = |total: u64| keep_storage.is_some_and(|k| total > k);
    if (all || over(total))
        && target.is_dir()
        && let Some(_lock) = lock_file(&cache.join("target.lock"), true)
    {
        let size = crate::cache::du(&target);
        if std::fs::remove_dir_all(&target).is_ok() {
            out.target = true;
            out.bytes += size;
            total -= size.min(total);
        }
    }
    let now = std::time::SystemTime::now();
    for (used, size, exe) in exes {
        let stale = keep_duration.is_some_and(|d| now.duration_since(used).unwrap_or_default() > d);
        if !(all || stale || over(total)) {
            continue;
        }
        let lock = exe.with_extension("lock");
        let Some(_held) = lock_file(&lock, true) else {
            continue; // running
        };
        if std::fs::remove_file(&exe).is_ok() {
            let _ = std::fs::remove_file(&lock);
            out.executables += 1;
            out.bytes += size;
            total -= size.min(total);
        }
    }
    out
}

/// Gives a generated pipeline crate rbuild's own lock file when it has none
/// yet; cargo drops what the pipeline does not use and resolves only what
/// its cargo block adds.
fn seed_lock_file(project: &Path) -> Result<()> {
    let lock = project.join("Cargo.lock");
    if lock.exists() {
        return Ok(());
    }
    let tmp = project.join(format!(
        ".Cargo.lock.tmp-{}",
        rbuild_snapshotter::unique_suffix()
    ));
    std::fs::write(&tmp, WORKSPACE_LOCK).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &lock).with_context(|| format!("write {}", lock.display()))?;
    Ok(())
}

/// Runs `cargo build`, showing its diagnostics as cargo shows them, and
/// returns the path of the executable it built.
fn run_cargo(manifest: &Path, target_dir: &Path, extra: &[String]) -> Result<PathBuf> {
    let mut child = Command::new("cargo")
        .arg("build")
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--message-format=json-render-diagnostics")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Under --progress json, cargo's lines become events too.
        .stderr(if crate::progress::is_json() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!("cargo is not on PATH: rbuild compiles pipelines with it; install Rust (https://rustup.rs)")
            } else {
                anyhow!("cannot start cargo: {e}")
            }
        })?;
    let relay = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                crate::progress::say_as("compile", "line", &line);
            }
        })
    });
    let mut executables = Vec::new();
    let stdout = child.stdout.take().expect("piped stdout");
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && let Some(exe) = msg["executable"].as_str()
        {
            executables.push(PathBuf::from(exe));
        }
    }
    let status = child.wait()?;
    if let Some(relay) = relay {
        let _ = relay.join();
    }
    if !status.success() {
        bail!("it failed to compile (cargo's messages are above)");
    }
    match executables.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "cargo built no executable for {}: the pipeline needs a main function",
            manifest.display()
        ),
        many => bail!(
            "the pipeline crate {} builds several executables ({}); keep one binary target",
            manifest.display(),
            many.iter()
                .map(|p| p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_pipelines_are_pruned_oldest_first_but_never_while_running() {
        let cache = tempfile::tempdir().unwrap();
        let bin = |p: &str| cache.path().join("pipelines").join(p).join("bin");
        let mut exes = Vec::new();
        for (i, p) in ["a", "b", "c"].iter().enumerate() {
            std::fs::create_dir_all(bin(p)).unwrap();
            let exe = bin(p).join("stamp");
            std::fs::write(&exe, vec![0u8; 1000]).unwrap();
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i as u64);
            std::fs::File::options()
                .write(true)
                .open(&exe)
                .unwrap()
                .set_modified(when)
                .unwrap();
            exes.push(exe);
        }
        std::fs::create_dir_all(cache.path().join("target/release")).unwrap();
        std::fs::write(cache.path().join("target/release/x"), vec![0u8; 500]).unwrap();
        // The oldest runs: it stays; the target dir and then b go to fit 1500 bytes.
        let running = hold(&exes[0]);
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(999_999);
        std::fs::File::options()
            .write(true)
            .open(&exes[0])
            .unwrap()
            .set_modified(when)
            .unwrap();
        let p = prune_compiled(cache.path(), None, Some(2000), false);
        assert_eq!(
            p,
            PipelinesPruned {
                executables: 1,
                bytes: 1500,
                target: true
            }
        );
        assert!(exes[0].exists() && !exes[1].exists() && exes[2].exists());
        let p = prune_compiled(cache.path(), None, None, true);
        assert_eq!(
            (p.executables, exes[0].exists()),
            (1, true),
            "not while it runs"
        );
        drop(running);
        assert_eq!(
            prune_compiled(cache.path(), None, None, true).executables,
            1
        );
        assert!(!exes[0].exists());
    }

    #[test]
    fn a_crate_is_a_pipeline_only_when_it_depends_on_the_sdk() {
        assert!(depends_on_sdk("[dependencies]\nrbuild-sdk = \"0.1\"\n"));
        assert!(depends_on_sdk(
            "[dependencies]\nrb = { package = \"rbuild-sdk\", path = \"../sdk\" }\n"
        ));
        assert!(depends_on_sdk(
            "[dependencies]\nrbuild-sdk.workspace = true\n"
        ));
        assert!(!depends_on_sdk(
            "[package]\nname = \"app\"\n[dependencies]\nserde = \"1\"\n"
        ));
        assert!(!depends_on_sdk("[package]\nname = \"app\"\n"));
    }

    #[test]
    fn reads_the_embedded_cargo_block() {
        let src = "//! My pipeline\n//! ```cargo\n//! [dependencies]\n//! serde = \"1\"\n//! ```\nfn main() {}\n";
        assert_eq!(
            embedded_manifest(src).as_deref(),
            Some("[dependencies]\nserde = \"1\"\n")
        );
        assert_eq!(embedded_manifest("fn main() {}"), None);
    }

    #[test]
    fn generated_manifest_merges_declared_dependencies() {
        let src = "//! ```cargo\n//! [dependencies]\n//! serde = \"1\"\n//! rbuild-sdk = \"9\"\n//! ```\n";
        let m = generated_manifest(
            Path::new("/p/ci.rs"),
            src,
            Path::new("/sdk"),
            "0123456789abcdef",
        )
        .unwrap();
        let doc: toml::Table = toml::from_str(&m).unwrap();
        let deps = doc["dependencies"].as_table().unwrap();
        assert_eq!(deps["serde"].as_str(), Some("1"));
        assert_eq!(deps["rbuild-sdk"]["path"].as_str(), Some("/sdk"));
        assert!(deps.contains_key("tokio"));
        assert_eq!(
            doc["package"]["name"].as_str(),
            Some("pipeline-ci-01234567")
        );
        assert_eq!(doc["bin"][0]["path"].as_str(), Some("/p/ci.rs"));
    }

    #[test]
    fn sdk_patch_only_for_registry_dependencies() {
        assert!(wants_sdk_patch("[dependencies]\nrbuild-sdk = \"0.1\"\n"));
        assert!(wants_sdk_patch(
            "[dependencies]\nrbuild-sdk = { version = \"0.1\" }\n"
        ));
        assert!(!wants_sdk_patch(
            "[dependencies]\nrbuild-sdk = { path = \"../sdk\" }\n"
        ));
        assert!(!wants_sdk_patch("[dependencies]\nserde = \"1\"\n"));
    }

    #[test]
    fn the_embedded_sdk_is_every_file_of_the_sdk_crate() {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk");
        let mut on_disk = vec!["Cargo.toml".to_string()];
        let mut dirs = vec![sdk.join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let rel = path.strip_prefix(&sdk).unwrap();
                    on_disk.push(rel.to_str().unwrap().to_string());
                }
            }
        }
        on_disk.sort();
        assert!(on_disk.contains(&"src/lib.rs".to_string()), "{on_disk:?}");
        let mut embedded: Vec<String> = SDK_FILES.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(
            embedded, on_disk,
            "SDK_FILES in src/pipeline.rs must list sdk/src"
        );
        for (name, text) in SDK_FILES {
            assert_eq!(
                std::fs::read_to_string(sdk.join(name)).unwrap(),
                *text,
                "{name}"
            );
        }
    }

    #[test]
    fn rejects_what_is_not_a_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let e = build(&dir.path().join("missing.rs"), dir.path())
            .err()
            .unwrap();
        assert!(e.to_string().contains("missing.rs"), "{e}");
        let e = build(dir.path(), dir.path()).err().unwrap();
        assert!(e.to_string().contains("no Cargo.toml"), "{e}");
    }
}
