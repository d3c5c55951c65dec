//! The analyze phase alone: state per node with 10 000 nodes in one process, and the rate of
//! `Analyzer::step` against decoding the same telemetry (the least any consumer does) in the
//! same run.
//!
//! `cargo bench -p mapek --bench analyze_step`

use std::collections::BTreeMap;
use std::time::Instant;

use mapek_domain::{AnalyzeConfig, Analyzer, LinkSample, NodeId, Telemetry};

const NODES: usize = 10_000;
const ROUNDS: usize = 30;

fn sample(node: &NodeId, peers: &[NodeId], round: usize) -> Telemetry {
    let i = round as f64;
    let metrics = BTreeMap::from([
        ("latency_ms".to_owned(), 10.0 + (i * 7.0) % 5.0),
        ("loss".to_owned(), 0.001),
        ("cpu".to_owned(), 0.3 + (i % 3.0) / 100.0),
        ("mem".to_owned(), 0.5),
    ]);
    let mut t = Telemetry::new(
        node.clone(),
        1_795_867_200_000 + round as i64 * 1000,
        metrics,
    );
    t.links = peers
        .iter()
        .map(|p| LinkSample {
            peer: p.clone(),
            up: true,
            latency_ms: 4.0,
            loss: 0.0,
        })
        .collect();
    t
}

fn main() {
    let nodes: Vec<NodeId> = (0..NODES)
        .map(|i| NodeId::new(format!("n{i}")).unwrap())
        .collect();
    let mut events = Vec::with_capacity(NODES * ROUNDS);
    for round in 0..ROUNDS {
        for (i, node) in nodes.iter().enumerate() {
            let peers = [
                nodes[(i + 1) % NODES].clone(),
                nodes[(i + NODES - 1) % NODES].clone(),
                nodes[(i * 7 + 3) % NODES].clone(),
            ];
            events.push(sample(node, &peers, round));
        }
    }
    let encoded: Vec<Vec<u8>> = events
        .iter()
        .map(|e| mapek_codec::encode(e).unwrap())
        .collect();

    let start = Instant::now();
    let mut decoded = 0usize;
    for bytes in &encoded {
        let t: Telemetry = mapek_codec::decode(bytes).unwrap();
        decoded += t.metrics.len();
    }
    let decode_rate = encoded.len() as f64 / start.elapsed().as_secs_f64();

    let mut analyzer = Analyzer::new(AnalyzeConfig::default());
    let start = Instant::now();
    let mut symptoms = 0usize;
    for e in &events {
        symptoms += analyzer.step(e).len();
    }
    let step_rate = events.len() as f64 / start.elapsed().as_secs_f64();
    let per_node = analyzer.approx_state_bytes() as f64 / analyzer.nodes() as f64;

    println!(
        "analyze_step: {NODES} nodes x {ROUNDS} samples (4 metrics, 3 links each), 1 core of 2"
    );
    println!(
        "  raw Avro decode of the same telemetry: {decode_rate:>10.0} samples/s ({decoded} metrics read)"
    );
    println!(
        "  Analyzer::step:                        {step_rate:>10.0} samples/s ({symptoms} symptoms)"
    );
    println!("  ratio step/decode: {:.2}", step_rate / decode_rate);
    println!(
        "  analyze state: {per_node:.0} bytes per node with {} nodes (goal <= 2048)",
        analyzer.nodes()
    );
}
