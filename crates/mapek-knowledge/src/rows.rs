//! Writing decoded events as rows: one multi-row statement per table and batch.
//!
//! Every statement is idempotent and independent of how the log is cut into batches: a
//! node keeps its latest telemetry (the greatest `ts_ms`, the later one on a tie), an
//! incident folds its symptoms (first opening, latest state, highest severity, count), and
//! event rows are inserted once by their id. So a batch applied after a crash, or the same
//! log projected in other batches by a rebuild, leaves the same rows.

use std::collections::BTreeMap;

use mapek_domain::{ActionResult, Decision, Outcome, Symptom, SymptomState, Telemetry};
use sqlx::any::AnyArguments;
use sqlx::{Any, AnyConnection, Arguments};

use crate::Backend;

/// A batch of decoded events of one stream, each with its stream sequence.
pub(crate) enum Events {
    /// Telemetry: the nodes table.
    Monitor(Vec<(u64, Telemetry)>),
    /// Symptoms: the incidents and symptoms tables.
    Analyze(Vec<(u64, Symptom)>),
    /// Decisions.
    Plan(Vec<(u64, Decision)>),
    /// Action results.
    Execute(Vec<(u64, ActionResult)>),
    /// Outcomes.
    Knowledge(Vec<(u64, Outcome)>),
}

impl Events {
    /// How many events the batch holds.
    pub(crate) fn len(&self) -> usize {
        match self {
            Events::Monitor(v) => v.len(),
            Events::Analyze(v) => v.len(),
            Events::Plan(v) => v.len(),
            Events::Execute(v) => v.len(),
            Events::Knowledge(v) => v.len(),
        }
    }

    /// Keeps only the events after `seq` (those before are already applied).
    pub(crate) fn retain_after(&mut self, seq: u64) {
        match self {
            Events::Monitor(v) => v.retain(|(s, _)| *s > seq),
            Events::Analyze(v) => v.retain(|(s, _)| *s > seq),
            Events::Plan(v) => v.retain(|(s, _)| *s > seq),
            Events::Execute(v) => v.retain(|(s, _)| *s > seq),
            Events::Knowledge(v) => v.retain(|(s, _)| *s > seq),
        }
    }
}

/// One value to bind.
enum Value {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    OptInt(Option<i64>),
    Float(f64),
    OptFloat(Option<f64>),
}

/// Rows of one table, bound as `($1, $2, …), (…)` for Postgres and `(?, ?, …), (…)` for
/// SQLite.
///
/// SQLite takes `$1` too, but as a named parameter, and sqlx binds each parameter after
/// asking SQLite its name, which SQLite finds by a linear scan of the statement's names: a
/// statement of 500 rows of 11 values spent 93% of the SQLite writer's time in that lookup.
/// An anonymous `?` has no name, so binding it costs the same whatever the statement's size.
struct Rows {
    width: usize,
    values: Vec<Value>,
}

impl Rows {
    fn new(width: usize) -> Self {
        Self {
            width,
            values: Vec::new(),
        }
    }

    fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.width);
        self.values.extend(row);
    }

    /// Runs `head VALUES (…), (…) tail` on `conn`, placeholders in `backend`'s form;
    /// nothing when there are no rows.
    async fn execute(
        self,
        conn: &mut AnyConnection,
        backend: Backend,
        head: &str,
        tail: &str,
    ) -> Result<(), sqlx::Error> {
        if self.values.is_empty() {
            return Ok(());
        }
        let rows = self.values.len() / self.width;
        let mut sql = String::with_capacity(head.len() + tail.len() + rows * self.width * 5);
        sql.push_str(head);
        sql.push_str(" VALUES ");
        let mut n = 0;
        for r in 0..rows {
            sql.push_str(if r == 0 { "(" } else { ", (" });
            for c in 0..self.width {
                n += 1;
                if c > 0 {
                    sql.push_str(", ");
                }
                match backend {
                    Backend::Postgres => {
                        sql.push('$');
                        sql.push_str(&n.to_string());
                    }
                    Backend::Sqlite => sql.push('?'),
                }
            }
            sql.push(')');
        }
        sql.push(' ');
        sql.push_str(tail);
        let mut args = AnyArguments::default();
        for v in self.values {
            let added = match v {
                Value::Text(s) => args.add(s),
                Value::OptText(s) => args.add(s),
                Value::Int(i) => args.add(i),
                Value::OptInt(i) => args.add(i),
                Value::Float(f) => args.add(f),
                Value::OptFloat(f) => args.add(f),
            };
            added.map_err(sqlx::Error::Encode)?;
        }
        sqlx::query_with::<Any, _>(&sql, args)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// Rows per statement: well under both engines' limits on bound values (SQLite 32 766,
/// Postgres 65 535) for the widest table.
const CHUNK: usize = 500;

/// Writes `events` (already filtered to those after the stored sequence).
pub(crate) async fn write(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &Events,
) -> Result<(), sqlx::Error> {
    match events {
        Events::Monitor(v) => write_nodes(conn, backend, v).await,
        Events::Analyze(v) => write_symptoms(conn, backend, v).await,
        Events::Plan(v) => write_decisions(conn, backend, v).await,
        Events::Execute(v) => write_actions(conn, backend, v).await,
        Events::Knowledge(v) => write_outcomes(conn, backend, v).await,
    }
}

/// The health a node's latest telemetry shows: `degraded` when a resource is nearly
/// exhausted or a link is down or lossy, else `ok`. (A node that stopped reporting is
/// `silent`, which only the reader can tell, from how old the row is.)
pub fn health(t: &Telemetry) -> &'static str {
    let high = |k: &str, limit: f64| t.metrics.get(k).is_some_and(|v| *v >= limit);
    let bad_link = t.links.iter().any(|l| !l.up || l.loss >= 0.05);
    if high("cpu", 0.9) || high("mem", 0.9) || high("loss", 0.05) || bad_link {
        "degraded"
    } else {
        "ok"
    }
}

async fn write_nodes(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[(u64, Telemetry)],
) -> Result<(), sqlx::Error> {
    // At 10 000 samples a second only each node's latest sample of the batch is written.
    let mut latest: BTreeMap<&str, &Telemetry> = BTreeMap::new();
    for (_, t) in events {
        let slot = latest.entry(t.node.as_str()).or_insert(t);
        if t.ts_ms >= slot.ts_ms {
            *slot = t;
        }
    }
    let all: Vec<&Telemetry> = latest.into_values().collect();
    for chunk in all.chunks(CHUNK) {
        let mut rows = Rows::new(11);
        for t in chunk {
            let down = t.links.iter().filter(|l| !l.up).count();
            rows.push(vec![
                Value::Text(t.node.as_str().to_owned()),
                Value::Int(t.ts_ms),
                Value::Text(health(t).to_owned()),
                Value::OptFloat(t.metrics.get("cpu").copied()),
                Value::OptFloat(t.metrics.get("mem").copied()),
                Value::OptFloat(t.metrics.get("latency_ms").copied()),
                Value::OptFloat(t.metrics.get("loss").copied()),
                Value::Int(t.links.len() as i64),
                Value::Int(down as i64),
                Value::Text(json(&t.metrics)),
                Value::Text(t.event_id.clone()),
            ]);
        }
        rows.execute(
            conn,
            backend,
            "INSERT INTO nodes (node, ts_ms, health, cpu, mem, latency_ms, loss, links_total, \
             links_down, metrics, event_id)",
            "ON CONFLICT (node) DO UPDATE SET ts_ms = excluded.ts_ms, health = excluded.health, \
             cpu = excluded.cpu, mem = excluded.mem, latency_ms = excluded.latency_ms, \
             loss = excluded.loss, links_total = excluded.links_total, \
             links_down = excluded.links_down, metrics = excluded.metrics, \
             event_id = excluded.event_id WHERE excluded.ts_ms >= nodes.ts_ms",
        )
        .await?;
    }
    Ok(())
}

