//! `mapek streams apply`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use mapek_bus::streams::{self, Applied};

use crate::Settings;

/// `mapek streams …`
#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Create the streams that are missing and update those that differ; print what changed
    Apply {
        /// Read the definitions from this directory's *.json files [default: the ones built
        /// in, from the repository's streams/]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Keep this many copies of each message (3 on a 3-node cluster; at most the number
        /// of servers), in every stream and in the key-value buckets (leases, approvals,
        /// recorded config) [default: as the definitions say, 1]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=5))]
        replicas: Option<u8>,
        /// When the server maps telemetry into partitions (docs/adr/0012), store them in this
        /// many streams: about the server's cores, since nats-server serves each stream on one
        /// thread; at most the partitions. Ignored without the mapping, where telemetry has
        /// one stream [default: as many as the server has, else 2]
        #[arg(long, value_name = "S", value_parser = clap::value_parser!(u16).range(1..=1024))]
        monitor_streams: Option<u16>,
        /// Map every phase's nodes into this many partitions, each a unit of work one worker
        /// process takes (docs/adr/0024). The count grows by a multiple of the streams' and
        /// never shrinks; where the server maps telemetry, give it the mapping for this count
        /// after the apply [default: the server's mapping's, else the streams', else 8]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
        partitions: Option<u32>,
    },
}

/// Runs `mapek streams …`.
pub async fn run(command: StreamsCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    let StreamsCommand::Apply {
        dir,
        replicas,
        monitor_streams,
        partitions,
    } = command;
    let mut defs = match dir {
        Some(dir) => streams::load_dir(&dir)?,
        None => streams::builtin(),
    };
    if let Some(n) = replicas {
        defs = defs
            .into_iter()
            .map(|d| d.with_replicas(usize::from(n)))
            .collect();
    }
    let js = mapek_bus::connect(&settings.nats_url).await?;
    let wanted = streams::Wanted {
        monitor_streams: monitor_streams.map(usize::from),
        partitions,
    };
    let layout = streams::detect_layout(&js, wanted).await?;
    println!("{layout}");
    let remap = match layout {
        streams::Layout::Split {
            partitions, mapped, ..
        } if mapped != partitions => Some(partitions),
        _ => None,
    };
    let mut applied = streams::apply_layout(&js, &defs, layout).await?;
    // The buckets keep as many copies as the streams: a lease or an approval must outlive a
    // server as the events do.
    let replicas = defs
        .iter()
        .find(|d| d.name() == mapek_domain::Phase::Plan.stream())
        .map_or(1, |d| d.config.num_replicas.max(1));
    let buckets = mapek_bus::buckets::apply_replicas(&js, replicas).await?;
    // A bucket the apply made is listed once, as made.
    let made: Vec<String> = applied.iter().map(|a| a.name().to_owned()).collect();
    applied.extend(
        buckets
            .into_iter()
            .filter(|b| !made.iter().any(|m| m == b.name())),
    );
    for a in &applied {
        println!("{a}");
    }
    let count = |f: fn(&Applied) -> bool| applied.iter().filter(|a| f(a)).count();
    let created = count(|a| matches!(a, Applied::Created { .. }));
    let updated = count(|a| matches!(a, Applied::Updated { .. }));
    if created + updated == 0 {
        println!(
            "nothing changed: all {} streams match their definitions",
            applied.len()
        );
    } else {
        println!(
            "{created} created, {updated} updated, {} unchanged",
            applied.len() - created - updated
        );
    }
    if let Some(partitions) = remap {
        println!(
            "next: the streams hold {partitions} partitions; give the server the mapping \
             {} and reload it (nats-server --signal reload), and the workers take the new \
             partitions",
            mapek_domain::telemetry_mapping(partitions)
        );
    }
    Ok(ExitCode::SUCCESS)
}
