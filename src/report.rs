//! `rbuild explain [RUN] [STEP]` and `rbuild report [RUN] -o FILE`: a
//! recorded run's misses with their reasons, one step's whole comparison,
//! and the run as one self-contained HTML page (a timeline, where the time
//! went, totals), all from what the index kept (`run_steps`,
//! `step_inputs`, `host_listings`).

use std::fmt::Write as _;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

use crate::explain::{self, Recorded};
use crate::index::{Index, RunRecord};
use crate::timeline::{Entry, bytes, time_by_kind};

/// The page, with `__RBUILD_REPORT_DATA__` where the run's data goes.
const TEMPLATE: &str = include_str!("report/template.html");

/// A recorded run and its timeline.
pub struct Run {
    pub record: RunRecord,
    pub steps: Vec<Entry>,
}

/// Run `which` (an id from `rbuild history`, or `last`/none: the newest).
pub fn load(index: &Index, which: Option<&str>) -> Result<Run> {
    let record = match which.unwrap_or("last") {
        "last" => index
            .runs(1)?
            .pop()
            .ok_or_else(|| anyhow!("no run is recorded yet: run a pipeline first"))?,
        id => {
            let id: i64 = id.trim_start_matches('#').parse().map_err(|_| {
                anyhow!(
                    "run {id:?}: not a run id (see `rbuild history` for the ids, or say `last`)"
                )
            })?;
            index.run(id)?.ok_or_else(|| {
                anyhow!("run {id} is not recorded (see `rbuild history` for the runs kept)")
            })?
        }
    };
    let steps = index
        .run_steps(record.id)?
        .iter()
        .filter_map(|s| serde_json::from_str(s).ok())
        .collect();
    Ok(Run { record, steps })
}

/// `rbuild explain RUN`: every step that ran, with why; with `step` (its
/// number, or words of its name), that step's whole comparison.
pub fn explain(index: &Index, run: &Run, step: Option<&str>) -> Result<String> {
    let mut out = String::new();
    let r = &run.record;
    if run.steps.is_empty() {
        bail!(
            "run {} ({}) has no recorded steps (it ran before rbuild kept timelines, or ran none)",
            r.id,
            r.pipeline
        );
    }
    let Some(which) = step else {
        let missed: Vec<&Entry> = run
            .steps
            .iter()
            .filter(|e| is_step(e) && matches!(e.status.as_str(), "ran" | "failed"))
            .collect();
        let cached = run
            .steps
            .iter()
            .filter(|e| is_step(e) && matches!(e.status.as_str(), "cached" | "remote"))
            .count();
        let failed = missed.iter().filter(|e| e.status == "failed").count();
        writeln!(
            out,
            "run {} ({}, {}): {} steps ran{}, {cached} cached",
            r.id,
            r.pipeline,
            explain::when(r.started),
            missed.len(),
            match failed {
                0 => String::new(),
                n => format!(" ({n} failed)"),
            }
        )?;
        for e in missed {
            writeln!(out, "#{} {}", e.no, e.name)?;
            if !e.at.is_empty() {
                writeln!(out, "    at {}", e.at)?;
            }
            writeln!(out, "    cache miss: {}", e.reason)?;
        }
        write!(
            out,
            "(`rbuild explain {} STEP` compares one step part by part)",
            r.id
        )?;
        return Ok(out);
    };
    let e = find_step(&run.steps, which)?;
    writeln!(out, "#{} {} (run {})", e.no, e.name, r.id)?;
    if !e.at.is_empty() {
        writeln!(out, "  at:     {}", e.at)?;
    }
    writeln!(out, "  status: {}", e.status)?;
    if e.key.is_empty() {
        write!(out, "  (not a cached step: nothing to compare)")?;
        return Ok(out);
    }
    writeln!(out, "  key:    {}", e.key)?;
    if !e.reason.is_empty() {
        writeln!(out, "  cache miss: {}", e.reason)?;
    }
    let now = index.inputs(&e.key)?;
    let old = if e.replaced.is_empty() {
        None
    } else {
        index.inputs(&e.replaced)?
    };
    match (now, old) {
        (Some(now), Some(old)) => {
            writeln!(
                out,
                "  compared with key {} (recorded {}):",
                old.key,
                explain::when(old.created)
            )?;
            out.push_str(&comparison(index, &old.recorded, &now.recorded));
        }
        (Some(now), None) => {
            writeln!(out, "  its key is made of:")?;
            for (name, part) in &now.recorded.parts {
                writeln!(out, "    {name}: {}", part.shown())?;
            }
        }
        (None, _) => {
            writeln!(out, "  (what its key was made of is no longer recorded)")?;
        }
    }
    Ok(out.trim_end().to_string())
}

/// A cached step (not a pull, a scan, a publish).
fn is_step(e: &Entry) -> bool {
    matches!(e.kind.as_str(), "exec" | "apply" | "tarball")
}

