//! [`MeshStatus`]: the mesh at a glance, from the read model or from Redis.

use serde::Serialize;
use sqlx::Row;

use crate::redis::{NodeHealth, OpenIncident, RecentAction};
use crate::store::{int, opt_float, opt_int, opt_text, text};
use crate::{KnowledgeError, ReadModel, Redis};

/// A node whose latest telemetry is this much older than the newest node's is `silent`.
/// Measured in event time, so a replayed or simulated mesh reads the same as a live one.
pub const SILENT_AFTER_MS: i64 = 15_000;

/// Nodes by health, open incidents and recent actions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MeshStatus {
    /// Where it was read: `redis` or `sql`.
    pub source: String,
    /// Every known node, by id.
    pub nodes: Vec<NodeHealth>,
    /// Open incidents, the most recently opened first.
    pub open_incidents: Vec<OpenIncident>,
    /// The latest actions, newest first.
    pub recent_actions: Vec<RecentAction>,
}

impl MeshStatus {
    /// Reads it from Redis (the hot state the monitor, analyze and execute projections keep).
    pub async fn from_redis(redis: &Redis, actions: usize) -> Result<Self, KnowledgeError> {
        let mut s = Self {
            source: "redis".into(),
            nodes: redis.nodes().await?,
            open_incidents: redis.open_incidents().await?,
            recent_actions: redis.recent_actions(actions).await?,
        };
        s.mark_silent();
        Ok(s)
    }

    /// Reads it from the SQL read model.
    pub async fn from_sql(model: &ReadModel, actions: usize) -> Result<Self, KnowledgeError> {
        let pool = model.pool();
        let failed = |e| model.query_failed("reading the status", e);
        let nodes = sqlx::query(
            "SELECT node, ts_ms, health, cpu, mem, latency_ms, loss, links_total, links_down \
             FROM nodes ORDER BY node",
        )
        .fetch_all(pool)
        .await
        .map_err(failed)?
        .iter()
        .map(|r| {
            Ok(NodeHealth {
                node: text(r, 0)?,
                ts_ms: int(r, 1)?,
                health: text(r, 2)?,
                cpu: opt_float(r, 3)?,
                mem: opt_float(r, 4)?,
                latency_ms: opt_float(r, 5)?,
                loss: opt_float(r, 6)?,
                links_total: int(r, 7)?,
                links_down: int(r, 8)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(failed)?;
        let open_incidents = sqlx::query(
            "SELECT incident_id, node, kind, peer, severity, opened_ms, updated_ms, summary \
             FROM incidents WHERE state = 'open' ORDER BY opened_ms DESC, incident_id",
        )
        .fetch_all(pool)
        .await
        .map_err(failed)?
        .iter()
        .map(|r| {
            Ok(OpenIncident {
                incident_id: text(r, 0)?,
                node: text(r, 1)?,
                kind: text(r, 2)?,
                peer: r.try_get::<Option<String>, _>(3)?,
                severity: opt_float(r, 4)?.unwrap_or(0.0),
                opened_ms: int(r, 5)?,
                updated_ms: int(r, 6)?,
                summary: text(r, 7)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(failed)?;
        let recent_actions = sqlx::query(
            "SELECT node, ts_ms, action, status, reason, incident_id, escalation FROM actions \
             ORDER BY ts_ms DESC, stream_seq DESC LIMIT $1",
        )
        .bind(actions as i64)
        .fetch_all(pool)
        .await
        .map_err(failed)?
        .iter()
        .map(|r| {
            Ok(RecentAction {
                node: text(r, 0)?,
                ts_ms: int(r, 1)?,
                action: text(r, 2)?,
                status: text(r, 3)?,
                reason: text(r, 4)?,
                incident_id: text(r, 5)?,
                escalation: opt_text(r, 6)?.and_then(|j: String| serde_json::from_str(&j).ok()),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(failed)?;
        let _ = opt_int;
        let mut s = Self {
            source: "sql".into(),
            nodes,
            open_incidents,
            recent_actions,
        };
        s.mark_silent();
        Ok(s)
    }

    /// Marks `silent` the nodes that stopped reporting while others went on.
    fn mark_silent(&mut self) {
        let newest = self.nodes.iter().map(|n| n.ts_ms).max().unwrap_or(0);
        for n in &mut self.nodes {
            if n.ts_ms < newest - SILENT_AFTER_MS {
                n.health = "silent".into();
            }
        }
    }

    /// How many nodes have each health, in the order ok, degraded, silent.
    pub fn health_counts(&self) -> Vec<(&'static str, usize)> {
        ["ok", "degraded", "silent"]
            .into_iter()
            .map(|h| (h, self.nodes.iter().filter(|n| n.health == h).count()))
            .collect()
    }
}
