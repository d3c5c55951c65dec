//! [`ReadModel`]: the SQL read model, Postgres or SQLite through the same queries.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::KnowledgeError;
use crate::error::redact;

/// Which engine holds the read model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Postgres: the production read model, shared by every process.
    Postgres,
    /// SQLite: a file on one machine, the embedded default.
    Sqlite,
}

impl Backend {
    /// The engine a read model at `url_or_path` is in: Postgres for a `postgres://` or
    /// `postgresql://` URL, SQLite for anything else.
    pub fn of(url_or_path: &str) -> Self {
        let s = url_or_path.trim();
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// The SQL read model: a pool of connections to Postgres or SQLite.
///
/// Cloning is cheap and shares the pool.
#[derive(Clone, Debug)]
pub struct ReadModel {
    pool: AnyPool,
    url: String,
    backend: Backend,
}

/// The streams a process projects at once unless told otherwise: the incidents' four and
/// telemetry's one.
const DEFAULT_WRITERS: u32 = 5;

/// Connections of a Postgres pool kept for the process's readers beside its writers.
const READERS: u32 = 3;

/// The tables of the read model, emptied by [`ReadModel::reset`].
pub const TABLES: [&str; 7] = [
    "nodes",
    "incidents",
    "symptoms",
    "decisions",
    "actions",
    "outcomes",
    "projection_offsets",
];

impl ReadModel {
    /// Connects to `url_or_path`: a `postgres://` or `postgresql://` URL, a `sqlite:` URL,
    /// or the path of a SQLite file (created with its directory if missing).
    pub async fn connect(url_or_path: &str) -> Result<Self, KnowledgeError> {
        Self::connect_for(url_or_path, DEFAULT_WRITERS).await
    }

    /// [`ReadModel::connect`] for a process whose projections write up to `writers` streams
    /// at once, each holding a connection for its transaction: a Postgres pool of that many
    /// and three more for readers (at least 8), opened as they are needed.
    pub async fn connect_for(url_or_path: &str, writers: u32) -> Result<Self, KnowledgeError> {
        sqlx::any::install_default_drivers();
        let (url, backend) = normalise(url_or_path)?;
        let shown = redact(&url);
        // No ping before each use: a projection retries a failed transaction anyway, and the
        // ping would add a round trip to every batch.
        let options = AnyPoolOptions::new()
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false);
        let options = match backend {
            Backend::Postgres => options.max_connections((writers + READERS).max(8)),
            // One writer at a time is all SQLite allows: a single connection queues writers
            // in the pool instead of failing them with "database is locked"; WAL lets other
            // processes (`mapek status`) read meanwhile.
            // Waiting for the one connection is queueing, not a failure: a long wait.
            Backend::Sqlite => options
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(60))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                        Ok(())
                    })
                }),
        };
        let pool = options
            .connect(&url)
            .await
            .map_err(|e| KnowledgeError::Connect {
                url: shown.clone(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            pool,
            url: shown,
            backend,
        })
    }

    /// Brings the schema up to date (the migrations in the crate's `migrations/`).
    pub async fn migrate(&self) -> Result<(), KnowledgeError> {
        sqlx::migrate!("./migrations")
            .run(&self.pool)
            .await
            .map_err(|e| KnowledgeError::Migrate {
                url: self.url.clone(),
                detail: e.to_string(),
            })
    }

    /// Empties every table, offsets included, in one transaction: the projections then
    /// start again from the beginning of the log.
    pub async fn reset(&self) -> Result<(), KnowledgeError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.query_failed("emptying", e))?;
        for table in TABLES {
            sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&mut *tx)
                .await
                .map_err(|e| self.query_failed("emptying", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| self.query_failed("emptying", e))
    }

    /// The last stream sequence each projection applied, by stream name.
    pub async fn offsets(&self) -> Result<Vec<(String, u64)>, KnowledgeError> {
        let rows = sqlx::query("SELECT stream, last_seq FROM projection_offsets ORDER BY stream")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.query_failed("reading the offsets", e))?;
        rows.iter()
            .map(|r| Ok((text(r, 0)?, int(r, 1)? as u64)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.query_failed("reading the offsets", e))
    }

    /// Every row of every table as text, in key order: two read models hold the same
    /// knowledge exactly when their snapshots are equal (tests compare Postgres with
    /// SQLite, and a crashed-and-resumed projection with a rebuild).
    pub async fn snapshot(&self) -> Result<Vec<String>, KnowledgeError> {
        let mut out = Vec::new();
        for table in TABLES {
            let rows = sqlx::query(&format!("SELECT * FROM {table} ORDER BY 1"))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.query_failed("taking a snapshot", e))?;
            for row in rows {
                let cells: Vec<String> = (0..row.len()).map(|i| cell(&row, i)).collect();
                out.push(format!("{table}: {}", cells.join(" | ")));
            }
        }
        Ok(out)
    }

    /// The pool, for queries of other parts (`mapek status`).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The engine.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL, password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A query error as a [`KnowledgeError::Query`] naming this store.
    pub(crate) fn query_failed(&self, doing: &str, e: sqlx::Error) -> KnowledgeError {
        KnowledgeError::Query {
            url: self.url.clone(),
            doing: doing.to_owned(),
            detail: e.to_string(),
        }
    }
}

