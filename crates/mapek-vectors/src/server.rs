//! [`ServerIndex`]: the incident index on a Qdrant server, through qdrant-client (gRPC).
//!
//! The same points, payloads and filters as [`crate::EdgeIndex`]; a collection named
//! [`COLLECTION`] holds them. Writes wait for the server to apply them (`wait = true`), so
//! the offsets a write stores are never ahead of the points.

use std::collections::HashMap;

use futures::future::BoxFuture;
use mapek_domain::plan::FEATURE_DIM;
use qdrant_client::Qdrant;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::vector_output::Vector;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    Distance, FieldType, Filter, GetPointsBuilder, HnswConfigDiffBuilder,
    OptimizersConfigDiffBuilder, PointId, PointStruct, QueryPointsBuilder, Range,
    SearchParamsBuilder, UpsertPointsBuilder, Value, VectorParamsBuilder, VectorsOutput,
};

use crate::edge::{FULL_SCAN_THRESHOLD_KB, HNSW_EF, INDEXING_THRESHOLD_KB};
use crate::error::VectorError;
use crate::incident::{
    Incident, Offsets, Similar, SimilarQuery, offsets_point_id, point_id, settle_hits,
};
use crate::index::{
    IncidentIndex, from_payload, offsets_from_payload, offsets_payload, to_payload,
};

/// A stored point: its payload as JSON and, if it has one, its dense vector.
type Stored = (serde_json::Map<String, serde_json::Value>, Option<Vec<f32>>);

/// The collection the incidents live in.
pub const COLLECTION: &str = "mapek_incidents";

/// The incident index on a Qdrant server.
pub struct ServerIndex {
    client: Qdrant,
    collection: String,
    at: String,
}

impl std::fmt::Debug for ServerIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIndex").field("at", &self.at).finish()
    }
}

impl ServerIndex {
    /// Connects to the server at `url` (gRPC, usually port 6334) and creates `collection`
    /// with its payload indexes if it does not exist.
    pub async fn connect(url: &str, collection: &str) -> Result<Self, VectorError> {
        let at = format!("{url} (collection {collection})");
        let failed = |detail: String| VectorError::Open {
            at: at.clone(),
            detail,
        };
        let client = Qdrant::from_url(url)
            .skip_compatibility_check()
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let exists = client.collection_exists(collection).await.map_err(|e| {
            failed(format!(
                "{e}. Is Qdrant running there? Set QDRANT_URL to its gRPC address \
                 (port 6334), or unset it to use the embedded index"
            ))
        })?;
        let me = Self {
            client,
            collection: collection.to_owned(),
            at: at.clone(),
        };
        if !exists {
            me.create().await.map_err(|e| failed(e.to_string()))?;
        }
        Ok(me)
    }

    async fn create(&self) -> Result<(), qdrant_client::QdrantError> {
        self.client
            .create_collection(
                // The graph settings of the embedded index (see `crate::edge`), so both
                // engines search alike.
                CreateCollectionBuilder::new(&self.collection)
                    .vectors_config(VectorParamsBuilder::new(
                        FEATURE_DIM as u64,
                        Distance::Cosine,
                    ))
                    .hnsw_config(
                        HnswConfigDiffBuilder::default()
                            .full_scan_threshold(FULL_SCAN_THRESHOLD_KB as u64)
                            .payload_m(16),
                    )
                    .optimizers_config(
                        OptimizersConfigDiffBuilder::default()
                            .indexing_threshold(INDEXING_THRESHOLD_KB as u64),
                    ),
            )
            .await?;
        for (field, ty) in [
            ("kind", FieldType::Keyword),
            ("ready", FieldType::Bool),
            ("outcome_ms", FieldType::Float),
        ] {
            self.client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(&self.collection, field, ty).wait(true),
                )
                .await?;
        }
        Ok(())
    }

    /// Deletes the collection and every incident in it (the index is unusable afterwards;
    /// [`IncidentIndex::clear`] empties it instead).
    pub async fn delete_collection(&self) -> Result<(), VectorError> {
        self.client
            .delete_collection(&self.collection)
            .await
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn err(&self, e: impl std::fmt::Display) -> VectorError {
        VectorError::Index {
            at: self.at.clone(),
            detail: e.to_string(),
        }
    }

    async fn write_async(
        &self,
        incidents: Vec<Incident>,
        offsets: Offsets,
    ) -> Result<(), VectorError> {
        let mut points: Vec<PointStruct> = incidents
            .iter()
            .map(|i| PointStruct::new(point_id(&i.incident_id), i.vector(), to_payload(i)))
            .collect();
        let mut placeholder = vec![0.0f32; FEATURE_DIM];
        placeholder[0] = 1.0;
        points.push(PointStruct::new(
            offsets_point_id(),
            placeholder,
            offsets_payload(offsets),
        ));
        self.client
            .upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true))
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn search_async(&self, query: &SimilarQuery) -> Result<Vec<Similar>, VectorError> {
        if query.k == 0 {
            return Ok(Vec::new());
        }
        let mut must = vec![Condition::matches("ready", true)];
        if let Some(kind) = query.kind {
            must.push(Condition::matches("kind", kind.as_str().to_owned()));
        }
        if let Some(before) = query.known_before_ms {
            must.push(Condition::range(
                "outcome_ms",
                Range {
                    lt: Some(before as f64),
                    ..Range::default()
                },
            ));
        }
        let found = self
            .client
            .query(
                QueryPointsBuilder::new(&self.collection)
                    .query(query.vector.clone())
                    .filter(Filter::must(must))
                    .limit(query.fetch() as u64)
                    .params(SearchParamsBuilder::default().hnsw_ef(HNSW_EF as u64))
                    .with_payload(true),
            )
            .await
            .map_err(|e| self.err(e))?;
        let mut hits = Vec::with_capacity(found.result.len());
        for p in found.result {
            let incident = from_payload(&self.at, &id_text(p.id), json(p.payload), None)?;
            hits.push(Similar {
                score: f64::from(p.score),
                incident,
            });
        }
        Ok(settle_hits(hits, query))
    }

    async fn get_raw(&self, id: &str) -> Result<Option<Stored>, VectorError> {
        let found = self
            .client
            .get_points(
                GetPointsBuilder::new(&self.collection, vec![PointId::from(id)])
                    .with_payload(true)
                    .with_vectors(true),
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(found
            .result
            .into_iter()
            .next()
            .map(|p| (json(p.payload), p.vectors.and_then(dense))))
    }
}

