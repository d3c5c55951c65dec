//! The incident index on qdrant-edge (the embedded default): a user's past incidents go in,
//! and the nearest ones the planner may use come out, filtered by kind and by what was known
//! at a moment, ties broken by incident id, and they survive a reopen.

use std::collections::BTreeMap;

use mapek_domain::{ActionKind, Symptom, SymptomKind};
use mapek_sim::rng::SplitMix64;
use mapek_testkit::samples;
use mapek_vectors::{EdgeIndex, Incident, IncidentIndex, Offsets, SimilarQuery, Tuning};

const T0: i64 = 1_795_867_200_000;

/// The incident `s` opened, `action` decided at once, and, if `resolved` says so, judged 30 s
/// later.
fn incident(s: &Symptom, action: ActionKind, resolved: Option<bool>) -> Incident {
    let (d, o) = samples::closing(s, action, s.ts_ms + 30_000, resolved.unwrap_or_default());
    let mut i = Incident::folded(s, Some(&d), resolved.is_some().then_some(&o));
    assert_eq!(i.opened_ms, Some(s.ts_ms));
    assert!(i.decisions.contains_key(&d.decision_id));
    assert_eq!(i.ready, resolved.is_some());
    if resolved.is_some() {
        let again = i.apply_outcome(&o);
        assert!(!again, "the same outcome twice changes nothing");
    }
    i
}

fn ids(hits: &[mapek_vectors::Similar]) -> Vec<&str> {
    hits.iter()
        .map(|h| h.incident.incident_id.as_str())
        .collect()
}

#[tokio::test]
async fn past_incidents_are_found_by_similarity_kind_and_time_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("incidents");
    let index = EdgeIndex::open(&path).unwrap();

    let a = samples::cpu_symptom("a", "n1", T0, 0.97);
    let b = samples::cpu_symptom("b", "n2", T0 + 60_000, 0.97);
    let c = samples::cpu_symptom("c", "n3", T0 + 120_000, 0.92);
    let later = samples::cpu_symptom("later", "n4", T0 + 600_000, 0.97);
    let open = samples::cpu_symptom("open", "n5", T0 + 10_000, 0.97);
    let mut other = samples::symptom();
    other.incident_id = "latency".into();
    let incidents = vec![
        incident(&a, ActionKind::Escalate, Some(false)),
        incident(&b, ActionKind::RestartService, Some(true)),
        incident(&c, ActionKind::RestartService, Some(true)),
        incident(&later, ActionKind::RestartService, Some(true)),
        incident(&open, ActionKind::RestartService, None),
        incident(&other, ActionKind::Reroute, Some(true)),
    ];
    assert!(!incidents[4].ready, "no outcome yet: not for the planner");
    let offsets = Offsets {
        analyze: 7,
        plan: 5,
        knowledge: 3,
    };
    index.write(incidents, offsets).await.unwrap();
    assert_eq!(index.count().await.unwrap(), 6);
    assert_eq!(index.offsets().await.unwrap(), offsets);

    // A new CPU incident at T0 + 200 s: a and b are identical to it (0.97), c is a little
    // further; `later` was judged after it, `open` has no outcome, `latency` is another kind.
    let now = samples::cpu_symptom("now", "n9", T0 + 200_000, 0.97);
    let hits = index
        .search(SimilarQuery::for_symptom(&now, 5))
        .await
        .unwrap();
    assert_eq!(
        ids(&hits),
        ["a", "b", "c"],
        "ties by incident id, nearest first"
    );
    assert!(hits[0].score > 0.999 && hits[0].score == hits[1].score);
    assert!(hits[2].score < hits[1].score);
    assert_eq!(hits[0].incident.action, Some(ActionKind::Escalate));
    assert_eq!(hits[0].incident.resolved, Some(false));
    assert_eq!(hits[1].incident.resolved, Some(true));

    // What was known at T0 + 100 s: a (judged at T0 + 30 s) and b (T0 + 90 s), not c
    // (T0 + 150 s): replay asks this way, so the past is never judged with the future.
    let then = samples::cpu_symptom("then", "n9", T0 + 100_000, 0.97);
    let hits = index
        .search_now(&SimilarQuery::for_symptom(&then, 5))
        .unwrap();
    assert_eq!(ids(&hits), ["a", "b"]);

    // At most k, and the incident itself is left out.
    let hits = index.search_now(&SimilarQuery::for_symptom(&b, 1)).unwrap();
    assert_eq!(ids(&hits), ["a"]);

    let got = index.get("c").await.unwrap().expect("c is stored");
    assert_eq!(got.kind, Some(SymptomKind::CpuSaturation));
    assert_eq!(got.features.len(), mapek_domain::plan::FEATURE_DIM);
    assert!(index.get("nope").await.unwrap().is_none());

    drop(index);
    let index = EdgeIndex::open(&path).unwrap();
    assert_eq!(
        index.offsets().await.unwrap(),
        offsets,
        "offsets survive a reopen"
    );
    let hits = index
        .search_now(&SimilarQuery::for_symptom(&now, 5))
        .unwrap();
    assert_eq!(ids(&hits), ["a", "b", "c"], "and so do the points");

    index.clear().await.unwrap();
    assert_eq!(index.count().await.unwrap(), 0);
    assert_eq!(index.offsets().await.unwrap(), Offsets::default());
}

