//! The cache index: SQLite under the state root.
//!
//! The index uses a rollback journal (`PERSIST`), not WAL: a WAL index
//! (`index.db-shm`) is a memory-mapped file that SQLite extends by writing
//! one byte at the end of each 4 KiB page. On a filesystem with 1 KiB
//! blocks (what mke2fs makes below 512 MiB) that allocates only the last
//! block of each page, and SQLite's first store into the rest through the
//! mapping raises SIGBUS when the filesystem is full: every command died
//! without a message, `cache prune` included. A rollback journal makes
//! SQLite use read and write calls only, so a full disk is an error
//! ("database or disk is full") that names the index. The persisted
//! journal keeps its blocks between transactions, so small ones (a prune's
//! deletions) still fit on a full disk.
//!
//! A `steps` row exists only for a complete result (DESIGN.md invariant 2):
//! the engine commits the step's snapshot first and writes the row second.
//! The `images` table remembers what a tag's digest resolved to for a
//! platform; both sides are content-addressed, so it never goes stale.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rbuild_snapshotter::BlobDesc;
use rbuild_snapshotter::export::Layer;
use rbuild_snapshotter::tree::{KnownHashes, StatKey, StatRecord};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

mod explain;

use crate::key::CacheKey;
use crate::output::OutputFile;

use rbuild_snapshotter::snapshots::SnapshotId;

/// A cached step result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRecord {
    pub key: CacheKey,
    pub snapshot: SnapshotId,
    /// Content identity of the step's result (see `solver::values`).
    pub output: String,
    /// At most about `output::INLINE_MAX` bytes each (see `output`).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The whole stdout and stderr, when they were too long to keep here.
    pub stdout_file: Option<OutputFile>,
    pub stderr_file: Option<OutputFile>,
    pub exit_code: i64,
    pub duration_ms: u64,
    /// What made it (the command), for humans.
    pub description: String,
    /// Bytes of the step's own snapshot layer (-1: not measured).
    pub size: i64,
}

/// A cache entry as `rbuild cache ls` and pruning see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    pub key: String,
    pub snapshot: SnapshotId,
    pub size: i64,
    pub created: i64,
    pub last_used: i64,
    pub description: String,
    /// Stored output files the entry names.
    pub outputs: Vec<OutputFile>,
}

/// One `rbuild run` for `rbuild history`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    /// Its id (0 before it is recorded).
    pub id: i64,
    pub started: i64,
    pub duration_ms: i64,
    pub pipeline: String,
    pub steps_run: i64,
    pub steps_cached: i64,
    pub exit_code: i64,
}

pub struct Index {
    conn: Mutex<Connection>,
}

#[derive(Debug, thiserror::Error)]
#[error("cache index {path}: {source}{hint}")]
pub struct IndexError {
    path: String,
    #[source]
    source: IndexCause,
    hint: &'static str,
}

#[derive(Debug, thiserror::Error)]
enum IndexCause {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("lock file {0}: {1}")]
    Lock(String, std::io::Error),
}

impl IndexError {
    fn new(path: impl Into<String>, source: impl Into<IndexCause>) -> IndexError {
        let source = source.into();
        let hint = if is_disk_full(&source) {
            " (no space left on the filesystem holding the index: free some, \
             for instance with `rbuild cache prune --keep-storage SIZE`)"
        } else {
            ""
        };
        IndexError {
            path: path.into(),
            source,
            hint,
        }
    }

    /// The filesystem holding the index is full.
    pub fn is_disk_full(&self) -> bool {
        is_disk_full(&self.source)
    }
}

fn is_disk_full(e: &IndexCause) -> bool {
    match e {
        IndexCause::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
            f.code == rusqlite::ErrorCode::DiskFull
        }
        IndexCause::Lock(_, e) => e.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    }
}

