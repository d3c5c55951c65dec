//! An SRE whose agents trace their telemetry (W3C `traceparent`) finds the symptom and the
//! decision it caused in the same trace, each a span of its own; telemetry without a trace
//! still gets one trace per incident from analyze on.

mod agent;
mod traced;

use std::time::Duration;

use mapek_domain::Policy;
use mapek_loop::plan::PlanStage;
use mapek_loop::{StageConfig, run_stage};

use traced::{AGENT_TRACE, contexts, publish_lossy_telemetry, trace_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symptoms_and_decisions_stay_in_the_telemetrys_trace() {
    let (_server, js, _client) = agent::setup().await;
    publish_lossy_telemetry(&js).await;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut plan_config = StageConfig::new("plan", None);
    plan_config.fetch_wait = Duration::from_millis(100);
    let analyze = agent::analyze_by_partition(&js, &stopped);
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
    for worker in analyze {
        worker.await.unwrap().unwrap();
    }
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
