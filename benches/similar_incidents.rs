//! Nearest-incident queries, the planner's question, over 100 000 past incidents in
//! qdrant-edge: p50 and p99 through mapek's `IncidentIndex` (filter, search, payload decoding,
//! tie-breaking) against qdrant-edge's raw search call with the same request, in the same run.
//! Also the exact search (a scan of every candidate, what an index below the indexing
//! threshold does) and the recall of the graph search against it: of the k incidents the
//! exact search finds, the share the planner's search finds too, or finds an equally near
//! incident in place of (by distance), and the share it finds itself (by identity).
//! MAPEK_BENCH_EF sets another graph beam than mapek's.
//!
//! `cargo bench -p mapek --bench similar_incidents`   (MAPEK_BENCH_INCIDENTS=100000 default)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mapek_domain::{
    Action, ActionKind, Decision, Outcome, OutcomeResult, Symptom, SymptomKind, SymptomState,
};
use mapek_sim::rng::SplitMix64;
use mapek_vectors::{EdgeIndex, Incident, IncidentIndex, Offsets, SimilarQuery};

const T0: i64 = 1_795_867_200_000;
const QUERIES: usize = 2_000;
const K: usize = 5;

/// An opening symptom of kind `i % 6`, with evidence like the detectors write.
fn symptom(rng: &mut SplitMix64, i: usize, ts_ms: i64) -> Symptom {
    let kind = SymptomKind::ALL[i % SymptomKind::ALL.len()];
    let ratio = rng.range(1.0, 6.0);
    let mut ev = BTreeMap::new();
    let mut put = |k: &str, v: f64| {
        ev.insert(k.to_owned(), v);
    };
    match kind {
        SymptomKind::HighLatency => {
            put("p95_latency_ms", 100.0 * ratio);
            put("latency_limit_ms", 100.0);
            put("latency_threshold_ms", 100.0);
            put("baseline_latency_ms", rng.range(5.0, 60.0));
            put("worst_link_latency_ms", 100.0 * rng.range(0.5, 6.0));
        }
        SymptomKind::PacketLoss => {
            put("mean_loss", 0.05 * ratio);
            put("loss_threshold", 0.05);
            put("worst_link_loss", 0.05 * rng.range(0.5, 6.0));
        }
        SymptomKind::NodeSilent => {
            put("silent_for_ms", 10_000.0 * ratio);
            put("silent_after_ms", 10_000.0);
        }
        SymptomKind::CpuSaturation => {
            put("mean_cpu", rng.range(0.9, 1.0));
            put("cpu_threshold", 0.9);
        }
        SymptomKind::MemorySaturation => {
            put("mean_mem", rng.range(0.9, 1.0));
            put("mem_threshold", 0.9);
        }
        SymptomKind::LinkFlapping => {
            put("transitions", (4.0 * ratio).round());
            put("flap_threshold", 4.0);
        }
    }
    let node = mapek_domain::NodeId::new(format!("n{}", rng.next_u64() % 1000)).unwrap();
    Symptom {
        symptom_id: format!("s{i}"),
        incident_id: format!("i{i:06}"),
        node,
        ts_ms,
        kind,
        state: SymptomState::Open,
        severity: ratio,
        peer: None,
        evidence: ev,
        summary: String::new(),
        caused_by: "t".into(),
    }
}

