//! Packet loss, CPU and memory: window means against thresholds, and lossy links.

use super::*;
use SymptomKind::{CpuSaturation, HighLatency, MemorySaturation, PacketLoss};
use SymptomState::{Open, Resolve};

#[test]
fn cpu_opens_at_a_mean_of_ninety_percent_and_resolves_after_five_clean() {
    given(series("n1", 0..2, |s| s.cpu(0.95)))
        .then_nothing()
        .when(at("n1", 2).cpu(0.95))
        .then_expect(|out| {
            let s = only(out, CpuSaturation, Open);
            assert_eq!(s.evidence["mean_cpu"], 0.95);
            assert_eq!(s.evidence["cpu_threshold"], 0.9);
            assert_eq!(
                s.summary,
                "mean cpu 95.0% over 90.0% threshold over 3 samples"
            );
        })
        // The first calm sample already brings the mean under 90 %: (3 × 0.95 + 0.1) / 4.
        .when_all(series("n1", 3..7, |s| s.cpu(0.1)))
        .then_nothing()
        .when(at("n1", 7).cpu(0.1))
        .then_expect(|out| {
            let s = only(out, CpuSaturation, Resolve);
            assert!(
                s.summary.contains("back under 90.0% threshold"),
                "{}",
                s.summary
            );
        });
}

#[test]
fn a_clean_evaluation_restarts_the_count_towards_opening() {
    let config = AnalyzeConfig {
        window: 2,
        flap_transitions: 1,
        ..AnalyzeConfig::default()
    };
    // Means over two samples: 1, 1, 0.55, 0.55, 1, 1, then the third breach in a row.
    let cpu = [1.0, 1.0, 0.1, 1.0, 1.0, 1.0];
    let samples = cpu
        .iter()
        .enumerate()
        .map(|(i, &x)| at("n1", i as i64).cpu(x).into())
        .collect();
    given_config(config, samples)
        .then_nothing()
        .when(at("n1", 6).cpu(1.0))
        .then_expect(|out| {
            only(out, CpuSaturation, Open);
        });
}

#[test]
fn memory_just_under_its_threshold_is_not_saturated() {
    given(series("n1", 0..10, |s| s.mem(0.94)))
        .then_nothing()
        .when_all(series("n1", 10..30, |s| s.mem(0.99)))
        .then_expect(|out| {
            // The mean crosses 0.95 at sample 12 ((10 × 0.94 + 3 × 0.99) / 13 = 0.9515),
            // and the third breach in a row is sample 14.
            let s = only(out, MemorySaturation, Open);
            assert_eq!(s.ts_ms, T0 + 14_000);
        });
}

#[test]
fn a_sample_without_the_metric_neither_opens_nor_resolves() {
    given(series("n1", 0..3, |s| s.cpu(1.0)))
        .when_all(series("n1", 3..30, |s| s.latency(10.0)))
        .then_nothing()
        .when_all(series("n1", 30..35, |s| s.cpu(0.0)))
        .then_expect(|out| {
            only(out, CpuSaturation, Resolve);
        });
}

#[test]
fn packet_loss_names_the_lossy_link_that_leads_it() {
    let lossy = |s: Sample| {
        s.loss(0.15)
            .link("n2", true, 5.0, 0.3)
            .link("n3", true, 5.0, 0.0)
    };
    given(series("n1", 0..2, lossy))
        .then_nothing()
        .when(lossy(at("n1", 2)))
        .then_expect(|out| {
            let s = only(out, PacketLoss, Open);
            assert_eq!(s.peer, Some(id("n2")));
            assert_eq!(s.severity, 6.0);
            assert_eq!(s.evidence["mean_loss"], 0.15);
            assert_eq!(s.evidence["link_loss"], 0.3);
            assert_eq!(
                s.summary,
                "loss: link to n2 at 30.0% over 5.0% threshold (node mean 15.0%)"
            );
        });
}

#[test]
fn one_lossy_link_opens_even_when_the_node_mean_is_low() {
    let one_bad = |s: Sample| {
        s.loss(0.01)
            .link("n2", true, 5.0, 0.4)
            .link("n3", true, 5.0, 0.0)
            .link("n4", true, 5.0, 0.0)
    };
    given(series("n1", 0..2, one_bad))
        .then_nothing()
        .when(one_bad(at("n1", 2)))
        .then_expect(|out| {
            let s = only(out, PacketLoss, Open);
            assert_eq!(s.peer, Some(id("n2")));
            assert_eq!(
                s.summary,
                "loss: link to n2 at 40.0% over 5.0% threshold (node mean 1.0%)"
            );
        });
}

#[test]
fn loss_on_every_link_blames_the_node_not_a_peer() {
    let all_bad = |s: Sample| {
        s.loss(0.25)
            .link("n2", true, 5.0, 0.3)
            .link("n3", true, 5.0, 0.2)
    };
    let scenario = given(series("n1", 0..3, all_bad));
    let s = only(scenario.history(), PacketLoss, Open);
    assert_eq!(s.peer, None);
}

#[test]
fn a_slow_link_names_its_peer_on_high_latency() {
    let slow = |s: Sample| {
        s.latency(150.0)
            .link("n2", true, 400.0, 0.0)
            .link("n3", true, 20.0, 0.0)
    };
    given(series("n1", 0..2, slow))
        .when(slow(at("n1", 2)))
        .then_expect(|out| {
            let s = only(out, HighLatency, Open);
            assert_eq!(s.peer, Some(id("n2")));
            assert_eq!(s.severity, 4.0);
            assert_eq!(s.evidence["link_latency_ms"], 400.0);
            assert_eq!(
                s.summary,
                "latency: link to n2 at 400.0 ms over 100 ms threshold (p95 150.0 ms)"
            );
        });
}

#[test]
fn a_slow_node_with_one_slow_link_names_the_link_too() {
    let slow = |s: Sample| {
        s.latency(300.0)
            .link("n2", true, 200.0, 0.0)
            .link("n3", true, 20.0, 0.0)
    };
    given(series("n1", 0..3, slow)).then_expect(|out| {
        let s = only(out, HighLatency, Open);
        assert_eq!(s.peer, Some(id("n2")));
        assert_eq!(s.severity, 3.0);
        assert_eq!(
            s.summary,
            "p95 latency 300.0 ms over 100 ms threshold (no baseline yet); link to n2 at 200.0 ms"
        );
    });
}

#[test]
fn a_down_link_is_not_blamed_for_loss() {
    let down = |s: Sample| {
        s.loss(0.0)
            .link("n2", false, 0.0, 1.0)
            .link("n3", true, 5.0, 0.0)
    };
    given(series("n1", 0..10, down)).then_nothing();
}
