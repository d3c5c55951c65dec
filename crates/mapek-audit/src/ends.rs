//! Whether each decision chain still has its start and its end (ADR 0016).
//!
//! - **Start**: a chain begins with a decision whose `prev_hash` is empty. A first decision in
//!   the stream that links to one that is not there is a cut, unless the stream may have aged
//!   that one out: the chain's signed head says when its first decision was stored
//!   (`since_ms`), and only a chain that began before the stream's `max_age` can have lost
//!   its start to age.
//! - **End**: the signed head names the last decision the witness read in the partition; it
//!   must be in the stream (decisions after it are newer than the head), unless it was stored
//!   before the stream's `max_age`.
//! - **Heads**: with the decision key, every chain must have a head that verifies; a forged,
//!   damaged or missing head is reported. Without a key, heads that read are used unchecked.
//!   Given a limit, a head signed longer ago than that is reported too: a running witness signs
//!   each head every minute, so an old one is a stopped witness or a head put back.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use crate::VerifyingKey;
use crate::heads::Head;

/// Decisions closer than this to the stream's `max_age` may be aging out while the audit
/// reads: they are taken as aged out.
const AGE_SLACK_MS: i64 = 60_000;

/// A chain begun less than this long ago may not have a head yet: the witness signs a new
/// chain's head within a second or so ([`crate::witness::WitnessConfig::every`]).
pub const HEADLESS_GRACE_MS: i64 = 3_000;

/// What the audit read of one partition's chain.
#[derive(Clone, Debug, Default)]
pub struct Span {
    /// The stream sequence of its first decision in the stream, and whether that decision
    /// begins a chain (an empty `prev_hash`).
    pub first: Option<(u64, bool)>,
    /// When the server stored that first decision, in ms since the Unix epoch.
    pub first_ms: i64,
    /// The chain hash of every decision read in the partition.
    pub hashes: HashSet<String>,
}

impl Span {
    /// Notes the next decision of the partition, stored at `stored_ms`.
    pub fn read(&mut self, seq: u64, stored_ms: i64, prev_hash: &str, chain_hash: String) {
        if self.first.is_none() {
            self.first = Some((seq, prev_hash.is_empty()));
            self.first_ms = stored_ms;
        }
        self.hashes.insert(chain_hash);
    }
}

/// A chain that lost its start or its end, or whose head cannot be trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// The plan partition.
    pub partition: u32,
    /// What is wrong, in a sentence.
    pub what: String,
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chain of partition {}: {}", self.partition, self.what)
    }
}

/// How old a decision may be before the stream forgets it, how old a head may be, and when
/// the audit runs.
#[derive(Clone, Copy, Debug)]
pub struct Ages {
    /// The stream's `max_age` in ms; 0 keeps decisions for ever.
    pub max_age_ms: i64,
    /// The most a head may have aged since it was signed, in ms; `None` takes any.
    pub head_within_ms: Option<i64>,
    /// Now, in ms since the Unix epoch.
    pub now_ms: i64,
}

impl Ages {
    /// Whether something stored at `ms` may have aged out of the stream.
    pub fn may_have_aged_out(&self, ms: i64) -> bool {
        self.max_age_ms > 0 && ms < self.now_ms - self.max_age_ms + AGE_SLACK_MS
    }
}

