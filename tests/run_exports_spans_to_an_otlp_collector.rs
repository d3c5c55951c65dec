//! An SRE with an OpenTelemetry collector names it in `OTEL_EXPORTER_OTLP_ENDPOINT` and finds
//! each incident's work in it: `mapek run` exports the span of every symptom, decision and
//! action result it publishes, with the ids their `traceparent` headers carry, each under its
//! cause's span (an agent's telemetry span when the agent traced it).

mod agent;
mod common;
mod traced;

use std::time::Duration;

use traced::{AGENT_TRACE, contexts, publish_lossy_telemetry};

/// An OTLP/HTTP collector on a free port: it takes `POST /v1/traces` (protobuf), answers 200
/// and keeps every span with its service's name.
async fn collector() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>>>,
) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = spans.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut socket = BufReader::new(socket);
                loop {
                    let (mut path, mut length) = (String::new(), 0);
                    let mut line = String::new();
                    if socket.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    path.push_str(line.split(' ').nth(1).unwrap_or(""));
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
            });
        }
    });
    (url, spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapek_run_exports_the_incidents_spans_to_an_otlp_collector() {
    let (server, js, _client) = agent::setup().await;
    agent::start_agent(&server.url()).await;
    let (endpoint, spans) = collector().await;
    let data = tempfile::tempdir().unwrap();
    let child = common::mapek(&server.url())
        .args(["run", "--metrics-addr", "off", "--worker", "traced"])
        .env("MAPEK_DATA_DIR", data.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_SERVICE_NAME", "mapek-under-test")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start mapek run");
    publish_lossy_telemetry(&js).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let results = loop {
        let results = contexts(&js, "MAPEK_EXECUTE").await;
        if results.len() >= 2 {
            break results;
        }
        assert!(tokio::time::Instant::now() < deadline, "{results:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let err = common::interrupt(child); // sends what is still batched
    assert!(err.contains(&format!("spans to {endpoint}")), "{err}");
    let decisions = contexts(&js, "MAPEK_PLAN").await;
    let symptoms = contexts(&js, "MAPEK_ANALYZE").await;
    let spans = spans.lock().unwrap().clone();

    // Each stored symptom and decision is a span the collector got: the ids its
    // traceparent carries, named after the phase that made it, under its cause's span.
    let span_of = |traceparent: &str| {
        let mut ids = traceparent.split('-').skip(1);
        let (trace, span) = (ids.next().unwrap(), ids.next().unwrap());
        spans
            .iter()
            .find(|(_, s)| hex(&s.trace_id) == trace && hex(&s.span_id) == span)
            .unwrap_or_else(|| panic!("no span {traceparent} among {} exported", spans.len()))
    };
    for node in ["n1", "n2"] {
        let of = |events: &[(String, String, String)]| {
            events
                .iter()
                .find(|(n, _, _)| n == node)
                .map(|(_, tp, _)| tp.clone())
                .unwrap()
        };
        let (symptom, decision, result) = (of(&symptoms), of(&decisions), of(&results));
        let (service, s) = span_of(&symptom);
        let (_, d) = span_of(&decision);
        let (_, r) = span_of(&result);
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
async fn a_collector_that_is_down_costs_the_spans_not_the_loop() {
    let (server, js, _client) = agent::setup().await;
    let nobody = format!("http://127.0.0.1:{}", mapek_testkit::nats::free_port());
    let data = tempfile::tempdir().unwrap();
    let child = common::mapek(&server.url())
        .args(["run", "--metrics-addr", "off", "--worker", "untraced"])
        .env("MAPEK_DATA_DIR", data.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &nobody)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start mapek run");
    publish_lossy_telemetry(&js).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while contexts(&js, "MAPEK_PLAN").await.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no decisions");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopping = std::time::Instant::now();
    let err = common::interrupt(child); // exits successfully
    assert!(err.contains(&format!("spans to {nobody}")), "{err}");
    assert!(
        stopping.elapsed() < Duration::from_secs(30),
        "stopping took {:?}",
        stopping.elapsed()
    );
}
