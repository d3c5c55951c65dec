//! An auditor runs `mapek audit verify --key decision.pub` on a plan stream that someone with
//! the stream's API rights but without the decision key has cut: decisions deleted from the
//! start of a chain or from its end (what is left still links), or the chain's signed head in
//! MAPEK_CHAIN forged or deleted to hide it. Each is named and fails the audit; the whole log
//! passes.

mod agent;
mod common;

use std::path::Path;
use std::sync::Arc;

use mapek_audit::heads::{self, Head};
use mapek_audit::witness::{self, WitnessConfig};
use mapek_audit::{SigningKey, keys};
use mapek_bus::JetStream;
use mapek_domain::{ActionKind, Decision, NodeId, Phase};
use mapek_testkit::NatsServer;

/// A signed chain of `n` decisions about node n1, linked as a planner links them.
fn signed_chain(signer: &SigningKey, n: usize) -> Vec<Decision> {
    let mut chain: Vec<Decision> = Vec::new();
    for i in 0..n {
        let mut d = agent::decision(&i.to_string(), "n1", ActionKind::Reroute, i as i64);
        d.prev_hash = chain.last().map(Decision::chain_hash).unwrap_or_default();
        signer.sign(&mut d).unwrap();
        chain.push(d);
    }
    chain
}

/// A server holding a signed chain of four decisions (stream sequences 1 to 4) and the head
/// the witness signed of it; the decision keys are in the returned directory.
async fn witnessed_chain() -> (NatsServer, JetStream, tempfile::TempDir) {
    let (server, js) = mapek_testkit::server_with_streams().await;
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keys::generate(keys.path()).unwrap();
    let signer = Arc::new(SigningKey::load(&secret).unwrap());
    agent::publish(&js, &signed_chain(&signer, 4)).await;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let witness = tokio::spawn(witness::run(
        js.clone(),
        signer,
        WitnessConfig::default(),
        mapek_bus::until_stopped(stopped),
    ));
    let _ = stop.send(());
    let stats = witness.await.unwrap().unwrap();
    assert_eq!(
        stats.decisions, 4,
        "the witness reads what was stored before its stop"
    );
    (server, js, keys)
}

/// `mapek audit verify --key … <extra>`: whether it passed, and what it printed.
fn audit_with(server: &NatsServer, keys: &Path, extra: &[&str]) -> (bool, String) {
    let key = keys.join(keys::PUBLIC_FILE).display().to_string();
    let args: Vec<&str> = ["--key", key.as_str()]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    common::audit_verify(&server.url(), &args)
}

/// `mapek audit verify --key`.
fn audit(server: &NatsServer, keys: &Path) -> (bool, String) {
    audit_with(server, keys, &[])
}

/// The chain n1's decisions are in.
fn chain_of_n1() -> u32 {
    mapek_bus::layout::partition_of_node(
        &NodeId::new("n1").unwrap(),
        mapek_bus::layout::DEFAULT_PARTITIONS,
    )
}

/// Deletes the decision stored at `seq`, as anyone allowed `$JS.API.STREAM.MSG.DELETE` can.
async fn delete(js: &JetStream, seq: u64) {
    let stream = js.get_stream(Phase::Plan.stream()).await.unwrap();
    assert!(stream.delete_message(seq).await.unwrap());
}

#[tokio::test]
async fn decisions_cut_from_the_end_of_a_chain_are_found_by_its_signed_head() {
    let (server, js, keys) = witnessed_chain().await;
    let (passed, out) = audit(&server, keys.path());
    assert!(passed, "{out}");
    assert!(
        out.contains("4 pass, 0 fail") && out.contains("1 signed chain heads, 0 chains cut"),
        "{out}"
    );

    delete(&js, 4).await;
    let (passed, out) = audit(&server, keys.path());
    assert!(!passed, "{out}");
    // What is left links: only the head shows that the end is gone.
    assert!(out.contains("3 pass, 0 fail"), "{out}");
    let p = chain_of_n1();
    assert!(
        out.contains(&format!("chain of partition {p}: its end is missing")),
        "{out}"
    );
}

#[tokio::test]
async fn decisions_cut_from_the_start_of_a_chain_are_found() {
    let (server, js, keys) = witnessed_chain().await;
    delete(&js, 1).await;
    let (passed, out) = audit(&server, keys.path());
    assert!(!passed, "{out}");
    assert!(out.contains("3 pass, 0 fail"), "{out}");
    let p = chain_of_n1();
    assert!(
        out.contains(&format!("chain of partition {p}: its start is missing")),
        "{out}"
    );
    assert!(!out.contains("end is missing"), "{out}");
}

#[tokio::test]
async fn a_head_forged_or_deleted_to_hide_a_cut_end_is_found() {
    let (server, js, keys) = witnessed_chain().await;
    let p = chain_of_n1();
    delete(&js, 4).await;
    // The one who cut the end puts a head naming the new last decision, signed with a key of
    // their own, where the witness's was.
    let bucket = js.get_key_value(mapek_bus::buckets::CHAIN).await.unwrap();
    let stored = bucket.get(heads::key_of(p)).await.unwrap().unwrap();
    let mut forged = Head::decode(&stored).unwrap();
    let third = agent::stored::<Decision>(&js).await.pop().unwrap();
    forged.head = third.chain_hash();
    let theirs = tempfile::tempdir().unwrap();
    let (their_secret, _) = keys::generate(theirs.path()).unwrap();
    forged
        .sign(&SigningKey::load(&their_secret).unwrap())
        .unwrap();
    bucket
        .put(heads::key_of(p), forged.encode().into())
        .await
        .unwrap();
    let (passed, out) = audit(&server, keys.path());
    assert!(!passed, "{out}");
    assert!(
        out.contains(&format!(
            "chain of partition {p}: its signed head does not verify"
        )),
        "{out}"
    );

    // Deleting the head instead leaves a chain without one, which is named too (once the
    // chain is older than a witness takes to sign a new chain's head).
    bucket.delete(heads::key_of(p)).await.unwrap();
    let grace = mapek_audit::ends::HEADLESS_GRACE_MS as u64;
    tokio::time::sleep(std::time::Duration::from_millis(grace + 500)).await;
    let (passed, out) = audit(&server, keys.path());
    assert!(!passed, "{out}");
    assert!(
        out.contains(&format!("chain of partition {p}: it has no signed head")),
        "{out}"
    );
}

#[tokio::test]
async fn a_head_older_than_the_audit_allows_is_named() {
    let (server, _js, keys) = witnessed_chain().await;
    let (passed, out) = audit_with(&server, keys.path(), &["--max-head-age", "1m"]);
    assert!(passed, "{out}");
    // No witness signs it again: after a second and a half it is older than a second.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (passed, out) = audit_with(&server, keys.path(), &["--max-head-age", "1s"]);
    assert!(!passed, "{out}");
    let p = chain_of_n1();
    assert!(
        out.contains(&format!(
            "chain of partition {p}: its signed head is 1 s old"
        )),
        "{out}"
    );
}
