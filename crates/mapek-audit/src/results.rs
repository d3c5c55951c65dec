//! Action results: each signed by the executor with its result key, and what the audit
//! requires of each (ADR 0019).
//!
//! A result's signature covers [`message`]: the line `mapek action result v1`, then its
//! [`ActionResult::result_hash`] (every field but the signature). The first line keeps a
//! result's signature from ever passing for a decision's (whose message is 64 hex digits) or a
//! chain head's, whichever keys an operator gives which roles.
//!
//! The audit holds every result in MAPEK_EXECUTE to these rules ([`Rules::check`]):
//! - **Signed**: with the result key, its signature verifies; an unsigned one fails, unless
//!   the server stored it before the operator says executors began to sign
//!   (`--results-signed-since`): those are counted and reported.
//! - **Answers a decision in the log, as decided**: its decision is in MAPEK_PLAN (unless the
//!   result is old enough for its decision to have aged out), and it names the node and action
//!   the decision did.
//! - **Escalated as its policy says**: a refused result carries the escalation the decision's
//!   policy gives (the rule's fallback, else the policy's), unless the policy records
//!   refusals only; a decision whose policy is not recorded is escalated with no params.
//!
//! And every decision that an executor acknowledged has a result ([`Acknowledged`]): an
//! executor acknowledges a decision only after its result is stored (or the decision was
//! dead-lettered), so an acknowledged decision without one lost its result after it was
//! stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use mapek_domain::{Action, ActionResult, ActionStatus, Decision, NodeId, Policy};

use crate::VerifyingKey;
use crate::ends::Ages;

/// The first line of what a result's signature signs: what it is, in which version.
const HEADER: &str = "mapek action result v1";

/// What a result's signature signs: [`HEADER`], then its result hash, one line each.
pub fn message(result: &ActionResult) -> Vec<u8> {
    format!("{HEADER}\n{}\n", result.result_hash()).into_bytes()
}

/// What the audit keeps of a decision, for the results that answer it.
#[derive(Clone, Debug)]
pub struct Decided {
    /// Its stream sequence in MAPEK_PLAN.
    pub seq: u64,
    /// Its plan partition.
    pub partition: u32,
    /// When the server stored it, in ms since the Unix epoch.
    pub stored_ms: i64,
    /// The node it acts on.
    pub node: NodeId,
    /// What it decided.
    pub action: Action,
    /// The policy that decided it, by hash, and the rule.
    pub policy_hash: String,
    /// The rule that chose it: its fallback is the escalation of a refusal.
    pub rule: String,
}

impl Decided {
    /// What the audit keeps of `decision`, stored at `seq` in `partition` at `stored_ms`.
    pub fn of(decision: &Decision, seq: u64, partition: u32, stored_ms: i64) -> Self {
        Self {
            seq,
            partition,
            stored_ms,
            node: decision.node.clone(),
            action: decision.action.clone(),
            policy_hash: decision.policy_hash.clone(),
            rule: decision.rule.clone(),
        }
    }
}

/// Why a result fails the audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wrong {
    /// It carries no signature, and was stored after executors began to sign.
    Unsigned,
    /// Its signature is not the result key's signature of it as it is: changed after it was
    /// signed (its escalation, its status, its reason…), or signed with another key.
    BadSignature,
    /// Its decision is not in MAPEK_PLAN, and cannot have aged out.
    NoDecision,
    /// It answers its decision with another node or action than the decision's.
    NotAsDecided(String),
    /// Refused and not escalated, though its decision's policy escalates refusals.
    NotEscalated(String),
    /// Escalated with other params than its decision's policy gives.
    OtherEscalation {
        /// What it carries, in words.
        found: String,
        /// What the policy gives, in words.
        policy: String,
    },
}

impl fmt::Display for Wrong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wrong::Unsigned => f.write_str("it is not signed"),
            Wrong::BadSignature => f.write_str(
                "its signature does not verify with the result key: it was changed after the \
                 executor signed it, or signed with another key",
            ),
            Wrong::NoDecision => f.write_str("the decision it answers is not in MAPEK_PLAN"),
            Wrong::NotAsDecided(what) => write!(f, "it does not answer its decision: {what}"),
            Wrong::NotEscalated(why) => {
                write!(f, "it was refused and handed to nobody, though {why}")
            }
            Wrong::OtherEscalation { found, policy } => write!(
                f,
                "its escalation ({found}) is not the one its decision's policy gives ({policy})"
            ),
        }
    }
}

