//! `mapek publish`: telemetry from flags or JSON lines.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use mapek_bus::{DeadLetters, Publisher};
use mapek_domain::{LinkSample, MAX_EVENT_BYTES, NodeId, Phase, Rejected, Telemetry};
use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use crate::Settings;
use crate::time_arg::{now_ms, parse_ts_ms};

/// `mapek publish`
#[derive(Debug, Args)]
#[command(after_long_help = PUBLISH_HELP)]
pub struct PublishArgs {
    /// Publish one event for this node, from the flags below; without it, read JSON lines
    #[arg(long, value_name = "NODE")]
    node: Option<String>,

    /// A metric of the event, NAME=VALUE (repeat it: --metric latency_ms=12.5 --metric
    /// loss=0.01)
    #[arg(long = "metric", value_name = "NAME=VALUE", requires = "node")]
    metrics: Vec<String>,

    /// A link sample, PEER:up|down:LATENCY_MS:LOSS (repeatable)
    #[arg(long = "link", value_name = "SAMPLE", requires = "node")]
    links: Vec<String>,

    /// The event's time, RFC 3339 or Unix milliseconds [default: now]
    #[arg(long, value_name = "TIME", requires = "node")]
    ts: Option<String>,

    /// The node's site or rack
    #[arg(long, value_name = "SITE", requires = "node")]
    site: Option<String>,

    /// The event id [default: a hash of the event's content]
    #[arg(long, value_name = "ID", requires = "node")]
    id: Option<String>,

    /// Read JSON lines from this file instead of stdin
    #[arg(long, value_name = "FILE", conflicts_with = "node")]
    file: Option<PathBuf>,

    /// The most acks in flight [default: 1024, or publish.window in the config file]
    #[arg(long, env = "MAPEK_PUBLISH_WINDOW", value_name = "N")]
    window: Option<usize>,

    /// Do not keep refused lines in the dead-letter stream (mapek.dlq.monitor)
    #[arg(long)]
    no_dlq: bool,
}

