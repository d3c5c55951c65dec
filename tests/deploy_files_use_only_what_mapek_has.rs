//! An operator deploys with the files in deploy/ as they are: every compose, Kubernetes,
//! Prometheus and Grafana file parses, and whatever they ask of mapek exists in the binary.
//! Each mapek command line in them is one `mapek` accepts (subcommands, flags, values), each
//! environment variable given to a mapek container is one its `--help` names, every phase runs
//! on Kubernetes, every metric the alerts and the dashboard query is on a worker's /metrics
//! page, and Prometheus and Grafana point at services compose runs. The binary and a running
//! worker answer; no list here is kept by hand.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{interrupt, mapek, repo};
use mapek_bus::Publisher;
use mapek_domain::{NodeId, Telemetry};
use mapek_testkit::nats::free_port;
use mapek_testkit::server_with_streams;
use serde_yaml::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A mapek container's command line and the environment variables it is given.
#[derive(Debug)]
struct Invocation {
    file: &'static str,
    args: Vec<String>,
    env: Vec<String>,
}

fn deploy(path: &str) -> PathBuf {
    repo().join("deploy").join(path)
}

/// Every file under `dir` whose name ends with one of `ends`, recursively.
fn files(dir: &Path, ends: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path, ends));
        } else if ends.iter().any(|e| path.to_string_lossy().ends_with(e)) {
            found.push(path);
        }
    }
    found
}

/// The YAML documents of `path` (a Kubernetes manifest holds several); a parse error fails.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
        })
        .collect()
}

fn yaml(path: &str) -> Value {
    yaml_docs(&deploy(path)).remove(0)
}

fn strings(v: &Value) -> Vec<String> {
    let list = v.as_sequence().map(Vec::as_slice).unwrap_or_default();
    list.iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// `mapek <args> --help`: clap checks every subcommand, flag and value before it prints the
/// help, so a line the binary would refuse fails here.
fn help(args: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mapek"))
        .args(args)
        .arg("--help")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mapek refuses `{}`: {err}",
        args.join(" ")
    );
    said
}

/// The services of compose.yaml built from deploy/Dockerfile: mapek's own.
fn compose_invocations() -> Vec<Invocation> {
    let compose = yaml("compose.yaml");
    let services = compose["services"].as_mapping().unwrap();
    let ours = services
        .values()
        .filter(|s| s["build"]["dockerfile"] == "deploy/Dockerfile");
    ours.map(|s| Invocation {
        file: "compose.yaml",
        args: strings(&s["command"]),
        env: s["environment"]
            .as_mapping()
            .into_iter()
            .flatten()
            .map(|(k, _)| key(k))
            .collect(),
    })
    .collect()
}

fn key(v: &Value) -> String {
    v.as_str().unwrap().to_owned()
}

/// The keys the manifest's comment puts in the mapek-stores secret (`--from-literal=K=…`).
fn secret_keys() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("k8s/mapek.yaml")).unwrap();
    let literals = text.split("--from-literal=").skip(1);
    literals
        .map(|l| l.split('=').next().unwrap().to_owned())
        .collect()
}

/// The containers of the Kubernetes manifest that run the mapek image.
fn kubernetes_invocations() -> Vec<Invocation> {
    let docs = yaml_docs(&deploy("k8s/mapek.yaml"));
    let containers = docs.iter().flat_map(|d| {
        let list = d["spec"]["template"]["spec"]["containers"].as_sequence();
        list.cloned().unwrap_or_default()
    });
    let ours = containers.filter(|c| c["image"].as_str().unwrap().starts_with("mapek"));
    ours.map(|c| {
        let mut env: Vec<String> = c["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|e| key(&e["name"]))
            .collect();
        if c["envFrom"].as_sequence().is_some() {
            env.extend(secret_keys());
        }
        Invocation {
            file: "k8s/mapek.yaml",
            args: strings(&c["args"]),
            env,
        }
    })
    .collect()
}

/// The image's default command (the Dockerfile's `CMD [...]`).
fn dockerfile_invocation() -> Invocation {
    let text = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let cmd = text
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("a CMD line");
    let args = serde_json::from_str(cmd).expect("CMD in the JSON form");
    Invocation {
        file: "Dockerfile",
        args,
        env: Vec::new(),
    }
}

#[test]
fn every_file_parses_and_mapek_accepts_every_command_line_and_variable() {
    let yamls = files(&repo().join("deploy"), &[".yaml", ".yml"]);
    let jsons = files(&repo().join("deploy"), &[".json"]);
    assert!(yamls.len() >= 6 && !jsons.is_empty(), "{yamls:?} {jsons:?}");
    for path in &yamls {
        assert!(!yaml_docs(path).is_empty(), "{} is empty", path.display());
    }
    for path in &jsons {
        let text = std::fs::read_to_string(path).unwrap();
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(&text);
        parsed.unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
    }
    let mut all = compose_invocations();
    all.extend(kubernetes_invocations());
    all.push(dockerfile_invocation());
    assert!(all.len() >= 8, "{all:?}");
    for inv in &all {
        let said = help(&inv.args);
        for var in &inv.env {
            let named = said.contains(var.as_str());
            assert!(
                named,
                "{}: `mapek {}` is given {var}, which its --help never names",
                inv.file,
                inv.args.join(" ")
            );
        }
    }
}

/// The values `--phase` takes, as `mapek run --help` lists them.
fn phases() -> BTreeSet<String> {
    let said = help(&["run".to_owned()]);
    let after = said.split("--phase").nth(1).unwrap();
    let values = after.split("Possible values:").nth(1).unwrap();
    // One `- name: what` line per value; a long description wraps onto lines of its own.
    let lines = values
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("--"));
    let names = lines.filter_map(|l| l.strip_prefix("- ")?.split(':').next());
    names.map(str::to_owned).collect()
}

