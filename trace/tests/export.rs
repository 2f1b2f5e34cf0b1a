//! Exports to a real OTLP receiver with an explicit configuration (no
//! environment, so these tests run in parallel).

mod common;

use std::time::{Duration, Instant};

use rbuild_trace::receiver::Receiver;
use rbuild_trace::{Config, Protocol, TraceError, export_to};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_exports_the_run() {
    let receiver = Receiver::start().await;
    let mut config = Config::new(&receiver.endpoint, Protocol::HttpProtobuf);
    config.headers = vec![("x-tenant".into(), "acme".into())];
    assert_eq!(config.endpoint, receiver.traces_endpoint);

    export_to(&common::run(), &config).await.unwrap();

    // Flushed before export_to returned: the spans are there, in one request.
    common::check(&receiver.spans(), "rbuild");
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0].protocol, "http/protobuf");
    assert_eq!(requests[0].path, "/v1/traces");
    assert_eq!(requests[0].spans, 5);
    assert_eq!(
        requests[0].headers.get("content-type").map(String::as_str),
        Some("application/x-protobuf")
    );
    assert_eq!(
        requests[0].headers.get("x-tenant").map(String::as_str),
        Some("acme")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exports_the_run() {
    let receiver = Receiver::start().await;
    let mut config = Config::new(&receiver.endpoint, Protocol::Grpc);
    config.headers = vec![("x-tenant".into(), "acme".into())];
    config.service_name = "rbuild-grpc".into();
    assert_eq!(config.endpoint, receiver.endpoint);

    export_to(&common::run(), &config).await.unwrap();

    common::check(&receiver.spans(), "rbuild-grpc");
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0].protocol, "grpc");
    assert_eq!(requests[0].spans, 5);
    assert_eq!(
        requests[0].headers.get("x-tenant").map(String::as_str),
        Some("acme")
    );
}

/// The future is Send: it can be spawned on a multi-thread runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_is_a_send_future() {
    let receiver = Receiver::start().await;
    let config = Config::new(&receiver.endpoint, Protocol::HttpProtobuf);
    let handle = tokio::spawn(async move { export_to(&common::run(), &config).await });
    handle.await.unwrap().unwrap();
    assert_eq!(receiver.spans().len(), 5);
}

/// A current-thread runtime works too (no blocking of the runtime thread).
#[tokio::test(flavor = "current_thread")]
async fn export_on_a_current_thread_runtime() {
    let receiver = Receiver::start().await;
    for protocol in [Protocol::HttpProtobuf, Protocol::Grpc] {
        let config = Config::new(&receiver.endpoint, protocol);
        export_to(&common::run(), &config).await.unwrap();
    }
    assert_eq!(receiver.spans().len(), 10);
}

/// A port nothing listens on.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_an_error_not_a_hang() {
    for protocol in [Protocol::HttpProtobuf, Protocol::Grpc] {
        fails_without_hanging(&dead_endpoint(), protocol, Duration::from_secs(3)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_rejects_is_an_error() {
    let receiver = Receiver::start().await;
    // A path the receiver answers 404 on.
    let mut config = Config::new(&receiver.endpoint, Protocol::HttpProtobuf);
    config.endpoint = format!("{}/elsewhere", receiver.endpoint);
    config.timeout = Duration::from_secs(3);
    let error = export_to(&common::run(), &config).await.unwrap_err();
    assert!(matches!(error, TraceError::Export { .. }), "{error:?}");
    assert!(receiver.spans().is_empty());
}

/// The receiver from a sync test (as the engine's integration tests use it,
/// around an `rbuild` subprocess): its own thread and runtime.
#[test]
fn receiver_from_a_sync_test() {
    let receiver = Receiver::spawn();
    let endpoint = receiver.endpoint.clone();
    // Something else exports (here: another thread with a runtime).
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = Config::new(&endpoint, Protocol::HttpProtobuf);
        runtime
            .block_on(export_to(&common::run(), &config))
            .unwrap();
    })
    .join()
    .unwrap();
    let spans = receiver.wait_for_spans(5, Duration::from_secs(5));
    common::check(&spans, "rbuild");
}

/// A collector that accepts but never answers: the export gives up at the
/// configured timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_collector_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    for protocol in [Protocol::HttpProtobuf, Protocol::Grpc] {
        fails_without_hanging(&endpoint, protocol, Duration::from_secs(1)).await;
    }
    hold.abort();
}

/// An export to `endpoint` fails with an error (not a panic) and returns;
/// the bound is the export's timeout with generous room, so only a hang
/// fails it (this is no speed claim).
async fn fails_without_hanging(endpoint: &str, protocol: Protocol, timeout: Duration) {
    let mut config = Config::new(endpoint, protocol);
    config.timeout = timeout;
    let begun = Instant::now();
    let error = export_to(&common::run(), &config).await.unwrap_err();
    let took = begun.elapsed();
    eprintln!("{protocol:?}: {error} after {took:?}");
    assert!(
        matches!(
            error,
            TraceError::Export { .. } | TraceError::Timeout { .. }
        ),
        "{error:?}"
    );
    assert!(
        took < timeout + Duration::from_secs(30),
        "hung for {took:?}"
    );
}
