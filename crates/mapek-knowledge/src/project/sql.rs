//! The read model as a projection's store: one stream's rows and its offset in
//! `projection_offsets`, written in one transaction; hot state to Redis after the commit.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::jetstream::Message;
use mapek_bus::headers::decode_body;
use mapek_bus::projection::{Batch, Commit, Failed, Failure, REFUSALS, RunError, Store, seq};
use mapek_bus::{BusError, DeadLetters, JetStream};
use mapek_domain::Phase;
use sqlx::AnyConnection;

use super::StreamCounters;
use crate::redis::Redis;
use crate::rows::{self, Events};
use crate::store::{int, refuses_the_data};
use crate::{KnowledgeError, ReadModel};

/// One stream's rows in the read model.
pub(super) struct SqlStore {
    /// Where poison messages go.
    pub js: JetStream,
    pub read_model: ReadModel,
    pub redis: Option<Redis>,
    pub counters: Arc<StreamCounters>,
    /// The stream read, and the key of its row in `projection_offsets`.
    pub stream: String,
    /// The phase it stores.
    pub phase: Phase,
}

/// What stopped a projection, as the read model's error.
pub(super) fn failed(e: RunError<sqlx::Error>, url: &str) -> KnowledgeError {
    match e {
        RunError::Log { stream, detail } => KnowledgeError::Log { stream, detail },
        RunError::Crashed { stream, seq } => KnowledgeError::Crashed { stream, seq },
        RunError::Store(e) => KnowledgeError::Query {
            url: url.to_owned(),
            doing: "projecting".into(),
            detail: e.to_string(),
        },
    }
}

impl Store for SqlStore {
    type Error = sqlx::Error;

    fn describe(&self) -> String {
        format!("the read model at {}", self.read_model.url())
    }

    async fn offset(&mut self) -> Result<u64, Failure<sqlx::Error>> {
        let got = sqlx::query("SELECT last_seq FROM projection_offsets WHERE stream = $1")
            .bind(self.stream.as_str())
            .fetch_optional(self.read_model.pool())
            .await
            .and_then(|r| r.map(|r| int(&r, 0)).transpose());
        let stored = got.map_err(Failure::Unavailable)?.unwrap_or(0) as u64;
        self.counters.last_seq.store(stored, Ordering::Relaxed);
        Ok(stored)
    }

    async fn apply(&mut self, batch: Batch<'_>) -> Result<Commit, Failure<sqlx::Error>> {
        let (mut events, mut skipped) = match batch.dead_lettered {
            false => self.decode(batch.messages),
            true => (self.decode(&[]).0, batch.messages.iter().map(seq).collect()),
        };
        match self
            .commit(&mut events, &mut skipped, batch.last_seq())
            .await
        {
            Ok(Commit::Done) => {
                self.hot_state(&events).await;
                Ok(Commit::Done)
            }
            Ok(Commit::Moved) => Ok(Commit::Moved),
            Err(e) if refuses_the_data(self.read_model.backend(), &e) => Err(Failure::Refused(e)),
            Err(e) => Err(Failure::Unavailable(e)),
        }
    }

