//! A mesh sized for more than the default 8 partitions (ADR 0024): on a server whose mapping
//! puts telemetry into 32, `mapek demo` applies 32 to every phase, its workers take all 32,
//! and the log they write is proven by `mapek audit verify` and reproduced by `mapek replay
//! verify`.

mod common;
mod replay_common;

use std::collections::BTreeSet;

use common::{mapek, run, stderr, stdout};
use mapek_bus::layout;
use mapek_domain::{NodeId, Phase};
use mapek_testkit::NatsServer;
use replay_common::{decisions, mapek_run};

const PARTITIONS: u32 = 32;

#[tokio::test]
async fn the_loop_on_32_partitions_decides_proves_and_replays() {
    // Given: a server that maps telemetry into 32 partitions.
    let mapping = mapek_domain::telemetry_mapping(PARTITIONS);
    let server = NatsServer::start_with_options(&mapping, &[], false);
    let url = server.url();

    // When: the demo runs its scripted faults there.
    let dir = tempfile::tempdir().unwrap();
    let mut demo = mapek(&url);
    demo.current_dir(dir.path())
        .args(["demo", "--nodes", "32", "--speed", "20"]);
    let out = run(demo);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));

    // Then: every phase has 32 partitions, and decisions were taken in partitions only a
    // count above 8 has, each stored under its node's partition of the 32.
    let js = mapek_bus::connect(&url).await.unwrap();
    for phase in [Phase::Monitor, Phase::Analyze, Phase::Plan, Phase::Execute] {
        assert_eq!(layout::partitions_of(&js, phase).await.unwrap(), PARTITIONS);
    }
    let plan = js.get_stream(Phase::Plan.stream()).await.unwrap();
    let mut decided = BTreeSet::new();
    for decision in decisions(&url) {
        let node = NodeId::new(decision["node"].as_str().unwrap()).unwrap();
        let p = layout::partition_of_node(&node, PARTITIONS);
        let subject = format!("mapek.plan.{p}.{node}");
        assert!(
            plan.get_last_raw_message_by_subject(&subject).await.is_ok(),
            "{subject} is not stored"
        );
        decided.insert(p);
    }
    assert!(
        decided.iter().any(|p| *p >= 8),
        "the faulted nodes are in partitions {decided:?}"
    );

    // And: the audit proves every decision and result, chain heads of all 32 included.
    let keys = dir.path().join("mapek-data/keys");
    let audit = mapek_run(
        &url,
        &[
            "audit",
            "verify",
            "--key",
            keys.join("decision.pub").to_str().unwrap(),
            "--result-key",
            keys.join("result.pub").to_str().unwrap(),
        ],
    );
    let report = stdout(&audit);
    assert!(audit.status.success(), "{report}\n{}", stderr(&audit));
    assert!(report.contains("0 fail, 0 missing"), "{report}");
    let chains = format!(
        "in {} partitions: {n} pass, 0 fail (signatures and links checked); {} signed chain \
         heads, 0 chains cut",
        decided.len(),
        decided.len(),
        n = decisions(&url).len()
    );
    assert!(report.contains(&chains), "{chains}\n{report}");

    // And: replay reproduces every symptom and decision.
    let replay = mapek_run(&url, &["replay", "verify"]);
    let said = stdout(&replay);
    assert!(replay.status.success(), "{said}\n{}", stderr(&replay));
    assert!(said.contains("verdict: identical"), "{said}");
}
