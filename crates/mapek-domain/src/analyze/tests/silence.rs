//! Silence: judged by the watermark of event time, never by the wall clock.

use super::*;
use SymptomKind::NodeSilent;
use SymptomState::{Open, Resolve, Update};

/// n1 and n2 report every second until n2 stops after second 10; n1 goes on to second 39.
fn n2_stops_at_10() -> Vec<Telemetry> {
    let mut both = Vec::new();
    for s in 0..=10 {
        both.push(at("n1", s).cpu(0.1).into());
        both.push(at("n2", s).cpu(0.1).into());
    }
    [both, series("n1", 11..40, |s| s.cpu(0.1))].concat()
}

#[test]
fn a_node_that_stops_is_silent_once_another_moves_the_watermark_past_it() {
    given(n2_stops_at_10())
        .then_nothing()
        .when(at("n1", 40).cpu(0.1))
        .then_expect(|out| {
            let s = only(out, NodeSilent, Open);
            let cause: Telemetry = at("n1", 40).cpu(0.1).into();
            assert_eq!(s.node, id("n2"));
            assert_eq!(s.caused_by, cause.event_id);
            assert_eq!(s.ts_ms, cause.ts_ms);
            assert_eq!(s.severity, 1.0);
            assert_eq!(s.evidence["silent_for_ms"], 30_000.0);
            assert_eq!(s.evidence["last_seen_ms"], (T0 + 10_000) as f64);
            assert_eq!(s.evidence["watermark_ms"], (T0 + 40_000) as f64);
            assert_eq!(
                s.summary,
                "no telemetry for 30.0 s of event time (threshold 30.0 s)"
            );
            assert_eq!(
                s.incident_id,
                incident_id(&id("n2"), NodeSilent, T0 + 40_000)
            );
        });
}

#[test]
fn without_event_time_moving_on_nothing_is_silent() {
    // Late or replayed samples of n1 that do not pass second 10 never move the watermark,
    // however many arrive and however long the test takes.
    let mut both = Vec::new();
    for s in 0..=10 {
        both.push(at("n1", s).cpu(0.1).into());
        both.push(at("n2", s).cpu(0.1).into());
    }
    given(both)
        .when_all(
            (0..200)
                .map(|i| at("n1", i % 11).cpu(0.1 + i as f64 / 1000.0).into())
                .collect(),
        )
        .then_nothing();
}

#[test]
fn a_silent_node_resolves_when_it_reports_again() {
    let scenario = given(n2_stops_at_10())
        .when_all(series("n1", 40..50, |s| s.cpu(0.1)))
        .then_expect(|out| assert_eq!(out[0].state, Open));
    let opened = scenario.history()[0].incident_id.clone();
    scenario.when(at("n2", 50).cpu(0.1)).then_expect(|out| {
        let s = only(out, NodeSilent, Resolve);
        assert_eq!(s.node, id("n2"));
        assert_eq!(s.incident_id, opened);
        assert_eq!(s.evidence["gap_ms"], 40_000.0);
        assert_eq!(
            s.summary,
            "reporting again after 40.0 s of event time without telemetry"
        );
    });
}

#[test]
fn a_long_silence_updates_as_it_grows_not_on_every_sample() {
    given(n2_stops_at_10())
        .when_all(series("n1", 40..100, |s| s.cpu(0.1)))
        .then_expect(|out| {
            let states: Vec<_> = out.iter().map(|s| s.state).collect();
            assert_eq!(states[0], Open);
            let updates = states.iter().filter(|&&s| s == Update).count();
            assert_eq!(states.len(), 1 + updates, "{states:?}");
            // 30 s to 90 s is 3×: 1.2⁶ ≈ 3 at most six updates, not sixty.
            assert!((3..=6).contains(&updates), "{updates} updates");
            let severities: Vec<_> = out.iter().map(|s| s.severity).collect();
            assert!(
                severities.windows(2).all(|w| w[1] >= w[0] * 1.2),
                "{severities:?}"
            );
        });
}

#[test]
fn a_late_sample_from_a_silent_node_does_not_end_its_silence() {
    // A sample older than n2's last one (a retry, or a clock that jumped back) says nothing
    // about n2 now: by event time it is still silent. A current sample resolves it.
    let mut lagging = n2_stops_at_10();
    lagging.push(at("n1", 41).cpu(0.1).into());
    given(lagging)
        .then_expect(|out| {
            only(out, NodeSilent, Open);
        })
        .when(at("n2", 1).cpu(0.1))
        .then_nothing()
        .when(at("n2", 42).cpu(0.1))
        .then_expect(|out| {
            only(out, NodeSilent, Resolve);
        });
}

#[test]
fn silences_of_several_nodes_come_out_sorted_by_node_id() {
    let mut all = Vec::new();
    for s in 0..=10 {
        for node in ["n0", "n3", "n2", "n1"] {
            all.push(at(node, s).cpu(0.1).into());
        }
    }
    all.extend(series("n0", 11..40, |s| s.cpu(0.1)));
    given(all).when(at("n0", 40).cpu(0.1)).then_expect(|out| {
        let nodes: Vec<_> = out.iter().map(|s| s.node.as_str()).collect();
        assert_eq!(nodes, ["n1", "n2", "n3"]);
        assert!(out.iter().all(|s| s.kind == NodeSilent && s.state == Open));
    });
}