/// How a result that passed was signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signed {
    /// Its signature verifies with the result key.
    Verified,
    /// Unsigned, stored before executors began to sign: counted, not failed.
    Before,
    /// Not checked: the audit has no result key.
    Unchecked,
}

/// What the audit holds results to: the result key, when executors began to sign, the
/// recorded policies, and the decisions in the log.
pub struct Rules {
    key: Option<VerifyingKey>,
    signed_since_ms: Option<i64>,
    policies: BTreeMap<String, Policy>,
    decisions: HashMap<String, Decided>,
    /// MAPEK_PLAN's ages: a result stored long enough ago may answer a decision aged out.
    plan: Ages,
}

impl Rules {
    /// Rules checking signatures with `key` (none without), excusing unsigned results stored
    /// before `signed_since_ms`, with the recorded `policies` (by hash), the `decisions` read
    /// from MAPEK_PLAN (by id) and MAPEK_PLAN's ages.
    pub fn new(
        key: Option<VerifyingKey>,
        signed_since_ms: Option<i64>,
        policies: BTreeMap<String, Policy>,
        decisions: HashMap<String, Decided>,
        plan: Ages,
    ) -> Self {
        Self {
            key,
            signed_since_ms,
            policies,
            decisions,
            plan,
        }
    }

    /// The decision of this id, as read from MAPEK_PLAN.
    pub fn decision(&self, decision_id: &str) -> Option<&Decided> {
        self.decisions.get(decision_id)
    }

    /// Every decision read, by id.
    pub fn decisions(&self) -> &HashMap<String, Decided> {
        &self.decisions
    }

    /// Checks `result`, stored at `stored_ms`: how it was signed, or everything wrong with it.
    pub fn check(&self, result: &ActionResult, stored_ms: i64) -> Result<Signed, Vec<Wrong>> {
        let mut wrong = Vec::new();
        let signed = match &self.key {
            None => Signed::Unchecked,
            Some(_) if result.signature.is_empty() && self.before_signing(stored_ms) => {
                Signed::Before
            }
            Some(_) if result.signature.is_empty() => {
                wrong.push(Wrong::Unsigned);
                Signed::Unchecked
            }
            Some(key) if key.verifies_result(result) => Signed::Verified,
            Some(_) => {
                wrong.push(Wrong::BadSignature);
                Signed::Unchecked
            }
        };
        match self.decisions.get(&result.decision_id) {
            Some(decided) => {
                wrong.extend(as_decided(result, decided));
                wrong.extend(self.escalated(result, decided));
            }
            None if self.plan.may_have_aged_out(stored_ms) => {}
            None => wrong.push(Wrong::NoDecision),
        }
        if wrong.is_empty() {
            Ok(signed)
        } else {
            Err(wrong)
        }
    }

    /// Whether a result stored at `stored_ms` was stored before executors began to sign.
    fn before_signing(&self, stored_ms: i64) -> bool {
        self.signed_since_ms.is_some_and(|since| stored_ms < since)
    }

    /// What is wrong with the escalation of `result`, if anything: a refusal carries the
    /// escalation the decision's policy gives, as the executor's interlocks give it.
    fn escalated(&self, result: &ActionResult, decided: &Decided) -> Option<Wrong> {
        if result.status != ActionStatus::Refused {
            return None;
        }
        let policy = self.policies.get(&decided.policy_hash);
        let wanted = match policy.map(|p| (p, p.fallback_for(&decided.rule))) {
            Some((_, fallback)) if !fallback.escalate_refusals => return None,
            Some((_, fallback)) => &fallback.params,
            None => &BTreeMap::new(),
        };
        match &result.escalation {
            Some(params) if params == wanted => None,
            Some(params) => Some(Wrong::OtherEscalation {
                found: mapek_domain::event::escalation_in_words(params),
                policy: mapek_domain::event::escalation_in_words(wanted),
            }),
            None => Some(Wrong::NotEscalated(match policy {
                Some(p) => format!("its policy {} escalates refusals", p.name()),
                None => {
                    "its decision's policy is not recorded, and such a refusal is escalated with \
                     no params"
                        .to_owned()
                }
            })),
        }
    }
}

