//! Exports a finished rbuild run as one OpenTelemetry trace over OTLP.
//!
//! The run has already happened when [`export`] is called: every span is
//! created with its real start and end time, collected in memory by a
//! per-call tracer provider, and then handed in one batch to the official
//! OTLP exporter (`opentelemetry-otlp`), over `http/protobuf` (the default)
//! or `grpc`. Nothing global is installed.
//!
//! Trace shape:
//! - one root span `rbuild run <pipeline file name>` over the whole run;
//! - one child span per step, named after the step;
//! - one child span of its step per phase (`commit`, `pull`, `push`, ...).
//!
//! The configuration follows the OpenTelemetry environment conventions, see
//! [`Config::from_env`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector as _};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor};

#[cfg(feature = "receiver")]
pub mod receiver;

/// A finished run, as the engine knows it after the run ended.
#[derive(Debug, Clone)]
pub struct RunTrace {
    /// The pipeline file, e.g. "/home/u/proj/ci/pipeline.rs".
    pub pipeline: String,
    pub run_id: i64,
    pub started: SystemTime,
    pub wall: Duration,
    pub exit_code: i32,
    pub rbuild_version: String,
    pub steps: Vec<StepSpan>,
    /// Extra attributes of the root span (steps_run, steps_cached, ...), keys used verbatim.
    pub attributes: Vec<(String, String)>,
}

/// One step of a run. All durations are offsets from [`RunTrace::started`].
#[derive(Debug, Clone, Default)]
pub struct StepSpan {
    /// The step's number in the run (#3).
    pub no: u64,
    /// "exec cargo build".
    pub name: String,
    /// pull | scan | exec | apply | tarball | publish | push | service | other
    pub kind: String,
    /// ran | cached | remote | failed | queued
    pub status: String,
    /// Cache key (hex), may be empty.
    pub key: String,
    /// The miss reason, may be empty.
    pub reason: String,
    /// "ci/pipeline.rs:14", may be empty.
    pub at: String,
    pub queued: Duration,
    pub start: Duration,
    pub end: Duration,
    /// Child spans of the step: (name, start, end), offsets from the run's start.
    pub phases: Vec<(String, Duration, Duration)>,
    /// A step this one is nested under; `None` (or an unknown or later step)
    /// puts it under the root span.
    pub parent_no: Option<u64>,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The configuration (environment or [`Config`]) is invalid.
    #[error("OpenTelemetry export configuration: {0}")]
    Config(String),
    /// The collector could not be reached or refused the spans.
    #[error("OTLP export to {endpoint} failed: {message}")]
    Export { endpoint: String, message: String },
    /// The export did not finish in time.
    #[error("OTLP export to {endpoint} timed out after {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    /// [`export`] was called outside a tokio runtime.
    #[error("OTLP export needs a tokio runtime (with time and io enabled)")]
    NoRuntime,
}

/// OTLP transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `http/protobuf`: POST <endpoint> (…/v1/traces) with a protobuf body.
    #[default]
    HttpProtobuf,
    /// `grpc`: the `opentelemetry.proto.collector.trace.v1.TraceService/Export` call.
    Grpc,
}

