//! The stream definitions of `streams/`, and applying them to a server.
//!
//! A definition is the JetStream API's JSON for a stream config. Applying compares only the
//! keys a definition names with what the server has, so a server default that the file does
//! not mention never counts as a change, and a second apply changes nothing.

use std::fmt;
use std::path::Path;

use async_nats::jetstream::stream::Config;
use serde_json::{Map, Value};

use crate::{BusError, JetStream};

/// The definitions in `streams/`, compiled in.
const BUILTIN: &[(&str, &str)] = &[
    (
        "MAPEK_MONITOR.json",
        include_str!("../../../streams/MAPEK_MONITOR.json"),
    ),
    (
        "MAPEK_ANALYZE.json",
        include_str!("../../../streams/MAPEK_ANALYZE.json"),
    ),
    (
        "MAPEK_PLAN.json",
        include_str!("../../../streams/MAPEK_PLAN.json"),
    ),
    (
        "MAPEK_EXECUTE.json",
        include_str!("../../../streams/MAPEK_EXECUTE.json"),
    ),
    (
        "MAPEK_KNOWLEDGE.json",
        include_str!("../../../streams/MAPEK_KNOWLEDGE.json"),
    ),
    (
        "MAPEK_DLQ.json",
        include_str!("../../../streams/MAPEK_DLQ.json"),
    ),
];

/// One stream definition.
#[derive(Clone, Debug)]
pub struct StreamDef {
    /// Where it came from, for messages.
    pub file: String,
    /// The config, as the client sends it.
    pub config: Config,
    /// The keys the file names, normalised through the client's own serialisation.
    wanted: Map<String, Value>,
}

impl StreamDef {
    /// Parses a definition from its JSON text.
    pub fn parse(file: &str, text: &str) -> Result<Self, BusError> {
        let bad = |detail: String| BusError::Definition {
            file: file.to_owned(),
            detail,
        };
        let raw: Map<String, Value> = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        // The client's Config wants some keys a definition may leave out: start from its
        // defaults and lay the file's keys over them.
        let mut full = to_map(&Config::default());
        full.extend(raw.clone());
        let config: Config =
            serde_json::from_value(Value::Object(full)).map_err(|e| bad(e.to_string()))?;
        if config.name.is_empty() {
            return Err(bad("has no \"name\"".into()));
        }
        let normalised = to_map(&config);
        let mut wanted = Map::new();
        for key in raw.keys() {
            match normalised.get(key) {
                Some(value) => wanted.insert(key.clone(), value.clone()),
                None if is_empty(&raw[key]) => None,
                None => return Err(bad(format!("unknown key {key:?}"))),
            };
        }
        Ok(Self {
            file: file.to_owned(),
            config,
            wanted,
        })
    }

    /// The same definition with `replicas` copies of each message (3 on a 3-node cluster,
    /// so a stream survives the loss of one node).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.config.num_replicas = replicas;
        self.wanted
            .insert("num_replicas".to_owned(), Value::from(replicas));
        self
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The keys whose value on the server differs from this definition, sorted.
    fn differences(&self, current: &Config) -> Vec<String> {
        let current = to_map(current);
        self.wanted
            .iter()
            .filter(|(key, want)| current.get(*key).unwrap_or(&Value::Null) != *want)
            .map(|(key, _)| key.clone())
            .collect()
    }
}

fn to_map(config: &Config) -> Map<String, Value> {
    match serde_json::to_value(config) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
    }
}

/// The definitions compiled in from `streams/`.
pub fn builtin() -> Vec<StreamDef> {
    BUILTIN
        .iter()
        .map(|(file, text)| StreamDef::parse(file, text).expect("streams/ definitions parse"))
        .collect()
}

/// The definitions in every `*.json` file of `dir`, in file name order.
pub fn load_dir(dir: &Path) -> Result<Vec<StreamDef>, BusError> {
    let unreadable = |detail: String| BusError::Definition {
        file: dir.display().to_string(),
        detail,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| unreadable(e.to_string()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(unreadable("has no .json stream definitions".into()));
    }
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).map_err(|e| BusError::Definition {
                file: path.display().to_string(),
                detail: e.to_string(),
            })?;
            StreamDef::parse(&path.display().to_string(), &text)
        })
        .collect()
}

/// What applying one definition did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The stream did not exist and was created.
    Created {
        /// The stream.
        name: String,
    },
    /// The stream existed with other settings; these keys were updated.
    Updated {
        /// The stream.
        name: String,
        /// The keys that changed.
        changed: Vec<String>,
    },
    /// The stream already matched its definition.
    Unchanged {
        /// The stream.
        name: String,
    },
}

impl Applied {
    /// Whether anything changed on the server.
    pub fn changed(&self) -> bool {
        !matches!(self, Applied::Unchanged { .. })
    }
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Applied::Created { name } => write!(f, "{name}: created"),
            Applied::Updated { name, changed } => {
                write!(f, "{name}: updated {}", changed.join(", "))
            }
            Applied::Unchanged { name } => write!(f, "{name}: unchanged"),
        }
    }
}

/// Creates the streams that are missing and updates those whose settings differ.
pub async fn apply(js: &JetStream, defs: &[StreamDef]) -> Result<Vec<Applied>, BusError> {
    let mut applied = Vec::with_capacity(defs.len());
    for def in defs {
        let name = def.name().to_owned();
        let failed = |detail: String| BusError::Stream {
            stream: name.clone(),
            detail,
        };
        match js.get_stream(&name).await {
            Ok(mut stream) => {
                let info = stream.info().await.map_err(|e| failed(e.to_string()))?;
                let changed = def.differences(&info.config);
                if changed.is_empty() {
                    applied.push(Applied::Unchanged { name });
                } else {
                    js.update_stream(&def.config).await.map_err(|e| {
                        failed(format!("cannot update {}: {e}", changed.join(", ")))
                    })?;
                    applied.push(Applied::Updated { name, changed });
                }
            }
            Err(e) if is_not_found(&e) => {
                js.create_stream(def.config.clone())
                    .await
                    .map_err(|e| failed(format!("cannot create: {e}")))?;
                applied.push(Applied::Created { name });
            }
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    Ok(applied)
}

fn is_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::GetStreamErrorKind;
    matches!(e.kind(), GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// How many nodes have telemetry on the monitor stream (one stored subject per node), for
/// limits that are a share of the mesh.
pub async fn count_reporting_nodes(js: &JetStream) -> Result<usize, BusError> {
    use futures::StreamExt;
    let stream = mapek_domain::Phase::Monitor.stream();
    let failed = |detail: String| BusError::Stream {
        stream: stream.to_owned(),
        detail,
    };
    let mut subjects = js
        .get_stream(stream)
        .await
        .map_err(|e| failed(e.to_string()))?
        .info_with_subjects("mapek.monitor.>")
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut nodes = 0;
    while let Some(subject) = subjects.next().await {
        subject.map_err(|e| failed(e.to_string()))?;
        nodes += 1;
    }
    Ok(nodes)
}
