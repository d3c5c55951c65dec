//! What can go wrong in a replay.

use thiserror::Error;

/// An error from a replay, an export or a story. Messages are sentences a user can act on.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// The live log could not be read (no server, no streams, a consumer failed).
    ///
    /// ### Handling
    /// Fatal for this run: check the server and `mapek streams apply`, then run it again.
    #[error(transparent)]
    Bus(#[from] mapek_bus::BusError),
    /// A slice file that cannot be read, or is not a slice.
    ///
    /// ### Handling
    /// Fatal: the message names the file and the line; export the slice again.
    #[error("slice {file}: {detail}")]
    Slice {
        /// The file.
        file: String,
        /// What is wrong, and where.
        detail: String,
    },
    /// The output could not be written (a closed pipe, a full disk).
    ///
    /// ### Handling
    /// Fatal for this run: the message names what was being written.
    #[error("cannot write {what}: {detail}")]
    Write {
        /// What was being written.
        what: String,
        /// What the system said.
        detail: String,
    },
    /// Something the replay needs was never recorded, or does not parse: a policy by its
    /// hash, the analyze configuration.
    ///
    /// ### Handling
    /// Fatal: the message says what is missing and how to supply it.
    #[error("{0}")]
    Missing(String),
    /// No such incident in the log.
    ///
    /// ### Handling
    /// Report to the user; the message names the incident and where it was looked for.
    #[error("no incident {id} in {source_name}: no symptom, decision, action or outcome names it")]
    NoIncident {
        /// The incident id asked for.
        id: String,
        /// Where it was looked for.
        source_name: String,
    },
}
