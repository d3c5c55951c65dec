//! Several executors sharing one Redis: every copy is active, they share the plan
//! partitions, and together they keep the interlocks one executor keeps alone. A node agent
//! that takes its time shows what reached the nodes: never two commands on one node at once,
//! never more nodes under command than the blast radius allows, never more actions than the
//! rate limit, and every decision acted on once, even when an executor stops and another
//! takes its partitions over, or Redis goes away for a while. After the partition count
//! grew, a node's decisions are acted on in the order they were stored.

mod agent;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::{Running, decision, publish, setup, stored, wait_for, wait_until_partitions_shared};
use mapek_bus::command::{CommandReply, Commands};
use mapek_bus::{BusError, JetStream};
use mapek_domain::ActionKind::Reroute;
use mapek_domain::execute::RateLimit;
use mapek_domain::{ActionResult, ActionStatus, Decision, ExecuteConfig};
use mapek_knowledge::Redis;
use mapek_loop::execute::{self, ExecuteStats, ExecutorKeys, Shared};
use mapek_testkit::{RedisServer, TestRedis};

/// What the slow agent saw.
#[derive(Debug, Default)]
struct Seen {
    /// Commands on each node right now.
    out: BTreeMap<String, u32>,
    /// The most commands out at once, over all nodes.
    most_at_once: usize,
    /// A node that got a second command while one was out.
    overlaps: Vec<String>,
    /// Decision ids of every command received.
    decisions: Vec<String>,
}

/// A node agent for every node that takes `busy` over each command, counting what is out.
async fn start_slow_agent(url: &str, busy: Duration) -> Arc<Mutex<Seen>> {
    let client = mapek_bus::connect_client(url).await.unwrap();
    let mut commands = Commands::subscribe(&client, None).await.unwrap();
    client.flush().await.unwrap();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some(incoming) = commands.next().await {
            let (client, log) = (client.clone(), log.clone());
            tokio::spawn(async move {
                let node = incoming.node.to_string();
                let Ok(command) = &incoming.command else {
                    return;
                };
                {
                    let mut s = log.lock().unwrap();
                    s.decisions.push(command.decision_id.clone());
                    let n = s.out.entry(node.clone()).or_default();
                    *n += 1;
                    if *n > 1 {
                        s.overlaps.push(node.clone());
                    }
                    let at_once = s.out.values().filter(|n| **n > 0).count();
                    s.most_at_once = s.most_at_once.max(at_once);
                }
                tokio::time::sleep(busy).await;
                *log.lock().unwrap().out.get_mut(&node).unwrap() -= 1;
                let reply = CommandReply::applied(format!("reroute on {node}"));
                incoming.respond(&client, &reply).await.unwrap();
            });
        }
    });
    seen
}

/// An executor named `name` sharing `redis`; leases of partitions live 1.5 s past a stop.
async fn start_executor(
    js: &JetStream,
    client: &async_nats::Client,
    redis: &TestRedis,
    name: &str,
    config: ExecuteConfig,
) -> Running<Result<ExecuteStats, BusError>> {
    let shared = Redis::connect_with_prefix(redis.url(), redis.prefix())
        .await
        .unwrap();
    let shared = Shared::new(shared, name).lease_ttl(Duration::from_millis(1500));
    let (js, client) = (js.clone(), client.clone());
    Running::start(move |shutdown| {
        execute::run_shared(
            js,
            client,
            config,
            ExecutorKeys::default(),
            shared,
            shutdown,
        )
    })
}

/// Records a policy for a mesh of 8 nodes, at most a quarter of them under action, an action
/// under action for 1 s of event time (less than between two decisions: only commands out
/// count); returns `decisions` made under it.
async fn under_a_quarter_of_eight(js: &JetStream, decisions: Vec<Decision>) -> Vec<Decision> {
    let policy = agent::ROOMY_POLICY
        .replace("window_secs = 60", "window_secs = 1")
        .replace("max_node_percent = 100.0", "max_node_percent = 25.0")
        .replace("min_known_nodes = 1000", "min_known_nodes = 8");
    let hash = mapek_bus::config_store::record_policy(js, &policy)
        .await
        .unwrap();
    decisions
        .into_iter()
        .map(|d| Decision {
            policy_hash: hash.clone(),
            ..d
        })
        .collect()
}

/// Decisions `from..to` of the test, to reroute on n0…n7 in turn, 2 s of event time apart.
fn decisions(from: usize, to: usize) -> Vec<Decision> {
    (from..to)
        .map(|i| {
            decision(
                &format!("{i}"),
                &format!("n{}", i % 8),
                Reroute,
                2 * i as i64,
            )
        })
        .collect()
}