/// What is wrong with how `result` answers `decided`, if anything.
fn as_decided(result: &ActionResult, decided: &Decided) -> Option<Wrong> {
    if result.node != decided.node {
        return Some(Wrong::NotAsDecided(format!(
            "it names node {}, the decision {}",
            result.node, decided.node
        )));
    }
    if result.action != decided.action {
        return Some(Wrong::NotAsDecided(format!(
            "it names the action {} ({:?}), the decision {} ({:?})",
            result.action.kind.as_str(),
            result.action.params,
            decided.action.kind.as_str(),
            decided.action.params
        )));
    }
    None
}

/// How far the executors had acknowledged MAPEK_PLAN when the audit began: the ack floor of
/// each of their durable readers. A decision at or below its reader's floor was acted on, and
/// has a result stored (or was dead-lettered).
#[derive(Clone, Debug, Default)]
pub struct Acknowledged {
    /// The floor of the reader of the whole stream (an executor alone), if there is one.
    pub whole: u64,
    /// The floor of each partition's reader (executors sharing the work), by partition.
    pub partitions: BTreeMap<u32, u64>,
}

impl Acknowledged {
    /// Whether an executor acknowledged the decision stored at `seq` in `partition`.
    pub fn covers(&self, partition: u32, seq: u64) -> bool {
        seq <= self.whole || self.partitions.get(&partition).is_some_and(|&f| seq <= f)
    }