impl Protocol {
    /// Parses the value of `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn parse(value: &str) -> Result<Protocol, TraceError> {
        match value.trim() {
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "grpc" => Ok(Protocol::Grpc),
            "http/json" => Err(TraceError::Config(
                "OTLP protocol http/json is not supported; use http/protobuf or grpc".into(),
            )),
            other => Err(TraceError::Config(format!(
                "unknown OTLP protocol {other:?}; use http/protobuf or grpc"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Where and how to export. [`Config::from_env`] builds one from the
/// OpenTelemetry environment variables; [`Config::new`] from a base URL.
#[derive(Debug, Clone)]
pub struct Config {
    /// The full URL the spans are sent to: for `http/protobuf` the traces URL
    /// (`http://host:4318/v1/traces`), for `grpc` the server (`http://host:4317`).
    pub endpoint: String,
    pub protocol: Protocol,
    /// Headers (gRPC metadata) sent with the export, on top of those of
    /// `OTEL_EXPORTER_OTLP_HEADERS` / `OTEL_EXPORTER_OTLP_TRACES_HEADERS`,
    /// which the OTLP exporter always reads itself.
    pub headers: Vec<(String, String)>,
    /// Resource `service.name`.
    pub service_name: String,
    /// Further resource attributes (from `OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Vec<(String, String)>,
    /// Upper bound of the whole export, retries included.
    pub timeout: Duration,
}

/// The default `service.name`.
pub const DEFAULT_SERVICE_NAME: &str = "rbuild";
/// The default export timeout (as the OTLP spec's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Config {
    /// A configuration for a base URL as in `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (e.g. `http://127.0.0.1:4318`): `/v1/traces` is appended for
    /// `http/protobuf`, the URL is used as it is for `grpc`.
    pub fn new(base_endpoint: &str, protocol: Protocol) -> Config {
        Config {
            endpoint: signal_url(base_endpoint, protocol),
            protocol,
            headers: Vec::new(),
            service_name: DEFAULT_SERVICE_NAME.to_string(),
            resource_attributes: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Reads the OpenTelemetry environment; `Ok(None)` when neither
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` nor `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// is set (or both are empty).
    ///
    /// - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: full URL, wins;
    /// - `OTEL_EXPORTER_OTLP_ENDPOINT`: base URL (`/v1/traces` appended for http);
    /// - `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, then `OTEL_EXPORTER_OTLP_PROTOCOL`:
    ///   `http/protobuf` (default) or `grpc`;
    /// - `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, then `OTEL_EXPORTER_OTLP_TIMEOUT`: ms, default 10000;
    /// - `OTEL_SERVICE_NAME` (default `rbuild`), `OTEL_RESOURCE_ATTRIBUTES`;
    /// - `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS` are read by the exporter itself at export.
    pub fn from_env() -> Result<Option<Config>, TraceError> {
        let protocol = match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(p) => Protocol::parse(&p)?,
            None => Protocol::default(),
        };
        let endpoint = if let Some(url) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            url
        } else if let Some(base) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            signal_url(&base, protocol)
        } else {
            return Ok(None);
        };
        let timeout = env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_TIMEOUT"))
            .and_then(|ms| ms.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_TIMEOUT);
        let mut resource_attributes: Vec<(String, String)> = EnvResourceDetector::new()
            .detect()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let from_attributes = resource_attributes
            .iter()
            .position(|(k, _)| k == "service.name")
            .map(|i| resource_attributes.remove(i).1);
        let service_name = env("OTEL_SERVICE_NAME")
            .or(from_attributes)
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
        Ok(Some(Config {
            endpoint,
            protocol,
            headers: Vec::new(),
            service_name,
            resource_attributes,
            timeout,
        }))
    }
}

/// A non-empty environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The URL for the traces signal from a base URL (the OTLP exporter spec:
/// `<base>/v1/traces` for http, the base itself for grpc).
fn signal_url(base: &str, protocol: Protocol) -> String {
    let base = base.trim();
    match protocol {
        Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        Protocol::Grpc => base.to_string(),
    }
}

/// Exports one trace of `run` when `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `Ok(false)` when neither is
/// (nothing done). See [`Config::from_env`] and [`export_to`].
pub async fn export(run: &RunTrace) -> Result<bool, TraceError> {
    match Config::from_env()? {
        None => Ok(false),
        Some(config) => export_to(run, &config).await.map(|()| true),
    }
}

/// Exports one trace of `run` as `config` says. Returns once the collector
/// has answered (or with [`TraceError::Timeout`] after `config.timeout`).
/// Needs a tokio runtime (with time and io), multi- or current-thread.
pub async fn export_to(run: &RunTrace, config: &Config) -> Result<(), TraceError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(TraceError::NoRuntime);
    }
    let resource = resource(run, config);
    let spans = record(run, &resource)?;
    let mut exporter = exporter(config)?;
    exporter.set_resource(&resource);
    let result = tokio::time::timeout(config.timeout, exporter.export(spans)).await;
    // The exporter keeps nothing to flush (it was handed the one batch).
    let _ = exporter.shutdown_with_timeout(Duration::from_secs(1));
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(TraceError::Export {
            endpoint: config.endpoint.clone(),
            message: error.to_string(),
        }),
        Err(_) => Err(TraceError::Timeout {
            endpoint: config.endpoint.clone(),
            timeout: config.timeout,
        }),
    }
}

fn resource(run: &RunTrace, config: &Config) -> Resource {
    let mut builder = Resource::builder_empty()
        .with_detector(Box::new(
            opentelemetry_sdk::resource::TelemetryResourceDetector,
        ))
        .with_attributes(
            config
                .resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        );
    if !run.rbuild_version.is_empty() {
        builder =
            builder.with_attribute(KeyValue::new("service.version", run.rbuild_version.clone()));
    }
    builder
        .with_service_name(config.service_name.clone())
        .build()
}

fn exporter(config: &Config) -> Result<opentelemetry_otlp::SpanExporter, TraceError> {
    let built = match config.protocol {
        Protocol::HttpProtobuf => {
            let headers: HashMap<String, String> = config.headers.iter().cloned().collect();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.timeout)
                .with_headers(headers)
                .build()
        }
        Protocol::Grpc => {
            use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
            let mut metadata = MetadataMap::new();
            for (k, v) in &config.headers {
                let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|e| TraceError::Config(format!("header name {k:?}: {e}")))?;
                let value = MetadataValue::try_from(v.as_str())
                    .map_err(|e| TraceError::Config(format!("header {k} value: {e}")))?;
                metadata.insert(key, value);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.timeout)
                .with_metadata(metadata)
                .build()
        }
    };
    built.map_err(|e| TraceError::Config(e.to_string()))
}

