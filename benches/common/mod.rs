//! What the benchmarks share: fresh streams, and the raw async-nats baseline. Each bench uses
//! part of it.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;
use mapek_bus::{JetStream, headers, streams};
use mapek_domain::Telemetry;

/// One pre-encoded message: subject, event id, body.
pub type RawMessage = (String, String, Bytes);

/// Deletes the streams (and the partition leases) and creates them again, empty.
pub async fn fresh_streams(js: &JetStream) {
    for def in streams::builtin() {
        let _ = js.delete_stream(def.name()).await;
    }
    let _ = js.delete_key_value(mapek_loop::lease::BUCKET).await;
    streams::apply(js, &streams::builtin()).await.unwrap();
}

/// The messages a publisher of `events` sends: the same subjects, ids and bytes.
pub fn encode_all(events: &[Telemetry]) -> Vec<RawMessage> {
    events
        .iter()
        .map(|e| {
            (
                format!("mapek.monitor.{}", e.node),
                e.event_id.clone(),
                Bytes::from(mapek_codec::encode(e).unwrap()),
            )
        })
        .collect()
}

/// Raw async-nats JetStream publishing of `messages` with `window` acks in flight, with the
/// `Nats-Msg-Id` header or with no header at all; returns how long until the last ack.
pub async fn raw_publish(
    js: &JetStream,
    messages: &[RawMessage],
    msg_id: bool,
    window: usize,
) -> Duration {
    let start = Instant::now();
    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(window);
    for (subject, id, payload) in messages {
        if in_flight.len() >= window {
            in_flight.pop_front().unwrap().await.unwrap();
        }
        let ack = if msg_id {
            let mut h = HeaderMap::new();
            h.insert(headers::MSG_ID, id.as_str());
            js.publish_with_headers(subject.clone(), h, payload.clone())
                .await
        } else {
            js.publish(subject.clone(), payload.clone()).await
        };
        in_flight.push_back(ack.unwrap());
    }
    for ack in in_flight {
        ack.await.unwrap();
    }
    start.elapsed()
}

/// Runs `nodes` the way `mapek sim` or real agents run, apart from the loop's workers: on a thread and a
/// tokio runtime of their own (the OS schedules them against the workers, not tokio's
/// cooperative scheduler), with a client connection of their own to `url`. Resolves to what
/// `nodes` returns. The thread starts at once, before the returned future is awaited.
pub fn as_nodes<T, F>(
    url: &str,
    nodes: impl FnOnce(JetStream) -> F + Send + 'static,
) -> impl Future<Output = T>
where
    T: Send + 'static,
    F: Future<Output = T>,
{
    let url = url.to_owned();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move { nodes(mapek_bus::connect(&url).await.unwrap()).await })
    });
    async move {
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap()
    }
}

/// The messages of a durable pull consumer per partition of the monitor stream, named
/// `<prefix>-p<N>` and filtered as the analyze workers' are, acknowledged cumulatively, in
/// batches of up to 256.
pub async fn partition_readers(js: &JetStream, prefix: &str) -> Vec<pull::Stream> {
    let stream = js.get_stream("MAPEK_MONITOR").await.unwrap();
    let mut readers = Vec::new();
    for p in 0..8 {
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(format!("{prefix}-p{p}")),
                filter_subject: format!("mapek.monitor.{p}.>"),
                ack_policy: AckPolicy::All,
                ..Default::default()
            })
            .await
            .unwrap();
        let messages = consumer
            .stream()
            .max_messages_per_batch(256)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .unwrap();
        readers.push(messages);
    }
    readers
}