const PUBLISH_HELP: &str = "\
Input, one JSON object a line (the Telemetry schema's fields; event_id and the time optional):
  {\"node\":\"n17\",\"ts\":\"2026-11-28T12:00:00Z\",\"metrics\":{\"latency_ms\":12.5,\"loss\":0.01}}
  {\"node\":\"n18\",\"ts_ms\":1795867200000,\"metrics\":{\"cpu\":0.97},\"links\":[{\"peer\":\"n17\",\"up\":true,\"latency_ms\":4.0,\"loss\":0.0}]}

An event without an id gets a hash of its content, so publishing the same input twice stores
it once. An event without a time gets the current time (and then a new id each run): give the
time for retries to be safe.

A refused line is reported with its number and the reason, kept in mapek.dlq.monitor, and the
lines around it are still published.

Exit status: 0 when every event was stored, 1 when some event was not acknowledged, 2 when
every valid event was stored but some lines were refused.";

/// One input line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default)]
    event_id: Option<String>,
    node: String,
    #[serde(default)]
    ts_ms: Option<i64>,
    #[serde(default)]
    ts: Option<String>,
    #[serde(default)]
    metrics: BTreeMap<String, f64>,
    #[serde(default)]
    links: Vec<LinkSample>,
    #[serde(default)]
    site: Option<String>,
}

impl Line {
    fn into_telemetry(self) -> Result<Telemetry, String> {
        let node = NodeId::new(self.node).map_err(|e| e.to_string())?;
        let ts_ms = match (self.ts_ms, self.ts) {
            (Some(_), Some(_)) => return Err("give ts or ts_ms, not both".into()),
            (Some(ms), None) => ms,
            (None, Some(ts)) => parse_ts_ms(&ts)?,
            (None, None) => now_ms(),
        };
        let mut t = Telemetry::new(node, ts_ms, self.metrics);
        t.links = self.links;
        t.site = self.site;
        t.event_id = self.event_id.unwrap_or_else(|| t.content_id());
        Ok(t)
    }
}

/// Runs `mapek publish`.
pub async fn run(args: PublishArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let window = args
        .window
        .or(settings.file.publish.window)
        .unwrap_or(mapek_bus::publisher::DEFAULT_WINDOW);
    let js = mapek_bus::connect(&settings.nats_url).await?;
    let mut publisher = Publisher::with_window(js.clone(), window);
    let dead_letters = (!args.no_dlq).then(|| DeadLetters::new(js));
    let mut refused = 0u64;

    if let Some(node) = &args.node {
        let event = from_flags(node, &args).map_err(|e| anyhow::anyhow!("{e}"))?;
        publisher.publish(&event).await?;
    } else {
        let input: Box<dyn AsyncBufRead + Unpin> = match &args.file {
            Some(path) => {
                Box::new(BufReader::new(tokio::fs::File::open(path).await.map_err(
                    |e| anyhow::anyhow!("cannot read {}: {e}", path.display()),
                )?))
            }
            None => Box::new(BufReader::new(tokio::io::stdin())),
        };
        refused = publish_lines(input, &mut publisher, dead_letters.as_ref()).await?;
    }

    let report = publisher.finish().await;
    println!(
        "published {} events: {} stored, {} duplicates, {} not acknowledged, {} refused; \
         {:.2} s, {:.0} events/s",
        report.sent,
        report.acked,
        report.duplicates,
        report.failed,
        refused,
        report.elapsed.as_secs_f64(),
        report.rate()
    );
    for (id, why) in &report.failures {
        eprintln!("not acknowledged: event {id}: {why}");
    }
    Ok(if !report.all_acked() {
        ExitCode::from(1)
    } else if refused > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Publishes each good line; reports, and dead-letters, each bad one. Returns how many lines
/// were refused.
async fn publish_lines(
    mut input: Box<dyn AsyncBufRead + Unpin>,
    publisher: &mut Publisher,
    dead_letters: Option<&DeadLetters>,
) -> anyhow::Result<u64> {
    let mut refused = 0;
    let mut buf = Vec::with_capacity(512);
    let mut number = 0u64;
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf).await? == 0 {
            break;
        }
        number += 1;
        let line = buf.trim_ascii();
        if line.is_empty() {
            continue;
        }
        // An event that breaks a rule is refused by the publisher before anything is sent.
        let outcome = match parse_line(line) {
            Ok(event) => match publisher.publish(&event).await {
                Ok(()) => Ok(()),
                Err(mapek_bus::BusError::Codec(e)) => Err(e.to_string()),
                Err(e) => return Err(e.into()),
            },
            Err(why) => Err(why),
        };
        match outcome {
            Ok(()) => {}
            Err(why) => {
                refused += 1;
                eprintln!("line {number}: {why}");
                if let Some(dlq) = dead_letters {
                    let rejected = Rejected::new(
                        Phase::Monitor,
                        &format!("stdin:{number}"),
                        number,
                        BTreeMap::new(),
                        line,
                        format!("line {number}: {why}"),
                        now_ms(),
                    );
                    if let Err(e) = dlq.store(&rejected).await {
                        eprintln!("line {number}: could not keep it in mapek.dlq.monitor: {e}");
                    }
                }
            }
        }
    }
    Ok(refused)
}

fn parse_line(line: &[u8]) -> Result<Telemetry, String> {
    if line.len() > MAX_EVENT_BYTES {
        return Err(format!(
            "line is {} bytes, more than the {MAX_EVENT_BYTES} bytes an event may have",
            line.len()
        ));
    }
    let line: Line = serde_json::from_slice(line).map_err(|e| {
        // serde_json counts lines inside the input, which is always line 1 here.
        let text = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        match text.strip_suffix(&position) {
            Some(what) => format!("{what} (at column {})", e.column()),
            None => text,
        }
    })?;
    line.into_telemetry()
}

fn from_flags(node: &str, args: &PublishArgs) -> Result<Telemetry, String> {
    let mut metrics = BTreeMap::new();
    for m in &args.metrics {
        let (name, value) = m
            .split_once('=')
            .ok_or_else(|| format!("--metric {m:?}: expected NAME=VALUE"))?;
        let value: f64 = value
            .parse()
            .map_err(|_| format!("--metric {m:?}: {value:?} is not a number"))?;
        metrics.insert(name.to_owned(), value);
    }
    let links = args
        .links
        .iter()
        .map(|l| parse_link(l))
        .collect::<Result<Vec<_>, _>>()?;
    let line = Line {
        event_id: args.id.clone(),
        node: node.to_owned(),
        ts_ms: None,
        ts: args.ts.clone(),
        metrics,
        links,
        site: args.site.clone(),
    };
    line.into_telemetry()
}

fn parse_link(s: &str) -> Result<LinkSample, String> {
    let bad = || format!("--link {s:?}: expected PEER:up|down:LATENCY_MS:LOSS");
    let parts: Vec<&str> = s.split(':').collect();
    let [peer, state, latency, loss] = parts[..] else {
        return Err(bad());
    };
    Ok(LinkSample {
        peer: NodeId::new(peer).map_err(|e| e.to_string())?,
        up: match state {
            "up" => true,
            "down" => false,
            _ => return Err(bad()),
        },
        latency_ms: latency.parse().map_err(|_| bad())?,
        loss: loss.parse().map_err(|_| bad())?,
    })
}
