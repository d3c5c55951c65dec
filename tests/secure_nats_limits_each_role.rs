//! An operator runs nats-server as deploy/nats/secure.conf says: TLS with client
//! certificates, and permissions per role. mapek's workers connect with their certificate and
//! manage the streams; a node agent publishes its own telemetry and nobody else's; a client
//! without a certificate gets nowhere.

mod common;

use std::path::Path;
use std::process::Command;

use common::{certificates, mapek, repo, run, stderr, stdout, telemetry_len};
use mapek_bus::NatsSecurity;
use mapek_testkit::NatsServer;

/// secure.conf's tls block with the test's certificates, and permissions.conf with the users
/// agent-users.sh writes for `n1`.
fn secure_config(certs: &Path) -> String {
    let agents = Command::new(repo().join("deploy/nats/agent-users.sh"))
        .arg("n1")
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

/// `mapek` as the holder of certificate `who` (`mapek`, `agent-n1`), or of none.
fn mapek_as(url: &str, certs: &Path, who: Option<&str>) -> Command {
    let mut cmd = mapek(url);
    cmd.env("NATS_CA", certs.join("ca.pem"));
    if let Some(who) = who {
        cmd.env("NATS_CERT", certs.join(format!("{who}.pem")))
            .env("NATS_KEY", certs.join(format!("{who}-key.pem")));
    }
    cmd
}

#[tokio::test]
async fn workers_and_agents_get_what_their_certificate_allows() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let server = NatsServer::start_with(&secure_config(certs.path()));
    let url = server.url();

    // The workers' certificate may create the streams.
    let mut apply = mapek_as(&url, certs.path(), Some("mapek"));
    apply.args(["streams", "apply"]);
    let out = run(apply);
    assert!(out.status.success(), "streams apply: {}", stderr(&out));
    assert!(stdout(&out).contains("7 created"), "{}", stdout(&out));

    // Agent n1 publishes its own telemetry.
    let mut own = mapek_as(&url, certs.path(), Some("agent-n1"));
    own.args(["publish", "--node", "n1", "--metric", "latency_ms=5"]);
    let out = run(own);
    assert!(out.status.success(), "own telemetry: {}", stderr(&out));
    assert!(stdout(&out).contains("1 stored"), "{}", stdout(&out));

    // ... and cannot pass itself off as n2.
    let mut other = mapek_as(&url, certs.path(), Some("agent-n1"));
    other.args(["publish", "--node", "n2", "--metric", "latency_ms=5"]);
    let out = run(other);
    assert!(
        !out.status.success(),
        "n1 published as n2: {}",
        stdout(&out)
    );

    // Nor may it create streams.
    let mut apply = mapek_as(&url, certs.path(), Some("agent-n1"));
    apply.args(["streams", "apply"]);
    assert!(!run(apply).status.success(), "an agent applied the streams");

    // Without a client certificate the server lets nobody in, and mapek says where it failed.
    let mut anonymous = mapek_as(&url, certs.path(), None);
    anonymous.args(["publish", "--node", "n1", "--metric", "latency_ms=5"]);
    let out = run(anonymous);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&url), "{}", stderr(&out));

    // Only n1's own event was stored.
    let security = NatsSecurity {
        ca: Some(certs.path().join("ca.pem")),
        client_cert: Some((
            certs.path().join("mapek.pem"),
            certs.path().join("mapek-key.pem"),
        )),
        ..NatsSecurity::default()
    };
    let js = mapek_bus::connect_with(&url, &security)
        .await
        .expect("the workers' certificate connects");
    assert_eq!(telemetry_len(&js).await, 1);
}
