//! A real OTLP receiver for tests: OTLP/HTTP (`POST /v1/traces`,
//! `application/x-protobuf`) and OTLP/gRPC (`TraceService/Export`, h2c) on
//! one loopback port, decoding with the official protobuf definitions of
//! `opentelemetry-proto`.
//!
//! It runs on its own thread with its own tokio runtime, so that sync tests
//! (which run the `rbuild` binary as a subprocess) and async tests alike can
//! use it; it stops when the [`Receiver`] is dropped.
//!
//! ```no_run
//! let receiver = rbuild_trace::receiver::Receiver::spawn();
//! // run something with OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint ...
//! let spans = receiver.wait_for_spans(3, std::time::Duration::from_secs(5));
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as OtlpStatus;
use prost::Message as _;
use prost::bytes::Bytes;
use tonic::codegen::Service as _;

/// One span as received, decoded from the OTLP protobuf.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    /// Empty for a root span.
    pub parent_span_id: Vec<u8>,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// Span attributes, values as strings (ints and bools in decimal/`true`).
    pub attributes: BTreeMap<String, String>,
    pub status_error: bool,
    pub status_message: String,
    /// The resource's `service.name`.
    pub service_name: String,
    /// All resource attributes.
    pub resource: BTreeMap<String, String>,
    /// The instrumentation scope's name.
    pub scope_name: String,
}

/// One export request as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedRequest {
    /// `http/protobuf` or `grpc`.
    pub protocol: &'static str,
    pub path: String,
    /// Request headers (gRPC metadata), names lower-case.
    pub headers: BTreeMap<String, String>,
    /// Number of spans in it.
    pub spans: usize,
}

#[derive(Debug, Default)]
struct Store {
    spans: Vec<ReceivedSpan>,
    requests: Vec<ReceivedRequest>,
}

type Shared = Arc<Mutex<Store>>;

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    /// Base URL, "http://127.0.0.1:PORT": for OTEL_EXPORTER_OTLP_ENDPOINT, either protocol.
    pub endpoint: String,
    /// The traces URL for http/protobuf, "http://127.0.0.1:PORT/v1/traces".
    pub traces_endpoint: String,
    store: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1:<ephemeral port> (same as [`Receiver::spawn`];
    /// async for symmetry, it does not need the caller's runtime).
    pub async fn start() -> Receiver {
        Receiver::spawn()
    }

    /// Starts a receiver on 127.0.0.1:<ephemeral port> on its own thread and
    /// runtime; usable from sync tests. Panics if it cannot bind (a test helper).
    pub fn spawn() -> Receiver {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the OTLP test receiver");
        listener
            .set_nonblocking(true)
            .expect("nonblocking OTLP test receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let store = Shared::default();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = {
            let store = store.clone();
            std::thread::Builder::new()
                .name("otlp-receiver".into())
                .spawn(move || serve(listener, store, stopped))
                .expect("spawn the OTLP test receiver")
        };
        Receiver {
            endpoint: format!("http://127.0.0.1:{port}"),
            traces_endpoint: format!("http://127.0.0.1:{port}/v1/traces"),
            store,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The spans received so far, in order of arrival.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.lock().spans.clone()
    }

    /// The export requests received so far (including rejected ones).
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.lock().requests.clone()
    }

    /// Waits (blocking, polling) until at least `count` spans arrived or
    /// `timeout` passed; returns the spans received by then.
    pub fn wait_for_spans(&self, count: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if spans.len() >= count || Instant::now() >= deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    listener: std::net::TcpListener,
    store: Shared,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("OTLP test receiver runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("receiver listener");
        let grpc = TraceServiceServer::new(Grpc(store.clone()));
        loop {
            let stream = tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let store = store.clone();
            let grpc = grpc.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req| handle(req, store.clone(), grpc.clone()));
                // HTTP/1.1 for OTLP/HTTP, h2c (prior knowledge) for gRPC.
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    // Dropping the runtime ends the connections still open.
}

type Body = Either<Full<Bytes>, tonic::body::Body>;

async fn handle(
    req: Request<Incoming>,
    store: Shared,
    mut grpc: TraceServiceServer<Grpc>,
) -> Result<Response<Body>, Infallible> {
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into(),
            )
        })
        .collect();
    let content_type = headers.get("content-type").cloned().unwrap_or_default();
    let path = req.uri().path().to_string();
    if content_type.starts_with("application/grpc") {
        // The tonic service records through `Grpc::export`; the headers are
        // kept with the request it records.
        let mut req = req;
        req.extensions_mut().insert(PendingHeaders(headers));
        let response = grpc.call(req).await?;
        return Ok(response.map(Either::Right));
    }
    let reply = |status: StatusCode, body: Bytes| {
        let mut response = Response::new(Either::Left(Full::new(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/x-protobuf"),
        );
        response
    };
    if req.method() != hyper::Method::POST || path != "/v1/traces" {
        return Ok(reply(StatusCode::NOT_FOUND, Bytes::new()));
    }
    let mut record = ReceivedRequest {
        protocol: "http/protobuf",
        path,
        headers,
        spans: 0,
    };
    if !content_type.starts_with("application/x-protobuf") {
        lock(&store).requests.push(record);
        return Ok(reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, Bytes::new()));
    }
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            lock(&store).requests.push(record);
            return Ok(reply(StatusCode::BAD_REQUEST, Bytes::new()));
        }
    };
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            let spans = convert(request);
            record.spans = spans.len();
            let mut store = lock(&store);
            store.requests.push(record);
            store.spans.extend(spans);
            let response = ExportTraceServiceResponse::default().encode_to_vec();
            Ok(reply(StatusCode::OK, Bytes::from(response)))
        }
        Err(_) => {
            lock(&store).requests.push(record);
            Ok(reply(StatusCode::BAD_REQUEST, Bytes::new()))
        }
    }
}

fn lock(store: &Shared) -> std::sync::MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
struct PendingHeaders(BTreeMap<String, String>);

struct Grpc(Shared);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request
            .extensions()
            .get::<PendingHeaders>()
            .map(|h| h.0.clone())
            .unwrap_or_default();
        let spans = convert(request.into_inner());
        let mut store = lock(&self.0);
        store.requests.push(ReceivedRequest {
            protocol: "grpc",
            path: "/opentelemetry.proto.collector.trace.v1.TraceService/Export".into(),
            headers,
            spans: spans.len(),
        });
        store.spans.extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn convert(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            let scope_name = scope_spans.scope.map(|s| s.name).unwrap_or_default();
            for span in scope_spans.spans {
                let (status_error, status_message) = match &span.status {
                    Some(status) => (
                        status.code == OtlpStatus::Error as i32,
                        status.message.clone(),
                    ),
                    None => (false, String::new()),
                };
                out.push(ReceivedSpan {
                    attributes: attributes(&span.attributes),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    status_error,
                    status_message,
                    service_name: service_name.clone(),
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                });
            }
        }
    }
    out
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(value).unwrap_or_default(),
            )
        })
        .collect()
}

fn value(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => b.iter().map(|b| format!("{b:02x}")).collect(),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(value).collect();
            format!("[{}]", items.join(","))
        }
        Some(any_value::Value::KvlistValue(l)) => format!("{:?}", attributes(&l.values)),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
