//! [`EdgeIndex`]: the incident index in process, on disk, with qdrant-edge.
//!
//! qdrant-edge is the Qdrant engine as a library: a shard in a directory (a write-ahead log
//! and segments), no server. Its API is synchronous; the async trait methods run it on
//! tokio's blocking pool, and [`IncidentIndex::search_now`] calls it directly (a search of
//! a few thousand points takes well under a millisecond).
//!
//! Small indexes are searched exactly. Once the incidents of a segment pass
//! [`INDEXING_THRESHOLD_KB`] of vectors, every write also builds that segment's HNSW graph
//! (with a subgraph per payload value, so a search filtered by kind walks its own kind), and a
//! search whose filter lets more than [`FULL_SCAN_THRESHOLD_KB`] of vectors through walks the
//! graph instead of scanning: approximate, and fast. ADR 0008 says why, and what it changes
//! for replay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use mapek_domain::plan::FEATURE_DIM;
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::external::uuid::Uuid;
use qdrant_edge::{
    Condition, CountRequest, CreateIndex, DEFAULT_VECTOR_NAME, Distance, EdgeConfigBuilder,
    EdgeOptimizersConfig, EdgeShard, EdgeVectorParams, FieldCondition, FieldIndexOperations,
    Filter, HnswIndexConfig, JsonPath, Match, NamedQuery, Payload, PayloadFieldSchema,
    PayloadSchemaType, PointId, PointInsertOperations, PointOperations, PointStructPersisted,
    QueryEnum, Range, ScoredPoint, SearchParams, SearchRequest, UpdateOperation, ValueVariants,
    VectorInternal, VectorStructInternal, VectorStructPersisted, WithPayloadInterface, WithVector,
};

use crate::error::VectorError;
use crate::incident::{
    Incident, Offsets, Similar, SimilarQuery, offsets_point_id, point_id, settle_hits,
};
use crate::index::{
    IncidentIndex, from_payload, offsets_from_payload, offsets_payload, to_payload,
};

/// A segment whose vectors pass this size (KB) gets an HNSW graph: about 15 000 incidents
/// of 17 features (68 bytes each). Below it, a segment is always searched exactly.
pub const INDEXING_THRESHOLD_KB: usize = 1_000;

/// In a segment with a graph, a search whose filter lets fewer vectors than this (KB) through
/// scans them exactly instead (about 5 000 incidents, a millisecond at most here); above it,
/// the search walks the graph.
pub const FULL_SCAN_THRESHOLD_KB: usize = 340;

/// The beam of a graph search: how many candidates it keeps. Higher finds the exact
/// neighbours more often and takes longer; `benches/similar_incidents.rs` measures both.
pub const HNSW_EF: usize = 128;

/// At most this many incidents tied at the boundary score are gathered to settle the tie by
/// incident id (see [`IncidentIndex::search_now`]).
pub const MAX_TIES: usize = 256;

/// When an [`EdgeIndex`] builds graphs and how it searches them. The default is the
/// constants of this module; tests lower the thresholds to make a small index behave as a
/// large one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// [`INDEXING_THRESHOLD_KB`].
    pub indexing_threshold_kb: usize,
    /// [`FULL_SCAN_THRESHOLD_KB`].
    pub full_scan_threshold_kb: usize,
    /// [`HNSW_EF`].
    pub hnsw_ef: usize,
    /// How many segments the optimizer merges the index into; 0 lets qdrant-edge choose from
    /// the CPU count (2 on up to 5 cores). A search visits every segment.
    pub segments: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            indexing_threshold_kb: INDEXING_THRESHOLD_KB,
            full_scan_threshold_kb: FULL_SCAN_THRESHOLD_KB,
            hnsw_ef: HNSW_EF,
            segments: 0,
        }
    }
}

impl Tuning {
    /// The graph a segment over the indexing threshold gets: qdrant's defaults (16 links a
    /// point, a beam of 100 while building), the full-scan threshold, and a subgraph per
    /// value of the indexed payload fields (`kind`), so a search filtered by kind walks a
    /// connected graph of its own kind.
    fn hnsw(&self) -> HnswIndexConfig {
        HnswIndexConfig {
            m: 16,
            ef_construct: 100,
            full_scan_threshold: self.full_scan_threshold_kb,
            max_indexing_threads: 0,
            on_disk: Some(false),
            payload_m: Some(16),
            inline_storage: None,
        }
    }

    fn optimizers(&self) -> EdgeOptimizersConfig {
        EdgeOptimizersConfig {
            indexing_threshold: Some(self.indexing_threshold_kb),
            default_segment_number: (self.segments > 0).then_some(self.segments),
            ..EdgeOptimizersConfig::default()
        }
    }
}

/// A stored point: its payload and, if it has one, its dense vector.
type Stored = (Payload, Option<Vec<f32>>);