/// Interlocks with no cooldown, and `max_actions` a minute.
fn interlocks(max_actions: u32) -> ExecuteConfig {
    ExecuteConfig {
        cooldown_ms: 0,
        evaluate_window_ms: 0,
        rate_limit: RateLimit {
            max_actions,
            window_ms: 60_000,
        },
        command_timeout_ms: 5_000,
        ..ExecuteConfig::default()
    }
}

/// Checks that exactly the decisions recorded as applied reached the nodes, each once.
fn assert_applied_were_sent_once(seen: &Seen, results: &[ActionResult]) {
    let applied: BTreeSet<&str> = results
        .iter()
        .filter(|r| r.status == ActionStatus::Applied)
        .map(|r| r.decision_id.as_str())
        .collect();
    let sent: BTreeSet<&str> = seen.decisions.iter().map(String::as_str).collect();
    assert_eq!(
        seen.decisions.len(),
        sent.len(),
        "a decision was sent twice"
    );
    assert_eq!(
        sent, applied,
        "exactly the applied decisions reached the nodes"
    );
}

/// Each decision id with how many results it got.
fn results_per_decision(results: &[ActionResult]) -> BTreeMap<&str, usize> {
    let mut per = BTreeMap::new();
    for r in results {
        *per.entry(r.decision_id.as_str()).or_default() += 1;
    }
    per
}

#[tokio::test]
async fn executors_sharing_redis_never_act_on_one_node_at_once_nor_beyond_the_blast_radius() {
    let (server, js, client) = setup().await;
    let redis = TestRedis::new();
    let seen = start_slow_agent(&server.url(), Duration::from_millis(150)).await;
    // 8 nodes, at most 2 under action; nothing else in the way.
    let config = interlocks(1000);
    let a = start_executor(&js, &client, &redis, "exec-a", config.clone()).await;
    let b = start_executor(&js, &client, &redis, "exec-b", config.clone()).await;
    wait_until_partitions_shared(&js, &["exec-a", "exec-b"]).await;

    publish(&js, &under_a_quarter_of_eight(&js, decisions(0, 48)).await).await;
    let results: Vec<ActionResult> = wait_for(&js, 48).await;

    // a stops; b takes its partitions over and acts on what comes next.
    let a_stats = a.stop().await.unwrap();
    wait_until_partitions_shared(&js, &["exec-b"]).await;
    publish(&js, &under_a_quarter_of_eight(&js, decisions(48, 64)).await).await;
    let results_after: Vec<ActionResult> = wait_for(&js, 64).await;
    let b_stats = b.stop().await.unwrap();

    let seen = seen.lock().unwrap();
    assert!(
        seen.overlaps.is_empty(),
        "nodes that got a command while one was out: {:?}",
        seen.overlaps
    );
    assert!(
        seen.most_at_once <= 2,
        "{} nodes were under command at once; the blast radius allows 2",
        seen.most_at_once
    );
    let per = results_per_decision(&results_after);
    assert_eq!(per.len(), 64, "every decision has a result");
    assert!(
        per.values().all(|n| *n == 1),
        "a decision with several results: {per:?}"
    );
    assert_applied_were_sent_once(&seen, &results_after);
    for r in results_after
        .iter()
        .filter(|r| r.status == ActionStatus::Refused)
    {
        assert!(
            r.reason.starts_with("lease: ") || r.reason.starts_with("blast radius: "),
            "only the lease and the blast radius are in the way here: {}",
            r.reason
        );
    }
    assert_eq!(
        seen.most_at_once, 2,
        "commands ran in parallel, up to the blast radius"
    );
    assert!(
        a_stats.processed > 0 && b_stats.processed > 0,
        "both executors took decisions: a {a_stats:?}, b {b_stats:?}"
    );
    assert!(
        results[..48]
            .iter()
            .any(|r| r.status == ActionStatus::Applied),
        "the first round applied actions"
    );
}

