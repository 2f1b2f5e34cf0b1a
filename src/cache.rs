//! The build cache as a user sees it (`rbuild cache ls|du|prune|verify`,
//! `rbuild history`): its entries, the disk it takes, pruning on request,
//! the check of its invariants, and the record of past runs. Which entries a policy removes, and removing them,
//! is gc.rs; the rows themselves are the index's.

use std::fmt;
use std::path::Path;

use anyhow::{Result, bail};

use crate::engine::{Engine, EngineConfig};
use crate::gc::{self, Policy, Pruned, human_bytes, now_secs};
use crate::index::{CacheEntry, Index, RunRecord};

pub fn open_index(config: &EngineConfig) -> Result<Index> {
    Ok(Index::open(&config.root.join("index.db"))?)
}

/// How long ago, in the largest unit that still shows a change.
pub fn age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// An entry's size; negative is unknown.
fn size(n: i64) -> String {
    if n < 0 {
        "?".into()
    } else {
        human_bytes(n as u64)
    }
}

/// Bytes under a directory (files only; symlinks not followed).
pub fn du(dir: &Path) -> u64 {
    ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .build()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The cache's entries, most recently used first (a table).
pub struct Entries {
    entries: Vec<CacheEntry>,
    now: i64,
}

pub fn entries(config: &EngineConfig) -> Result<Entries> {
    let index = open_index(config)?;
    Ok(Entries {
        now: now_secs(),
        entries: index.entries()?,
    })
}

impl fmt::Display for Entries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<12}  {:>9}  {:>6}  {:>9}  WHAT",
            "KEY", "SIZE", "AGE", "LAST USE"
        )?;
        for e in &self.entries {
            write!(
                f,
                "\n{:<12}  {:>9}  {:>6}  {:>9}  {}",
                &e.key[..12],
                size(e.size),
                age(self.now - e.created),
                age(self.now - e.last_used),
                e.description
            )?;
        }
        Ok(())
    }
}

/// What the cache takes on disk, by kind.
pub struct Usage {
    entries: usize,
    steps: u64,
    volumes: u64,
    pipelines: u64,
}

pub fn usage(config: &EngineConfig) -> Result<Usage> {
    let entries = open_index(config)?.entries()?;
    Ok(Usage {
        entries: entries.len(),
        steps: entries.iter().map(|e| e.size.max(0) as u64).sum(),
        volumes: du(&config.root.join("volumes")),
        pipelines: du(&config.cache_dir),
    })
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "steps              {:>6} entries  {:>10}",
            self.entries,
            human_bytes(self.steps)
        )?;
        writeln!(
            f,
            "cache volumes                      {:>10}",
            human_bytes(self.volumes)
        )?;
        write!(
            f,
            "compiled pipelines                 {:>10}",
            human_bytes(self.pipelines)
        )
    }
}

/// What a prune on request removed.
pub struct PruneReport {
    pruned: Pruned,
    all: bool,
    pipelines: crate::pipeline::PipelinesPruned,
}

/// A prune as the user asked for it: sizes like `10GB`, durations like `7d`.
#[derive(Debug)]
pub struct PruneRequest<'a> {
    pub keep_storage: Option<&'a str>,
    pub keep_duration: Option<&'a str>,
    pub all: bool,
}

/// Removes what the request selects, with a running engine (containerd
/// collects the snapshots and content).
pub async fn prune(config: &EngineConfig, request: PruneRequest<'_>) -> Result<PruneReport> {
    // As for the other cache commands, a state root that does not exist is
    // an error (opening the index fails), not one to create (as starting
    // the engine would).
    drop(open_index(config)?);
    let policy = Policy {
        keep_storage: request.keep_storage.map(gc::parse_size).transpose()?,
        keep_duration: request.keep_duration.map(gc::parse_duration).transpose()?,
        all: request.all,
        keep_used_since: None,
    };
    if policy == Policy::default() {
        bail!("say what to prune: --keep-storage SIZE, --keep-duration DURATION or --all");
    }
    let engine = Engine::start(config).await?;
    let pruned = gc::prune(
        &engine.index,
        engine.solver.worker(),
        &config.root,
        &policy,
        "pruned (rbuild cache prune)",
    )
    .await?;
    // Compiled pipelines by the same policy (their own budget), on request
    // only: the automatic policy after a run leaves them, so that a run
    // does not make the next one recompile. Only a cache dir of this root's
    // own (the default, ROOT/cache): one set apart (--cache-dir) may be
    // shared by several roots, whose runs this prune cannot see.
    let pipelines = if !config.cache_dir.starts_with(&config.root) {
        crate::pipeline::PipelinesPruned::default()
    } else {
        let cache = config.cache_dir.clone();
        let (duration, storage, all) = (policy.keep_duration, policy.keep_storage, policy.all);
        tokio::task::spawn_blocking(move || {
            crate::pipeline::prune_compiled(&cache, duration, storage, all)
        })
        .await?
    };
    Ok(PruneReport {
        pruned,
        all: policy.all,
        pipelines,
    })
}