/// The incident index in a directory, with qdrant-edge.
#[derive(Clone)]
pub struct EdgeIndex {
    shard: Arc<EdgeShard>,
    at: String,
    tuning: Tuning,
    /// Writes leave optimizing for later ([`IncidentIndex::hold_optimizing`]).
    holding: Arc<AtomicBool>,
}

impl std::fmt::Debug for EdgeIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeIndex").field("at", &self.at).finish()
    }
}

impl EdgeIndex {
    /// Opens the index in `dir`, creating it (and the directory) if it does not exist.
    pub fn open(dir: &Path) -> Result<Self, VectorError> {
        Self::open_tuned(dir, Tuning::default())
    }

    /// [`EdgeIndex::open`] with other thresholds than the default ones.
    pub fn open_tuned(dir: &Path, tuning: Tuning) -> Result<Self, VectorError> {
        let at = dir.display().to_string();
        let failed = |detail: String| VectorError::Open {
            at: at.clone(),
            detail,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| failed(format!("cannot create the directory: {e}")))?;
        let shard = if dir.join("edge_config.json").exists() {
            EdgeShard::load(dir, None).map_err(|e| {
                let e = e.to_string();
                match in_use(&e) {
                    Some(why) => failed(why),
                    None => failed(format!(
                        "{e}; is it an incident index? Move it away to start a new one"
                    )),
                }
            })?
        } else {
            let config = EdgeConfigBuilder::new()
                .vector(
                    DEFAULT_VECTOR_NAME,
                    EdgeVectorParams::builder(FEATURE_DIM, Distance::Cosine).build(),
                )
                .hnsw_config(tuning.hnsw())
                .optimizers(tuning.optimizers())
                .build();
            let shard = EdgeShard::new(dir, config).map_err(|e| {
                let e = e.to_string();
                failed(in_use(&e).unwrap_or(e))
            })?;
            // Payload indexes for what every search filters on, so a search of a large index
            // visits only the candidates.
            for (field, ty) in [
                ("kind", PayloadSchemaType::Keyword),
                ("ready", PayloadSchemaType::Bool),
                ("outcome_ms", PayloadSchemaType::Float),
            ] {
                let op = UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(
                    CreateIndex {
                        field_name: key(field),
                        field_schema: Some(PayloadFieldSchema::FieldType(ty)),
                    },
                ));
                shard
                    .update(op)
                    .map_err(|e| failed(format!("cannot index {field}: {e}")))?;
            }
            shard
        };
        let size = shard
            .config()
            .vectors
            .get(DEFAULT_VECTOR_NAME)
            .map(|v| v.size);
        if size != Some(FEATURE_DIM) {
            return Err(failed(format!(
                "its vectors have {size:?} dimensions, this mapek's features {FEATURE_DIM}: \
                 move it away and run `mapek knowledge rebuild`"
            )));
        }
        // An index made by an earlier mapek (exact search only) takes the graph settings; its
        // segments get their graphs at the next write that finds them due.
        if shard.config().hnsw_config != tuning.hnsw() {
            shard
                .set_hnsw_config(tuning.hnsw())
                .map_err(|e| failed(format!("cannot set its graph settings: {e}")))?;
        }
        if shard.config().optimizers != tuning.optimizers() {
            shard
                .set_optimizers_config(tuning.optimizers())
                .map_err(|e| failed(format!("cannot set its optimizer settings: {e}")))?;
        }
        Ok(Self {
            shard: Arc::new(shard),
            at,
            tuning,
            holding: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The default location under a data directory: `<data_dir>/incidents`.
    pub fn default_dir(data_dir: &Path) -> PathBuf {
        data_dir.join("incidents")
    }

    /// The engine itself, for benchmarks that compare with its raw search.
    pub fn shard(&self) -> &EdgeShard {
        &self.shard
    }

    /// How many segments the index is in now (a search visits each).
    pub fn segments(&self) -> usize {
        self.shard.info().segments_count
    }

    /// How many incident vectors are in segments with a graph (searched approximately once a
    /// filter lets enough of them through); 0 for an index searched exactly.
    pub fn indexed_vectors(&self) -> usize {
        self.shard.info().indexed_vectors_count
    }

    /// [`IncidentIndex::search_now`] without the graph: every candidate the filter lets
    /// through is compared. The same answer for the same incidents, whatever graphs were
    /// built; slower over a large index (what a backtest that must not miss a neighbour, or
    /// a benchmark of recall, wants).
    pub fn search_exact(&self, query: &SimilarQuery) -> Result<Vec<Similar>, VectorError> {
        self.search_with(query, true)
    }

    fn search_with(&self, query: &SimilarQuery, exact: bool) -> Result<Vec<Similar>, VectorError> {
        if query.k == 0 {
            return Ok(Vec::new());
        }
        let request = |limit: usize, score_threshold: Option<f32>| {
            let mut r = self.request(query);
            r.limit = limit;
            r.score_threshold = score_threshold;
            if exact {
                r.params = Some(SearchParams {
                    exact: true,
                    ..SearchParams::default()
                });
            }
            r
        };
        let fetch = query.fetch();
        let mut found = self
            .shard
            .search(request(fetch, None))
            .map_err(|e| self.err(e))?;
        // The engine returns `fetch` points; when the last of them scores as the k+1-th, more
        // incidents may tie with it beyond what it returned, and which ones it returned was its
        // choice. An exact search gathers every incident at that score or better (up to
        // MAX_TIES), so the tie is settled by incident id whatever the engine's order. A graph
        // search is approximate anyway and is left as it is.
        let last = found.last().map(|p| p.score);
        let ties_run_on = found.len() == fetch && found.get(query.k).map(|p| p.score) == last;
        if ties_run_on && (exact || self.indexed_vectors() == 0) {
            // A hair below, so float rounding between two searches cannot drop a tie; what
            // comes in only by the hair sorts after the ties.
            found = self
                .shard
                .search(request(MAX_TIES, last.map(|s| s - 1e-6)))
                .map_err(|e| self.err(e))?;
        }
        self.hits(found, query)
    }

    /// Builds the HNSW graphs and merges the segments that are due, blocking; nothing when none
    /// is. Every write does it, so only a benchmark or a bulk load needs to call it.
    pub fn optimize(&self) -> Result<(), VectorError> {
        self.shard.optimize().map(|_| ()).map_err(|e| self.err(e))
    }

    fn err(&self, e: impl std::fmt::Display) -> VectorError {
        VectorError::Index {
            at: self.at.clone(),
            detail: e.to_string(),
        }
    }

    /// Runs `f` on the blocking pool.
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EdgeIndex) -> Result<T, VectorError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, VectorError>> {
        let this = self.clone();
        Box::pin(async move {
            let at = this.at.clone();
            tokio::task::spawn_blocking(move || f(&this))
                .await
                .map_err(|e| VectorError::Index {
                    at,
                    detail: format!("the index task failed: {e}"),
                })?
        })
    }

    fn write_now(&self, incidents: Vec<Incident>, offsets: Offsets) -> Result<(), VectorError> {
        let mut points: Vec<PointStructPersisted> = incidents
            .iter()
            .map(|i| point(&point_id(&i.incident_id), i.vector(), to_payload(i)))
            .collect();
        points.push(point(
            &offsets_point_id(),
            placeholder(),
            offsets_payload(offsets),
        ));
        let op = UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            PointInsertOperations::PointsList(points),
        ));
        self.shard.update(op).map_err(|e| self.err(e))?;
        if self.holding.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Planning finds nothing to do in microseconds; when a segment has grown past the
        // threshold this builds its graph (seconds, for tens of thousands of incidents), while
        // searches go on against the segments as they were.
        self.optimize()
    }

    /// The request the index sends to the engine for `query`: exposed for the benchmark's
    /// raw baseline.
    pub fn request(&self, query: &SimilarQuery) -> SearchRequest {
        let mut must = vec![field_match("ready", ValueVariants::Bool(true))];
        if let Some(kind) = query.kind {
            must.push(field_match(
                "kind",
                ValueVariants::String(kind.as_str().to_owned()),
            ));
        }
        if let Some(before) = query.known_before_ms {
            must.push(Condition::Field(FieldCondition::new_range(
                key("outcome_ms"),
                Range {
                    lt: Some(OrderedFloat(before as f64)),
                    gt: None,
                    gte: None,
                    lte: None,
                },
            )));
        }
        SearchRequest {
            query: QueryEnum::Nearest(NamedQuery {
                query: VectorInternal::Dense(query.vector.clone()),
                using: None,
            }),
            filter: Some(Filter {
                must: Some(must),
                ..Filter::default()
            }),
            params: Some(SearchParams {
                hnsw_ef: Some(self.tuning.hnsw_ef),
                ..SearchParams::default()
            }),
            limit: query.fetch(),
            offset: 0,
            with_payload: Some(WithPayloadInterface::Bool(true)),
            with_vector: None,
            score_threshold: None,
        }
    }

    fn hits(
        &self,
        found: Vec<ScoredPoint>,
        query: &SimilarQuery,
    ) -> Result<Vec<Similar>, VectorError> {
        let mut hits = Vec::with_capacity(found.len());
        for p in found {
            let payload = p.payload.map(|p| p.0).unwrap_or_default();
            let incident = from_payload(&self.at, &p.id.to_string(), payload, None)?;
            hits.push(Similar {
                score: f64::from(p.score),
                incident,
            });
        }
        Ok(settle_hits(hits, query))
    }

    fn get_now(&self, id: &str) -> Result<Option<Stored>, VectorError> {
        let found = self
            .shard
            .retrieve(
                &[uuid(id)],
                Some(WithPayloadInterface::Bool(true)),
                Some(WithVector::Bool(true)),
            )
            .map_err(|e| self.err(e))?;
        Ok(found.into_iter().next().map(|r| {
            let vector = r.vector.and_then(dense);
            (r.payload.unwrap_or_default(), vector)
        }))
    }
}

