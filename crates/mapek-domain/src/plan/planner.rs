//! Deciding: from a symptom, the policy, the state and the knowledge, at most one decision.
//!
//! [`handle`] reads and never writes; folding the decision back into the state is
//! [`PlanState::apply`]'s job. The steps:
//! 1. **Trigger.** An open symptom is decided; an update only when it now matches a rule with
//!    a higher `min_severity` than the rule that last decided its incident (the incident got
//!    worse past a threshold), or matches a rule when none matched before; a resolve never.
//! 2. **Rule.** The first rule in file order that matches. None: escalate with the policy's
//!    fallback.
//! 3. **Rank.** The rule's candidates, reordered by the evidence of similar past incidents
//!    (see [`knowledge`](super::knowledge)); ties, and candidates without evidence, keep the
//!    policy order.
//! 4. **Interlocks.** The first candidate not in cooldown for the node and not refused by the
//!    blast radius is chosen; if none is, the rule's fallback escalation.
//!
//! The reason names the rule, the evidence, every skipped candidate and why, and the choice.

use std::fmt::Write as _;

use super::knowledge::{KnowledgeView, consult, evidence};
use super::policy::{
    BlastRadius, Candidate, Fallback, Load, NO_RULE, Policy, RATE_PARAM, Rule, Scope,
};
use super::state::{PlanState, millis};
use crate::{Action, ActionKind, Decision, EventId, Neighbour, Symptom, SymptomState};

/// The decision id for `symptom_id` under the policy whose hash is `policy_hash`: retried or
/// replayed under the same policy, a decision gets the same id and JetStream dedups it; under
/// another policy it is another decision.
pub fn decision_id(symptom_id: &str, policy_hash: &str) -> String {
    EventId::builder("decision")
        .str(symptom_id)
        .str(policy_hash)
        .finish()
}

/// Decides what to do about `symptom`, or nothing. Pure: the same arguments give the same
/// decision, to the byte.
pub fn handle(
    policy: &Policy,
    state: &PlanState,
    symptom: &Symptom,
    knowledge: &dyn KnowledgeView,
) -> Option<Decision> {
    let rule = policy.matching(symptom);
    let mut reason = trigger(policy, state, symptom, rule)?;
    let Some(rule) = rule else {
        reason.push_str("; escalating");
        let action = escalate(&policy.file().fallback);
        return Some(decision(
            policy,
            symptom,
            NO_RULE,
            action,
            reason,
            Vec::new(),
        ));
    };
    let consulted = if rule.rank_by_knowledge {
        consult(knowledge, symptom, &policy.file().knowledge)
    } else {
        Vec::new()
    };
    let ranked = rank(rule, &consulted, &mut reason);
    let room = Room::new(policy, state, symptom);
    for candidate in ranked {
        let refusal = cooldown(state, symptom, candidate).or_else(|| room.refuses(candidate));
        match refusal {
            Some(why) => {
                let _ = write!(reason, "; skipped {}: {why}", candidate.action.as_str());
            }
            None => {
                let _ = write!(reason, "; chose {}", candidate.action.as_str());
                let action = act(candidate, symptom);
                return Some(decision(
                    policy, symptom, &rule.name, action, reason, consulted,
                ));
            }
        }
    }
    reason.push_str("; every candidate skipped: escalating");
    let action = escalate(policy.fallback_for(&rule.name));
    Some(decision(
        policy, symptom, &rule.name, action, reason, consulted,
    ))
}

/// Whether `symptom` calls for a decision, and if so the reason's opening words.
fn trigger(
    policy: &Policy,
    state: &PlanState,
    symptom: &Symptom,
    rule: Option<&Rule>,
) -> Option<String> {
    let matched = match rule {
        Some(r) => format!("rule `{}` matched", r.name),
        None => "no rule matches".to_owned(),
    };
    let what = format!(
        "{} at severity {:.2} {}",
        symptom.kind.as_str(),
        symptom.severity,
        match &symptom.peer {
            Some(p) => format!("with peer {p}"),
            None => "without peer".to_owned(),
        }
    );
    let incident = state.incident(&symptom.incident_id);
    match symptom.state {
        SymptomState::Resolve => None,
        // A repeated open (a redelivery) of an incident already decided is not decided again:
        // the state now holds that decision's cooldown, so a second one would differ.
        SymptomState::Open => match incident.and_then(|i| i.rule.as_ref()) {
            Some(_) => None,
            None => Some(format!("{matched} {what}")),
        },
        // An update of an incident never decided here (opened before this state's history)
        // is left alone: whatever was decided then stands.
        SymptomState::Update => {
            let previous = incident?.rule.as_deref()?;
            let rule = rule?;
            if previous == NO_RULE {
                return Some(format!(
                    "{what} now matches rule `{}` (no rule matched before)",
                    rule.name
                ));
            }
            // A rule this policy does not have (the state came from another policy) counts
            // as the strictest: nothing is decided twice on a guess.
            let before = policy.rule(previous).map_or(f64::INFINITY, Rule::threshold);
            (rule.threshold() > before).then(|| {
                format!(
                    "{what} escalated past min_severity {:.2} of rule `{}` (was rule `{previous}`)",
                    rule.threshold(),
                    rule.name
                )
            })
        }
    }
}

