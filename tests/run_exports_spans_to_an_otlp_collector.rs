//! An SRE with an OpenTelemetry collector names it in `OTEL_EXPORTER_OTLP_ENDPOINT` and finds
//! each incident's work in it: `mapek run` exports the span of every symptom, decision and
//! action result it publishes, with the ids their `traceparent` headers carry, each under its
//! cause's span (an agent's telemetry span when the agent traced it).

mod agent;
mod common;
mod traced;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use traced::{AGENT_TRACE, contexts, publish_lossy_telemetry};

/// The spans a collector received, each with its resource's `service.name`.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP collector on a free port: it takes `POST /v1/traces` (protobuf), answers 200
/// and keeps every span. With `certs` (deploy/certs/gen.sh's), it speaks TLS as `localhost`.
async fn collector(certs: Option<&Path>) -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = certs.map(|dir| {
        let pem = |f: &str| std::fs::read(dir.join(f)).unwrap();
        let chain = CertificateDer::pem_slice_iter(&pem("server.pem"))
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(&pem("server-key.pem")).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    let url = match tls {
        Some(_) => format!("https://localhost:{port}"),
        None => format!("http://127.0.0.1:{port}"),
    };
    let spans = Received::default();
    let kept = spans.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (kept, tls) = (kept.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    Some(tls) => {
                        if let Ok(socket) = tls.accept(socket).await {
                            take_exports(socket, kept).await;
                        }
                    }
                    None => take_exports(socket, kept).await,
                }
            });
        }
    });
    (url, spans)
}

/// Serves one connection's export requests (HTTP/1.1, kept alive).
async fn take_exports(socket: impl AsyncRead + AsyncWrite + Unpin, kept: Received) {
    let mut socket = BufReader::new(socket);
    loop {
        let mut line = String::new();
        if socket.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
        let mut length = 0;
        loop {
            line.clear();
            socket.read_line(&mut line).await.unwrap();
            let header = line.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(v) = header.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        socket.read_exact(&mut body).await.unwrap();
        assert_eq!(path, "/v1/traces");
        let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    kept.lock().unwrap().push((service.clone(), span));
                }
            }
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
    }
}

/// Runs `mapek run` (every phase) with `env`, publishes the two nodes' lossy telemetry, waits
/// until `stream` holds an event for each, and stops it as Ctrl-C would. Returns what it wrote
/// to stderr.
async fn run_through_incidents(
    server: &mapek_testkit::NatsServer,
    js: &mapek_bus::JetStream,
    env: &[(&str, &str)],
    stream: &str,
) -> String {
    let data = tempfile::tempdir().unwrap();
    let child = common::mapek(&server.url())
        .args(["run", "--metrics-addr", "off"])
        .env("MAPEK_DATA_DIR", data.path())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mapek run");
    publish_lossy_telemetry(js).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stored = contexts(js, stream).await;
        if stored.len() >= 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stored:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::interrupt(child) // sends what is still batched
}