impl IncidentIndex for EdgeIndex {
    fn location(&self) -> &str {
        &self.at
    }

    fn write(
        &self,
        incidents: Vec<Incident>,
        offsets: Offsets,
    ) -> BoxFuture<'_, Result<(), VectorError>> {
        self.blocking(move |me| me.write_now(incidents, offsets))
    }

    fn search(&self, query: SimilarQuery) -> BoxFuture<'_, Result<Vec<Similar>, VectorError>> {
        self.blocking(move |me| me.search_now(&query))
    }

    fn search_now(&self, query: &SimilarQuery) -> Result<Vec<Similar>, VectorError> {
        self.search_with(query, false)
    }

    fn get(&self, incident_id: &str) -> BoxFuture<'_, Result<Option<Incident>, VectorError>> {
        let id = point_id(incident_id);
        self.blocking(move |me| match me.get_now(&id)? {
            Some((payload, vector)) => from_payload(&me.at, &id, payload.0, vector).map(Some),
            None => Ok(None),
        })
    }

    fn offsets(&self) -> BoxFuture<'_, Result<Offsets, VectorError>> {
        self.blocking(|me| match me.get_now(&offsets_point_id())? {
            Some((payload, _)) => offsets_from_payload(&me.at, &payload.0),
            None => Ok(Offsets::default()),
        })
    }

    fn count(&self) -> BoxFuture<'_, Result<u64, VectorError>> {
        self.blocking(|me| {
            let all = me
                .shard
                .count(CountRequest {
                    filter: None,
                    exact: true,
                })
                .map_err(|e| me.err(e))?;
            let offsets = usize::from(me.get_now(&offsets_point_id())?.is_some());
            Ok(all.saturating_sub(offsets) as u64)
        })
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), VectorError>> {
        self.blocking(|me| {
            let op = UpdateOperation::PointOperation(PointOperations::DeletePointsByFilter(
                Filter::default(),
            ));
            me.shard.update(op).map_err(|e| me.err(e))
        })
    }

    fn hold_optimizing(&self, hold: bool) -> BoxFuture<'_, Result<(), VectorError>> {
        self.holding.store(hold, Ordering::Relaxed);
        if hold {
            Box::pin(async { Ok(()) })
        } else {
            self.blocking(|me| me.optimize())
        }
    }
}

