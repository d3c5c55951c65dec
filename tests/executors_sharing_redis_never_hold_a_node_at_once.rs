//! Two executors, each with its own pool of connections to one Redis, race for leases on
//! the same nodes: never do both hold a node at once. They also share one token bucket,
//! which grants no more than its burst and its refill.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mapek_knowledge::Redis;
use mapek_testkit::TestRedis;

#[tokio::test]
async fn two_executors_never_hold_one_node_at_once() {
    let server = TestRedis::new();
    let holders: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let overlaps = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for owner in ["exec-a", "exec-b"] {
        let redis = Redis::connect_with_prefix(server.url(), server.prefix())
            .await
            .expect("connect to Redis");
        let holders = holders.clone();
        let overlaps = overlaps.clone();
        tasks.push(tokio::spawn(async move {
            let mut held = 0u64;
            for round in 0..150 {
                let node = format!("n{}", round % 3);
                if !redis
                    .try_lease(&node, owner, Duration::from_secs(5))
                    .await
                    .unwrap()
                {
                    continue;
                }
                held += 1;
                if let Some(other) = holders.lock().unwrap().insert(node.clone(), owner.into()) {
                    overlaps.fetch_add(1, Ordering::Relaxed);
                    eprintln!("{owner} took {node} while {other} held it");
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
                holders.lock().unwrap().remove(&node);
                assert!(
                    redis.release(&node, owner).await.unwrap(),
                    "{owner} releases {node}"
                );
            }
            held
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    assert_eq!(overlaps.load(Ordering::Relaxed), 0, "a node was held twice");
    assert!(
        held.iter().all(|h| *h > 0),
        "both executors got leases: {held:?}"
    );
}

#[tokio::test]
async fn a_lease_is_only_released_by_its_owner_and_expires() {
    let server = TestRedis::new();
    let a = Redis::connect_with_prefix(server.url(), server.prefix())
        .await
        .unwrap();
    let b = Redis::connect_with_prefix(server.url(), server.prefix())
        .await
        .unwrap();
    assert!(
        a.try_lease("n1", "a", Duration::from_millis(300))
            .await
            .unwrap()
    );
    assert!(
        !b.try_lease("n1", "b", Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(!b.release("n1", "b").await.unwrap(), "b does not hold it");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        b.try_lease("n1", "b", Duration::from_secs(5))
            .await
            .unwrap(),
        "a's lease expired"
    );
    assert!(
        !a.release("n1", "a").await.unwrap(),
        "a's release does not end b's lease"
    );
    assert!(
        !a.try_lease("n1", "a", Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(b.release("n1", "b").await.unwrap());
    assert!(
        a.try_lease("n1", "a", Duration::from_secs(5))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_shared_token_bucket_grants_its_burst_then_its_rate() {
    let server = TestRedis::new();
    let a = Redis::connect_with_prefix(server.url(), server.prefix())
        .await
        .unwrap();
    let b = Redis::connect_with_prefix(server.url(), server.prefix())
        .await
        .unwrap();
    // Both executors take at the same instant: 5 tokens in all, whoever asks.
    let now = 1_000_000;
    let mut granted = 0;
    for i in 0..20 {
        let r = if i % 2 == 0 { &a } else { &b };
        if r.take("actions", 10.0, 5, now).await.unwrap() {
            granted += 1;
        }
    }
    assert_eq!(granted, 5, "the burst");
    // 10 a second: 250 ms later, 2 more (2.5 rounded down).
    let later = now + 250;
    let mut more = 0;
    for _ in 0..5 {
        if a.take("actions", 10.0, 5, later).await.unwrap() {
            more += 1;
        }
    }
    assert_eq!(more, 2, "the refill");
    assert!(
        a.take("actions", 0.0, 5, later).await.is_err(),
        "a zero rate is refused"
    );
}
