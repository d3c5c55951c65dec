//! The schemas of `schemas/`, embedded at build time and looked up by fingerprint or name.
//!
//! `schemas/` is the only source of truth: the files are compiled in as they are, and a test
//! checks that each newer version can read every older one and every stored example.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;

/// The schema files, as `(name, version, text)`. Add a version here when you add a file.
const SOURCES: &[(&str, u32, &str)] = &[
    (
        "Telemetry",
        1,
        include_str!("../../../schemas/telemetry.v1.avsc"),
    ),
    (
        "Telemetry",
        2,
        include_str!("../../../schemas/telemetry.v2.avsc"),
    ),
    (
        "Symptom",
        1,
        include_str!("../../../schemas/symptom.v1.avsc"),
    ),
    (
        "Decision",
        1,
        include_str!("../../../schemas/decision.v1.avsc"),
    ),
    (
        "ActionResult",
        1,
        include_str!("../../../schemas/action_result.v1.avsc"),
    ),
    (
        "Outcome",
        1,
        include_str!("../../../schemas/outcome.v1.avsc"),
    ),
    (
        "Rejected",
        1,
        include_str!("../../../schemas/rejected.v1.avsc"),
    ),
];

/// One version of one schema.
#[derive(Debug)]
pub struct KnownSchema {
    /// The record name without namespace: `Telemetry`.
    pub name: &'static str,
    /// Its version, from the file name.
    pub version: u32,
    /// The parsed schema.
    pub schema: Schema,
    /// Its CRC-64-AVRO fingerprint, as a little-endian number.
    pub fingerprint: u64,
    /// The fingerprint as it is written in a message header.
    pub fingerprint_bytes: [u8; 8],
    /// `name/version`, made once: every published event carries it.
    label: String,
}

impl KnownSchema {
    /// `name/version`, as in the `Mapek-Schema` header.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// Every known schema version.
#[derive(Debug)]
pub struct Registry {
    schemas: Vec<KnownSchema>,
    by_fingerprint: BTreeMap<u64, usize>,
    latest: BTreeMap<&'static str, usize>,
}

impl Registry {
    /// The registry of the schemas in `schemas/`, built once.
    pub fn global() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            // A corrupt length prefix must not make the decoder allocate gigabytes.
            let _ = apache_avro::util::max_allocation_bytes(4 * mapek_domain::MAX_EVENT_BYTES);
            Registry::from_sources(SOURCES).expect("the schemas in schemas/ parse")
        })
    }

    /// A registry of the given `(name, version, text)` schemas.
    pub fn from_sources(sources: &[(&'static str, u32, &str)]) -> Result<Self, String> {
        let mut registry = Registry {
            schemas: Vec::new(),
            by_fingerprint: BTreeMap::new(),
            latest: BTreeMap::new(),
        };
        for &(name, version, text) in sources {
            let schema = Schema::parse_str(text).map_err(|e| format!("{name} v{version}: {e}"))?;
            let bytes: [u8; 8] = schema.fingerprint::<Rabin>().bytes[..8]
                .try_into()
                .expect("a Rabin fingerprint has 8 bytes");
            let fingerprint = u64::from_le_bytes(bytes);
            let index = registry.schemas.len();
            if registry.by_fingerprint.insert(fingerprint, index).is_some() {
                return Err(format!(
                    "{name} v{version} has the fingerprint of another schema"
                ));
            }
            let newest = registry.latest.entry(name).or_insert(index);
            if registry
                .schemas
                .get(*newest)
                .is_some_and(|s| s.version < version)
            {
                *newest = index;
            }
            registry.schemas.push(KnownSchema {
                name,
                version,
                schema,
                fingerprint,
                fingerprint_bytes: bytes,
                label: format!("{name}/{version}"),
            });
        }
        Ok(registry)
    }

    /// The schema with this fingerprint.
    pub fn by_fingerprint(&self, fingerprint: u64) -> Option<&KnownSchema> {
        self.by_fingerprint
            .get(&fingerprint)
            .map(|&i| &self.schemas[i])
    }

    /// The newest version of the schema named `name`.
    pub fn latest(&self, name: &str) -> Option<&KnownSchema> {
        self.latest.get(name).map(|&i| &self.schemas[i])
    }

    /// One version of one schema.
    pub fn get(&self, name: &str, version: u32) -> Option<&KnownSchema> {
        self.schemas
            .iter()
            .find(|s| s.name == name && s.version == version)
    }

    /// Every known version, in the order of `schemas/`.
    pub fn all(&self) -> impl Iterator<Item = &KnownSchema> {
        self.schemas.iter()
    }
}
