//! The key-value buckets mapek keeps beside its streams, and how many copies of each.
//!
//! Workers create a bucket the first time they need it, when no `mapek streams apply` has:
//! [`open_or_create`] gives it as many replicas as the loop's streams have (those of
//! `MAPEK_PLAN`), so a cluster applied with `--replicas 3` gets R3 buckets too, and losing a
//! server loses no lease, approval or recorded policy. [`apply_replicas`] brings the buckets
//! that exist to the replicas `mapek streams apply` was given.

use async_nats::jetstream::kv::{self, Store};
use mapek_domain::Phase;

use crate::streams::{Applied, is_not_found};
use crate::{BusError, JetStream};

/// Partition and singleton leases (`mapek_loop::lease`).
pub const LEASES: &str = crate::progress::LEASE_BUCKET;
/// Decisions a human approved (`mapek approve`).
pub const APPROVALS: &str = "MAPEK_APPROVALS";
/// The policies and analyze settings the workers ran with ([`crate::config_store`]).
pub const CONFIG: &str = crate::config_store::BUCKET;
/// The signed heads of the decision chains (`mapek_audit::heads`), kept apart from
/// `MAPEK_PLAN` so that cutting decisions from that stream does not take them along.
pub const CHAIN: &str = "MAPEK_CHAIN";
/// Every bucket mapek creates.
pub const ALL: [&str; 4] = [LEASES, APPROVALS, CONFIG, CHAIN];

/// Opens `config.bucket`, creating it with `config` if it does not exist, with as many
/// replicas as the loop's streams ([`loop_replicas`]) unless `config` says otherwise.
///
/// An error is anything but "no such bucket" (no responders during a leader election, a
/// timeout): the caller retries.
pub async fn open_or_create(js: &JetStream, mut config: kv::Config) -> Result<Store, BusError> {
    let bucket = config.bucket.clone();
    let failed = |detail: String| BusError::Stream {
        stream: format!("KV_{bucket}"),
        detail,
    };
    match js.get_stream(format!("KV_{bucket}")).await {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {
            if config.num_replicas <= 1 {
                config.num_replicas = loop_replicas(js).await?;
            }
            // Another worker may create it first: then it is opened below.
            if let Err(e) = js.create_key_value(config).await {
                tracing::debug!(bucket, error = %e, "creating a bucket");
            }
        }
        Err(e) => return Err(failed(format!("cannot open: {e}"))),
    }
    js.get_key_value(bucket.clone())
        .await
        .map_err(|e| failed(format!("cannot open: {e}")))
}

/// How many replicas the loop's streams have: `MAPEK_PLAN`'s, or 1 before it exists.
pub async fn loop_replicas(js: &JetStream) -> Result<usize, BusError> {
    match js.get_stream(Phase::Plan.stream()).await {
        Ok(stream) => Ok(stream.cached_info().config.num_replicas.max(1)),
        Err(e) if is_not_found(&e) => Ok(1),
        Err(e) => Err(BusError::Stream {
            stream: Phase::Plan.stream().to_owned(),
            detail: format!("cannot read how many replicas the loop's streams have: {e}"),
        }),
    }
}

/// Brings every bucket of [`ALL`] that exists to `replicas` copies; one that does not exist
/// yet is created so by the first worker that needs it ([`open_or_create`]).
pub async fn apply_replicas(js: &JetStream, replicas: usize) -> Result<Vec<Applied>, BusError> {
    let mut applied = Vec::new();
    for bucket in ALL {
        let name = format!("KV_{bucket}");
        let Ok(mut stream) = js.get_stream(&name).await else {
            continue;
        };
        let failed = |detail: String| BusError::Stream {
            stream: name.clone(),
            detail,
        };
        let mut config = stream
            .info()
            .await
            .map_err(|e| failed(e.to_string()))?
            .config
            .clone();
        if config.num_replicas.max(1) == replicas {
            applied.push(Applied::Unchanged { name });
            continue;
        }
        config.num_replicas = replicas;
        crate::streams::placed(&name, replicas, || js.update_stream(&config))
            .await
            .map_err(|e| failed(format!("cannot update num_replicas: {e}")))?;
        applied.push(Applied::Updated {
            name,
            changed: vec!["num_replicas".to_owned()],
        });
    }
    Ok(applied)
}
