//! A run's timeline: every step's queued, start and end times, status,
//! key, miss reason and inputs, as progress reports them (one
//! [`Recorder`] per run, inside [`crate::progress::Progress`]). Kept in the
//! index after the run (`run_steps`), it is what `rbuild explain`,
//! `rbuild report` and the OTLP trace are made from.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One step (or pull, scan, publish, service) of a run. Times are
/// milliseconds since the run started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Entry {
    pub no: u64,
    pub name: String,
    /// pull, scan, exec, apply, tarball, publish, push, service or other.
    pub kind: String,
    /// ran, cached, remote, failed or queued (never started).
    pub status: String,
    pub queued_ms: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Of the running time, how much went to committing its snapshot.
    pub commit_ms: u64,
    pub critical: bool,
    pub key: String,
    /// Why it missed the cache (steps that ran).
    pub reason: String,
    /// The key it most likely replaced, when the reason compares with one.
    pub replaced: String,
    pub at: String,
    pub detail: String,
    pub bytes_pulled: u64,
    pub bytes_pushed: u64,
    /// The identities of the step results and images it started from.
    pub deps: Vec<String>,
    /// Work done for it beside its running time (its push to the remote
    /// cache, after it ended).
    pub phases: Vec<Phase>,
    #[serde(skip)]
    pub(crate) started: bool,
    #[serde(skip)]
    pub(crate) ended: bool,
}

/// A part of a step's work with its own times (ms since the run started).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// What the solver knows of a step that progress does not.
#[derive(Clone, Debug, Default)]
pub struct StepTag {
    pub kind: &'static str,
    pub key: String,
    pub at: String,
    pub reason: String,
    pub replaced: String,
    pub deps: Vec<String>,
}

pub struct Recorder {
    started: Instant,
    entries: Mutex<BTreeMap<u64, Entry>>,
}

impl Recorder {
    pub fn new(started: Instant) -> Recorder {
        Recorder {
            started,
            entries: Mutex::new(BTreeMap::new()),
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    fn with(&self, no: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.entries.lock().expect("timeline lock").get_mut(&no) {
            f(e)
        }
    }

    /// A step seen for the first time: queued (`running` false) or started.
    pub fn begin(&self, no: u64, name: &str, tag: &StepTag, running: bool) {
        let now = self.now();
        let kind = if tag.kind.is_empty() {
            kind_of(name, !tag.key.is_empty())
        } else {
            tag.kind
        };
        self.entries.lock().expect("timeline lock").insert(
            no,
            Entry {
                no,
                name: name.to_string(),
                kind: kind.to_string(),
                status: if running { "ran" } else { "queued" }.into(),
                queued_ms: now,
                start_ms: now,
                end_ms: now,
                key: tag.key.clone(),
                reason: tag.reason.clone(),
                replaced: tag.replaced.clone(),
                at: tag.at.clone(),
                deps: tag.deps.clone(),
                started: running,
                ..Entry::default()
            },
        );
    }

    /// Work that already happened (a host scan), from `since` to now.
    pub fn past(&self, no: u64, name: &str, kind: &'static str, since: Instant) {
        let tag = StepTag {
            kind,
            ..StepTag::default()
        };
        self.begin(no, name, &tag, true);
        let start = self.ms(since);
        self.with(no, |e| {
            e.queued_ms = start;
            e.start_ms = start;
            e.ended = true;
        });
    }

    pub fn running(&self, no: u64) {
        let now = self.now();
        self.with(no, |e| {
            e.start_ms = now;
            e.end_ms = now;
            e.status = "ran".into();
            e.started = true;
        });
    }

    /// A step that ended: `status` ran, cached, remote or failed.
    pub fn end(&self, no: u64, status: &str, detail: Option<&str>) {
        let now = self.now();
        self.with(no, |e| {
            if !e.started {
                e.start_ms = now;
                e.started = true;
            }
            e.end_ms = now;
            e.status = status.to_string();
            e.ended = true;
            if let Some(d) = detail {
                e.detail = d.to_string();
            }
        });
    }

    /// Why step `no` missed ("" if it did not, or nobody said), and the
    /// key it replaced ("" if none).
    pub fn reason(&self, no: u64) -> (String, String) {
        self.entries
            .lock()
            .expect("timeline lock")
            .get(&no)
            .map(|e| (e.reason.clone(), e.replaced.clone()))
            .unwrap_or_default()
    }

    pub fn commit(&self, no: u64, ms: u64) {
        self.with(no, |e| e.commit_ms = ms);
    }

    /// Work for the step with key `key` from `since` to now (a push), and
    /// the bytes it pushed.
    pub fn phase(&self, key: &str, name: &str, since: Instant, pushed: u64) {
        let (start_ms, end_ms) = (self.ms(since), self.now());
        let mut entries = self.entries.lock().expect("timeline lock");
        if let Some(e) = entries.values_mut().rev().find(|e| e.key == key) {
            e.phases.push(Phase {
                name: name.to_string(),
                start_ms,
                end_ms,
            });
            e.bytes_pushed += pushed;
        }
    }

    pub fn bytes(&self, no: u64, pulled: u64, pushed: u64) {
        self.with(no, |e| {
            e.bytes_pulled += pulled;
            e.bytes_pushed += pushed;
        });
    }

    /// Every entry so far, its critical path marked. A step that started
    /// and never ended (the run was stopped) shows as failed, up to now.
    pub fn entries(&self) -> Vec<Entry> {
        let now = self.now();
        let mut out: Vec<Entry> = self
            .entries
            .lock()
            .expect("timeline lock")
            .values()
            .cloned()
            .map(|mut e| {
                if !e.ended {
                    e.end_ms = now;
                    if e.started {
                        e.status = "failed".into();
                    }
                }
                e
            })
            .collect();
        mark_critical(&mut out);
        out
    }
}

/// What kind of work a progress line's name is.
fn kind_of(name: &str, keyed: bool) -> &'static str {
    let first = name.split_whitespace().next().unwrap_or_default();
    match first {
        "exec" => "exec",
        "pull" | "download" => "pull",
        "publish" | "export" => "publish",
        "push" => "push",
        "context" => "scan",
        "tarball" => "tarball",
        _ if keyed => "apply",
        _ => "other",
    }
}

/// Marks the critical path: from the step that ended last, back through
/// the input that ended last, while there is one in this run.
pub fn mark_critical(entries: &mut [Entry]) {
    let by_key: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.key.is_empty())
        .map(|(i, e)| (e.key.as_str(), i))
        .collect();
    let Some(mut cur) = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind != "service")
        .max_by_key(|(i, e)| (e.end_ms, *i))
        .map(|(i, _)| i)
    else {
        return;
    };
    let mut path = vec![cur];
    while let Some(next) = entries[cur]
        .deps
        .iter()
        .filter_map(|d| by_key.get(d.as_str()).copied())
        .filter(|i| !path.contains(i))
        .max_by_key(|i| entries[*i].end_ms)
    {
        path.push(next);
        cur = next;
    }
    for i in path {
        entries[i].critical = true;
    }
}

