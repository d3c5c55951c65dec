//! A port picked as free can be bound by another process before the server binds it. The
//! test's server then starts again on another port instead of failing the test: here the
//! first nats-server started says its address is in use, as nats-server does, and exits.

use std::path::Path;
use std::process::Command;

use mapek_testkit::NatsServer;
use mapek_testkit::nats::binary;

const INNER: &str = "MAPEK_TESTKIT_PORT_TAKEN_INNER";

/// A nats-server that fails its first start as a taken port makes it fail, then runs the
/// real one.
fn flaky_server(dir: &Path, real: &Path) -> std::path::PathBuf {
    let script = dir.join("nats-server");
    let marker = dir.join("failed-once");
    let text = format!(
        "#!/bin/sh\nif [ ! -e {marker:?} ]; then\n  touch {marker:?}\n  echo '[FTL] Error \
         listening on port: 127.0.0.1:1, \"listen tcp 127.0.0.1:1: bind: address already in \
         use\"' >&2\n  exit 1\nfi\nexec {real:?} \"$@\"\n"
    );
    std::fs::write(&script, text).unwrap();
    let chmod = Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    assert!(chmod.success());
    script
}

#[test]
fn a_server_whose_port_was_taken_starts_on_another() {
    if std::env::var_os(INNER).is_some() {
        // In the child, with the flaky server as NATS_SERVER_BIN.
        let server = NatsServer::start();
        std::net::TcpStream::connect(server.url().trim_start_matches("nats://")).unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = flaky_server(dir.path(), &which(&binary()));
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_server_whose_port_was_taken_starts_on_another",
            "--nocapture",
        ])
        .env(INNER, "1")
        .env("NATS_SERVER_BIN", &script)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the server did not start:\n{said}");
    assert!(
        said.contains("could not bind port") && dir.path().join("failed-once").exists(),
        "the first start failed and the second did not:\n{said}"
    );
}

/// `bin` as a path the script can run: itself if it names a file, else found on PATH.
fn which(bin: &Path) -> std::path::PathBuf {
    if bin.components().count() > 1 {
        return bin.to_owned();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{bin:?} is not on PATH"))
}
