//! Links: flapping, and blame that stays put.

use super::*;
use SymptomKind::{LinkFlapping, PacketLoss};
use SymptomState::{Open, Resolve, Update};

/// n1's link to n2 changes state on every sample up to `flaps_until`; its link to n3 is steady.
fn flapping_until(flaps_until: i64) -> impl Fn(Sample) -> Sample {
    move |s: Sample| {
        let secs = (s.0.ts_ms - T0) / 1000;
        let up = secs > flaps_until || secs % 2 == 0;
        s.link("n2", up, 5.0, 0.0).link("n3", true, 5.0, 0.0)
    }
}

#[test]
fn a_flapping_link_opens_with_its_peer_on_the_third_breach() {
    // Sample j has had j transitions: 4, 5, 6 at samples 4, 5, 6 are three breaches in a row.
    let flap = flapping_until(i64::MAX);
    given(series("n1", 0..6, &flap))
        .then_nothing()
        .when(flap(at("n1", 6)))
        .then_expect(|out| {
            let s = only(out, LinkFlapping, Open);
            assert_eq!(s.peer, Some(id("n2")));
            assert_eq!(s.severity, 1.5);
            assert_eq!(s.evidence["transitions"], 6.0);
            assert_eq!(s.evidence["flap_threshold"], 4.0);
            assert_eq!(
                s.summary,
                "link to n2 flapping: 6 up/down transitions in the last 20 samples (threshold 4)"
            );
        });
}

#[test]
fn flapping_resolves_once_the_transitions_leave_the_window() {
    // The last transition is at sample 6. A window of 20 reports holds 19 transitions, so
    // fewer than 4 remain from sample 22; 22 to 26 are the five clean evaluations.
    let flap = flapping_until(6);
    given(series("n1", 0..26, &flap))
        .then_expect(|out| {
            let states: Vec<_> = out.iter().map(|s| s.state).collect();
            assert_eq!(
                states,
                [Open, Update],
                "an update as the count falls from 6 to 4"
            );
        })
        .when(flap(at("n1", 26)))
        .then_expect(|out| {
            let s = only(out, LinkFlapping, Resolve);
            assert_eq!(s.peer, Some(id("n2")));
            assert!(
                s.summary.starts_with("link to n2 steady again"),
                "{}",
                s.summary
            );
        });
}

#[test]
fn a_link_that_is_down_and_stays_down_is_not_flapping() {
    let down = |s: Sample| s.link("n2", false, 0.0, 1.0);
    given(series("n1", 0..30, down)).then_nothing();
}

#[test]
fn blame_stays_with_the_first_bad_link_while_it_is_still_bad() {
    // n2 and n3 are equally lossy: n2 is blamed, first by name. Then n3 gets a little worse;
    // n2 is still over the threshold, so the blame and the incident stay as they are.
    let both = |n3: f64| {
        move |s: Sample| {
            s.link("n2", true, 5.0, 0.3)
                .link("n3", true, 5.0, n3)
                .link("n4", true, 5.0, 0.0)
        }
    };
    given(series("n1", 0..3, both(0.3)))
        .then_expect(|out| assert_eq!(only(out, PacketLoss, Open).peer, Some(id("n2"))))
        .when_all(series("n1", 3..20, both(0.33)))
        .then_nothing()
        // Once n2 recovers, n3 is the one to route around: an update names it.
        .when_all(series("n1", 20..40, |s| {
            s.link("n2", true, 5.0, 0.0)
                .link("n3", true, 5.0, 0.33)
                .link("n4", true, 5.0, 0.0)
        }))
        .then_expect(|out| {
            let s = only(out, PacketLoss, Update);
            assert_eq!(s.peer, Some(id("n3")));
        });
}

#[test]
fn a_link_not_reported_for_a_window_is_forgotten() {
    let scenario = given(series("n1", 0..3, |s| s.link("n2", true, 5.0, 0.0))).when_all(series(
        "n1",
        3..30,
        |s| s.link("n3", true, 5.0, 0.0),
    ));
    let node = &scenario.analyzer().nodes[0];
    assert_eq!(node.links.len(), 1);
}
