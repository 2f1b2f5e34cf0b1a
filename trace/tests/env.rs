//! `export` by the OpenTelemetry environment variables. The only test of
//! this binary (its own process), so that setting the environment races no
//! other test.

mod common;

use std::time::Duration;

use rbuild_trace::receiver::Receiver;
use rbuild_trace::{TraceError, export};

const VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
];

fn set(name: &str, value: &str) {
    // SAFETY: the only test in this process; nothing else reads or writes
    // the environment concurrently (the export reads it on this task).
    unsafe { std::env::set_var(name, value) }
}

fn unset(name: &str) {
    // SAFETY: as in `set`.
    unsafe { std::env::remove_var(name) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_follows_the_otel_environment() {
    for var in VARS {
        unset(var);
    }
    let receiver = Receiver::start().await;
    let run = common::run();

    // No endpoint: nothing done, nothing sent.
    assert!(!export(&run).await.unwrap());
    set("OTEL_EXPORTER_OTLP_ENDPOINT", "");
    assert!(!export(&run).await.unwrap());
    std::thread::sleep(Duration::from_millis(200));
    assert!(receiver.requests().is_empty());

    // The base endpoint, http/protobuf by default, headers, service name.
    set("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint);
    set(
        "OTEL_EXPORTER_OTLP_HEADERS",
        "x-tenant=acme,authorization=Bearer%20t0k",
    );
    set("OTEL_SERVICE_NAME", "rbuild-ci");
    set(
        "OTEL_RESOURCE_ATTRIBUTES",
        "deployment.environment=ci,host.name=runner-1",
    );
    assert!(export(&run).await.unwrap());
    common::check(&receiver.spans(), "rbuild-ci");
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0].protocol, "http/protobuf");
    assert_eq!(requests[0].path, "/v1/traces");
    assert_eq!(
        requests[0].headers.get("x-tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(
        requests[0].headers.get("authorization").map(String::as_str),
        Some("Bearer t0k")
    );
    let resource = &receiver.spans()[0].resource;
    assert_eq!(
        resource.get("deployment.environment").map(String::as_str),
        Some("ci")
    );
    assert_eq!(
        resource.get("host.name").map(String::as_str),
        Some("runner-1")
    );

    // grpc by OTEL_EXPORTER_OTLP_PROTOCOL, to the same base endpoint; the
    // default service name.
    unset("OTEL_SERVICE_NAME");
    unset("OTEL_RESOURCE_ATTRIBUTES");
    set("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
    assert!(export(&run).await.unwrap());
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[1].protocol, "grpc");
    assert_eq!(
        requests[1].headers.get("x-tenant").map(String::as_str),
        Some("acme")
    );
    common::check(&receiver.spans()[5..], "rbuild");

    // The traces endpoint wins over the base one; the traces protocol over
    // the general one.
    let other = Receiver::start().await;
    set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &other.traces_endpoint);
    set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf");
    assert!(export(&run).await.unwrap());
    assert_eq!(receiver.requests().len(), 2);
    assert_eq!(other.requests().len(), 1);
    assert_eq!(other.requests()[0].protocol, "http/protobuf");
    common::check(&other.spans(), "rbuild");

    // A protocol we do not do is a configuration error, not a panic.
    set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json");
    let error = export(&run).await.unwrap_err();
    assert!(matches!(error, TraceError::Config(_)), "{error:?}");

    for var in VARS {
        unset(var);
    }
}
