//! Redis for tests: the server of `$REDIS_URL` (default `redis://127.0.0.1:6379`), and a key
//! prefix of the test's own, whose keys are deleted on drop ([`TestRedis`]); or a server of
//! the test's own that it can stop and start again ([`RedisServer`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The server tests use when `REDIS_URL` is not set.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// A test's slice of the Redis server: every key it writes starts with [`TestRedis::prefix`].
pub struct TestRedis {
    url: String,
    prefix: String,
}

impl TestRedis {
    /// The test's slice of the server at `url`.
    fn at(url: String) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "mapek-test:{}:{}:",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self { url, prefix }
    }

    /// Checks that the server answers and picks a unique prefix.
    ///
    /// # Panics
    /// When no server answers: the message says how to get one.
    pub fn new() -> Self {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let redis = Self::at(url);
        if let Err(e) = redis.command(&["PING"]) {
            panic!(
                "cannot reach Redis at {}: {e}; start one or set REDIS_URL \
                 (tests/run starts one when none answers)",
                redis.url
            );
        }
        redis
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key prefix of this test.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Sends one command in RESP and returns the raw reply (enough for PING and cleanup,
    /// without a client library in the testkit).
    fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        let host = rest.rsplit('@').next().unwrap_or(rest);
        let host = host.split('/').next().unwrap_or(host);
        let mut stream = TcpStream::connect(host)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut msg = format!("*{}\r\n", args.len());
        for a in args {
            msg.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(msg.as_bytes())?;
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Default for TestRedis {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let script =
            "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end return 0";
        let pattern = format!("{}*", self.prefix);
        let _ = self.command(&["EVAL", script, "0", &pattern]);
    }
}

/// A redis-server of the test's own on a free port, keeping nothing on disk, which the test
/// can stop and start again on the same port (a Redis that goes away and comes back).
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` (from PATH) and waits until it answers.
    ///
    /// # Panics
    /// When there is no `redis-server` (tests/run installs one) or it does not answer.
    pub fn start() -> Self {
        let mut server = Self {
            port: crate::nats::free_port(),
            child: None,
        };
        server.restart();
        server
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The test's slice of this server, for code that takes a URL and a prefix.
    pub fn slice(&self) -> TestRedis {
        TestRedis::at(self.url())
    }

    /// Kills the server; clients see their connections refused until [`RedisServer::restart`].
    pub fn stop(&mut self) {
        crate::nats::kill(&mut self.child);
    }

    /// Starts the server again on the same port (empty: it keeps nothing).
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server: {e}; install it (tests/run does)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let probe = self.slice();
        while probe.command(&["PING"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