/// The rule's candidates in the order to try them, and the ranking's part of the reason.
fn rank<'r>(rule: &'r Rule, consulted: &[Neighbour], reason: &mut String) -> Vec<&'r Candidate> {
    if !rule.rank_by_knowledge {
        reason.push_str("; policy order (the rule does not rank by knowledge)");
        return rule.candidates.iter().collect();
    }
    let scored: Vec<(&Candidate, Option<f64>)> = rule
        .candidates
        .iter()
        .map(|c| (c, evidence(consulted, c.action)))
        .collect();
    if scored.iter().all(|(_, e)| e.is_none()) {
        let _ = match consulted.len() {
            0 => write!(reason, "; no similar incidents: policy order"),
            n => write!(
                reason,
                "; {n} similar incidents, none with a candidate action: policy order"
            ),
        };
        return rule.candidates.iter().collect();
    }
    let mut ranked = scored;
    // Stable, so candidates with equal evidence (or none, counted as 0) keep policy order.
    // Scores are finite, so partial_cmp is total here and treats -0 as 0.
    ranked.sort_by(|(_, a), (_, b)| {
        let (a, b) = (a.unwrap_or(0.0), b.unwrap_or(0.0));
        b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal)
    });
    let _ = write!(reason, "; ranked by {} similar incidents:", consulted.len());
    let mut first = true;
    for (c, e) in &ranked {
        if let Some(e) = e {
            let sep = if first { " " } else { ", " };
            let _ = write!(reason, "{sep}{} {e:+.2}", c.action.as_str());
            first = false;
        }
    }
    ranked.into_iter().map(|(c, _)| c).collect()
}

/// Why `candidate` is in cooldown for the symptom's node, if it is.
fn cooldown(state: &PlanState, symptom: &Symptom, candidate: &Candidate) -> Option<String> {
    let cooldown_ms = millis(candidate.cooldown_secs);
    if cooldown_ms == 0 {
        return None;
    }
    let last = state.last_action(&symptom.node, candidate.action)?;
    // Negative when the log holds a later decision than this symptom: still in cooldown.
    let elapsed = symptom.ts_ms.saturating_sub(last);
    if elapsed >= cooldown_ms {
        return None;
    }
    let left_ms = cooldown_ms.saturating_sub(elapsed);
    Some(format!(
        "in cooldown on {} ({} decided at ts {last}, cooldown {} s, {} s left)",
        symptom.node,
        candidate.action.as_str(),
        candidate.cooldown_secs,
        // Rounded up: "0 s left" would read as expired.
        left_ms.saturating_add(999) / 1000
    ))
}

/// What the blast radius finds at the symptom's time, in this partition, when the policy
/// has the planner judge it (scope `partition`).
struct Room<'p> {
    limits: &'p BlastRadius,
    load: Option<Load>,
}

impl<'p> Room<'p> {
    fn new(policy: &'p Policy, state: &PlanState, symptom: &Symptom) -> Self {
        let limits = &policy.file().blast_radius;
        if limits.scope == Scope::Mesh {
            return Self { limits, load: None };
        }
        let window_ms = millis(limits.window_secs);
        let in_flight = state.in_flight(symptom.ts_ms, window_ms);
        let mut seen = state.known_nodes();
        for n in std::iter::once(&symptom.node).chain(&symptom.peer) {
            seen += usize::from(!state.knows(n));
        }
        let load = Load {
            seen,
            nodes_after: in_flight.len() + usize::from(!in_flight.contains(&symptom.node)),
            actions: state.actions_within(symptom.ts_ms, window_ms),
        };
        Self {
            limits,
            load: Some(load),
        }
    }

    /// Why the blast radius refuses `candidate`, if it does. Escalations touch no node and
    /// are never refused; with scope `mesh` the executor judges, not the planner.
    fn refuses(&self, candidate: &Candidate) -> Option<String> {
        if candidate.action == ActionKind::Escalate {
            return None;
        }
        let why = self.limits.refuses(self.load?)?;
        Some(format!("blast radius, {why}"))
    }
}

/// The action `candidate` stands for, aimed at the symptom.
fn act(candidate: &Candidate, symptom: &Symptom) -> Action {
    let mut params = candidate.params.clone();
    if let Some(rate) = candidate.rate_pps {
        params.insert(RATE_PARAM.to_owned(), rate.to_string());
    }
    Action {
        kind: candidate.action,
        peer: match candidate.action {
            ActionKind::Reroute => symptom.peer.clone(),
            _ => None,
        },
        service: candidate.service.clone(),
        params,
    }
}

fn escalate(fallback: &Fallback) -> Action {
    Action {
        kind: ActionKind::Escalate,
        peer: None,
        service: None,
        params: fallback.params.clone(),
    }
}

fn decision(
    policy: &Policy,
    symptom: &Symptom,
    rule: &str,
    action: Action,
    reason: String,
    knowledge: Vec<Neighbour>,
) -> Decision {
    Decision {
        decision_id: decision_id(&symptom.symptom_id, policy.hash()),
        symptom_id: symptom.symptom_id.clone(),
        incident_id: symptom.incident_id.clone(),
        node: symptom.node.clone(),
        ts_ms: symptom.ts_ms,
        action,
        rule: rule.to_owned(),
        reason,
        policy_name: policy.name().to_owned(),
        policy_hash: policy.hash().to_owned(),
        knowledge,
        // A later step chains and signs decisions; the planner only decides.
        prev_hash: String::new(),
        signature: Vec::new(),
    }
}
