//! An auditor runs `mapek audit verify --key decision.pub --result-key result.pub` on a log
//! whose executor signed every result with its own key. The genuine log passes. Someone with
//! the streams' API rights but without the result key who changes a refusal's escalation
//! (other params, or none), or deletes the result, is named: node, decision and what is
//! wrong, and the audit fails. A result written as version 2, unsigned, still reads: it fails
//! an audit with the result key unless it was stored before the executors began to sign.

mod agent;
mod common;

use std::path::Path;
use std::sync::Arc;

use agent::{Running, T0, decision, publish, quick, setup, start_agent, wait_caught_up, wait_for};
use common::subscribe_all;
use mapek_audit::keys::{self, Signs};
use mapek_audit::witness::{self, WitnessConfig};
use mapek_audit::{SigningKey, VerifyingKey};
use mapek_bus::{JetStream, Subscriber, SubscriberConfig};
use mapek_domain::ActionKind::{Escalate, Reroute};
use mapek_domain::{ActionResult, ActionStatus, Decision, Phase, Policy};
use mapek_loop::execute::{self, ExecutorKeys};
use mapek_testkit::NatsServer;

/// The executor tests' roomy policy, escalating refusals to the network team.
fn escalating_policy() -> String {
    format!(
        "{}\n[fallback]\nparams = {{ team = \"netops\" }}\n",
        agent::ROOMY_POLICY
    )
}

/// Three decisions about n1 under [`escalating_policy`], signed and linked as a planner links
/// them: a reroute (applied), another 12 s later (refused by the cooldown, and escalated), and
/// an escalation (recorded without a command).
fn signed_decisions(signer: &SigningKey, policy: &Policy) -> Vec<Decision> {
    let mut chain: Vec<Decision> = Vec::new();
    for (name, kind, secs) in [("a", Reroute, 0), ("b", Reroute, 12), ("c", Escalate, 20)] {
        let mut d = decision(name, "n1", kind, secs);
        d.policy_name = policy.name().to_owned();
        d.policy_hash = policy.hash().to_owned();
        d.prev_hash = chain.last().map(Decision::chain_hash).unwrap_or_default();
        signer.sign(&mut d).unwrap();
        chain.push(d);
    }
    chain
}

/// A server holding a genuine signed run: the decisions of [`signed_decisions`] witnessed, and
/// their results, each signed by an executor holding the result key, which acknowledged every
/// decision. The decision and result keys are in the returned directory.
async fn signed_run() -> (NatsServer, JetStream, tempfile::TempDir) {
    let (server, js, client) = setup().await;
    let _agent = start_agent(&server.url()).await;
    let text = escalating_policy();
    mapek_bus::config_store::record_policy(&js, &text)
        .await
        .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keys::generate(keys.path()).unwrap();
    let (result_secret, _) = keys::generate_for(keys.path(), Signs::Results).unwrap();
    let signer = Arc::new(SigningKey::load(&secret).unwrap());
    publish(
        &js,
        &signed_decisions(&signer, &Policy::parse(&text).unwrap()),
    )
    .await;

    let (stop, stopped) = tokio::sync::oneshot::channel();
    let witness = tokio::spawn(witness::run(
        js.clone(),
        signer,
        WitnessConfig::default(),
        mapek_bus::until_stopped(stopped),
    ));
    let _ = stop.send(());
    witness.await.unwrap().unwrap();

    let executor_keys = ExecutorKeys {
        verify: Some(VerifyingKey::load(&public).unwrap()),
        sign: Some(Arc::new(SigningKey::load(&result_secret).unwrap())),
    };
    let worker = {
        let (js, client) = (js.clone(), client.clone());
        Running::start(move |shutdown| {
            execute::run_audited(js, client, quick(), executor_keys, shutdown)
        })
    };
    let results: Vec<ActionResult> = wait_for(&js, 3).await;
    wait_caught_up(&js, Phase::Plan.stream(), execute::DURABLE).await;
    worker.stop().await.unwrap();
    let statuses: Vec<_> = results.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [
            ActionStatus::Applied,
            ActionStatus::Refused,
            ActionStatus::Applied
        ],
        "{results:#?}"
    );
    assert!(results.iter().all(|r| r.signature.len() == 3309));
    (server, js, keys)
}

