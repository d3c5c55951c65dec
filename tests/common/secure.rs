//! A nats-server run as deploy/nats/secure.conf says (mutual TLS, users named by their
//! certificates' SPIFFE IDs, permissions.conf), and clients holding the certificates
//! deploy/certs/gen.sh mints.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use mapek_bus::NatsSecurity;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::{mapek, repo, run, stderr, stdout};

/// The nodes whose agents have users and certificates.
pub const AGENTS: &str = "n1 n2";

/// Certificates from deploy/certs/gen.sh in `dir`: the CA, the server's (for localhost and
/// 127.0.0.1), the admin's (`mapek`), each phase's, the observer's, and agents n1's and n2's.
pub fn certificates(dir: &Path) {
    let out = Command::new(repo().join("deploy/certs/gen.sh"))
        .arg(dir)
        .env("AGENTS", AGENTS)
        .output()
        .expect("run deploy/certs/gen.sh");
    assert!(
        out.status.success(),
        "gen.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// secure.conf's tls block with the test's certificates, and permissions.conf with the users
/// agent-users.sh writes for [`AGENTS`].
pub fn secure_config(certs: &Path) -> String {
    let agents = Command::new(repo().join("deploy/nats/agent-users.sh"))
        .args(AGENTS.split(' '))
        .output()
        .expect("run deploy/nats/agent-users.sh");
    assert!(agents.status.success());
    let permissions = std::fs::read_to_string(repo().join("deploy/nats/permissions.conf"))
        .expect("read deploy/nats/permissions.conf")
        .replacen(
            "  users: [\n",
            &format!("  users: [\n{}", String::from_utf8_lossy(&agents.stdout)),
            1,
        );
    let c = |f: &str| certs.join(f).display().to_string();
    format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify_and_map: true\n}}\n{permissions}",
        c("server.pem"),
        c("server-key.pem"),
        c("ca.pem"),
    )
}

/// A secure server with the streams applied by the admin, and the certificates.
pub async fn secure_server_with_streams() -> (mapek_testkit::NatsServer, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let server = mapek_testkit::NatsServer::start_with(&secure_config(certs.path()));
    let mut apply = mapek_as(&server.url(), certs.path(), Some("mapek"));
    apply.args(["streams", "apply"]);
    let out = run(apply);
    assert!(out.status.success(), "streams apply: {}", stderr(&out));
    assert!(stdout(&out).contains("9 created"), "{}", stdout(&out));
    (server, certs)
}

/// The environment `who` is run with: the CA, its certificate and key, its inbox prefix.
pub fn env_of(certs: &Path, who: &str) -> Vec<(&'static str, String)> {
    let file = |f: String| certs.join(f).display().to_string();
    vec![
        ("NATS_CA", file("ca.pem".into())),
        ("NATS_CERT", file(format!("{who}.pem"))),
        ("NATS_KEY", file(format!("{who}-key.pem"))),
        ("NATS_INBOX_PREFIX", inbox_prefix(who)),
    ]
}

/// The inbox prefix permissions.conf gives the holder of gen.sh's certificate `who`
/// (`mapek`, `plan`, `observer`, `agent-n1`): `_INBOX_` and its SPIFFE path, `/` as `_`.
pub fn inbox_prefix(who: &str) -> String {
    let path = match who {
        "mapek" => "mapek_admin".to_owned(),
        "observer" => "observer".to_owned(),
        _ => match who.strip_prefix("agent-") {
            Some(node) => format!("node_{node}"),
            None => format!("mapek_{who}"),
        },
    };
    format!("_INBOX_{path}")
}

/// How `who` connects: the CA, its certificate and its inbox prefix.
pub fn security(certs: &Path, who: &str) -> NatsSecurity {
    NatsSecurity {
        ca: Some(certs.join("ca.pem")),
        client_cert: Some((
            certs.join(format!("{who}.pem")),
            certs.join(format!("{who}-key.pem")),
        )),
        inbox_prefix: Some(inbox_prefix(who)),
        ..NatsSecurity::default()
    }
}

/// `mapek` as the holder of certificate `who` with its inbox prefix, or with no certificate.
pub fn mapek_as(url: &str, certs: &Path, who: Option<&str>) -> std::process::Command {
    let mut cmd = mapek(url);
    cmd.env("NATS_CA", certs.join("ca.pem"));
    if let Some(who) = who {
        cmd.envs(env_of(certs, who));
    }
    cmd
}

/// A plain client of `who`'s, and what the server refused it: each permissions violation the
/// server reports, as its message.
pub struct Holder {
    /// The connection.
    pub client: Client,
    /// Its JetStream context (requests time out after 2 s).
    pub js: async_nats::jetstream::Context,
    refusals: UnboundedReceiver<String>,
}

impl Holder {
    /// Connects as `who`, with its inbox prefix.
    pub async fn connect(url: &str, certs: &Path, who: &str) -> Self {
        let (tx, refusals) = unbounded_channel();
        let client = ConnectOptions::new()
            .add_root_certificates(certs.join("ca.pem"))
            .add_client_certificate(
                certs.join(format!("{who}.pem")),
                certs.join(format!("{who}-key.pem")),
            )
            .require_tls(true)
            .custom_inbox_prefix(inbox_prefix(who))
            .request_timeout(Some(Duration::from_secs(2)))
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(url)
            .await
            .unwrap_or_else(|e| panic!("{who} connects: {e}"));
        let js = async_nats::jetstream::context::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client.clone());
        Self {
            client,
            js,
            refusals,
        }
    }

    /// Waits up to 3 s for the server to refuse something whose message has `what`
    /// (`Publish to "mapek.plan.n1"`), skipping other refusals.
    pub async fn refused(&mut self, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            match tokio::time::timeout_at(deadline, self.refusals.recv()).await {
                Ok(Some(message)) if message.contains(what) => return,
                Ok(Some(_)) => continue,
                _ => panic!("the server did not refuse {what}"),
            }
        }
    }

    /// Whether the server refused anything since the last look.
    pub fn refusals_so_far(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(message) = self.refusals.try_recv() {
            seen.push(message);
        }
        seen
    }
}