/// How long a connection waits for another process's lock on the index.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS steps (
    key          TEXT PRIMARY KEY,
    snapshot     TEXT NOT NULL,
    stdout       BLOB NOT NULL,
    stderr       BLOB NOT NULL,
    exit_code    INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    created      INTEGER NOT NULL,
    last_used    INTEGER NOT NULL,
    description  TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS host_files (
    path      TEXT PRIMARY KEY,
    dev       INTEGER NOT NULL,
    ino       INTEGER NOT NULL,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    ctime_ns  INTEGER NOT NULL,
    hash      BLOB NOT NULL,
    seen_ns   INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS layers (
    snapshot    TEXT NOT NULL,
    format      TEXT NOT NULL,
    media_type  TEXT NOT NULL,
    digest      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    diff_id     TEXT NOT NULL,
    PRIMARY KEY (snapshot, format)
) STRICT;
CREATE TABLE IF NOT EXISTS runs (
    id            INTEGER PRIMARY KEY,
    started       INTEGER NOT NULL,
    duration_ms   INTEGER NOT NULL,
    pipeline      TEXT NOT NULL,
    steps_run     INTEGER NOT NULL,
    steps_cached  INTEGER NOT NULL,
    exit_code     INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS images (
    digest    TEXT NOT NULL,
    platform  TEXT NOT NULL,
    resolved  TEXT NOT NULL,
    PRIMARY KEY (digest, platform)
) STRICT;
CREATE TABLE IF NOT EXISTS module_calls (
    key       TEXT PRIMARY KEY,
    api       TEXT NOT NULL,
    returned  TEXT NOT NULL,
    created   INTEGER NOT NULL
) STRICT;
";

/// Columns of `steps` added after the first schema, with their declarations.
const MIGRATIONS: &[(&str, &str)] = &[
    ("output", "TEXT NOT NULL DEFAULT ''"),
    ("size", "INTEGER NOT NULL DEFAULT -1"),
    ("stdout_file", "TEXT NOT NULL DEFAULT ''"),
    ("stderr_file", "TEXT NOT NULL DEFAULT ''"),
];

fn output_file(name: String) -> Option<OutputFile> {
    (!name.is_empty()).then_some(OutputFile(name))
}

fn file_name(f: &Option<OutputFile>) -> &str {
    f.as_ref().map_or("", |f| f.0.as_str())
}

/// A stat key and hash from `dev, ino, size, mtime_ns, ctime_ns, hash` columns starting at `first`.
/// A stat cache row from column `first` on (dev, ino, size, mtime_ns,
/// ctime_ns, hash, seen_ns); None for a hash of the wrong length.
fn stat_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Option<StatRecord>> {
    let hash: Vec<u8> = r.get(first + 5)?;
    let Ok(hash) = <[u8; 32]>::try_from(hash) else {
        return Ok(None);
    };
    Ok(Some(StatRecord {
        stat: StatKey {
            dev: r.get::<_, i64>(first)? as u64,
            ino: r.get::<_, i64>(first + 1)? as u64,
            size: r.get::<_, i64>(first + 2)? as u64,
            mtime_ns: r.get(first + 3)?,
            ctime_ns: r.get(first + 4)?,
        },
        hash,
        seen_ns: r.get(first + 6)?,
    }))
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

impl Index {
    /// Opens (creating and migrating if needed) the index at `path`.
    ///
    /// Creating and migrating happen under an exclusive `flock` on
    /// `PATH.lock`, so that first runs started at once on a new root do it
    /// once: the journal mode cannot be changed inside a transaction, and
    /// without the lock two processes both saw a missing column and both
    /// added it ("duplicate column name"). The busy timeout is set before
    /// anything touches the database.
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let err = |source: rusqlite::Error| IndexError::new(path.display().to_string(), source);
        let lock_path = path.with_extension("db.lock");
        let lock_err = |e: std::io::Error| {
            IndexError::new(
                path.display().to_string(),
                IndexCause::Lock(lock_path.display().to_string(), e),
            )
        };
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(lock_err)?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| lock_err(e.into()))?;
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = PERSIST", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("persist") {
            // An older rbuild still has it open in WAL mode; the next open switches.
            tracing::warn!(%mode, path = %path.display(), "cache index journal mode unchanged");
        }
        conn.pragma_update(None, "journal_size_limit", 4 << 20)
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        tx.execute_batch(SCHEMA).map_err(err)?;
        tx.execute_batch(explain::SCHEMA).map_err(err)?;
        // Columns added since the first index: results' content identity, sizes, output files.
        // And to the stat cache: when a file's content was first seen.
        let host_files = [("seen_ns", "INTEGER NOT NULL DEFAULT 0")];
        for (table, (column, decl)) in MIGRATIONS
            .iter()
            .map(|c| ("steps", c))
            .chain(host_files.iter().map(|c| ("host_files", c)))
        {
            let has: bool = tx
                .prepare(&format!(
                    "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
                ))
                .and_then(|mut s| s.exists([column]))
                .map_err(err)?;
            if !has {
                tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        drop(lock);
        Ok(Index {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, IndexError> {
        let conn = self.conn.lock().expect("index mutex poisoned");
        f(&conn).map_err(|source| IndexError::new(conn.path().unwrap_or("?"), source))
    }

    /// Looks up a step and marks it used.
    pub fn get_step(&self, key: &CacheKey) -> Result<Option<StepRecord>, IndexError> {
        let hex = key.to_hex();
        self.with(|c| {
            let rec = c
                .query_row(
                    "SELECT snapshot, stdout, stderr, exit_code, duration_ms, description, output, size,
                            stdout_file, stderr_file
                     FROM steps WHERE key = ?1",
                    params![hex],
                    |r| {
                        Ok(StepRecord {
                            key: *key,
                            snapshot: SnapshotId(r.get(0)?),
                            stdout: r.get(1)?,
                            stderr: r.get(2)?,
                            exit_code: r.get(3)?,
                            duration_ms: r.get::<_, i64>(4)? as u64,
                            description: r.get(5)?,
                            size: r.get(7)?,
                            stdout_file: output_file(r.get(8)?),
                            stderr_file: output_file(r.get(9)?),
                            output: {
                                let o: String = r.get(6)?;
                                if o.is_empty() {
                                    format!("step:{hex}")
                                } else {
                                    o
                                }
                            },
                        })
                    },
                )
                .optional()?;
            // Best effort: a hit stays a hit on a full disk.
            if rec.is_some()
                && let Err(e) = c.execute(
                    "UPDATE steps SET last_used = ?2 WHERE key = ?1",
                    params![hex, now_secs()],
                )
            {
                tracing::warn!(error = %e, "could not mark a cache entry used");
            }
            Ok(rec)
        })
    }

    /// Records a complete step. Call only after its snapshot is committed.
    #[cfg(test)]
    pub fn put_step(&self, rec: &StepRecord) -> Result<(), IndexError> {
        self.put_step_with(rec, None)
    }

    /// Records a complete step and, in the same transaction (one sync, not
    /// two), what its key is made of (for explaining a later miss).
    pub fn put_step_with(
        &self,
        rec: &StepRecord,
        inputs: Option<&crate::explain::Recorded>,
    ) -> Result<(), IndexError> {
        let now = now_secs();
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "INSERT INTO steps (key, snapshot, stdout, stderr, exit_code, duration_ms,
                                    created, last_used, description, output, size,
                                    stdout_file, stderr_file)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT(key) DO UPDATE SET
                    snapshot = excluded.snapshot, output = excluded.output, stdout = excluded.stdout,
                    stderr = excluded.stderr, exit_code = excluded.exit_code,
                    duration_ms = excluded.duration_ms, last_used = excluded.last_used,
                    description = excluded.description, size = excluded.size,
                    stdout_file = excluded.stdout_file, stderr_file = excluded.stderr_file",
                params![
                    rec.key.to_hex(),
                    rec.snapshot.0,
                    rec.stdout,
                    rec.stderr,
                    rec.exit_code,
                    rec.duration_ms as i64,
                    now,
                    rec.description,
                    rec.output,
                    rec.size,
                    file_name(&rec.stdout_file),
                    file_name(&rec.stderr_file)
                ],
            )?;
            if let Some(inputs) = inputs {
                explain::write_inputs(&tx, &rec.key.to_hex(), inputs)?;
            }
            tx.commit()
        })
    }

    /// Every cache entry, most recently used first.
    pub fn entries(&self) -> Result<Vec<CacheEntry>, IndexError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT key, snapshot, size, created, last_used, description, stdout_file, stderr_file
                 FROM steps ORDER BY last_used DESC, created DESC",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(CacheEntry {
                    key: r.get(0)?,
                    snapshot: SnapshotId(r.get(1)?),
                    size: r.get(2)?,
                    created: r.get(3)?,
                    last_used: r.get(4)?,
                    description: r.get(5)?,
                    outputs: [r.get(6)?, r.get(7)?]
                        .into_iter()
                        .filter_map(output_file)
                        .collect(),
                })
            })?;
            rows.collect()
        })
    }

    /// Whether any entry names the stored output `file`.
    pub fn output_in_use(&self, file: &OutputFile) -> Result<bool, IndexError> {
        self.with(|c| {
            c.prepare_cached("SELECT 1 FROM steps WHERE stdout_file = ?1 OR stderr_file = ?1")?
                .exists(params![file.0])
        })
    }

    /// Removes entries (and the layers made from their snapshots) in one
    /// transaction; their recorded keys remember that they went (`cause`:
    /// how, for explaining the next miss).
    pub fn forget(&self, entries: &[CacheEntry], cause: &str) -> Result<(), IndexError> {
        let mut conn = self.conn.lock().expect("index mutex poisoned");
        let err = |source: rusqlite::Error| IndexError::new("steps", source);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        for e in entries {
            tx.execute("DELETE FROM steps WHERE key = ?1", params![e.key])
                .map_err(err)?;
            tx.execute(
                "DELETE FROM layers WHERE snapshot = ?1",
                params![e.snapshot.0],
            )
            .map_err(err)?;
        }
        let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        Index::mark_gone(&tx, &keys, cause).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// `PRAGMA integrity_check`: what SQLite finds wrong with the file (none: sound).
    pub fn integrity_check(&self) -> Result<Vec<String>, IndexError> {
        self.with(|c| {
            let mut stmt = c.prepare("PRAGMA integrity_check")?;
            let found = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(found.into_iter().filter(|l| l != "ok").collect())
        })
    }

    /// Forgets every resolved image (so that the next run resolves them again).
    pub fn forget_images(&self) -> Result<(), IndexError> {
        self.with(|c| {
            c.execute("DELETE FROM images", [])?;
            Ok(())
        })
    }

    /// Records a run; returns its id.
    pub fn record_run(&self, run: &RunRecord) -> Result<i64, IndexError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (started, duration_ms, pipeline, steps_run, steps_cached, exit_code)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    run.started,
                    run.duration_ms,
                    run.pipeline,
                    run.steps_run,
                    run.steps_cached,
                    run.exit_code
                ],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// The most recent runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, IndexError> {
        self.runs_where(limit, None)
    }

    /// Run `id`, if it is recorded.
    pub fn run(&self, id: i64) -> Result<Option<RunRecord>, IndexError> {
        Ok(self.runs_where(1, Some(id))?.pop())
    }

    /// The newest `limit` runs, or only run `id`.
    fn runs_where(&self, limit: usize, id: Option<i64>) -> Result<Vec<RunRecord>, IndexError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT started, duration_ms, pipeline, steps_run, steps_cached, exit_code, id
                 FROM runs WHERE ?2 IS NULL OR id = ?2 ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit as i64, id], |r| {
                Ok(RunRecord {
                    started: r.get(0)?,
                    duration_ms: r.get(1)?,
                    pipeline: r.get(2)?,
                    steps_run: r.get(3)?,
                    steps_cached: r.get(4)?,
                    exit_code: r.get(5)?,
                    id: r.get(6)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Forgets a step whose snapshot turned out to be gone.
    pub fn delete_step(&self, key: &CacheKey) -> Result<(), IndexError> {
        let mut conn = self.conn.lock().expect("index mutex poisoned");
        let err = |source| IndexError::new("steps", source);
        let tx = conn.transaction().map_err(err)?;
        let n = tx
            .execute("DELETE FROM steps WHERE key = ?1", params![key.to_hex()])
            .map_err(err)?;
        if n > 0 {
            Index::mark_gone(&tx, &[&key.to_hex()], "lost (its snapshot was gone)").map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// What the stat cache knows about files under `root`, by path relative to it.
    pub fn known_hashes(&self, root: &Path) -> Result<KnownHashes, IndexError> {
        let prefix = format!("{}/", root.display().to_string().trim_end_matches('/'));
        // Everything that starts with "<root>/": the range [prefix, prefix with '/' → '0').
        let end = format!("{}0", &prefix[..prefix.len() - 1]);
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT path, dev, ino, size, mtime_ns, ctime_ns, hash, seen_ns FROM host_files
                 WHERE path >= ?1 AND path < ?2",
            )?;
            let rows = stmt.query_map(params![prefix, end], |r| {
                Ok((r.get::<_, String>(0)?, stat_row(r, 1)?))
            })?;
            let mut out = KnownHashes::new();
            for row in rows {
                let (path, record) = row?;
                if let (Some(rel), Some(record)) = (path.strip_prefix(&prefix), record) {
                    out.insert(rel.to_string(), record);
                }
            }
            Ok(out)
        })
    }

    /// What the stat cache knows about the single file `root/name`.
    pub fn known_hash(&self, root: &Path, name: &str) -> Result<KnownHashes, IndexError> {
        let path = format!(
            "{}/{name}",
            root.display().to_string().trim_end_matches('/')
        );
        self.with(|c| {
            let row = c
                .query_row(
                    "SELECT dev, ino, size, mtime_ns, ctime_ns, hash, seen_ns FROM host_files WHERE path = ?1",
                    params![path],
                    |r| stat_row(r, 0),
                )
                .optional()?;
            let mut out = KnownHashes::new();
            if let Some(Some(record)) = row {
                out.insert(name.to_string(), record);
            }
            Ok(out)
        })
    }

    /// Records files hashed under `root`.
    pub fn put_known_hashes(&self, root: &Path, fresh: &KnownHashes) -> Result<(), IndexError> {
        if fresh.is_empty() {
            return Ok(());
        }
        let prefix = root.display().to_string().trim_end_matches('/').to_string();
        let mut conn = self.conn.lock().expect("index mutex poisoned");
        let err = |source: rusqlite::Error| IndexError::new("host_files", source);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO host_files (path, dev, ino, size, mtime_ns, ctime_ns, hash, seen_ns)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(err)?;
            for (rel, r) in fresh {
                let k = &r.stat;
                stmt.execute(params![
                    format!("{prefix}/{rel}"),
                    k.dev as i64,
                    k.ino as i64,
                    k.size as i64,
                    k.mtime_ns,
                    k.ctime_ns,
                    r.hash.as_slice(),
                    r.seen_ns
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// The layer made from a step snapshot in a format, if it was made before.
    pub fn get_layer(&self, snapshot: &str, format: &str) -> Result<Option<Layer>, IndexError> {
        self.with(|c| {
            c.query_row(
                "SELECT media_type, digest, size, diff_id FROM layers WHERE snapshot = ?1 AND format = ?2",
                params![snapshot, format],
                |r| {
                    Ok(Layer {
                        desc: BlobDesc {
                            media_type: r.get(0)?,
                            digest: r.get(1)?,
                            size: r.get(2)?,
                        },
                        diff_id: r.get(3)?,
                    })
                },
            )
            .optional()
        })
    }

    pub fn put_layer(&self, snapshot: &str, format: &str, l: &Layer) -> Result<(), IndexError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO layers (snapshot, format, media_type, digest, size, diff_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![snapshot, format, l.desc.media_type, l.desc.digest, l.desc.size, l.diff_id],
            )?;
            Ok(())
        })
    }

    pub fn get_image(&self, digest: &str, platform: &str) -> Result<Option<String>, IndexError> {
        self.with(|c| {
            c.query_row(
                "SELECT resolved FROM images WHERE digest = ?1 AND platform = ?2",
                params![digest, platform],
                |r| r.get(0),
            )
            .optional()
        })
    }

    pub fn put_image(
        &self,
        digest: &str,
        platform: &str,
        resolved: &str,
    ) -> Result<(), IndexError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO images (digest, platform, resolved) VALUES (?1, ?2, ?3)",
                params![digest, platform, resolved],
            )?;
            Ok(())
        })
    }
}

