//! Projections: a stream folded into a store that keeps its own offset.
//!
//! The read model (mapek-knowledge) and the incident index (mapek-vectors) are projections of
//! the log, and they read it the same way: [`run`] reads one stream from right after the
//! sequence the store says it has applied (the store is the truth, not a consumer's ack
//! floor), hands each batch to the store, which writes it *with* its last sequence in one
//! commit, and goes on. A crash between a commit and the next read brings the batch back; its
//! sequences are at or below the stored one and the store ignores them.
//!
//! What goes wrong is waited out when [`RunConfig::patient`] says so (a live projection): a
//! store that does not answer is tried again with backoff, and a log that fails to be read (a
//! leader election, a lost server) is opened again from the stored offset a second later,
//! each failure counted through [`Store::count`]. A message the store itself refuses would
//! hold its stream forever: a batch refused that way is written again one message at a time,
//! and a message refused [`REFUSALS`] times is a poison message, which the store sets aside
//! ([`Store::dead_letter`]) and records as skipped. A rebuild is not patient: its first
//! failure ends it, naming the stream or the store.
//!
//! Each store supplies only what differs ([`Store`]): its offset, how it applies a batch,
//! where its poison messages go and how it counts failures. [`Projections`] runs one
//! projection per stream until a shutdown, or until each is caught up.
//!
//! # Layout
//! - [`run`](mod@run): the loop over one stream.
//! - [`supervise`]: [`Projections`], running several and stopping them together.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Message;
use tokio::sync::watch;

use crate::BusError;

mod run;
mod supervise;

pub use run::run;
pub use supervise::Projections;

/// How many times a message the store refuses is written before it is dead-lettered.
pub const REFUSALS: u32 = 3;

/// A store a stream is projected into.
pub trait Store: Send {
    /// What the store's operations fail with.
    type Error: fmt::Display + Send;

    /// The store, for messages: "the read model at postgres://…".
    fn describe(&self) -> String;

    /// The last sequence of the stream the store has applied; 0 for none.
    fn offset(&mut self) -> impl Future<Output = Result<u64, Failure<Self::Error>>> + Send;

    /// Applies `batch` and stores its last sequence in the same commit, ignoring what is at
    /// or below the stored one.
    fn apply(
        &mut self,
        batch: Batch<'_>,
    ) -> impl Future<Output = Result<Commit, Failure<Self::Error>>> + Send;

    /// Sets `message` aside where poison messages go, saying why (`reason`); the runner then
    /// records it as skipped ([`Batch::dead_lettered`]). An error stops the projection. A
    /// store that never refuses data ([`Failure::Refused`]) has no poison messages to set
    /// aside, and keeps this default, which only skips them.
    fn dead_letter(
        &mut self,
        message: &Message,
        reason: &Self::Error,
    ) -> impl Future<Output = Result<(), BusError>> + Send {
        let _ = (message, reason);
        async { Ok(()) }
    }

    /// Counts a failure that the runner waits out.
    fn count(&self, failure: Failed);
}

/// What a store is handed to commit with its offset.
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    /// The messages, in stream order; at least one.
    pub messages: &'a [Message],
    /// The messages were dead-lettered: record only their sequences, as skipped.
    pub dead_lettered: bool,
}

impl Batch<'_> {
    /// The sequence to store with the batch: its last message's.
    pub fn last_seq(&self) -> u64 {
        self.messages.last().map_or(0, seq)
    }
}

/// The stream sequence of a message read by a projection.
pub fn seq(m: &Message) -> u64 {
    m.info().map(|i| i.stream_sequence).unwrap_or(0)
}

/// What a store's commit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Written through the batch's last sequence (or nothing to write: all of it was there).
    Done,
    /// Another writer moved the stored offset meanwhile: the runner reads it again and goes
    /// on from there.
    Moved,
}

/// Why a store's operation failed, which says what the runner does.
#[derive(Debug)]
pub enum Failure<E> {
    /// The store did not answer (went away, timed out): tried again after a pause.
    Unavailable(E),
    /// The store refused the data itself: the batch is written one message at a time, and a
    /// message refused [`REFUSALS`] times is dead-lettered.
    Refused(E),
}

impl<E> Failure<E> {
    fn into_inner(self) -> E {
        match self {
            Failure::Unavailable(e) | Failure::Refused(e) => e,
        }
    }
}

/// A failure the runner waited out, for the store to count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failed {
    /// Reading the log failed; the stream is opened again from the stored offset.
    Log,
    /// The store failed; the same operation is tried again.
    Store,
}

/// Why a projection stopped before its shutdown.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E: fmt::Display> {
    /// The log failed in a way waiting does not mend (a stream that does not exist, a poison
    /// message that cannot be dead-lettered), or at all, for a projection that is not
    /// patient. Handling: stop; a restart resumes after the stored offset.
    #[error("the log failed for {stream}: {detail}")]
    Log {
        /// The stream being read.
        stream: String,
        /// What failed.
        detail: String,
    },
    /// The store failed in a way waiting does not mend, or at all, for a projection that is
    /// not patient. Handling: stop and report it.
    #[error("{0}")]
    Store(E),
    /// A test hook stopped the projection between a commit and its acknowledgement, as a
    /// crash would. Handling: restart the projection (only tests set the hook).
    #[error("the {stream} projection stopped after committing through sequence {seq} (test hook)")]
    Crashed {
        /// The stream.
        stream: String,
        /// The last sequence committed.
        seq: u64,
    },
}

/// A test hook: called with the stream's name (`MAPEK_MONITOR_1`) and the batch's last
/// sequence right after each commit; returning `true` stops the projection there, before the
/// ack, as a crash would.
pub type CrashHook = Arc<dyn Fn(&str, u64) -> bool + Send + Sync>;

/// How a projection reads its stream.
#[derive(Clone)]
pub struct RunConfig {
    /// A durable consumer of this name (its lag shows on the server, and the runner
    /// acknowledges each batch after its commit), or an ephemeral one when `None`.
    pub durable: Option<String>,
    /// The most messages handed to the store at once.
    pub batch: usize,
    /// How long a batch waits for more after its first message, even when the stream holds
    /// no more yet: zero writes each batch as soon as the stream is read to its end. A store
    /// that folds a batch (each node's latest sample) writes fewer rows the longer it waits.
    pub linger: Duration,
    /// Stop once the stream is applied up to the last sequence it held at start, instead of
    /// following it until shutdown.
    pub until_caught_up: bool,
    /// Wait out a store or a log that fails, counting each failure; otherwise the first
    /// failure stops the projection.
    pub patient: bool,
    /// The longest pause between two tries of a store that is down.
    pub max_backoff: Duration,
    /// Tests only: stop after a commit and before its ack (see [`CrashHook`]).
    pub crash_after_commit: Option<CrashHook>,
    /// Tests only: read from this sequence instead of after the stored one, so that messages
    /// already applied come again (they must change nothing).
    pub redeliver_from: Option<u64>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            durable: None,
            batch: 1000,
            linger: Duration::ZERO,
            until_caught_up: false,
            patient: true,
            max_backoff: Duration::from_secs(5),
            crash_after_commit: None,
            redeliver_from: None,
        }
    }
}

/// A projection's shutdown signal, set by [`Projections`] for all its projections at once.
#[derive(Clone, Debug)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Whether the projection is asked to stop.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once the projection is asked to stop (or its supervisor is gone).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Waits `delay`, or less if asked to stop.
    pub async fn pause(&self, delay: Duration) {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = self.wait() => {}
        }
    }
}