/// Judges every chain read (`spans`) against the stored `heads`.
pub fn judge(
    spans: &BTreeMap<u32, Span>,
    heads: &BTreeMap<u32, Result<Head, String>>,
    key: Option<&VerifyingKey>,
    ages: Ages,
) -> Vec<Cut> {
    let partitions: BTreeSet<u32> = spans.keys().chain(heads.keys()).copied().collect();
    let empty = Span::default();
    let mut cuts = Vec::new();
    for partition in partitions {
        let span = spans.get(&partition).unwrap_or(&empty);
        let mut cut = |what: String| cuts.push(Cut { partition, what });
        let head =
            match (heads.get(&partition), key) {
                (Some(Ok(h)), Some(key)) if !h.verifies(key) => {
                    cut(
                        "its signed head does not verify with the decision key: forged, or signed \
                     with another key"
                            .into(),
                    );
                    None
                }
                (Some(Ok(h)), _) => Some(h),
                (Some(Err(why)), _) => {
                    cut(format!("its signed head cannot be read: {why}"));
                    None
                }
                (None, Some(_))
                    if span.first.is_some() && span.first_ms < ages.now_ms - HEADLESS_GRACE_MS =>
                {
                    cut("it has no signed head (run the witness: mapek run with --signing-key), so \
                     decisions cut from its end would not show"
                    .into());
                    None
                }
                (None, _) => None,
            };
        if let Some(what) = head.and_then(|h| end_cut(span, h, ages)) {
            cut(what);
        }
        if let Some(what) = head.and_then(|h| stale(h, ages)) {
            cut(what);
        }
        if let Some(what) = start_cut(span, head, ages) {
            cut(what);
        }
    }
    cuts
}

/// Why the chain lost its end, if it did: its head is not in the stream and cannot have aged
/// out.
fn end_cut(span: &Span, head: &Head, ages: Ages) -> Option<String> {
    if span.hashes.contains(&head.head) || ages.may_have_aged_out(head.head_ms) {
        return None;
    }
    Some(format!(
        "its end is missing: the head the witness signed ({}…, a decision stored {} s before \
         the head was signed) is not in the stream; decisions were cut from its end",
        &head.head[..head.head.len().min(16)],
        (head.at_ms - head.head_ms).max(0) / 1000
    ))
}

/// Why a head is too old to vouch for the chain's end, if it is.
fn stale(head: &Head, ages: Ages) -> Option<String> {
    let limit = ages.head_within_ms?;
    let age = ages.now_ms - head.at_ms;
    (age > limit).then(|| {
        format!(
            "its signed head is {} s old, older than the {} s allowed: the witness stopped, or \
             someone put back an old head",
            age / 1000,
            limit / 1000
        )
    })
}

