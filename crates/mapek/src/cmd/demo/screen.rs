//! What the demo shows: every symptom, decision, result and outcome stored since it began,
//! a line each as it comes, and the tally of them all for the summary.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use mapek_bus::{JetStream, StartAt, Subscriber, SubscriberConfig};
use mapek_codec::AvroEvent;
use mapek_domain::{
    ActionResult, ActionStatus, Decision, Outcome, OutcomeResult, Symptom, SymptomState,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::time_arg::now_ms;

/// One line for the screen, from whichever stream it came.
enum Seen {
    Symptom(Symptom),
    Decision(Decision),
    Action(ActionResult),
    Outcome(Outcome),
}

/// The screen: what the streams store, shown as it comes, and tallied.
pub(super) struct Screen {
    viewers: JoinSet<anyhow::Result<()>>,
    seen: mpsc::UnboundedReceiver<Seen>,
    tally: Tally,
    /// When the demo began (ms since the Unix epoch): times are shown from it.
    pub(super) start_ms: i64,
}

impl Screen {
    /// Starts following every symptom, decision, result and outcome stored from now on.
    pub(super) fn watch(js: &JetStream) -> Self {
        let since = time::OffsetDateTime::now_utc();
        let start_ms = now_ms();
        let (tx, seen) = mpsc::unbounded_channel();
        let mut viewers = JoinSet::new();
        viewers.spawn(forward::<Symptom>(
            js.clone(),
            Seen::Symptom,
            tx.clone(),
            since,
        ));
        viewers.spawn(forward::<Decision>(
            js.clone(),
            Seen::Decision,
            tx.clone(),
            since,
        ));
        viewers.spawn(forward::<ActionResult>(
            js.clone(),
            Seen::Action,
            tx.clone(),
            since,
        ));
        viewers.spawn(forward::<Outcome>(js.clone(), Seen::Outcome, tx, since));
        Self {
            viewers,
            seen,
            tally: Tally::default(),
            start_ms,
        }
    }

    /// Shows what comes until `done` completes (or nothing more can come).
    pub(super) async fn show_until(&mut self, done: impl Future<Output = ()>) {
        tokio::pin!(done);
        loop {
            tokio::select! {
                seen = self.seen.recv() => match seen {
                    Some(seen) => print_lines(self.tally.show(seen, self.start_ms)),
                    None => break,
                },
                () = &mut done => break,
            }
        }
    }

    /// Shows what was stored just before the stop, and the results held for a decision that
    /// never came; stops following; the summary of all it saw.
    pub(super) async fn finish(mut self, ticks: u64, commands: u64) -> String {
        let wait = Duration::from_millis(300);
        while let Ok(Some(seen)) = tokio::time::timeout(wait, self.seen.recv()).await {
            print_lines(self.tally.show(seen, self.start_ms));
        }
        self.viewers.abort_all();
        print_lines(self.tally.show_early(self.start_ms));
        self.tally.summary(ticks, commands)
    }
}

async fn forward<E: AvroEvent + Send + 'static>(
    js: JetStream,
    wrap: fn(E) -> Seen,
    tx: mpsc::UnboundedSender<Seen>,
    since: time::OffsetDateTime,
) -> anyhow::Result<()> {
    let config = SubscriberConfig {
        node: None,
        start: StartAt::Since(since),
    };
    let mut sub = Subscriber::<E>::open(&js, config).await?;
    while let Some(received) = sub.next().await {
        if let Ok(event) = received?.event
            && tx.send(wrap(event)).is_err()
        {
            break;
        }
    }
    Ok(())
}

fn print_lines(lines: Vec<String>) {
    for line in lines {
        println!("{line}");
    }
}

/// What the demo saw, for the running display and the summary.
#[derive(Default)]
struct Tally {
    symptoms: BTreeMap<String, Symptom>,
    opened: u64,
    resolved: u64,
    decisions: u64,
    applied: u64,
    refused: u64,
    /// Refused actions handed to a human.
    escalated: u64,
    failed: u64,
    outcomes_resolved: u64,
    outcomes_unresolved: u64,
    recovery_ms: Vec<i64>,
    /// The decisions on the screen, by id.
    decided: BTreeSet<String>,
    /// Results that came in before their decision (the two are read from two streams),
    /// held until it is shown, by decision id.
    early: BTreeMap<String, Vec<ActionResult>>,
}

