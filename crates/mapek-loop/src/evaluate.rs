//! The evaluate worker: symptoms and action results in, outcomes out, with [`Evaluator`].
//!
//! It reads two durable inboxes, [`RESULTS`] on `MAPEK_EXECUTE` and [`SYMPTOMS`] on
//! `MAPEK_ANALYZE`, feeds the evaluator each batch as it arrives (results first, then
//! symptoms), publishes the outcomes to `MAPEK_KNOWLEDGE` (ids derived from the decision, so a
//! repeated outcome is stored once), waits until they are stored, then acknowledges both
//! batches.
//!
//! # Ordering
//! The two streams are not ordered with respect to each other, so what the evaluator sees
//! depends on when each message arrived. Only verdicts near a deadline can depend on it: a
//! resolve that reaches the worker after other symptoms moved the watermark past the
//! action's deadline counts as too late, even if its own time was within the window. A
//! resolve that arrives before its action's result still counts (the evaluator remembers
//! resolves for a window). With the executor keeping up, results arrive long before the
//! window closes.
//!
//! # Restarts
//! On start the evaluator is rebuilt from the log, publishing nothing: the outcomes already
//! in `MAPEK_KNOWLEDGE` mark their decisions as judged, then the results and symptoms each
//! consumer already acknowledged are folded, merged by event time.

use std::future::Future;
use std::time::Duration;

use mapek_bus::{
    BusError, Delivery, Inbox, InboxConfig, JetStream, Publisher, Subscriber, SubscriberConfig,
};
use mapek_codec::AvroEvent;
use mapek_domain::{
    ActionResult, Evaluator, ExecuteConfig, Outcome, OutcomeResult, Phase, Symptom,
};
use tracing::info;

/// The durable consumer of symptoms.
pub const SYMPTOMS: &str = "evaluate-symptoms";
/// The durable consumer of action results.
pub const RESULTS: &str = "evaluate-results";
/// How long the worker waits for input before looking at shutdown again.
const FETCH_WAIT: Duration = Duration::from_millis(200);

/// What an evaluate worker did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvaluateStats {
    /// Events read at start to rebuild the evaluator (outcomes, results and symptoms).
    pub replayed: u64,
    /// Action results taken from their consumer.
    pub results: u64,
    /// Symptoms taken from their consumer.
    pub symptoms: u64,
    /// Outcomes published as resolved.
    pub resolved: u64,
    /// Outcomes published as not resolved.
    pub not_resolved: u64,
}

/// Runs the evaluate worker until `shutdown` completes; the window is the config's
/// `evaluate_window_ms`.
pub async fn run(
    js: JetStream,
    config: ExecuteConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<EvaluateStats, BusError> {
    config.check()?;
    let mut results = Inbox::<ActionResult>::open(&js, InboxConfig::new(RESULTS)).await?;
    let mut symptoms = Inbox::<Symptom>::open(&js, InboxConfig::new(SYMPTOMS)).await?;
    let mut evaluator = Evaluator::new(config.evaluate_window_ms);
    let mut stats = EvaluateStats {
        replayed: rebuild(&js, &mut evaluator, &mut results, &mut symptoms).await?,
        ..Default::default()
    };
    info!(replayed = stats.replayed, "evaluator ready");
    let mut publisher = Publisher::new(js.clone());
    tokio::pin!(shutdown);
    loop {
        let (got_results, got_symptoms) = tokio::select! {
            batches = next_batches(&mut results, &mut symptoms) => batches?,
            () = &mut shutdown => {
                results.close().await;
                symptoms.close().await;
                break;
            }
        };
        // Each outcome with the headers of the message that caused it, for its trace.
        let mut outcomes = Vec::new();
        for d in &got_results {
            let cause = d.message().headers.as_ref();
            outcomes.extend(evaluator.apply(&d.event).into_iter().map(|o| (o, cause)));
        }
        for d in &got_symptoms {
            let cause = d.message().headers.as_ref();
            outcomes.extend(evaluator.observe(&d.event).into_iter().map(|o| (o, cause)));
        }
        for (o, cause) in &outcomes {
            publisher.publish_caused_by(o, *cause).await?;
            match o.result {
                OutcomeResult::Resolved => stats.resolved += 1,
                OutcomeResult::NotResolved => stats.not_resolved += 1,
            }
        }
        // Acknowledge the input only once its outcomes are stored.
        publisher
            .flush_stored(&Phase::Knowledge.stored_filter(None))
            .await?;
        if let Some(last) = got_results.last() {
            last.ack().await?;
        }
        if let Some(last) = got_symptoms.last() {
            last.ack().await?;
        }
        stats.results += got_results.len() as u64;
        stats.symptoms += got_symptoms.len() as u64;
    }
    Ok(stats)
}

/// Whatever either inbox has: results without waiting, then symptoms, waiting for them only
/// when there were no results.
async fn next_batches(
    results: &mut Inbox<ActionResult>,
    symptoms: &mut Inbox<Symptom>,
) -> Result<(Vec<Delivery<ActionResult>>, Vec<Delivery<Symptom>>), BusError> {
    let got_results = results.next_batch(Duration::ZERO).await?;
    let wait = if got_results.is_empty() {
        FETCH_WAIT
    } else {
        Duration::ZERO
    };
    let got_symptoms = symptoms.next_batch(wait).await?;
    Ok((got_results, got_symptoms))
}

/// Rebuilds `evaluator` from the log; returns how many events it read.
async fn rebuild(
    js: &JetStream,
    evaluator: &mut Evaluator,
    results: &mut Inbox<ActionResult>,
    symptoms: &mut Inbox<Symptom>,
) -> Result<u64, BusError> {
    let outcomes: Vec<Outcome> = read_stored(js, u64::MAX).await?;
    for o in &outcomes {
        evaluator.mark_judged(o);
    }
    let through = results.acked_through();
    let old_results: Vec<ActionResult> = read_stored(js, through).await?;
    let through = symptoms.acked_through();
    let old_symptoms: Vec<Symptom> = read_stored(js, through).await?;
    let replayed = (outcomes.len() + old_results.len() + old_symptoms.len()) as u64;
    // Merge by event time, each stream keeping its own order; results first on a tie.
    let (mut r, mut s) = (
        old_results.iter().peekable(),
        old_symptoms.iter().peekable(),
    );
    loop {
        match (r.peek(), s.peek()) {
            (Some(a), Some(b)) if a.ts_ms <= b.ts_ms => evaluator.apply(r.next().unwrap()),
            (_, Some(_)) => evaluator.observe(s.next().unwrap()),
            (Some(_), None) => evaluator.apply(r.next().unwrap()),
            (None, None) => break,
        };
    }
    Ok(replayed)
}

/// Every event of `E`'s stream stored at or before the sequence `through`.
async fn read_stored<E: AvroEvent>(js: &JetStream, through: u64) -> Result<Vec<E>, BusError> {
    if through == 0 {
        return Ok(Vec::new());
    }
    let config = SubscriberConfig::all();
    let mut replay = Subscriber::<E>::open(js, config).await?;
    let mut out = Vec::new();
    while let Some(received) = replay.next_stored().await {
        let received = received?;
        if received.stream_seq > through {
            break;
        }
        // What did not decode was dead-lettered when it was first consumed.
        if let Ok(event) = received.event {
            out.push(event);
        }
    }
    Ok(out)
}
