//! The schemas in `schemas/`: every event round-trips, older versions read with the newest
//! reader, and every stored example of every version still decodes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use mapek_codec::{CodecError, MAGIC, Registry, decode, decode_json, encode, peek_schema};
use mapek_domain::{ActionResult, Decision, Outcome, Rejected, Symptom, Telemetry};
use mapek_testkit::samples;

fn round_trip<E>(event: E)
where
    E: mapek_codec::AvroEvent + PartialEq + std::fmt::Debug,
{
    let bytes = encode(&event).unwrap();
    assert_eq!(&bytes[..2], &MAGIC);
    assert_eq!(peek_schema(&bytes).unwrap().name, E::SCHEMA);
    assert_eq!(decode::<E>(&bytes).unwrap(), event);
}

#[test]
fn every_event_type_round_trips() {
    round_trip(samples::telemetry("n1", samples::TS_MS, 12.5));
    round_trip(samples::symptom());
    round_trip(samples::decision());
    round_trip(samples::action_result());
    round_trip(samples::outcome());
    round_trip(samples::rejected());
}

#[test]
fn encoding_is_the_avro_spec_single_object_encoding() {
    // Any Avro library must read what mapek writes: compare with apache-avro's own
    // value-based writer (the fingerprint is checked against foreign implementations in
    // fingerprints.rs).
    let t = samples::telemetry("n1", samples::TS_MS, 12.5);
    let known = Registry::global().latest("Telemetry").unwrap();
    let mut expected = MAGIC.to_vec();
    expected.extend_from_slice(&known.fingerprint_bytes);
    let value = apache_avro::to_value(&t)
        .unwrap()
        .resolve(&known.schema)
        .unwrap();
    GenericDatumWriter::builder(&known.schema)
        .build()
        .unwrap()
        .write_value(&mut expected, value.clone())
        .unwrap();
    let ours = encode(&t).unwrap();
    assert_eq!(ours[..10], expected[..10], "same magic and fingerprint");
    // Map entries may come in another order (apache-avro's maps are hash maps), so compare
    // what each side reads from the other's bytes.
    let theirs = GenericDatumReader::builder(&known.schema)
        .build()
        .unwrap()
        .read_value(&mut &ours[10..])
        .unwrap();
    assert_eq!(theirs, value);
    assert_eq!(decode::<Telemetry>(&expected).unwrap(), t);
}

/// Encodes `fields` with an older schema version, as an old publisher would have.
fn encode_old(name: &str, version: u32, fields: Vec<(String, Value)>) -> Vec<u8> {
    let known = Registry::global().get(name, version).unwrap();
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&known.fingerprint_bytes);
    let value = Value::Record(fields).resolve(&known.schema).unwrap();
    GenericDatumWriter::builder(&known.schema)
        .build()
        .unwrap()
        .write_value(&mut bytes, value)
        .unwrap();
    bytes
}

#[test]
fn telemetry_v1_reads_with_the_v2_reader() {
    let v1 = encode_old(
        "Telemetry",
        1,
        vec![
            ("event_id".into(), Value::String("e-1".into())),
            ("node".into(), Value::String("n9".into())),
            ("ts_ms".into(), Value::Long(samples::TS_MS)),
            (
                "metrics".into(),
                Value::Map([("loss".to_owned(), Value::Double(0.2))].into()),
            ),
            ("links".into(), Value::Array(vec![])),
        ],
    );
    assert_eq!(peek_schema(&v1).unwrap().version, 1);
    let t: Telemetry = decode(&v1).unwrap();
    assert_eq!(t.node.as_str(), "n9");
    assert_eq!(t.metrics, BTreeMap::from([("loss".to_owned(), 0.2)]));
    assert_eq!(t.site, None, "a field added in v2 takes its default");
}

#[test]
fn an_action_result_v2_reads_with_the_v3_reader_unsigned_and_keeps_its_escalation() {
    let r = samples::escalated_result();
    let value = apache_avro::to_value(&r).unwrap();
    let apache_avro::types::Value::Record(mut fields) = value else {
        panic!("a result is a record")
    };
    fields.retain(|(name, _)| name != "signature");
    let v2 = encode_old("ActionResult", 2, fields);
    assert_eq!(peek_schema(&v2).unwrap().version, 2);
    let read: ActionResult = decode(&v2).unwrap();
    assert!(
        read.signature.is_empty(),
        "a field added in v3 takes its default"
    );
    assert_eq!(read, r);
    assert_eq!(
        read.escalation_words().as_deref(),
        Some("escalated to a human (team=netops)")
    );
    // What the executor signs of it is what it said in v2: the missing signature is no part
    // of the hash.
    assert_eq!(read.result_hash(), r.result_hash());
}

#[test]
fn each_newer_version_can_read_every_older_one() {
    let registry = Registry::global();
    for old in registry.all() {
        let newest = registry.latest(old.name).unwrap();
        SchemaCompatibility::can_read(&old.schema, &newest.schema)
            .unwrap_or_else(|e| panic!("{} cannot read {}: {e}", newest.label(), old.label()));
    }
}

fn decode_by_name(name: &str, bytes: &[u8]) -> Result<String, CodecError> {
    Ok(match name {
        "Telemetry" => format!("{:?}", decode::<Telemetry>(bytes)?),
        "Symptom" => format!("{:?}", decode::<Symptom>(bytes)?),
        "Decision" => format!("{:?}", decode::<Decision>(bytes)?),
        "ActionResult" => format!("{:?}", decode::<ActionResult>(bytes)?),
        "Outcome" => format!("{:?}", decode::<Outcome>(bytes)?),
        "Rejected" => format!("{:?}", decode::<Rejected>(bytes)?),
        other => panic!("no decoder for {other}: add it here"),
    })
}