fn field_match(key: &str, value: ValueVariants) -> Condition {
    Condition::Field(FieldCondition::new_match(
        self::key(key),
        Match::from(value),
    ))
}

/// A payload key. Ours are plain names, which always parse.
fn key(name: &str) -> JsonPath {
    name.parse()
        .expect("a plain field name is a valid JSON path")
}

fn uuid(id: &str) -> PointId {
    // Our ids are always well-formed UUIDs (see `point_id`).
    PointId::Uuid(Uuid::parse_str(id).unwrap_or_default())
}

fn point(
    id: &str,
    vector: Vec<f32>,
    payload: serde_json::Map<String, serde_json::Value>,
) -> PointStructPersisted {
    PointStructPersisted {
        id: uuid(id),
        vector: VectorStructPersisted::from(VectorStructInternal::Single(vector)),
        payload: Some(Payload(payload)),
    }
}

fn placeholder() -> Vec<f32> {
    let mut v = vec![0.0; FEATURE_DIM];
    v[0] = 1.0;
    v
}

fn dense(v: VectorStructInternal) -> Option<Vec<f32>> {
    match v {
        VectorStructInternal::Single(v) => Some(v),
        VectorStructInternal::Named(mut m) => match m.remove(DEFAULT_VECTOR_NAME) {
            Some(VectorInternal::Dense(v)) => Some(v),
            _ => None,
        },
        VectorStructInternal::MultiDense(_) => None,
    }
}

/// What to do when qdrant-edge could not lock the index's write-ahead log (`error`): another
/// process has it open, and the embedded index allows one at a time.
fn in_use(error: &str) -> Option<String> {
    error.contains("WAL").then(|| {
        format!(
            "{error}. Another process (`mapek run`?) has it open, and the embedded index \
             allows one at a time: stop it, give each process its own MAPEK_DATA_DIR, or \
             share a Qdrant server through QDRANT_URL"
        )
    })
}