/// Bytes pulled and pushed by all `entries`.
pub fn bytes(entries: &[Entry]) -> (u64, u64) {
    entries.iter().fold((0, 0), |(pulled, pushed), e| {
        (pulled + e.bytes_pulled, pushed + e.bytes_pushed)
    })
}

/// Time by kind of work (pull, exec, commit, publish, scan, push, other),
/// in milliseconds of running time.
pub fn time_by_kind(entries: &[Entry]) -> BTreeMap<&'static str, u64> {
    let mut out: BTreeMap<&'static str, u64> =
        ["pull", "exec", "commit", "publish", "scan", "push", "other"]
            .into_iter()
            .map(|k| (k, 0))
            .collect();
    for e in entries {
        for p in e.phases.iter().filter(|p| p.name == "push") {
            *out.get_mut("push").unwrap() += p.end_ms.saturating_sub(p.start_ms);
        }
    }
    for e in entries.iter().filter(|e| e.status != "cached") {
        let ran = e.end_ms.saturating_sub(e.start_ms);
        let kind = match e.kind.as_str() {
            "pull" => "pull",
            "exec" | "apply" | "tarball" => "exec",
            "publish" => "publish",
            "scan" => "scan",
            "push" => "push",
            "service" => continue,
            _ => "other",
        };
        *out.get_mut(kind).unwrap() += ran.saturating_sub(e.commit_ms);
        *out.get_mut("commit").unwrap() += e.commit_ms.min(ran);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(no: u64, key: &str, start: u64, end: u64, deps: &[&str]) -> Entry {
        Entry {
            no,
            key: key.into(),
            kind: "exec".into(),
            status: "ran".into(),
            start_ms: start,
            end_ms: end,
            deps: deps.iter().map(|d| d.to_string()).collect(),
            ..Entry::default()
        }
    }

    #[test]
    fn the_critical_path_follows_the_input_that_ended_last() {
        // a → b and a → c (parallel), d from b and c; c ends later than b.
        let mut e = vec![
            entry(1, "a", 0, 10, &[]),
            entry(2, "b", 10, 20, &["a"]),
            entry(3, "c", 10, 40, &["a"]),
            entry(4, "d", 40, 50, &["b", "c"]),
            entry(5, "x", 0, 5, &[]),
        ];
        mark_critical(&mut e);
        let critical: Vec<u64> = e.iter().filter(|e| e.critical).map(|e| e.no).collect();
        assert_eq!(critical, [1, 3, 4]);
    }

    #[test]
    fn events_make_entries_and_unfinished_ones_end_as_failed() {
        let r = Recorder::new(Instant::now());
        let tag = StepTag {
            key: "k".into(),
            reason: "env A changed".into(),
            ..StepTag::default()
        };
        r.begin(1, "exec make", &tag, false);
        r.running(1);
        r.commit(1, 3);
        r.end(1, "ran", None);
        r.begin(2, "pull alpine", &StepTag::default(), true);
        r.bytes(2, 100, 0);
        r.begin(3, "exec never", &StepTag::default(), false);
        let e = r.entries();
        assert_eq!(e[0].kind, "exec");
        assert_eq!(e[0].reason, "env A changed");
        assert_eq!(e[0].status, "ran");
        assert_eq!(e[1].kind, "pull");
        assert_eq!(e[1].status, "failed", "started, never ended");
        assert_eq!(e[1].bytes_pulled, 100);
        assert_eq!(e[2].status, "queued");
        let t = time_by_kind(&e);
        assert_eq!(t.len(), 7);
    }
}
