//! What can go wrong on the bus.

use mapek_codec::CodecError;
use mapek_domain::Invalid;
use thiserror::Error;

/// An error from the bus. Messages are sentences a user can act on.
#[derive(Debug, Error)]
pub enum BusError {
    /// NATS could not be reached.
    ///
    /// ### Handling
    /// Fatal at startup: check the URL and that nats-server runs.
    #[error(
        "cannot reach NATS at {url}: {detail}. Is nats-server running? Set MAPEK_NATS_URL \
         or --nats-url to where it listens"
    )]
    Connect {
        /// The URL tried.
        url: String,
        /// What the client said.
        detail: String,
    },
    /// The server has no JetStream, or an old one.
    ///
    /// ### Handling
    /// Fatal: run nats-server 2.11 or newer with `-js`.
    #[error("NATS at {url} {detail}: mapek needs nats-server 2.11 or newer with JetStream (-js)")]
    NoJetStream {
        /// The URL.
        url: String,
        /// What is missing.
        detail: String,
    },
    /// An event that cannot be published as it is (invalid, too large).
    ///
    /// ### Handling
    /// Report to the caller; retrying the same event fails the same way.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A stream could not be read, created or updated.
    ///
    /// ### Handling
    /// Fatal for `streams apply`; the message names the stream.
    #[error("stream {stream}: {detail}")]
    Stream {
        /// The stream.
        stream: String,
        /// What went wrong.
        detail: String,
    },
    /// A stream definition file that does not parse.
    ///
    /// ### Handling
    /// Fix the file; the message names it and the position.
    #[error("stream definition {file}: {detail}")]
    Definition {
        /// The file.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// A publish that the client could not send (connection lost, payload over the server's
    /// limit). Acks that fail later are counted in the [`crate::PublishReport`] instead.
    ///
    /// ### Handling
    /// Retry the same event later: its id makes the retry safe.
    #[error("cannot publish to {subject}: {detail}")]
    Publish {
        /// The subject.
        subject: String,
        /// What the client said.
        detail: String,
    },
    /// A consumer could not be created or read.
    ///
    /// ### Handling
    /// Retry later; the durable consumer keeps its place.
    #[error("consumer on {stream}: {detail}")]
    Consumer {
        /// The stream.
        stream: String,
        /// What went wrong.
        detail: String,
    },
}

impl BusError {
    /// Whether doing the same again fails the same way: the input is at fault (an event that
    /// is invalid or too large to publish), not the server or the network. A worker that
    /// keeps meeting it dead-letters its input instead of retrying forever.
    pub fn is_permanent(&self) -> bool {
        matches!(self, BusError::Codec(_))
    }
}

impl From<Invalid> for BusError {
    fn from(invalid: Invalid) -> Self {
        BusError::Codec(CodecError::Invalid(invalid))
    }
}
