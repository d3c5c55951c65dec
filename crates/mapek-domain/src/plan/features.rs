//! The feature vector of an incident: what makes two incidents alike, as numbers.
//!
//! The knowledge store finds past incidents like a new one by the cosine similarity of these
//! vectors, so every feature is scaled to `[0, 1]` and a feature that does not apply to a
//! kind of symptom is 0. The vector is built from the incident's opening symptom only: what
//! the planner sees when it decides, so a past incident and the new one are compared on the
//! same footing. It is pure and deterministic (no map iteration reaches the output), so the
//! same symptom always gives the same bits, in the live projection and in replay.
//!
//! `docs/knowledge-vectors.md` documents each feature; [`FEATURES`] names them in order.
//! Changing a feature changes every stored vector: bump [`FEATURES_VERSION`] and rebuild the
//! index (`mapek knowledge rebuild`).

use crate::{Symptom, SymptomKind};

/// The version of the feature layout, stored with every point, so an index built with
/// another layout is recognised and rebuilt rather than compared wrongly.
pub const FEATURES_VERSION: u32 = 1;

/// How many features a vector has.
pub const DIM: usize = 17;

/// The weight of the kind's one-hot features. Searches already keep to one kind, so the
/// one-hot only matters when a store is searched across kinds; at 0.5 it keeps two incidents
/// of the same kind from looking alike on the kind alone, which would crowd the score near 1
/// and leave the statistics little room to tell incidents apart.
pub const KIND_WEIGHT: f32 = 0.5;

/// The features' names, in vector order.
pub const FEATURES: [&str; DIM] = [
    "kind.high_latency",
    "kind.packet_loss",
    "kind.node_silent",
    "kind.cpu_saturation",
    "kind.memory_saturation",
    "kind.link_flapping",
    "severity",
    "has_peer",
    "latency_over_limit",
    "latency_over_baseline",
    "link_latency_over_threshold",
    "loss_over_threshold",
    "link_loss_over_threshold",
    "cpu",
    "mem",
    "silence_over_threshold",
    "transitions_over_threshold",
];

/// The feature vector of the incident `symptom` opens (or of any symptom, read the same way).
pub fn features(symptom: &Symptom) -> [f32; DIM] {
    let ev = |key: &str| symptom.evidence.get(key).copied();
    let mut v = [0.0f32; DIM];
    let kind = SymptomKind::ALL
        .iter()
        .position(|k| *k == symptom.kind)
        .expect("ALL holds every kind");
    v[kind] = KIND_WEIGHT;
    v[6] = squash(symptom.severity);
    v[7] = if symptom.peer.is_some() { 1.0 } else { 0.0 };
    // The percentile is configurable (`p95_latency_ms`, `p99_latency_ms`): take the one
    // present. The evidence map is ordered, so the first match is always the same key.
    let percentile = symptom
        .evidence
        .iter()
        .find(|(k, _)| k.starts_with('p') && k.ends_with("_latency_ms"))
        .map(|(_, x)| *x);
    v[8] = ratio(percentile, ev("latency_limit_ms"));
    v[9] = ratio(percentile, ev("baseline_latency_ms"));
    v[10] = ratio(ev("worst_link_latency_ms"), ev("latency_threshold_ms"));
    v[11] = ratio(ev("mean_loss"), ev("loss_threshold"));
    v[12] = ratio(ev("worst_link_loss"), ev("loss_threshold"));
    v[13] = unit(ev("mean_cpu"));
    v[14] = unit(ev("mean_mem"));
    v[15] = ratio(ev("silent_for_ms"), ev("silent_after_ms"));
    v[16] = ratio(ev("transitions"), ev("flap_threshold"));
    v
}

/// `x / (1 + x)`: 0 at 0, 0.5 at 1 (at the threshold), towards 1 as `x` grows, so a ratio of
/// any size fits `[0, 1)` and differences near the threshold count most. Negative or
/// non-finite input counts as 0.
fn squash(x: f64) -> f32 {
    if !x.is_finite() || x <= 0.0 {
        return 0.0;
    }
    (x / (1.0 + x)) as f32
}

/// `a / b`, squashed; 0 when either is missing or `b` is not positive.
fn ratio(a: Option<f64>, b: Option<f64>) -> f32 {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => squash(a / b),
        _ => 0.0,
    }
}

/// A share already in `[0, 1]` (cpu, memory), clamped; 0 when missing.
fn unit(x: Option<f64>) -> f32 {
    match x {
        Some(x) if x.is_finite() => x.clamp(0.0, 1.0) as f32,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SymptomState;

    fn symptom(kind: SymptomKind, severity: f64, evidence: &[(&str, f64)]) -> Symptom {
        Symptom {
            symptom_id: "s".into(),
            incident_id: "i".into(),
            node: crate::NodeId::new("n1").unwrap(),
            ts_ms: 0,
            kind,
            state: SymptomState::Open,
            severity,
            peer: None,
            evidence: evidence
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            summary: String::new(),
            caused_by: "t".into(),
        }
    }

    #[test]
    fn every_feature_is_in_the_unit_interval_and_named() {
        let s = symptom(
            SymptomKind::HighLatency,
            7.5,
            &[
                ("p95_latency_ms", 750.0),
                ("latency_limit_ms", 100.0),
                ("baseline_latency_ms", 20.0),
                ("latency_threshold_ms", 100.0),
                ("worst_link_latency_ms", 1e9),
            ],
        );
        let v = features(&s);
        assert!(v.iter().all(|x| (0.0..=1.0).contains(x)), "{v:?}");
        assert_eq!(v[0], KIND_WEIGHT);
        assert!((v[8] - 7.5 / 8.5).abs() < 1e-6, "{}", v[8]);
        assert!(
            v[9] > v[8],
            "37.5x the baseline is further out than 7.5x the limit"
        );
        assert_eq!(FEATURES[8], "latency_over_limit");
    }

    #[test]
    fn cpu_saturation_reads_the_mean_and_ignores_what_does_not_apply() {
        let s = symptom(
            SymptomKind::CpuSaturation,
            1.07,
            &[
                ("mean_cpu", 0.97),
                ("cpu_threshold", 0.9),
                ("samples", 20.0),
            ],
        );
        let v = features(&s);
        assert_eq!(v[3], KIND_WEIGHT);
        assert!((v[13] - 0.97).abs() < 1e-6);
        let others: f32 = v[8..13].iter().chain(&v[14..]).sum();
        assert_eq!(others, 0.0);
    }

    #[test]
    fn the_same_symptom_gives_the_same_bits_and_nonsense_gives_zero() {
        let s = symptom(
            SymptomKind::PacketLoss,
            f64::NAN,
            &[("mean_loss", 0.2), ("loss_threshold", 0.0)],
        );
        let (a, b) = (features(&s), features(&s));
        assert_eq!(a.map(f32::to_bits), b.map(f32::to_bits));
        assert_eq!(a[6], 0.0, "a NaN severity counts as 0");
        assert_eq!(a[11], 0.0, "a zero threshold gives no ratio");
    }
}
