//! Determinism: the same input gives the same decision, to the byte, and replay with the
//! recorded knowledge reproduces a run.

use super::*;
use crate::plan::{decision_id, policy};

/// A run touching every path: actions, cooldowns, knowledge, the blast radius, no rule,
/// updates and resolves. Each symptom comes with what the knowledge answers for it.
fn run() -> Vec<(Symptom, Vec<Neighbour>)> {
    let a = open_link("n1", "n2", SymptomKind::PacketLoss, 0, 2.0);
    let b = open("n2", SymptomKind::HighLatency, 5, 1.5);
    let c = open_link("n1", "n3", SymptomKind::PacketLoss, 10, 2.0);
    let knowing = vec![
        past("p", 0.9, ActionKind::Reroute, false),
        past("q", 0.4, ActionKind::Quarantine, true),
    ];
    vec![
        (a.clone(), vec![]),
        (b.clone(), vec![past("r", 0.7, ActionKind::RateLimit, true)]),
        (c, knowing),
        (
            open_link("n3", "n1", SymptomKind::PacketLoss, 20, 2.0),
            vec![],
        ),
        (open("n4", SymptomKind::MemorySaturation, 25, 2.0), vec![]),
        (update(&b, 30, 3.5), vec![]),
        (resolve(&a, 40), vec![]),
        (
            open_link("n3", "n1", SymptomKind::PacketLoss, 50, 2.0),
            vec![],
        ),
    ]
}

fn live(policy: &str) -> Vec<Decision> {
    let mut s = given(policy, []);
    for (symptom, knowing) in run() {
        s = s.knowing(knowing).when(symptom);
    }
    s.decisions
}

fn bytes(decisions: &[Decision]) -> Vec<u8> {
    serde_json::to_vec(decisions).unwrap()
}

#[test]
fn the_same_input_gives_byte_identical_decisions() {
    let first = live(POLICY);
    assert_eq!(first.len(), 7, "every symptom but the resolve is decided");
    assert_eq!(bytes(&first), bytes(&live(POLICY)));
}

#[test]
fn replay_with_the_recorded_knowledge_reproduces_every_decision() {
    let recorded = live(POLICY);
    let mut planner = Planner::new(Policy::parse(POLICY).unwrap());
    let mut replayed = Vec::new();
    for (symptom, _) in run() {
        let knowledge = recorded
            .iter()
            .find(|d| d.symptom_id == symptom.symptom_id)
            .map(RecordedKnowledge::from_decision)
            .unwrap_or_default();
        replayed.extend(planner.decide(&symptom, &knowledge));
    }
    assert_eq!(bytes(&replayed), bytes(&recorded));
}

#[test]
fn a_first_decision_records_its_policy_symptom_and_time_and_is_unsigned() {
    let policy = Policy::parse(POLICY).unwrap();
    let s = open_link("n1", "n2", SymptomKind::PacketLoss, 0, 2.0);
    let d = given(POLICY, [])
        .when(s.clone())
        .then_chooses(ActionKind::Reroute);
    assert_eq!(d.decision_id, decision_id(&s.symptom_id, policy.hash()));
    assert_eq!(d.decision_id.len(), 32);
    assert_eq!((d.symptom_id, d.incident_id), (s.symptom_id, s.incident_id));
    assert_eq!((d.node, d.ts_ms), (s.node, s.ts_ms));
    assert_eq!(d.policy_name, "test");
    assert_eq!(d.policy_hash, policy::hash(POLICY.as_bytes()));
    assert_eq!((d.prev_hash.as_str(), d.signature.len()), ("", 0));
}

#[test]
fn the_decision_id_changes_with_the_policy_hash() {
    let edited = format!("{POLICY}# a comment is an edit too\n");
    let (before, after) = (live(POLICY), live(&edited));
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.action, a.action, "the same rules decide the same");
        assert_ne!(b.decision_id, a.decision_id);
        assert_ne!(b.policy_hash, a.policy_hash);
    }
}

#[test]
fn each_decision_links_to_the_one_before_it() {
    let decisions = live(POLICY);
    assert_eq!(
        decisions[0].prev_hash, "",
        "the first decision starts the chain"
    );
    for pair in decisions.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].chain_hash());
        assert_eq!(pair[1].prev_hash.len(), 64);
    }
}

#[test]
fn any_change_to_a_decision_changes_its_chain_hash() {
    let d = live(POLICY).remove(1);
    let hash = d.chain_hash();
    let mut signed = d.clone();
    signed.signature = vec![1, 2, 3];
    assert_eq!(
        signed.chain_hash(),
        hash,
        "the signature is not part of what it signs"
    );
    let edits: [fn(&mut Decision); 5] = [
        |d| d.reason.push('!'),
        |d| d.ts_ms += 1,
        |d| d.prev_hash = "0".repeat(64),
        |d| {
            d.action.params.insert("x".into(), "1".into());
        },
        |d| d.knowledge.clear(),
    ];
    for edit in edits {
        let mut changed = d.clone();
        edit(&mut changed);
        assert_ne!(changed.chain_hash(), hash, "{changed:?}");
    }
}
