//! With the approval gate on, an action waits until a human approves its decision
//! (`mapek approve <decision>`), then is sent; actions that need no approval go on meanwhile.

mod agent;

use std::time::Duration;

use agent::{
    Received, Running, decision, publish, quick, setup, start_agent, stored, wait_caught_up,
    wait_for,
};
use mapek_bus::{BusError, JetStream};
use mapek_domain::ActionKind::{RateLimit, Reroute};
use mapek_domain::execute::Approval;
use mapek_domain::{ActionResult, ActionStatus, ExecuteConfig, Rejected};
use mapek_loop::execute::{self, ExecuteStats};
use mapek_testkit::NatsServer;

/// A server, an agent for every node, and an executor for which rate limits need approval.
async fn rate_limits_need_approval() -> (
    NatsServer,
    JetStream,
    Received,
    Running<Result<ExecuteStats, BusError>>,
) {
    let (server, js, client) = setup().await;
    let received = start_agent(&server.url()).await;
    let config = ExecuteConfig {
        require_approval: Approval::Kinds([RateLimit].into()),
        ..quick()
    };
    let worker = {
        let (js, client) = (js.clone(), client.clone());
        Running::start(move |shutdown| execute::run(js, client, config, shutdown))
    };
    (server, js, received, worker)
}

#[tokio::test]
async fn an_action_waits_for_approval_then_is_applied() {
    let (_server, js, received, worker) = rate_limits_need_approval().await;
    // d-a needs approval; d-b, after it in the stream, does not.
    publish(
        &js,
        &[
            decision("a", "n1", RateLimit, 0),
            decision("b", "n2", Reroute, 1),
        ],
    )
    .await;
    let first: Vec<ActionResult> = wait_for(&js, 1).await;
    assert_eq!(first[0].decision_id, "d-b", "d-b does not wait behind d-a");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        stored::<ActionResult>(&js).await.len(),
        1,
        "d-a still waits"
    );
    assert!(!received.lock().unwrap().iter().any(|(_, d)| d == "d-a"));

    execute::approve(&js, "d-a", "alice").await.unwrap();
    let results: Vec<ActionResult> = wait_for(&js, 2).await;
    wait_caught_up(&js, "MAPEK_PLAN", execute::DURABLE).await;
    let stats = worker.stop().await.unwrap();

    let a = &results[1];
    assert_eq!(
        (a.decision_id.as_str(), a.status),
        ("d-a", ActionStatus::Applied)
    );
    assert_eq!(a.attempts, 1);
    assert!(
        received
            .lock()
            .unwrap()
            .contains(&("n1".into(), "d-a".into()))
    );
    assert!(
        stats.held >= 3,
        "d-a was looked at again while it waited: {stats:?}"
    );
    assert_eq!(stats.applied, 2);
}

#[tokio::test]
async fn approving_something_that_is_not_a_decision_id_is_an_error() {
    let (_server, js, _client) = setup().await;
    let err = execute::approve(&js, "d a/b", "alice").await.unwrap_err();
    assert!(err.to_string().contains("invalid decision id"), "{err}");
}

#[tokio::test]
async fn a_decision_whose_approval_cannot_be_looked_up_is_dead_lettered_and_the_next_goes_on() {
    let (_server, js, received, worker) = rate_limits_need_approval().await;
    // A decision from another writer whose id can be no approval's key: looking its
    // approval up fails every time. The decision after it must not wait behind it forever.
    publish(
        &js,
        &[
            decision("a b", "n1", RateLimit, 0),
            decision("c", "n2", Reroute, 1),
        ],
    )
    .await;
    let results: Vec<ActionResult> = wait_for(&js, 1).await;
    assert_eq!(results[0].decision_id, "d-c");
    let dead: Vec<Rejected> = wait_for(&js, 1).await;
    wait_caught_up(&js, "MAPEK_PLAN", execute::DURABLE).await;
    let stats = worker.stop().await.unwrap();

    let letter = &dead[0];
    assert_eq!(
        (letter.phase.as_str(), letter.node.as_str()),
        ("plan", "n1")
    );
    assert!(
        letter.reason.contains("failed on it 3 times")
            && letter.reason.contains("invalid decision id \"d-a b\""),
        "the reason says what failed: {}",
        letter.reason
    );
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(
        stored::<ActionResult>(&js).await.len(),
        1,
        "no result for d-a b"
    );
    assert!(!received.lock().unwrap().iter().any(|(_, d)| d == "d-a b"));
}