    async fn dead_letter(&mut self, message: &Message, e: &sqlx::Error) -> Result<(), BusError> {
        let reason = format!(
            "the read model ({:?}) refused it {REFUSALS} times: {e}",
            self.read_model.backend()
        );
        tracing::warn!(
            stream = self.stream.as_str(),
            seq = seq(message),
            "dead-lettered: {reason}"
        );
        DeadLetters::new(self.js.clone())
            .reject(self.phase, message, reason)
            .await?;
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn count(&self, failure: Failed) {
        let counter = match failure {
            Failed::Log => &self.counters.log_failures,
            Failed::Store => &self.counters.store_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl SqlStore {
    /// Decodes a batch; what does not decode is logged and counted as skipped.
    fn decode(&self, messages: &[Message]) -> (Events, Vec<u64>) {
        let mut events = match self.phase {
            Phase::Analyze => Events::Analyze(Vec::new()),
            Phase::Plan => Events::Plan(Vec::new()),
            Phase::Execute => Events::Execute(Vec::new()),
            Phase::Knowledge => Events::Knowledge(Vec::new()),
            _ => Events::Monitor(Vec::new()),
        };
        let mut skipped = Vec::new();
        for m in messages {
            let s = seq(m);
            let h = m.headers.as_ref();
            let body = &m.payload;
            let ok = match &mut events {
                Events::Monitor(v) => decode_body(h, body).map(|e| v.push((s, e))),
                Events::Analyze(v) => decode_body(h, body).map(|e| v.push((s, e))),
                Events::Plan(v) => decode_body(h, body).map(|e| v.push((s, e))),
                Events::Execute(v) => decode_body(h, body).map(|e| v.push((s, e))),
                Events::Knowledge(v) => decode_body(h, body).map(|e| v.push((s, e))),
            };
            if let Err(e) = ok {
                tracing::warn!(stream = self.stream.as_str(), seq = s, "skipped: {e}");
                skipped.push(s);
            }
        }
        (events, skipped)
    }

    /// Writes the hot state of `events` to Redis, if there is one; a failure is counted and
    /// logged, as the SQL rows are stored.
    async fn hot_state(&self, events: &Events) {
        if let Some(redis) = &self.redis
            && events.len() > 0
            && let Err(e) = redis.project(events).await
        {
            self.counters.redis_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                stream = self.stream.as_str(),
                "hot state not written to Redis: {e}"
            );
        }
    }

    /// Writes `events` and `skipped` (what is above the stored sequence) with `last_seq` in
    /// one transaction.
    async fn commit(
        &self,
        events: &mut Events,
        skipped: &mut Vec<u64>,
        last_seq: u64,
    ) -> Result<Commit, sqlx::Error> {
        let mut tx = self.read_model.pool().begin().await?;
        let conn: &mut AnyConnection = &mut tx;
        let stored = sqlx::query("SELECT last_seq FROM projection_offsets WHERE stream = $1")
            .bind(self.stream.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| int(&r, 0))
            .transpose()?;
        let before = events.len() + skipped.len();
        let floor = stored.unwrap_or(0) as u64;
        events.retain_after(floor);
        skipped.retain(|s| *s > floor);
        let again = (before - events.len() - skipped.len()) as u64;
        if again > 0 {
            self.counters
                .redelivered
                .fetch_add(again, Ordering::Relaxed);
        }
        if last_seq <= floor {
            tx.rollback().await?;
            return Ok(Commit::Done);
        }
        rows::write(conn, self.read_model.backend(), events).await?;
        let applied = events.len() as i64;
        let skip = skipped.len() as i64;
        if self
            .store_offset(conn, stored, last_seq, applied, skip)
            .await?
            != 1
        {
            tx.rollback().await?;
            return Ok(Commit::Moved);
        }
        tx.commit().await?;
        let c = &self.counters;
        c.applied.fetch_add(applied as u64, Ordering::Relaxed);
        c.skipped.fetch_add(skip as u64, Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.last_seq.store(last_seq, Ordering::Relaxed);
        Ok(Commit::Done)
    }

    /// Moves the stream's offset from `stored` to `last_seq`, adding to its counts; the rows
    /// it changed (1, or 0 if another writer moved it first).
    async fn store_offset(
        &self,
        conn: &mut AnyConnection,
        stored: Option<i64>,
        last_seq: u64,
        applied: i64,
        skip: i64,
    ) -> Result<u64, sqlx::Error> {
        let query = match stored {
            None => sqlx::query(
                "INSERT INTO projection_offsets (stream, last_seq, applied, skipped) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (stream) DO NOTHING",
            )
            .bind(self.stream.as_str())
            .bind(last_seq as i64)
            .bind(applied)
            .bind(skip),
            Some(old) => sqlx::query(
                "UPDATE projection_offsets SET last_seq = $1, applied = applied + $2, \
                 skipped = skipped + $3 WHERE stream = $4 AND last_seq = $5",
            )
            .bind(last_seq as i64)
            .bind(applied)
            .bind(skip)
            .bind(self.stream.as_str())
            .bind(old),
        };
        Ok(query.execute(conn).await?.rows_affected())
    }
}
