//! Encoding and decoding events.
//!
//! The writer and reader for each schema version are built once, at first use, and kept for
//! the life of the process: building them resolves the schema's names, which costs more than
//! encoding a small event. Telemetry of the newest version, the hot path, is written and read
//! by hand ([`crate::telemetry`]), to the same bytes.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use mapek_domain::{Event, Invalid, MAX_EVENT_BYTES, Telemetry};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{CodecError, HEADER_LEN, KnownSchema, MAGIC, Registry, telemetry};

/// An event that can cross a subject: a domain [`Event`] that serde can write and read.
pub trait AvroEvent: Event + Serialize + DeserializeOwned + 'static {}

impl<E: Event + Serialize + DeserializeOwned + 'static> AvroEvent for E {}

struct Codec {
    known: &'static KnownSchema,
    writer: GenericDatumWriter<'static>,
    /// Reads data of this version into its own shape.
    reader: GenericDatumReader<'static>,
    /// Reads data of this version into the newest version's shape, if this is not the newest.
    upgrade: Option<GenericDatumReader<'static>>,
}

fn codecs() -> &'static BTreeMap<u64, Codec> {
    static CODECS: OnceLock<BTreeMap<u64, Codec>> = OnceLock::new();
    CODECS.get_or_init(|| {
        let registry = Registry::global();
        registry
            .all()
            .map(|known| {
                let schema = &known.schema;
                let latest = registry
                    .latest(known.name)
                    .expect("a schema's own name is known");
                let upgrade = (latest.version != known.version).then(|| {
                    GenericDatumReader::builder(schema)
                        .reader_schema(&latest.schema)
                        .human_readable(false)
                        .build()
                        .expect("the schemas in schemas/ resolve")
                });
                let codec = Codec {
                    known,
                    writer: GenericDatumWriter::builder(schema)
                        .validate(false)
                        .human_readable(false)
                        .build()
                        .expect("the schemas in schemas/ resolve"),
                    reader: GenericDatumReader::builder(schema)
                        .human_readable(false)
                        .build()
                        .expect("the schemas in schemas/ resolve"),
                    upgrade,
                };
                (known.fingerprint, codec)
            })
            .collect()
    })
}

fn latest_codec<E: AvroEvent>() -> &'static Codec {
    let known = Registry::global()
        .latest(E::SCHEMA)
        .unwrap_or_else(|| panic!("no schema in schemas/ for the event type {}", E::SCHEMA));
    &codecs()[&known.fingerprint]
}

/// Encodes `event` with the newest version of its schema, after checking it.
pub fn encode<E: AvroEvent>(event: &E) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::with_capacity(256);
    encode_into(event, &mut buf)?;
    Ok(buf)
}

/// Encodes `event` at the end of `buf` (which a hot loop can clear and reuse).
pub fn encode_into<E: AvroEvent>(event: &E, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    event.validate()?;
    let codec = latest_codec::<E>();
    let start = buf.len();
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&codec.known.fingerprint_bytes);
    match (event as &dyn Any).downcast_ref::<Telemetry>() {
        Some(t) if codec.known.version == telemetry::VERSION => telemetry::write(t, buf),
        _ => {
            codec
                .writer
                .write_ser(&mut *buf, event)
                .map_err(|e| CodecError::Encode {
                    schema: E::SCHEMA,
                    detail: e.to_string(),
                })?;
        }
    }
    check_size(buf.len() - start).inspect_err(|_| buf.truncate(start))
}

/// Refuses a message over [`MAX_EVENT_BYTES`].
fn check_size(len: usize) -> Result<(), CodecError> {
    if len > MAX_EVENT_BYTES {
        return Err(Invalid::TooLarge {
            len,
            max: MAX_EVENT_BYTES,
        }
        .into());
    }
    Ok(())
}

