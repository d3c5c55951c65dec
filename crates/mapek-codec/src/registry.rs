//! The schemas of `schemas/`, embedded at build time and looked up by fingerprint or name.
//!
//! `schemas/` is the only source of truth: the files are compiled in as they are, and a test
//! checks that each newer version can read every older one and every stored example.
//!
//! Each version is known by the fingerprint the Avro specification gives it, which writers
//! write. The versions that existed before mapek computed that fingerprint itself are also
//! known by the one it wrote then ([`Form::LogicalTypesKept`]), so that logs written then
//! still read (ADR 0015).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use apache_avro::Schema;

use crate::canonical::{self, Form};

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
        "ActionResult",
        2,
        include_str!("../../../schemas/action_result.v2.avsc"),
    ),
    (
        "ActionResult",
        3,
        include_str!("../../../schemas/action_result.v3.avsc"),
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

/// The schema versions that mapek wrote with the fingerprint of
/// [`Form::LogicalTypesKept`] before it wrote the specification's. A version added later is
/// known by the specification's fingerprint alone.
const WRITTEN_WITH_THE_OLD_FINGERPRINT: &[(&str, u32)] = &[
    ("Telemetry", 1),
    ("Telemetry", 2),
    ("Symptom", 1),
    ("Decision", 1),
    ("ActionResult", 1),
    ("Outcome", 1),
    ("Rejected", 1),
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
    /// Its Parsing Canonical Form, as the Avro specification defines it.
    pub canonical_form: String,
    /// The CRC-64-AVRO fingerprint of that form (the number Java's `parsingFingerprint64`
    /// gives), which writers write.
    pub fingerprint: u64,
    /// The fingerprint as it is written in a message header: little-endian.
    pub fingerprint_bytes: [u8; 8],
    /// The fingerprint mapek wrote for this version before it wrote the specification's, if
    /// the version is that old: still read, never written.
    pub old_fingerprint: Option<u64>,
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
            let invalid = |e: String| format!("{name} v{version}: {e}");
            let schema = Schema::parse_str(text).map_err(|e| invalid(e.to_string()))?;
            let canonical_form =
                canonical::canonical_form(text, Form::Specification).map_err(invalid)?;
            let fingerprint = canonical::fingerprint(&canonical_form);
            let old_fingerprint = WRITTEN_WITH_THE_OLD_FINGERPRINT
                .contains(&(name, version))
                .then(|| canonical::canonical_form(text, Form::LogicalTypesKept))
                .transpose()
                .map_err(invalid)?
                .map(|form| canonical::fingerprint(&form));
            let index = registry.schemas.len();
            for fp in std::iter::once(fingerprint).chain(old_fingerprint) {
                if registry
                    .by_fingerprint
                    .get(&fp)
                    .is_some_and(|&i| i != index)
                {
                    return Err(invalid("has the fingerprint of another schema".into()));
                }
                registry.by_fingerprint.insert(fp, index);
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
                canonical_form,
                fingerprint,
                fingerprint_bytes: fingerprint.to_le_bytes(),
                old_fingerprint,
                label: format!("{name}/{version}"),
            });
        }
        Ok(registry)
    }

    /// The schema with this fingerprint: the specification's, or the one an old version was
    /// written with.
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
