//! The analyze worker: telemetry in, symptoms out.
//!
//! The analyzer's state is a fold of the telemetry. On start, the worker rebuilds it by
//! replaying its share of the monitor stream from the oldest stored message up to what its
//! durable consumer has acknowledged, publishing nothing; then it takes new telemetry from
//! the consumer. A restarted worker thus holds the state an uninterrupted one would hold, and
//! emits the same symptoms. (Replaying all retained telemetry grows with the retention; a
//! snapshot that records its stream sequence is the planned remedy.)

use std::future::Future;
use std::time::Duration;

use mapek_bus::{BusError, Inbox, InboxConfig, JetStream, Publisher, StartAt, Subscriber};
use mapek_domain::{AnalyzeConfig, Analyzer, Phase, Telemetry};

/// How an analyze worker runs.
#[derive(Clone, Debug)]
pub struct AnalyzeWorkerConfig {
    /// The detectors' settings.
    pub analyze: AnalyzeConfig,
    /// The durable consumer's name; one per partition.
    pub durable: String,
    /// The monitor partition this worker owns (`0..8`), or all of them if `None`.
    pub partition: Option<u32>,
    /// How long a fetch waits for the first message.
    pub fetch_wait: Duration,
}

impl Default for AnalyzeWorkerConfig {
    fn default() -> Self {
        Self {
            analyze: AnalyzeConfig::default(),
            durable: "analyze".into(),
            partition: None,
            fetch_wait: Duration::from_millis(500),
        }
    }
}

/// What a worker did, for its caller and its metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnalyzeStats {
    /// Telemetry replayed at start to rebuild the state.
    pub replayed: u64,
    /// Telemetry taken from the consumer.
    pub processed: u64,
    /// Symptoms published (duplicates of already stored ones included).
    pub symptoms: u64,
}

fn filter(partition: Option<u32>) -> String {
    match partition {
        Some(p) => format!("mapek.{}.{p}.>", Phase::Monitor.token()),
        None => Phase::Monitor.stored_filter(None),
    }
}

/// Runs an analyze worker until `shutdown` completes.
pub async fn run(
    js: JetStream,
    config: AnalyzeWorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<AnalyzeStats, BusError> {
    let mut inbox_config = InboxConfig::new(config.durable.clone());
    inbox_config.filter = config.partition.map(|p| filter(Some(p)));
    let mut inbox = Inbox::<Telemetry>::open(&js, inbox_config).await?;
    let mut analyzer = Analyzer::try_new(config.analyze.clone())?;
    let mut stats = AnalyzeStats {
        replayed: rebuild(&js, &mut inbox, &mut analyzer, config.partition).await?,
        ..Default::default()
    };
    let mut publisher = Publisher::new(js.clone());
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            batch = inbox.next_batch(config.fetch_wait) => batch?,
            () = &mut shutdown => break,
        };
        for delivery in &batch {
            for symptom in analyzer.step(&delivery.event) {
                publisher.publish(&symptom).await?;
                stats.symptoms += 1;
            }
        }
        // Acknowledge the input only once its output is stored.
        publisher.flush().await;
        let report = publisher.report();
        if report.failed > 0 {
            return Err(BusError::Publish {
                subject: Phase::Analyze.stored_filter(None),
                detail: format!("{} symptoms were not acknowledged", report.failed),
            });
        }
        for delivery in &batch {
            delivery.ack().await?;
        }
        stats.processed += batch.len() as u64;
    }
    Ok(stats)
}

/// Feeds the analyzer everything its consumer already acknowledged, publishing nothing.
async fn rebuild(
    js: &JetStream,
    inbox: &mut Inbox<Telemetry>,
    analyzer: &mut Analyzer,
    partition: Option<u32>,
) -> Result<u64, BusError> {
    let through = inbox.acked_through().await?;
    if through == 0 {
        return Ok(0);
    }
    let mut replay =
        Subscriber::<Telemetry>::open_subject(js, filter(partition), StartAt::All).await?;
    let mut replayed = 0;
    while let Some(received) = replay.next().await {
        let received = received?;
        if received.stream_seq > through {
            break;
        }
        // What did not decode was dead-lettered when it was first consumed.
        if let Ok(t) = received.event {
            analyzer.step(&t);
            replayed += 1;
        }
        if received.stream_seq == through || received.pending == 0 {
            break;
        }
    }
    Ok(replayed)
}
