//! Telemetry of two nodes whose incidents the trace tests follow, one traced by its agent.

#![allow(dead_code)]

use std::collections::BTreeMap;

use mapek_bus::{JetStream, Publisher, headers};
use mapek_codec::encode;
use mapek_domain::{NodeId, Phase, Telemetry};

use crate::agent::T0;

/// The trace n1's agent puts its telemetry in.
pub const AGENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// n1 (traced by its agent) and n2 (not traced) each lose 30 % of their packets for 10 s.
pub async fn publish_lossy_telemetry(js: &JetStream) {
    let mut publisher = Publisher::new(js.clone());
    for i in 0..10 {
        for node in ["n1", "n2"] {
            let metrics =
                BTreeMap::from([("loss".to_owned(), 0.3), ("latency_ms".to_owned(), 10.0)]);
            let t = Telemetry::new(NodeId::new(node).unwrap(), T0 + i * 1000, metrics);
            let mut h = headers::for_event(&t, "Telemetry/2");
            if node == "n1" {
                h.insert(
                    headers::TRACEPARENT,
                    format!("00-{AGENT_TRACE}-00f067aa0ba902{i:02x}-01").as_str(),
                );
                h.insert(headers::TRACESTATE, "vendor=agent");
            }
            let subject = Phase::Monitor.subject(&t.node);
            publisher
                .publish_raw(subject, h, encode(&t).unwrap().into(), &t.event_id)
                .await
                .unwrap();
        }
    }
    assert!(publisher.finish().await.all_acked());
}

/// The traceparent and tracestate of every message in `stream`, by node (the subject's last
/// token), in stream order.
pub async fn contexts(js: &JetStream, stream: &str) -> Vec<(String, String, String)> {
    let stream = js.get_stream(stream).await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = stream.direct_get(seq).await.unwrap();
        let node = m.subject.rsplit('.').next().unwrap().to_owned();
        let get = |name: &str| {
            m.headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        out.push((node, get(headers::TRACEPARENT), get(headers::TRACESTATE)));
    }
    out
}

/// The trace id of a `traceparent`.
pub fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or("")
}
