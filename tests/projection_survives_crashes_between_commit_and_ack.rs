//! A projection that dies between committing a batch and acknowledging it, again and again,
//! and is restarted each time, ends with the same read model as a rebuild of the whole log
//! into an empty database: no row lost, none doubled. Messages delivered again at or below
//! the stored sequence change nothing.

mod knowledge_log;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use knowledge_log::{publish_scripted_run, telemetry};
use mapek_bus::{Publisher, layout};
use mapek_domain::Phase;
use mapek_knowledge::{
    KnowledgeError, ProjectionConfig, ProjectionStats, ReadModel, project_with, rebuild,
};
use mapek_testkit::TestDatabase;
use mapek_testkit::samples::TS_MS;
use mapek_testkit::server_with_streams;

#[tokio::test]
async fn a_crashed_projection_resumes_to_the_same_rows_as_a_rebuild() {
    let (_server, js) = server_with_streams().await;
    publish_scripted_run(&js).await;
    let mut p = Publisher::new(js.clone());
    for i in 0..600 {
        let n = format!("m{}", i % 37);
        p.publish(&telemetry(
            &n,
            TS_MS + i * 50,
            (i % 100) as f64 / 100.0,
            None,
        ))
        .await
        .unwrap();
    }
    assert_eq!(p.finish().await.failed, 0);

    let db = TestDatabase::create().await;
    let model = ReadModel::connect(db.url()).await.unwrap();
    model.migrate().await.unwrap();

    // Crash after every commit whose last sequence is a multiple of 3, once per point.
    let crashed: Arc<Mutex<BTreeSet<(String, u64)>>> = Arc::default();
    let seen = crashed.clone();
    let hook: mapek_knowledge::CrashHook = Arc::new(move |stream, seq| {
        seq % 3 == 0 && seen.lock().unwrap().insert((stream.to_owned(), seq))
    });
    let mut crashes = 0;
    let mut monitor_ack_checked = false;
    loop {
        let config = ProjectionConfig {
            // Small batches: telemetry is split over two streams, each a few hundred long.
            batch: 8,
            telemetry_batch: 8,
            until_caught_up: true,
            crash_after_commit: Some(hook.clone()),
            ..ProjectionConfig::default()
        };
        let run = project_with(
            js.clone(),
            model.clone(),
            None,
            config,
            ProjectionStats::default(),
            std::future::pending(),
        );
        match tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap()
        {
            Ok(()) => break,
            Err(KnowledgeError::Crashed { stream, seq }) => {
                crashes += 1;
                let telemetry = layout::phase_of_stream(&stream) == Some(Phase::Monitor);
                if telemetry && !monitor_ack_checked {
                    // The crash came before the ack: the server still has the batch pending.
                    let mut s = js.get_stream(&stream).await.unwrap();
                    let info = s.consumer_info("knowledge-sql-monitor").await.unwrap();
                    assert!(
                        info.ack_floor.stream_sequence < seq,
                        "ack floor {} is below the committed {seq}",
                        info.ack_floor.stream_sequence
                    );
                    let _ = s.info().await;
                    monitor_ack_checked = true;
                }
            }
            Err(e) => panic!("the projection failed: {e}"),
        }
        assert!(crashes < 500, "the projection keeps crashing");
    }
    assert!(
        crashes >= 10,
        "the test crashed the projection often: {crashes}"
    );
    assert!(
        monitor_ack_checked,
        "a monitor batch crashed before its ack"
    );

    // Everything again from sequence 1: all of it at or below the stored sequences.
    let again = ProjectionStats::default();
    project_with(
        js.clone(),
        model.clone(),
        None,
        ProjectionConfig {
            until_caught_up: false,
            redeliver_from: Some(1),
            ..ProjectionConfig::default()
        },
        again.clone(),
        async {
            // Long enough to deliver the whole log again.
            tokio::time::sleep(Duration::from_secs(3)).await;
        },
    )
    .await
    .unwrap();
    assert!(
        again.phase(Phase::Monitor).redelivered >= 600,
        "the whole monitor stream came again"
    );
    assert_eq!(
        again.total(|c| &c.applied),
        0,
        "and nothing was applied twice"
    );

    let fresh = TestDatabase::create().await;
    let rebuilt = ReadModel::connect(fresh.url()).await.unwrap();
    rebuilt.migrate().await.unwrap();
    let stats = rebuild(&js, &rebuilt).await.unwrap();
    assert_eq!(stats.phase(Phase::Monitor).applied, 644);

    let (a, b) = (
        model.snapshot().await.unwrap(),
        rebuilt.snapshot().await.unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "the resumed read model and the rebuild differ");
    }
}