/// Why the chain lost its start, if it did: its first decision links to one that is gone and
/// that cannot have aged out.
fn start_cut(span: &Span, head: Option<&Head>, ages: Ages) -> Option<String> {
    let (seq, begins) = span.first?;
    if begins {
        return None;
    }
    match head.map(|h| h.since_ms) {
        Some(None) => None,
        Some(Some(since)) if ages.may_have_aged_out(since) => None,
        Some(Some(_)) => Some(format!(
            "its start is missing: its first decision in the stream (seq {seq}) links to one \
             that is gone, though the chain began within the time the stream keeps decisions"
        )),
        None => Some(format!(
            "its start is missing: its first decision in the stream (seq {seq}) links to one \
             that is gone, and no signed head shows that the stream aged it out"
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{SigningKey, keys};

    /// The audit's "now" in the tests of the crate.
    pub(crate) const NOW: i64 = 1_800_000_000_000;
    /// A day, in milliseconds.
    pub(crate) const DAY: i64 = 86_400_000;
    /// A stream that keeps 7 days, no limit on a head's age.
    pub(crate) const AGES: Ages = Ages {
        max_age_ms: 7 * DAY,
        head_within_ms: None,
        now_ms: NOW,
    };

    fn span(begins: bool, hashes: &[&str]) -> BTreeMap<u32, Span> {
        let mut span = Span::default();
        for (i, h) in hashes.iter().enumerate() {
            let prev = if i == 0 && begins { "" } else { "x" };
            span.read(10 + i as u64, NOW - DAY, prev, (*h).to_owned());
        }
        BTreeMap::from([(3, span)])
    }

    fn head(hash: &str, head_ms: i64, since_ms: Option<i64>) -> Head {
        Head {
            partition: 3,
            head: hash.to_owned(),
            head_ms,
            since_ms,
            at_ms: NOW - 1000,
            signature: Vec::new(),
        }
    }

    fn heads(head: Head) -> BTreeMap<u32, Result<Head, String>> {
        BTreeMap::from([(3, Ok(head))])
    }

    fn whats(cuts: &[Cut]) -> Vec<&str> {
        cuts.iter().map(|c| c.what.as_str()).collect()
    }

    #[test]
    fn a_whole_chain_passes_and_a_cut_end_is_found_unless_it_aged_out() {
        let whole = span(true, &["a", "b", "c"]);
        let recent = heads(head("c", NOW - DAY, Some(NOW - 2 * DAY)));
        assert_eq!(judge(&whole, &recent, None, AGES), vec![]);
        let cut = span(true, &["a", "b"]);
        let found = judge(&cut, &recent, None, AGES);
        assert!(whats(&found)[0].contains("end is missing"), "{found:?}");
        let old = heads(head("c", NOW - 8 * DAY, Some(NOW - 9 * DAY)));
        assert_eq!(judge(&cut, &old, None, AGES), vec![], "aged out");
        let gone = judge(&BTreeMap::new(), &recent, None, AGES);
        assert!(whats(&gone)[0].contains("end is missing"), "{gone:?}");
    }

    #[test]
    fn a_cut_start_is_found_unless_the_chain_began_before_the_stream_forgets() {
        let cut = span(false, &["b", "c"]);
        let young = heads(head("c", NOW - DAY, Some(NOW - 2 * DAY)));
        let found = judge(&cut, &young, None, AGES);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(whats(&found)[0].contains("start is missing"), "{found:?}");
        let old = heads(head("c", NOW - DAY, Some(NOW - 9 * DAY)));
        assert_eq!(judge(&cut, &old, None, AGES), vec![]);
        let unknown = heads(head("c", NOW - DAY, None));
        assert_eq!(judge(&cut, &unknown, None, AGES), vec![]);
        let headless = judge(&cut, &BTreeMap::new(), None, AGES);
        assert!(whats(&headless)[0].contains("no signed head shows"));
    }

    #[test]
    fn a_head_older_than_allowed_is_named() {
        let whole = span(true, &["a", "b"]);
        let signed_a_second_ago = heads(head("b", NOW - DAY, Some(NOW - DAY)));
        let within = |s: i64| Ages {
            head_within_ms: Some(s * 1000),
            ..AGES
        };
        assert_eq!(
            judge(&whole, &signed_a_second_ago, None, within(60)),
            vec![]
        );
        let found = judge(&whole, &signed_a_second_ago, None, within(0));
        assert!(whats(&found)[0].contains("1 s old"), "{found:?}");
    }

    #[test]
    fn with_the_key_a_head_must_be_there_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keys::generate(dir.path()).unwrap();
        let signer = SigningKey::load(&secret).unwrap();
        let key = VerifyingKey::load(&public).unwrap();
        let whole = span(true, &["a", "b"]);
        let mut genuine = head("b", NOW - DAY, Some(NOW - DAY));
        genuine.sign(&signer).unwrap();
        assert_eq!(
            judge(&whole, &heads(genuine.clone()), Some(&key), AGES),
            vec![]
        );
        let mut forged = genuine;
        forged.head = "a".into();
        let found = judge(&whole, &heads(forged), Some(&key), AGES);
        assert!(whats(&found)[0].contains("does not verify"), "{found:?}");
        let missing = judge(&whole, &BTreeMap::new(), Some(&key), AGES);
        assert!(whats(&missing)[0].contains("no signed head"), "{missing:?}");
        let mut just_begun = Span::default();
        just_begun.read(1, NOW - 1000, "", "a".into());
        let young = BTreeMap::from([(3, just_begun)]);
        assert_eq!(judge(&young, &BTreeMap::new(), Some(&key), AGES), vec![]);
        let damaged = BTreeMap::from([(3, Err("it is not text".to_owned()))]);
        let found = judge(&whole, &damaged, Some(&key), AGES);
        assert!(whats(&found)[0].contains("cannot be read: it is not text"));
    }
}
