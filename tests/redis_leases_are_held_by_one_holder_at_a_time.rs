//! The Redis primitives executors share: two holders, each with its own pool of connections to
//! one Redis, race for leases on the same nodes and never both hold one at once; leases are
//! listed with their holders; a lock has one holder at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mapek_knowledge::Redis;
use mapek_testkit::TestRedis;

/// A pool of connections of its own to the test's Redis, under the test's prefix.
async fn connect(server: &TestRedis) -> Redis {
    Redis::connect_with_prefix(server.url(), server.prefix())
        .await
        .expect("connect to Redis")
}

#[tokio::test]
async fn two_holders_racing_for_leases_never_hold_one_node_at_once() {
    let server = TestRedis::new();
    let holders: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let overlaps = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for owner in ["exec-a", "exec-b"] {
        let redis = connect(&server).await;
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
    let (a, b) = (connect(&server).await, connect(&server).await);
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
async fn leases_are_listed_with_their_holders_until_released_or_expired() {
    let server = TestRedis::new();
    let (a, b) = (connect(&server).await, connect(&server).await);
    assert!(a.leases().await.unwrap().is_empty());
    assert!(
        a.try_lease("n2", "d-1 reroute a", Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(
        b.try_lease("n1", "d-2 restart_service b", Duration::from_millis(300))
            .await
            .unwrap()
    );
    assert_eq!(
        b.leases().await.unwrap(),
        [
            ("n1".to_owned(), "d-2 restart_service b".to_owned()),
            ("n2".to_owned(), "d-1 reroute a".to_owned())
        ],
        "every executor sees every lease, ordered by node"
    );
    assert!(a.release("n2", "d-1 reroute a").await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        a.leases().await.unwrap().is_empty(),
        "released and expired leases are not listed"
    );
}

#[tokio::test]
async fn a_lock_has_one_holder_and_is_not_a_lease() {
    let server = TestRedis::new();
    let (a, b) = (connect(&server).await, connect(&server).await);
    assert!(
        a.try_lock("admission", "a", Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(
        !b.try_lock("admission", "b", Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(
        !b.unlock("admission", "b").await.unwrap(),
        "b does not hold it"
    );
    assert!(
        a.leases().await.unwrap().is_empty(),
        "a lock is not a node lease"
    );
    assert!(a.unlock("admission", "a").await.unwrap());
    assert!(
        b.try_lock("admission", "b", Duration::from_millis(200))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        a.try_lock("admission", "a", Duration::from_secs(5))
            .await
            .unwrap(),
        "b's lock expired"
    );
}