/// An incident folded from the symptoms of one batch.
struct Fold<'a> {
    first: &'a Symptom,
    last: &'a Symptom,
    max_severity: f64,
    resolved_ms: Option<i64>,
    count: i64,
}

async fn write_symptoms(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[(u64, Symptom)],
) -> Result<(), sqlx::Error> {
    for chunk in events.chunks(CHUNK) {
        let mut rows = Rows::new(12);
        for (seq, s) in chunk {
            rows.push(vec![
                Value::Text(s.symptom_id.clone()),
                Value::Text(s.incident_id.clone()),
                Value::Text(s.node.as_str().to_owned()),
                Value::Int(s.ts_ms),
                Value::Text(s.kind.as_str().to_owned()),
                Value::Text(s.state.as_str().to_owned()),
                Value::Float(s.severity),
                Value::OptText(s.peer.as_ref().map(|p| p.as_str().to_owned())),
                Value::Text(json(&s.evidence)),
                Value::Text(s.summary.clone()),
                Value::Text(s.caused_by.clone()),
                Value::Int(*seq as i64),
            ]);
        }
        rows.execute(
            conn,
            backend,
            "INSERT INTO symptoms (symptom_id, incident_id, node, ts_ms, kind, state, severity, \
             peer, evidence, summary, caused_by, stream_seq)",
            "ON CONFLICT (symptom_id) DO NOTHING",
        )
        .await?;
    }
    // One upsert per incident and batch (Postgres refuses to update a row twice in one
    // statement), folded in log order.
    let mut folds: BTreeMap<&str, Fold<'_>> = BTreeMap::new();
    for (_, s) in events {
        let f = folds.entry(s.incident_id.as_str()).or_insert(Fold {
            first: s,
            last: s,
            max_severity: s.severity,
            resolved_ms: None,
            count: 0,
        });
        f.last = s;
        f.max_severity = f.max_severity.max(s.severity);
        f.count += 1;
        if s.state == SymptomState::Resolve {
            f.resolved_ms = Some(s.ts_ms);
        }
    }
    let folds: Vec<Fold<'_>> = folds.into_values().collect();
    for chunk in folds.chunks(CHUNK) {
        let mut rows = Rows::new(12);
        for f in chunk {
            let state = if f.last.state == SymptomState::Resolve {
                "resolved"
            } else {
                "open"
            };
            rows.push(vec![
                Value::Text(f.first.incident_id.clone()),
                Value::Text(f.first.node.as_str().to_owned()),
                Value::Text(f.first.kind.as_str().to_owned()),
                Value::OptText(f.first.peer.as_ref().map(|p| p.as_str().to_owned())),
                Value::Text(state.to_owned()),
                Value::Float(f.last.severity),
                Value::Float(f.max_severity),
                Value::Int(f.first.ts_ms),
                Value::Int(f.last.ts_ms),
                Value::OptInt(f.resolved_ms),
                Value::Text(f.last.summary.clone()),
                Value::Int(f.count),
            ]);
        }
        rows.execute(
            conn,
            backend,
            "INSERT INTO incidents (incident_id, node, kind, peer, state, severity, \
             max_severity, opened_ms, updated_ms, resolved_ms, summary, symptoms)",
            "ON CONFLICT (incident_id) DO UPDATE SET state = excluded.state, \
             severity = excluded.severity, \
             max_severity = CASE WHEN excluded.max_severity > incidents.max_severity \
             THEN excluded.max_severity ELSE incidents.max_severity END, \
             peer = COALESCE(incidents.peer, excluded.peer), \
             updated_ms = excluded.updated_ms, \
             resolved_ms = COALESCE(excluded.resolved_ms, incidents.resolved_ms), \
             summary = excluded.summary, symptoms = incidents.symptoms + excluded.symptoms",
        )
        .await?;
    }
    Ok(())
}

