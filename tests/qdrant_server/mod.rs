//! The incident index on the Qdrant server of QDRANT_URL, for the tests that run against both
//! engines: each test gets a collection of its own, and deletes it when done.
//!
//! Without a server these tests return early and so pass; [`skipped`] makes that visible.

#![allow(dead_code)]

use std::sync::Arc;

use mapek_vectors::ServerIndex;

/// A collection of its own for one test, on the server at QDRANT_URL.
pub struct TestCollection {
    url: String,
    name: String,
}

impl TestCollection {
    /// A new collection name for `test` on the server at QDRANT_URL (its gRPC address, e.g.
    /// http://127.0.0.1:6334), or `None` after saying the test is [`skipped`] when QDRANT_URL
    /// is not set.
    pub fn new(test: &str) -> Option<Self> {
        let Some(url) = std::env::var("QDRANT_URL").ok().filter(|u| !u.is_empty()) else {
            skipped("QDRANT_URL", "a Qdrant server's gRPC address");
            return None;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("mapek_test_{test}_{}_{nanos}", std::process::id());
        Some(Self { url, name })
    }

    /// Connects to it, creating it the first time (as a new process would).
    pub async fn open(&self) -> Arc<ServerIndex> {
        Arc::new(ServerIndex::connect(&self.url, &self.name).await.unwrap())
    }

    /// Deletes it.
    pub async fn delete(self) {
        self.open().await.delete_collection().await.unwrap();
    }
}

/// Says that the running test did not run because `variable` (naming `what`) is unset: a
/// SKIPPED line on stderr (shown with `--nocapture`), and a line in the file MAPEK_TEST_SKIPS
/// names, which tests/run sums up after the run, since the test itself still passes.
pub fn skipped(variable: &str, what: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a Qdrant-server test");
    eprintln!("SKIPPED {test}: set {variable} to {what} to run it");
    let Some(path) = std::env::var_os("MAPEK_TEST_SKIPS").filter(|p| !p.is_empty()) else {
        return;
    };
    // One short write in append mode: lines of tests running at once do not interleave.
    let line = format!("Qdrant-server\tset {variable}\t{test}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
    written.unwrap_or_else(|e| panic!("cannot note the skip in {path:?}: {e}"));
}

/// A Qdrant server of the test's own, from the binary QDRANT_BIN names, on free ports with its
/// storage in a temporary directory, so the test can stop and restart it.
pub struct QdrantProcess {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    grpc: u16,
    http: u16,
    child: Option<std::process::Child>,
}

impl QdrantProcess {
    /// Starts one, or returns `None` after saying the test is [`skipped`] when QDRANT_BIN is
    /// not set.
    pub fn start() -> Option<Self> {
        let Some(bin) = std::env::var_os("QDRANT_BIN").filter(|b| !b.is_empty()) else {
            skipped("QDRANT_BIN", "a Qdrant server binary");
            return None;
        };
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let mut me = Self {
            bin: bin.into(),
            dir: tempfile::tempdir().unwrap(),
            grpc: free(),
            http: free(),
            child: None,
        };
        me.spawn();
        Some(me)
    }

    /// Its gRPC address, for QDRANT_URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    /// Kills it, keeping its storage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports with the same storage.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let child = std::process::Command::new(&self.bin)
            .current_dir(d)
            .env("QDRANT__STORAGE__STORAGE_PATH", d.join("storage"))
            .env("QDRANT__STORAGE__SNAPSHOTS_PATH", d.join("snapshots"))
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__GRPC_PORT", self.grpc.to_string())
            .env("QDRANT__SERVICE__HTTP_PORT", self.http.to_string())
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(d.join("qdrant.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.bin));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.grpc)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "Qdrant did not open port {} within 30 s; see {}",
                self.grpc,
                d.join("qdrant.log").display()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for QdrantProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
