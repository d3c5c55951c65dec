//! The policy file: the shipped one, its hash, and the errors a bad one gets.

use super::*;
use crate::plan::policy::{DEFAULT_POLICY, NO_RULE, PolicyError, hash};

/// The smallest valid policy; each bad-policy case edits one line of it.
const MINIMAL: &str = r#"name = "minimal"

[blast_radius]
window_secs = 60
max_actions = 5

[[rules]]
name = "cpu"
symptom = "cpu_saturation"
[[rules.candidates]]
action = "rate_limit"
cooldown_secs = 60
rate_pps = 100
"#;

#[test]
fn the_default_policy_parses_and_has_a_rule_for_every_symptom_kind() {
    let policy = Policy::builtin();
    assert_eq!(policy.name(), "default");
    assert_eq!(policy.hash(), hash(DEFAULT_POLICY.as_bytes()));
    for kind in SymptomKind::ALL {
        for peer in [None, Some(id("peer"))] {
            let s = Symptom {
                peer: peer.clone(),
                ..open("n1", kind, 0, 1.0)
            };
            let rule = policy.matching(&s);
            assert!(
                rule.is_some(),
                "no rule for {} with peer {peer:?}",
                kind.as_str()
            );
        }
    }
}

#[test]
fn the_hash_is_the_sha256_of_the_exact_bytes() {
    let e3b0 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_eq!(hash(b""), e3b0);
    let policy = Policy::parse(MINIMAL).unwrap();
    assert_eq!(policy.hash(), hash(MINIMAL.as_bytes()));
    let commented = Policy::parse(&format!("# reviewed\n{MINIMAL}")).unwrap();
    assert_eq!(commented.file(), policy.file(), "the same rules");
    assert_ne!(commented.hash(), policy.hash(), "but another file");
}

