//! Exporting the loop's spans ([`mapek_bus::trace`]) over OTLP/HTTP, when asked to.
//!
//! The standard OpenTelemetry variables decide: with `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, a process that runs workers installs a tracer
//! provider that batches spans to that collector (protobuf over HTTP; `/v1/traces` is appended
//! to the general endpoint). `OTEL_SERVICE_NAME` names the service (default `mapek`); the
//! exporter's other variables (`OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`, …) apply as usual.
//! An `https://` endpoint is reached over rustls, trusting the system's roots and the CA in
//! `OTEL_EXPORTER_OTLP_CERTIFICATE`, with a client certificate for mutual TLS if given.
//! Without them nothing is installed, and recording a span costs next to nothing; nor with
//! `OTEL_SDK_DISABLED=true`, the standard switch that turns the export off whatever else is
//! set.

use anyhow::Context as _;
use opentelemetry::global;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_otlp::WithHttpConfig as _;
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
    let Some(endpoint) = var(&ENDPOINTS) else {
        return Ok(None);
    };
    if var(&["OTEL_SDK_DISABLED"]).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        eprintln!("mapek: OTEL_SDK_DISABLED=true: no spans to {endpoint}");
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(
            http_client().with_context(|| format!("cannot export spans to {endpoint}"))?,
        )
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

/// The first of `names` set in the environment, not empty.
fn var(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// The exporter's HTTP client: rustls (ring) over the system's roots, plus the CA in
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`, with the client certificate and key in
/// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `_CLIENT_KEY` for mutual TLS (each also as
/// `OTEL_EXPORTER_OTLP_TRACES_…`).
fn http_client() -> anyhow::Result<reqwest::blocking::Client> {
    // Another part may have installed it first; either way ring is the provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::blocking::Client::builder();
    let read = |path: &str, what: &str| {
        std::fs::read(path).with_context(|| format!("cannot read the {what} {path}"))
    };
    if let Some(ca) = var(&[
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    ]) {
        let certs = reqwest::Certificate::from_pem_bundle(&read(&ca, "collector's CA")?)
            .ok()
            .filter(|certs| !certs.is_empty())
            .with_context(|| format!("{ca} holds no PEM certificate"))?;
        builder = builder.tls_certs_merge(certs);
    }
    let cert = var(&[
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    ]);
    let key = var(&[
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    ]);
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let mut pem = read(&cert, "client certificate")?;
            pem.extend(read(&key, "client key")?);
            let identity = reqwest::Identity::from_pem(&pem)
                .with_context(|| format!("{cert} and {key} are not a certificate and its key"))?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => anyhow::bail!(
            "set both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY, \
             or neither"
        ),
    }
    // The blocking client runs a runtime of its own: build it off this one's threads.
    std::thread::spawn(move || builder.build())
        .join()
        .map_err(|_| anyhow::anyhow!("building the HTTP client panicked"))?
        .context("cannot build the HTTP client")
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