/// Every part of two keys: `=` the same, `≠` changed, `+` added, `-` removed.
fn comparison(index: &Index, old: &Recorded, new: &Recorded) -> String {
    let listings = |d: &str| index.listing(d).ok().flatten();
    let changes = explain::compare(old, new, &listings);
    let mut out = String::new();
    let names: std::collections::BTreeSet<&String> =
        old.parts.keys().chain(new.parts.keys()).collect();
    for name in names {
        let change = changes.iter().find(|c| &c.part == name);
        let line = match (old.parts.get(name), new.parts.get(name), change) {
            (_, _, Some(c)) => {
                let mark = match (old.parts.get(name), new.parts.get(name)) {
                    (None, _) => "+",
                    (_, None) => "-",
                    _ => "≠",
                };
                let text = c.text.strip_prefix(&format!("{name} changed: "));
                format!("  {mark} {name}: {}", text.unwrap_or(&c.text))
            }
            (_, Some(p), None) | (Some(p), None, None) => format!("  = {name}: {}", p.shown()),
            (None, None, None) => continue,
        };
        out.push_str(&line);
        out.push('\n');
    }
    if let Some(c) = changes.iter().find(|c| c.part == "api") {
        out.push_str(&format!("  ≠ {}\n", c.text));
    }
    if changes.is_empty() {
        out.push_str("  (every recorded part is the same: the key changed in a part rbuild does not record)\n");
    }
    out
}

fn find_step<'a>(steps: &'a [Entry], which: &str) -> Result<&'a Entry> {
    if let Ok(no) = which.trim_start_matches('#').parse::<u64>() {
        return steps.iter().find(|e| e.no == no).ok_or_else(|| {
            anyhow!(
                "step #{no} is not in this run (it has #1 to #{})",
                steps.len()
            )
        });
    }
    let matching: Vec<&Entry> = steps.iter().filter(|e| e.name.contains(which)).collect();
    match matching.as_slice() {
        [one] => Ok(one),
        [] => Err(anyhow!(
            "no step of this run is named like {which:?}: give its number (`rbuild explain RUN` lists them)"
        )),
        many => {
            // Prefer the one that ran.
            let ran: Vec<&&Entry> = many.iter().filter(|e| e.status != "cached").collect();
            match ran.as_slice() {
                [one] => Ok(one),
                _ => Err(anyhow!(
                    "{} steps of this run are named like {which:?} (#{}): give its number",
                    many.len(),
                    many.iter()
                        .map(|e| e.no.to_string())
                        .collect::<Vec<_>>()
                        .join(", #")
                )),
            }
        }
    }
}

/// The report's data, as the page reads it.
pub fn data(run: &Run) -> serde_json::Value {
    let r = &run.record;
    let count = |s: &[&str]| {
        run.steps
            .iter()
            .filter(|e| is_step(e) && s.contains(&e.status.as_str()))
            .count()
    };
    let (pulled, pushed) = bytes(&run.steps);
    json!({
        "rbuild_version": env!("CARGO_PKG_VERSION"),
        "run": {
            "id": r.id,
            "pipeline": r.pipeline,
            "started": explain::when(r.started),
            "wall_ms": r.duration_ms,
            "exit_code": r.exit_code,
        },
        "totals": {
            "steps_run": r.steps_run,
            "steps_cached": r.steps_cached,
            "steps_failed": count(&["failed"]),
            "bytes_pulled": pulled,
            "bytes_pushed": pushed,
            "time_ms": time_by_kind(&run.steps),
        },
        "steps": run.steps,
    })
}

/// The whole page for `run`.
pub fn html(run: &Run) -> String {
    let data = serde_json::to_string(&data(run))
        .expect("report data serializes")
        .replace('<', "\\u003c");
    TEMPLATE.replacen("__RBUILD_REPORT_DATA__", &data, 1)
}

/// `rbuild report`: writes the page; what to tell the user.
pub fn write(index: &Index, which: Option<&str>, path: &std::path::Path) -> Result<String> {
    let run = load(index, which)?;
    std::fs::write(path, html(&run)).with_context(|| format!("write {}", path.display()))?;
    Ok(format!(
        "wrote {} (run {}, {} steps): open it in a browser",
        path.display(),
        run.record.id,
        run.steps.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_carries_the_data_and_no_markup_from_it() {
        let run = Run {
            record: RunRecord {
                id: 7,
                started: 0,
                duration_ms: 1200,
                pipeline: "</script><b>x</b>".into(),
                steps_run: 1,
                steps_cached: 0,
                exit_code: 0,
            },
            steps: vec![Entry {
                no: 1,
                name: "exec echo </script>".into(),
                kind: "exec".into(),
                status: "ran".into(),
                key: "k".into(),
                ..Entry::default()
            }],
        };
        let page = html(&run);
        assert!(!page.contains("__RBUILD_REPORT_DATA__"));
        assert!(!page.contains("</script><b>"));
        assert!(page.contains("\\u003c/script>\\u003cb>x"));
    }
}
