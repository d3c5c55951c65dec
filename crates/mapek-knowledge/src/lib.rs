//! mapek's knowledge: the read model (Postgres, or SQLite on one machine, through the same
//! queries), the projections that fill it from the log exactly once, and Redis for hot node
//! health and the state several executors share.
//!
//! ```no_run
//! # async fn example(js: mapek_bus::JetStream) -> Result<(), mapek_knowledge::KnowledgeError> {
//! use mapek_knowledge::{ReadModel, Redis, project};
//!
//! let model = ReadModel::connect("postgres://postgres@127.0.0.1/mapek").await?;
//! model.migrate().await?;
//! let redis = Some(Redis::connect("redis://127.0.0.1:6379").await?);
//! let stats = project(js, model, redis, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`store`]: [`ReadModel`], connecting (a URL or a SQLite path), migrations, reset,
//!   offsets and snapshots.
//! - `rows` (private): events to rows, one idempotent multi-row statement per table and batch.
//! - [`project`](mod@project): the projections (one per stream, telemetry's several streams
//!   included), [`project()`], [`project_with`], [`rebuild`], their config and counters.
//! - [`redis`]: [`Redis`], hot node health, open incidents and recent actions; leases
//!   on nodes ([`Redis::try_lease`], [`Redis::release`], [`Redis::leases`]) and locks
//!   ([`Redis::try_lock`], [`Redis::unlock`]), what several executors share: Redis is
//!   mapek-loop's [`mapek_loop::execute::SharedLeases`].
//! - [`status`]: [`MeshStatus`], what `mapek status` shows, from either store.
//! - [`error`]: [`KnowledgeError`], what can go wrong and how a caller handles it.

pub mod error;
pub mod project;
pub mod redis;
mod rows;
pub mod status;
pub mod store;

pub use error::KnowledgeError;
pub use project::{
    Counts, CrashHook, PROJECTED, Part, ProjectionConfig, ProjectionStats, StreamCounters, project,
    project_with, rebuild,
};
pub use redis::Redis;
pub use rows::health;
pub use status::MeshStatus;
pub use store::{Backend, ReadModel};