#[test]
fn kubernetes_runs_every_phase() {
    let mut expected = phases();
    assert!(
        expected.remove("all") && expected.len() >= 5,
        "{expected:?}"
    );
    let deployed: BTreeSet<String> = kubernetes_invocations()
        .iter()
        .filter_map(|inv| {
            let at = inv.args.iter().position(|a| a == "--phase")?;
            inv.args.get(at + 1).cloned()
        })
        .collect();
    assert_eq!(
        deployed, expected,
        "one Deployment per phase of `mapek run --phase`"
    );
}

#[test]
fn prometheus_and_grafana_point_at_what_compose_runs() {
    let compose = yaml("compose.yaml");
    let services = &compose["services"];
    let host = |url: &str| {
        url.split("://")
            .last()
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .to_owned()
    };
    let prometheus = yaml("prometheus/prometheus.yml");
    for job in prometheus["scrape_configs"].as_sequence().unwrap() {
        for target in strings(&job["static_configs"][0]["targets"]) {
            assert!(
                services.get(host(&target)).is_some(),
                "Prometheus scrapes {target}: no such service"
            );
        }
    }
    for rules in strings(&prometheus["rule_files"]) {
        assert!(
            deploy("prometheus").join(&rules).is_file(),
            "no rule file {rules}"
        );
    }
    let sources = yaml("grafana/provisioning/datasources/prometheus.yaml");
    let url = sources["datasources"][0]["url"].as_str().unwrap();
    assert!(
        services.get(host(url)).is_some(),
        "Grafana's data source {url}: no such service"
    );
    let mounts = strings(&services["grafana"]["volumes"]);
    let providers = yaml("grafana/provisioning/dashboards/mapek.yaml");
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    for inside in [path, "/etc/grafana/provisioning"] {
        let mounted = mounts.iter().any(|m| m.split(':').nth(1) == Some(inside));
        assert!(mounted, "compose mounts nothing at {inside}: {mounts:?}");
    }
}

/// Every `mapek_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let starts = text.match_indices("mapek_").map(|(at, _)| &text[at..]);
    let names = starts.map(|s| {
        s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
    });
    names.map(|n| n.unwrap().to_owned()).collect()
}

/// The metrics the alerts and the dashboards query.
fn queried_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let queries = files(&deploy("prometheus"), &[".yml"]);
    for path in queries
        .iter()
        .chain(&files(&deploy("grafana/dashboards"), &[".json"]))
    {
        names.extend(metric_names(&std::fs::read_to_string(path).unwrap()));
    }
    names
}

/// The sample names (`mapek_x_bucket`, …) on the /metrics page at `port`, or none yet.
async fn served_metrics(port: u16) -> BTreeSet<String> {
    let Ok(mut socket) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return BTreeSet::new();
    };
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    socket.read_to_string(&mut page).await.unwrap();
    let samples = page.lines().filter(|l| l.starts_with("mapek_"));
    samples
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_query_is_served() {
    let wanted = queried_metrics();
    assert!(wanted.len() >= 4, "{wanted:?}");
    let (server, js) = server_with_streams().await;
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let worker = mapek(&server.url())
        .args(["run", "--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("MAPEK_DATA_DIR", data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mapek run");
    // Labelled metrics appear with their first sample: give the loop something to do.
    let mut publisher = Publisher::new(js.clone());
    for i in 0..20 {
        let metrics = [("cpu".to_owned(), 0.5)].into();
        let t = Telemetry::new(
            NodeId::new("n1").unwrap(),
            1_795_867_200_000 + i * 1000,
            metrics,
        );
        publisher.publish(&t).await.unwrap();
    }
    assert!(publisher.finish().await.all_acked());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut served = served_metrics(port).await;
    while !wanted.is_subset(&served) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        served = served_metrics(port).await;
    }
    let said = interrupt(worker);
    let missing: Vec<_> = wanted.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "queried but not served: {missing:?}; served {served:?}; {said}"
    );
}
