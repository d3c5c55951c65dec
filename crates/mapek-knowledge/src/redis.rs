//! [`Redis`]: hot node health for `mapek status`, and what several executors share: leases
//! on nodes (the commands out) and the lock they take turns deciding under, behind the
//! executor's [`SharedLeases`].
//!
//! Every key starts with a prefix (`mapek:` by default) so that several meshes, or several
//! tests, share one server without seeing each other.

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands};
use deadpool_redis::{Config, Pool, Runtime};
use futures::future::BoxFuture;
use mapek_domain::{SymptomState, Telemetry};
use mapek_loop::execute::{ShareError, SharedLeases};
use serde::{Deserialize, Serialize};

use crate::KnowledgeError;
use crate::error::redact;
use crate::rows::{Events, health};

/// How long a node's hot health lives without fresh telemetry: a node that stops
/// reporting drops out of Redis by itself.
pub const HEALTH_TTL: Duration = Duration::from_secs(120);

/// How many recent actions Redis keeps.
pub const RECENT_ACTIONS: isize = 50;

/// Takes a key (KEYS[1]) for its holder (ARGV[1]) for ARGV[2] ms if nobody holds it, and
/// records its name (ARGV[3]: the node, or the lock) in the set of names held (KEYS[2]), so
/// they can be listed.
const LEASE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('SADD', KEYS[2], ARGV[3])
  return 1
end
return 0";

/// Deletes a key (KEYS[1]) only if its holder (ARGV[1]) still holds it: one that expired and
/// was taken by someone else is not theirs to release. Forgets its name (ARGV[2]) in the set
/// of names held (KEYS[2]).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SREM', KEYS[2], ARGV[2])
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Lists the leased nodes of the set KEYS[1] with their holders (the leases are under the
/// prefix ARGV[1]), forgetting the nodes whose lease expired. Returns node, holder, node, …
const LEASES: &str = r"
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local holder = redis.call('GET', ARGV[1] .. node)
  if holder then
    table.insert(out, node)
    table.insert(out, holder)
  else
    redis.call('SREM', KEYS[1], node)
  end
end
return out";

/// What can be held with a holder and a time to live: node leases and locks. Each has its
/// keys (`<prefix>lease:<node>`) and a set of the names held (`<prefix>leased`).
struct Held {
    key: &'static str,
    set: &'static str,
    taking: &'static str,
    releasing: &'static str,
}

impl Held {
    const LEASE: Held = Held {
        key: "lease:",
        set: "leased",
        taking: "taking a lease",
        releasing: "releasing a lease",
    };
    const LOCK: Held = Held {
        key: "lock:",
        set: "locked",
        taking: "taking a lock",
        releasing: "releasing a lock",
    };
}

/// A node's latest health as the monitor projection keeps it in Redis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeHealth {
    /// The node id.
    pub node: String,
    /// The time of its latest telemetry (Unix ms).
    pub ts_ms: i64,
    /// `ok`, `degraded`, or (computed when read) `silent`.
    pub health: String,
    /// CPU use, 0 to 1, if reported.
    pub cpu: Option<f64>,
    /// Memory use, 0 to 1, if reported.
    pub mem: Option<f64>,
    /// Latency in ms, if reported.
    pub latency_ms: Option<f64>,
    /// Packet loss, 0 to 1, if reported.
    pub loss: Option<f64>,
    /// Links reported.
    pub links_total: i64,
    /// Links reported down.
    pub links_down: i64,
}

impl NodeHealth {
    /// The health a telemetry sample shows.
    pub fn of(t: &Telemetry) -> Self {
        Self {
            node: t.node.as_str().to_owned(),
            ts_ms: t.ts_ms,
            health: health(t).to_owned(),
            cpu: t.metrics.get("cpu").copied(),
            mem: t.metrics.get("mem").copied(),
            latency_ms: t.metrics.get("latency_ms").copied(),
            loss: t.metrics.get("loss").copied(),
            links_total: t.links.len() as i64,
            links_down: t.links.iter().filter(|l| !l.up).count() as i64,
        }
    }
}