/// Module calls remembered at most (the newest), whatever the prune policy.
pub const MODULE_CALLS_KEPT: i64 = 1000;

/// A module function's result, remembered by the call's content key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleCallRecord {
    /// The API version the module declared.
    pub api: String,
    /// What it returned (a `ReturnedDef`, as JSON).
    pub returned: String,
}

impl Index {
    pub fn get_module_call(&self, key: &str) -> Result<Option<ModuleCallRecord>, IndexError> {
        self.with(|c| {
            c.query_row(
                "SELECT api, returned FROM module_calls WHERE key = ?1",
                params![key],
                |r| {
                    Ok(ModuleCallRecord {
                        api: r.get(0)?,
                        returned: r.get(1)?,
                    })
                },
            )
            .optional()
        })
    }

    /// Forgets module calls remembered before `before` (seconds; none: no
    /// age limit), and all but the newest [`MODULE_CALLS_KEPT`] in any case.
    /// A forgotten call only runs its module again.
    pub fn prune_module_calls(&self, before: Option<i64>) -> Result<usize, IndexError> {
        self.with(|c| {
            let mut n = 0;
            if let Some(t) = before {
                n += c.execute("DELETE FROM module_calls WHERE created < ?1", params![t])?;
            }
            n += c.execute(
                "DELETE FROM module_calls WHERE key NOT IN
                 (SELECT key FROM module_calls ORDER BY created DESC, rowid DESC LIMIT ?1)",
                params![MODULE_CALLS_KEPT],
            )?;
            Ok(n)
        })
    }