#[tokio::test]
async fn executors_sharing_redis_apply_no_more_than_the_rate_limit_together() {
    let (server, js, client) = setup().await;
    let redis = TestRedis::new();
    let seen = start_slow_agent(&server.url(), Duration::from_millis(100)).await;
    // At most 5 actions a minute, over all nodes and executors; nothing else in the way.
    let config = interlocks(5);
    let a = start_executor(&js, &client, &redis, "exec-a", config.clone()).await;
    let b = start_executor(&js, &client, &redis, "exec-b", config).await;
    wait_until_partitions_shared(&js, &["exec-a", "exec-b"]).await;

    // 16 decisions within 30 s of event time: one executor alone would apply 5.
    publish(&js, &decisions(0, 16)).await;
    let results: Vec<ActionResult> = wait_for(&js, 16).await;
    let (a, b) = (a.stop().await.unwrap(), b.stop().await.unwrap());

    let applied = results
        .iter()
        .filter(|r| r.status == ActionStatus::Applied)
        .count();
    assert_eq!(
        applied, 5,
        "the executors together applied the limit: {results:#?}"
    );
    assert_eq!(
        seen.lock().unwrap().decisions.len(),
        5,
        "5 commands were sent"
    );
    for r in results.iter().filter(|r| r.status == ActionStatus::Refused) {
        assert!(
            r.reason.starts_with("rate limit: ") || r.reason.starts_with("lease: "),
            "{}",
            r.reason
        );
    }
    assert!(
        a.processed > 0 && b.processed > 0,
        "both executors took decisions: a {a:?}, b {b:?}"
    );
}

#[tokio::test]
async fn executors_whose_redis_went_away_wait_for_it_then_act_on_each_decision_once() {
    let (server, js, client) = setup().await;
    let mut redis = RedisServer::start();
    let slice = redis.slice();
    let seen = start_slow_agent(&server.url(), Duration::from_millis(20)).await;
    let config = interlocks(1000);
    let a = start_executor(&js, &client, &slice, "exec-a", config.clone()).await;
    let b = start_executor(&js, &client, &slice, "exec-b", config).await;
    wait_until_partitions_shared(&js, &["exec-a", "exec-b"]).await;

    redis.stop();
    publish(&js, &decisions(0, 16)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        stored::<ActionResult>(&js).await.is_empty(),
        "nothing is judged while Redis is away"
    );
    assert!(
        seen.lock().unwrap().decisions.is_empty(),
        "nothing was sent"
    );

    redis.restart();
    let results: Vec<ActionResult> = wait_for(&js, 16).await;
    // Give a doubled result time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results_later: Vec<ActionResult> = stored(&js).await;
    let (a, b) = (a.stop().await.unwrap(), b.stop().await.unwrap());

    assert_eq!(
        results_later.len(),
        results.len(),
        "no decision got a second result"
    );
    let per = results_per_decision(&results_later);
    assert_eq!(per.len(), 16, "every decision has one result: {per:?}");
    assert_applied_were_sent_once(&seen.lock().unwrap(), &results_later);
    assert!(
        a.paused + b.paused > 0,
        "the executors paused while Redis was away: a {a:?}, b {b:?}"
    );
}

/// The names of the plan stream's durable readers.
async fn plan_readers(js: &JetStream) -> BTreeSet<String> {
    use futures::StreamExt;
    let stream = js.get_stream("MAPEK_PLAN").await.unwrap();
    let mut names = stream.consumer_names();
    let mut out = BTreeSet::new();
    while let Some(name) = names.next().await {
        out.insert(name.unwrap());
    }
    out
}

