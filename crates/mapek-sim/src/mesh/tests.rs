use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::*;

const T0: i64 = 1_795_867_200_000;
const PERIOD: i64 = 1_000;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn mesh(seed: u64, faults: Vec<Fault>) -> Mesh {
    Mesh::new(MeshConfig::default(), seed)
        .unwrap()
        .with_faults(&FaultScript { fault: faults })
        .unwrap()
}

fn action(kind: ActionKind, peer: Option<&str>) -> Action {
    Action {
        kind,
        peer: peer.map(id),
        service: None,
        params: BTreeMap::new(),
    }
}

/// Runs `ticks` ticks from the current tick count and returns the last one's samples by node.
fn run(mesh: &mut Mesh, ticks: u64) -> BTreeMap<String, Telemetry> {
    let mut last = Vec::new();
    for _ in 0..ticks {
        last = mesh.tick(T0 + mesh.ticks as i64 * PERIOD);
    }
    last.into_iter()
        .map(|t| (t.node.as_str().to_owned(), t))
        .collect()
}

fn degradation(start_s: f64) -> Fault {
    Fault::LinkDegradation {
        start_s,
        duration_s: None,
        a: id("n0"),
        b: id("n1"),
        added_latency_ms: 100.0,
        added_loss: 0.4,
    }
}

#[test]
fn every_sample_is_valid_and_the_topology_is_connected_with_2_to_4_neighbours() {
    for seed in 0..20 {
        let mut m = mesh(seed, vec![]);
        for t in m.tick(T0) {
            mapek_domain::Event::validate(&t).unwrap();
        }
        let n = m.nodes.len();
        for adj in &m.neighbours {
            assert!(
                (2..=MAX_DEGREE).contains(&adj.len()),
                "seed {seed}: {adj:?}"
            );
        }
        let mut seen = BTreeSet::from([0]);
        let mut queue = VecDeque::from([0]);
        while let Some(i) = queue.pop_front() {
            for &j in &m.neighbours[i] {
                if seen.insert(j) {
                    queue.push_back(j);
                }
            }
        }
        assert_eq!(seen.len(), n, "seed {seed}");
    }
}

#[test]
fn a_degraded_link_raises_both_ends_and_reroute_brings_them_down_again() {
    let mut m = mesh(7, vec![degradation(2.0)]);
    let before = run(&mut m, 2);
    let during = run(&mut m, 2);
    for node in ["n0", "n1"] {
        let (b, d) = (&before[node].metrics, &during[node].metrics);
        assert!(
            d["latency_ms"] > b["latency_ms"] + 20.0,
            "{node}: {b:?} {d:?}"
        );
        assert!(d["loss"] > 0.05 && b["loss"] < 0.01, "{node}: {b:?} {d:?}");
        let link = during[node]
            .links
            .iter()
            .find(|l| ["n0", "n1"].contains(&l.peer.as_str()))
            .unwrap();
        assert!(link.up && link.loss > 0.3, "{link:?}");
    }
    // A node not on the link sees nothing.
    let far = &during["n6"].metrics;
    assert!(far["loss"] < 0.01, "{far:?}");

    assert_eq!(
        m.apply(&action(ActionKind::Reroute, Some("n1")), &id("n0")),
        Ok("n0 routes around n1".to_owned())
    );
    let after = run(&mut m, 1);
    let a = &after["n0"].metrics;
    assert!(a["loss"] < 0.01, "{a:?}");
    assert!(
        a["latency_ms"] < MeshConfig::default().max_latency_ms * 1.1,
        "{a:?}"
    );
    assert_eq!(a["routes"], during["n0"].metrics["routes"] - 1.0);
    // The link itself is still bad, and n1, which did not reroute, still suffers.
    assert!(after["n0"].links.iter().any(|l| l.loss > 0.3));
    assert!(after["n1"].metrics["loss"] > 0.05);
}

#[test]
fn reroute_is_refused_for_a_stranger_and_when_no_route_would_be_left() {
    let mut m = mesh(1, vec![]);
    let stranger = (0..12)
        .map(|i| format!("n{i}"))
        .find(|p| p != "n0" && !m.neighbours(&id("n0")).contains(&id(p)))
        .unwrap();
    let err = m
        .apply(&action(ActionKind::Reroute, Some(&stranger)), &id("n0"))
        .unwrap_err();
    assert!(err.contains("has no link"), "{err}");
    let peers = m.neighbours(&id("n0"));
    for p in &peers[..peers.len() - 1] {
        m.apply(&action(ActionKind::Reroute, Some(p.as_str())), &id("n0"))
            .unwrap();
    }
    let last = peers.last().unwrap().as_str();
    let err = m
        .apply(&action(ActionKind::Reroute, Some(last)), &id("n0"))
        .unwrap_err();
    assert!(err.contains("no route left"), "{err}");
}

