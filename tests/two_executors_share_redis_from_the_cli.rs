//! As the README says: with `REDIS_URL`, two `mapek run --phase execute` processes are both
//! active, share the plan partitions, and act on each decision once.

mod agent;
mod common;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::Duration;

use agent::{decision, publish, start_agent, wait_for, wait_until_partitions_shared};
use common::{interrupt, mapek};
use mapek_domain::ActionKind::Reroute;
use mapek_domain::ActionResult;
use mapek_testkit::TestRedis;
use mapek_testkit::server_with_streams;

/// `mapek run --phase execute` as `name`, sharing `redis`.
fn executor(url: &str, redis: &TestRedis, name: &str) -> Child {
    let mut cmd = mapek(url);
    cmd.args(["run", "--phase", "execute", "--worker", name])
        .args(["--metrics-addr", "off", "--duration", "60s"])
        .env("REDIS_URL", redis.url())
        .env("MAPEK_REDIS_PREFIX", redis.prefix())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("start mapek run")
}

/// The count of decisions in an executor's summary line.
fn decisions_taken(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("execute (sharing through Redis): "))
        .unwrap_or_else(|| panic!("no sharing summary in: {stderr}"));
    line["execute (sharing through Redis): ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"))
}

#[tokio::test]
async fn two_executors_run_from_the_cli_share_the_work_through_redis() {
    let (server, js) = server_with_streams().await;
    let redis = TestRedis::new();
    let _agent = start_agent(&server.url()).await;
    let a = executor(&server.url(), &redis, "exec-a");
    let b = executor(&server.url(), &redis, "exec-b");
    wait_until_partitions_shared(&js, &["exec-a", "exec-b"]).await;

    // 32 decisions on 32 nodes, a minute apart: every partition gets some.
    let decisions: Vec<_> = (0..32)
        .map(|i| decision(&format!("{i}"), &format!("n{i}"), Reroute, 60 * i))
        .collect();
    publish(&js, &decisions).await;
    let results: Vec<ActionResult> = wait_for(&js, 32).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (a, b) = (interrupt(a), interrupt(b));

    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &results {
        *per.entry(r.decision_id.as_str()).or_default() += 1;
    }
    assert_eq!(per.len(), 32, "every decision has a result");
    assert!(per.values().all(|n| *n == 1), "{per:?}");
    let (from_a, from_b) = (decisions_taken(&a), decisions_taken(&b));
    assert!(
        from_a > 0 && from_b > 0,
        "both executors acted: a {from_a}, b {from_b}\n{a}\n{b}"
    );
    assert_eq!(
        from_a + from_b,
        32,
        "no decision was taken by both:\n{a}\n{b}"
    );
}
