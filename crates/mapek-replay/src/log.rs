//! The recorded symptoms and decisions a replay compares against, and the policies it runs.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use mapek_bus::config_store::RecordedConfig;
use mapek_bus::layout::partition_of;
use mapek_domain::plan::{NoKnowledge, RecordedKnowledge};
use mapek_domain::{Decision, KnowledgeView, Phase, Planner, Policy, Symptom};

use crate::record::Record;
use crate::{ReplayError, Source};

/// The partition of a record whose subject carries none (a stream without the partition
/// transform): all such records share one analyzer or planner.
pub(crate) const UNPARTITIONED: u32 = u32::MAX;

/// A stored event, decoded, with where it was stored and its exact bytes.
#[derive(Clone, Debug)]
pub(crate) struct Stored<E> {
    pub(crate) partition: u32,
    pub(crate) seq: u64,
    pub(crate) event: E,
    pub(crate) bytes: Bytes,
}

impl<E: mapek_codec::AvroEvent> Stored<E> {
    fn from_record(r: Record) -> Option<Self> {
        let event = r.decode::<E>().ok()?;
        Some(Self {
            partition: partition_of(&r.subject).unwrap_or(UNPARTITIONED),
            seq: r.seq,
            event,
            bytes: r.body,
        })
    }
}

/// The analyze and plan streams, decoded.
#[derive(Debug, Default)]
pub(crate) struct Log {
    /// Every readable symptom, in stream order.
    pub(crate) symptoms: Vec<Stored<Symptom>>,
    /// Every readable decision, in stream order.
    pub(crate) decisions: Vec<Stored<Decision>>,
    /// Indexes into `decisions`, by the symptom decided on.
    pub(crate) by_symptom: HashMap<String, Vec<usize>>,
    /// Messages that did not decode (the workers dead-lettered them too).
    pub(crate) unreadable: u64,
}

impl Log {
    /// Reads the analyze and plan streams of `source`.
    pub(crate) async fn load(source: &Source) -> Result<Self, ReplayError> {
        let mut log = Log::default();
        let mut unreadable = 0;
        source
            .each(Phase::Plan, None, |r| match Stored::from_record(r) {
                Some(d) => log.decisions.push(d),
                None => unreadable += 1,
            })
            .await?;
        source
            .each(Phase::Analyze, None, |r| match Stored::from_record(r) {
                Some(s) => log.symptoms.push(s),
                None => unreadable += 1,
            })
            .await?;
        for (i, d) in log.decisions.iter().enumerate() {
            log.by_symptom
                .entry(d.event.symptom_id.clone())
                .or_default()
                .push(i);
        }
        log.unreadable = unreadable;
        Ok(log)
    }

    /// The recorded decisions on `symptom_id`, each distinct message once (the same event under
    /// either fingerprint of its schema is one), in stream order.
    pub(crate) fn decisions_on(&self, symptom_id: &str) -> Vec<&Stored<Decision>> {
        let mut out: Vec<&Stored<Decision>> = Vec::new();
        for &i in self.by_symptom.get(symptom_id).into_iter().flatten() {
            let d = &self.decisions[i];
            if !out
                .iter()
                .any(|o| mapek_codec::same_message(&o.bytes, &d.bytes))
            {
                out.push(d);
            }
        }
        out
    }
}

/// The policies a replay can run, by hash, and the one for symptoms no decision names.
pub(crate) struct Policies {
    pub(crate) known: BTreeMap<String, Policy>,
    pub(crate) default: String,
}

impl Policies {
    /// Every recorded policy, `extra` ones and the built-in one; the default is the policy in
    /// force last, else the one most decisions name, else the built-in one. Fails if a
    /// decision names a policy none of these is.
    pub(crate) fn new(
        config: &RecordedConfig,
        log: &Log,
        extra: &[Policy],
    ) -> Result<Self, ReplayError> {
        let mut known = BTreeMap::new();
        let builtin = Policy::builtin();
        known.insert(builtin.hash().to_owned(), builtin);
        for (hash, text) in &config.policies {
            if let Ok(p) = Policy::parse(text)
                && p.hash() == hash
            {
                known.insert(hash.clone(), p);
            }
        }
        for p in extra {
            known.insert(p.hash().to_owned(), p.clone());
        }
        let mut named: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
        for d in &log.decisions {
            let e = named
                .entry(d.event.policy_hash.as_str())
                .or_insert((0, d.event.policy_name.as_str()));
            e.0 += 1;
        }
        if let Some((hash, (n, name))) = named.iter().find(|(h, _)| !known.contains_key(**h)) {
            return Err(ReplayError::Missing(format!(
                "{n} recorded decisions were taken under policy `{name}` ({}), whose text was \
                 never recorded in MAPEK_CONFIG: pass the policy file with --policy, or run \
                 plan workers that record their policy at start",
                &hash[..hash.len().min(12)]
            )));
        }
        let most = named.iter().max_by_key(|(_, (n, _))| *n).map(|(h, _)| *h);
        let default = config
            .current_policy()
            .filter(|h| known.contains_key(*h))
            .or(most)
            .unwrap_or(Policy::builtin().hash())
            .to_owned();
        Ok(Self { known, default })
    }
}

/// Feeds the recorded symptoms, partition by partition in stream order, through planners
/// running the policy each symptom's recorded decision names (or the current one), with the
/// knowledge that decision recorded; calls `each` with each symptom and what replay decides.
///
/// A partition whose recorded policy changes (the plan workers restarted with another) gets a
/// new planner that first folds the partition's earlier symptoms, as a restarted worker does.
pub(crate) fn replay_plan<'a>(
    log: &'a Log,
    policies: &Policies,
    mut each: impl FnMut(&'a Stored<Symptom>, Option<Decision>),
) {
    struct Part {
        hash: String,
        planner: Planner,
        seen: Vec<usize>,
    }
    let knowledge_for = |symptom: &Symptom, hash: &str| -> Box<dyn KnowledgeView> {
        log.decisions_on(&symptom.symptom_id)
            .into_iter()
            .find(|d| d.event.policy_hash == hash)
            .map(|d| Box::new(RecordedKnowledge::from_decision(&d.event)) as Box<dyn KnowledgeView>)
            .unwrap_or_else(|| Box::new(NoKnowledge))
    };
    let mut parts: BTreeMap<u32, Part> = BTreeMap::new();
    for (i, s) in log.symptoms.iter().enumerate() {
        let wanted = log
            .decisions_on(&s.event.symptom_id)
            .first()
            .map(|d| d.event.policy_hash.clone());
        let part = parts.entry(s.partition).or_insert_with(|| {
            let hash = wanted.clone().unwrap_or_else(|| policies.default.clone());
            Part {
                planner: Planner::new(policies.known[&hash].clone()),
                hash,
                seen: Vec::new(),
            }
        });
        if let Some(hash) = wanted
            && hash != part.hash
        {
            let mut planner = Planner::new(policies.known[&hash].clone());
            for &j in &part.seen {
                let earlier = &log.symptoms[j].event;
                planner.decide(earlier, knowledge_for(earlier, &hash).as_ref());
            }
            part.planner = planner;
            part.hash = hash;
        }
        let decided = part
            .planner
            .decide(&s.event, knowledge_for(&s.event, &part.hash).as_ref());
        part.seen.push(i);
        each(s, decided);
    }
}