/// The schema a message was written with, from its header.
pub fn peek_schema(bytes: &[u8]) -> Result<&'static KnownSchema, CodecError> {
    if bytes.len() < HEADER_LEN {
        if bytes.len() >= 2 && bytes[..2] != MAGIC {
            return Err(CodecError::NotSingleObject {
                found: bytes[..2].to_vec(),
            });
        }
        return Err(CodecError::TruncatedHeader { len: bytes.len() });
    }
    if bytes[..2] != MAGIC {
        return Err(CodecError::NotSingleObject {
            found: bytes[..2].to_vec(),
        });
    }
    let fingerprint = u64::from_le_bytes(bytes[2..HEADER_LEN].try_into().expect("8 bytes"));
    Registry::global()
        .by_fingerprint(fingerprint)
        .ok_or(CodecError::UnknownFingerprint { fingerprint })
}

/// Whether two messages hold the same event: the same schema version, whichever of its
/// fingerprints names it, and the same datum byte for byte. Two messages that are not both
/// single-object encoded of a known schema are the same only when their bytes are.
///
/// Replay compares what it decides with what was recorded this way: a message written before
/// mapek wrote the specification's fingerprints differs from its replay in the header alone.
pub fn same_message(a: &[u8], b: &[u8]) -> bool {
    match (peek_schema(a), peek_schema(b)) {
        (Ok(x), Ok(y)) => std::ptr::eq(x, y) && a[HEADER_LEN..] == b[HEADER_LEN..],
        _ => a == b,
    }
}

/// Decodes a single-object encoded `E`, written with any known version of its schema, and
/// checks it.
pub fn decode<E: AvroEvent>(bytes: &[u8]) -> Result<E, CodecError> {
    check_size(bytes.len())?;
    let known = peek_schema(bytes)?;
    if known.name != E::SCHEMA {
        return Err(CodecError::WrongSchema {
            expected: E::SCHEMA,
            found: known.name.to_owned(),
            version: known.version,
        });
    }
    let codec = &codecs()[&known.fingerprint];
    let malformed = |detail: String| CodecError::Malformed {
        schema: known.label().to_owned(),
        detail,
    };
    let mut body = &bytes[HEADER_LEN..];
    if let Some(event) = read_by_hand::<E>(known, body) {
        event.validate()?;
        return Ok(event);
    }
    let event: E = match &codec.upgrade {
        None => codec
            .reader
            .read_deser(&mut body)
            .map_err(|e| malformed(e.to_string()))?,
        Some(upgrade) => {
            let value = upgrade
                .read_value(&mut body)
                .map_err(|e| malformed(e.to_string()))?;
            apache_avro::from_value(&value).map_err(|e| malformed(e.to_string()))?
        }
    };
    if !body.is_empty() {
        return Err(malformed(format!(
            "{} bytes left over after the datum",
            body.len()
        )));
    }
    event.validate()?;
    Ok(event)
}

/// `E` read by [`telemetry::read`], if `E` is Telemetry, the datum is of the version it reads
/// and it reads cleanly; otherwise the generic reader reads it (or says what is wrong).
fn read_by_hand<E: AvroEvent>(known: &KnownSchema, body: &[u8]) -> Option<E> {
    let mut slot: Option<E> = None;
    let out = (&mut slot as &mut dyn Any).downcast_mut::<Option<Telemetry>>()?;
    if known.version == telemetry::VERSION {
        *out = telemetry::read(body);
    }
    slot
}

/// Decodes a JSON `E` (field names as in its schema) and checks it against the same rules and
/// the same schema as the Avro form: what decodes here would encode, and the other way round.
pub fn decode_json<E: AvroEvent>(bytes: &[u8]) -> Result<E, CodecError> {
    check_size(bytes.len())?;
    let event: E = serde_json::from_slice(bytes).map_err(|e| CodecError::Json {
        schema: E::SCHEMA,
        detail: e.to_string(),
    })?;
    event.validate()?;
    // Writing it with the schema is the schema check: a field of the wrong shape fails here.
    let codec = latest_codec::<E>();
    codec
        .writer
        .write_ser(&mut std::io::sink(), &event)
        .map_err(|e| CodecError::Json {
            schema: E::SCHEMA,
            detail: e.to_string(),
        })?;
    Ok(event)
}
