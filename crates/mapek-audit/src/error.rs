//! What can go wrong with keys and signatures.

use std::path::PathBuf;

/// An audit error.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A key file cannot be read or written. Handling: the operator fixes the path or
    /// permissions; a worker does not start without the key it was told to use.
    #[error("key file {path}: {detail}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// liboqs failed (an algorithm not built in, a key of the wrong size). Handling: fatal;
    /// the message names the cause.
    #[error("ML-DSA: {0}")]
    Crypto(String),
    /// Reading the plan stream failed. Handling: retry when the server is back.
    #[error(transparent)]
    Bus(#[from] mapek_bus::BusError),
}
