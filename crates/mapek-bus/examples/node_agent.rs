//! A node agent in a few lines: publish this node's telemetry, then read it back.
//!
//! ```sh
//! mapek streams apply                      # once per server
//! cargo run -p mapek-bus --example node_agent -- n17
//! ```
//!
//! It connects to `$MAPEK_NATS_URL` (default `nats://127.0.0.1:4222`), publishes five samples
//! for the node named on the command line, and follows that node's telemetry from the start
//! of the stream until it has seen them.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use mapek_bus::{Publisher, Subscriber, SubscriberConfig};
use mapek_domain::{NodeId, Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("MAPEK_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let node = NodeId::new(std::env::args().nth(1).unwrap_or_else(|| "n17".into()))?;
    let js = mapek_bus::connect(&url).await?;

    // Publish: the publisher keeps up to 1024 acks in flight and never awaits one per event.
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let mut publisher = Publisher::new(js.clone());
    for i in 0..5 {
        let metrics = BTreeMap::from([
            ("latency_ms".to_owned(), 10.0 + i as f64),
            ("loss".to_owned(), 0.001),
        ]);
        publisher
            .publish(&Telemetry::new(node.clone(), now_ms + i, metrics))
            .await?;
    }
    let report = publisher.finish().await;
    println!(
        "published {} ({} stored, {} duplicates)",
        report.sent, report.acked, report.duplicates
    );

    // Subscribe: this node's telemetry, from the oldest the stream holds.
    let config = SubscriberConfig::node(node.clone());
    let mut subscriber = Subscriber::<Telemetry>::open(&js, config).await?;
    let mut seen = 0;
    while let Some(received) = subscriber.next().await {
        let received = received?;
        match received.event {
            Ok(t) if t.ts_ms >= now_ms => {
                println!(
                    "seq {}: {} latency {} ms",
                    received.stream_seq, t.node, t.metrics["latency_ms"]
                );
                seen += 1;
            }
            Ok(_) => {} // older runs' samples
            Err(e) => println!("seq {}: cannot decode: {e}", received.stream_seq),
        }
        if seen == 5 {
            break;
        }
    }
    Ok(())
}
