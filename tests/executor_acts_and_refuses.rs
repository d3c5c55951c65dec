//! The executor sends decisions to node agents over NATS and records what came of them:
//! applied, refused by an interlock with the reason, failed by the agent or for want of a
//! reply; in dry-run mode it sends nothing; restarted, it remembers what it did; killed
//! after sending a command, it sends it again (actuation is at least once).

mod agent;

use agent::{
    Received, Running, SILENT, decision, publish, quick, setup, start_agent, stored,
    wait_caught_up, wait_for,
};
use mapek_bus::{BusError, JetStream};
use mapek_domain::ActionKind::{Escalate, Quarantine, Reroute, RestartService};
use mapek_domain::execute::result_id;
use mapek_domain::{ActionResult, ActionStatus, Decision, ExecuteConfig};
use mapek_loop::execute::{self, ExecuteStats};

fn start(
    js: &JetStream,
    client: &async_nats::Client,
    config: ExecuteConfig,
) -> Running<Result<ExecuteStats, BusError>> {
    let (js, client) = (js.clone(), client.clone());
    Running::start(move |shutdown| execute::run(js, client, config, shutdown))
}

fn commands(received: &Received) -> Vec<(String, String)> {
    received.lock().unwrap().clone()
}

fn pair(node: &str, decision: &str) -> (String, String) {
    (node.to_owned(), decision.to_owned())
}

#[tokio::test]
async fn a_decision_is_applied_and_the_next_for_its_node_meets_the_cooldown() {
    let (server, js, client) = setup().await;
    let received = start_agent(&server.url()).await;
    let worker = start(&js, &client, quick());
    let decisions = [
        decision("a", "n1", Reroute, 0),
        decision("b", "n1", RestartService, 12),
        decision("c", "n1", Escalate, 13),
    ];
    publish(&js, &decisions).await;
    let results: Vec<ActionResult> = wait_for(&js, 3).await;
    let stats = worker.stop().await.unwrap();

    let a = &results[0];
    assert_eq!(
        (a.decision_id.as_str(), a.status),
        ("d-a", ActionStatus::Applied)
    );
    assert_eq!((a.attempts, a.dry_run, a.reason.as_str()), (1, false, ""));
    assert_eq!(a.result_id, result_id("d-a"));
    assert_eq!(
        a.ts_ms, decisions[0].ts_ms,
        "results carry their decision's event time"
    );

    let b = &results[1];
    assert_eq!(
        (b.decision_id.as_str(), b.status),
        ("d-b", ActionStatus::Refused)
    );
    assert_eq!(
        b.reason,
        "cooldown: n1 had reroute applied 12.0 s ago, cooldown is 60 s"
    );
    assert_eq!(b.attempts, 0);

    let c = &results[2];
    assert_eq!(
        (c.status, c.attempts),
        (ActionStatus::Applied, 0),
        "escalations pass"
    );

    assert_eq!(
        commands(&received),
        [pair("n1", "d-a")],
        "only d-a reached the node"
    );
    assert_eq!((stats.applied, stats.refused, stats.commands), (2, 1, 1));
}

#[tokio::test]
async fn an_agent_that_fails_or_never_answers_gives_a_failed_result() {
    let (server, js, client) = setup().await;
    let received = start_agent(&server.url()).await;
    let worker = start(&js, &client, quick());
    publish(
        &js,
        &[
            decision("a", "n2", Quarantine, 0),
            decision("b", SILENT, Reroute, 0),
        ],
    )
    .await;
    let results: Vec<ActionResult> = wait_for(&js, 2).await;
    let stats = worker.stop().await.unwrap();

    let refused_by_agent = &results[0];
    assert_eq!(refused_by_agent.status, ActionStatus::Failed);
    assert_eq!(refused_by_agent.reason, "n2 refuses to leave the mesh");
    assert_eq!(refused_by_agent.attempts, 1, "an answer is not asked again");

    let silent = &results[1];
    assert_eq!(silent.status, ActionStatus::Failed);
    assert_eq!(silent.attempts, 3);
    assert!(
        silent
            .reason
            .starts_with("no reply within 200 ms after 3 attempts: "),
        "{}",
        silent.reason
    );
    let to_silent = commands(&received)
        .iter()
        .filter(|(node, _)| node == SILENT)
        .count();
    assert_eq!(to_silent, 3);
    assert_eq!((stats.failed, stats.commands), (2, 4));
}