impl IncidentIndex for ServerIndex {
    fn location(&self) -> &str {
        &self.at
    }

    fn write(
        &self,
        incidents: Vec<Incident>,
        offsets: Offsets,
    ) -> BoxFuture<'_, Result<(), VectorError>> {
        Box::pin(self.write_async(incidents, offsets))
    }

    fn search(&self, query: SimilarQuery) -> BoxFuture<'_, Result<Vec<Similar>, VectorError>> {
        Box::pin(async move { self.search_async(&query).await })
    }

    fn search_now(&self, query: &SimilarQuery) -> Result<Vec<Similar>, VectorError> {
        let handle = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
            .ok_or_else(|| {
                self.err(
                    "a search of a Qdrant server from synchronous code (the planner) needs a \
                     multi-threaded tokio runtime",
                )
            })?;
        tokio::task::block_in_place(|| handle.block_on(self.search_async(query)))
    }

    fn get(&self, incident_id: &str) -> BoxFuture<'_, Result<Option<Incident>, VectorError>> {
        let id = point_id(incident_id);
        Box::pin(async move {
            match self.get_raw(&id).await? {
                Some((payload, vector)) => from_payload(&self.at, &id, payload, vector).map(Some),
                None => Ok(None),
            }
        })
    }

    fn offsets(&self) -> BoxFuture<'_, Result<Offsets, VectorError>> {
        Box::pin(async move {
            match self.get_raw(&offsets_point_id()).await? {
                Some((payload, _)) => offsets_from_payload(&self.at, &payload),
                None => Ok(Offsets::default()),
            }
        })
    }

    fn count(&self) -> BoxFuture<'_, Result<u64, VectorError>> {
        Box::pin(async move {
            let n = self
                .client
                .count(CountPointsBuilder::new(&self.collection).exact(true))
                .await
                .map_err(|e| self.err(e))?
                .result
                .map_or(0, |r| r.count);
            let offsets = u64::from(self.get_raw(&offsets_point_id()).await?.is_some());
            Ok(n.saturating_sub(offsets))
        })
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), VectorError>> {
        Box::pin(async move {
            self.delete_collection().await?;
            self.create().await.map_err(|e| self.err(e))
        })
    }
}

fn json(payload: HashMap<String, Value>) -> serde_json::Map<String, serde_json::Value> {
    qdrant_client::Payload::from(payload).into()
}

fn id_text(id: Option<PointId>) -> String {
    match id.and_then(|i| i.point_id_options) {
        Some(PointIdOptions::Uuid(u)) => u,
        Some(PointIdOptions::Num(n)) => n.to_string(),
        None => String::new(),
    }
}

fn dense(v: VectorsOutput) -> Option<Vec<f32>> {
    match v.get_vector()? {
        Vector::Dense(d) => Some(d.data),
        _ => None,
    }
}