/// `mapek audit verify` with `args`: whether it passed, and what it printed.
fn audit(server: &NatsServer, args: &[&str]) -> (bool, String) {
    common::audit_verify(&server.url(), args)
}

/// `mapek audit verify --key decision.pub --result-key result.pub`.
fn audit_with_keys(server: &NatsServer, keys: &Path) -> (bool, String) {
    let decision_key = keys.join(keys::PUBLIC_FILE).display().to_string();
    let result_key = keys.join(keys::RESULT_PUBLIC_FILE).display().to_string();
    audit(
        server,
        &["--key", &decision_key, "--result-key", &result_key],
    )
}

/// Every result stored, with its stream sequence.
async fn stored_results(js: &JetStream) -> Vec<(u64, ActionResult)> {
    let mut sub = Subscriber::<ActionResult>::open(js, SubscriberConfig::all())
        .await
        .unwrap();
    let mut out = Vec::new();
    for _ in 0..sub.pending_at_start() {
        let received = sub.next().await.unwrap().unwrap();
        out.push((received.stream_seq, received.event.unwrap()));
    }
    out
}

/// The refused result and where it is stored.
async fn refused(js: &JetStream) -> (u64, ActionResult) {
    stored_results(js)
        .await
        .into_iter()
        .find(|(_, r)| r.status == ActionStatus::Refused)
        .expect("a refused result")
}

/// Deletes the result stored at `seq`, as anyone allowed `$JS.API.STREAM.MSG.DELETE` can.
async fn delete(js: &JetStream, seq: u64) {
    let stream = js.get_stream(Phase::Execute.stream()).await.unwrap();
    assert!(stream.delete_message(seq).await.unwrap());
}