#[test]
fn an_index_that_cannot_be_opened_names_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let err = EdgeIndex::open(&file).unwrap_err().to_string();
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(
        err.starts_with("cannot open the incident index at"),
        "{err}"
    );
}

#[test]
fn an_index_open_elsewhere_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let first = EdgeIndex::open(dir.path()).unwrap();
    let err = EdgeIndex::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert!(err.contains("allows one at a time"), "{err}");
    drop(first);
    EdgeIndex::open(dir.path()).expect("free again once the first is closed");
}

/// A latency incident with evidence drawn from `rng`: four features vary continuously, so no
/// two incidents tie.
fn latency_incident(i: u64, rng: &mut SplitMix64) -> (Symptom, Incident) {
    let mut draw = || rng.unit();
    let mut s = samples::symptom();
    s.incident_id = format!("lat{i:05}");
    s.symptom_id = format!("s-lat{i:05}");
    s.ts_ms = T0 + i as i64 * 1_000;
    s.severity = 1.0 + 5.0 * draw();
    s.evidence = BTreeMap::from([
        ("p95_latency_ms".to_owned(), 100.0 * s.severity),
        ("latency_limit_ms".to_owned(), 100.0),
        ("latency_threshold_ms".to_owned(), 100.0),
        ("baseline_latency_ms".to_owned(), 5.0 + 55.0 * draw()),
        ("worst_link_latency_ms".to_owned(), 50.0 + 550.0 * draw()),
    ]);
    let action = [ActionKind::Reroute, ActionKind::RateLimit][(i % 2) as usize];
    let incident = incident(&s, action, Some(draw() < 0.5));
    (s, incident)
}

/// An index under `dir` with thresholds a hundred times lower than the default, so 3 000
/// incidents behave as a few hundred thousand would: segments get graphs, and a kind's
/// candidates are too many to scan.
fn hundredfold_lower_thresholds(dir: &std::path::Path) -> EdgeIndex {
    let tuning = Tuning {
        indexing_threshold_kb: 20,
        full_scan_threshold_kb: 4,
        ..Tuning::default()
    };
    EdgeIndex::open_tuned(&dir.join("incidents"), tuning).unwrap()
}

