//! Cache management: which entries a prune removes (pure policy), and
//! removing them for real — index rows first, then the snapshots' GC-root
//! labels, then a synchronous containerd garbage collection, which takes the
//! snapshots and the content only they referenced.
//!
//! What a running step uses is never removed: its snapshots and content are
//! held by its run's lease, and a cache volume in use is locked.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::index::{CacheEntry, Index};
use crate::output::OutputStore;
use crate::worker::ContainerdWorker;

/// What `rbuild cache prune` (or the automatic policy) keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Remove least recently used entries until the rest take at most this many bytes.
    pub keep_storage: Option<u64>,
    /// Remove entries not used for longer than this.
    pub keep_duration: Option<Duration>,
    /// Remove everything.
    pub all: bool,
    /// Never remove entries used at or after this time (seconds): the
    /// automatic policy keeps what the run that just ended used.
    pub keep_used_since: Option<i64>,
}

/// The entries `policy` removes from `entries` (most recently used first), at `now` (seconds).
pub fn select(entries: &[CacheEntry], policy: &Policy, now: i64) -> Vec<CacheEntry> {
    if policy.all {
        return entries.to_vec();
    }
    let mut remove = Vec::new();
    let mut kept = Vec::new();
    let mut protected = Vec::new();
    for e in entries {
        if policy.keep_used_since.is_some_and(|t| e.last_used >= t) {
            protected.push(e.clone());
            continue;
        }
        let idle = now - e.last_used;
        match policy.keep_duration {
            Some(d) if idle > d.as_secs() as i64 => remove.push(e.clone()),
            _ => kept.push(e.clone()),
        }
    }
    if let Some(limit) = policy.keep_storage {
        let mut total: u64 = kept
            .iter()
            .chain(&protected)
            .map(|e| e.size.max(0) as u64)
            .sum();
        while total > limit {
            let Some(lru) = kept.pop() else { break };
            total -= lru.size.max(0) as u64;
            remove.push(lru);
        }
    }
    remove
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

/// What a prune did.
#[derive(Debug, Default)]
pub struct Pruned {
    pub entries: usize,
    pub bytes: u64,
    pub volumes: usize,
}

/// Removes what `policy` selects: index rows, their snapshots and the
/// content only they held; with `all`, also rbuild's images and the cache
/// volumes nobody is using.
pub async fn prune(
    index: &Index,
    worker: &ContainerdWorker,
    root: &Path,
    policy: &Policy,
    cause: &str,
) -> Result<Pruned> {
    let entries = index.entries()?;
    let doomed = select(&entries, policy, now_secs());
    // Rows first: from now on nothing will reuse these results. On a full
    // disk, the space kept in reserve lets the index record that.
    if let Err(e) = index.forget(&doomed, cause) {
        if !e.is_disk_full() || !release_reserve(root) {
            return Err(e.into());
        }
        crate::progress::say(&format!(
            "rbuild: the filesystem holding {} is full; pruning with the space rbuild keeps in reserve",
            root.display()
        ));
        index.forget(&doomed, cause)?;
    }
    // Stored output no remaining entry names; the same bytes may be another's.
    let outputs = OutputStore::new(root);
    for file in doomed.iter().flat_map(|e| &e.outputs) {
        if !index.output_in_use(file)? {
            outputs
                .remove(file)
                .with_context(|| format!("remove {}", outputs.path(file).display()))?;
        }
    }
    // Killed from here on, the next start releases what is left (consistency.rs).
    rbuild_containerd::kill_point("prune-mid");
    for e in &doomed {
        worker.release(&e.snapshot).await?;
    }
    // Module calls remembered (a definition each, no snapshot): by age
    // with --keep-duration, all with --all, and never more than a bound.
    let before = if policy.all {
        Some(i64::MAX)
    } else {
        policy
            .keep_duration
            .map(|d| now_secs() - d.as_secs() as i64)
    };
    index.prune_module_calls(before)?;
    let mut pruned = Pruned {
        entries: doomed.len(),
        bytes: doomed.iter().map(|e| e.size.max(0) as u64).sum(),
        volumes: 0,
    };
    if policy.all {
        index.forget_images()?;
        worker.remove_images().await?;
        pruned.volumes = crate::volumes::Volumes::new(root).remove_unused()?;
    }
    worker
        .collect_garbage()
        .await
        .context("containerd garbage collection")?;
    keep_reserve(root);
    Ok(pruned)
}

/// A file of this size under the state root is space kept in reserve, so
/// that `cache prune` can still write to the index when the disk is full.
const RESERVE_BYTES: u64 = 2 << 20;

fn reserve_path(root: &Path) -> std::path::PathBuf {
    root.join("reserve")
}

/// Makes the reserve if it is missing and the filesystem has room for it
/// and more; best effort.
pub fn keep_reserve(root: &Path) {
    let path = reserve_path(root);
    if path.exists() || filesystem(root).is_none_or(|(_, free)| free < 16 * RESERVE_BYTES) {
        return;
    }
    let made = std::fs::File::create_new(&path).and_then(|f| {
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, RESERVE_BYTES)
            .map_err(std::io::Error::from)
    });
    if let Err(e) = made {
        tracing::debug!(error = %e, path = %path.display(), "no reserve space kept");
        let _ = std::fs::remove_file(&path);
    }
}

/// Gives the reserve back to the filesystem; whether there was one.
fn release_reserve(root: &Path) -> bool {
    std::fs::remove_file(reserve_path(root)).is_ok()
}