impl Tally {
    /// The lines `seen` puts on the screen (none for an update, or for a result held until
    /// its decision comes, which brings it).
    fn show(&mut self, seen: Seen, start_ms: i64) -> Vec<String> {
        let mut out = Vec::new();
        let at = |ts: i64| format!("t+{:>5.1}s", (ts - start_ms) as f64 / 1000.0);
        match seen {
            Seen::Symptom(s) => {
                match s.state {
                    SymptomState::Open => self.opened += 1,
                    SymptomState::Resolve => self.resolved += 1,
                    SymptomState::Update => {}
                }
                if s.state != SymptomState::Update {
                    out.push(format!(
                        "{}  {:<5}  {:<9} {:<18} {}",
                        at(s.ts_ms),
                        s.node,
                        s.state.as_str().to_uppercase(),
                        s.kind.as_str(),
                        s.summary
                    ));
                }
                self.symptoms.insert(s.symptom_id.clone(), s);
            }
            Seen::Decision(d) => {
                self.decisions += 1;
                self.decided.insert(d.decision_id.clone());
                let early = self.early.remove(&d.decision_id);
                let action = match (&d.action.peer, &d.action.service) {
                    (Some(p), _) => format!("{} {p}", d.action.kind.as_str()),
                    (_, Some(s)) => format!("{} {s}", d.action.kind.as_str()),
                    _ => d.action.kind.as_str().to_owned(),
                };
                out.push(format!(
                    "{}  {:<5}  DECIDE    {:<18} {}",
                    at(d.ts_ms),
                    d.node,
                    action,
                    d.reason
                ));
                for r in early.into_iter().flatten() {
                    out.extend(self.show(Seen::Action(r), start_ms));
                }
            }
            Seen::Action(r) if !self.decided.contains(&r.decision_id) => {
                self.early.entry(r.decision_id.clone()).or_default().push(r);
            }
            Seen::Action(r) => {
                match r.status {
                    ActionStatus::Applied => self.applied += 1,
                    ActionStatus::Refused => self.refused += 1,
                    ActionStatus::Failed => self.failed += 1,
                }
                self.escalated += u64::from(r.escalation.is_some());
                let detail = if !r.reason.is_empty() {
                    r.reason_and_escalation()
                } else if r.attempts == 0 {
                    "nothing sent to the node".to_owned()
                } else {
                    format!("{} attempt(s)", r.attempts)
                };
                out.push(format!(
                    "{}  {:<5}  {:<9} {:<18} {}",
                    at(r.ts_ms),
                    r.node,
                    r.status.as_str().to_uppercase(),
                    r.action.kind.as_str(),
                    detail
                ));
            }
            Seen::Outcome(o) => {
                match o.result {
                    OutcomeResult::Resolved => self.outcomes_resolved += 1,
                    OutcomeResult::NotResolved => self.outcomes_unresolved += 1,
                }
                if let Some(ms) = o.recovery_ms {
                    self.recovery_ms.push(ms);
                }
                out.push(format!(
                    "{}  {:<5}  OUTCOME   {:<18} {}",
                    at(o.ts_ms),
                    o.node,
                    o.result.as_str(),
                    o.detail
                ));
            }
        }
        out
    }

    /// The lines of the results still held for a decision that never came to the screen.
    fn show_early(&mut self, start_ms: i64) -> Vec<String> {
        let mut out = Vec::new();
        for (decision_id, results) in std::mem::take(&mut self.early) {
            self.decided.insert(decision_id);
            for r in results {
                out.extend(self.show(Seen::Action(r), start_ms));
            }
        }
        out
    }

    fn summary(&self, ticks: u64, commands: u64) -> String {
        let mttr = if self.recovery_ms.is_empty() {
            "no recovery measured".to_owned()
        } else {
            let mean = self.recovery_ms.iter().sum::<i64>() as f64 / self.recovery_ms.len() as f64;
            format!(
                "mean time to recover {:.1} s of simulated time",
                mean / 1000.0
            )
        };
        format!(
            "summary: {} incidents opened, {} resolved; {} decisions; actions: {} applied, {} \
             refused ({} escalated to a human), {} failed; outcomes: {} resolved, {} not \
             resolved; {mttr}. ({ticks} ticks simulated, {commands} commands answered by the \
             mesh)",
            self.opened,
            self.resolved,
            self.decisions,
            self.applied,
            self.refused,
            self.escalated,
            self.failed,
            self.outcomes_resolved,
            self.outcomes_unresolved
        )
    }
}

#[cfg(test)]
mod tests {
    use mapek_testkit::samples;

    use super::*;

    /// A tally that has read the sample result before its decision.
    fn result_first() -> Tally {
        let mut tally = Tally::default();
        let held = tally.show(Seen::Action(samples::action_result()), samples::TS_MS);
        assert!(held.is_empty(), "{held:?}");
        tally
    }

    #[test]
    fn a_result_read_before_its_decision_is_shown_after_it() {
        let mut tally = result_first();
        let start = samples::TS_MS;
        let lines = tally.show(Seen::Decision(samples::decision()), start);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("DECIDE"), "{lines:?}");
        assert!(lines[1].contains("APPLIED"), "{lines:?}");
        assert_eq!((tally.decisions, tally.applied), (1, 1));
    }

    #[test]
    fn a_result_whose_decision_never_came_is_shown_at_the_end() {
        let mut tally = result_first();
        let start = samples::TS_MS;
        let lines = tally.show_early(start);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("APPLIED"), "{lines:?}");
        assert!(tally.show_early(start).is_empty());
    }
}
