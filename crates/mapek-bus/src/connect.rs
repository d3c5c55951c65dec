//! Connecting to NATS.

use std::time::Duration;

use crate::{BusError, JetStream};

/// The most publish acks the JetStream context lets wait at once; a [`crate::Publisher`]
/// window must stay under it.
pub(crate) const MAX_ACKS_IN_FLIGHT: usize = 16_384;

/// Connects to NATS at `url` and checks that JetStream is there.
pub async fn connect(url: &str) -> Result<JetStream, BusError> {
    let client = connect_client(url).await?;
    let js = async_nats::jetstream::ContextBuilder::new()
        .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
        .build(client);
    js.query_account()
        .await
        .map_err(|e| BusError::NoJetStream {
            url: url.to_owned(),
            detail: format!("has no JetStream ({e})"),
        })?;
    Ok(js)
}

/// Connects a plain NATS client (for request/reply and core subjects), failing fast with a
/// clear error when nobody listens at `url`.
pub async fn connect_client(url: &str) -> Result<async_nats::Client, BusError> {
    async_nats::ConnectOptions::new()
        .name("mapek")
        .connection_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .map_err(|e| BusError::Connect {
            url: url.to_owned(),
            detail: e.to_string(),
        })
}