#[tokio::test]
async fn dry_run_records_the_action_and_sends_nothing() {
    let (server, js, client) = setup().await;
    let received = start_agent(&server.url()).await;
    let config = ExecuteConfig {
        dry_run: true,
        ..quick()
    };
    let worker = start(&js, &client, config);
    publish(
        &js,
        &[
            decision("a", "n3", Reroute, 0),
            decision("b", "n3", Reroute, 5),
        ],
    )
    .await;
    let results: Vec<ActionResult> = wait_for(&js, 2).await;
    worker.stop().await.unwrap();

    assert_eq!(results[0].status, ActionStatus::Applied);
    assert!(results[0].dry_run);
    assert_eq!(results[0].attempts, 0);
    // The dry run is refused where a live run would be.
    assert_eq!(results[1].status, ActionStatus::Refused);
    assert!(
        results[1].reason.starts_with("cooldown: n3"),
        "{}",
        results[1].reason
    );
    assert_eq!(commands(&received), [], "nothing reached any node");
}

#[tokio::test]
async fn a_restarted_executor_rebuilds_its_interlocks_from_the_results() {
    let (server, js, client) = setup().await;
    let received = start_agent(&server.url()).await;
    let worker = start(&js, &client, quick());
    publish(&js, &[decision("a", "n4", Reroute, 0)]).await;
    wait_for::<ActionResult>(&js, 1).await;
    wait_caught_up(&js, "MAPEK_PLAN", execute::DURABLE).await;
    worker.stop().await.unwrap();

    publish(&js, &[decision("b", "n4", Reroute, 30)]).await;
    let worker = start(&js, &client, quick());
    let results: Vec<ActionResult> = wait_for(&js, 2).await;
    let stats = worker.stop().await.unwrap();

    assert_eq!(stats.replayed, 1);
    assert_eq!(results[1].status, ActionStatus::Refused);
    assert_eq!(
        results[1].reason,
        "cooldown: n4 had reroute applied 30.0 s ago, cooldown is 60 s"
    );
    assert_eq!(commands(&received), [pair("n4", "d-a")]);
}

/// A node agent that applies each decision id once and answers a repeat with its first
/// reply, but never answers the first command it gets: it tells `first` instead, so that the
/// executor can be killed while it waits. Returns how many times it applied an action.
async fn agent_applying_each_decision_once(
    url: &str,
    first: tokio::sync::oneshot::Sender<()>,
) -> (Received, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use mapek_bus::command::{CommandReply, Commands};
    let client = mapek_bus::connect_client(url).await.unwrap();
    let mut commands = Commands::subscribe(&client, None).await.unwrap();
    client.flush().await.unwrap();
    let applied = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let received = Received::default();
    let (log, count) = (received.clone(), std::sync::Arc::clone(&applied));
    tokio::spawn(async move {
        let mut first = Some(first);
        let mut replies = std::collections::HashMap::new();
        while let Some(incoming) = commands.next().await {
            let cmd = incoming.command.as_ref().unwrap();
            let id = cmd.decision_id.clone();
            log.lock()
                .unwrap()
                .push((incoming.node.to_string(), id.clone()));
            if let Some(reply) = replies.get(&id) {
                incoming.respond(&client, reply).await.unwrap();
                continue;
            }
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            replies.insert(
                id,
                CommandReply::applied(format!("{} done", cmd.action.kind.as_str())),
            );
            let _ = first.take().unwrap().send(());
        }
    });
    (received, applied)
}

