//! Connecting to NATS: plain, with TLS (mutual TLS when a client certificate is given), and
//! with credentials.
//!
//! [`connect`] and [`connect_client`] take their security settings from the environment,
//! under the names the `nats` CLI uses, so one set of variables serves both tools:
//!
//! | variable | what |
//! |---|---|
//! | `NATS_CA` | PEM file of the CA that signed the server's certificate; implies TLS |
//! | `NATS_CERT`, `NATS_KEY` | PEM client certificate and key, for mutual TLS |
//! | `NATS_CREDS` | a `.creds` file (JWT and NKey seed) from `nsc` |
//! | `NATS_USER`, `NATS_PASSWORD` | user and password (also possible in the URL) |
//! | `NATS_TOKEN` | an auth token |
//! | `NATS_INBOX_PREFIX` | the prefix of this client's reply subjects (default `_INBOX`) |
//!
//! Where identities must not read each other's replies, each gets a prefix of its own
//! (`_INBOX_node_n1`) and may subscribe only under it; the server's permissions then keep
//! every reply with its asker (deploy/nats/permissions.conf).
//!
//! A `tls://` URL requires TLS even without `NATS_CA` (the system roots then apply).
//! [`connect_with`] takes the settings explicitly.
//!
//! A URL may list several servers of one cluster, comma-separated as the NATS tools take them
//! (`nats://10.0.0.1:4222,nats://10.0.0.2:4222`): the client starts on any that answers and,
//! when its server goes away, reconnects to another of the list or of the servers the cluster
//! told it about, without end; what it sent meanwhile waits in its buffer. Disconnects and
//! reconnects are logged.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Event, ServerAddr};

use crate::{BusError, JetStream};

/// The most publish acks the JetStream context lets wait at once; a [`crate::Publisher`]
/// window must stay under it.
pub(crate) const MAX_ACKS_IN_FLIGHT: usize = 16_384;

/// How to authenticate to NATS and secure the connection. The default is plain and
/// anonymous.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsSecurity {
    /// CA certificate (PEM) to verify the server with; setting it requires TLS.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// A credentials file (JWT + NKey seed).
    pub creds: Option<PathBuf>,
    /// User and password.
    pub user_password: Option<(String, String)>,
    /// An auth token.
    pub token: Option<String>,
    /// The prefix of the client's reply subjects (requests, JetStream API calls, publish
    /// acks, ordered consumers' deliveries) instead of `_INBOX`: one per identity, so that
    /// the server can let each read only its own replies.
    pub inbox_prefix: Option<String>,
}

