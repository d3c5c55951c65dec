//! mapek on NATS JetStream: what node agents, workers and operators' tools use to publish
//! events and follow them.
//!
//! ```no_run
//! # async fn example() -> Result<(), mapek_bus::BusError> {
//! use mapek_bus::{Publisher, connect};
//! use mapek_domain::{NodeId, Telemetry};
//!
//! let js = connect("nats://127.0.0.1:4222").await?;
//! let mut publisher = Publisher::new(js);
//! let metrics = [("latency_ms".to_owned(), 12.5)].into();
//! let sample = Telemetry::new(NodeId::new("n17")?, 1_795_867_200_000, metrics);
//! publisher.publish(&sample).await?;
//! let report = publisher.finish().await;
//! assert_eq!(report.acked, 1);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`connect`]: connecting (TLS, mutual TLS, credentials: [`NatsSecurity`]), with an error
//!   that says what to do.
//! - [`streams`]: the stream definitions of `streams/` and [`streams::apply`].
//! - [`layout`]: which streams store a phase (telemetry may be split over several), and
//!   partitions: of a node, and of a stored subject ([`layout::partition_of`]).
//! - [`publisher`]: [`Publisher`], pipelined publishing with a bounded window of acks.
//! - [`subscriber`]: [`Subscriber`], following a subject family live or from a point.
//! - [`direct`]: [`direct::Reader`], reading a stream by batched direct gets, with no
//!   consumer: what the subscriber, replay and the bucket readers read through.
//! - [`inbox`]: [`Inbox`], a durable consumer for workers, dead-lettering what it cannot read.
//! - [`buckets`]: the key-value buckets beside the streams, with the streams' replicas.
//! - [`config_store`]: the policies and analyze settings the workers ran with, in the
//!   `MAPEK_CONFIG` bucket, for replay.
//! - [`command`]: the actuator protocol, [`command::Command`] and
//!   [`command::CommandReply`] over request/reply on `mapek.cmd.<node>`.
//! - [`projection`]: [`projection::run`], one stream read into a store that keeps its own
//!   offset: the loop the read model and the incident index share.
//! - [`dlq`]: [`DeadLetters`], publishing [`mapek_domain::Rejected`] to `mapek.dlq.<phase>`.
//! - [`headers`]: the mapek headers every message carries.
//! - [`trace`]: the loop's spans, through OpenTelemetry's global tracer.
//! - [`error`]: [`BusError`], what can go wrong.

pub mod buckets;
pub mod command;
pub mod config_store;
mod connect;
pub mod direct;
pub mod dlq;
pub mod error;
pub mod headers;
pub mod inbox;
pub mod layout;
pub mod progress;
pub mod projection;
pub mod publisher;
pub mod streams;
pub mod subscriber;
pub mod trace;

pub use connect::{NatsSecurity, connect, connect_client, connect_client_with, connect_with};
pub use dlq::DeadLetters;
pub use error::BusError;
pub use inbox::{Delivery, Inbox, InboxConfig};
pub use publisher::{PublishReport, Publisher};
pub use subscriber::{Family, Received, StartAt, Subscriber, SubscriberConfig};

/// The shutdown signal of work that a supervisor stops: completes when `stop` is sent, or
/// when its sender is dropped (the supervisor is gone). Every worker and projection of
/// mapek takes its shutdown as a future; this turns a oneshot channel into one.
pub async fn until_stopped(stop: tokio::sync::oneshot::Receiver<()>) {
    let _ = stop.await;
}

/// The JetStream context everything here works through.
pub type JetStream = async_nats::jetstream::Context;