/// An open incident, as `mapek status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenIncident {
    /// The incident id.
    pub incident_id: String,
    /// The node it is on.
    pub node: String,
    /// The symptom kind (`packet_loss`, …).
    pub kind: String,
    /// The peer, for link symptoms.
    pub peer: Option<String>,
    /// Its latest severity.
    pub severity: f64,
    /// When it opened (Unix ms, event time).
    pub opened_ms: i64,
    /// Its latest symptom's time.
    pub updated_ms: i64,
    /// Its latest symptom's summary.
    pub summary: String,
}

/// An action result, as `mapek status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecentAction {
    /// The node acted on.
    pub node: String,
    /// When (Unix ms, event time).
    pub ts_ms: i64,
    /// The action (`reroute`, …).
    pub action: String,
    /// `applied`, `failed` or `refused`.
    pub status: String,
    /// Why, in a sentence.
    pub reason: String,
    /// The incident it answered.
    pub incident_id: String,
    /// For a refused action handed to a human: the escalation's params.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<BTreeMap<String, String>>,
}

/// A pool of connections to Redis, with the key prefix.
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    url: String,
    prefix: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Redis {
    /// Connects to `url` (`redis://host:6379`) with the key prefix `mapek:`, and checks that
    /// the server answers.
    pub async fn connect(url: &str) -> Result<Self, KnowledgeError> {
        Self::connect_with_prefix(url, "mapek:").await
    }

    /// Like [`Redis::connect`], with every key under `prefix`.
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, KnowledgeError> {
        let shown = redact(url);
        let pool = Config::from_url(url)
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| KnowledgeError::Redis {
                url: shown.clone(),
                doing: "setting up".into(),
                detail: e.to_string(),
            })?;
        let redis = Self {
            pool,
            url: shown,
            prefix: prefix.to_owned(),
        };
        let mut conn = redis.conn("connecting").await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| redis.failed("connecting", e))?;
        Ok(redis)
    }

    fn failed(&self, doing: &str, e: impl ToString) -> KnowledgeError {
        KnowledgeError::Redis {
            url: self.url.clone(),
            doing: doing.to_owned(),
            detail: e.to_string(),
        }
    }

    async fn conn(&self, doing: &str) -> Result<deadpool_redis::Connection, KnowledgeError> {
        // A pool waits forever for a dead server by default; a caller wants an answer.
        tokio::time::timeout(Duration::from_secs(5), self.pool.get())
            .await
            .map_err(|_| self.failed(doing, "no connection within 5 s"))?
            .map_err(|e| self.failed(doing, e))
    }

    /// Takes the lease on `node` for `holder` for `ttl` if nobody holds it; `true` if taken.
    /// The lease ends at [`Redis::release`] or when `ttl` runs out (a holder that died).
    /// `holder` is any text that tells who holds it and why; [`Redis::leases`] lists it.
    pub async fn try_lease(
        &self,
        node: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, KnowledgeError> {
        self.hold(&Held::LEASE, node, holder, ttl).await
    }

    /// Releases the lease on `node` if `holder` holds it; `true` if it did.
    pub async fn release(&self, node: &str, holder: &str) -> Result<bool, KnowledgeError> {
        self.let_go(&Held::LEASE, node, holder).await
    }

    /// Every node lease held now: (node, holder), ordered by node. Leases that expired are
    /// not listed (and forgotten).
    pub async fn leases(&self) -> Result<Vec<(String, String)>, KnowledgeError> {
        let mut conn = self.conn("listing leases").await?;
        let flat: Vec<String> = redis::cmd("EVAL")
            .arg(LEASES)
            .arg(1)
            .arg(format!("{}{}", self.prefix, Held::LEASE.set))
            .arg(format!("{}{}", self.prefix, Held::LEASE.key))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed("listing leases", e))?;
        let mut out: Vec<(String, String)> = flat
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Takes the lock `name` for `holder` for `ttl` if nobody holds it; `true` if taken.
    /// Locks are not leases on nodes: [`Redis::leases`] does not list them.
    pub async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, KnowledgeError> {
        self.hold(&Held::LOCK, name, holder, ttl).await
    }

    /// Releases the lock `name` if `holder` holds it; `true` if it did.
    pub async fn unlock(&self, name: &str, holder: &str) -> Result<bool, KnowledgeError> {
        self.let_go(&Held::LOCK, name, holder).await
    }

    /// Takes `what`'s key `name` for `holder` for `ttl` if it is free ([`LEASE`]).
    async fn hold(
        &self,
        what: &Held,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, KnowledgeError> {
        let mut cmd = self.script(LEASE, what, name);
        cmd.arg(holder).arg(ttl.as_millis().max(1) as u64).arg(name);
        self.run(cmd, what.taking).await
    }

    /// Gives `what`'s key `name` back if `holder` holds it ([`RELEASE`]).
    async fn let_go(&self, what: &Held, name: &str, holder: &str) -> Result<bool, KnowledgeError> {
        let mut cmd = self.script(RELEASE, what, name);
        cmd.arg(holder).arg(name);
        self.run(cmd, what.releasing).await
    }

    /// `script` on `what`'s key `name` and its set, the arguments to follow.
    fn script(&self, script: &str, what: &Held, name: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script)
            .arg(2)
            .arg(format!("{}{}{name}", self.prefix, what.key))
            .arg(format!("{}{}", self.prefix, what.set));
        cmd
    }

    /// Runs a [`Redis::script`] command, `doing` what the error names; `true` if it answered 1.
    async fn run(&self, cmd: redis::Cmd, doing: &'static str) -> Result<bool, KnowledgeError> {
        let mut conn = self.conn(doing).await?;
        let n: i64 = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(doing, e))?;
        Ok(n == 1)
    }

    /// Writes the hot state a committed batch changes: node health (monitor), open
    /// incidents (analyze), recent actions (execute). Idempotent but for the actions list;
    /// a failure leaves the SQL rows as they are.
    pub(crate) async fn project(&self, events: &Events) -> Result<(), KnowledgeError> {
        let p = &self.prefix;
        let mut pipe = redis::pipe();
        match events {
            Events::Monitor(v) => {
                let mut latest = std::collections::BTreeMap::new();
                for (_, t) in v {
                    let slot = latest.entry(t.node.as_str()).or_insert(t);
                    if t.ts_ms >= slot.ts_ms {
                        *slot = t;
                    }
                }
                for t in latest.into_values() {
                    let h = NodeHealth::of(t);
                    let json = serde_json::to_string(&h).unwrap_or_default();
                    pipe.cmd("SET")
                        .arg(format!("{p}node:{}", h.node))
                        .arg(json)
                        .arg("PX")
                        .arg(HEALTH_TTL.as_millis() as u64)
                        .ignore();
                }
            }
            Events::Analyze(v) => {
                for (_, s) in v {
                    let key = format!("{p}incident:{}", s.incident_id);
                    if s.state == SymptomState::Resolve {
                        pipe.del(&key).ignore();
                        pipe.srem(format!("{p}open"), &s.incident_id).ignore();
                        continue;
                    }
                    pipe.hset_multiple(
                        &key,
                        &[
                            ("node", s.node.as_str().to_owned()),
                            ("kind", s.kind.as_str().to_owned()),
                            (
                                "peer",
                                s.peer
                                    .as_ref()
                                    .map(|p| p.as_str().to_owned())
                                    .unwrap_or_default(),
                            ),
                            ("severity", s.severity.to_string()),
                            ("updated_ms", s.ts_ms.to_string()),
                            ("summary", s.summary.clone()),
                        ],
                    )
                    .ignore();
                    pipe.hset_nx(&key, "opened_ms", s.ts_ms).ignore();
                    pipe.sadd(format!("{p}open"), &s.incident_id).ignore();
                }
            }
            Events::Execute(v) => {
                for (_, a) in v {
                    let r = RecentAction {
                        node: a.node.as_str().to_owned(),
                        ts_ms: a.ts_ms,
                        action: a.action.kind.as_str().to_owned(),
                        status: a.status.as_str().to_owned(),
                        reason: a.reason.clone(),
                        incident_id: a.incident_id.clone(),
                        escalation: a.escalation.clone(),
                    };
                    pipe.lpush(
                        format!("{p}actions"),
                        serde_json::to_string(&r).unwrap_or_default(),
                    )
                    .ignore();
                }
                pipe.ltrim(format!("{p}actions"), 0, RECENT_ACTIONS - 1)
                    .ignore();
            }
            Events::Plan(_) | Events::Knowledge(_) => return Ok(()),
        }
        let mut conn = self.conn("writing hot state").await?;
        let () = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed("writing hot state", e))?;
        Ok(())
    }

    /// Every node's hot health, by node id.
    pub async fn nodes(&self) -> Result<Vec<NodeHealth>, KnowledgeError> {
        let doing = "reading node health";
        let mut conn = self.conn(doing).await?;
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}node:*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(doing, e))?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(doing, e))?;
        let mut nodes: Vec<NodeHealth> = values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }

    /// The open incidents, the most recently opened first.
    pub async fn open_incidents(&self) -> Result<Vec<OpenIncident>, KnowledgeError> {
        let doing = "reading open incidents";
        let mut conn = self.conn(doing).await?;
        let ids: Vec<String> = conn
            .smembers(format!("{}open", self.prefix))
            .await
            .map_err(|e| self.failed(doing, e))?;
        let mut out = Vec::new();
        for id in ids {
            let h: std::collections::HashMap<String, String> = conn
                .hgetall(format!("{}incident:{id}", self.prefix))
                .await
                .map_err(|e| self.failed(doing, e))?;
            if h.is_empty() {
                continue;
            }
            let get = |k: &str| h.get(k).cloned().unwrap_or_default();
            out.push(OpenIncident {
                incident_id: id,
                node: get("node"),
                kind: get("kind"),
                peer: Some(get("peer")).filter(|p| !p.is_empty()),
                severity: get("severity").parse().unwrap_or(0.0),
                opened_ms: get("opened_ms").parse().unwrap_or(0),
                updated_ms: get("updated_ms").parse().unwrap_or(0),
                summary: get("summary"),
            });
        }
        out.sort_by(|a, b| (b.opened_ms, &a.incident_id).cmp(&(a.opened_ms, &b.incident_id)));
        Ok(out)
    }

    /// The latest actions, newest first, at most `limit`.
    pub async fn recent_actions(&self, limit: usize) -> Result<Vec<RecentAction>, KnowledgeError> {
        let doing = "reading recent actions";
        let mut conn = self.conn(doing).await?;
        let items: Vec<String> = conn
            .lrange(format!("{}actions", self.prefix), 0, limit as isize - 1)
            .await
            .map_err(|e| self.failed(doing, e))?;
        Ok(items
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect())
    }
}

/// The lock and node leases executors share when they share the work (ADR 0007).
impl SharedLeases for Redis {
    fn try_lock<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, ShareError>> {
        Box::pin(async move { Ok(Redis::try_lock(self, name, holder, ttl).await?) })
    }

    fn unlock<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<bool, ShareError>> {
        Box::pin(async move { Ok(Redis::unlock(self, name, holder).await?) })
    }

    fn try_lease<'a>(
        &'a self,
        node: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, ShareError>> {
        Box::pin(async move { Ok(Redis::try_lease(self, node, holder, ttl).await?) })
    }

    fn release<'a>(
        &'a self,
        node: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<bool, ShareError>> {
        Box::pin(async move { Ok(Redis::release(self, node, holder).await?) })
    }

    fn leases(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, ShareError>> {
        Box::pin(async move { Ok(Redis::leases(self).await?) })
    }
}
