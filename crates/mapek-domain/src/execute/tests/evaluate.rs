//! Evaluate after act: resolved, not resolved, and what is not judged.

use super::*;
use crate::execute::{Evaluator, outcome_id};
use crate::{Outcome, OutcomeResult, Symptom, SymptomKind, SymptomState};
use ActionKind::Reroute;

/// What the evaluator is fed.
enum Input {
    Result(ActionResult),
    Symptom(Symptom),
}

/// A symptom of `node`'s incident in `state`, `secs` seconds after [`T0`].
fn symptom(node: &str, state: SymptomState, secs: f64) -> Input {
    Input::Symptom(Symptom {
        symptom_id: format!("s-{node}-{}-{secs}", state.as_str()),
        incident_id: format!("i-{node}"),
        node: id(node),
        ts_ms: T0 + (secs * 1000.0) as i64,
        kind: SymptomKind::HighLatency,
        state,
        severity: 2.0,
        peer: None,
        evidence: BTreeMap::new(),
        summary: "slow".into(),
        caused_by: "t".into(),
    })
}

fn open(node: &str, secs: f64) -> Input {
    symptom(node, SymptomState::Open, secs)
}

fn resolve(node: &str, secs: f64) -> Input {
    symptom(node, SymptomState::Resolve, secs)
}

/// Some other node's telemetry moved time on.
fn tick(secs: f64) -> Input {
    symptom("other", SymptomState::Update, secs)
}

fn result(r: ActionResult) -> Input {
    Input::Result(r)
}

/// An evaluator with a 60 s window and what it emitted for the latest input.
struct Eval {
    evaluator: Evaluator,
    latest: Vec<Outcome>,
}

fn given(history: Vec<Input>) -> Eval {
    let mut e = Eval {
        evaluator: Evaluator::new(60_000),
        latest: Vec::new(),
    };
    for i in history {
        e = e.when(i);
    }
    e
}

impl Eval {
    fn when(mut self, input: Input) -> Self {
        self.latest = match &input {
            Input::Result(r) => self.evaluator.apply(r),
            Input::Symptom(s) => self.evaluator.observe(s),
        };
        for o in &self.latest {
            o.validate()
                .expect("every outcome passes its schema's checks");
            assert_eq!(o.outcome_id, outcome_id(&o.decision_id));
        }
        self
    }

    fn then_expect(self, check: impl FnOnce(&[Outcome])) -> Self {
        check(&self.latest);
        self
    }

    fn then_nothing(self) -> Self {
        assert_eq!(self.latest, [], "expected no outcome");
        self
    }
}

fn only(outcomes: &[Outcome], result: OutcomeResult) -> &Outcome {
    assert_eq!(outcomes.len(), 1, "one outcome expected: {outcomes:#?}");
    assert_eq!(outcomes[0].result, result, "{:#?}", outcomes[0]);
    &outcomes[0]
}

#[test]
fn a_resolve_after_an_applied_action_is_resolved_with_the_recovery_time() {
    given(vec![open("n7", 0.0), result(done("a", "n7", Reroute, 2.0))])
        .then_nothing()
        .when(tick(30.0))
        .then_nothing()
        .when(resolve("n7", 12.0))
        .then_expect(|o| {
            let o = only(o, OutcomeResult::Resolved);
            assert_eq!(o.decision_id, "d-a");
            assert_eq!(o.incident_id, "i-n7");
            assert_eq!(o.ts_ms, T0 + 12_000);
            assert_eq!(o.recovery_ms, Some(12_000));
            assert_eq!(
                o.detail,
                "incident i-n7 on n7 resolved 10.0 s after reroute was applied (12.0 s after \
                 it opened)"
            );
        })
        // Its deadline passing later changes nothing.
        .when(tick(100.0))
        .then_nothing();
}

