//! An operator runs each phase as its own process with its own certificate, against a server
//! configured as deploy/nats/secure.conf and permissions.conf say: `mapek run --phase
//! analyze|plan|execute|evaluate|project`, each holding the SPIFFE ID of its phase and its
//! own inbox prefix, plan signing its decisions (and witnessing the chain) and execute
//! checking them and signing its results with its own key.
//! A node agent holding n1's identity publishes telemetry and answers its command; the loop
//! goes all the way round, no worker is refused anything it needs, and the decision log and
//! every result pass the audit.

mod agent;
mod common;

use std::path::Path;
use std::process::{Child, Stdio};

use common::secure::{Holder, mapek_as, secure_server_with_streams, security};
use common::{interrupt, run, run_with_input, stderr, stdout};
use mapek_bus::command::{CommandReply, Commands};
use mapek_domain::{ActionResult, ActionStatus, NodeId, Outcome, ShadowDecision};

/// `mapek run --phase <phase>` as the phase's own identity.
fn phase(url: &str, certs: &Path, keys: &Path, data: &Path, name: &str) -> Child {
    let mut cmd = mapek_as(url, certs, Some(name));
    cmd.args(["run", "--phase", name, "--worker", name])
        .args(["--metrics-addr", "off", "--duration", "120s", "--data-dir"])
        .arg(data.join(name))
        .env("MAPEK_SIGNING_KEY", keys.join("decision.key"))
        .env("MAPEK_VERIFY_KEY", keys.join("decision.pub"))
        .env("MAPEK_RESULT_SIGNING_KEY", keys.join("result.key"))
        .env("MAPEK_LOG", "info,qdrant_edge=error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if name == "plan" {
        // The plan identity also publishes a candidate policy's shadow decisions.
        cmd.arg("--shadow-policy")
            .arg(common::repo().join("policies/restart-first.toml"));
    }
    cmd.spawn().expect("start mapek run")
}

/// `mapek publish` as n1's agent: a sample of `loss` each second of `seconds` after T0.
fn publish_as_n1(url: &str, certs: &Path, seconds: std::ops::Range<i64>, loss: f64) {
    let samples: String = seconds
        .map(|i| {
            let ts = agent::T0 + i * 1000;
            format!("{{\"node\":\"n1\",\"ts_ms\":{ts},\"metrics\":{{\"loss\":{loss}}}}}\n")
        })
        .collect();
    let mut publish = mapek_as(url, certs, Some("agent-n1"));
    publish.arg("publish");
    let out = run_with_input(publish, samples.as_bytes());
    assert!(out.status.success(), "publish: {}", stderr(&out));
}

/// n1's agent: answers every command of n1's as applied.
async fn answer_as_n1(url: &str, certs: &Path) {
    let n1 = Holder::connect(url, certs, "agent-n1").await;
    let node = NodeId::new("n1").unwrap();
    let mut commands = Commands::subscribe(&n1.client, Some(&node)).await.unwrap();
    n1.client.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = commands.next().await {
            let reply = CommandReply::applied("done on n1");
            incoming.respond(&n1.client, &reply).await.unwrap();
        }
    });
}

/// Waits up to 30 s for `E`'s stream to hold an event and returns it; else stops the workers
/// and fails with what they logged.
async fn first<E: mapek_codec::AvroEvent>(
    js: &mapek_bus::JetStream,
    workers: &mut Vec<(&str, Child)>,
) -> E {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if let Some(event) = agent::stored::<E>(js).await.into_iter().next() {
            return event;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let logs: Vec<String> = workers
        .drain(..)
        .map(|(name, w)| format!("--- {name}\n{}", interrupt(w)))
        .collect();
    panic!("no {} within 30 s:\n{}", E::SCHEMA, logs.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_phase_with_its_own_identity_runs_the_whole_loop() {
    let (server, certs) = secure_server_with_streams().await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    // The deployments' set-up step makes the decision and result keys once and keeps them
    // after.
    let keygen = |what: &str| {
        let mut keygen = mapek_as(&url, certs.path(), None);
        keygen
            .args(["audit", "keygen", "--keep-existing", "--for", what, "--dir"])
            .arg(&keys);
        let out = run(keygen);
        assert!(out.status.success(), "keygen: {}", stderr(&out));
        let public = if what == "results" {
            "result.pub"
        } else {
            "decision.pub"
        };
        std::fs::read(keys.join(public)).unwrap()
    };
    for what in ["decisions", "results"] {
        assert_eq!(keygen(what), keygen(what), "the {what} key pair is kept");
    }

    answer_as_n1(&url, certs.path()).await;
    let mut workers: Vec<(&str, Child)> = ["analyze", "plan", "execute", "evaluate", "project"]
        .into_iter()
        .map(|p| (p, phase(&url, certs.path(), &keys, dir.path(), p)))
        .collect();

    // n1 loses packets.
    publish_as_n1(&url, certs.path(), 0..10, 0.3);
    let js = mapek_bus::connect_with(&url, &security(certs.path(), "mapek"))
        .await
        .unwrap();
    let result: ActionResult = first(&js, &mut workers).await;
    assert_eq!(result.status, ActionStatus::Applied, "{result:?}");
    // ... and the action mends it.
    publish_as_n1(&url, certs.path(), 10..40, 0.0);
    let outcome: Outcome = first(&js, &mut workers).await;
    assert_eq!(outcome.node.as_str(), "n1");
    let shadow: ShadowDecision = first(&js, &mut workers).await;
    assert_eq!(shadow.0.policy_name, "restart-first");

    for (name, worker) in workers {
        let log = interrupt(worker);
        assert!(
            !log.contains("Permissions Violation"),
            "{name} was refused something it needs:\n{log}"
        );
    }
    let mut audit = mapek_as(&url, certs.path(), Some("mapek"));
    audit
        .args(["audit", "verify", "--key"])
        .arg(keys.join("decision.pub"))
        .arg("--result-key")
        .arg(keys.join("result.pub"));
    let out = run(audit);
    assert!(
        out.status.success(),
        "audit: {}{}",
        stdout(&out),
        stderr(&out)
    );
    // The applied result (and any other) carries the executor's signature.
    assert!(
        stdout(&out).contains("0 fail, 0 missing (signatures checked: ")
            && !stdout(&out).contains("checked: 0 signed"),
        "{}",
        stdout(&out)
    );
}