#[test]
fn every_stored_example_of_every_version_still_decodes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/examples");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        // An edit to an old schema changes its fingerprint: the example then names an
        // unknown fingerprint, and this fails, as it should.
        let known = peek_schema(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        decode_by_name(known.name, &bytes)
            .unwrap_or_else(|e| panic!("{} no longer decodes: {e}", path.display()));
        seen.push(known.label());
    }
    for known in Registry::global().all() {
        assert!(
            seen.contains(&known.label()),
            "no stored example for {}: run cargo run -p mapek-codec --example \
             write_schema_examples",
            known.label()
        );
    }
}

#[test]
fn a_truncated_body_is_a_clear_error() {
    let bytes = encode(&samples::decision()).unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 11] {
        let err = decode::<Decision>(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(err, CodecError::Malformed { .. }),
            "cut at {cut}: {err}"
        );
        assert!(
            err.to_string()
                .starts_with("Decision/1 body does not decode"),
            "{err}"
        );
    }
}

#[test]
fn header_errors_name_what_is_wrong() {
    let good = encode(&samples::outcome()).unwrap();
    let mut unknown = good.clone();
    unknown[2..10].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (unknown, "unknown schema fingerprint 0807060504030201"),
        (
            b"{\"node\":\"n1\"}".to_vec(),
            "not an Avro single-object message",
        ),
        (
            vec![0xC3, 0x01, 0x00],
            "shorter than the 10-byte single-object header",
        ),
        (vec![], "shorter than the 10-byte"),
    ];
    for (bytes, want) in cases {
        let err = decode::<Outcome>(&bytes).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} should contain {want:?}");
    }
}

#[test]
fn a_message_of_another_schema_is_refused_by_name() {
    let bytes = encode(&samples::outcome()).unwrap();
    let err = decode::<Telemetry>(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "expected a Telemetry message, found Outcome version 1"
    );
}

#[test]
fn trailing_bytes_after_the_datum_are_refused() {
    let mut bytes = encode(&samples::outcome()).unwrap();
    bytes.push(0);
    let err = decode::<Outcome>(&bytes).unwrap_err();
    assert!(err.to_string().contains("1 bytes left over"), "{err}");
}

#[test]
fn an_invalid_node_id_in_avro_data_is_refused() {
    let bytes = encode_old(
        "Telemetry",
        1,
        vec![
            ("event_id".into(), Value::String("e".into())),
            ("node".into(), Value::String("n.1".into())),
            ("ts_ms".into(), Value::Long(1)),
            ("metrics".into(), Value::Map(Default::default())),
            ("links".into(), Value::Array(vec![])),
        ],
    );
    let err = decode::<Telemetry>(&bytes).unwrap_err();
    assert!(err.to_string().contains("invalid node id \"n.1\""), "{err}");
}

#[test]
fn nan_and_infinite_metrics_are_refused_on_both_sides() {
    let mut t = samples::telemetry("n1", samples::TS_MS, 1.0);
    t.metrics.insert("jitter".into(), f64::NAN);
    let err = encode(&t).unwrap_err();
    assert!(err.to_string().contains("metric jitter is NaN"), "{err}");
    // A foreign writer that skips the check is caught by the reader.
    let bytes = encode_old(
        "Telemetry",
        1,
        vec![
            ("event_id".into(), Value::String("e".into())),
            ("node".into(), Value::String("n1".into())),
            ("ts_ms".into(), Value::Long(1)),
            (
                "metrics".into(),
                Value::Map([("latency_ms".to_owned(), Value::Double(f64::INFINITY))].into()),
            ),
            ("links".into(), Value::Array(vec![])),
        ],
    );
    let err = decode::<Telemetry>(&bytes).unwrap_err();
    assert!(
        err.to_string().contains("metric latency_ms is inf"),
        "{err}"
    );
}

#[test]
fn an_event_over_one_mebibyte_is_refused_by_size() {
    let mut t = samples::telemetry("n1", samples::TS_MS, 1.0);
    t.event_id = "x".repeat(2 * 1024 * 1024);
    let err = encode(&t).unwrap_err();
    assert!(
        err.to_string()
            .contains("more than the 1024000 bytes allowed"),
        "{err}"
    );
    let err = decode::<Telemetry>(&vec![0xC3; 2 * 1024 * 1024]).unwrap_err();
    assert!(
        err.to_string().starts_with("event is 2097152 bytes"),
        "{err}"
    );
}

#[test]
fn json_telemetry_is_checked_against_the_same_schema() {
    let ok =
        br#"{"event_id":"e1","node":"n1","ts_ms":1795867200000,"metrics":{"latency_ms":12.5}}"#;
    let t: Telemetry = decode_json(ok).unwrap();
    assert_eq!(t.metrics["latency_ms"], 12.5);
    assert!(t.links.is_empty() && t.site.is_none());

    let cases: [(&[u8], &str); 5] = [
        (
            br#"{"event_id":"e1","node":"n 1","ts_ms":1,"metrics":{}}"#,
            "invalid node id",
        ),
        (
            br#"{"event_id":"e1","node":"n1","ts_ms":"soon","metrics":{}}"#,
            "invalid type",
        ),
        (
            br#"{"event_id":"e1","node":"n1","metrics":{}}"#,
            "missing field `ts_ms`",
        ),
        (
            br#"{"event_id":"e1","node":"n1","ts_ms":1,"metrics":{},"x":1}"#,
            "unknown field `x`",
        ),
        (
            br#"{"event_id":"e1","node":"n1","ts_ms":1,"metrics":{"loss":7}}"#,
            "between 0 and 1",
        ),
    ];
    for (json, want) in cases {
        let err = decode_json::<Telemetry>(json).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} should contain {want:?}");
    }
}
