//! What the workers ran with, recorded beside the log so a replay can run with it again.
//!
//! Decisions record only their policy's name and hash, and symptoms nothing of the analyze
//! settings. The workers write both here when they start, in the JetStream key-value bucket
//! `MAPEK_CONFIG`:
//! - `policy.<hash>`: the policy file's exact bytes (the hash is SHA-256 over them, as
//!   [`mapek_domain::Policy::hash`]), so `Policy::parse` gives back the same policy and hash;
//! - `plan.policy`: the hash of the policy the plan workers run with, its history the policies
//!   in force over time;
//! - `analyze.<hash>`: an analyze configuration as JSON, the hash over that JSON;
//! - `analyze`: the hash of the configuration the analyze workers run with, with history;
//! - `partitions`: every partition count the streams have had, ascending (`8,32`), written by
//!   [`crate::streams::apply_layout`]: a partition waits for the ones it descends from only
//!   under counts it really grew from ([`crate::layout::ancestors`]).
//!
//! A value is written only when it changed, so the history of `plan.policy` and `analyze` is a
//! list of changes, each with the time the server stored it. docs/adr/0005 says how a replay
//! chooses among them.

use std::collections::BTreeMap;

use async_nats::jetstream::kv::{self, Store};
use mapek_domain::AnalyzeConfig;
use mapek_domain::plan::policy::hash;
use time::OffsetDateTime;

use crate::{BusError, JetStream, StartAt, direct};

/// The key-value bucket.
pub const BUCKET: &str = "MAPEK_CONFIG";
/// The key whose history is the policies the plan workers ran with.
pub const PLAN_POLICY: &str = "plan.policy";
/// The key whose history is the analyze configurations the analyze workers ran with.
pub const ANALYZE: &str = "analyze";
/// The key whose value is every partition count the streams have had.
pub const PARTITION_COUNTS: &str = "partitions";
/// How many changes of each key the bucket keeps (the server's most).
const HISTORY: i64 = 64;

/// One value a key held, and since when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The hash the key pointed to.
    pub hash: String,
    /// When the server stored it, in milliseconds since the Unix epoch.
    pub since_ms: i64,
}

/// Everything the bucket holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordedConfig {
    /// Policy file texts, by hash.
    pub policies: BTreeMap<String, String>,
    /// Analyze configurations, by hash.
    pub analyze: BTreeMap<String, AnalyzeConfig>,
    /// The policies in force, oldest first.
    pub policy_history: Vec<Change>,
    /// The analyze configurations in force, oldest first.
    pub analyze_history: Vec<Change>,
}

impl RecordedConfig {
    /// The analyze configuration in force last, if any was recorded.
    pub fn current_analyze(&self) -> Option<(&str, &AnalyzeConfig)> {
        let last = self.analyze_history.last()?;
        self.analyze
            .get(&last.hash)
            .map(|c| (last.hash.as_str(), c))
    }

    /// The hash of the policy in force last, if any was recorded.
    pub fn current_policy(&self) -> Option<&str> {
        self.policy_history.last().map(|c| c.hash.as_str())
    }
}

fn failed(detail: String) -> BusError {
    BusError::Stream {
        stream: format!("KV_{BUCKET}"),
        detail,
    }
}

/// Opens the bucket, creating it if missing (with the streams' replicas).
pub async fn open(js: &JetStream) -> Result<Store, BusError> {
    crate::buckets::open_or_create(
        js,
        kv::Config {
            bucket: BUCKET.into(),
            description: "The policies and analyze settings the workers ran with, for replay"
                .into(),
            history: HISTORY,
            ..Default::default()
        },
    )
    .await
}

/// Opens the bucket if it exists: a replay must not create anything on a live server.
pub async fn open_existing(js: &JetStream) -> Option<Store> {
    js.get_key_value(BUCKET).await.ok()
}

/// Records `text`, the policy file the plan workers run with, as the policy in force;
/// returns its hash.
pub async fn record_policy(js: &JetStream, text: &str) -> Result<String, BusError> {
    let kv = open(js).await?;
    let h = keep_policy(&kv, text).await?;
    put_if_changed(&kv, PLAN_POLICY, h.as_bytes()).await?;
    Ok(h)
}

/// Records `text`, a candidate policy that shadow workers decide with, by its hash only: it
/// is not the policy in force. Returns its hash.
pub async fn record_candidate_policy(js: &JetStream, text: &str) -> Result<String, BusError> {
    keep_policy(&open(js).await?, text).await
}

async fn keep_policy(kv: &Store, text: &str) -> Result<String, BusError> {
    let h = hash(text.as_bytes());
    put_if_changed(kv, &format!("policy.{h}"), text.as_bytes()).await?;
    Ok(h)
}