async fn write_decisions(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[(u64, Decision)],
) -> Result<(), sqlx::Error> {
    for chunk in events.chunks(CHUNK) {
        let mut rows = Rows::new(15);
        for (seq, d) in chunk {
            // Serialised from the struct, so the keys keep its field order whatever
            // serde_json features other crates of the build turn on (`preserve_order` changes
            // how a `json!` object orders its keys).
            let knowledge = serde_json::to_string(&d.knowledge).unwrap_or_else(|_| "[]".into());
            rows.push(vec![
                Value::Text(d.decision_id.clone()),
                Value::Text(d.symptom_id.clone()),
                Value::Text(d.incident_id.clone()),
                Value::Text(d.node.as_str().to_owned()),
                Value::Int(d.ts_ms),
                Value::Text(d.action.kind.as_str().to_owned()),
                Value::OptText(d.action.peer.as_ref().map(|p| p.as_str().to_owned())),
                Value::OptText(d.action.service.clone()),
                Value::Text(json(&d.action.params)),
                Value::Text(d.rule.clone()),
                Value::Text(d.reason.clone()),
                Value::Text(d.policy_name.clone()),
                Value::Text(d.policy_hash.clone()),
                Value::Text(knowledge),
                Value::Int(*seq as i64),
            ]);
        }
        rows.execute(
            conn,
            backend,
            "INSERT INTO decisions (decision_id, symptom_id, incident_id, node, ts_ms, action, \
             peer, service, params, rule, reason, policy_name, policy_hash, knowledge, \
             stream_seq)",
            "ON CONFLICT (decision_id) DO NOTHING",
        )
        .await?;
    }
    Ok(())
}

async fn write_actions(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[(u64, ActionResult)],
) -> Result<(), sqlx::Error> {
    for chunk in events.chunks(CHUNK) {
        let mut rows = Rows::new(13);
        for (seq, a) in chunk {
            rows.push(vec![
                Value::Text(a.result_id.clone()),
                Value::Text(a.decision_id.clone()),
                Value::Text(a.incident_id.clone()),
                Value::Text(a.node.as_str().to_owned()),
                Value::Int(a.ts_ms),
                Value::Text(a.action.kind.as_str().to_owned()),
                Value::OptText(a.action.peer.as_ref().map(|p| p.as_str().to_owned())),
                Value::Text(a.status.as_str().to_owned()),
                Value::Text(a.reason.clone()),
                Value::Int(i64::from(a.attempts)),
                Value::Int(i64::from(a.dry_run)),
                Value::Int(*seq as i64),
                Value::OptText(a.escalation.as_ref().map(escalation_json)),
            ]);
        }
        rows.execute(
            conn,
            backend,
            "INSERT INTO actions (result_id, decision_id, incident_id, node, ts_ms, action, \
             peer, status, reason, attempts, dry_run, stream_seq, escalation)",
            "ON CONFLICT (result_id) DO NOTHING",
        )
        .await?;
    }
    Ok(())
}

async fn write_outcomes(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[(u64, Outcome)],
) -> Result<(), sqlx::Error> {
    for chunk in events.chunks(CHUNK) {
        let mut rows = Rows::new(9);
        for (seq, o) in chunk {
            rows.push(vec![
                Value::Text(o.outcome_id.clone()),
                Value::Text(o.decision_id.clone()),
                Value::Text(o.incident_id.clone()),
                Value::Text(o.node.as_str().to_owned()),
                Value::Int(o.ts_ms),
                Value::Text(o.result.as_str().to_owned()),
                Value::OptInt(o.recovery_ms),
                Value::Text(o.detail.clone()),
                Value::Int(*seq as i64),
            ]);
        }
        rows.execute(
            conn,
            backend,
            "INSERT INTO outcomes (outcome_id, decision_id, incident_id, node, ts_ms, result, \
             recovery_ms, detail, stream_seq)",
            "ON CONFLICT (outcome_id) DO NOTHING",
        )
        .await?;
    }
    Ok(())
}

/// A map as a JSON object, keys in order.
fn json<V: serde::Serialize>(map: &BTreeMap<String, V>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
}

/// An escalation's params as the JSON object the `escalation` column holds.
pub(crate) fn escalation_json(params: &std::collections::BTreeMap<String, String>) -> String {
    serde_json::to_string(params).unwrap_or_default()
}