/// The URL to connect to and its engine.
fn normalise(url_or_path: &str) -> Result<(String, Backend), KnowledgeError> {
    let s = url_or_path.trim();
    if Backend::of(s) == Backend::Postgres {
        return Ok((s.to_owned(), Backend::Postgres));
    }
    let path = match s
        .strip_prefix("sqlite://")
        .or_else(|| s.strip_prefix("sqlite:"))
    {
        Some(rest) => rest.split('?').next().unwrap_or(rest).to_owned(),
        None if s.contains("://") => {
            return Err(KnowledgeError::Connect {
                url: redact(s),
                detail: "only postgres:// and sqlite: URLs (or a file path) are supported".into(),
            });
        }
        None => s.to_owned(),
    };
    if let Some(dir) = Path::new(&path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|e| KnowledgeError::Connect {
            url: format!("sqlite://{path}"),
            detail: format!("cannot create the directory {}: {e}", dir.display()),
        })?;
    }
    Ok((format!("sqlite://{path}?mode=rwc"), Backend::Sqlite))
}

/// Whether `e` says the store refuses this data, so that writing it again fails the same
/// way, rather than that the store is unavailable (which passes). Postgres: a data exception
/// (SQLSTATE class 22, such as a NUL byte in text) or an integrity violation (class 23).
/// SQLite: a value too big, a constraint or a type mismatch.
pub(crate) fn refuses_the_data(backend: Backend, e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match backend {
                Backend::Postgres => code.starts_with("22") || code.starts_with("23"),
                // The extended result code: its low byte is the primary one.
                Backend::Sqlite => code
                    .parse::<i64>()
                    .is_ok_and(|c| matches!(c & 0xff, 18..=20)),
            }
        }
        sqlx::Error::Encode(_) | sqlx::Error::TypeNotFound { .. } => true,
        _ => false,
    }
}

/// A text column.
pub(crate) fn text(row: &AnyRow, i: usize) -> Result<String, sqlx::Error> {
    row.try_get::<String, _>(i)
}

/// A nullable text column.
pub(crate) fn opt_text(row: &AnyRow, i: usize) -> Result<Option<String>, sqlx::Error> {
    row.try_get::<Option<String>, _>(i)
}

/// An integer column, whatever width the engine reports.
pub(crate) fn int(row: &AnyRow, i: usize) -> Result<i64, sqlx::Error> {
    row.try_get::<i64, _>(i)
        .or_else(|_| row.try_get::<i32, _>(i).map(i64::from))
}

/// A nullable integer column.
pub(crate) fn opt_int(row: &AnyRow, i: usize) -> Result<Option<i64>, sqlx::Error> {
    match row.try_get::<Option<i64>, _>(i) {
        Ok(v) => Ok(v),
        Err(_) => row.try_get::<Option<i32>, _>(i).map(|v| v.map(i64::from)),
    }
}

/// A nullable float column (SQLite may hand back an integer for a whole number).
pub(crate) fn opt_float(row: &AnyRow, i: usize) -> Result<Option<f64>, sqlx::Error> {
    match row.try_get::<Option<f64>, _>(i) {
        Ok(v) => Ok(v),
        Err(e) => opt_int(row, i).map(|v| v.map(|v| v as f64)).map_err(|_| e),
    }
}

/// Any cell as text, the same for both engines.
fn cell(row: &AnyRow, i: usize) -> String {
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return v.unwrap_or_else(|| "NULL".into());
    }
    if let Ok(v) = opt_int(row, i) {
        return v.map_or_else(|| "NULL".into(), |v| v.to_string());
    }
    if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
        return v.map_or_else(|| "NULL".into(), |v| format!("{v:?}"));
    }
    "?".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_projecting_sixteen_streams_holds_a_connection_for_each_at_once() {
        let db = mapek_testkit::TestDatabase::create().await;
        let model = ReadModel::connect_for(db.url(), 20).await.unwrap();
        // Sixteen telemetry streams, the incidents' four and the readers, each in a
        // transaction at the same moment: none waits for another to end.
        let mut open = Vec::new();
        for _ in 0..20 + READERS {
            let began = tokio::time::timeout(Duration::from_secs(2), model.pool().begin());
            open.push(began.await.expect("a connection without waiting").unwrap());
        }
        let many = tokio::time::timeout(Duration::from_secs(2), model.pool().begin()).await;
        assert!(many.is_err(), "the pool has a bound");
        drop(open);
    }
}
