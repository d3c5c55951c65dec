//! A user runs the loop and queries the read model with SQL: nodes with their latest health,
//! incidents with their timeline, decisions with their reasons, actions, outcomes. Postgres
//! and SQLite hold the same rows, and an offset for each stream, telemetry's two included.

mod knowledge_log;

use knowledge_log::{project_all, publish_scripted_run};
use mapek_bus::layout;
use mapek_domain::Phase;
use mapek_knowledge::{Backend, PROJECTED, ReadModel};
use mapek_testkit::TestDatabase;
use mapek_testkit::samples::TS_MS;
use mapek_testkit::server_with_streams;

#[tokio::test]
async fn postgres_and_sqlite_hold_the_scripted_run() {
    let (_server, js) = server_with_streams().await;
    let script = publish_scripted_run(&js).await;
    let mut monitor = Vec::new();
    for stored in layout::streams_of(&js, Phase::Monitor).await.unwrap() {
        let mut stream = js.get_stream(&stored.name).await.unwrap();
        let held = stream.info().await.unwrap().state.messages;
        monitor.push((stored.name, held));
    }
    assert_eq!(monitor.len(), 2, "telemetry in two streams: {monitor:?}");
    assert_eq!(
        monitor.iter().map(|(_, n)| *n as usize).sum::<usize>(),
        script.telemetry
    );

    let db = TestDatabase::create().await;
    let pg = ReadModel::connect(db.url())
        .await
        .expect("connect to Postgres");
    assert_eq!(pg.backend(), Backend::Postgres);
    pg.migrate().await.expect("migrate Postgres");
    let stats = project_all(&js, &pg).await;

    let dir = tempfile::tempdir().unwrap();
    let lite = ReadModel::connect(dir.path().join("data/knowledge.sqlite").to_str().unwrap())
        .await
        .expect("open SQLite");
    assert_eq!(lite.backend(), Backend::Sqlite);
    lite.migrate().await.expect("migrate SQLite");
    // Twice: migrations are idempotent.
    lite.migrate().await.expect("migrate SQLite again");
    project_all(&js, &lite).await;

    for model in [&pg, &lite] {
        let which = model.url();
        assert_eq!(
            rows(
                model,
                "SELECT node, health, ts_ms, links_down FROM nodes ORDER BY node"
            )
            .await,
            vec![
                format!("n1|ok|{}|0", TS_MS + 19_000),
                format!("n2|degraded|{}|0", TS_MS + 19_000),
                format!("n3|degraded|{}|1", TS_MS + 2_000),
            ],
            "nodes in {which}"
        );
        assert_eq!(
            rows(
                model,
                "SELECT incident_id, node, kind, peer, state, opened_ms, resolved_ms, symptoms \
                 FROM incidents ORDER BY incident_id"
            )
            .await,
            vec![
                format!(
                    "inc-a|n1|packet_loss|n2|resolved|{}|{}|3",
                    TS_MS + 2_000,
                    TS_MS + 9_000
                ),
                format!("inc-b|n2|cpu_saturation|NULL|open|{}|NULL|1", TS_MS + 4_000),
            ],
            "incidents in {which}"
        );
        assert_eq!(
            rows(
                model,
                "SELECT symptom_id, state FROM symptoms WHERE incident_id = 'inc-a' ORDER BY ts_ms"
            )
            .await,
            vec!["s-a1|open", "s-a2|update", "s-a3|resolve"],
            "the timeline in {which}"
        );
        assert_eq!(
            rows(
                model,
                "SELECT decision_id, action, rule, policy_name, knowledge FROM decisions \
                 ORDER BY decision_id"
            )
            .await,
            vec![
                "d-a|reroute|latency-on-link|default|[{\"incident_id\":\"i-0\",\"score\":0.93,\"action\":\"reroute\",\"resolved\":true}]".to_owned(),
                "d-b|rate_limit|cpu-saturated|default|[{\"incident_id\":\"old-1\",\"score\":0.8,\"action\":\"rate_limit\",\"resolved\":true},{\"incident_id\":\"old-2\",\"score\":0.5,\"action\":\"restart_service\",\"resolved\":false}]".to_owned(),
            ],
            "decisions in {which}"
        );
        assert_eq!(
            rows(
                model,
                "SELECT result_id, status, attempts, dry_run, reason, escalation FROM actions \
                 ORDER BY result_id"
            )
            .await,
            vec![
                "r-a|applied|1|0||NULL",
                "r-b|refused|0|1|cooldown: n2 was acted on 10 s ago|{\"team\":\"netops\"}",
            ],
            "actions in {which}"
        );
        assert_eq!(
            rows(
                model,
                "SELECT outcome_id, result, recovery_ms FROM outcomes"
            )
            .await,
            vec!["o-a|resolved|7000"],
            "outcomes in {which}"
        );
        // Telemetry is split over the monitor streams (the server maps it): one offset for
        // each, through every message it holds.
        let mut want = vec![
            "MAPEK_ANALYZE|4|4|0".to_owned(),
            "MAPEK_EXECUTE|2|2|0".to_owned(),
            "MAPEK_KNOWLEDGE|1|1|0".to_owned(),
            format!("MAPEK_PLAN|3|2|{}", script.garbage),
        ];
        want.extend(monitor.iter().map(|(name, n)| format!("{name}|{n}|{n}|0")));
        want.sort();
        let offsets = model.offsets().await.unwrap();
        assert_eq!(
            offsets.len(),
            PROJECTED.len() - 1 + monitor.len(),
            "an offset per stream in {which}"
        );
        assert_eq!(
            rows(
                model,
                "SELECT stream, last_seq, applied, skipped FROM projection_offsets ORDER BY stream"
            )
            .await,
            want,
            "offsets in {which}"
        );
    }
    assert_eq!(
        stats.total(|c| &c.skipped),
        1,
        "the undecodable message is counted"
    );
    let (a, b) = (pg.snapshot().await.unwrap(), lite.snapshot().await.unwrap());
    assert!(a.len() > 10, "the snapshot holds the rows: {a:?}");
    assert_eq!(a, b, "Postgres and SQLite hold the same read model");
}

/// Rows of a query as text, one string per row, cells joined by `|`.
async fn rows(model: &ReadModel, sql: &str) -> Vec<String> {
    use sqlx::Row;
    let rows = sqlx::query(sql).fetch_all(model.pool()).await.expect(sql);
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    r.try_get::<Option<String>, _>(i)
                        .map(|v| v.unwrap_or_else(|| "NULL".into()))
                        .or_else(|_| r.try_get::<i64, _>(i).map(|v| v.to_string()))
                        .or_else(|_| r.try_get::<f64, _>(i).map(|v| v.to_string()))
                        .unwrap_or_else(|_| "?".into())
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}