#[tokio::test]
async fn an_executor_killed_after_sending_a_command_sends_it_again_and_the_node_acts_once() {
    let (server, js, client) = setup().await;
    let (sent, first_sent) = tokio::sync::oneshot::channel();
    let (received, applied) = agent_applying_each_decision_once(&server.url(), sent).await;
    let worker = start(&js, &client, quick());
    publish(&js, &[decision("a", "n3", Reroute, 0)]).await;

    // Killed between sending the command and storing its result.
    first_sent.await.unwrap();
    worker.kill().await;
    assert!(stored::<ActionResult>(&js).await.is_empty());

    // Restarted, it reads on from the last decision acknowledged, and sends this one again.
    let worker = start(&js, &client, quick());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    let results = loop {
        let results = stored::<ActionResult>(&js).await;
        if !results.is_empty() || tokio::time::Instant::now() > deadline {
            break results;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    wait_caught_up(&js, "MAPEK_PLAN", execute::DURABLE).await;
    worker.stop().await.unwrap();

    assert_eq!(commands(&received), [pair("n3", "d-a"), pair("n3", "d-a")]);
    assert_eq!(
        applied.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "applied once"
    );
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(
        (results[0].status, results[0].reason.as_str()),
        (ActionStatus::Applied, "")
    );
    assert_eq!(stored::<ActionResult>(&js).await.len(), 1, "one result");
}

#[tokio::test]
async fn decisions_that_waited_too_long_are_refused_as_stale_and_new_ones_applied() {
    let (server, js, client) = setup().await;
    let received = start_agent(&server.url()).await;
    // The executor was down while this decision was taken.
    publish(&js, &[decision("old", "n1", RestartService, 0)]).await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let config = ExecuteConfig {
        max_decision_wait_ms: 300,
        ..quick()
    };
    let worker = start(&js, &client, config);
    let first: Vec<ActionResult> = wait_for(&js, 1).await;
    publish(&js, &[decision("new", "n2", RestartService, 1)]).await;
    let results: Vec<ActionResult> = wait_for(&js, 2).await;
    worker.stop().await.unwrap();

    assert_eq!(first[0].status, ActionStatus::Refused);
    assert!(
        first[0].reason.starts_with("stale: the decision waited"),
        "{}",
        first[0].reason
    );
    assert_eq!(
        results[1].status,
        ActionStatus::Applied,
        "{}",
        results[1].reason
    );
    assert_eq!(
        commands(&received),
        [pair("n2", "d-new")],
        "nothing old reached a node"
    );
}

#[tokio::test]
async fn the_blast_radius_is_the_policys_share_of_every_reporting_node() {
    let (server, js, client) = setup().await;
    let received = start_agent(&server.url()).await;
    // Twenty nodes report; the policy counts the mesh as 10 nodes at least, 10 % of it.
    let mut publisher = mapek_bus::Publisher::new(js.clone());
    for n in 0..20 {
        let node = mapek_domain::NodeId::new(format!("n{n}")).unwrap();
        let metrics = [("cpu".to_owned(), 0.1)].into();
        publisher
            .publish(&mapek_domain::Telemetry::new(
                node,
                1_795_867_200_000,
                metrics,
            ))
            .await
            .unwrap();
    }
    assert!(publisher.finish().await.all_acked());
    let policy = agent::ROOMY_POLICY
        .replace("max_node_percent = 100.0", "max_node_percent = 10.0")
        .replace("min_known_nodes = 1000", "min_known_nodes = 10");
    let hash = mapek_bus::config_store::record_policy(&js, &policy)
        .await
        .unwrap();
    let worker = start(&js, &client, quick());
    let decisions = [("a", "n1"), ("b", "n2"), ("c", "n3")]
        .into_iter()
        .zip(0..)
        .map(|((name, node), secs)| Decision {
            policy_hash: hash.clone(),
            ..decision(name, node, RestartService, secs)
        });
    publish(&js, &decisions.collect::<Vec<_>>()).await;
    let results: Vec<ActionResult> = wait_for(&js, 3).await;
    worker.stop().await.unwrap();

    // 10 % of 20 nodes: two at once; counting only the policy's floor, it would be one.
    for applied in &results[..2] {
        assert_eq!(applied.status, ActionStatus::Applied, "{}", applied.reason);
    }
    assert_eq!(results[2].status, ActionStatus::Refused);
    assert_eq!(
        results[2].reason,
        "blast radius: acting would put 3 of 20 known nodes under action, more than 2 (10%); \
         under action: n1, n2"
    );
    assert_eq!(commands(&received).len(), 2);
}

#[tokio::test]
async fn a_decision_whose_policy_was_never_recorded_is_refused_not_acted_on() {
    let (server, js, client) = setup().await;
    let received = start_agent(&server.url()).await;
    let worker = start(&js, &client, quick());
    let unknown = Decision {
        policy_hash: "cd".repeat(32),
        ..decision("a", "n1", RestartService, 0)
    };
    publish(&js, &[unknown]).await;
    let results: Vec<ActionResult> = wait_for(&js, 1).await;
    worker.stop().await.unwrap();
    assert_eq!(results[0].status, ActionStatus::Refused);
    assert!(
        results[0]
            .reason
            .contains("is not recorded in MAPEK_CONFIG"),
        "{}",
        results[0].reason
    );
    assert!(commands(&received).is_empty());
}
