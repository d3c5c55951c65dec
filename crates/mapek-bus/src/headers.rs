//! The headers every mapek message carries.

use async_nats::HeaderMap;
use mapek_codec::{AvroEvent, CodecError, JSON_CONTENT_TYPE, decode, decode_json};
use mapek_domain::{Event, Phase};

/// JetStream's dedup key: the event id.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// `name/version` of the writer's schema, for tools that do not parse the Avro header.
pub const SCHEMA: &str = "Mapek-Schema";
/// The id of the event that caused this one.
pub const CAUSATION: &str = "Mapek-Causation";
/// The incident this event belongs to.
pub const CORRELATION: &str = "Mapek-Correlation";
/// `application/json` on JSON telemetry; absent on Avro.
pub const CONTENT_TYPE: &str = "Content-Type";
/// W3C trace context, carried from telemetry to outcome.
pub const TRACEPARENT: &str = "traceparent";

/// The headers for `event`, written with schema `schema_label` (`Telemetry/2`).
pub fn for_event<E: Event>(event: &E, schema_label: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID, event.event_id());
    headers.insert(SCHEMA, schema_label);
    if let Some(causation) = event.causation() {
        headers.insert(CAUSATION, causation);
    }
    if let Some(correlation) = event.correlation() {
        headers.insert(CORRELATION, correlation);
    }
    headers
}

/// Whether a message says its body is JSON.
pub fn is_json(headers: Option<&HeaderMap>) -> bool {
    headers
        .and_then(|h| h.get(CONTENT_TYPE))
        .is_some_and(|v| v.as_str().starts_with(JSON_CONTENT_TYPE))
}

/// Decodes a message body as `E`: Avro, or JSON when its headers say so and `E` is published
/// on the monitor subjects (the only ones that take JSON, from simple agents).
pub fn decode_body<E: AvroEvent>(
    headers: Option<&HeaderMap>,
    body: &[u8],
) -> Result<E, CodecError> {
    if !is_json(headers) {
        return decode(body);
    }
    if E::PHASE != Phase::Monitor {
        return Err(CodecError::Json {
            schema: E::SCHEMA,
            detail: format!(
                "JSON is accepted only on the monitor subjects; {} must be Avro",
                E::PHASE
            ),
        });
    }
    decode_json(body)
}
