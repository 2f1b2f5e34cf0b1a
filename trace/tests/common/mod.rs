//! The run the tests export, and the checks on what the receiver decoded.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rbuild_trace::receiver::ReceivedSpan;
use rbuild_trace::{RunTrace, StepSpan};

/// 2023-11-14T22:13:20.123456789Z: a start with nanoseconds, to check they survive.
pub fn started() -> SystemTime {
    UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)
}

pub fn ns(offset: Duration) -> u64 {
    (started() + offset)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Three steps: one cached, one ran with a commit phase, one failed; exit code 1.
pub fn run() -> RunTrace {
    RunTrace {
        pipeline: "/home/u/proj/ci/pipeline.rs".into(),
        run_id: 42,
        started: started(),
        wall: ms(10_000) + Duration::from_nanos(7),
        exit_code: 1,
        rbuild_version: "0.3.0".into(),
        steps: vec![
            StepSpan {
                no: 1,
                name: "pull alpine:3.20".into(),
                kind: "pull".into(),
                status: "cached".into(),
                key: "ab12ef".into(),
                reason: String::new(),
                at: "ci/pipeline.rs:9".into(),
                queued: ms(50),
                start: ms(100),
                end: ms(200),
                phases: vec![],
                parent_no: None,
            },
            StepSpan {
                no: 2,
                name: "exec cargo build".into(),
                kind: "exec".into(),
                status: "ran".into(),
                key: "cd34".into(),
                reason: "input changed: src/main.rs".into(),
                at: "ci/pipeline.rs:14".into(),
                queued: ms(200),
                start: ms(250),
                end: ms(5_500),
                phases: vec![(
                    "commit".into(),
                    ms(5_000),
                    ms(5_500) - Duration::from_nanos(1),
                )],
                parent_no: None,
            },
            StepSpan {
                no: 3,
                name: "exec cargo test".into(),
                kind: "exec".into(),
                status: "failed".into(),
                key: String::new(),
                reason: "no cache entry".into(),
                at: String::new(),
                queued: ms(5_500),
                start: ms(5_600),
                end: ms(9_900),
                phases: vec![],
                parent_no: None,
            },
        ],
        attributes: vec![
            ("rbuild.steps_run".into(), "2".into()),
            ("rbuild.steps_cached".into(), "1".into()),
        ],
    }
}

fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn by_name<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one span {name:?} in {spans:#?}");
    found[0]
}

/// Checks the decoded spans of one export of [`run`].
pub fn check(spans: &[ReceivedSpan], service_name: &str) {
    assert_eq!(spans.len(), 5, "{spans:#?}");

    let root = by_name(spans, "rbuild run pipeline.rs");
    let pull = by_name(spans, "pull alpine:3.20");
    let build = by_name(spans, "exec cargo build");
    let commit = by_name(spans, "commit");
    let test = by_name(spans, "exec cargo test");

    // One trace, and the parentage: steps under the root, the phase under its step.
    assert_eq!(root.trace_id.len(), 16);
    assert!(root.trace_id.iter().any(|b| *b != 0));
    for span in spans {
        assert_eq!(span.trace_id, root.trace_id, "{}", span.name);
        assert_eq!(span.span_id.len(), 8, "{}", span.name);
        assert_eq!(span.service_name, service_name, "{}", span.name);
        assert_eq!(span.scope_name, "rbuild");
    }
    let ids: std::collections::BTreeSet<_> = spans.iter().map(|s| s.span_id.clone()).collect();
    assert_eq!(ids.len(), 5, "distinct span ids");
    assert!(root.parent_span_id.is_empty());
    for step in [pull, build, test] {
        assert_eq!(step.parent_span_id, root.span_id, "{}", step.name);
    }
    assert_eq!(commit.parent_span_id, build.span_id);

    // Times exactly as given, to the nanosecond.
    assert_eq!(root.start_unix_nano, ns(Duration::ZERO));
    assert_eq!(root.end_unix_nano, ns(ms(10_000) + Duration::from_nanos(7)));
    assert_eq!(
        (pull.start_unix_nano, pull.end_unix_nano),
        (ns(ms(100)), ns(ms(200)))
    );
    assert_eq!(
        (build.start_unix_nano, build.end_unix_nano),
        (ns(ms(250)), ns(ms(5_500)))
    );
    assert_eq!(
        (commit.start_unix_nano, commit.end_unix_nano),
        (ns(ms(5_000)), ns(ms(5_500)) - 1)
    );
    assert_eq!(
        (test.start_unix_nano, test.end_unix_nano),
        (ns(ms(5_600)), ns(ms(9_900)))
    );

    // Attributes.
    assert_eq!(
        root.attributes,
        attrs(&[
            ("rbuild.run.id", "42"),
            ("rbuild.pipeline", "/home/u/proj/ci/pipeline.rs"),
            ("rbuild.exit_code", "1"),
            ("rbuild.version", "0.3.0"),
            ("rbuild.steps_run", "2"),
            ("rbuild.steps_cached", "1"),
        ])
    );
    assert_eq!(
        pull.attributes,
        attrs(&[
            ("rbuild.step.no", "1"),
            ("rbuild.step.kind", "pull"),
            ("rbuild.cache.status", "cached"),
            ("rbuild.cache.key", "ab12ef"),
            ("rbuild.step.at", "ci/pipeline.rs:9"),
            ("rbuild.step.queued_ms", "50"),
        ])
    );
    assert_eq!(
        build.attributes,
        attrs(&[
            ("rbuild.step.no", "2"),
            ("rbuild.step.kind", "exec"),
            ("rbuild.cache.status", "ran"),
            ("rbuild.cache.key", "cd34"),
            ("rbuild.miss.reason", "input changed: src/main.rs"),
            ("rbuild.step.at", "ci/pipeline.rs:14"),
            ("rbuild.step.queued_ms", "50"),
        ])
    );
    assert_eq!(
        test.attributes,
        attrs(&[
            ("rbuild.step.no", "3"),
            ("rbuild.step.kind", "exec"),
            ("rbuild.cache.status", "failed"),
            ("rbuild.miss.reason", "no cache entry"),
            ("rbuild.step.queued_ms", "100"),
        ])
    );
    assert_eq!(commit.attributes, attrs(&[("rbuild.step.no", "2")]));

    // Error status: the failed step and the root (exit code 1), nothing else.
    assert!(root.status_error);
    assert_eq!(root.status_message, "exit code 1");
    assert!(test.status_error);
    assert!(!pull.status_error && !build.status_error && !commit.status_error);

    // Resource.
    assert_eq!(
        root.resource.get("service.version").map(String::as_str),
        Some("0.3.0")
    );
    assert_eq!(
        root.resource.get("telemetry.sdk.name").map(String::as_str),
        Some("opentelemetry")
    );
}