#[test]
fn restart_clears_a_cpu_hog_and_rate_limit_only_lowers_it() {
    let hog = Fault::CpuHog {
        start_s: 0.0,
        duration_s: None,
        node: id("n2"),
    };
    let mut m = mesh(3, vec![hog]);
    assert!(run(&mut m, 1)["n2"].metrics["cpu"] > 0.9);
    m.apply(&action(ActionKind::RateLimit, None), &id("n2"))
        .unwrap();
    let limited = run(&mut m, 1)["n2"].metrics["cpu"];
    assert!((0.5..0.9).contains(&limited), "{limited}");
    let done = m
        .apply(&action(ActionKind::RestartService, None), &id("n2"))
        .unwrap();
    assert!(done.contains("cleared cpu_hog"), "{done}");
    assert!(run(&mut m, 3)["n2"].metrics["cpu"] < 0.3);
}

#[test]
fn a_crashed_node_is_silent_its_links_are_down_and_restart_brings_it_back() {
    let crash = Fault::NodeCrash {
        start_s: 1.0,
        duration_s: Some(60.0),
        node: id("n5"),
    };
    let mut m = mesh(4, vec![crash]);
    assert!(run(&mut m, 1).contains_key("n5"));
    let during = run(&mut m, 1);
    assert!(!during.contains_key("n5"));
    assert_eq!(during.len(), 11);
    let n4_link = during["n4"]
        .links
        .iter()
        .find(|l| l.peer.as_str() == "n5")
        .unwrap();
    assert!(!n4_link.up && n4_link.loss == 1.0);
    let err = m
        .apply(&action(ActionKind::Quarantine, None), &id("n5"))
        .unwrap_err();
    assert!(err.contains("is down"), "{err}");
    m.apply(&action(ActionKind::RestartService, None), &id("n5"))
        .unwrap();
    assert!(run(&mut m, 1).contains_key("n5"));
}

#[test]
fn a_flapping_link_toggles_up_every_few_ticks() {
    let flap = Fault::FlappingLink {
        start_s: 0.0,
        duration_s: None,
        a: id("n3"),
        b: id("n4"),
        every_ticks: 2,
    };
    let mut m = mesh(5, vec![flap]);
    let ups: Vec<bool> = (0..8)
        .map(|_| {
            run(&mut m, 1)["n3"]
                .links
                .iter()
                .find(|l| l.peer.as_str() == "n4")
                .unwrap()
                .up
        })
        .collect();
    assert_eq!(ups, [false, false, true, true, false, false, true, true]);
}

#[test]
fn a_partition_cuts_every_link_across_it_and_quarantine_takes_a_node_out_of_routes() {
    let cut = Fault::Partition {
        start_s: 0.0,
        duration_s: None,
        nodes: vec![id("n6"), id("n7")],
    };
    let mut m = mesh(6, vec![cut]);
    let s = run(&mut m, 1);
    for l in &s["n6"].links {
        assert_eq!(l.up, l.peer.as_str() == "n7", "{l:?}");
    }
    let n5 = &s["n5"];
    assert!(
        !n5.links
            .iter()
            .find(|l| l.peer.as_str() == "n6")
            .unwrap()
            .up
    );

    let mut m = mesh(6, vec![]);
    m.apply(&action(ActionKind::Quarantine, None), &id("n1"))
        .unwrap();
    let s = run(&mut m, 1);
    assert_eq!(s["n1"].metrics["routes"], 0.0);
    let n0 = &s["n0"].metrics;
    assert_eq!(n0["routes"] as usize, m.neighbours(&id("n0")).len() - 1);
}

#[test]
fn the_same_seed_and_commands_give_identical_telemetry_and_another_seed_does_not() {
    let trace = |seed: u64| {
        let mut m = mesh(seed, crate::default_script(12).fault);
        let mut out = Vec::new();
        for k in 0..120 {
            if k == 30 {
                let _ = m.apply(&action(ActionKind::Reroute, Some("n1")), &id("n0"));
                let _ = m.apply(&action(ActionKind::RestartService, None), &id("n2"));
            }
            out.extend(m.tick(T0 + k * PERIOD));
        }
        out
    };
    let a = trace(42);
    assert_eq!(a, trace(42));
    assert_ne!(a, trace(43));
    assert!(a.len() > 1000);
}