/// The span with the ids `traceparent` carries, among `spans`.
fn span_of<'a>(spans: &'a [(String, Span)], traceparent: &str) -> &'a (String, Span) {
    let mut ids = traceparent.split('-').skip(1);
    let (trace, span) = (ids.next().unwrap(), ids.next().unwrap());
    spans
        .iter()
        .find(|(_, s)| hex(&s.trace_id) == trace && hex(&s.span_id) == span)
        .unwrap_or_else(|| panic!("no span {traceparent} among {} exported", spans.len()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapek_run_exports_the_incidents_spans_to_an_otlp_collector() {
    let (server, js, _client) = agent::setup().await;
    agent::start_agent(&server.url()).await;
    let (endpoint, spans) = collector(None).await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "mapek-under-test"),
    ];
    let err = run_through_incidents(&server, &js, &env, "MAPEK_EXECUTE").await;
    assert!(err.contains(&format!("spans to {endpoint}")), "{err}");
    let results = contexts(&js, "MAPEK_EXECUTE").await;
    let decisions = contexts(&js, "MAPEK_PLAN").await;
    let symptoms = contexts(&js, "MAPEK_ANALYZE").await;
    let spans = spans.lock().unwrap().clone();

    // Each stored symptom, decision and result is a span the collector got: the ids its
    // traceparent carries, named after the phase that made it, under its cause's span.
    for node in ["n1", "n2"] {
        let of = |events: &[(String, String, String)]| {
            events
                .iter()
                .find(|(n, _, _)| n == node)
                .map(|(_, tp, _)| tp.clone())
                .unwrap()
        };
        let (symptom, decision, result) = (of(&symptoms), of(&decisions), of(&results));
        let (service, s) = span_of(&spans, &symptom);
        let (_, d) = span_of(&spans, &decision);
        let (_, r) = span_of(&spans, &result);
        assert!(service.contains("mapek-under-test"), "{service}");
        assert_eq!(
            (s.name.as_str(), d.name.as_str(), r.name.as_str()),
            ("mapek.analyze", "mapek.plan", "mapek.execute")
        );
        assert_eq!(
            hex(&r.parent_span_id),
            hex(&d.span_id),
            "the result's parent"
        );
        assert_eq!(
            hex(&d.parent_span_id),
            hex(&s.span_id),
            "the decision's parent"
        );
        let node_attribute = s
            .attributes
            .iter()
            .find(|a| a.key == "mapek.node")
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{:?}", v.value));
        assert!(node_attribute.unwrap_or_default().contains(node));
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
        if node == "n1" {
            // Under the agent's own span: the telemetry sample that tipped the detector.
            assert_eq!(hex(&s.trace_id), AGENT_TRACE);
            assert!(
                hex(&s.parent_span_id).starts_with("00f067aa0ba902"),
                "{s:?}"
            );
        } else {
            assert!(
                s.parent_span_id.is_empty(),
                "n2's incident starts its own trace"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_sdk_disabled_turns_the_export_off() {
    let (server, js, _client) = agent::setup().await;
    agent::start_agent(&server.url()).await;
    let (endpoint, spans) = collector(None).await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SDK_DISABLED", "TRUE"),
    ];
    let err = run_through_incidents(&server, &js, &env, "MAPEK_EXECUTE").await;
    assert!(
        err.contains(&format!("OTEL_SDK_DISABLED=true: no spans to {endpoint}")),
        "{err}"
    );
    // The loop ran through both incidents, and nothing reached the collector.
    assert!(!contexts(&js, "MAPEK_EXECUTE").await.is_empty());
    assert!(spans.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_the_spans_not_the_loop() {
    let (server, js, _client) = agent::setup().await;
    let nobody = format!("http://127.0.0.1:{}", mapek_testkit::nats::free_port());
    let stopping = std::time::Instant::now();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", nobody.as_str())];
    let err = run_through_incidents(&server, &js, &env, "MAPEK_PLAN").await; // ends well
    assert!(err.contains(&format!("spans to {nobody}")), "{err}");
    assert!(
        stopping.elapsed() < Duration::from_secs(60),
        "the loop and its stop took {:?}",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_collector_over_tls_that_trusts_the_given_ca() {
    let (server, js, _client) = agent::setup().await;
    let certs = tempfile::tempdir().unwrap();
    common::secure::certificates(certs.path());
    let (endpoint, spans) = collector(Some(certs.path())).await;
    let ca = certs.path().join("ca.pem");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.to_str().unwrap()),
    ];
    let err = run_through_incidents(&server, &js, &env, "MAPEK_PLAN").await;
    assert!(err.contains(&format!("spans to {endpoint}")), "{err}");
    let spans = spans.lock().unwrap().clone();
    for (_, traceparent, _) in contexts(&js, "MAPEK_PLAN").await {
        let (service, span) = span_of(&spans, &traceparent);
        assert_eq!(span.name, "mapek.plan");
        assert!(
            service.contains("\"mapek\""),
            "the default service name: {service}"
        );
    }

    // Without the CA, the collector's certificate is not trusted: the loop goes on, the
    // spans do not arrive.
    let (endpoint, spans) = collector(Some(certs.path())).await;
    let (server, js, _client) = agent::setup().await;
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    run_through_incidents(&server, &js, &env, "MAPEK_PLAN").await;
    assert!(
        spans.lock().unwrap().is_empty(),
        "exported to an untrusted collector"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tls_setting_for_the_collector_stops_mapek_run_with_what_is_wrong() {
    let (server, _js, _client) = agent::setup().await;
    let not_pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_pem.path(), "not a certificate\n").unwrap();
    let not_pem = not_pem.path().to_str().unwrap().to_owned();
    let cases = [
        (
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
            "cannot read the collector's CA /nonexistent/ca.pem",
        ),
        (
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", not_pem.as_str()),
            "holds no PEM certificate",
        ),
        (
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", not_pem.as_str()),
            "set both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY",
        ),
    ];
    for ((name, value), expected) in cases {
        let mut cmd = common::mapek(&server.url());
        cmd.args(["run", "--phase", "analyze", "--metrics-addr", "off"])
            .args(["--duration", "30s"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://localhost:4318")
            .env(name, value);
        let out = common::run(cmd);
        let err = common::stderr(&out);
        assert!(!out.status.success(), "{name}={value}: {err}");
        assert!(err.contains(expected), "{name}={value}: {err}");
    }
}
