//! An auditor proves every decision: the plan worker signs each one (ML-DSA-65) and links it
//! to the one before it; `verify_stream` passes the genuine log and names a forged decision;
//! an executor holding the public key acts on genuine decisions and refuses the forgery.

mod agent;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agent::{
    Running, T0, analyze_by_partition, decision, publish, quick, setup, start_agent, wait_for,
};
use mapek_audit::{SigningKey, VerifyingKey, keys};
use mapek_bus::Publisher;
use mapek_domain::ActionKind::{RateLimit, Reroute};
use mapek_domain::execute::Approval;
use mapek_domain::{
    ActionResult, ActionStatus, Decision, ExecuteConfig, NodeId, Policy, Telemetry,
};
use mapek_loop::plan::PlanStage;
use mapek_loop::{StageConfig, execute, run_stage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_decisions_pass_the_audit_and_a_forgery_is_refused() {
    let (_server, js, client) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = keys::generate(dir.path()).unwrap();
    let signer = Arc::new(SigningKey::load(&secret).unwrap());

    // Three nodes lose packets; analyze and a signing plan worker decide.
    let mut publisher = Publisher::new(js.clone());
    for i in 0..10 {
        for node in ["n1", "n2", "n3"] {
            let metrics = BTreeMap::from([("loss".to_owned(), 0.3)]);
            let t = Telemetry::new(NodeId::new(node).unwrap(), T0 + i * 1000, metrics);
            publisher.publish(&t).await.unwrap();
        }
    }
    assert!(publisher.finish().await.all_acked());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let analyze = analyze_by_partition(&js, &stopped);
    let mut config = StageConfig::new("plan", None);
    config.fetch_wait = Duration::from_millis(100);
    let plan = tokio::spawn(run_stage(
        js.clone(),
        PlanStage::without_knowledge(Policy::builtin()).signed_by(signer),
        config,
        wait(stopped.clone()),
    ));
    let decisions: Vec<Decision> = wait_for(&js, 3).await;
    let _ = stop.send(true);
    for worker in analyze {
        worker.await.unwrap().unwrap();
    }
    plan.await.unwrap().unwrap();
    assert!(decisions.iter().all(|d| d.signature.len() == 3309));

    let key = || Some(VerifyingKey::load(&public).unwrap());
    let report = mapek_audit::audit::verify_stream(&js, key()).await.unwrap();
    assert_eq!((report.decisions, report.passed), (3, 3), "{report:?}");
    assert!(report.failures.is_empty());

    // Someone with access to the stream but not the key changes what n1 gets.
    let mut forged = decisions[0].clone();
    forged.decision_id = "forged-1".into();
    forged.reason = "trust me".into();
    let mut publisher = Publisher::new(js.clone());
    publisher.publish(&forged).await.unwrap();
    assert!(publisher.finish().await.all_acked());
    let report = mapek_audit::audit::verify_stream(&js, key()).await.unwrap();
    assert_eq!((report.decisions, report.passed), (4, 3));
    assert_eq!(report.failures[0].decision, "forged-1");
    assert!(
        report.failures[0]
            .broken
            .contains("signature does not verify"),
        "{:?}",
        report.failures
    );

    // The executor with the public key refuses the forgery and only the forgery.
    let config = ExecuteConfig {
        command_timeout_ms: 100,
        command_attempts: 1,
        ..ExecuteConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let executor = tokio::spawn(execute::run_audited(
        js.clone(),
        client,
        config,
        key(),
        mapek_bus::until_stopped(stopped),
    ));
    let results: Vec<ActionResult> = wait_for(&js, 4).await;
    let _ = stop.send(());
    executor.await.unwrap().unwrap();
    for r in &results {
        let audited = r.reason.starts_with("audit:");
        assert_eq!(audited, r.decision_id == "forged-1", "{r:?}");
        if audited {
            assert_eq!(r.status, ActionStatus::Refused);
        }
    }
}

#[tokio::test]
async fn a_signed_decision_that_waited_for_approval_still_links_when_approved() {
    let (server, js, client) = setup().await;
    let _agent = start_agent(&server.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = keys::generate(dir.path()).unwrap();
    let signer = SigningKey::load(&secret).unwrap();
    // Two decisions of one partition (one node), chained: the first waits for approval
    // while the second, which needs none, is acted on and moves the chain's head.
    let mut waits = decision("a", "n1", RateLimit, 10);
    signer.sign(&mut waits).unwrap();
    let mut goes = decision("b", "n1", Reroute, 0);
    goes.prev_hash = waits.chain_hash();
    signer.sign(&mut goes).unwrap();
    let config = ExecuteConfig {
        require_approval: Approval::Kinds([RateLimit].into()),
        cooldown_ms: 0,
        ..quick()
    };
    let key = VerifyingKey::load(&public).unwrap();
    let worker = {
        let (js, client) = (js.clone(), client.clone());
        Running::start(move |shutdown| {
            execute::run_audited(js, client, config, Some(key), shutdown)
        })
    };
    publish(&js, &[waits, goes]).await;
    let first: Vec<ActionResult> = wait_for(&js, 1).await;
    assert_eq!(
        (first[0].decision_id.as_str(), first[0].status),
        ("d-b", ActionStatus::Applied)
    );

    execute::approve(&js, "d-a", "alice").await.unwrap();
    let results: Vec<ActionResult> = wait_for(&js, 2).await;
    worker.stop().await.unwrap();
    assert_eq!(
        (
            results[1].decision_id.as_str(),
            results[1].status,
            results[1].reason.as_str()
        ),
        ("d-a", ActionStatus::Applied, ""),
        "the approved decision was checked when it first came, not refused as unlinked"
    );
}