    /// The decisions an executor acknowledged that have no result in `answered`, and were
    /// not dead-lettered (their sequences in `dead_lettered`), unless stored so long ago that
    /// their result may have aged out of MAPEK_EXECUTE (`execute`); by stream sequence.
    pub fn without_result<'a>(
        &self,
        decisions: &'a HashMap<String, Decided>,
        answered: &BTreeSet<String>,
        dead_lettered: &BTreeSet<u64>,
        execute: Ages,
    ) -> Vec<(&'a str, &'a Decided)> {
        let mut missing: Vec<(&str, &Decided)> = decisions
            .iter()
            .filter(|(id, d)| {
                self.covers(d.partition, d.seq)
                    && !answered.contains(id.as_str())
                    && !dead_lettered.contains(&d.seq)
                    && !execute.may_have_aged_out(d.stored_ms)
            })
            .map(|(id, d)| (id.as_str(), d))
            .collect();
        missing.sort_by_key(|(_, d)| d.seq);
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ends::tests::{AGES, DAY, NOW};
    use crate::{SigningKey, keys};
    use mapek_testkit::samples;
    const POLICY: &str = include_str!("../../../policies/default.toml");

    struct Keys {
        signer: SigningKey,
        checker: VerifyingKey,
        _dir: tempfile::TempDir,
    }

    fn keys() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keys::generate_for(dir.path(), keys::Signs::Results).unwrap();
        Keys {
            signer: SigningKey::load(&secret).unwrap(),
            checker: VerifyingKey::load(&public).unwrap(),
            _dir: dir,
        }
    }

    /// The sample decision, made by the shipped policy's rule `rule`.
    fn decided(policy: &Policy, rule: &str) -> HashMap<String, Decided> {
        let mut d = samples::decision();
        d.policy_hash = policy.hash().to_owned();
        d.rule = rule.to_owned();
        HashMap::from([(d.decision_id.clone(), Decided::of(&d, 7, 3, NOW - DAY))])
    }

    /// The sample decision refused and escalated as the shipped policy's fallback says.
    fn refused(policy: &Policy) -> ActionResult {
        let mut r = samples::escalated_result();
        r.escalation = Some(policy.fallback_for("no such rule").params.clone());
        r
    }

    fn rules(key: Option<VerifyingKey>, since: Option<i64>, policy: &Policy) -> Rules {
        let policies = BTreeMap::from([(policy.hash().to_owned(), policy.clone())]);
        Rules::new(key, since, policies, decided(policy, "no such rule"), AGES)
    }

    #[test]
    fn a_signed_result_passes_and_a_changed_escalation_fails() {
        let (k, policy) = (keys(), Policy::parse(POLICY).unwrap());
        let rules = rules(Some(k.checker.clone()), None, &policy);
        let mut r = refused(&policy);
        assert_eq!(rules.check(&r, NOW), Err(vec![Wrong::Unsigned]));
        k.signer.sign_result(&mut r).unwrap();
        assert_eq!(rules.check(&r, NOW), Ok(Signed::Verified));

        let mut other = r.clone();
        other.escalation = Some([("team".to_owned(), "nobody".to_owned())].into());
        let found = rules.check(&other, NOW).unwrap_err();
        assert_eq!(found[0], Wrong::BadSignature);
        assert!(
            matches!(&found[1], Wrong::OtherEscalation { found, .. } if found.contains("nobody")),
            "{found:?}"
        );
        let mut dropped = r.clone();
        dropped.escalation = None;
        let found = rules.check(&dropped, NOW).unwrap_err();
        assert_eq!(found[0], Wrong::BadSignature);
        assert!(
            found[1].to_string().contains("policy default escalates"),
            "{}",
            found[1]
        );
    }

    #[test]
    fn an_unsigned_result_passes_only_when_stored_before_signing_began() {
        let (k, policy) = (keys(), Policy::parse(POLICY).unwrap());
        let since = rules(Some(k.checker.clone()), Some(NOW - DAY), &policy);
        let r = refused(&policy);
        assert_eq!(since.check(&r, NOW - 2 * DAY), Ok(Signed::Before));
        assert_eq!(since.check(&r, NOW), Err(vec![Wrong::Unsigned]));
        let unchecked = rules(None, None, &policy);
        assert_eq!(unchecked.check(&r, NOW), Ok(Signed::Unchecked));
    }

    #[test]
    fn a_result_must_answer_a_decision_in_the_log_as_decided() {
        let policy = Policy::parse(POLICY).unwrap();
        let rules = rules(None, None, &policy);
        let mut r = samples::action_result();
        assert_eq!(rules.check(&r, NOW), Ok(Signed::Unchecked));
        r.node = samples::node("n7");
        let found = rules.check(&r, NOW).unwrap_err();
        assert!(found[0].to_string().contains("node n7, the decision n1"));
        r.decision_id = "d-none".into();
        assert_eq!(rules.check(&r, NOW), Err(vec![Wrong::NoDecision]));
        // Stored before MAPEK_PLAN forgets decisions: its decision may have aged out.
        assert_eq!(rules.check(&r, NOW - 8 * DAY), Ok(Signed::Unchecked));
    }

    #[test]
    fn a_refusal_is_escalated_unless_its_policy_records_refusals_only() {
        let policy = Policy::parse(POLICY).unwrap();
        let mut r = refused(&policy);
        r.escalation = None;
        let escalating = rules(None, None, &policy);
        assert!(escalating.check(&r, NOW).is_err());
        let quiet_text = POLICY.replace("escalate_refusals = true", "escalate_refusals = false");
        let quiet = Policy::parse(&quiet_text).unwrap();
        assert!(!quiet.fallback_for("no such rule").escalate_refusals);
        assert_eq!(
            rules(None, None, &quiet).check(&r, NOW),
            Ok(Signed::Unchecked)
        );
        // A policy nobody recorded: the executor escalated with no params.
        let unknown = Rules::new(None, None, BTreeMap::new(), decided(&policy, "x"), AGES);
        let found = unknown.check(&r, NOW).unwrap_err();
        assert!(found[0].to_string().contains("not recorded"), "{found:?}");
        r.escalation = Some(BTreeMap::new());
        assert_eq!(unknown.check(&r, NOW), Ok(Signed::Unchecked));
    }

    #[test]
    fn an_acknowledged_decision_without_a_result_is_named() {
        let policy = Policy::parse(POLICY).unwrap();
        let decisions = decided(&policy, "x");
        let (none, no_seqs) = (BTreeSet::new(), BTreeSet::new());
        let acked = Acknowledged {
            whole: 0,
            partitions: BTreeMap::from([(3, 7)]),
        };
        let missing = acked.without_result(&decisions, &none, &no_seqs, AGES);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].0, "d-1");
        let answered = BTreeSet::from(["d-1".to_owned()]);
        assert!(
            acked
                .without_result(&decisions, &answered, &no_seqs, AGES)
                .is_empty()
        );
        let dead = BTreeSet::from([7]);
        assert!(
            acked
                .without_result(&decisions, &none, &dead, AGES)
                .is_empty()
        );
        let not_yet = Acknowledged {
            whole: 6,
            partitions: BTreeMap::from([(2, 9)]),
        };
        assert!(
            not_yet
                .without_result(&decisions, &none, &no_seqs, AGES)
                .is_empty()
        );
    }
}
