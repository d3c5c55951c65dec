//! `mapek export`: a slice of the live log, written as a slice file.
//!
//! A replay rebuilds state from the first message of each stream, so a slice holds every
//! message from the start of the streams up to the end of the range: the telemetry streams
//! (`MAPEK_MONITOR`, or each of `MAPEK_MONITOR_0` … when the server splits telemetry),
//! `MAPEK_ANALYZE` and `MAPEK_PLAN`, each up to (in its stream order) its last message whose
//! event time is in or before the range, and the action results and outcomes of the incidents
//! it holds. Lines keep the streams' real names; telemetry of several streams is written in the
//! merged order a replay reads it in.
//! With a node, it holds that node's whole partition: the analyzer's silence watermark and the
//! planner's blast radius are per partition, so the other nodes there shape its decisions.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use mapek_bus::JetStream;
use mapek_bus::layout::partition_of;
use mapek_codec::AvroEvent;
use mapek_domain::{ActionResult, Decision, NodeId, Outcome, Phase, Symptom, Telemetry};
use serde::Serialize;

use crate::record::Record;
use crate::slice::{SliceHeader, write};
use crate::{Range, ReplayError, Source};

/// What an export wrote.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExportSummary {
    /// Messages written, per stream.
    pub counts: std::collections::BTreeMap<String, u64>,
    /// The partition written, when a node was asked for.
    pub partition: Option<u32>,
}

/// The records of one phase, each of its streams up to its last record whose event time is
/// at or before `to`.
async fn up_to<E: AvroEvent>(
    source: &Source,
    filter: Option<String>,
    to: Option<i64>,
) -> Result<(Vec<Record>, Vec<Option<E>>), ReplayError> {
    let mut records = Vec::new();
    let mut events = Vec::new();
    source
        .each(E::PHASE, filter, |r| {
            events.push(r.decode::<E>().ok());
            records.push(r);
        })
        .await?;
    if let Some(to) = to {
        // Messages that do not decode stay where they are in their stream: the workers saw
        // them too.
        let mut keep: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, (r, e)) in records.iter().zip(&events).enumerate() {
            if e.as_ref().is_some_and(|e| e.ts_ms() <= to) {
                keep.insert(&r.stream, i);
            }
        }
        let kept: Vec<bool> = records
            .iter()
            .enumerate()
            .map(|(i, r)| keep.get(r.stream.as_str()).is_some_and(|&last| i <= last))
            .collect();
        let mut flags = kept.iter();
        records.retain(|_| *flags.next().unwrap_or(&false));
        let mut flags = kept.iter();
        events.retain(|_| *flags.next().unwrap_or(&false));
    }
    Ok((records, events))
}

/// Writes the slice of `js`'s log for `range` (and `node`'s partition) to `writer`.
pub async fn export(
    js: &JetStream,
    range: Range,
    node: Option<&NodeId>,
    writer: &mut dyn Write,
) -> Result<ExportSummary, ReplayError> {
    let source = Source::live(js.clone());
    let config = source.config().await?;
    let mut summary = ExportSummary::default();
    if let Some(node) = node {
        let mut found = None;
        source
            .each(
                Phase::Monitor,
                Some(Phase::Monitor.stored_filter(Some(node))),
                |r| {
                    found = found.or(partition_of(&r.subject));
                },
            )
            .await?;
        summary.partition = Some(found.ok_or_else(|| {
            ReplayError::Missing(format!(
                "node {node} has no telemetry in the telemetry streams: check the name, or \
                 export without --node"
            ))
        })?);
    }
    let filter = |phase: Phase| {
        summary
            .partition
            .map(|p| format!("mapek.{}.{p}.>", phase.token()))
    };
    let (monitor, _) = up_to::<Telemetry>(&source, filter(Phase::Monitor), range.to_ms).await?;
    let (analyze, symptoms) =
        up_to::<Symptom>(&source, filter(Phase::Analyze), range.to_ms).await?;
    let (plan, _) = up_to::<Decision>(&source, filter(Phase::Plan), range.to_ms).await?;
    let incidents: BTreeSet<String> = symptoms
        .into_iter()
        .flatten()
        .map(|s| s.incident_id)
        .collect();
    let (execute, results) = up_to::<ActionResult>(&source, None, None).await?;
    let (knowledge, outcomes) = up_to::<Outcome>(&source, None, None).await?;
    let of_ours = |records: Vec<Record>, ids: Vec<Option<String>>| -> Vec<Record> {
        records
            .into_iter()
            .zip(ids)
            .filter(|(_, id)| id.as_ref().is_some_and(|id| incidents.contains(id)))
            .map(|(r, _)| r)
            .collect()
    };
    let execute = of_ours(
        execute,
        results
            .into_iter()
            .map(|r| r.map(|r| r.incident_id))
            .collect(),
    );
    let knowledge = of_ours(
        knowledge,
        outcomes
            .into_iter()
            .map(|o| o.map(|o| o.incident_id))
            .collect(),
    );

    let mut header = SliceHeader::new(&config, range, node.map(|n| n.to_string()), now_ms());
    header.partitions = summary.partition.map(|p| vec![p]);
    let all: Vec<Record> = [monitor, analyze, plan, execute, knowledge].concat();
    for r in &all {
        *header.counts.entry(r.stream.clone()).or_default() += 1;
    }
    summary.counts = header.counts.clone();
    write(writer, &header, &all)?;
    Ok(summary)
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