/// Parses `MINIMAL` with `from` replaced by `to`, and returns the error's text.
fn error(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from), "{from:?} not in the minimal policy");
    let text = MINIMAL.replacen(from, to, 1);
    match Policy::parse(&text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_bad_policy_gets_an_error_naming_the_field() {
    let rate = "rate_pps = 100\n";
    let candidate = "action = \"rate_limit\"\ncooldown_secs = 60\nrate_pps = 100\n";
    let cases: &[(&str, &str, &[&str])] = &[
        // The TOML parser's errors: unknown, missing, mistyped.
        ("name =", "nmae =", &["line 1", "unknown field `nmae`"]),
        (
            rate,
            "rate_pps = 100\ncooldown = 5\n",
            &["`cooldown = 5`", "unknown field `cooldown`"],
        ),
        (
            "cooldown_secs = 60",
            "cooldown_secs = \"1m\"",
            &["`cooldown_secs = \"1m\"`", "expected u64"],
        ),
        (
            "cooldown_secs = 60",
            "cooldown_secs = -1",
            &["`cooldown_secs = -1`"],
        ),
        (
            "cooldown_secs = 60\n",
            "",
            &["missing field `cooldown_secs`"],
        ),
        (
            "\"rate_limit\"",
            "\"restart\"",
            &["unknown variant `restart`", "restart_service"],
        ),
        (
            "\"cpu_saturation\"",
            "\"cpu\"",
            &["unknown variant `cpu`", "cpu_saturation"],
        ),
        (
            "window_secs",
            "windows_secs",
            &["unknown field `windows_secs`"],
        ),
        // Checked after parsing: the error names the field's path.
        (
            "window_secs = 60",
            "window_secs = 0",
            &["blast_radius.window_secs: is 0"],
        ),
        (
            "max_actions = 5",
            "max_actions = 0",
            &["blast_radius.max_actions"],
        ),
        (
            "max_actions = 5",
            "max_node_percent = 150",
            &["blast_radius.max_node_percent: is 150"],
        ),
        (
            "max_actions = 5",
            "max_node_percent = 10\nmin_known_nodes = 5",
            &["blast_radius.min_known_nodes: is 5", "(at least 10)"],
        ),
        (
            "max_actions = 5",
            "",
            &["policy field blast_radius: set max_node_percent"],
        ),
        (
            "name = \"cpu\"",
            "name = \"cpu rule\"",
            &["rules[0].name", "\"cpu rule\""],
        ),
        ("name = \"minimal\"", "name = \"\"", &["policy field name"]),
        (
            rate,
            "",
            &["rules[0].candidates[0].rate_pps", "packets per second"],
        ),
        (
            rate,
            "rate_pps = 0\n",
            &["rules[0].candidates[0].rate_pps", "quarantine"],
        ),
        (
            rate,
            "rate_pps = 1\nservice = \"x\"\n",
            &["rules[0].candidates[0].service"],
        ),
        (
            "cooldown_secs = 60",
            "cooldown_secs = 99999999",
            &["candidates[0].cooldown_secs"],
        ),
        (
            rate,
            "rate_pps = 1\nparams = { rate_pps = \"2\" }\n",
            &["params.rate_pps"],
        ),
        (
            rate,
            "rate_pps = 1\nparams = { \"a b\" = \"2\" }\n",
            &["params.a b"],
        ),
        (
            "\"rate_limit\"",
            "\"restart_service\"",
            &["candidates[0].service"],
        ),
        (
            candidate,
            "action = \"reroute\"\ncooldown_secs = 60\n",
            &["candidates[0].action", "has_peer = true"],
        ),
    ];
    for (from, to, expected) in cases {
        let e = error(from, to);
        for part in *expected {
            assert!(e.contains(part), "{from:?} -> {to:?}: {e:?} lacks {part:?}");
        }
    }
    let twice = format!("{candidate}[[rules.candidates]]\n{candidate}");
    let e = error(candidate, &twice);
    assert!(
        e.contains("rules[0].candidates[1].action: rule `cpu` lists rate_limit twice"),
        "{e}"
    );
    let rule = &MINIMAL[MINIMAL.find("[[rules]]").unwrap()..];
    let e = Policy::parse(&format!("{MINIMAL}{rule}"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rules[1].name: rule name `cpu` is used twice"),
        "{e}"
    );
    let e = Policy::parse(&MINIMAL[..MINIMAL.find("[[rules]]").unwrap()]).unwrap_err();
    assert!(e.to_string().contains("missing field `rules`"), "{e}");
    let e = error(
        "[blast_radius]",
        "[knowledge]\nneighbours = 100\n\n[blast_radius]",
    );
    assert!(e.contains("knowledge.neighbours: is 100"), "{e}");
}

#[test]
fn an_error_reads_as_one_sentence_with_its_place() {
    let e = Policy::parse(&MINIMAL.replace("cooldown_secs = 60", "cooldown_secs = \"1m\""));
    let PolicyError::Syntax { at, message } = e.unwrap_err() else {
        panic!("a syntax error");
    };
    assert_eq!(at, "line 12 (`cooldown_secs = \"1m\"`)");
    assert!(!message.contains('\n'), "{message:?}");
}

#[test]
fn refusals_are_escalated_with_the_rules_fallback_unless_the_policy_says_otherwise() {
    let policy = Policy::parse(MINIMAL).unwrap();
    assert!(policy.fallback_for("cpu").escalate_refusals);
    let quiet = MINIMAL.replace(
        "[[rules]]",
        "[fallback]\nparams = { team = \"ops\" }\nescalate_refusals = false\n\n[[rules]]",
    );
    let quiet = Policy::parse(&quiet).unwrap();
    assert!(!quiet.fallback_for("cpu").escalate_refusals);
    assert!(!quiet.fallback_for(NO_RULE).escalate_refusals);
    // A rule's own fallback is its decisions' escalation.
    let own = format!("{MINIMAL}[rules.fallback]\nparams = {{ team = \"cpu-team\" }}\n");
    let own = Policy::parse(&own).unwrap();
    assert_eq!(own.fallback_for("cpu").params["team"], "cpu-team");
    assert!(own.fallback_for("cpu").escalate_refusals);
    assert!(own.fallback_for(NO_RULE).params.is_empty());
}
