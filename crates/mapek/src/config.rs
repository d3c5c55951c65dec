//! Configuration: a TOML file, then environment variables, then flags.
//!
//! Each setting is resolved in that order, the later winning: the file (`--config`,
//! `$MAPEK_CONFIG`, or `./mapek.toml` if it exists), then `MAPEK_*` variables, then flags.
//! clap reads the variables and flags together (a flag beats its variable); the file fills in
//! what neither set; the built-in default what nothing set.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The built-in NATS URL.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// The config file read when none is named and it exists.
pub const DEFAULT_CONFIG_FILE: &str = "mapek.toml";

/// The config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// `[nats]`
    pub nats: NatsSection,
    /// `[publish]`
    pub publish: PublishSection,
    /// `[analyze]`: the detectors' settings (docs/analyze.md).
    pub analyze: mapek_domain::AnalyzeConfig,
    /// `[plan]`
    pub plan: PlanSection,
    /// `[execute]`: interlocks, dry run, approvals, the actuator and the evaluation window
    /// (docs/execute.md).
    pub execute: mapek_domain::ExecuteConfig,
    /// `[knowledge]`: where the read model, the incident index and the hot state live.
    pub knowledge: KnowledgeSection,
}

/// `[knowledge]`: the stores the log is projected into. Each URL is also read from its
/// conventional variable (`DATABASE_URL`, `QDRANT_URL`, `REDIS_URL`), which wins over the file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnowledgeSection {
    /// The SQL read model (`DATABASE_URL`): `postgres://…`, or `sqlite://…`; default SQLite
    /// under the data directory.
    pub database_url: Option<String>,
    /// A Qdrant server (`QDRANT_URL`), `http://host:6334`; default qdrant-edge on disk under
    /// the data directory.
    pub qdrant_url: Option<String>,
    /// Redis (`REDIS_URL`) for hot node health and executor state shared by several
    /// executors; default none (kept in process).
    pub redis_url: Option<String>,
    /// The directory of the embedded stores (SQLite, qdrant-edge) (`MAPEK_DATA_DIR`); default
    /// `./mapek-data`.
    pub data_dir: Option<PathBuf>,
}

/// `[plan]`: what the planner decides with.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanSection {
    /// The policy file (`MAPEK_POLICY`, `--policy`); default the built-in
    /// `policies/default.toml`.
    pub policy: Option<PathBuf>,
    /// Candidate policy files decided with beside the live one, never executed
    /// (`--shadow-policy`; docs/policy.md).
    pub shadow_policies: Vec<PathBuf>,
}

/// `[nats]`: where the bus is.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSection {
    /// The NATS URL (`MAPEK_NATS_URL`, `--nats-url`), or several of one cluster,
    /// comma-separated; default `nats://127.0.0.1:4222`.
    pub url: Option<String>,
}

/// `[publish]`: how `mapek publish` sends.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishSection {
    /// The most acks in flight (`MAPEK_PUBLISH_WINDOW`, `--window`); default 1024.
    pub window: Option<usize>,
}

impl FileConfig {
    /// Reads the named file, or `./mapek.toml` if none is named and it exists.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let path = match path {
            Some(p) => p.to_owned(),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => PathBuf::from(DEFAULT_CONFIG_FILE),
            None => return Ok(Self::default()),
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let config: Self =
            toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
        config
            .analyze
            .validate()
            .with_context(|| format!("config file {}: [analyze]", path.display()))?;
        config
            .execute
            .check()
            .with_context(|| format!("config file {}: [execute]", path.display()))?;
        Ok(config)
    }
}
