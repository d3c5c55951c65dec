//! High latency: the window percentile against the absolute threshold and the baseline.

use super::*;
use SymptomKind::HighLatency;
use SymptomState::{Open, Resolve, Update};

#[test]
fn opens_on_the_third_breaching_sample_not_before() {
    given(series("n1", 0..2, |s| s.latency(300.0)))
        .then_nothing()
        .when(at("n1", 2).latency(300.0))
        .then_expect(|out| {
            let s = only(out, HighLatency, Open);
            let cause: Telemetry = at("n1", 2).latency(300.0).into();
            assert_eq!(s.node, id("n1"));
            assert_eq!(s.severity, 3.0);
            assert_eq!(s.peer, None);
            assert_eq!(s.ts_ms, cause.ts_ms);
            assert_eq!(s.caused_by, cause.event_id);
            assert_eq!(
                s.summary,
                "p95 latency 300.0 ms over 100 ms threshold (no baseline yet)"
            );
            assert_eq!(s.evidence["p95_latency_ms"], 300.0);
            assert_eq!(s.evidence["latency_threshold_ms"], 100.0);
            assert_eq!(s.evidence["samples"], 3.0);
        });
}

#[test]
fn breaches_the_baseline_far_below_the_absolute_threshold() {
    let normal = series("n1", 0..25, |s| s.latency(10.0));
    let slower = series("n1", 25..28, |s| s.latency(45.0));
    // One slow sample in twenty is under the p95; the second, third and fourth breach.
    given([normal, slower].concat())
        .then_nothing()
        .when(at("n1", 28).latency(45.0))
        .then_expect(|out| {
            let s = only(out, HighLatency, Open);
            assert_eq!(s.severity, 1.5);
            assert_eq!(s.evidence["baseline_latency_ms"], 10.0);
            assert_eq!(s.evidence["latency_limit_ms"], 30.0);
            assert_eq!(s.evidence["p95_latency_ms"], 45.0);
            assert_eq!(
                s.summary,
                "p95 latency 45.0 ms over 3× baseline 10.0 ms (30.0 ms)"
            );
        })
        // The breaching samples stayed out of the baseline: it is still 10 ms.
        .when_all(series("n1", 29..40, |s| s.latency(45.0)))
        .then_nothing()
        // Two samples at 60 ms, so that the p95 is 60 ms: a third more than when it opened.
        .when_all(series("n1", 40..42, |s| s.latency(60.0)))
        .then_expect(|out| {
            let s = only(out, HighLatency, Update);
            assert_eq!(s.severity, 2.0);
            assert_eq!(s.evidence["baseline_latency_ms"], 10.0);
        });
}

#[test]
fn the_baseline_is_not_used_before_it_has_enough_samples() {
    let normal = series("n1", 0..5, |s| s.latency(10.0));
    given(normal)
        .when_all(series("n1", 5..15, |s| s.latency(45.0)))
        .then_nothing();
}

#[test]
fn the_baseline_has_a_floor_so_jitter_near_zero_is_not_an_incident() {
    let idle = series("n1", 0..25, |s| s.latency(0.2));
    given(idle)
        .when_all(series("n1", 25..35, |s| s.latency(12.0)))
        .then_nothing()
        .when_all(series("n1", 35..40, |s| s.latency(16.0)))
        .then_expect(|out| {
            let s = only(out, HighLatency, Open);
            assert_eq!(s.evidence["baseline_latency_ms"], 5.0);
        });
}

#[test]
fn updates_only_when_the_severity_moves_by_a_fifth() {
    given(series("n1", 0..3, |s| s.latency(150.0)))
        .then_expect(|out| {
            only(out, HighLatency, Open);
        })
        .when_all(
            [160.0, 170.0, 190.0, 195.0, 200.0]
                .into_iter()
                .enumerate()
                .map(|(i, ms)| at("n1", 3 + i as i64).latency(ms).into())
                .collect(),
        )
        .then_expect(|out| {
            let s = only(out, HighLatency, Update);
            assert_eq!(s.severity, 1.9);
            assert_eq!(
                s.summary,
                "p95 latency 190.0 ms over 100 ms threshold (no baseline yet)"
            );
        });
}

#[test]
fn resolves_after_five_clean_evaluations_once_the_spike_leaves_the_window() {
    // Samples 0-2 are slow. The p95 of twenty stays slow while two of them are in the window
    // (through sample 20); samples 21 to 25 are the five clean evaluations.
    let spike = series("n1", 0..3, |s| s.latency(150.0));
    let calm = series("n1", 3..25, |s| s.latency(10.0));
    let scenario = given([spike, calm].concat());
    let opens = brief(scenario.history());
    assert_eq!(opens[0], ("n1".into(), HighLatency, Open));
    assert!(!opens.iter().any(|(_, _, state)| *state == Resolve));
    scenario
        .when(at("n1", 25).latency(10.0))
        .then_expect(|out| {
            let s = only(out, HighLatency, Resolve);
            assert!(s.severity < 1.0, "{s:?}");
            assert!(
                s.summary.starts_with("p95 latency 10.0 ms back under"),
                "{}",
                s.summary
            );
        });
}
