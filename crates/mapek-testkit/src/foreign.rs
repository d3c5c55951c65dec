//! Implementations of Avro and NATS that mapek did not write, for the tests that hold mapek's
//! wire to them: the Apache Avro project's Java library (Debian's `libavro-java`, the
//! reference implementation of fingerprints) and fastavro with nats-py (PyPI).
//!
//! `tests/run` installs them: Debian's packages, and the Python packages into
//! `~/.cache/mapek/python` (or `$MAPEK_PYTHON_DEPS`). A test that finds one missing fails with
//! the command that installs it: a test of the wire that did not run must not pass.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The jars the Java library needs to parse a schema: Avro and its JSON parser.
const JARS: [&str; 4] = [
    "avro.jar",
    "jackson-core-asl.jar",
    "jackson-mapper-asl.jar",
    "slf4j-api.jar",
];

/// Where `tests/run` installs the Python packages.
pub fn python_deps() -> PathBuf {
    if let Some(dir) = std::env::var_os("MAPEK_PYTHON_DEPS") {
        return dir.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("mapek/python")
}

/// `python3` with fastavro and nats-py importable. Panics, naming the fix, when they are not.
pub fn python() -> Command {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let deps = python_deps();
    let command = || {
        let mut cmd = Command::new("python3");
        cmd.env("PYTHONPATH", &deps)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        cmd
    };
    let checked = CHECKED.get_or_init(|| {
        let out = command()
            .args(["-c", "import fastavro, nats"])
            .output()
            .map_err(|e| format!("cannot run python3: {e}"))?;
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
    });
    if let Err(e) = checked {
        panic!(
            "fastavro and nats-py are not importable from {}: run tests/run, or \
             `python3 -m pip install --target {} -r deploy/agent/requirements.txt` ({e})",
            deps.display(),
            deps.display()
        );
    }
    command()
}

/// `java` with the Apache Avro Java library on its class path, ready to run a single-file
/// program (`java … Program.java args`). Panics, naming the fix, when it is missing.
pub fn java_avro() -> Command {
    let dir = PathBuf::from("/usr/share/java");
    let missing: Vec<_> = JARS.iter().filter(|j| !dir.join(j).exists()).collect();
    assert!(
        missing.is_empty(),
        "{missing:?} missing from {}: run tests/run, or `apt-get install \
         default-jdk-headless libavro-java`",
        dir.display()
    );
    let class_path: Vec<String> = JARS
        .iter()
        .map(|j| dir.join(j).display().to_string())
        .collect();
    let mut cmd = Command::new("java");
    cmd.arg("-cp").arg(class_path.join(":"));
    cmd
}
