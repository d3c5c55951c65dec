//! What mapek's tests and benchmarks share.
//!
//! # Layout
//! - [`nats`]: [`NatsServer`], a real `nats-server` with JetStream on a free port and a
//!   temporary store, stopped and removed on drop; tests can stop and restart it.
//! - [`cluster`]: [`NatsCluster`], a real JetStream cluster on loopback whose servers a test
//!   can kill and restart.
//! - [`cpu`]: CPU time of processes from `/proc`, for benchmarks' costs per event.
//! - [`foreign`]: Avro and NATS clients mapek did not write (Java's Avro, fastavro, nats-py),
//!   to hold the wire to them.
//! - [`mutate`]: damaged copies of valid input, to show a decoder never panics.
//! - [`postgres`]: [`TestDatabase`], a fresh Postgres database per test, dropped on drop.
//! - [`redis`]: [`TestRedis`], the test Redis server and a key prefix of the test's own;
//!   [`RedisServer`], a Redis of the test's own to stop and start again.
//! - [`samples`]: one valid sample of every event type, for round trips, and the events of
//!   past incidents.
//! - `streams` (feature `streams`): a fresh server with mapek's streams applied,
//!   `server_with_streams`.

pub mod cluster;
pub mod cpu;
pub mod foreign;
pub mod mutate;
pub mod nats;
pub mod postgres;
pub mod redis;
pub mod samples;
#[cfg(feature = "streams")]
pub mod streams;

pub use cluster::NatsCluster;
pub use nats::NatsServer;
pub use postgres::TestDatabase;
pub use redis::{RedisServer, TestRedis};
#[cfg(feature = "streams")]
pub use streams::{server_with_one_telemetry_stream, server_with_streams, with_streams};
