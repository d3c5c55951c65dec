//! mapek's wire format.
//!
//! Every message body is Avro in the spec's single-object encoding: the two bytes `C3 01`, the
//! 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint of the writer's schema, then the
//! binary datum. Any Avro library in any language can read it with the schemas in `schemas/`
//! (docs/wire.md).
//! A reader keeps a table of every schema version it knows, by fingerprint, and resolves an
//! older writer's data into the newest shape. The monitor subjects also take JSON telemetry,
//! checked against the same schema.
//!
//! # Layout
//! - [`canonical`]: the specification's Parsing Canonical Form and CRC-64-AVRO fingerprint.
//! - [`registry`]: the schemas of `schemas/`, embedded, looked up by fingerprint or name.
//! - [`codec`]: [`encode`], [`decode`], [`decode_json`] and [`same_message`].
//! - [`error`]: [`CodecError`], what can be wrong with a message.
//! - [`telemetry`]: the newest Telemetry schema written and read by hand, the hot path.

pub mod canonical;
pub mod codec;
pub mod error;
pub mod registry;
pub mod telemetry;

pub use codec::{AvroEvent, decode, decode_json, encode, encode_into, peek_schema, same_message};
pub use error::CodecError;
pub use registry::{KnownSchema, Registry};

/// The two bytes that open every single-object encoded message.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];
/// The length of the single-object header: the magic and the fingerprint.
pub const HEADER_LEN: usize = 10;
/// The content type a JSON message carries in its `Content-Type` header.
pub const JSON_CONTENT_TYPE: &str = "application/json";