/// Writes `n` latency incidents drawn from `rng`, 500 a write.
async fn write_latency_incidents(index: &EdgeIndex, n: u64, rng: &mut SplitMix64) {
    let mut batch = Vec::new();
    for i in 0..n {
        batch.push(latency_incident(i, rng).1);
        if batch.len() == 500 || i + 1 == n {
            index
                .write(std::mem::take(&mut batch), Offsets::default())
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn a_large_index_is_searched_through_its_graph_and_finds_what_an_exact_search_finds() {
    let dir = tempfile::tempdir().unwrap();
    let index = hundredfold_lower_thresholds(dir.path());
    let mut rng = SplitMix64::new(7);
    // Each write builds the graphs that are due.
    write_latency_incidents(&index, 3_000, &mut rng).await;
    assert_eq!(index.count().await.unwrap(), 3_000);
    assert!(
        index.indexed_vectors() >= 1_000,
        "the writes built graphs: {} of 3000 vectors indexed",
        index.indexed_vectors()
    );

    // New incidents after all of them: the planner's question, through the graph and by an
    // exact scan.
    let (mut found, mut expected) = (0, 0);
    for i in 0..100 {
        let (now, _) = latency_incident(10_000 + i, &mut rng);
        let query = SimilarQuery::for_symptom(&now, 5);
        let graph = index.search_now(&query).unwrap();
        let exact = index.search_exact(&query).unwrap();
        assert_eq!(exact.len(), 5);
        assert_eq!(graph.len(), 5, "the graph search finds k incidents too");
        assert!(
            graph.windows(2).all(|w| w[0].score >= w[1].score),
            "best first"
        );
        expected += exact.len();
        found += exact
            .iter()
            .filter(|e| graph.iter().any(|g| g.incident == e.incident))
            .count();
    }
    let recall = found as f64 / expected as f64;
    assert!(
        recall >= 0.95,
        "the graph search found {found} of the {expected} nearest incidents"
    );

    // What was known before a moment still holds through the graph.
    let (mut early, _) = latency_incident(20_000, &mut rng);
    early.ts_ms = T0 + 100_000;
    let hits = index
        .search_now(&SimilarQuery::for_symptom(&early, 5))
        .unwrap();
    assert!(!hits.is_empty());
    assert!(
        hits.iter()
            .all(|h| h.incident.outcome_ms.unwrap() < early.ts_ms),
        "only incidents judged before {}",
        early.ts_ms
    );
}

#[tokio::test]
async fn writes_held_from_optimizing_build_the_graphs_once_when_released() {
    // What `mapek knowledge rebuild` does: write everything, then build the graphs.
    let dir = tempfile::tempdir().unwrap();
    let index = hundredfold_lower_thresholds(dir.path());
    index.hold_optimizing(true).await.unwrap();
    let mut rng = SplitMix64::new(7);
    write_latency_incidents(&index, 3_000, &mut rng).await;
    assert_eq!(index.indexed_vectors(), 0, "no graph while held");
    let (now, _) = latency_incident(10_000, &mut rng);
    let query = SimilarQuery::for_symptom(&now, 5);
    let before = index.search_now(&query).unwrap();
    assert_eq!(before.len(), 5, "searches answer meanwhile");

    index.hold_optimizing(false).await.unwrap();
    assert!(
        index.indexed_vectors() >= 1_000,
        "released, the graphs are built: {} of 3000 vectors indexed",
        index.indexed_vectors()
    );
    assert_eq!(index.count().await.unwrap(), 3_000);
    let after = index.search_exact(&query).unwrap();
    assert_eq!(ids(&after), ids(&before), "the same nearest incidents");
}

#[tokio::test]
async fn incidents_equally_near_are_settled_by_incident_id_however_many_tie() {
    // Forty CPU incidents with the same features; the smallest ids are the newest, so an
    // engine that meets the candidates in time order (or in the order they were written)
    // finds the largest ids first.
    let tied = |i: i64| {
        let s = samples::cpu_symptom(&format!("t{i:02}"), "n1", T0 + (40 - i) * 1_000, 0.95);
        incident(&s, ActionKind::RestartService, Some(true))
    };
    let dir = tempfile::tempdir().unwrap();
    let index = EdgeIndex::open(&dir.path().join("incidents")).unwrap();
    for chunk in (0..40).rev().map(tied).collect::<Vec<_>>().chunks(10) {
        index
            .write(chunk.to_vec(), Offsets::default())
            .await
            .unwrap();
    }
    let now = samples::cpu_symptom("now", "n9", T0 + 600_000, 0.95);
    for k in [1, 3, 5] {
        let query = SimilarQuery::for_symptom(&now, k);
        let expected: Vec<String> = (0..k).map(|i| format!("t{i:02}")).collect();
        let hits = index.search_now(&query).unwrap();
        assert_eq!(
            ids(&hits),
            expected,
            "k = {k}: the smallest ids of the ties"
        );
        assert_eq!(ids(&index.search_exact(&query).unwrap()), expected);
    }
}
