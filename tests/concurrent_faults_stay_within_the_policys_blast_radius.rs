//! Five nodes of a 32-node simulated mesh saturate their CPU at once, in different plan
//! partitions, under the shipped policy (blast radius judged over the mesh: 10 % of the nodes
//! reporting, so 3 of 32). The planner chooses an action for each; the executor applies what
//! the policy allows and refuses the rest, counting the one mesh every partition is part of,
//! and hands each refusal to a human.

mod sim_loop;

use std::collections::BTreeSet;
use std::time::Duration;

use mapek_bus::layout::partition_of_node;
use mapek_domain::{ActionKind, ActionResult, ActionStatus, Decision, Policy};
use mapek_loop::plan::PlanStage;
use mapek_sim::Fault;
use sim_loop::{SimLoop, first_where, id};

const WITHIN: Duration = Duration::from_secs(30);
const HOGGED: [&str; 5] = ["n3", "n7", "n12", "n18", "n25"];

#[tokio::test]
async fn concurrent_faults_are_acted_on_as_far_as_the_policys_blast_radius_allows() {
    let partitions: BTreeSet<u32> = HOGGED
        .iter()
        .map(|n| partition_of_node(&id(n), mapek_bus::layout::DEFAULT_PARTITIONS))
        .collect();
    assert!(
        partitions.len() >= 3,
        "the nodes share partitions: {partitions:?}"
    );
    let policy = Policy::builtin();
    assert_eq!(
        policy.file().blast_radius.scope,
        mapek_domain::plan::Scope::Mesh
    );
    let faults = HOGGED
        .iter()
        .map(|n| Fault::CpuHog {
            start_s: 5.0,
            duration_s: None,
            node: id(n),
        })
        .collect();
    let sim = SimLoop::start(faults, move |_| {
        PlanStage::without_knowledge(policy.clone())
    })
    .await;

    let mut results = Vec::new();
    for node in HOGGED {
        let decision = first_where::<Decision>(&sim.js, node, WITHIN, |_| true).await;
        // What the planner chose is a node action: it does not judge the blast radius.
        assert_ne!(
            decision.action.kind,
            ActionKind::Escalate,
            "{}",
            decision.reason
        );
        assert!(
            !decision.reason.contains("blast radius"),
            "{}",
            decision.reason
        );
        let result = first_where::<ActionResult>(&sim.js, node, WITHIN, |r| {
            r.decision_id == decision.decision_id
        })
        .await;
        assert_eq!(
            result.action, decision.action,
            "the executor acts on the choice"
        );
        results.push(result);
    }

    let applied = results.iter().filter(|r| r.status == ActionStatus::Applied);
    assert_eq!(applied.count(), 3, "10 % of 32 nodes: {results:#?}");
    let refused: Vec<&ActionResult> = results
        .iter()
        .filter(|r| r.status == ActionStatus::Refused)
        .collect();
    assert_eq!(refused.len(), 2, "{results:#?}");
    for r in refused {
        assert!(
            r.reason.starts_with(
                "blast radius: acting would put 4 of 32 known nodes under action, more than 3 \
                 (10%); under action: "
            ),
            "{}",
            r.reason
        );
        // Refused is not the end of it: the policy's fallback tells a human.
        assert_eq!(
            r.escalation_words().as_deref(),
            Some("escalated to a human (team=netops, urgency=high)"),
            "{r:#?}"
        );
    }
}
