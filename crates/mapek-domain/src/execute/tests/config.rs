//! The executor's config file: defaults, forms of `require_approval`, unknown fields.

use crate::ActionKind;
use crate::execute::{Approval, ExecuteConfig};

#[test]
fn defaults_are_the_documented_ones() {
    let c: ExecuteConfig = toml::from_str("").unwrap();
    assert_eq!(c, ExecuteConfig::default());
    assert!(!c.dry_run);
    assert_eq!(c.require_approval, Approval::All(false));
    assert_eq!((c.cooldown_ms, c.evaluate_window_ms), (60_000, 60_000));
    assert_eq!(
        (c.rate_limit.max_actions, c.rate_limit.window_ms),
        (10, 60_000)
    );
    assert_eq!((c.command_timeout_ms, c.command_attempts), (2_000, 3));
    c.check().unwrap();
}

#[test]
fn approval_is_all_none_or_some_kinds() {
    let all: ExecuteConfig = toml::from_str("require_approval = true").unwrap();
    assert!(all.require_approval.required_for(ActionKind::Reroute));
    assert!(!all.require_approval.required_for(ActionKind::Escalate));
    let some: ExecuteConfig =
        toml::from_str(r#"require_approval = ["quarantine", "rate_limit"]"#).unwrap();
    assert!(some.require_approval.required_for(ActionKind::Quarantine));
    assert!(!some.require_approval.required_for(ActionKind::Reroute));
}

#[test]
fn a_misspelt_field_or_a_bad_range_is_an_error_naming_it() {
    let err = toml::from_str::<ExecuteConfig>("cooldown_secs = 5").unwrap_err();
    assert!(err.to_string().contains("cooldown_secs"), "{err}");
    let err = toml::from_str::<ExecuteConfig>("[rate_limit]\nmax = 5").unwrap_err();
    assert!(err.to_string().contains("max"), "{err}");
    // The blast radius is the policy's ([blast_radius]), not the executor's.
    let err = toml::from_str::<ExecuteConfig>("blast_radius = 0.1").unwrap_err();
    assert!(
        err.to_string().contains("unknown field `blast_radius`"),
        "{err}"
    );
    let err = toml::from_str::<ExecuteConfig>("[rate_limit]\nmax = 5").unwrap_err();
    assert!(err.to_string().contains("max"), "{err}");
    for (text, field) in [
        ("cooldown_ms = -1", "cooldown_ms"),
        ("command_attempts = 0", "command_attempts"),
    ] {
        let c: ExecuteConfig = toml::from_str(text).unwrap();
        let err = c.check().unwrap_err().to_string();
        assert!(err.starts_with(field), "{err}");
    }
}
