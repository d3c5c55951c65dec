//! How each event type prints: a table row, or a JSON line.

use mapek_bus::Received;
use mapek_domain::{ActionResult, Decision, Outcome, Rejected, ShadowDecision, Symptom, Telemetry};
use serde::Serialize;
use serde_json::json;

use crate::time_arg::format_ms;

/// An event that prints as a table row.
pub trait Render: Serialize {
    /// The column titles after SEQ and TIME.
    const COLUMNS: &'static str;
    /// The header line.
    fn header() -> String {
        format!("{:>8}  {:<24}  {}", "SEQ", "TIME", Self::COLUMNS)
    }
    /// The event's time.
    fn time(&self) -> i64;
    /// The columns after SEQ and TIME.
    fn row(&self) -> String;
}

/// One table line: the event's columns, or why it does not decode.
pub fn table_line<E: Render>(r: &Received<E>) -> String {
    match &r.event {
        Ok(e) => format!(
            "{:>8}  {:<24}  {}",
            r.stream_seq,
            format_ms(e.time()),
            e.row()
        ),
        Err(err) => format!(
            "{:>8}  {:<24}  cannot decode {}: {err}",
            r.stream_seq, "-", r.subject
        ),
    }
}

/// One JSON line: `{"stream","seq","subject","stored","event"}`, or `"error"` instead of
/// `"event"`. The stream names where `seq` counts (`MAPEK_MONITOR_1`: telemetry may be split
/// over several streams).
pub fn json_line<E: Render>(r: &Received<E>) -> String {
    let stored = r
        .stored
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let value = match &r.event {
        Ok(e) => json!({
            "stream": &*r.stream, "seq": r.stream_seq, "subject": r.subject, "stored": stored,
            "event": e
        }),
        Err(err) => json!({
            "stream": &*r.stream, "seq": r.stream_seq, "subject": r.subject, "stored": stored,
            "error": err.to_string()
        }),
    };
    value.to_string()
}

fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        format!("{s:<width$}")
    } else {
        let mut t: String = s.chars().take(width - 1).collect();
        t.push('…');
        t
    }
}

impl Render for Telemetry {
    const COLUMNS: &'static str = "NODE              METRICS";
    fn time(&self) -> i64 {
        self.ts_ms
    }
    fn row(&self) -> String {
        let mut metrics: Vec<String> = self
            .metrics
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for l in &self.links {
            let state = if l.up { "up" } else { "down" };
            metrics.push(format!(
                "link:{}={state}/{}ms/{}",
                l.peer, l.latency_ms, l.loss
            ));
        }
        format!("{}  {}", cut(self.node.as_str(), 16), metrics.join(" "))
    }
}

impl Render for Symptom {
    const COLUMNS: &'static str = "NODE              KIND               STATE    SEVERITY  SUMMARY";
    fn time(&self) -> i64 {
        self.ts_ms
    }
    fn row(&self) -> String {
        format!(
            "{}  {}  {:<7}  {:>8.2}  {}",
            cut(self.node.as_str(), 16),
            cut(self.kind.as_str(), 17),
            self.state.as_str(),
            self.severity,
            self.summary
        )
    }
}

fn action_text(a: &mapek_domain::Action) -> String {
    match (&a.peer, &a.service) {
        (Some(peer), _) => format!("{} {peer}", a.kind.as_str()),
        (None, Some(service)) => format!("{} {service}", a.kind.as_str()),
        (None, None) => a.kind.as_str().to_owned(),
    }
}

impl Render for Decision {
    const COLUMNS: &'static str = "NODE              ACTION                RULE              WHY";
    fn time(&self) -> i64 {
        self.ts_ms
    }
    fn row(&self) -> String {
        format!(
            "{}  {}  {}  {}",
            cut(self.node.as_str(), 16),
            cut(&action_text(&self.action), 20),
            cut(&self.rule, 16),
            self.reason
        )
    }
}

impl Render for ShadowDecision {
    const COLUMNS: &'static str =
        "POLICY            NODE              ACTION                RULE              WHY";
    fn time(&self) -> i64 {
        self.0.ts_ms
    }
    fn row(&self) -> String {
        format!("{}  {}", cut(&self.0.policy_name, 16), self.0.row())
    }
}

impl Render for ActionResult {
    const COLUMNS: &'static str = "NODE              ACTION                STATUS   TRIES  REASON";
    fn time(&self) -> i64 {
        self.ts_ms
    }
    fn row(&self) -> String {
        let status = if self.dry_run {
            format!("{} (dry run)", self.status.as_str())
        } else {
            self.status.as_str().to_owned()
        };
        format!(
            "{}  {}  {:<7}  {:>5}  {}",
            cut(self.node.as_str(), 16),
            cut(&action_text(&self.action), 20),
            status,
            self.attempts,
            self.reason
        )
    }
}

impl Render for Outcome {
    const COLUMNS: &'static str = "NODE              RESULT        RECOVERY  DETAIL";
    fn time(&self) -> i64 {
        self.ts_ms
    }
    fn row(&self) -> String {
        let recovery = self
            .recovery_ms
            .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        format!(
            "{}  {:<12}  {:>8}  {}",
            cut(self.node.as_str(), 16),
            self.result.as_str(),
            recovery,
            self.detail
        )
    }
}

impl Render for Rejected {
    const COLUMNS: &'static str = "PHASE      SUBJECT                     REASON";
    fn time(&self) -> i64 {
        self.ts_ms
    }
    fn row(&self) -> String {
        format!(
            "{:<9}  {}  {}",
            self.phase,
            cut(&self.subject, 26),
            self.reason
        )
    }
}
