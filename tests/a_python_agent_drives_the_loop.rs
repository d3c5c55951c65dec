//! A client mapek did not write drives the whole loop: the Python node agent of
//! `deploy/agent/` (fastavro and nats-py, from `schemas/*.avsc` and docs/wire.md alone)
//! publishes telemetry as single-object Avro and as JSON, `mapek run` turns its faults into
//! decisions, the agent applies each decision's command once, and the same client then reads
//! back every event of every family mapek wrote, by fingerprint, exactly as mapek reads it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{interrupt, mapek, repo, run_with_input, subscribe_all};
use mapek_bus::command::{Command as Order, send_command};
use mapek_domain::{Action, NodeId};
use mapek_testkit::foreign;
use mapek_testkit::server_with_streams;
use serde_json::Value;

/// The agents: node, then its fault as `mapek_agent.py agent` flags.
const AGENTS: [(&str, &[&str]); 3] = [
    ("n1", &["--cpu", "0.95"]),              // a CPU hog, in Avro
    ("n2", &["--json", "--link", "n3:0.3"]), // a lossy link, in JSON
    ("n3", &["--link", "n2:0.0"]),           // healthy, in Avro
];

/// A running agent and the JSON lines it printed so far.
struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Agent {
    fn start(url: &str, node: &str, flags: &[&str]) -> Agent {
        Agent::start_with(url, node, flags, Vec::new())
    }

    /// Starts the agent with `env` too (a secured server's certificate and inbox prefix).
    fn start_with(url: &str, node: &str, flags: &[&str], env: Vec<(&str, String)>) -> Agent {
        let mut child = agent_script()
            .args(["--url", url, "agent", "--node", node, "--seconds", "120"])
            .args(flags)
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Python agent");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        Agent { child, lines }
    }

    /// The decision ids of the lines with `"event": event`.
    fn decisions(&self, event: &str) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l["event"] == event)
            .map(|l| l["decision_id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn ready(&self) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l["event"] == "ready")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `python3 deploy/agent/mapek_agent.py --schemas schemas/`.
fn agent_script() -> Command {
    let mut cmd = foreign::python();
    cmd.arg(repo().join("deploy/agent/mapek_agent.py"))
        .arg("--schemas")
        .arg(repo().join("schemas"));
    cmd
}

/// Waits up to 90 s for `check` to hold.
async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The events of one family as mapek reads them, by node.
fn by_node(url: &str, family: &str) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in subscribe_all(url, family, &[]) {
        let node = line["event"]["node"].as_str().unwrap_or("").to_owned();
        out.entry(node).or_default().push(line["event"].clone());
    }
    out
}

#[tokio::test]
async fn a_python_agent_publishes_telemetry_answers_commands_and_reads_every_event_back() {
    let (server, js) = server_with_streams().await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    // Three nodes are a small mesh: the default policy counts it as 20 nodes at least, and
    // lets 10 % of them (two) be under action at once.
    // Signed decisions and results, so that the signatures' bytes are read by both sides too.
    for what in ["decisions", "results"] {
        let keygen = common::run({
            let mut c = mapek(&url);
            c.current_dir(dir.path())
                .args(["audit", "keygen", "--dir", "keys", "--for", what]);
            c
        });
        assert!(keygen.status.success(), "{}", common::stderr(&keygen));
    }
    let looped = mapek(&url)
        .current_dir(dir.path())
        .args([
            "run",
            "--metrics-addr",
            "off",
            "--signing-key",
            "keys/decision.key",
            "--result-signing-key",
            "keys/result.key",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mapek run");
    let agents: BTreeMap<&str, Agent> = AGENTS
        .iter()
        .map(|(node, flags)| (*node, Agent::start(&url, node, flags)))
        .collect();
    wait_until("the agents to start", || agents.values().all(Agent::ready)).await;

    // mapek writes telemetry too, and refuses a message no schema has; the agent reads both.
    let out = run_with_input(
        {
            let mut c = mapek(&url);
            c.arg("publish");
            c
        },
        br#"{"node":"n4","ts_ms":1795867200000,"metrics":{"cpu":0.1}}"#,
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let client = mapek_bus::connect_client(&url).await.unwrap();
    client
        .publish(
            "mapek.monitor.n4",
            b"\xc3\x01not a known schema".as_ref().into(),
        )
        .await
        .unwrap();

    wait_until("an outcome for n1 and n2", || {
        let outcomes = by_node(&url, "outcomes");
        outcomes.contains_key("n1") && outcomes.contains_key("n2")
    })
    .await;
    let decisions = by_node(&url, "decisions");
    let kind = |node: &str| {
        decisions[node][0]["action"]["kind"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(kind("n1"), "rate_limit", "{:?}", decisions["n1"]);
    assert_eq!(kind("n2"), "reroute", "{:?}", decisions["n2"]);
    assert_eq!(decisions["n2"][0]["action"]["peer"], "n3");
    assert!(
        !decisions.contains_key("n3"),
        "the healthy node is left alone"
    );

    // Each decision was applied once by its node's agent; a command sent again (as an
    // executor that crashed before storing the result would send it) is answered without
    // acting again.
    for node in ["n1", "n2"] {
        let ids: Vec<String> = decisions[node]
            .iter()
            .map(|d| d["decision_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(agents[node].decisions("applied"), ids, "{node}");
    }
    let first = decisions["n2"][0]["decision_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = Order {
        decision_id: first.clone(),
        action: serde_json::from_value::<Action>(decisions["n2"][0]["action"].clone()).unwrap(),
    };
    let reply = send_command(
        &client,
        &NodeId::new("n2").unwrap(),
        &again,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(
        reply.ok && reply.detail.contains("routes around n3"),
        "{reply:?}"
    );
    wait_until("the agent to log the repeat", || {
        agents["n2"].decisions("repeated") == [first.clone()]
    })
    .await;
    assert_eq!(agents["n2"].decisions("applied").len(), 1);

    drop(agents);
    let stderr = interrupt(looped);
    assert_every_family_reads_the_same(&url, &js, &stderr).await;
}

/// The Python client reads every message of every stream, and what it decodes is, field by
/// field, what mapek decodes.
async fn assert_every_family_reads_the_same(url: &str, js: &mapek_bus::JetStream, log: &str) {
    let out = agent_script()
        .args(["--url", url, "read"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: BTreeMap<(String, u64), Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|l| {
            (
                (
                    l["stream"].as_str().unwrap().to_owned(),
                    l["seq"].as_u64().unwrap(),
                ),
                l,
            )
        })
        .collect();
    let mut families = BTreeSet::new();
    for family in [
        "telemetry",
        "symptoms",
        "decisions",
        "actions",
        "outcomes",
        "rejected",
    ] {
        for ours in subscribe_all(url, family, &[]) {
            let key = (
                ours["stream"].as_str().unwrap().to_owned(),
                ours["seq"].as_u64().unwrap(),
            );
            let line = theirs
                .get(&key)
                .unwrap_or_else(|| panic!("the Python client did not read {key:?}: {ours}"));
            if ours.get("error").is_some() {
                // The message no schema has: neither side can read it.
                assert!(line["error"].is_string(), "{family} {key:?}: {line}");
                continue;
            }
            assert!(
                line.get("error").is_none(),
                "{family} {key:?}: {line}\n{log}"
            );
            assert!(
                same(&ours["event"], &line["event"]),
                "{family} {key:?} reads differently:\n mapek:  {}\n python: {}",
                ours["event"],
                line["event"]
            );
            families.insert(line["schema"].as_str().unwrap().to_owned());
        }
    }
    // Every Avro family, and the JSON telemetry as it was published.
    let wanted = [
        "ActionResult/3",
        "Decision/1",
        "Outcome/1",
        "Rejected/1",
        "Symptom/1",
        "Telemetry/2",
        "json",
    ];
    assert_eq!(
        families,
        wanted.map(str::to_owned).into(),
        "every family was read"
    );
    assert_eq!(
        theirs
            .keys()
            .filter(|(s, _)| s.starts_with("MAPEK_MONITOR"))
            .count() as u64,
        common::telemetry_len(js).await,
        "every telemetry event"
    );
}

/// Whether mapek's JSON of an event and the Python client's say the same: bytes, which mapek
/// writes as a list of numbers and the client as hex, compare by value.
fn same(ours: &Value, theirs: &Value) -> bool {
    match (ours, theirs) {
        (Value::Array(bytes), Value::String(hex)) => {
            let ours: String = bytes
                .iter()
                .map(|b| format!("{:02x}", b.as_u64().unwrap_or(256)))
                .collect();
            ours == *hex
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => ours == theirs,
    }
}

#[tokio::test]
async fn on_a_secured_server_the_python_agent_is_its_node_and_no_other() {
    let (server, certs) = common::secure::secure_server_with_streams().await;
    let url = server.url();
    let as_n1 = || common::secure::env_of(certs.path(), "agent-n1");
    // A sample a second: the reads below wait for 300 ms without one.
    let n1 = Agent::start_with(&url, "n1", &["--hz", "1"], as_n1());
    // n1's certificate does not make it n2: its telemetry for n2 is refused.
    let _posing = Agent::start_with(&url, "n2", &["--hz", "1"], as_n1());
    wait_until("n1's agent to start", || n1.ready()).await;

    wait_until("n1's telemetry", || {
        subscribe_all_as(&url, certs.path(), "n1") > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        subscribe_all_as(&url, certs.path(), "n2"),
        0,
        "n1 posed as n2"
    );

    // The executor's command reaches n1's agent, and its answer the executor.
    let execute = common::secure::security(certs.path(), "execute");
    let client = mapek_bus::connect_client_with(&url, &execute)
        .await
        .unwrap();
    let order = Order {
        decision_id: "d-secure".into(),
        action: Action {
            kind: mapek_domain::ActionKind::RateLimit,
            peer: None,
            service: None,
            params: BTreeMap::new(),
        },
    };
    let n1_id = NodeId::new("n1").unwrap();
    let reply = send_command(&client, &n1_id, &order, Duration::from_secs(5)).await;
    assert!(reply.unwrap().ok);
    wait_until("n1's agent to apply it", || {
        n1.decisions("applied") == ["d-secure"]
    })
    .await;
}

/// How many telemetry events of `node` the admin reads back.
fn subscribe_all_as(url: &str, certs: &std::path::Path, node: &str) -> usize {
    let mut cmd = common::secure::mapek_as(url, certs, Some("mapek"));
    cmd.args(["subscribe", "telemetry", "--all", "--json", "--until-idle"])
        .args(["--idle", "300ms", "--node", node]);
    let out = common::run(cmd);
    assert!(out.status.success(), "{}", common::stderr(&out));
    common::stdout(&out).lines().count()
}
