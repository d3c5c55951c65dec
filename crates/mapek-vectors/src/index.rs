//! [`IncidentIndex`]: the one trait over both Qdrant engines.

use futures::future::BoxFuture;

use crate::error::VectorError;
use crate::incident::{Incident, Offsets, Similar, SimilarQuery};

/// A store of incident points: qdrant-edge on disk ([`crate::EdgeIndex`]) or a Qdrant server
/// ([`crate::ServerIndex`]).
///
/// Object safe (futures are boxed) so the CLI picks the engine at run time and hands out an
/// `Arc<dyn IncidentIndex>`.
pub trait IncidentIndex: Send + Sync {
    /// Where it is: the directory or the URL and collection, for messages.
    fn location(&self) -> &str;

    /// Upserts `incidents` and the projection's `offsets` in one update, so a crash stores
    /// both or neither.
    fn write(
        &self,
        incidents: Vec<Incident>,
        offsets: Offsets,
    ) -> BoxFuture<'_, Result<(), VectorError>>;

    /// The nearest incidents the planner may use (`ready`), filtered as `query` says, best
    /// first, ties by incident id.
    fn search(&self, query: SimilarQuery) -> BoxFuture<'_, Result<Vec<Similar>, VectorError>>;

    /// [`IncidentIndex::search`], from synchronous code (the planner's
    /// [`KnowledgeView`](mapek_domain::KnowledgeView)). The edge engine answers on the calling
    /// thread; the server client blocks it in place, which needs a multi-threaded runtime.
    fn search_now(&self, query: &SimilarQuery) -> Result<Vec<Similar>, VectorError>;

    /// The incident `incident_id`, with its features, whether ready or not.
    fn get(&self, incident_id: &str) -> BoxFuture<'_, Result<Option<Incident>, VectorError>>;

    /// The offsets stored by the last [`IncidentIndex::write`]; zero for a new index.
    fn offsets(&self) -> BoxFuture<'_, Result<Offsets, VectorError>>;

    /// How many incident points it holds (ready or not).
    fn count(&self) -> BoxFuture<'_, Result<u64, VectorError>>;

    /// Removes every point, offsets included: the next projection starts from the log's
    /// beginning.
    fn clear(&self) -> BoxFuture<'_, Result<(), VectorError>>;

    /// With `true`, writes stop building graphs and merging segments as they pass the
    /// thresholds, so that a rebuild, which writes everything at once, builds each graph once
    /// at the end instead of again at every merge; `false` resumes and builds what is due
    /// before it returns. Searches meanwhile are exact where no graph is built yet. A Qdrant
    /// server optimizes in the background on its own: the default does nothing.
    fn hold_optimizing(&self, hold: bool) -> BoxFuture<'_, Result<(), VectorError>> {
        let _ = hold;
        Box::pin(async { Ok(()) })
    }
}

/// The payload of `incident` as a JSON object.
pub(crate) fn to_payload(incident: &Incident) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(incident) {
        Ok(serde_json::Value::Object(map)) => map,
        // A struct with named fields always serialises to an object.
        _ => serde_json::Map::new(),
    }
}

/// The payload of the offsets point.
pub(crate) fn offsets_payload(offsets: Offsets) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    map.insert("offsets".into(), serde_json::json!(offsets));
    map
}

/// Reads an incident back from its payload and vector.
pub(crate) fn from_payload(
    at: &str,
    point: &str,
    payload: serde_json::Map<String, serde_json::Value>,
    vector: Option<Vec<f32>>,
) -> Result<Incident, VectorError> {
    let mut incident: Incident = serde_json::from_value(serde_json::Value::Object(payload))
        .map_err(|e| VectorError::Payload {
            at: at.to_owned(),
            point: point.to_owned(),
            detail: e.to_string(),
        })?;
    // The placeholder vector of an incident not yet opened is not its features.
    if incident.opened_ms.is_some() {
        incident.features = vector.unwrap_or_default();
    }
    Ok(incident)
}

/// Reads the offsets back from the offsets point's payload.
pub(crate) fn offsets_from_payload(
    at: &str,
    payload: &serde_json::Map<String, serde_json::Value>,
) -> Result<Offsets, VectorError> {
    let value = payload.get("offsets").cloned().unwrap_or_default();
    serde_json::from_value(value).map_err(|e| VectorError::Payload {
        at: at.to_owned(),
        point: crate::incident::offsets_point_id(),
        detail: e.to_string(),
    })
}