/// The automatic policy applied after each run that started at
/// `run_started` (seconds): rbuild's cache takes at most 10 GiB or 10% of
/// its filesystem (whichever is less), and leaves at least 10% of the
/// filesystem free, if removing cached results can do that: when the
/// cache is smaller than the shortfall, something else fills the disk and
/// emptying the cache would lose it for nothing; and making room never
/// removes entries the run used. `RBUILD_GC_KEEP_STORAGE` sets the size
/// instead (`off` disables the automatic policy).
pub fn auto_policy(root: &Path, cached_bytes: u64, run_started: i64) -> Option<Policy> {
    let setting = std::env::var("RBUILD_GC_KEEP_STORAGE").ok();
    if setting.as_deref() == Some("off") {
        return None;
    }
    let (size, free) = filesystem(root)?;
    let limit = match setting.as_deref().map(parse_size) {
        Some(Ok(n)) => n,
        _ => (10u64 << 30).min(size / 10),
    };
    auto_limit(limit, size, free, cached_bytes).map(|shrunk| Policy {
        keep_storage: Some(shrunk),
        // Over the size limit, least recently used go first, whoever used them.
        keep_used_since: (shrunk < limit).then_some(run_started),
        ..Policy::default()
    })
}

/// The size the cache is pruned to, if it must be: `limit`, or less when
/// the filesystem (`size`, `free`) has under a tenth free and the cache
/// can make up the difference.
fn auto_limit(limit: u64, size: u64, free: u64, cached_bytes: u64) -> Option<u64> {
    let wanted_free = size / 10;
    let shortfall = wanted_free.saturating_sub(free);
    let limit = if shortfall > 0 && shortfall <= cached_bytes {
        limit.min(cached_bytes - shortfall)
    } else {
        limit
    };
    (cached_bytes > limit).then_some(limit)
}

/// (size, free) in bytes of the filesystem holding `path`; free is what
/// an unprivileged user may still use.
pub fn filesystem(path: &Path) -> Option<(u64, u64)> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some((st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize))
}

/// `10GB`, `512MiB`, `1.5G`, `1000` (bytes).
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a size like 10GB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024f64.powi(4),
        other => {
            bail!("unknown size unit {other:?} in {s:?} (use B, KB, MB, GB, TB or KiB, MiB, GiB)")
        }
    };
    Ok((n * mult) as u64)
}

/// `30s`, `15m`, `2h`, `7d`, `1w`, and combinations (`1h 30m`).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    humantime::parse_duration(s).with_context(|| format!("{s:?} is not a duration like 2h or 7d"))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_snapshotter::snapshots::SnapshotId;

    fn entry(key: &str, size: i64, last_used: i64) -> CacheEntry {
        CacheEntry {
            key: key.into(),
            snapshot: SnapshotId(format!("snap-{key}")),
            size,
            created: 0,
            last_used,
            description: key.into(),
            outputs: Vec::new(),
        }
    }

    fn keys(v: &[CacheEntry]) -> Vec<&str> {
        v.iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn policies_select_what_they_say() {
        let now = 100_000;
        // Most recently used first.
        let entries = vec![
            entry("new", 10, now - 10),
            entry("mid", 20, now - 5000),
            entry("old", 30, now - 90_000),
        ];
        assert_eq!(
            keys(&select(
                &entries,
                &Policy {
                    all: true,
                    ..Default::default()
                },
                now
            )),
            ["new", "mid", "old"]
        );
        let by_age = Policy {
            keep_duration: Some(Duration::from_secs(3600)),
            ..Default::default()
        };
        assert_eq!(keys(&select(&entries, &by_age, now)), ["mid", "old"]);
        let by_size = Policy {
            keep_storage: Some(35),
            ..Default::default()
        };
        assert_eq!(
            keys(&select(&entries, &by_size, now)),
            ["old"],
            "least recently used goes first"
        );
        let tight = Policy {
            keep_storage: Some(10),
            ..Default::default()
        };
        assert_eq!(keys(&select(&entries, &tight, now)), ["old", "mid"]);
        let both = Policy {
            keep_storage: Some(5),
            keep_duration: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        assert_eq!(keys(&select(&entries, &both, now)), ["mid", "old", "new"]);
        assert!(select(&entries, &Policy::default(), now).is_empty());
    }

    #[test]
    fn the_automatic_policy_keeps_the_runs_entries_and_a_cache_that_is_not_the_problem() {
        let now = 100_000;
        let entries = vec![
            entry("this-run", 10, now - 1),
            entry("older", 20, now - 5000),
        ];
        let policy = Policy {
            keep_storage: Some(0),
            keep_used_since: Some(now - 60),
            ..Default::default()
        };
        assert_eq!(keys(&select(&entries, &policy, now)), ["older"]);
        const MB: u64 = 1_000_000;
        // 300 MB disk, full, with a 1 MB cache: the cache is not what fills it.
        assert_eq!(auto_limit(30 * MB, 300 * MB, 0, MB), None);
        // 300 MB disk, 20 MB free, a 100 MB cache: shrink it by the 10 MB missing.
        assert_eq!(
            auto_limit(30 * MB, 300 * MB, 20 * MB, 100 * MB),
            Some(30 * MB)
        );
        assert_eq!(
            auto_limit(300 * MB, 300 * MB, 20 * MB, 100 * MB),
            Some(90 * MB)
        );
        // Plenty free, under the limit: nothing to do.
        assert_eq!(auto_limit(30 * MB, 300 * MB, 200 * MB, 10 * MB), None);
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("10GB").unwrap(), 10_000_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("1.5 MB").unwrap(), 1_500_000);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("2 fortnights").is_err());
        assert!(parse_duration("10").is_err(), "a duration has a unit");
        assert_eq!(parse_duration(" 30s ").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1w").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }
}
