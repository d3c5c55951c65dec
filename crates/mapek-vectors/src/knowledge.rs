//! [`IndexKnowledge`]: the planner's [`KnowledgeView`] over an incident index.

use std::sync::Arc;

use mapek_domain::{KnowledgeView, Neighbour, Symptom};

use crate::incident::SimilarQuery;
use crate::index::IncidentIndex;

/// Past incidents like a symptom's, from the index: the `k` nearest of the same kind whose
/// outcome was judged before the symptom's time, the symptom's own incident left out, ties
/// broken by incident id. Only incidents whose outcome is known are ever returned.
///
/// The planner calls it synchronously from inside the async plan stage: the edge engine
/// answers on the calling thread; the server client needs a multi-threaded tokio runtime.
#[derive(Clone)]
pub struct IndexKnowledge {
    index: Arc<dyn IncidentIndex>,
}

impl std::fmt::Debug for IndexKnowledge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexKnowledge")
            .field("index", &self.index.location())
            .finish()
    }
}

impl IndexKnowledge {
    /// A view over `index`.
    pub fn new(index: Arc<dyn IncidentIndex>) -> Self {
        Self { index }
    }
}

impl KnowledgeView for IndexKnowledge {
    fn similar(&self, symptom: &Symptom, k: usize) -> Vec<Neighbour> {
        if k == 0 {
            return Vec::new();
        }
        match self
            .index
            .search_now(&SimilarQuery::for_symptom(symptom, k))
        {
            Ok(hits) => hits
                .iter()
                .filter_map(|h| h.incident.neighbour(h.score))
                .collect(),
            // The decision then records that it consulted nothing, so a replay still
            // reproduces it; the planner falls back to the policy's order.
            Err(e) => {
                tracing::warn!(
                    incident = %symptom.incident_id,
                    "deciding without past incidents: {e}"
                );
                Vec::new()
            }
        }
    }
}