impl NatsSecurity {
    /// Reads `NATS_CA`, `NATS_CERT`/`NATS_KEY`, `NATS_CREDS`, `NATS_USER`/`NATS_PASSWORD`,
    /// `NATS_TOKEN` and `NATS_INBOX_PREFIX`; unset or empty variables are left out.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            ca: var("NATS_CA").map(PathBuf::from),
            client_cert: var("NATS_CERT")
                .zip(var("NATS_KEY"))
                .map(|(c, k)| (PathBuf::from(c), PathBuf::from(k))),
            creds: var("NATS_CREDS").map(PathBuf::from),
            user_password: var("NATS_USER").zip(var("NATS_PASSWORD")),
            token: var("NATS_TOKEN"),
            inbox_prefix: var("NATS_INBOX_PREFIX"),
        }
    }

    async fn options(&self, url: &str) -> Result<async_nats::ConnectOptions, BusError> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(path) = &self.creds {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| BusError::Connect {
                    url: url.to_owned(),
                    detail: format!("cannot read the credentials {}: {e}", path.display()),
                })?;
        }
        if let Some((user, password)) = &self.user_password {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &self.ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.client_cert {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        if url.split(',').any(|u| u.trim().starts_with("tls://")) {
            options = options.require_tls(true);
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        Ok(options)
    }
}

/// Connects to NATS at `url`, secured as the environment says ([`NatsSecurity::from_env`]),
/// and checks that JetStream is there.
pub async fn connect(url: &str) -> Result<JetStream, BusError> {
    connect_with(url, &NatsSecurity::from_env()).await
}

/// Connects to NATS at `url` secured by `security`, and checks that JetStream is there.
pub async fn connect_with(url: &str, security: &NatsSecurity) -> Result<JetStream, BusError> {
    let client = connect_client_with(url, security).await?;
    let version = client.server_info().version;
    if !at_least_2_11(&version) {
        return Err(BusError::NoJetStream {
            url: url.to_owned(),
            detail: format!("is nats-server {version}"),
        });
    }
    let js = async_nats::jetstream::ContextBuilder::new()
        .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
        .build(client);
    wait_for_jetstream(&js, url).await?;
    Ok(js)
}

/// How long a starting process waits for JetStream to answer: a cluster elects its meta
/// leader within seconds after a server restarts.
const JETSTREAM_WAIT: Duration = Duration::from_secs(60);

/// Checks that JetStream answers. A server without it is an error at once; a request that
/// times out or that JetStream answers with "temporarily unavailable" (a cluster electing its
/// leader, or without a quorum yet) is retried, with a warning, for up to [`JETSTREAM_WAIT`].
async fn wait_for_jetstream(js: &JetStream, url: &str) -> Result<(), BusError> {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::AccountErrorKind;
    let started = std::time::Instant::now();
    let electing = |kind: AccountErrorKind| match kind {
        AccountErrorKind::TimedOut => true,
        AccountErrorKind::JetStream(e) => e.error_code() == ErrorCode::CLUSTER_NOT_AVAILABLE,
        _ => false,
    };
    loop {
        let detail = match js.query_account().await {
            Ok(_) => return Ok(()),
            Err(e) if electing(e.kind()) => {
                if started.elapsed() < JETSTREAM_WAIT {
                    tracing::warn!("JetStream did not answer (electing a leader?); asking again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                format!(
                    "did not answer for JetStream within {} s (a cluster without a quorum of \
                     servers up?)",
                    JETSTREAM_WAIT.as_secs()
                )
            }
            Err(e) => format!("has no JetStream ({e})"),
        };
        return Err(BusError::NoJetStream {
            url: url.to_owned(),
            detail,
        });
    }
}

/// Connects a plain NATS client (for request/reply and core subjects), secured as the
/// environment says, failing fast with a clear error when nobody listens at `url`.
pub async fn connect_client(url: &str) -> Result<async_nats::Client, BusError> {
    connect_client_with(url, &NatsSecurity::from_env()).await
}

/// Connects a plain NATS client secured by `security`. `url` may list several servers,
/// comma-separated; the first that answers is used and the others are where it reconnects.
pub async fn connect_client_with(
    url: &str,
    security: &NatsSecurity,
) -> Result<async_nats::Client, BusError> {
    let servers = server_list(url)?;
    security
        .options(url)
        .await?
        .name("mapek")
        .connection_timeout(Duration::from_secs(3))
        .max_reconnects(None)
        .event_callback(|event| async move { log_event(&event) })
        .connect(servers)
        .await
        .map_err(|e| BusError::Connect {
            url: url.to_owned(),
            detail: e.to_string(),
        })
}

/// The servers of a comma-separated list (`nats://a:4222, b:4222`), each checked.
pub fn server_list(url: &str) -> Result<Vec<ServerAddr>, BusError> {
    let bad = |detail: String| BusError::Connect {
        url: url.to_owned(),
        detail,
    };
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ServerAddr>()
                .map_err(|e| bad(format!("{s:?} is not a NATS server URL ({e})")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err(bad("no server given".into()));
    }
    Ok(servers)
}

/// Logs what happens to the connection: losing a server is worth a line, not an exit.
fn log_event(event: &Event) {
    match event {
        Event::Connected => tracing::info!("connected to NATS"),
        Event::Disconnected => {
            tracing::warn!("lost the NATS server; reconnecting to one of the cluster")
        }
        Event::ServerError(e) => tracing::warn!(error = %e, "the NATS server reported an error"),
        Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
        Event::LameDuckMode => tracing::warn!("the NATS server is shutting down (lame duck)"),
        Event::SlowConsumer(sid) => tracing::warn!(sid, "NATS slow consumer"),
        _ => tracing::debug!(?event, "NATS connection event"),
    }
}

/// Whether a server version (`2.10.4`, `2.11.0-beta.1`) is 2.11 or newer.
fn at_least_2_11(version: &str) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (2, 11)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_url_may_list_several_servers() {
        let servers = super::server_list("nats://127.0.0.1:4222, 127.0.0.1:4223,").unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[1].port(), 4223);
        let bad = super::server_list("nats://127.0.0.1:4222,nats://:x").unwrap_err();
        assert!(
            bad.to_string()
                .contains("\"nats://:x\" is not a NATS server URL"),
            "{bad}"
        );
        assert!(super::server_list(" , ").is_err());
    }

    #[test]
    fn versions_before_2_11_are_refused() {
        for (v, ok) in [
            ("2.9.25", false),
            ("2.10.22", false),
            ("2.11.0", true),
            ("2.15.1", true),
            ("3.0.0", true),
        ] {
            assert_eq!(super::at_least_2_11(v), ok, "{v}");
        }
    }
}
