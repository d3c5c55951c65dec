//! Whatever bytes arrive, the decoders answer with an error, never a panic: every family's
//! decoder over damaged copies of valid messages of every schema version, and the JSON path
//! over damaged JSON telemetry. The damage is seeded (`mapek_testkit::mutate`), so the same
//! cases run every time and a failure names the input.

use std::path::Path;

use mapek_codec::{decode, decode_json, encode, peek_schema};
use mapek_domain::{ActionResult, Decision, Outcome, Rejected, Symptom, Telemetry};
use mapek_testkit::mutate::never_panics;
use mapek_testkit::samples;

/// Damaged copies of each valid input.
const CASES: usize = 20_000;

/// A valid message of every schema version: the samples as written now, and the stored
/// examples of older versions and fingerprints.
fn valid_messages() -> Vec<Vec<u8>> {
    let telemetry = samples::telemetry("n1", samples::TS_MS, 12.5);
    let mut out = vec![
        encode(&telemetry).unwrap(),
        encode(&samples::symptom()).unwrap(),
        encode(&samples::decision()).unwrap(),
        encode(&samples::action_result()).unwrap(),
        encode(&samples::outcome()).unwrap(),
        encode(&samples::rejected()).unwrap(),
    ];
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/examples");
    for entry in std::fs::read_dir(examples).unwrap() {
        out.push(std::fs::read(entry.unwrap().path()).unwrap());
    }
    out
}

#[test]
fn every_decoder_refuses_damaged_avro_without_panicking() {
    never_panics(&valid_messages(), CASES, |bytes| {
        let _ = peek_schema(bytes);
        let _ = decode::<Telemetry>(bytes);
        let _ = decode::<Symptom>(bytes);
        let _ = decode::<Decision>(bytes);
        let _ = decode::<ActionResult>(bytes);
        let _ = decode::<Outcome>(bytes);
        let _ = decode::<Rejected>(bytes);
    });
}

#[test]
fn json_telemetry_refuses_damage_without_panicking() {
    let valid = [
        r#"{"event_id":"e1","node":"n1","ts_ms":1795867200000,"metrics":{"latency_ms":12.5,"loss":0.01}}"#,
        r#"{"event_id":"e2","node":"n2","ts_ms":1,"metrics":{"cpu":0.97},"links":[{"peer":"n1","up":false,"latency_ms":4.0,"loss":0.2}],"site":"r1"}"#,
    ];
    let valid: Vec<Vec<u8>> = valid.iter().map(|s| s.as_bytes().to_vec()).collect();
    never_panics(&valid, CASES, |bytes| {
        let _ = decode_json::<Telemetry>(bytes);
    });
}
