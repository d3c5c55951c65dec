//! The incident index on a Qdrant server, through qdrant-client: the same points, filters
//! and offsets as the embedded engine. Runs when QDRANT_URL names a server (its gRPC port,
//! e.g. http://127.0.0.1:6334); without it, it says it is skipped.

use std::collections::BTreeMap;

use mapek_domain::{ActionKind, SymptomKind};
use mapek_testkit::samples;
use mapek_vectors::{Incident, IncidentIndex, Offsets, ServerIndex, SimilarQuery};

mod qdrant_server;

const T0: i64 = 1_795_867_200_000;

/// A CPU incident on n1 opened at `ts_ms`, `action` decided at once and judged 30 s later.
fn closed(incident: &str, ts_ms: i64, action: ActionKind, resolved: bool) -> Incident {
    let s = samples::cpu_symptom(incident, "n1", ts_ms, 0.97);
    let (d, o) = samples::closing(&s, action, ts_ms + 30_000, resolved);
    Incident::folded(&s, Some(&d), Some(&o))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_index_stores_searches_and_clears_like_the_embedded_one() {
    let Some(collection) = qdrant_server::TestCollection::new("index") else {
        return;
    };
    let index = collection.open().await;
    let offsets = Offsets {
        analyze: 3,
        plan: 2,
        knowledge: 1,
    };
    let points = vec![
        closed("a", T0, ActionKind::Escalate, false),
        closed("b", T0 + 60_000, ActionKind::RestartService, true),
        closed("late", T0 + 900_000, ActionKind::RestartService, true),
    ];
    index.write(points, offsets).await.unwrap();
    assert_eq!(index.offsets().await.unwrap(), offsets);
    assert_eq!(index.count().await.unwrap(), 3);
    let mut now = samples::symptom();
    (now.incident_id, now.ts_ms, now.kind) =
        ("now".into(), T0 + 200_000, SymptomKind::CpuSaturation);
    now.evidence = BTreeMap::from([("mean_cpu".into(), 0.97), ("cpu_threshold".into(), 0.9)]);
    let hits = index
        .search(SimilarQuery::for_symptom(&now, 5))
        .await
        .unwrap();
    let ids: Vec<_> = hits
        .iter()
        .map(|h| h.incident.incident_id.as_str())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(
        index
            .search_now(&SimilarQuery::for_symptom(&now, 1))
            .unwrap()
            .len(),
        1
    );
    assert!(index.get("b").await.unwrap().unwrap().ready);
    index.clear().await.unwrap();
    assert_eq!(index.count().await.unwrap(), 0);
    collection.delete().await;
}

#[tokio::test]
async fn a_server_that_does_not_answer_is_named_in_the_error() {
    // Port 9 (discard) on localhost: nothing listens there.
    let err = ServerIndex::connect("http://127.0.0.1:9", "x")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("http://127.0.0.1:9"), "{err}");
    assert!(err.contains("QDRANT_URL"), "{err}");
}
