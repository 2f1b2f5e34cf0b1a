//! What the index keeps for explaining misses and picturing runs: each
//! step key's recorded parts (`step_inputs`, by call site), host listings
//! by digest (`host_listings`), and each run's timeline (`run_steps`).
//!
//! All of it is bounded: at most [`PER_SITE`] keys per call site and
//! [`PER_ROOT`] listings per host directory are kept (the newest), the
//! timelines of the last [`RUNS_KEPT`] runs; a key whose result is gone is
//! forgotten [`GONE_KEPT_SECS`] after it went (a key that never finished,
//! and a listing, that long after they were recorded), when the index
//! next forgets entries.

use rusqlite::{OptionalExtension, params};

use super::{Index, IndexError, now_secs};
use crate::explain::{Listing, Recorded, listing_lines, parse_listing};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS step_inputs (
    key         TEXT PRIMARY KEY,
    site        TEXT NOT NULL,
    created     INTEGER NOT NULL,
    recorded    TEXT NOT NULL,
    gone        INTEGER NOT NULL DEFAULT 0,
    gone_cause  TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX IF NOT EXISTS step_inputs_site ON step_inputs (site, created);
CREATE TABLE IF NOT EXISTS host_listings (
    digest   TEXT PRIMARY KEY,
    root     TEXT NOT NULL,
    created  INTEGER NOT NULL,
    entries  BLOB NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS host_listings_root ON host_listings (root, created);
CREATE TABLE IF NOT EXISTS run_steps (
    run   INTEGER NOT NULL,
    no    INTEGER NOT NULL,
    data  TEXT NOT NULL,
    PRIMARY KEY (run, no)
) STRICT;
";

/// When a recorded key was last used: its cache entry's last use (a hit
/// marks it), else when it was recorded. A key that hit again after a
/// newer one ran is the one the next miss replaces.
const RECENT: &str = "max(step_inputs.created, \
    coalesce((SELECT last_used FROM steps WHERE steps.key = step_inputs.key), 0))";

/// Keys kept per call site (a loop at one line makes several).
pub const PER_SITE: i64 = 8;
/// Listings kept per host directory.
pub const PER_ROOT: i64 = 3;
/// Runs whose timelines are kept.
pub const RUNS_KEPT: i64 = 50;
/// How long a key whose result is gone is remembered (30 days).
pub const GONE_KEPT_SECS: i64 = 30 * 24 * 3600;

/// A recorded key, as read back.
pub struct RecordedKey {
    pub key: String,
    pub created: i64,
    pub recorded: Recorded,
    /// When its result went, and how (0: it has not, or never finished).
    pub gone: i64,
    pub gone_cause: String,
}

impl Index {
    /// Records what `key` is made of (replacing an earlier record of it),
    /// keeping the newest [`PER_SITE`] keys of its site.
    pub fn put_inputs(&self, key: &str, rec: &Recorded) -> Result<(), IndexError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            write_inputs(&tx, key, rec)?;
            tx.commit()
        })
    }

    /// The record of `key`, if there is one.
    pub fn inputs(&self, key: &str) -> Result<Option<RecordedKey>, IndexError> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT key, created, recorded, gone, gone_cause FROM step_inputs WHERE key = ?1",
            )?
            .query_row(params![key], recorded_row)
            .optional()
        })
        .map(Option::flatten)
    }

    /// The other keys recorded at `site`, most recently used first (their
    /// `created` is that time).
    pub fn inputs_at(&self, site: &str, except: &str) -> Result<Vec<RecordedKey>, IndexError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT key, {RECENT}, recorded, gone, gone_cause FROM step_inputs
                 WHERE site = ?1 AND key != ?2 ORDER BY {RECENT} DESC, rowid DESC"
            ))?;
            let rows = stmt.query_map(params![site, except], recorded_row)?;
            Ok(rows
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect())
        })
    }

    /// Notes that the results of `keys` are gone (`cause`: how), in the
    /// transaction `tx` that removes them.
    pub(super) fn mark_gone(
        tx: &rusqlite::Transaction<'_>,
        keys: &[&str],
        cause: &str,
    ) -> rusqlite::Result<()> {
        let now = now_secs();
        let mut stmt =
            tx.prepare_cached("UPDATE step_inputs SET gone = ?2, gone_cause = ?3 WHERE key = ?1")?;
        for k in keys {
            stmt.execute(params![k, now, cause])?;
        }
        // What went long ago explains nothing any more: keys gone, keys
        // that never finished (no entry), listings not seen since.
        let long_ago = now - GONE_KEPT_SECS;
        tx.execute(
            "DELETE FROM step_inputs WHERE (gone > 0 AND gone < ?1)
             OR (gone = 0 AND created < ?1 AND key NOT IN (SELECT key FROM steps))",
            params![long_ago],
        )?;
        tx.execute(
            "DELETE FROM host_listings WHERE created < ?1",
            params![long_ago],
        )?;
        Ok(())
    }

    /// Whether the listing `digest` is recorded.
    pub fn has_listing(&self, digest: &str) -> Result<bool, IndexError> {
        self.with(|c| {
            c.prepare_cached("SELECT 1 FROM host_listings WHERE digest = ?1")?
                .exists(params![digest])
        })
    }

    /// Records a host directory's listing, keeping its root's newest [`PER_ROOT`].
    pub fn put_listing(
        &self,
        digest: &str,
        root: &str,
        listing: &Listing,
    ) -> Result<(), IndexError> {
        let packed = zstd::encode_all(listing_lines(listing).as_bytes(), 3)
            .expect("zstd into memory cannot fail");
        self.with(|c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO host_listings (digest, root, created, entries) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![digest, root, now_secs(), packed])?;
            c.prepare_cached(
                "DELETE FROM host_listings WHERE root = ?1 AND digest NOT IN
                 (SELECT digest FROM host_listings WHERE root = ?1 ORDER BY created DESC, rowid DESC LIMIT ?2)",
            )?
            .execute(params![root, PER_ROOT])?;
            Ok(())
        })
    }

    /// A recorded listing.
    pub fn listing(&self, digest: &str) -> Result<Option<Listing>, IndexError> {
        let packed: Option<Vec<u8>> = self.with(|c| {
            c.prepare_cached("SELECT entries FROM host_listings WHERE digest = ?1")?
                .query_row(params![digest], |r| r.get(0))
                .optional()
        })?;
        Ok(packed
            .and_then(|p| zstd::decode_all(p.as_slice()).ok())
            .map(|text| parse_listing(&String::from_utf8_lossy(&text))))
    }

    /// Records run `run`'s timeline (one JSON object per step), keeping
    /// the last [`RUNS_KEPT`] runs'.
    pub fn put_run_steps(&self, run: i64, steps: &[(u64, String)]) -> Result<(), IndexError> {
        let mut conn = self.conn.lock().expect("index mutex poisoned");
        let err = |source| IndexError::new("run_steps", source);
        let tx = conn.transaction().map_err(err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO run_steps (run, no, data) VALUES (?1, ?2, ?3)",
                )
                .map_err(err)?;
            for (no, data) in steps {
                stmt.execute(params![run, *no as i64, data]).map_err(err)?;
            }
        }
        tx.execute(
            "DELETE FROM run_steps WHERE run <= (SELECT MAX(id) FROM runs) - ?1",
            params![RUNS_KEPT],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Run `run`'s timeline, in step order.
    pub fn run_steps(&self, run: i64) -> Result<Vec<String>, IndexError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT data FROM run_steps WHERE run = ?1 ORDER BY no")?;
            let rows = stmt.query_map(params![run], |r| r.get(0))?;
            rows.collect()
        })
    }
}

