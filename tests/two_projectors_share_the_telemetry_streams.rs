//! Two `mapek run --phase project` processes write one Postgres read model: they share the
//! telemetry streams between them, a lease per stream, while one of them projects symptoms
//! to outcomes. When one is killed with SIGKILL the other takes its telemetry stream over
//! from the stored sequence, and every node ends with its latest sample. With SQLite, a file
//! of each process's own, one process projects the whole log and the other stands by.

mod agent;
mod common;
mod knowledge_log;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use agent::publish;
use common::{apply_streams_r3, interrupt, leader_of, mapek, telemetry_len};
use knowledge_log::telemetry;
use mapek_bus::progress::{lease_owners, loop_progress};
use mapek_bus::{JetStream, layout};
use mapek_domain::{Phase, Telemetry};
use mapek_knowledge::ReadModel;
use mapek_testkit::samples::TS_MS;
use mapek_testkit::{NatsCluster, TestDatabase, server_with_streams};

const NODES: usize = 300;
const LEASE: &str = "knowledge-sql-monitor";

/// A `mapek run --phase project` process, its log going to a file that a failed test
/// shows.
struct Projector {
    child: Child,
    log: PathBuf,
}

impl Projector {
    /// `mapek run --phase project` as `name`, writing the read model at `database` (SQLite
    /// under its data directory if `None`); each has an incident index of its own
    /// (qdrant-edge opens a directory in one process only).
    fn start(url: &str, database: Option<&str>, data_dir: &Path, name: &str) -> Self {
        let log = data_dir.join(format!("{name}.log"));
        let mut cmd = mapek(url);
        cmd.args(["run", "--phase", "project", "--worker", name])
            .args(["--log", "warn,mapek_bus=debug"])
            .args(["--metrics-addr", "off", "--duration", "300s"])
            .arg("--data-dir")
            .arg(data_dir.join(name))
            .env_remove("DATABASE_URL");
        if let Some(database) = database {
            cmd.env("DATABASE_URL", database);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the projector's log"));
        let child = cmd.spawn().expect("start mapek run --phase project");
        Self { child, log }
    }

    /// Kills it with SIGKILL, as a crash would.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Stops it with SIGINT, as an operator would; what it logged.
    fn interrupt(self) -> String {
        interrupt(self.child);
        std::fs::read_to_string(&self.log).expect("the projector's log")
    }
}

/// Round `round` of the mesh: every node once, its load telling the round.
fn round(round: i64) -> Vec<Telemetry> {
    let load = round as f64 / 10.0;
    (0..NODES)
        .map(|n| telemetry(&format!("n{n}"), TS_MS + round * 1_000, load, None))
        .collect()
}

/// Who holds each telemetry stream's lease, waiting until both are held by different
/// processes of `names`.
async fn telemetry_leases_split(js: &JetStream, names: [&str; 2]) -> [String; 2] {
    let mut held = Vec::new();
    for _ in 0..300 {
        let owners = lease_owners(js).await;
        held = (0..2)
            .filter_map(|i| owners.get(&format!("{LEASE}.p{i}")).cloned())
            .collect();
        if held.len() == 2 && held[0] != held[1] && held.iter().all(|h| names.contains(&&**h)) {
            return [held[0].clone(), held[1].clone()];
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the two telemetry streams were not shared out within 30 s: {held:?}");
}

/// Each node's projected sample time, as `node|ts_ms`; none while the read model's tables
/// are not made yet.
async fn projected(model: &ReadModel) -> Vec<String> {
    let snapshot = model.snapshot().await.unwrap_or_default();
    let mut rows: Vec<String> = snapshot
        .iter()
        .filter_map(|row| row.strip_prefix("nodes: "))
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            format!("{}|{}", cells[0], cells[1])
        })
        .collect();
    rows.sort();
    rows
}

/// Waits until every node's row holds round `round`'s sample.
async fn until_projected(model: &ReadModel, round: i64) {
    if let Err(e) = projected_within(model, round).await {
        panic!("{e}");
    }
}

/// Whether every node's row came to hold round `round`'s sample within 30 s; if not, how
/// many did not.
async fn projected_within(model: &ReadModel, round: i64) -> Result<(), String> {
    let mut want: Vec<String> = (0..NODES)
        .map(|n| format!("n{n}|{}", TS_MS + round * 1_000))
        .collect();
    want.sort();
    let mut rows = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        rows = projected(model).await;
        if rows == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stale = rows.iter().filter(|r| !want.contains(r)).count();
    Err(format!(
        "round {round} not projected within 30 s: {stale} of {} rows differ",
        rows.len()
    ))
}

/// What the cluster and the projectors say, for a test that failed: each telemetry
/// stream's last sequence and leader as each running server answers it, the readers on it,
/// each server's log and each projector's log.
async fn story(
    cluster: &NatsCluster,
    lost: usize,
    streams: &[layout::StoredIn],
    projectors: &[&Projector],
) -> String {
    let mut told = String::new();
    for i in (0..cluster.len()).filter(|&i| i != lost) {
        let Ok(js) = mapek_bus::connect(&cluster.node_url(i)).await else {
            told += &format!("{}: cannot connect\n", cluster.name(i));
            continue;
        };
        for stored in streams {
            let info = js
                .get_stream(&stored.name)
                .await
                .map(|s| s.cached_info().clone());
            let said = info.map(|i| (i.state.last_sequence, i.cluster.and_then(|c| c.leader)));
            told += &format!("asked {}: {}: {said:?}\n", cluster.name(i), stored.name);
        }
        told += &format!(
            "asked {}: {:?}\n",
            cluster.name(i),
            telemetry_readers(&js).await
        );
    }
    for i in 0..cluster.len() {
        told += &format!("{}'s log:\n{}\n", cluster.name(i), cluster.log(i));
    }
    for p in projectors {
        told += &format!(
            "{}:\n{}\n",
            p.log.display(),
            std::fs::read_to_string(&p.log).unwrap_or_default()
        );
    }
    told
}

/// The owner and backlog of the telemetry projection's consumer on each monitor stream.
async fn telemetry_readers(js: &JetStream) -> Vec<(String, Option<String>, u64)> {
    let progress = loop_progress(js).await.unwrap();
    progress
        .iter()
        .filter(|s| s.phase == Phase::Monitor)
        .flat_map(|s| {
            s.consumers
                .iter()
                .filter(|c| c.name == LEASE)
                .map(|c| (s.stream.clone(), c.owner.clone(), c.behind))
        })
        .collect()
}

/// Every sample counted once: each telemetry stream's stored sequence is its last message.
async fn projected_through_the_last_sequences(
    js: &JetStream,
    model: &ReadModel,
    streams: &[layout::StoredIn],
) {
    let snapshot = model.snapshot().await.unwrap();
    for stored in streams {
        let mut stream = js.get_stream(&stored.name).await.unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        let offset = format!("projection_offsets: {} | {last} | ", stored.name);
        assert!(
            snapshot.iter().any(|row| row.starts_with(&offset)),
            "{} projected through {last}: {snapshot:?}",
            stored.name
        );
    }
}

/// Publishes `events` until the cluster has stored them all (their ids are their content,
/// so one stored before a failed try is not stored twice). An event the client could not
/// send (its server went away) is not in the report's count of those sent: it fails the try
/// too.
async fn publish_until_stored(js: &JetStream, events: &[Telemetry]) {
    let mut last = String::new();
    for _ in 0..20 {
        let mut publisher = mapek_bus::Publisher::new(js.clone());
        let mut unsent = 0;
        for e in events {
            unsent += usize::from(publisher.publish(e).await.is_err());
        }
        let report = publisher.finish().await;
        if unsent == 0 && report.all_acked() {
            return;
        }
        last = format!("{unsent} unsent; {report:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "the cluster did not store {} events in 20 tries; the last: {last}",
        events.len()
    );
}

#[tokio::test]
async fn two_projectors_share_the_telemetry_streams_and_one_takes_over_when_the_other_dies() {
    let (server, js) = server_with_streams().await;
    let streams = layout::streams_of(&js, Phase::Monitor).await.unwrap();
    assert_eq!(streams.len(), 2, "telemetry in two streams: {streams:?}");
    let db = TestDatabase::create().await;
    let dirs = tempfile::tempdir().unwrap();
    let mut a = Projector::start(&server.url(), Some(db.url()), dirs.path(), "proj-a");
    let b = Projector::start(&server.url(), Some(db.url()), dirs.path(), "proj-b");
    let [first, second] = telemetry_leases_split(&js, ["proj-a", "proj-b"]).await;

    publish(&js, &round(1)).await;
    publish(&js, &round(2)).await;
    let model = ReadModel::connect(db.url()).await.unwrap();
    until_projected(&model, 2).await;
    let readers = telemetry_readers(&js).await;
    assert_eq!(
        readers,
        vec![
            (streams[0].name.clone(), Some(first.clone()), 0),
            (streams[1].name.clone(), Some(second.clone()), 0),
        ],
        "each telemetry stream read by its lease holder, nothing behind"
    );

    // proj-a dies without a word; proj-b takes its stream over within a lease period.
    a.kill();
    publish(&js, &round(3)).await;
    until_projected(&model, 3).await;
    let owners = lease_owners(&js).await;
    for i in 0..2 {
        assert_eq!(
            owners.get(&format!("{LEASE}.p{i}")).map(String::as_str),
            Some("proj-b"),
            "the survivor holds telemetry stream {i}: {owners:?}"
        );
    }
    assert!(
        telemetry_readers(&js)
            .await
            .iter()
            .all(|(_, _, behind)| *behind == 0),
        "nothing behind after the takeover"
    );

    projected_through_the_last_sequences(&js, &model, &streams).await;
    let said = b.interrupt();
    assert!(
        said.contains(&format!("{LEASE}: 2 of 2 telemetry streams projected here")),
        "the survivor says it projected both streams:\n{said}"
    );
}

#[tokio::test]
async fn two_projectors_into_sqlite_files_of_their_own_leave_the_whole_log_to_one() {
    let (server, js) = server_with_streams().await;
    let dirs = tempfile::tempdir().unwrap();
    let a = Projector::start(&server.url(), None, dirs.path(), "lite-a");
    let b = Projector::start(&server.url(), None, dirs.path(), "lite-b");
    publish(&js, &round(1)).await;

    let file = |name: &str| dirs.path().join(name).join("knowledge.sqlite");
    let mut holder = None;
    for _ in 0..300 {
        holder = lease_owners(&js).await.get("knowledge-sql").cloned();
        if holder.is_some() && file(holder.as_deref().unwrap()).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let holder = holder.expect("one process holds the read model's lease");
    let model = ReadModel::connect(file(&holder).to_str().unwrap())
        .await
        .unwrap();
    until_projected(&model, 1).await;
    let owners = lease_owners(&js).await;
    assert!(
        !owners.keys().any(|k| k.starts_with(LEASE)),
        "no telemetry stream is leased apart: {owners:?}"
    );
    let (a, b) = (a.interrupt(), b.interrupt());
    let (wrote, stood_by) = if holder == "lite-a" { (a, b) } else { (b, a) };
    assert!(
        wrote.contains(&format!(
            "the SQL read model: {NODES} events written; knowledge-sql: projected"
        )),
        "{holder} wrote every sample:\n{wrote}"
    );
    assert!(
        stood_by.contains("knowledge-sql: stood by"),
        "the other stood by:\n{stood_by}"
    );
}

#[tokio::test]
async fn two_projectors_on_a_cluster_keep_the_read_model_whole_through_a_lost_server() {
    // Given: a 3-node cluster with R3 streams, two projectors sharing the telemetry streams.
    let mut cluster = NatsCluster::start(3);
    let url = cluster.url();
    apply_streams_r3(&url);
    let js = mapek_bus::connect(&url).await.unwrap();
    let streams = layout::streams_of(&js, Phase::Monitor).await.unwrap();
    assert_eq!(streams.len(), 2, "telemetry in two streams: {streams:?}");
    let db = TestDatabase::create().await;
    let dirs = tempfile::tempdir().unwrap();
    let mut a = Projector::start(&url, Some(db.url()), dirs.path(), "proj-a");
    let b = Projector::start(&url, Some(db.url()), dirs.path(), "proj-b");
    telemetry_leases_split(&js, ["proj-a", "proj-b"]).await;
    publish_until_stored(&js, &round(1)).await;
    let model = ReadModel::connect(db.url()).await.unwrap();
    until_projected(&model, 1).await;

    // When: the server leading the first telemetry stream is killed, then a projector.
    let leader = leader_of(&js, &streams[0].name).await;
    let lost = cluster.index_of(&leader).unwrap();
    cluster.kill(lost);
    publish_until_stored(&js, &round(2)).await;
    if let Err(e) = projected_within(&model, 2).await {
        panic!("{e}\n{}", story(&cluster, lost, &streams, &[&a, &b]).await);
    }
    a.kill();
    publish_until_stored(&js, &round(3)).await;

    // Then: every event stored once though some were published again after the election,
    // every node ends with its latest sample, each stream projected through its last message
    // once, by the survivor, which held on through the election.
    assert_eq!(
        telemetry_len(&js).await,
        3 * NODES as u64,
        "each event stored once"
    );
    until_projected(&model, 3).await;
    cluster.restart(lost);
    projected_through_the_last_sequences(&js, &model, &streams).await;
    let said = b.interrupt();
    assert!(
        said.contains(&format!("{LEASE}: 2 of 2 telemetry streams projected here")),
        "the survivor says it projected both streams:\n{said}"
    );
}
