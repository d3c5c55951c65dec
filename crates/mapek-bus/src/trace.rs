//! The loop's spans, through OpenTelemetry.
//!
//! Every event a phase publishes because of another carries a W3C `traceparent` of its own
//! ([`headers::child_traceparent`]): the cause's trace, a span id derived from the event id.
//! [`record_span`] records that same span through OpenTelemetry's global tracer: the same
//! trace and span ids, the cause's span as its parent, from when the phase took the cause up
//! to when it published the event, named `mapek.<phase>` (`mapek.analyze` for a symptom,
//! `mapek.plan` for a decision, `mapek.execute` for an action's result, `mapek.knowledge` for
//! an outcome). So a tracing backend shows an incident as one trace, and an agent that traces
//! its telemetry sees the loop's work inside its own trace.
//!
//! Nothing is recorded until a process installs a tracer provider (`mapek run` does when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set); until then the global tracer does nothing. A cause
//! whose `traceparent` says "not sampled" keeps its span unrecorded too (the SDK's default
//! sampler follows the parent).

use std::cell::Cell;
use std::time::SystemTime;

use async_nats::HeaderMap;
use mapek_codec::AvroEvent;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue, global};

use crate::headers;

/// The name of the tracer (the instrumentation scope) the loop's spans come from.
pub const TRACER: &str = "mapek";

/// Records the span of the phase that published `event`, whose `traceparent` header is
/// `own` ([`headers::child_traceparent`]), because of the message whose headers were `cause`,
/// from `started` to now. See the module documentation.
pub fn record_span<E: AvroEvent>(
    event: &E,
    own: &str,
    cause: Option<&HeaderMap>,
    started: SystemTime,
) {
    let Some((trace_id, span_id, _)) = span_of(own) else {
        return;
    };
    let parent = cause
        .and_then(|h| h.get(headers::name!(headers::TRACEPARENT)))
        .and_then(|v| span_of(v.as_str()));
    let context =
        match parent {
            Some((trace, span, flags)) => Context::new().with_remote_span_context(
                SpanContext::new(trace, span, flags, true, TraceState::default()),
            ),
            None => Context::new(),
        };
    let mut attributes = vec![
        KeyValue::new("mapek.node", event.node().to_string()),
        KeyValue::new("mapek.event_id", event.event_id().to_owned()),
    ];
    if let Some(incident) = event.correlation() {
        attributes.push(KeyValue::new("mapek.incident", incident.to_owned()));
    }
    if let Some(caused_by) = event.causation() {
        attributes.push(KeyValue::new("mapek.caused_by", caused_by.to_owned()));
    }
    let tracer = global::tracer(TRACER);
    let builder = tracer
        .span_builder(format!("mapek.{}", E::PHASE.token()))
        .with_kind(SpanKind::Internal)
        .with_start_time(started)
        .with_attributes(attributes);
    // The provider's id generator takes the header's ids from here ([`carried_ids`]): a root
    // span's trace is the incident's, derived as the header's; a child's is its parent's.
    CARRIED.set(Some((trace_id, span_id)));
    let span = tracer.build_with_context(builder, &context);
    CARRIED.set(None);
    drop(span); // ends it now
}

thread_local! {
    static CARRIED: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// The trace and span ids of the span [`record_span`] is building on this thread, for the
/// tracer provider's id generator: OpenTelemetry's span builder takes no ids, and the span
/// must have the ids its event's `traceparent` header carries. `None` for any other span.
pub fn carried_ids() -> Option<(TraceId, SpanId)> {
    CARRIED.get()
}

/// The trace id, span id and flags of a well-formed `traceparent`.
fn span_of(traceparent: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let mut parts = traceparent.split('-');
    let (_, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    (trace != TraceId::INVALID && span != SpanId::INVALID).then_some((trace, span, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_gives_its_ids_and_flags() {
        let (trace, span, flags) =
            span_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(trace.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.to_string(), "00f067aa0ba902b7");
        assert!(flags.is_sampled());
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(span_of(bad).is_none(), "{bad}");
        }
    }
}
