//! The incident index on the Qdrant server of QDRANT_URL, for the tests that run against both
//! engines: each test gets a collection of its own, and deletes it when done.

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
    /// http://127.0.0.1:6334), or `None` with a line saying the test is skipped when
    /// QDRANT_URL is not set.
    pub fn new(test: &str) -> Option<Self> {
        let Some(url) = std::env::var("QDRANT_URL").ok().filter(|u| !u.is_empty()) else {
            eprintln!("skipped: set QDRANT_URL to a Qdrant server's gRPC address to run {test}");
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
