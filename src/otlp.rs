//! A finished run as an OpenTelemetry trace, when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: a span per step with its
//! cache status, key, miss reason and phases (the exporter is `rbuild-trace`,
//! on the `opentelemetry` crates).

use std::time::{Duration, SystemTime};

use rbuild_trace::{RunTrace, StepSpan};

use crate::index::RunRecord;
use crate::timeline::Entry;

/// The run's trace: its steps' times are offsets from `started`.
pub fn trace(run: &RunRecord, started: SystemTime, steps: &[Entry]) -> RunTrace {
    let ms = Duration::from_millis;
    let (pulled, pushed) = crate::timeline::bytes(steps);
    RunTrace {
        pipeline: run.pipeline.clone(),
        run_id: run.id,
        started,
        wall: ms(run.duration_ms.max(0) as u64),
        exit_code: run.exit_code as i32,
        rbuild_version: env!("CARGO_PKG_VERSION").to_string(),
        steps: steps
            .iter()
            .map(|e| {
                let mut phases = Vec::new();
                if e.start_ms > e.queued_ms {
                    phases.push(("queued".to_string(), ms(e.queued_ms), ms(e.start_ms)));
                }
                if e.commit_ms > 0 {
                    let end = ms(e.end_ms);
                    phases.push((
                        "commit".to_string(),
                        end.saturating_sub(ms(e.commit_ms)),
                        end,
                    ));
                }
                for p in &e.phases {
                    phases.push((p.name.clone(), ms(p.start_ms), ms(p.end_ms)));
                }
                StepSpan {
                    no: e.no,
                    name: e.name.clone(),
                    kind: e.kind.clone(),
                    status: e.status.clone(),
                    key: e.key.clone(),
                    reason: e.reason.clone(),
                    at: e.at.clone(),
                    queued: ms(e.queued_ms),
                    start: ms(e.start_ms),
                    end: ms(e.end_ms),
                    phases,
                    parent_no: None,
                }
            })
            .collect(),
        attributes: vec![
            ("rbuild.steps_run".into(), run.steps_run.to_string()),
            ("rbuild.steps_cached".into(), run.steps_cached.to_string()),
            ("rbuild.bytes_pulled".into(), pulled.to_string()),
            ("rbuild.bytes_pushed".into(), pushed.to_string()),
        ],
    }
}

/// Exports the run's trace if the environment asks for one; a failure is
/// a warning, never the run's failure.
pub async fn export(run: &RunRecord, started: SystemTime, steps: &[Entry]) {
    match rbuild_trace::export(&trace(run, started, steps)).await {
        Ok(true) => tracing::debug!(run = run.id, "trace exported"),
        Ok(false) => {}
        Err(e) => crate::progress::say(&format!(
            "rbuild: warning: the run's trace was not exported: {e}"
        )),
    }
}