#[test]
fn a_resolve_that_arrives_before_the_result_still_counts() {
    given(vec![open("n7", 0.0), resolve("n7", 5.0)])
        .then_nothing()
        .when(result(done("a", "n7", Reroute, 2.0)))
        .then_expect(|o| {
            let o = only(o, OutcomeResult::Resolved);
            assert_eq!(o.recovery_ms, Some(5_000));
        });
}

#[test]
fn no_resolve_within_the_window_is_not_resolved_once_time_passes_it() {
    given(vec![open("n7", 0.0), result(done("a", "n7", Reroute, 2.0))])
        .when(tick(62.0))
        .then_nothing()
        .when(tick(62.001))
        .then_expect(|o| {
            let o = only(o, OutcomeResult::NotResolved);
            assert_eq!(o.ts_ms, T0 + 62_000, "judged at the deadline");
            assert_eq!(o.recovery_ms, None);
            assert_eq!(
                o.detail,
                "incident i-n7 on n7 still open 60 s after reroute was applied"
            );
        })
        // A resolve after the verdict is not a second verdict.
        .when(resolve("n7", 70.0))
        .then_nothing();
}

#[test]
fn a_resolve_after_the_deadline_is_not_resolved() {
    given(vec![open("n7", 0.0), result(done("a", "n7", Reroute, 2.0))])
        .when(resolve("n7", 90.0))
        .then_expect(|o| {
            only(o, OutcomeResult::NotResolved);
        });
}

#[test]
fn a_result_whose_window_already_passed_is_judged_at_once() {
    given(vec![open("n7", 0.0), tick(100.0)])
        .when(result(done("a", "n7", Reroute, 2.0)))
        .then_expect(|o| {
            only(o, OutcomeResult::NotResolved);
        });
}

#[test]
fn an_unseen_open_leaves_the_recovery_time_out() {
    given(vec![result(done("a", "n7", Reroute, 2.0))])
        .when(resolve("n7", 5.0))
        .then_expect(|o| {
            let o = only(o, OutcomeResult::Resolved);
            assert_eq!(o.recovery_ms, None);
            assert!(
                o.detail.ends_with("(its opening was not seen)"),
                "{}",
                o.detail
            );
        });
}

#[test]
fn refused_failed_and_dry_run_actions_are_not_judged() {
    let d = decision("c", "n7", Reroute, 1.0);
    let refused = crate::execute::result(&d, ActionStatus::Refused, "cooldown: x", 0, false);
    let dry = crate::execute::result(&d, ActionStatus::Applied, "", 0, true);
    for r in [failed_at("b", "n7", Reroute, 1.0), refused, dry] {
        given(vec![open("n7", 0.0), result(r)])
            .when(resolve("n7", 5.0))
            .then_nothing()
            .when(tick(500.0))
            .then_nothing();
    }
}

#[test]
fn a_duplicate_result_gets_no_second_outcome() {
    let r = done("a", "n7", Reroute, 2.0);
    given(vec![open("n7", 0.0), result(r.clone()), resolve("n7", 5.0)])
        .when(result(r.clone()))
        .then_nothing();
    // Nor does one marked judged from the outcomes already stored, as on a restart.
    let Input::Symptom(resolved) = resolve("n7", 5.0) else {
        unreachable!()
    };
    let mut live = given(vec![open("n7", 0.0), result(r.clone())]).evaluator;
    let stored = live.observe(&resolved);
    let mut restarted = Evaluator::new(60_000);
    restarted.mark_judged(&stored[0]);
    assert!(restarted.is_judged("d-a"));
    assert!(restarted.apply(&r).is_empty());
}

#[test]
fn outcomes_settled_together_come_out_by_deadline_then_decision() {
    given(vec![
        result(done("z", "n1", Reroute, 1.0)),
        result(done("b", "n2", Reroute, 2.0)),
        result(done("a", "n3", Reroute, 1.0)),
    ])
    .when(tick(200.0))
    .then_expect(|o| {
        let order: Vec<&str> = o.iter().map(|o| o.decision_id.as_str()).collect();
        assert_eq!(order, ["d-a", "d-z", "d-b"]);
    });
}
