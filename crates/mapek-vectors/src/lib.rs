//! mapek's incident index: one point per incident in Qdrant, its feature vector and what was
//! done about it, and the planner's knowledge view over it.
//!
//! The index is a projection of the log: [`project`] reads the analyze, plan and knowledge
//! streams and folds each incident's opening symptom, decisions and outcome into its point,
//! storing the last stream sequence it applied from each stream in the same update, so a
//! restart resumes exactly where it stopped. [`IndexKnowledge`] answers the planner's
//! question, "which past incidents were like this one, and what worked?", from the incidents
//! whose outcome is known. `docs/knowledge-vectors.md` is the manual.
//!
//! # Layout
//! - [`incident`]: [`Incident`], a point's content and how events fold into it; the
//!   [`SimilarQuery`] searches make; [`Offsets`]; deterministic point ids.
//! - [`index`]: [`IncidentIndex`], the one trait over both engines.
//! - [`edge`]: [`EdgeIndex`], qdrant-edge in process, on disk (the default).
//! - [`server`]: [`ServerIndex`], a Qdrant server through qdrant-client (`QDRANT_URL`).
//! - [`project`](mod@project): the projection from the streams, and [`rebuild`].
//! - [`knowledge`]: [`IndexKnowledge`], the planner's [`KnowledgeView`] over an index.
//! - [`error`]: the crate's error, [`VectorError`].

pub mod edge;
pub mod error;
pub mod incident;
pub mod index;
pub mod knowledge;
pub mod project;
pub mod server;

use std::path::Path;
use std::sync::Arc;

pub use edge::{EdgeIndex, Tuning};
pub use error::VectorError;
pub use incident::{Incident, Offsets, Similar, SimilarQuery, point_id};
pub use index::IncidentIndex;
pub use knowledge::IndexKnowledge;
pub use mapek_domain::KnowledgeView;
pub use project::{ProjectStats, project, project_with, rebuild};
pub use server::ServerIndex;

/// Opens the incident index: the Qdrant server at `qdrant_url` when one is given, else
/// qdrant-edge under `data_dir` (`<data_dir>/incidents`).
pub async fn open(
    qdrant_url: Option<&str>,
    data_dir: &Path,
) -> Result<Arc<dyn IncidentIndex>, VectorError> {
    match qdrant_url {
        Some(url) => Ok(Arc::new(
            ServerIndex::connect(url, server::COLLECTION).await?,
        )),
        None => {
            let dir = EdgeIndex::default_dir(data_dir);
            let index = tokio::task::spawn_blocking(move || EdgeIndex::open(&dir))
                .await
                .map_err(|e| VectorError::Open {
                    at: data_dir.display().to_string(),
                    detail: e.to_string(),
                })??;
            Ok(Arc::new(index))
        }
    }
}
