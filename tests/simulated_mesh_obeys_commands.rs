//! An operator runs the mesh simulator against a real server: its telemetry reaches the
//! monitor stream with the fault in it, and a reroute sent over `mapek.cmd.<node>` really
//! changes what the node reports next.

use std::time::Duration;

use mapek_bus::command::{Command, Commands, send_command};
use mapek_bus::{Subscriber, SubscriberConfig};
use mapek_domain::{Action, ActionKind, NodeId, Telemetry};
use mapek_sim::{Fault, FaultScript, Mesh, MeshConfig, run};
use mapek_testkit::NatsServer;

const T0: i64 = 1_795_867_200_000;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn command(kind: ActionKind, peer: Option<&str>) -> Command {
    Command {
        decision_id: "d-test".into(),
        action: Action {
            kind,
            peer: peer.map(id),
            service: None,
            params: Default::default(),
        },
    }
}

/// The next sample of the subscribed node that passes `want`, within 5 s.
async fn next_where(
    sub: &mut Subscriber<Telemetry>,
    want: impl Fn(&Telemetry) -> bool,
) -> Telemetry {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let t = sub.next().await.unwrap().unwrap().event.unwrap();
            if want(&t) {
                return t;
            }
        }
    })
    .await
    .expect("a matching sample within 5 s")
}

#[tokio::test]
async fn a_rerouted_node_stops_losing_packets_over_a_degraded_link() -> anyhow::Result<()> {
    let (server, js) = mapek_testkit::server_with_streams().await;
    let client = mapek_bus::connect_client(&server.url()).await?;

    let bad_link = Fault::LinkDegradation {
        start_s: 0.0,
        duration_s: None,
        a: id("n0"),
        b: id("n1"),
        added_latency_ms: 100.0,
        added_loss: 0.4,
    };
    let mesh = Mesh::new(MeshConfig::default(), 42)?.with_faults(&FaultScript {
        fault: vec![bad_link],
    })?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sim = tokio::spawn(run(
        js.clone(),
        client.clone(),
        mesh,
        50.0,
        T0,
        mapek_bus::until_stopped(stopped),
    ));

    // Given: n0's telemetry on MAPEK_MONITOR shows the degraded link.
    let mut sub = Subscriber::<Telemetry>::open(&js, SubscriberConfig::node(id("n0"))).await?;
    let degraded = next_where(&mut sub, |_| true).await;
    assert_eq!(degraded.ts_ms, T0, "the first tick carries the start time");
    assert!(degraded.metrics["loss"] > 0.05, "{:?}", degraded.metrics);
    let link = degraded.links.iter().find(|l| l.peer.as_str() == "n1");
    assert!(link.is_some_and(|l| l.up && l.loss > 0.3), "{link:?}");

    // When: the executor orders n0 to route around n1.
    let (n0, reroute) = (id("n0"), command(ActionKind::Reroute, Some("n1")));
    let send = || send_command(&client, &n0, &reroute, Duration::from_secs(2));
    let reply = send().await?;
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.detail, "n0 routes around n1");
    // The same decision sent again (an executor that crashed before storing its result) is
    // answered as before, not applied again ("already routes around n1" if it were).
    assert_eq!(send().await?, reply);

    // Then: later samples show the loss gone, one fewer route, and the link still bad.
    let healed = next_where(&mut sub, |t| t.metrics["loss"] < 0.01).await;
    assert!(healed.ts_ms > degraded.ts_ms);
    assert_eq!(healed.metrics["routes"], degraded.metrics["routes"] - 1.0);
    assert!(
        healed
            .links
            .iter()
            .any(|l| l.peer.as_str() == "n1" && l.loss > 0.3)
    );

    // A command the mesh cannot obey is answered with why, not dropped.
    let refused = send_command(
        &client,
        &id("n99"),
        &command(ActionKind::Quarantine, None),
        Duration::from_secs(2),
    )
    .await?;
    assert!(
        !refused.ok && refused.detail.contains("no node n99"),
        "{refused:?}"
    );

    stop.send(()).unwrap();
    let report = sim.await??;
    assert_eq!((report.commands, report.refused), (3, 1));
    assert!(report.published.all_acked(), "{:?}", report.published);
    assert_eq!(report.published.sent, report.ticks * 12);
    Ok(())
}

#[tokio::test]
async fn a_node_that_does_not_answer_gives_a_clear_error() -> anyhow::Result<()> {
    let server = NatsServer::start();
    let client = mapek_bus::connect_client(&server.url()).await?;
    let cmd = command(ActionKind::Escalate, None);

    let err = send_command(&client, &id("n3"), &cmd, Duration::from_millis(300))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no agent answers for node n3"), "{err}");

    // An agent that subscribes but never answers: the request times out.
    let _silent = Commands::subscribe(&client, Some(&id("n3"))).await?;
    client.flush().await?;
    let err = send_command(&client, &id("n3"), &cmd, Duration::from_millis(300))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("n3 did not answer within 300ms"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_second_run_with_the_same_seed_and_start_publishes_the_same_events() -> anyhow::Result<()>
{
    let (server, js) = mapek_testkit::server_with_streams().await;
    let client = mapek_bus::connect_client(&server.url()).await?;
    let script = mapek_sim::default_script(12);
    let mut reports = Vec::new();
    for run_for in [Duration::from_millis(300), Duration::from_millis(500)] {
        let mesh = Mesh::new(MeshConfig::default(), 7)?.with_faults(&script)?;
        let stop = tokio::time::sleep(run_for);
        reports.push(run(js.clone(), client.clone(), mesh, 100.0, T0, stop).await?);
    }
    let (first, second) = (&reports[0], &reports[1]);
    assert!(first.ticks > 0 && first.published.all_acked(), "{first:?}");
    // Every event the first run stored, the second made again with the same id: JetStream
    // dropped them as duplicates.
    let overlap = first.ticks.min(second.ticks) * 12;
    assert_eq!(second.published.duplicates, overlap, "{second:?}");
    assert_eq!(
        second.published.acked,
        (second.ticks * 12).saturating_sub(overlap)
    );
    Ok(())
}
