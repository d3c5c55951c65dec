//! An SRE whose agents trace their telemetry (W3C `traceparent`) finds the symptom and the
//! decision it caused in the same trace, each a span of its own; telemetry without a trace
//! still gets one trace per incident from analyze on.

mod agent;

use std::collections::BTreeMap;
use std::time::Duration;

use mapek_bus::{JetStream, Publisher, headers};
use mapek_codec::encode;
use mapek_domain::{AnalyzeConfig, Analyzer, NodeId, Phase, Policy, Telemetry};
use mapek_loop::plan::PlanStage;
use mapek_loop::{StageConfig, run_stage};

use agent::T0;
const AGENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// n1 (traced by its agent) and n2 (not traced) each lose 30 % of their packets for 10 s.
async fn publish_lossy_telemetry(js: &JetStream) {
    let mut publisher = Publisher::new(js.clone());
    for i in 0..10 {
        for node in ["n1", "n2"] {
            let metrics =
                BTreeMap::from([("loss".to_owned(), 0.3), ("latency_ms".to_owned(), 10.0)]);
            let t = Telemetry::new(NodeId::new(node).unwrap(), T0 + i * 1000, metrics);
            let mut h = headers::for_event(&t, "Telemetry/2");
            if node == "n1" {
                h.insert(
                    headers::TRACEPARENT,
                    format!("00-{AGENT_TRACE}-00f067aa0ba902{i:02x}-01").as_str(),
                );
                h.insert(headers::TRACESTATE, "vendor=agent");
            }
            let subject = Phase::Monitor.subject(&t.node);
            publisher
                .publish_raw(subject, h, encode(&t).unwrap().into(), &t.event_id)
                .await
                .unwrap();
        }
    }
    assert!(publisher.finish().await.all_acked());
}

/// The traceparent and tracestate of every message in `stream`, by node (the subject's last
/// token), in stream order.
async fn contexts(js: &JetStream, stream: &str) -> Vec<(String, String, String)> {
    let stream = js.get_stream(stream).await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = stream.direct_get(seq).await.unwrap();
        let node = m.subject.rsplit('.').next().unwrap().to_owned();
        let get = |name: &str| {
            m.headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        out.push((node, get(headers::TRACEPARENT), get(headers::TRACESTATE)));
    }
    out
}

fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symptoms_and_decisions_stay_in_the_telemetrys_trace() {
    let (_server, js, _client) = agent::setup().await;
    publish_lossy_telemetry(&js).await;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut analyze_config = StageConfig::new("analyze", None);
    analyze_config.fetch_wait = Duration::from_millis(100);
    let mut plan_config = StageConfig::new("plan", None);
    plan_config.fetch_wait = Duration::from_millis(100);
    let analyze = tokio::spawn(run_stage(
        js.clone(),
        Analyzer::new(AnalyzeConfig::default()),
        analyze_config,
        wait(stopped.clone()),
    ));
    let plan = tokio::spawn(run_stage(
        js.clone(),
        PlanStage::without_knowledge(Policy::builtin()),
        plan_config,
        wait(stopped.clone()),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let decisions = loop {
        let decisions = contexts(&js, "MAPEK_PLAN").await;
        if decisions.len() >= 2 {
            break decisions;
        }
        assert!(tokio::time::Instant::now() < deadline, "{decisions:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = stop.send(true);
    analyze.await.unwrap().unwrap();
    plan.await.unwrap().unwrap();

    let symptoms = contexts(&js, "MAPEK_ANALYZE").await;
    let of = |events: &[(String, String, String)], node: &str| {
        events
            .iter()
            .find(|(n, _, _)| n == node)
            .cloned()
            .unwrap_or_else(|| panic!("no event for {node} in {events:?}"))
    };
    // n1: the agent's trace, carried through, with its vendor state.
    let (_, s1, s1_state) = of(&symptoms, "n1");
    let (_, d1, d1_state) = of(&decisions, "n1");
    assert_eq!(trace_id(&s1), AGENT_TRACE, "{s1}");
    assert_eq!(trace_id(&d1), AGENT_TRACE, "{d1}");
    assert_ne!(s1, d1, "each event is a span of its own");
    assert_eq!(
        (s1_state.as_str(), d1_state.as_str()),
        ("vendor=agent", "vendor=agent")
    );
    // n2: no trace upstream; one trace for its incident from the symptom on.
    let (_, s2, _) = of(&symptoms, "n2");
    let (_, d2, _) = of(&decisions, "n2");
    assert_eq!(trace_id(&s2).len(), 32);
    assert_eq!(trace_id(&s2), trace_id(&d2));
    assert_ne!(trace_id(&s2), AGENT_TRACE);
}
