//! What can go wrong with the incident index.

use thiserror::Error;

/// An error from the incident index or its projection. Messages are sentences that name the
/// index (its directory or URL) or the stream involved.
#[derive(Debug, Error)]
pub enum VectorError {
    /// The index could not be opened or reached: a directory that cannot be created or holds
    /// something else, or a Qdrant server that does not answer.
    ///
    /// ### Handling
    /// Fatal at startup: the message names the path or URL to fix.
    #[error("cannot open the incident index at {at}: {detail}")]
    Open {
        /// The directory or URL.
        at: String,
        /// What went wrong, and what to do.
        detail: String,
    },
    /// A read or write on an open index failed.
    ///
    /// ### Handling
    /// The projection stops without storing its offsets, so a restart redoes the batch (the
    /// writes are idempotent). A planner that cannot search decides with no knowledge.
    #[error("incident index at {at}: {detail}")]
    Index {
        /// The directory or URL.
        at: String,
        /// What the engine said.
        detail: String,
    },
    /// A stored point whose payload this version cannot read.
    ///
    /// ### Handling
    /// Rebuild the index from the log (`mapek knowledge rebuild`).
    #[error("incident index at {at}: point {point} has a payload this mapek cannot read: {detail}")]
    Payload {
        /// The directory or URL.
        at: String,
        /// The point id.
        point: String,
        /// What did not parse.
        detail: String,
    },
    /// Reading a stream failed.
    ///
    /// ### Handling
    /// The projection stops; restarted, it resumes from the offsets stored with the points.
    #[error(transparent)]
    Bus(#[from] mapek_bus::BusError),
}