impl fmt::Display for PruneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "removed {} entries ({})",
            self.pruned.entries,
            human_bytes(self.pruned.bytes)
        )?;
        if self.all {
            write!(f, ", {} cache volumes", self.pruned.volumes)?;
        }
        let p = &self.pipelines;
        if p.executables > 0 || p.target {
            write!(
                f,
                ", {} compiled pipelines{} ({})",
                p.executables,
                if p.target {
                    " and cargo's target dir"
                } else {
                    ""
                },
                human_bytes(p.bytes)
            )?;
        }
        Ok(())
    }
}

/// What `rbuild cache verify` found.
pub struct VerifyReport {
    entries: usize,
    problems: Vec<crate::consistency::Violation>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the cache's invariants (see consistency.rs) and looks for what
/// rbuild processes that are gone left behind. Only looks: the next `rbuild
/// run` or `rbuild cache prune` repairs and removes what it reports.
pub async fn verify(config: &EngineConfig) -> Result<VerifyReport> {
    let index = open_index(config)?;
    let ctd = crate::engine::connect(config).await?;
    let registry = rbuild_snapshotter::Registry::new(rbuild_snapshotter::RegistryOptions {
        insecure_hosts: Vec::new(),
        https_marker: None,
        ..rbuild_snapshotter::RegistryOptions::default()
    });
    let worker = crate::worker::ContainerdWorker::new(
        ctd,
        registry,
        crate::volumes::Volumes::new(&config.root),
        config.root.join("tmp"),
    );
    Ok(VerifyReport {
        entries: index.entries()?.len(),
        problems: crate::consistency::check(&index, &worker).await?,
    })
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.is_empty() {
            return write!(
                f,
                "ok: {} entries, each with its snapshot; nothing left by runs that are gone",
                self.entries
            );
        }
        write!(f, "{} problems:", self.problems.len())?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        write!(
            f,
            "\nthe next `rbuild run` or `rbuild cache prune` repairs the cache and removes what dead runs left"
        )
    }
}

/// The most recent runs, newest first (a table).
pub struct History {
    runs: Vec<RunRecord>,
    now: i64,
}

pub fn history(config: &EngineConfig, limit: usize) -> Result<History> {
    let index = open_index(config)?;
    Ok(History {
        now: now_secs(),
        runs: index.runs(limit)?,
    })
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>5}  {:>8}  {:>9}  {:>5}  {:>6}  {:>4}  PIPELINE",
            "ID", "WHEN", "DURATION", "RUN", "CACHED", "EXIT"
        )?;
        for r in &self.runs {
            write!(
                f,
                "\n{:>5}  {:>8}  {:>8.2}s  {:>5}  {:>6}  {:>4}  {}",
                r.id,
                format!("{} ago", age(self.now - r.started)),
                r.duration_ms as f64 / 1000.0,
                r.steps_run,
                r.steps_cached,
                r.exit_code,
                r.pipeline
            )?;
        }
        if let Some(r) = self.runs.first() {
            write!(
                f,
                "\n\nwhy steps ran: rbuild explain {} [STEP]; a picture of the run: rbuild report {} -o report.html",
                r.id, r.id
            )?;
        }
        Ok(())
    }
}

/// `rbuild cache volumes`: each cache volume, largest first.
pub struct VolumeList {
    volumes: Vec<crate::volumes::VolumeInfo>,
    now: i64,
}

pub fn volumes(config: &EngineConfig) -> VolumeList {
    VolumeList {
        volumes: crate::volumes::Volumes::new(&config.root).list(),
        now: now_secs(),
    }
}

impl fmt::Display for VolumeList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>10}  {:>9}  NAME", "SIZE", "LAST USED")?;
        for v in &self.volumes {
            let used = match (v.in_use, v.last_used) {
                (true, _) => "in use".to_string(),
                (false, Some(t)) => format!("{} ago", age(self.now - t)),
                (false, None) => "?".to_string(),
            };
            write!(f, "\n{:>10}  {used:>9}  {}", human_bytes(v.size), v.name)?;
        }
        Ok(())
    }
}
