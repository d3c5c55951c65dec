//! Schema fingerprints are the specification's: the Avro project's published canonical-form
//! cases pass, and each schema in `schemas/` has the fingerprint that the Java reference
//! implementation and fastavro compute for it, in this test. Messages written before mapek
//! wrote those fingerprints still name their schema.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mapek_codec::canonical::{Form, canonical_form, fingerprint};
use mapek_codec::{MAGIC, Registry, encode, peek_schema};
use mapek_testkit::{foreign, samples};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One case of the Avro project's file: its input, canonical form and fingerprint (if given).
struct Case {
    number: String,
    input: String,
    canonical: String,
    fingerprint: Option<i64>,
}

fn avro_project_cases() -> Vec<Case> {
    let text = include_str!("data/avro-schema-tests.txt");
    let mut cases = Vec::new();
    let mut lines = text.lines();
    let mut number = String::new();
    while let Some(line) = lines.next() {
        if let Some(n) = line.strip_prefix("// 0") {
            number = format!("0{n}");
        } else if let Some(input) = line.strip_prefix("<<INPUT") {
            let input = if input.trim().is_empty() {
                let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "INPUT").collect();
                body.join("\n")
            } else {
                input.trim().to_owned()
            };
            cases.push(Case {
                number: number.clone(),
                input,
                canonical: String::new(),
                fingerprint: None,
            });
        } else if let Some(canonical) = line.strip_prefix("<<canonical ") {
            cases.last_mut().unwrap().canonical = canonical.to_owned();
        } else if let Some(fp) = line.strip_prefix("<<fingerprint ") {
            cases.last_mut().unwrap().fingerprint = Some(fp.parse().unwrap());
        }
    }
    cases
}

#[test]
fn the_avro_projects_canonical_form_cases_pass() {
    let cases = avro_project_cases();
    assert_eq!(cases.len(), 34, "cases 000 to 033");
    for case in &cases {
        let ours = canonical_form(&case.input, Form::Specification)
            .unwrap_or_else(|e| panic!("case {}: {e}", case.number));
        assert_eq!(ours, case.canonical, "case {}", case.number);
        if let Some(fp) = case.fingerprint {
            assert_eq!(fingerprint(&ours) as i64, fp, "case {}", case.number);
        }
    }
}

/// The schema files of `schemas/`, by `Name/version` as the registry labels them.
fn schema_files() -> BTreeMap<String, PathBuf> {
    let registry = Registry::global();
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(repo().join("schemas")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "avsc") {
            let text = std::fs::read_to_string(&path).unwrap();
            let known = registry
                .all()
                .find(|k| k.canonical_form == canonical_form(&text, Form::Specification).unwrap())
                .unwrap_or_else(|| panic!("{} is not in the registry", path.display()));
            files.insert(known.label().to_owned(), path);
        }
    }
    assert_eq!(
        files.len(),
        registry.all().count(),
        "a file per known version"
    );
    files
}

#[test]
fn each_schema_has_the_fingerprint_the_java_reference_implementation_gives() {
    let files = schema_files();
    let program = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/foreign/Fingerprints.java");
    let out = foreign::java_avro()
        .arg(program)
        .args(files.values())
        .output()
        .expect("run java");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "java: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registry = Registry::global();
    for (label, path) in &files {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{} ", path.display())))
            .unwrap_or_else(|| panic!("java printed nothing for {label}: {stdout}"));
        let mut parts = line.splitn(3, ' ').skip(1);
        let (java_fp, java_form) = (parts.next().unwrap(), parts.next().unwrap());
        let (name, version) = label.split_once('/').unwrap();
        let known = registry.get(name, version.parse().unwrap()).unwrap();
        assert_eq!(known.canonical_form, java_form, "{label}: canonical form");
        assert_eq!(format!("{:016x}", known.fingerprint), java_fp, "{label}");
    }
}

#[test]
fn each_schema_has_the_fingerprint_fastavro_gives() {
    let out = foreign::python()
        .arg(repo().join("deploy/agent/mapek_agent.py"))
        .args(["--schemas", &repo().join("schemas").display().to_string()])
        .arg("fingerprints")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: BTreeMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once(' ')).collect();
    let registry = Registry::global();
    assert_eq!(theirs.len(), registry.all().count(), "{stdout}");
    for known in registry.all() {
        let wire: String = known
            .fingerprint_bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            theirs.get(known.label()),
            Some(&wire.as_str()),
            "{}",
            known.label()
        );
    }
}

#[test]
fn writers_write_the_specifications_fingerprint() {
    let messages = [
        encode(&samples::telemetry("n1", samples::TS_MS, 1.0)).unwrap(),
        encode(&samples::symptom()).unwrap(),
        encode(&samples::decision()).unwrap(),
        encode(&samples::action_result()).unwrap(),
        encode(&samples::outcome()).unwrap(),
        encode(&samples::rejected()).unwrap(),
    ];
    for bytes in messages {
        let known = peek_schema(&bytes).unwrap();
        let newest = Registry::global().latest(known.name).unwrap();
        assert_eq!(bytes[..2], MAGIC);
        assert_eq!(bytes[2..10], newest.fingerprint_bytes, "{}", known.label());
    }
}

#[test]
fn messages_written_with_the_old_fingerprints_still_name_their_schema() {
    // The stored examples of the versions that had an old fingerprint were written with it.
    let dir = repo().join("schemas/examples");
    let registry = Registry::global();
    let mut old_ones = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let written = u64::from_le_bytes(bytes[2..10].try_into().unwrap());
        let known = peek_schema(&bytes).unwrap();
        if let Some(old) = known.old_fingerprint {
            assert_eq!(written, old, "{}", known.label());
            assert_ne!(known.fingerprint, old, "{}", known.label());
            old_ones += 1;
        }
        assert!(std::ptr::eq(
            registry.by_fingerprint(known.fingerprint).unwrap(),
            known
        ));
    }
    assert_eq!(old_ones, 7, "the seven versions written before");
}

#[test]
fn the_wire_contract_lists_every_fingerprint_as_computed() {
    let doc = std::fs::read_to_string(repo().join("docs/wire.md")).unwrap();
    let hex = |bytes: [u8; 8]| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
    for known in Registry::global().all() {
        let row = format!(
            "| {} | … | `{}` | `{:016x}` |",
            known.label(),
            hex(known.fingerprint_bytes),
            known.fingerprint
        );
        let current = doc.lines().any(|l| {
            l.starts_with(&format!("| {} |", known.label()))
                && l.contains(&format!("| `{}` |", hex(known.fingerprint_bytes)))
                && l.ends_with(&format!("| `{:016x}` |", known.fingerprint))
        });
        assert!(
            current,
            "docs/wire.md lacks the row of {}: {row}",
            known.label()
        );
        if let Some(old) = known.old_fingerprint {
            let old_row = format!("| {} | `{}` |", known.label(), hex(old.to_le_bytes()));
            assert!(doc.contains(&old_row), "docs/wire.md lacks {old_row}");
        }
    }
}
