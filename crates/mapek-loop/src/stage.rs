//! The loop every phase worker runs: input from a durable inbox, pure step, output published,
//! input acknowledged.
//!
//! A [`Stage`] is a phase's pure logic behind one method. [`run_stage`] rebuilds the stage's
//! state by replaying what its consumer already acknowledged (publishing nothing), then takes
//! new input: for each batch it steps every input, publishes every output, waits until the
//! outputs are stored, and only then acknowledges the inputs. A crash at any point redelivers
//! input whose outputs may already be stored; outputs have deterministic ids, so the second
//! copy is dropped as a duplicate. Nothing is lost and nothing doubled.

use std::future::Future;
use std::time::Duration;

use mapek_bus::{BusError, Inbox, InboxConfig, JetStream, Publisher, StartAt, Subscriber};
use mapek_codec::AvroEvent;
use mapek_domain::Event;

/// A phase's pure logic: one input in, the events it causes out.
pub trait Stage {
    /// What the stage reads.
    type In: AvroEvent + Send + Sync + 'static;
    /// What it emits.
    type Out: AvroEvent + Send + Sync + 'static;

    /// Folds `input` into the state and returns what it causes, in a deterministic order.
    fn step(&mut self, input: &Self::In) -> Vec<Self::Out>;
}

/// Where a stage reads from.
#[derive(Clone, Debug)]
pub struct StageConfig {
    /// The durable consumer's name; one per partition (`analyze-p3`).
    pub durable: String,
    /// The input partition (`0..8`), or the whole stream if `None`.
    pub partition: Option<u32>,
    /// How long a fetch waits for the first message.
    pub fetch_wait: Duration,
}

impl StageConfig {
    /// Reads partition `partition` (or all) through the durable consumer `<phase>[-p<N>]`.
    pub fn new(phase: &str, partition: Option<u32>) -> Self {
        let durable = match partition {
            Some(p) => format!("{phase}-p{p}"),
            None => phase.to_owned(),
        };
        Self {
            durable,
            partition,
            fetch_wait: Duration::from_millis(500),
        }
    }
}

/// What a stage did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageStats {
    /// Inputs replayed at start to rebuild the state.
    pub replayed: u64,
    /// Inputs taken from the consumer.
    pub processed: u64,
    /// Outputs published (duplicates of already stored ones included).
    pub emitted: u64,
}

/// The stored-subject filter of one partition of `In`'s stream, or of all of it.
pub fn partition_filter<In: AvroEvent>(partition: Option<u32>) -> String {
    match partition {
        Some(p) => format!("mapek.{}.{p}.>", In::PHASE.token()),
        None => In::PHASE.stored_filter(None),
    }
}

/// Runs `stage` until `shutdown` completes.
pub async fn run_stage<S: Stage>(
    js: JetStream,
    mut stage: S,
    config: StageConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<StageStats, BusError> {
    let mut inbox_config = InboxConfig::new(config.durable.clone());
    inbox_config.filter = config.partition.map(|p| partition_filter::<S::In>(Some(p)));
    let mut inbox = Inbox::<S::In>::open(&js, inbox_config).await?;
    let mut stats = StageStats {
        replayed: rebuild(&js, &mut inbox, &mut stage, config.partition).await?,
        ..Default::default()
    };
    let mut publisher = Publisher::new(js.clone());
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            batch = inbox.next_batch(config.fetch_wait) => batch?,
            () = &mut shutdown => {
                inbox.close().await;
                break;
            }
        };
        for delivery in &batch {
            for out in stage.step(&delivery.event) {
                publisher.publish(&out).await?;
                stats.emitted += 1;
            }
        }
        // Acknowledge the input only once its output is stored.
        publisher.flush().await;
        let failed = publisher.report().failed;
        if failed > 0 {
            return Err(BusError::Publish {
                subject: S::Out::PHASE.stored_filter(None),
                detail: format!(
                    "{failed} events were not acknowledged; the input will be redelivered"
                ),
            });
        }
        // One cumulative ack covers the whole batch.
        if let Some(last) = batch.last() {
            last.ack().await?;
        }
        stats.processed += batch.len() as u64;
    }
    Ok(stats)
}

/// Feeds the stage everything its consumer already acknowledged, publishing nothing.
async fn rebuild<S: Stage>(
    js: &JetStream,
    inbox: &mut Inbox<S::In>,
    stage: &mut S,
    partition: Option<u32>,
) -> Result<u64, BusError> {
    let through = inbox.acked_through();
    if through == 0 {
        return Ok(0);
    }
    let filter = partition_filter::<S::In>(partition);
    let mut replay = Subscriber::<S::In>::open_subject(js, filter, StartAt::All).await?;
    let mut replayed = 0;
    while let Some(received) = replay.next().await {
        let received = received?;
        if received.stream_seq > through {
            break;
        }
        // What did not decode was dead-lettered when it was first consumed.
        if let Ok(input) = received.event {
            stage.step(&input);
            replayed += 1;
        }
        if received.stream_seq == through || received.pending == 0 {
            break;
        }
    }
    Ok(replayed)
}