/// A closed incident: `s`, an action, an outcome 30 s later.
fn incident(rng: &mut SplitMix64, s: &Symptom) -> Incident {
    let action = [
        ActionKind::Reroute,
        ActionKind::RestartService,
        ActionKind::RateLimit,
        ActionKind::Escalate,
    ][(rng.next_u64() % 4) as usize];
    let decision = Decision {
        decision_id: format!("d-{}", s.incident_id),
        symptom_id: s.symptom_id.clone(),
        incident_id: s.incident_id.clone(),
        node: s.node.clone(),
        ts_ms: s.ts_ms,
        action: Action {
            kind: action,
            peer: None,
            service: None,
            params: BTreeMap::new(),
        },
        rule: "r".into(),
        reason: String::new(),
        policy_name: "p".into(),
        policy_hash: "h".into(),
        knowledge: Vec::new(),
        prev_hash: String::new(),
        signature: Vec::new(),
    };
    let outcome = Outcome {
        outcome_id: format!("o-{}", s.incident_id),
        decision_id: decision.decision_id.clone(),
        incident_id: s.incident_id.clone(),
        node: s.node.clone(),
        ts_ms: s.ts_ms + 30_000,
        result: if rng.next_u64().is_multiple_of(2) {
            OutcomeResult::Resolved
        } else {
            OutcomeResult::NotResolved
        },
        recovery_ms: None,
        detail: String::new(),
    };
    Incident::folded(s, Some(&decision), Some(&outcome))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let n: usize = std::env::var("MAPEK_BENCH_INCIDENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // MAPEK_BENCH_EF: another beam for the graph search than mapek's default.
    let tuning = mapek_vectors::Tuning {
        hnsw_ef: std::env::var("MAPEK_BENCH_EF")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(mapek_vectors::edge::HNSW_EF),
        // MAPEK_BENCH_SEGMENTS: another segment count than mapek's.
        segments: std::env::var("MAPEK_BENCH_SEGMENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(mapek_vectors::Tuning::default().segments),
        ..Default::default()
    };
    let index = EdgeIndex::open_tuned(&EdgeIndex::default_dir(dir.path()), tuning).unwrap();
    // Deterministic, so every run builds the same index.
    let mut rng = SplitMix64::new(7);

    let load = Instant::now();
    runtime.block_on(async {
        let mut batch = Vec::with_capacity(1000);
        for i in 0..n {
            let s = symptom(&mut rng, i, T0 + i as i64 * 1000);
            batch.push(incident(&mut rng, &s));
            if batch.len() == 1000 || i + 1 == n {
                index
                    .write(std::mem::take(&mut batch), Offsets::default())
                    .await
                    .unwrap();
            }
        }
    });
    let loaded = load.elapsed();
    let optimize = Instant::now();
    index.optimize().unwrap();
    let optimized = optimize.elapsed();

    // Queries: new incidents after all of them, so every past outcome is known and each
    // search filters by kind (a sixth of the index) and by time.
    let queries: Vec<SimilarQuery> = (0..QUERIES)
        .map(|i| {
            let s = symptom(&mut rng, n + i, T0 + (n + i) as i64 * 1000 + 60_000);
            SimilarQuery::for_symptom(&s, K)
        })
        .collect();
    // Warm up both paths (page cache, allocator).
    for q in queries.iter().take(200) {
        index.search_now(q).unwrap();
        index.shard().search(index.request(q)).unwrap();
    }
    let (mut ours, mut raw) = (Vec::with_capacity(QUERIES), Vec::with_capacity(QUERIES));
    let mut exact = Vec::with_capacity(QUERIES);
    let (mut found, mut recalled, mut near, mut expected) = (0, 0, 0, 0);
    // Interleaved, so both see the same machine load.
    let mut answers = Vec::with_capacity(QUERIES);
    for q in &queries {
        let t = Instant::now();
        let hits = index.shard().search(index.request(q)).unwrap();
        raw.push(t.elapsed());
        let t = Instant::now();
        let similar = index.search_now(q).unwrap();
        ours.push(t.elapsed());
        assert!(similar.len() <= K && hits.len() >= similar.len());
        found += similar.len();
        answers.push(similar);
    }
    // The exact searches in a pass of their own: a scan (and gathering ties) evicts the
    // graph from the caches, which would slow the next graph search.
    for (q, similar) in queries.iter().zip(&answers) {
        let t = Instant::now();
        let truth = index.search_exact(q).unwrap();
        exact.push(t.elapsed());
        for t in &truth {
            expected += 1;
            recalled += usize::from(similar.iter().any(|s| s.incident == t.incident));
        }
        // Many incidents share one feature vector (a flapping link's transition count, a
        // silent node's ratio): among equals, either search may pick others. Counted by
        // distance, a hit is as near as the exact k-th.
        if let Some(kth) = truth.last() {
            near += similar
                .iter()
                .filter(|s| s.score >= kth.score - 1e-6)
                .count()
                .min(truth.len());
        }
    }
    exact.sort();
    ours.sort();
    raw.sort();
    let (o50, o99) = (percentile(&ours, 0.5), percentile(&ours, 0.99));
    let (r50, r99) = (percentile(&raw, 0.5), percentile(&raw, 0.99));
    println!(
        "similar_incidents: {n} incidents in qdrant-edge ({} features, cosine), {QUERIES} \
         queries, k = {K}, same kind and known before, graph beam {}; 2 cores",
        mapek_domain::plan::FEATURE_DIM,
        tuning.hnsw_ef
    );
    println!(
        "  loaded in {:.1} s ({:.0} incidents/s through IncidentIndex::write), optimized in {:.1} s, \
         {} segments",
        loaded.as_secs_f64(),
        n as f64 / loaded.as_secs_f64(),
        optimized.as_secs_f64(),
        index.segments()
    );
    println!(
        "  raw EdgeShard::search:          p50 {:.3} ms, p99 {:.3} ms",
        ms(r50),
        ms(r99)
    );
    println!(
        "  IncidentIndex::search_now:      p50 {:.3} ms, p99 {:.3} ms (goal p99 <= 2 ms), {:.1} hits a query",
        ms(o50),
        ms(o99),
        found as f64 / QUERIES as f64
    );
    println!(
        "  ratio ours/raw: p50 {:.2}, p99 {:.2}",
        o50.as_secs_f64() / r50.as_secs_f64(),
        o99.as_secs_f64() / r99.as_secs_f64()
    );
    println!(
        "  exact search (scan, same filter): p50 {:.3} ms, p99 {:.3} ms",
        ms(percentile(&exact, 0.5)),
        ms(percentile(&exact, 0.99))
    );
    println!(
        "  recall@{K} of the planner's search against the exact one: {:.3} by distance ({near} \
         of {expected} as near as the exact k-th), {:.3} by identity (ties may differ)",
        near as f64 / expected.max(1) as f64,
        recalled as f64 / expected.max(1) as f64
    );
}