/// Stores `body` on n1's result subject as any client allowed to publish there can, without
/// the `Nats-Msg-Id` of the result it imitates (which the stream would drop as a duplicate).
async fn publish_raw(js: &JetStream, body: Vec<u8>) {
    js.publish("mapek.execute.n1", body.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_genuine_run_passes_with_every_result_signed_and_its_refusal_escalated() {
    let (server, js, keys) = signed_run().await;
    let (_, r) = refused(&js).await;
    assert!(r.reason.starts_with("cooldown: n1"), "{r:?}");
    assert_eq!(
        r.escalation_words().as_deref(),
        Some("escalated to a human (team=netops)")
    );
    let (passed, out) = audit_with_keys(&server, keys.path());
    assert!(passed, "{out}");
    assert!(
        out.contains("3 decisions in 1 partitions: 3 pass, 0 fail"),
        "{out}"
    );
    assert!(
        out.contains(
            "3 results: 3 pass, 0 fail, 0 missing (signatures checked: 3 signed, 0 unsigned"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn an_escalation_republished_with_other_params_or_removed_is_found() {
    let (server, js, keys) = signed_run().await;
    let (seq, genuine) = refused(&js).await;

    // Someone hands the refusal to another team: the result stored again with other params,
    // the genuine one deleted.
    let mut other = genuine.clone();
    other.escalation = Some([("team".to_owned(), "nobody".to_owned())].into());
    delete(&js, seq).await;
    publish_raw(&js, mapek_codec::encode(&other).unwrap()).await;
    let (passed, out) = audit_with_keys(&server, keys.path());
    assert!(!passed, "{out}");
    let (forged_seq, _) = refused(&js).await;
    assert!(
        out.contains(&format!(
            "result seq {forged_seq}: node n1, decision d-b: its signature does not verify \
             with the result key"
        )),
        "{out}"
    );
    assert!(
        out.contains(
            "its escalation (escalated to a human (team=nobody)) is not the one its decision's \
             policy gives (escalated to a human (team=netops))"
        ),
        "{out}"
    );
    assert!(
        out.contains("3 results: 2 pass, 1 fail, 0 missing"),
        "{out}"
    );

    // Or hands it to nobody: the escalation removed, and signed with a key of their own.
    let mut dropped = genuine.clone();
    dropped.escalation = None;
    let theirs = tempfile::tempdir().unwrap();
    let (their_secret, _) = keys::generate_for(theirs.path(), Signs::Results).unwrap();
    SigningKey::load(&their_secret)
        .unwrap()
        .sign_result(&mut dropped)
        .unwrap();
    delete(&js, forged_seq).await;
    publish_raw(&js, mapek_codec::encode(&dropped).unwrap()).await;
    let (passed, out) = audit_with_keys(&server, keys.path());
    assert!(!passed, "{out}");
    let (dropped_seq, _) = refused(&js).await;
    assert!(
        out.contains(&format!(
            "result seq {dropped_seq}: node n1, decision d-b: its signature does not verify"
        )),
        "{out}"
    );
    assert!(
        out.contains("it was refused and handed to nobody, though its policy test escalates"),
        "{out}"
    );

    // Without the result key the policy still shows the escalation missing.
    let decision_key = keys.path().join(keys::PUBLIC_FILE).display().to_string();
    let (passed, out) = audit(&server, &["--key", &decision_key]);
    assert!(!passed, "{out}");
    assert!(out.contains("handed to nobody"), "{out}");
    assert!(out.contains("give --result-key"), "{out}");
}

#[tokio::test]
async fn a_result_deleted_from_the_log_is_found_missing() {
    let (server, js, keys) = signed_run().await;
    let (seq, _) = refused(&js).await;
    delete(&js, seq).await;
    let (passed, out) = audit_with_keys(&server, keys.path());
    assert!(!passed, "{out}");
    assert!(
        out.contains(
            "result missing: node n1, decision d-b: an executor acknowledged the decision \
             (MAPEK_PLAN seq 2)"
        ),
        "{out}"
    );
    assert!(
        out.contains("2 results: 2 pass, 0 fail, 1 missing"),
        "{out}"
    );
}

#[tokio::test]
async fn a_version_2_result_reads_and_passes_only_as_written_before_signing() {
    let (server, js) = mapek_testkit::server_with_streams().await;
    let text = escalating_policy();
    let policy = Policy::parse(&text).unwrap();
    mapek_bus::config_store::record_policy(&js, &text)
        .await
        .unwrap();
    // The decision the stored ActionResult/2 example answers (mapek-testkit's samples).
    let mut decided = mapek_testkit::samples::decision();
    decided.policy_name = policy.name().to_owned();
    decided.policy_hash = policy.hash().to_owned();
    publish(&js, &[decided]).await;
    // An executor from before version 3 stored a refusal, escalated, unsigned.
    let v2 = std::fs::read(common::repo().join("schemas/examples/action_result.v2.avro")).unwrap();
    assert_eq!(
        mapek_codec::peek_schema(&v2).unwrap().label(),
        "ActionResult/2"
    );
    publish_raw(&js, v2).await;

    let read = subscribe_all(&server.url(), "actions", &[]);
    assert_eq!(read.len(), 1, "{read:?}");
    assert_eq!(read[0]["event"]["escalation"]["team"], "netops");
    assert_eq!(read[0]["event"]["signature"], serde_json::json!([]));
    let results = stored_results(&js).await;
    assert_eq!(results[0].1.ts_ms, T0 + 40);

    let keys = tempfile::tempdir().unwrap();
    keys::generate_for(keys.path(), Signs::Results).unwrap();
    let result_key = keys
        .path()
        .join(keys::RESULT_PUBLIC_FILE)
        .display()
        .to_string();
    let (passed, out) = audit(&server, &[]);
    assert!(
        passed,
        "without the result key its decision and escalation check: {out}"
    );
    assert!(out.contains("1 results: 1 pass"), "{out}");
    let (passed, out) = audit(&server, &["--result-key", &result_key]);
    assert!(!passed, "{out}");
    assert!(
        out.contains("result seq 1: node n1, decision d-1: it is not signed"),
        "{out}"
    );
    // The executors began to sign after it was stored.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (passed, out) = audit(
        &server,
        &["--result-key", &result_key, "--results-signed-since", "0s"],
    );
    assert!(passed, "{out}");
    assert!(
        out.contains("1 results: 1 pass, 0 fail, 0 missing (signatures checked: 0 signed, 1 unsigned from before"),
        "{out}"
    );
}
