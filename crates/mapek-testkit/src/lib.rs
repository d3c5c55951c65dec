//! What mapek's tests and benchmarks share.
//!
//! # Layout
//! - [`nats`]: [`NatsServer`], a real `nats-server` with JetStream on a free port and a
//!   temporary store, stopped and removed on drop; tests can stop and restart it.
//! - [`samples`]: one valid sample of every event type, for round trips.

pub mod nats;
pub mod samples;

pub use nats::NatsServer;