/// Records `config`, the analyze configuration the analyze workers run with; returns its
/// hash.
pub async fn record_analyze(js: &JetStream, config: &AnalyzeConfig) -> Result<String, BusError> {
    let kv = open(js).await?;
    let json = serde_json::to_vec(config).map_err(|e| failed(e.to_string()))?;
    let h = hash(&json);
    put_if_changed(&kv, &format!("analyze.{h}"), &json).await?;
    put_if_changed(&kv, ANALYZE, h.as_bytes()).await?;
    Ok(h)
}

/// Adds `counts` to the partition counts the streams have had.
pub async fn record_partition_counts(js: &JetStream, counts: &[u32]) -> Result<(), BusError> {
    let kv = open(js).await?;
    let mut all = counts_in(&kv).await?.unwrap_or_default();
    all.extend_from_slice(counts);
    all.sort_unstable();
    all.dedup();
    let text: Vec<String> = all.iter().map(u32::to_string).collect();
    put_if_changed(&kv, PARTITION_COUNTS, text.join(",").as_bytes()).await
}

/// Every partition count the streams have had, ascending; `None` when none was recorded
/// (streams applied by a mapek before it kept them) or the bucket cannot be read.
pub async fn partition_counts(js: &JetStream) -> Option<Vec<u32>> {
    counts_in(&open_existing(js).await?).await.ok().flatten()
}

async fn counts_in(kv: &Store) -> Result<Option<Vec<u32>>, BusError> {
    let value = kv
        .get(PARTITION_COUNTS)
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok(value.map(|v| {
        String::from_utf8_lossy(&v)
            .split(',')
            .filter_map(|c| c.trim().parse().ok())
            .collect()
    }))
}

/// The text of the policy whose hash is `hash`, if it was recorded. Not a hash (64 lowercase
/// hex digits, as [`mapek_domain::Policy::hash`] makes them): none.
pub async fn policy(kv: &Store, hash: &str) -> Result<Option<String>, BusError> {
    let is_hash = hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !is_hash {
        return Ok(None);
    }
    let key = format!("policy.{hash}");
    let text = kv.get(&key).await.map_err(|e| failed(e.to_string()))?;
    Ok(text.map(|t| String::from_utf8_lossy(&t).into_owned()))
}

async fn put_if_changed(kv: &Store, key: &str, value: &[u8]) -> Result<(), BusError> {
    let current = kv.get(key).await.map_err(|e| failed(e.to_string()))?;
    if current.as_deref() == Some(value) {
        return Ok(());
    }
    kv.put(key, value.to_vec().into())
        .await
        .map_err(|e| failed(format!("cannot write {key}: {e}")))?;
    Ok(())
}

/// Reads everything the bucket holds; empty if there is no bucket. It reads by direct gets
/// ([`crate::direct`]), so a read-only identity can read it.
pub async fn read(js: &JetStream) -> Result<RecordedConfig, BusError> {
    if open_existing(js).await.is_none() {
        return Ok(RecordedConfig::default());
    }
    let stream = format!("KV_{BUCKET}");
    let prefix = format!("$KV.{BUCKET}.");
    let mut out = RecordedConfig::default();
    for entry in direct::last_per_subject(js, &stream, &format!("{prefix}>")).await? {
        let Some(key) = entry.subject.strip_prefix(&prefix) else {
            continue;
        };
        if direct::is_deleted(&entry) {
            continue;
        }
        let value = &entry.payload;
        if let Some(h) = key.strip_prefix("policy.") {
            let text = String::from_utf8_lossy(value).into_owned();
            out.policies.insert(h.to_owned(), text);
        } else if let Some(h) = key.strip_prefix("analyze.") {
            if let Ok(config) = serde_json::from_slice::<AnalyzeConfig>(value) {
                out.analyze.insert(h.to_owned(), config);
            }
        } else if key == PLAN_POLICY {
            out.policy_history = history(js, &stream, &entry.subject).await?;
        } else if key == ANALYZE {
            out.analyze_history = history(js, &stream, &entry.subject).await?;
        }
    }
    Ok(out)
}

/// Every value `subject` (one key) held, in order, with when it was written.
async fn history(js: &JetStream, stream: &str, subject: &str) -> Result<Vec<Change>, BusError> {
    let mut reader = direct::Reader::open(js, stream, subject, StartAt::All).await?;
    let last = reader.last_at_open();
    let mut out = Vec::new();
    while let Some(entry) = reader.next_through(last).await? {
        if !direct::is_deleted(&entry) {
            out.push(Change {
                hash: String::from_utf8_lossy(&entry.payload).into_owned(),
                since_ms: to_ms(entry.stored),
            });
        }
    }
    Ok(out)
}

fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}
