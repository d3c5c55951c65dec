//! The headers every mapek message carries.

use async_nats::HeaderMap;
use mapek_codec::{AvroEvent, CodecError, JSON_CONTENT_TYPE, decode, decode_json};
use mapek_domain::{Event, EventId, Phase};

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
/// W3C vendor trace state, passed along unchanged.
pub const TRACESTATE: &str = "tracestate";

/// A header name made at compile time: one given as `&str` is checked, and unless NATS knows
/// it, copied, on every insert and every lookup.
macro_rules! name {
    ($name:expr) => {
        const { async_nats::HeaderName::from_static($name) }
    };
}
pub(crate) use name;

/// The headers for `event`, written with schema `schema_label` (`Telemetry/2`).
pub fn for_event<E: Event>(event: &E, schema_label: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(name!(MSG_ID), event.event_id());
    headers.insert(name!(SCHEMA), schema_label);
    if let Some(causation) = event.causation() {
        headers.insert(name!(CAUSATION), causation);
    }
    if let Some(correlation) = event.correlation() {
        headers.insert(name!(CORRELATION), correlation);
    }
    headers
}

/// The W3C `traceparent` of `event`, caused by a message whose headers were `cause`.
///
/// The trace id is the cause's when it carried a valid `traceparent` (an agent that traces
/// its telemetry sees the whole loop in its trace); otherwise it is derived from the event's
/// incident (or its id), so every event of an incident shares one trace even when nothing
/// upstream traced. The span id is derived from the event id. Both are deterministic: a
/// retried or replayed publish carries the same context.
pub fn child_traceparent<E: Event>(event: &E, cause: Option<&HeaderMap>) -> String {
    let parent = cause
        .and_then(|h| h.get(name!(TRACEPARENT)))
        .and_then(|v| parse_traceparent(v.as_str()));
    let (trace_id, flags) = match parent {
        Some((trace, flags)) => (trace.to_owned(), flags.to_owned()),
        None => {
            let root = event.correlation().unwrap_or(event.event_id());
            (
                EventId::builder("trace").str(root).finish(),
                "01".to_owned(),
            )
        }
    };
    let span = EventId::builder("span").str(event.event_id()).finish();
    format!("00-{trace_id}-{}-{flags}", &span[..16])
}

/// The trace id and flags of a version-00 `traceparent`, if it is well formed and its ids
/// are not all zero.
fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && s.bytes().any(|b| b != b'0')
    };
    (version == "00"
        && parts.next().is_none()
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2) | (flags == "00"))
        .then_some((trace, flags))
}

/// Whether a message says its body is JSON.
pub fn is_json(headers: Option<&HeaderMap>) -> bool {
    // Every consumed message asks.
    headers
        .and_then(|h| h.get(name!(CONTENT_TYPE)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_is_carried_from_cause_to_effect_or_started_per_incident() {
        let decision = mapek_testkit_free_decision();
        let root = child_traceparent(&decision, None);
        let (trace, _) = parse_traceparent(&root).expect("well formed");
        assert_eq!(root, child_traceparent(&decision, None), "deterministic");
        assert_eq!(trace, EventId::builder("trace").str("i-1").finish());

        let mut cause = HeaderMap::new();
        cause.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let child = child_traceparent(&decision, Some(&cause));
        assert!(
            child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{child}"
        );
        assert!(!child.contains("00f067aa0ba902b7"), "a span of its own");

        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            let mut cause = HeaderMap::new();
            cause.insert(TRACEPARENT, bad);
            assert_eq!(child_traceparent(&decision, Some(&cause)), root, "{bad}");
        }
    }

    fn mapek_testkit_free_decision() -> mapek_domain::Symptom {
        mapek_domain::Symptom {
            symptom_id: "s-1".into(),
            incident_id: "i-1".into(),
            node: mapek_domain::NodeId::new("n1").unwrap(),
            ts_ms: 0,
            kind: mapek_domain::SymptomKind::PacketLoss,
            state: mapek_domain::SymptomState::Open,
            severity: 1.0,
            peer: None,
            evidence: Default::default(),
            summary: String::new(),
            caused_by: "t-1".into(),
        }
    }
}
