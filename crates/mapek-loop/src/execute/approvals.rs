//! The approval gate's bucket: a decision whose action needs a human waits until the key of
//! its decision id appears here.

use std::time::Duration;

use async_nats::jetstream::kv::{self, Store};
use mapek_bus::{BusError, JetStream};

/// The key-value bucket of approvals: key = decision id, value = who approved it.
pub const APPROVALS: &str = mapek_bus::buckets::APPROVALS;
/// How long approvals are kept.
const APPROVALS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

fn kv_failed(detail: String) -> BusError {
    BusError::Consumer {
        stream: format!("KV_{APPROVALS}"),
        detail,
    }
}

/// Opens the approvals bucket, creating it if it is missing (with the streams' replicas).
pub async fn approvals(js: &JetStream) -> Result<Store, BusError> {
    mapek_bus::buckets::open_or_create(
        js,
        kv::Config {
            bucket: APPROVALS.into(),
            description: "Decisions approved by a human: decision id -> approver".into(),
            history: 1,
            max_age: APPROVALS_MAX_AGE,
            ..Default::default()
        },
    )
    .await
}

/// Checks that `decision_id` can be a key: decision ids are hex, and nothing else is one.
fn check_key(decision_id: &str) -> Result<(), BusError> {
    let ok = !decision_id.is_empty()
        && decision_id.len() <= 128
        && decision_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(BusError::from(mapek_domain::Invalid::Name {
            field: "decision id",
            name: decision_id.to_owned(),
            why: "an approval's key is letters, digits, '-' and '_', at most 128 of them",
        }))
    }
}

/// Approves the decision `decision_id` on behalf of `approver`: the executor sends its action
/// the next time it looks at it (within `approval_poll_ms`). What `mapek approve` calls.
/// Approving a decision that does not exist or was already acted on changes nothing.
pub async fn approve(js: &JetStream, decision_id: &str, approver: &str) -> Result<(), BusError> {
    check_key(decision_id)?;
    let kv = approvals(js).await?;
    kv.put(decision_id, approver.to_owned().into())
        .await
        .map_err(|e| kv_failed(format!("cannot approve {decision_id}: {e}")))?;
    Ok(())
}

/// Who approved the decision `decision_id`, if anybody did.
pub async fn approver(kv: &Store, decision_id: &str) -> Result<Option<String>, BusError> {
    check_key(decision_id)?;
    let entry = kv
        .get(decision_id)
        .await
        .map_err(|e| kv_failed(format!("cannot read the approval of {decision_id}: {e}")))?;
    Ok(entry.map(|v| String::from_utf8_lossy(&v).into_owned()))
}
