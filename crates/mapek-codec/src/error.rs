//! What can be wrong with a message.

use mapek_domain::Invalid;
use thiserror::Error;

/// Why a message could not be encoded or decoded. Every variant is about the message itself,
/// so none is worth a retry.
///
/// ### Handling
/// A consumer dead-letters the message (`mapek.dlq.<phase>`, with this text as the reason) and
/// terminates its delivery; a publisher reports it to its caller and publishes nothing.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The body does not start with the single-object magic `C3 01`.
    #[error("not an Avro single-object message: it starts with {found:02x?}, not c3 01")]
    NotSingleObject {
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// The body ends inside the single-object header.
    #[error("message is {len} bytes long, shorter than the 10-byte single-object header")]
    TruncatedHeader {
        /// The body's length.
        len: usize,
    },
    /// A fingerprint no known schema version has.
    #[error("unknown schema fingerprint {fingerprint:016x}: no schema in schemas/ has it")]
    UnknownFingerprint {
        /// The fingerprint read.
        fingerprint: u64,
    },
    /// A known schema, but not the one this reader reads.
    #[error("expected a {expected} message, found {found} version {version}")]
    WrongSchema {
        /// The schema the reader wanted.
        expected: &'static str,
        /// The schema the message was written with.
        found: String,
        /// Its version.
        version: u32,
    },
    /// The datum does not decode with its writer's schema (cut short, bad lengths, …).
    #[error("{schema} body does not decode: {detail}")]
    Malformed {
        /// The writer's schema, `name/version`.
        schema: String,
        /// What the decoder said.
        detail: String,
    },
    /// A JSON message that is not valid JSON or does not fit the schema.
    #[error("JSON {schema} does not fit its schema: {detail}")]
    Json {
        /// The schema expected.
        schema: &'static str,
        /// What is wrong, with its position.
        detail: String,
    },
    /// The event decoded but breaks one of mapek's rules.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The event could not be written with its schema (a bug: the type and the schema differ).
    #[error("cannot encode {schema}: {detail}")]
    Encode {
        /// The schema.
        schema: &'static str,
        /// What the encoder said.
        detail: String,
    },
}