/// The reader an executor running alone leaves on the plan stream when it stops.
async fn leave_the_reader_of_an_executor_that_ran_alone(js: &JetStream) {
    let stream = js.get_stream("MAPEK_PLAN").await.unwrap();
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("execute".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn executors_switched_to_sharing_delete_the_reader_they_ran_alone_with() {
    let (server, js, client) = setup().await;
    let redis = TestRedis::new();
    leave_the_reader_of_an_executor_that_ran_alone(&js).await;
    assert!(plan_readers(&js).await.contains("execute"));

    let a = start_executor(&js, &client, &redis, "a", interlocks(1000)).await;
    let b = start_executor(&js, &client, &redis, "b", interlocks(1000)).await;
    wait_until_partitions_shared(&js, &["a", "b"]).await;
    // A partition's reader is created once its lease is taken, a moment later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let readers = loop {
        let readers = plan_readers(&js).await;
        let sharing = readers
            .iter()
            .filter(|r| r.starts_with("execute-p"))
            .count();
        if sharing == 8 || tokio::time::Instant::now() > deadline {
            break readers;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!readers.contains("execute"), "{readers:?}");
    assert_eq!(
        readers
            .iter()
            .filter(|r| r.starts_with("execute-p"))
            .count(),
        8,
        "{readers:?}"
    );
    // And they act on what comes, each decision once.
    publish(&js, &decisions(0, 4)).await;
    let results: Vec<ActionResult> = wait_for(&js, 4).await;
    assert!(results_per_decision(&results).values().all(|n| *n == 1));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    drop(server);
}

#[tokio::test]
async fn an_executor_will_not_share_the_work_while_one_runs_alone_nor_the_other_way() {
    let (_server, js, client) = setup().await;
    let redis = TestRedis::new();
    leave_the_reader_of_an_executor_that_ran_alone(&js).await;

    // An executor runs alone: it holds the lease `mapek run` gives it.
    let mut alone = mapek_loop::lease::Leases::open(&js, "old-host", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(alone.try_acquire("execute").await.unwrap());
    let shared = Redis::connect_with_prefix(redis.url(), redis.prefix())
        .await
        .unwrap();
    let err = execute::run_shared(
        js.clone(),
        client.clone(),
        interlocks(1000),
        ExecutorKeys::default(),
        Shared::new(shared, "new-host"),
        std::future::pending(),
    )
    .await
    .expect_err("refused while one runs alone");
    let err = err.to_string();
    assert!(
        err.contains("executor old-host runs alone (no Redis)") && err.contains("REDIS_URL"),
        "{err}"
    );
    assert!(
        plan_readers(&js).await.contains("execute"),
        "the running executor's reader is left alone"
    );
    alone.release_all().await;

    // Executors share the work: one holds a partition's lease.
    let mut sharing = mapek_loop::lease::Leases::open(&js, "shared-host", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(sharing.try_acquire("execute.p2").await.unwrap());
    let err = execute::run(
        js.clone(),
        client.clone(),
        interlocks(1000),
        std::future::pending(),
    )
    .await
    .expect_err("refused while others share the work");
    let err = err.to_string();
    assert!(
        err.contains("executor shared-host runs sharing the work through Redis"),
        "{err}"
    );
    sharing.release_all().await;
}

#[tokio::test]
async fn a_node_moved_by_a_grown_count_is_acted_on_in_the_order_it_was_decided() {
    // Given: 8 plan partitions and, with no executor running, 150 decisions waiting in
    // partition 2, then one on n7 (partition 2 of 8, 18 of 32).
    let (server, js, client) = setup().await;
    let redis = TestRedis::new();
    let seen = start_slow_agent(&server.url(), Duration::from_millis(5)).await;
    let staying: Vec<String> = (0..)
        .map(|i| format!("m{i}"))
        .filter(|n| partition_of(n, 8) == 2 && partition_of(n, 32) == 2)
        .take(150)
        .collect();
    let mut waiting: Vec<Decision> = staying
        .iter()
        .enumerate()
        .map(|(i, n)| decision(&format!("m{i}"), n, Reroute, i as i64))
        .collect();
    waiting.push(decision("old", "n7", Reroute, 200));
    publish(&js, &waiting).await;

    // When: the plan stream grows to 32 partitions, a second decision on n7 lands in 18, and
    // an executor takes all 32.
    let wanted = mapek_bus::streams::Wanted {
        monitor_streams: None,
        partitions: Some(32),
    };
    let layout = mapek_bus::streams::detect_layout(&js, wanted)
        .await
        .unwrap();
    let defs = mapek_bus::streams::builtin();
    mapek_bus::streams::apply_layout(&js, &defs, layout)
        .await
        .unwrap();
    publish(&js, &[decision("new", "n7", Reroute, 2_000)]).await;
    let shared = Redis::connect_with_prefix(redis.url(), redis.prefix())
        .await
        .unwrap();
    let shared = Shared::new(shared, "exec").partitions(32);
    let (js2, client2) = (js.clone(), client.clone());
    let executor = Running::start(move |shutdown| {
        let keys = ExecutorKeys::default();
        execute::run_shared(js2, client2, interlocks(1000), keys, shared, shutdown)
    });

    // Then: n7's decision left in partition 2 is acted on before the one in 18, though 2 had
    // 150 to act on first and 18 one.
    let results: Vec<ActionResult> = wait_for(&js, 152).await;
    executor.stop().await.unwrap();
    let on_n7: Vec<&str> = results
        .iter()
        .filter(|r| r.node.as_str() == "n7")
        .map(|r| r.decision_id.as_str())
        .collect();
    assert_eq!(on_n7, ["d-old", "d-new"], "{results:?}");
    let sent = seen.lock().unwrap().decisions.clone();
    let at = |id: &str| sent.iter().position(|d| d == id);
    assert!(at("d-old") < at("d-new"), "commands sent: {sent:?}");
}

/// The partition of node `name` among `count`.
fn partition_of(name: &str, count: u32) -> u32 {
    mapek_bus::layout::partition_of_node(&mapek_domain::NodeId::new(name).unwrap(), count)
}
