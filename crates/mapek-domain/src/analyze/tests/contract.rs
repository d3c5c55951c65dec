//! What the rest of mapek relies on: ids, determinism, output order, state size, config.

use super::*;
use SymptomKind::{CpuSaturation, HighLatency, NodeSilent, PacketLoss};
use SymptomState::{Open, Resolve, Update};

#[test]
fn an_incident_keeps_its_id_and_each_symptom_is_named_by_its_cause() {
    // Means over two samples: 0.1, 0.1, 0.1 open; 0.2 and 0.15 update; five clean resolve.
    let config = AnalyzeConfig {
        window: 2,
        flap_transitions: 1,
        ..AnalyzeConfig::default()
    };
    let loss = [0.1, 0.1, 0.1, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let input: Vec<Telemetry> = loss
        .iter()
        .enumerate()
        .map(|(i, &x)| at("n1", i as i64).loss(x).into())
        .collect();
    let scenario = given_config(config.clone(), input.clone());
    let out = scenario.history();
    let states: Vec<_> = out.iter().map(|s| s.state).collect();
    assert_eq!(states, [Open, Update, Update, Resolve]);
    let opened = incident_id(&id("n1"), PacketLoss, T0 + 2_000);
    for s in out {
        assert_eq!(s.incident_id, opened);
        let cause = input.iter().find(|t| t.ts_ms == s.ts_ms).unwrap();
        assert_eq!(s.caused_by, cause.event_id);
        assert_eq!(s.symptom_id, symptom_id(&opened, s.state, &cause.event_id));
    }
    // The next incident of the same kind is another incident.
    let more = series("n1", 10..13, |s| s.loss(1.0));
    let again = given_config(config, [input, more].concat());
    let last = again.history().last().unwrap();
    assert_eq!(last.state, Open);
    assert_eq!(
        last.incident_id,
        incident_id(&id("n1"), PacketLoss, T0 + 12_000)
    );
}

/// A fixed, busy workload: 30 nodes, 300 seconds, every kind of trouble, a crash and a
/// return, from a linear congruential generator with a fixed seed (no randomness).
fn workload() -> Vec<Telemetry> {
    let mut x: u64 = 42;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as f64 / (1u64 << 31) as f64
    };
    let mut out = Vec::new();
    for sec in 0..300 {
        for n in 0..30 {
            // n7 crashes at 100 s and comes back at 200 s.
            if n == 7 && (100..200).contains(&sec) {
                continue;
            }
            let trouble = (sec / 50 + n) % 6 == 0;
            let r = next();
            let mut s = at(&format!("n{n:02}"), sec)
                .latency(if trouble {
                    150.0 + 100.0 * r
                } else {
                    10.0 + 5.0 * r
                })
                .loss(if trouble { 0.1 * r } else { 0.0 })
                .cpu(if trouble { 0.9 + 0.1 * r } else { 0.3 * r })
                .mem(0.5 + 0.5 * r);
            for p in 1..=3 {
                let peer = format!("n{:02}", (n + p * 7) % 30);
                let up = !(trouble && p == 1) || next() < 0.5;
                s = s.link(&peer, up, 5.0 + 50.0 * next(), 0.02 * next());
            }
            out.push(s.into());
        }
    }
    out
}

#[test]
fn the_same_telemetry_always_gives_the_same_symptoms() {
    let input = workload();
    let first = given(input.clone());
    let second = given(input);
    assert_eq!(first.history(), second.history());
    let kinds: std::collections::BTreeSet<_> = first.history().iter().map(|s| s.kind).collect();
    assert!(
        kinds.len() >= 5,
        "the workload should exercise the detectors: {kinds:?}"
    );
    assert!(
        first
            .history()
            .iter()
            .any(|s| s.kind == NodeSilent && s.state == Resolve),
        "n07 comes back"
    );
}

#[test]
fn a_step_emits_its_own_node_in_kind_order_then_other_nodes_silences_by_id() {
    let mut all = Vec::new();
    for s in 0..=10 {
        for node in ["n3", "n2"] {
            all.push(at(node, s).cpu(0.1).into());
        }
    }
    let bad = |s: Sample| s.cpu(1.0).loss(0.5).latency(500.0);
    all.extend(series("n1", 38..40, bad));
    given(all)
        .then_nothing()
        .when(bad(at("n1", 40)))
        .then_expect(|out| {
            let want = [
                ("n1".to_owned(), HighLatency, Open),
                ("n1".to_owned(), PacketLoss, Open),
                ("n1".to_owned(), CpuSaturation, Open),
                ("n2".to_owned(), NodeSilent, Open),
                ("n3".to_owned(), NodeSilent, Open),
            ];
            assert_eq!(brief(out), want);
        });
}

#[test]
fn ten_thousand_nodes_take_under_two_kib_each() {
    let mut a = Analyzer::new(AnalyzeConfig::default());
    let nodes = 10_000;
    for sec in 0..5 {
        for n in 0..nodes {
            let mut s = at(&format!("node-{n:05}"), sec)
                .latency(12.0)
                .loss(0.001)
                .cpu(0.4)
                .mem(0.6);
            for p in 1..=4 {
                let peer = format!("node-{:05}", (n + p * 97) % nodes);
                s = s.link(&peer, true, 4.0, 0.0);
            }
            a.step(&s.into());
        }
    }
    assert_eq!(a.nodes(), nodes);
    let per_node = a.approx_state_bytes() / nodes;
    eprintln!("analyze state: {per_node} bytes per node");
    assert!(per_node <= 2048, "{per_node} bytes per node");
    assert!(
        per_node >= 500,
        "{per_node} bytes per node is less than the windows alone"
    );
}

#[test]
fn config_defaults_and_refusals() {
    let empty: AnalyzeConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, AnalyzeConfig::default());
    let tuned: AnalyzeConfig = serde_json::from_str(r#"{"window": 30}"#).unwrap();
    assert_eq!(tuned.window, 30);
    assert_eq!(tuned.open_after, 3);

    let err = serde_json::from_str::<AnalyzeConfig>(r#"{"windw": 30}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `windw`"), "{err}");

    let cases = [
        (
            AnalyzeConfig {
                window: 0,
                ..Default::default()
            },
            "window is 0",
        ),
        (
            AnalyzeConfig {
                window: 65,
                ..Default::default()
            },
            "between 1 and 64",
        ),
        (
            AnalyzeConfig {
                loss_threshold: 1.5,
                ..Default::default()
            },
            "loss_threshold",
        ),
        (
            AnalyzeConfig {
                update_ratio: f64::NAN,
                ..Default::default()
            },
            "update_ratio",
        ),
        (
            AnalyzeConfig {
                window: 4,
                flap_transitions: 4,
                ..Default::default()
            },
            "flap_transitions",
        ),
    ];
    for (config, want) in cases {
        let err = Analyzer::try_new(config).unwrap_err().to_string();
        assert!(err.contains(want), "{err} should contain {want}");
    }
}
