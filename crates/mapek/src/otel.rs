//! Exporting the loop's spans ([`mapek_bus::trace`]) over OTLP/HTTP, when asked to.
//!
//! The standard OpenTelemetry variables decide: with `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, a process that runs workers installs a tracer
//! provider that batches spans to that collector (protobuf over HTTP; `/v1/traces` is appended
//! to the general endpoint). `OTEL_SERVICE_NAME` names the service (default `mapek`); the
//! exporter's other variables (`OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`, …) apply as usual.
//! Plain HTTP only: the exporter's HTTP client is built without TLS (docs/operations.md).
//! Without them nothing is installed, and recording a span costs next to nothing.

use anyhow::Context as _;
use opentelemetry::global;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};

/// The variables that name a collector.
const ENDPOINTS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// The installed exporter; [`Spans::shutdown`] sends what is still batched.
pub struct Spans {
    provider: SdkTracerProvider,
    endpoint: String,
}

/// Installs the OTLP span exporter if a collector is named; returns it to shut down at exit.
pub fn install() -> anyhow::Result<Option<Spans>> {
    let Some(endpoint) = ENDPOINTS
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .with_context(|| format!("cannot export spans to {endpoint}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "mapek".to_owned());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(CarriedIds::default())
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    global::set_tracer_provider(provider.clone());
    eprintln!("mapek: spans to {endpoint} (OTLP over HTTP)");
    Ok(Some(Spans { provider, endpoint }))
}

impl Spans {
    /// Sends the spans still batched and stops the exporter. Its last send blocks (up to the
    /// exporter's timeout), so it runs off the runtime's threads.
    pub async fn shutdown(self) {
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = self.provider.shutdown() {
                eprintln!("warning: spans not all exported to {}: {e}", self.endpoint);
            }
        })
        .await;
    }
}

/// Gives a loop span the ids its event's `traceparent` carries, any other span random ones.
#[derive(Debug, Default)]
struct CarriedIds(RandomIdGenerator);

impl IdGenerator for CarriedIds {
    fn new_trace_id(&self) -> TraceId {
        mapek_bus::trace::carried_ids().map_or_else(|| self.0.new_trace_id(), |(trace, _)| trace)
    }

    fn new_span_id(&self) -> SpanId {
        mapek_bus::trace::carried_ids().map_or_else(|| self.0.new_span_id(), |(_, span)| span)
    }
}
