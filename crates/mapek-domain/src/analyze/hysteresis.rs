//! Hysteresis: when a run of readings opens, updates or resolves an incident.
//!
//! One [`Tracker`] per node and symptom kind. Deciding is [`Tracker::next`], a pure function of
//! the tracker and one reading that returns the tracker to keep and the symptom state to emit,
//! if any; the caller folds by storing the returned tracker.

use crate::SymptomState;

/// Marks "no peer" in [`Tracker::peer`], to keep the tracker small.
pub(crate) const NO_PEER: u32 = u32::MAX;

/// What a detector saw in one evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Verdict {
    /// Whether the statistic is over its threshold.
    pub(crate) breach: bool,
    /// Measured / threshold.
    pub(crate) severity: f64,
    /// The peer blamed, or [`NO_PEER`].
    pub(crate) peer: u32,
}

/// The hysteresis settings one kind of symptom is judged with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rules {
    /// Consecutive breaches before opening.
    pub(crate) open_after: u16,
    /// Consecutive clean evaluations before resolving.
    pub(crate) resolve_after: u16,
    /// Relative severity change that makes an update.
    pub(crate) update_ratio: f64,
    /// Event time after which an open, still breaching incident is restated even if nothing
    /// changed; 0 never.
    pub(crate) update_every_ms: i64,
}

/// The hysteresis state of one node and kind: 40 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Tracker {
    /// Consecutive breaching evaluations so far.
    breaches: u16,
    /// Consecutive clean evaluations so far, while open.
    cleans: u16,
    /// The severity last sent, while open.
    severity: f32,
    /// The peer last sent, while open ([`NO_PEER`] when none).
    peer: u32,
    /// Event time of the last symptom sent, while open.
    sent_at: i64,
    /// Event time of the telemetry that opened the incident: with the node and kind it makes
    /// the incident id, so the id need not be stored.
    opened_at: Option<i64>,
}

impl Tracker {
    /// The tracker after `verdict`, evaluated on telemetry of time `ts_ms`, and the symptom
    /// state it calls for.
    ///
    /// - closed: `open_after` breaches in a row open; a clean evaluation restarts the count.
    /// - open and breaching: an update when the severity moved by at least `update_ratio` of
    ///   the severity last sent, or the blamed peer changed, or `update_every_ms` of event
    ///   time passed since the last symptom sent (so followers, and the evaluation of an
    ///   action, see that it is still open and time goes by); otherwise nothing.
    /// - open and clean: `resolve_after` clean evaluations in a row resolve; a breach
    ///   restarts the count.
    pub(crate) fn next(
        self,
        verdict: Verdict,
        rules: Rules,
        ts_ms: i64,
    ) -> (Tracker, Option<SymptomState>) {
        let mut t = self;
        if verdict.breach {
            t.cleans = 0;
            t.breaches = t.breaches.saturating_add(1);
            if t.opened_at.is_none() {
                if t.breaches < rules.open_after {
                    return (t, None);
                }
                t.opened_at = Some(ts_ms);
                t.sent(verdict, ts_ms);
                return (t, Some(SymptomState::Open));
            }
            let last = f64::from(t.severity);
            let moved = (verdict.severity - last).abs() >= rules.update_ratio * last;
            let due = rules.update_every_ms > 0 && ts_ms - t.sent_at >= rules.update_every_ms;
            if moved || verdict.peer != t.peer || due {
                t.sent(verdict, ts_ms);
                return (t, Some(SymptomState::Update));
            }
            return (t, None);
        }
        t.breaches = 0;
        if t.opened_at.is_none() {
            return (t, None);
        }
        t.cleans = t.cleans.saturating_add(1);
        if t.cleans < rules.resolve_after {
            return (t, None);
        }
        (Tracker::default(), Some(SymptomState::Resolve))
    }

    fn sent(&mut self, verdict: Verdict, ts_ms: i64) {
        self.severity = verdict.severity as f32;
        self.peer = verdict.peer;
        self.sent_at = ts_ms;
    }

    /// When the open incident was opened, if one is open.
    pub(crate) fn opened_at(&self) -> Option<i64> {
        self.opened_at
    }

    /// The peer last sent ([`NO_PEER`] when none or closed).
    pub(crate) fn peer(&self) -> u32 {
        if self.opened_at.is_some() {
            self.peer
        } else {
            NO_PEER
        }
    }

    /// The severity last sent (0 when closed).
    pub(crate) fn severity(&self) -> f64 {
        f64::from(self.severity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        open_after: 3,
        resolve_after: 2,
        update_ratio: 0.2,
        update_every_ms: 0,
    };

    fn run(severities: &[f64]) -> Vec<Option<SymptomState>> {
        let mut t = Tracker::default();
        let mut out = Vec::new();
        for (i, &severity) in severities.iter().enumerate() {
            let verdict = Verdict {
                breach: severity >= 1.0,
                severity,
                peer: NO_PEER,
            };
            let (next, state) = t.next(verdict, RULES, i as i64);
            t = next;
            out.push(state);
        }
        out
    }

    #[test]
    fn opens_after_k_breaches_in_a_row_and_resolves_after_m_clean() {
        use SymptomState::*;
        let got = run(&[2.0, 2.0, 0.5, 2.0, 2.0, 2.0, 2.1, 0.5, 2.0, 0.5, 0.5, 0.5]);
        let want = [
            None,
            None,
            None,
            None,
            None,
            Some(Open),
            None,
            None,
            None,
            None,
            Some(Resolve),
            None,
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn updates_only_on_a_notable_change_from_what_was_sent() {
        use SymptomState::*;
        let got = run(&[2.0, 2.0, 2.0, 2.2, 2.39, 2.41, 2.5, 1.9]);
        let want = [
            None,
            None,
            Some(Open),
            None,
            None,
            Some(Update),
            None,
            Some(Update),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn an_unchanged_open_incident_is_restated_every_period_of_event_time() {
        use SymptomState::*;
        let rules = Rules {
            update_every_ms: 10_000,
            ..RULES
        };
        let mut t = Tracker::default();
        let verdict = Verdict {
            breach: true,
            severity: 2.0,
            peer: NO_PEER,
        };
        let mut sent = Vec::new();
        for second in 0..35 {
            let (next, state) = t.next(verdict, rules, second * 1000);
            t = next;
            if let Some(state) = state {
                sent.push((second, state));
            }
        }
        assert_eq!(sent, [(2, Open), (12, Update), (22, Update), (32, Update)]);
    }
}
