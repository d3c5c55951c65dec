//! A message the read model refuses every time is a poison message: Postgres stores no NUL
//! byte in text, so the row of a node whose latest telemetry has one in its id can never be
//! written. After a few tries it goes to the dead-letter stream with Postgres's reason, and
//! the projection goes on with the messages after it.

mod knowledge_log;

use knowledge_log::{assert_same_as_rebuild, project_all, publish_samples, telemetry};
use mapek_bus::{Publisher, Subscriber, SubscriberConfig};
use mapek_domain::{Phase, Rejected};
use mapek_knowledge::ReadModel;
use mapek_testkit::TestDatabase;
use mapek_testkit::samples::TS_MS;
use mapek_testkit::server_with_streams;
use sqlx::Row;

const POISON_ID: &str = "refused\u{0}by-postgres";

#[tokio::test]
async fn a_telemetry_event_postgres_refuses_is_dead_lettered_and_the_rest_is_projected() {
    let (_server, js) = server_with_streams().await;
    publish_samples(&js, 0, 120, 5).await;
    let mut publisher = Publisher::new(js.clone());
    let mut poison = telemetry("n7", TS_MS + 20_000, 0.5, None);
    poison.event_id = POISON_ID.into();
    publisher.publish(&poison).await.unwrap();
    assert_eq!(publisher.finish().await.failed, 0);
    publish_samples(&js, 200, 120, 5).await;

    let db = TestDatabase::create().await;
    let model = ReadModel::connect(db.url()).await.unwrap();
    model.migrate().await.unwrap();
    let stats = project_all(&js, &model).await;

    let monitor = stats.phase(Phase::Monitor);
    assert_eq!(monitor.last_seq, 241, "every message gone through");
    assert_eq!(monitor.applied, 240, "every other message written");
    assert_eq!((monitor.dead_lettered, monitor.skipped), (1, 1));

    let mut dead = Subscriber::<Rejected>::open(&js, SubscriberConfig::all())
        .await
        .unwrap();
    let letter = dead.next().await.unwrap().unwrap().event.unwrap();
    assert_eq!(
        (letter.phase.as_str(), letter.node.as_str()),
        ("monitor", "n7")
    );
    assert!(
        letter.reason.contains("refused it 3 times") && letter.reason.contains("0x00"),
        "the reason names the store's refusal: {}",
        letter.reason
    );
    let kept = &letter.original;
    assert!(
        kept.windows(POISON_ID.len())
            .any(|w| w == POISON_ID.as_bytes()),
        "the dead letter keeps the event as it was"
    );

    let latest = sqlx::query("SELECT node, ts_ms FROM nodes ORDER BY node")
        .fetch_all(model.pool())
        .await
        .unwrap();
    let latest: Vec<(String, i64)> = latest.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected: Vec<(String, i64)> = (0..5)
        .map(|n| (format!("n{n}"), TS_MS + (315 + n) * 100))
        .collect();
    assert_eq!(
        latest, expected,
        "the samples after it are projected; n7 has no row"
    );
    assert_same_as_rebuild(&js, &model).await;
}
