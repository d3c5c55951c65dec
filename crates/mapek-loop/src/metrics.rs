//! Prometheus metrics: what every worker counts, and the `/metrics` endpoint that serves them.
//!
//! The metrics live in the process's default Prometheus registry, so every part of a process
//! (phase workers, projections) adds to one page. [`serve`] answers `GET /metrics` in the
//! Prometheus text format; anything else gets a 404. It is deliberately tiny (no HTTP
//! framework): one request per connection, no keep-alive, which is what a scraper needs.
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `mapek_events_in_total` | counter | phase | inputs a stage stepped |
//! | `mapek_events_out_total` | counter | phase | outputs a stage published |
//! | `mapek_step_seconds` | histogram | phase | one input through the pure step |
//! | `mapek_batch_seconds` | histogram | phase | a batch: step and publish, and when the ack is due (every 64 inputs or 20 ms) wait for storage and ack |
//! | `mapek_consumer_pending` | gauge | phase, consumer | messages waiting for the consumer |
//! | `mapek_cycle_seconds` | histogram | | telemetry event time to its decision sent to the server |
//! | `mapek_projection_failures_total` | counter | projection (`sql`, `incidents`) | store reads and writes that failed and were retried |
//! | `mapek_retries_total` | counter | phase, what | NATS requests that failed for a while (no responders, a timeout, a leader election, a reconnect) and were retried with backoff |

use std::net::SocketAddr;
use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, TextEncoder,
    register_histogram, register_histogram_vec, register_int_counter_vec, register_int_gauge_vec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Latency buckets from 50 µs to 10 s: a pure step takes microseconds, a cycle milliseconds.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    register_histogram_vec!(
        HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
        labels
    )
    .expect("metric names are unique and valid")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register_int_counter_vec!(Opts::new(name, help), labels)
        .expect("metric names are unique and valid")
}

/// Inputs a stage stepped, by phase.
pub static EVENTS_IN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "mapek_events_in_total",
        "Inputs a stage stepped",
        &["phase"],
    )
});

/// Outputs a stage published, by phase.
pub static EVENTS_OUT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "mapek_events_out_total",
        "Outputs a stage published",
        &["phase"],
    )
});

/// One input through a phase's pure step.
pub static STEP_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "mapek_step_seconds",
        "One input through the pure step",
        &["phase"],
    )
});

/// A whole batch: step, publish, wait until stored, acknowledge.
pub static BATCH_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "mapek_batch_seconds",
        "A batch: step and publish, and when the ack is due wait for storage and ack",
        &["phase"],
    )
});

/// Messages waiting for a consumer, as the server reported with the last delivery.
pub static CONSUMER_PENDING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        Opts::new(
            "mapek_consumer_pending",
            "Messages waiting for the consumer (consumer lag)"
        ),
        &["phase", "consumer"]
    )
    .expect("metric names are unique and valid")
});

/// From a telemetry event's time to its decision being stored: the MAPE-K cycle time.
pub static CYCLE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        HistogramOpts::new(
            "mapek_cycle_seconds",
            "Telemetry event time to its decision sent to the server"
        )
        .buckets(BUCKETS.to_vec())
    )
    .expect("metric names are unique and valid")
});

/// Store writes of a projection that failed and are being retried.
pub static PROJECTION_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "mapek_projection_failures_total",
        "Projection store writes that failed and were retried",
        &["projection"],
    )
});

/// Inputs that decoded but kept failing the same way (a poison message), stored in the
/// dead-letter stream so that what comes after them goes on, by the consumer that gave up
/// on them (`execute`, `knowledge-sql`).
pub static DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "mapek_dead_letters_total",
        "Inputs that kept failing the same way, stored in the dead-letter stream",
        &["consumer"],
    )
});

/// Requests to NATS that failed for a while and were retried: leases, heartbeats, a stage
/// restarted after its consumer or its publishes failed. They rise during a leader election
/// or while a server is down; steadily rising, they say the cluster lacks a quorum.
pub static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "mapek_retries_total",
        "NATS requests that failed for a while and were retried with backoff",
        &["phase", "what"],
    )
});

/// Partitions that began reading before the partitions they descend from had read what was
/// stored before their first input (a reader down past `progress::ORDER_WAIT`): a node a
/// grown partition count moved may then be decided or acted on out of order. By reader:
/// `analyze`, `plan`, `execute`.
pub static ORDER_WAITS_GIVEN_UP: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "mapek_order_waits_given_up_total",
        "Partitions that read on before the partitions they descend from had caught up",
        &["reader"],
    )
});

/// Every metric of this process in the Prometheus text format.
pub fn render() -> String {
    // Touch the metrics so the page lists them (at zero) before the first event.
    for m in [
        &*EVENTS_IN,
        &*EVENTS_OUT,
        &*PROJECTION_FAILURES,
        &*DEAD_LETTERS,
        &*ORDER_WAITS_GIVEN_UP,
    ] {
        let _ = m.with_label_values(&["none"]);
    }
    let _ = RETRIES.with_label_values(&["none", "none"]);
    LazyLock::force(&STEP_SECONDS);
    LazyLock::force(&BATCH_SECONDS);
    LazyLock::force(&CONSUMER_PENDING);
    LazyLock::force(&CYCLE_SECONDS);
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&prometheus::gather(), &mut out)
        .expect("the text encoder writes to a Vec");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// Serves `GET /metrics` on `addr` until the task is dropped. Returns the bound address (pass
/// port 0 for a free one) once listening, and the serving task.
pub async fn serve(addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut read = 0;
                // Read up to the end of the request head; scrapers send no body.
                while read < buf.len() {
                    match socket.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                    if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..read]);
                let (status, content_type, body) = if head.starts_with("GET /metrics ") {
                    ("200 OK", "text/plain; version=0.0.4", render())
                } else {
                    ("404 Not Found", "text/plain", "try /metrics\n".to_owned())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok((bound, task))
}