/// Collects the finished spans of the per-export tracer provider in memory,
/// so that they are exported in one batch by [`export_to`] on the caller's
/// runtime (the SDK's own processors would block a runtime thread or need a
/// background one).
#[derive(Debug, Default, Clone)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanProcessor for Collect {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}
    fn on_end(&self, span: SpanData) {
        if let Ok(mut spans) = self.0.lock() {
            spans.push(span);
        }
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Records the run's spans with their real times.
fn record(run: &RunTrace, resource: &Resource) -> Result<Vec<SpanData>, TraceError> {
    let collect = Collect::default();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(collect.clone())
        .with_resource(resource.clone())
        .build();
    let tracer = provider.tracer_with_scope(
        InstrumentationScope::builder("rbuild")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    );
    let at = |offset: Duration| run.started.checked_add(offset).unwrap_or(run.started);

    let file = Path::new(&run.pipeline)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| run.pipeline.clone());
    let mut attributes = vec![
        KeyValue::new("rbuild.run.id", run.run_id),
        KeyValue::new("rbuild.pipeline", run.pipeline.clone()),
        KeyValue::new("rbuild.exit_code", i64::from(run.exit_code)),
        KeyValue::new("rbuild.version", run.rbuild_version.clone()),
    ];
    attributes.extend(
        run.attributes
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    let mut root = tracer
        .span_builder(format!("rbuild run {file}"))
        .with_kind(SpanKind::Internal)
        .with_start_time(run.started)
        .with_attributes(attributes)
        .start_with_context(&tracer, &Context::new());
    if run.exit_code != 0 {
        root.set_status(Status::error(format!("exit code {}", run.exit_code)));
    }
    let root_cx = Context::new().with_span(root);

    // Steps in their order, each under its parent step when that one was
    // already started, else under the root.
    let mut started: Vec<(u64, Context, Duration)> = Vec::with_capacity(run.steps.len());
    for step in &run.steps {
        let parent = step
            .parent_no
            .and_then(|p| started.iter().find(|(no, _, _)| *no == p))
            .map(|(_, cx, _)| cx)
            .unwrap_or(&root_cx);
        let mut attributes = vec![
            KeyValue::new("rbuild.step.no", step.no as i64),
            KeyValue::new("rbuild.step.kind", step.kind.clone()),
            KeyValue::new("rbuild.cache.status", step.status.clone()),
            KeyValue::new(
                "rbuild.step.queued_ms",
                step.start.saturating_sub(step.queued).as_millis() as i64,
            ),
        ];
        for (key, value) in [
            ("rbuild.cache.key", &step.key),
            ("rbuild.miss.reason", &step.reason),
            ("rbuild.step.at", &step.at),
        ] {
            if !value.is_empty() {
                attributes.push(KeyValue::new(key, value.clone()));
            }
        }
        let mut span = tracer
            .span_builder(step.name.clone())
            .with_kind(SpanKind::Internal)
            .with_start_time(at(step.start))
            .with_attributes(attributes)
            .start_with_context(&tracer, parent);
        if step.status == "failed" {
            span.set_status(Status::error("step failed"));
        }
        let cx = parent.with_span(span);
        for (name, start, end) in &step.phases {
            let mut phase = tracer
                .span_builder(name.clone())
                .with_kind(SpanKind::Internal)
                .with_start_time(at(*start))
                .with_attributes([KeyValue::new("rbuild.step.no", step.no as i64)])
                .start_with_context(&tracer, &cx);
            phase.end_with_timestamp(at(*end));
        }
        started.push((step.no, cx, step.end));
    }
    for (_, cx, end) in started.iter().rev() {
        cx.span().end_with_timestamp(at(*end));
    }
    drop(started);
    root_cx.span().end_with_timestamp(at(run.wall));
    drop(root_cx);

    provider
        .shutdown()
        .map_err(|e| TraceError::Config(format!("tracer provider: {e}")))?;
    let spans = std::mem::take(&mut *collect.0.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_urls() {
        let http = Protocol::HttpProtobuf;
        assert_eq!(signal_url("http://c:4318", http), "http://c:4318/v1/traces");
        assert_eq!(
            signal_url("http://c:4318/", http),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            signal_url("https://c/otlp", http),
            "https://c/otlp/v1/traces"
        );
        assert_eq!(signal_url("http://c:4317", Protocol::Grpc), "http://c:4317");
    }

    #[test]
    fn protocols() {
        assert_eq!(Protocol::parse("grpc").unwrap(), Protocol::Grpc);
        assert_eq!(
            Protocol::parse(" http/protobuf ").unwrap(),
            Protocol::HttpProtobuf
        );
        assert!(matches!(
            Protocol::parse("http/json"),
            Err(TraceError::Config(_))
        ));
        assert!(matches!(Protocol::parse("udp"), Err(TraceError::Config(_))));
    }
}
