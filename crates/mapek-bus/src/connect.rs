//! Connecting to NATS.

use std::time::Duration;

use crate::{BusError, JetStream};

/// The most publish acks the JetStream context lets wait at once; a [`crate::Publisher`]
/// window must stay under it.
pub(crate) const MAX_ACKS_IN_FLIGHT: usize = 16_384;

/// Connects to NATS at `url` and checks that JetStream is there.
pub async fn connect(url: &str) -> Result<JetStream, BusError> {
    let client = connect_client(url).await?;
    let version = client.server_info().version;
    if !at_least_2_10(&version) {
        return Err(BusError::NoJetStream {
            url: url.to_owned(),
            detail: format!("is nats-server {version}"),
        });
    }
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

/// Whether a server version (`2.10.4`, `2.11.0-beta.1`) is 2.10 or newer.
fn at_least_2_10(version: &str) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (2, 10)
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_before_2_10_are_refused() {
        for (v, ok) in [
            ("2.9.25", false),
            ("2.10.0", true),
            ("2.15.1", true),
            ("3.0.0", true),
        ] {
            assert_eq!(super::at_least_2_10(v), ok, "{v}");
        }
    }
}
