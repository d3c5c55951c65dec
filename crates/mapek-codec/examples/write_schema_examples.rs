//! Writes a stored example message for every schema version that has none yet, into
//! `schemas/examples/<name>.v<version>.avro`.
//!
//! Run it once after adding a schema version: `cargo run -p mapek-codec --example
//! write_schema_examples`. It never overwrites a file: the examples stand for data already in
//! streams, and `tests/schemas.rs` checks that every one of them still reads with the newest
//! reader. An older version's example is the newest sample cut down to that version's fields.

use std::path::Path;

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use mapek_codec::{MAGIC, Registry};
use mapek_testkit::samples;

fn main() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/examples");
    std::fs::create_dir_all(&dir)?;
    for known in Registry::global().all() {
        let file = dir.join(format!("{}.v{}.avro", snake(known.name), known.version));
        if file.exists() {
            continue;
        }
        let full = sample_value(known.name)?;
        let Value::Record(fields) = full else {
            anyhow::bail!("{} sample is not a record", known.name)
        };
        let apache_avro::Schema::Record(record) = &known.schema else {
            anyhow::bail!("{} schema is not a record", known.name)
        };
        let kept = record
            .fields
            .iter()
            .map(|f| {
                let value = fields
                    .iter()
                    .find(|(name, _)| *name == f.name)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| anyhow::anyhow!("sample lacks field {}", f.name))?;
                Ok((f.name.clone(), value))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&known.fingerprint_bytes);
        GenericDatumWriter::builder(&known.schema)
            .build()?
            .write_value(&mut bytes, Value::Record(kept).resolve(&known.schema)?)?;
        std::fs::write(&file, bytes)?;
        println!("wrote {}", file.display());
    }
    Ok(())
}

fn sample_value(name: &str) -> anyhow::Result<Value> {
    Ok(match name {
        "Telemetry" => apache_avro::to_value(samples::telemetry("n1", samples::TS_MS, 12.5))?,
        "Symptom" => apache_avro::to_value(samples::symptom())?,
        "Decision" => apache_avro::to_value(samples::decision())?,
        "ActionResult" => apache_avro::to_value(samples::signed_escalated_result())?,
        "Outcome" => apache_avro::to_value(samples::outcome())?,
        "Rejected" => apache_avro::to_value(samples::rejected())?,
        other => anyhow::bail!("no sample for schema {other}: add one to mapek-testkit"),
    })
}

fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}