    pub fn put_module_call(&self, key: &str, rec: &ModuleCallRecord) -> Result<(), IndexError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO module_calls (key, api, returned, created) VALUES (?1, ?2, ?3, ?4)",
                params![key, rec.api, rec.returned, now_secs()],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyBuilder;

    #[test]
    fn module_calls_are_pruned_by_age_and_bounded_in_number() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index.db")).unwrap();
        let rec = ModuleCallRecord {
            api: "0.3".into(),
            returned: "{}".into(),
        };
        for i in 0..(MODULE_CALLS_KEPT + 5) {
            idx.put_module_call(&format!("k{i}"), &rec).unwrap();
        }
        assert_eq!(idx.prune_module_calls(None).unwrap(), 5);
        assert!(idx.get_module_call("k0").unwrap().is_none());
        assert!(
            idx.get_module_call(&format!("k{}", MODULE_CALLS_KEPT + 4))
                .unwrap()
                .is_some()
        );
        // Everything remembered before now + 1 s goes.
        assert_eq!(
            idx.prune_module_calls(Some(now_secs() + 1)).unwrap() as i64,
            MODULE_CALLS_KEPT
        );
    }

    #[test]
    fn a_module_call_is_remembered_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        assert_eq!(index.get_module_call("k").unwrap(), None);
        let rec = ModuleCallRecord {
            api: "0.1".into(),
            returned: r#"{"kind":"nothing"}"#.into(),
        };
        index.put_module_call("k", &rec).unwrap();
        assert_eq!(index.get_module_call("k").unwrap(), Some(rec));
    }

    fn record(cmd: &str) -> StepRecord {
        StepRecord {
            key: KeyBuilder::new("exec").field("cmd", cmd).finish(),
            snapshot: SnapshotId(format!("snap-{cmd}")),
            output: format!("out:{cmd}"),
            size: 42,
            stdout: b"out\n".to_vec(),
            stderr: vec![0xff, 0x00],
            stdout_file: Some(OutputFile(format!("file-{cmd}"))),
            stderr_file: None,
            exit_code: 0,
            duration_ms: 12,
            description: cmd.into(),
        }
    }

    #[test]
    fn steps_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        let rec = record("echo hi");
        {
            let idx = Index::open(&path).unwrap();
            assert_eq!(idx.get_step(&rec.key).unwrap(), None);
            idx.put_step(&rec).unwrap();
        }
        let idx = Index::open(&path).unwrap();
        assert_eq!(idx.get_step(&rec.key).unwrap(), Some(rec.clone()));
        idx.delete_step(&rec.key).unwrap();
        assert_eq!(idx.get_step(&rec.key).unwrap(), None);
    }

    #[test]
    fn the_stat_cache_is_per_root_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index.db")).unwrap();
        let k = StatKey {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            ctime_ns: 5,
        };
        let record = |hash, seen_ns| StatRecord {
            stat: k,
            hash,
            seen_ns,
        };
        let mut fresh = KnownHashes::new();
        fresh.insert("src/a.rs".into(), record([7; 32], 6));
        idx.put_known_hashes(Path::new("/p/proj"), &fresh).unwrap();
        let mut other = KnownHashes::new();
        other.insert("x".into(), record([8; 32], 0));
        idx.put_known_hashes(Path::new("/p/proj2"), &other).unwrap();
        let known = idx.known_hashes(Path::new("/p/proj")).unwrap();
        assert_eq!(
            known.len(),
            1,
            "a sibling with a common prefix is not included"
        );
        assert_eq!(known["src/a.rs"], record([7; 32], 6));
        assert_eq!(
            idx.known_hash(Path::new("/p/proj2"), "x").unwrap()["x"],
            record([8; 32], 0)
        );
    }

    #[test]
    fn images_are_keyed_by_digest_and_platform() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index.db")).unwrap();
        idx.put_image("sha256:a", "linux/amd64", "{}").unwrap();
        assert_eq!(
            idx.get_image("sha256:a", "linux/amd64").unwrap().as_deref(),
            Some("{}")
        );
        assert_eq!(idx.get_image("sha256:a", "linux/arm64").unwrap(), None);
    }

    #[test]
    fn many_first_opens_at_once_all_succeed() {
        // Repeated, since a race shows only sometimes.
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("index.db");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|n| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let idx = Index::open(&path)?;
                        idx.put_step(&record(&format!("round {round} thread {n}")))?;
                        idx.entries().map(|e| e.len())
                    })
                })
                .collect();
            for t in threads {
                let seen = t
                    .join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
                assert!(seen >= 1);
            }
            let idx = Index::open(&path).unwrap();
            assert_eq!(idx.entries().unwrap().len(), 8, "round {round}");
        }
    }

    #[test]
    fn an_index_written_in_wal_mode_opens_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        let rec = record("old");
        {
            let idx = Index::open(&path).unwrap();
            idx.put_step(&rec).unwrap();
        }
        {
            let c = Connection::open(&path).unwrap();
            let mode: String = c
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
        }
        let idx = Index::open(&path).unwrap();
        assert_eq!(idx.get_step(&rec.key).unwrap(), Some(rec));
        assert!(!dir.path().join("index.db-shm").exists());
    }
}
