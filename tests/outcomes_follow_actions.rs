//! After an action is applied, the evaluate worker judges it: resolved, with the recovery
//! time, when its incident resolves within the window; not resolved when event time passes
//! the window first.

mod agent;

use std::collections::BTreeMap;

use agent::{Running, T0, decision, publish, quick, setup, start_agent, wait_for};
use mapek_domain::ActionKind::Reroute;
use mapek_domain::execute::outcome_id;
use mapek_domain::{
    ActionResult, ExecuteConfig, NodeId, Outcome, OutcomeResult, Symptom, SymptomKind, SymptomState,
};
use mapek_loop::{evaluate, execute};

/// A symptom of `node`'s incident `i-<node>` in `state`, `secs` seconds after T0.
fn symptom(node: &str, state: SymptomState, secs: i64) -> Symptom {
    Symptom {
        symptom_id: format!("s-{node}-{}-{secs}", state.as_str()),
        incident_id: format!("i-{node}"),
        node: NodeId::new(node).unwrap(),
        ts_ms: T0 + secs * 1000,
        kind: SymptomKind::HighLatency,
        state,
        severity: 2.0,
        peer: None,
        evidence: BTreeMap::new(),
        summary: "slow".into(),
        caused_by: format!("t-{secs}"),
    }
}

/// The agent, the executor and the evaluator, all running.
struct Loop {
    executor: Running<Result<execute::ExecuteStats, mapek_bus::BusError>>,
    evaluator: Running<Result<evaluate::EvaluateStats, mapek_bus::BusError>>,
}

async fn start(
    js: &mapek_bus::JetStream,
    client: &async_nats::Client,
    config: ExecuteConfig,
) -> Loop {
    let executor = {
        let (js, client, config) = (js.clone(), client.clone(), config.clone());
        Running::start(move |shutdown| execute::run(js, client, config, shutdown))
    };
    let evaluator = {
        let js = js.clone();
        Running::start(move |shutdown| evaluate::run(js, config, shutdown))
    };
    Loop {
        executor,
        evaluator,
    }
}

impl Loop {
    async fn stop(self) -> evaluate::EvaluateStats {
        self.executor.stop().await.unwrap();
        self.evaluator.stop().await.unwrap()
    }
}

#[tokio::test]
async fn a_resolve_after_the_action_is_a_resolved_outcome_with_the_recovery_time() {
    let (server, js, client) = setup().await;
    start_agent(&server.url()).await;
    let running = start(&js, &client, quick()).await;
    publish(&js, &[symptom("n1", SymptomState::Open, 0)]).await;
    publish(&js, &[decision("a", "n1", Reroute, 2)]).await;
    wait_for::<ActionResult>(&js, 1).await;
    publish(&js, &[symptom("n1", SymptomState::Resolve, 12)]).await;
    let outcomes: Vec<Outcome> = wait_for(&js, 1).await;
    let stats = running.stop().await;

    let o = &outcomes[0];
    assert_eq!(o.outcome_id, outcome_id("d-a"));
    assert_eq!(
        (o.decision_id.as_str(), o.incident_id.as_str()),
        ("d-a", "i-n1")
    );
    assert_eq!(o.result, OutcomeResult::Resolved);
    assert_eq!(o.recovery_ms, Some(12_000));
    assert_eq!(o.ts_ms, T0 + 12_000);
    assert_eq!((stats.resolved, stats.not_resolved), (1, 0));
}

#[tokio::test]
async fn no_resolve_within_the_window_is_a_not_resolved_outcome() {
    let (server, js, client) = setup().await;
    start_agent(&server.url()).await;
    let config = ExecuteConfig {
        evaluate_window_ms: 5_000,
        ..quick()
    };
    let running = start(&js, &client, config).await;
    publish(&js, &[symptom("n2", SymptomState::Open, 0)]).await;
    publish(&js, &[decision("b", "n2", Reroute, 1)]).await;
    wait_for::<ActionResult>(&js, 1).await;
    // Another node's symptoms move event time on past the window; n2 never resolves.
    publish(
        &js,
        &[
            symptom("n3", SymptomState::Open, 4),
            symptom("n3", SymptomState::Update, 10),
        ],
    )
    .await;
    let outcomes: Vec<Outcome> = wait_for(&js, 1).await;
    let stats = running.stop().await;

    assert_eq!(outcomes.len(), 1);
    let o = &outcomes[0];
    assert_eq!(
        (o.decision_id.as_str(), o.result),
        ("d-b", OutcomeResult::NotResolved)
    );
    assert_eq!(o.ts_ms, T0 + 6_000, "judged at the window's end");
    assert_eq!(o.recovery_ms, None);
    assert_eq!((stats.resolved, stats.not_resolved), (0, 1));
}
