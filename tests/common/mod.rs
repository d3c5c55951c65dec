//! What the end-to-end tests share: the `mapek` binary, and reading the streams. A server
//! with the streams applied is mapek-testkit's `server_with_streams`.

#![allow(dead_code)]

pub mod secure;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mapek_bus::JetStream;

/// The `mapek` binary, pointed at `url`, with no config file or environment of the caller's.
pub fn mapek(url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mapek"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MAPEK_NATS_URL", url)
        .current_dir(std::env::temp_dir());
    cmd
}

/// Runs `cmd` with `stdin` as its input.
pub fn run_with_input(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mapek");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().expect("wait for mapek");
    writer.join().unwrap();
    out
}

/// Runs `cmd` to the end.
pub fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run mapek")
}

/// Stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The events of `mapek subscribe <family> --all --json --until-idle`, parsed.
pub fn subscribe_all(url: &str, family: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut cmd = mapek(url);
    cmd.args([
        "subscribe",
        family,
        "--all",
        "--json",
        "--until-idle",
        "--idle",
        "300ms",
    ])
    .args(extra);
    let out = run(cmd);
    assert!(out.status.success(), "subscribe failed: {}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// How many messages a stream holds.
pub async fn stream_len(js: &JetStream, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

/// How many telemetry events the server holds, over all of its monitor streams.
pub async fn telemetry_len(js: &JetStream) -> u64 {
    let mut total = 0;
    let streams = mapek_bus::layout::streams_of(js, mapek_domain::Phase::Monitor).await;
    for stored in streams.unwrap() {
        total += stream_len(js, &stored.name).await;
    }
    total
}

/// Stops a running `mapek` as Ctrl-C would, checks that it ended well, and returns what it
/// wrote to stderr.
pub fn interrupt(child: Child) -> String {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait for mapek");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "mapek failed: {err}");
    err
}

/// The repository's top directory.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `mapek audit verify <args>` against `url`: whether it passed, and what it printed. A run
/// that neither passed nor failed the audit (exit 2: it could not run) fails the test.
pub fn audit_verify(url: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = mapek(url);
    cmd.args(["audit", "verify"]).args(args);
    let out = run(cmd);
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "{}",
        stderr(&out)
    );
    (out.status.success(), stdout(&out))
}

/// The server leading `stream` now, waiting for one to be elected.
pub async fn leader_of(js: &JetStream, stream: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = js.get_stream(stream).await
            && let Ok(info) = s.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            return leader;
        }
        assert!(Instant::now() < deadline, "{stream} elected no leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `mapek streams apply --replicas 3` on a cluster at `url` (apply itself waits while the
/// cluster elects its meta leader or counts its servers).
pub fn apply_streams_r3(url: &str) {
    let mut cmd = mapek(url);
    cmd.args(["streams", "apply", "--replicas", "3"]);
    let out = run(cmd);
    assert!(out.status.success(), "streams apply: {}", stderr(&out));
}

/// Starts `cmd` (a `mapek` process) with no input and its output kept for
/// [`Child::wait_with_output`].
pub fn spawn(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mapek")
}