/// Writes `key`'s record and keeps its site's newest [`PER_SITE`] keys
/// (inside the caller's transaction).
pub(super) fn write_inputs(
    c: &rusqlite::Connection,
    key: &str,
    rec: &Recorded,
) -> rusqlite::Result<()> {
    let json = serde_json::to_string(rec).expect("recorded parts serialize");
    c.prepare_cached(
        "INSERT OR REPLACE INTO step_inputs (key, site, created, recorded) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![key, rec.site, now_secs(), json])?;
    c.prepare_cached(&format!(
        "DELETE FROM step_inputs WHERE site = ?1 AND key NOT IN
         (SELECT key FROM step_inputs WHERE site = ?1 ORDER BY {RECENT} DESC, rowid DESC LIMIT ?2)"
    ))?
    .execute(params![rec.site, PER_SITE])?;
    Ok(())
}

/// A `step_inputs` row; None for a record this rbuild cannot read.
fn recorded_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<RecordedKey>> {
    let json: String = r.get(2)?;
    let Ok(recorded) = serde_json::from_str(&json) else {
        return Ok(None);
    };
    Ok(Some(RecordedKey {
        key: r.get(0)?,
        created: r.get(1)?,
        recorded,
        gone: r.get(3)?,
        gone_cause: r.get(4)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::{ListedEntry, Part};

    fn rec(site: &str, v: &str) -> Recorded {
        Recorded {
            site: site.into(),
            what: "exec x".into(),
            api: "0.3".into(),
            parts: [("command".to_string(), Part::value(v))].into(),
        }
    }

    #[test]
    fn a_site_keeps_its_newest_keys_and_a_gone_key_says_how() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        for i in 0..(PER_SITE + 3) {
            index
                .put_inputs(&format!("k{i}"), &rec("p.rs:1#1", &i.to_string()))
                .unwrap();
        }
        index.put_inputs("other", &rec("p.rs:2#1", "x")).unwrap();
        let at = index.inputs_at("p.rs:1#1", "k0").unwrap();
        assert_eq!(at.len() as i64, PER_SITE);
        assert_eq!(at[0].key, format!("k{}", PER_SITE + 2), "newest first");
        assert!(index.inputs("k0").unwrap().is_none(), "the oldest went");
        {
            let mut conn = index.conn.lock().unwrap();
            let tx = conn.transaction().unwrap();
            Index::mark_gone(&tx, &["other"], "pruned").unwrap();
            tx.commit().unwrap();
        }
        let gone = index.inputs("other").unwrap().unwrap();
        assert!(gone.gone > 0);
        assert_eq!(gone.gone_cause, "pruned");
    }

    #[test]
    fn listings_round_trip_and_a_root_keeps_its_newest() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        let listing: Listing = [(
            "a b/c.txt".to_string(),
            ListedEntry {
                kind: 'f',
                mode: 0o644,
                what: "abc".into(),
            },
        )]
        .into();
        for i in 0..(PER_ROOT + 2) {
            index
                .put_listing(&format!("d{i}"), "/src", &listing)
                .unwrap();
        }
        assert_eq!(
            index.listing(&format!("d{}", PER_ROOT + 1)).unwrap(),
            Some(listing)
        );
        assert!(index.listing("d0").unwrap().is_none());
        assert!(index.has_listing("d4").unwrap());
    }
}
