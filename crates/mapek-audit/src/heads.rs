//! Signed chain heads: where each decision chain ended when the witness last looked.
//!
//! A chain's links show a decision removed from its middle, but not decisions cut from its
//! end: what is left still links. So the witness ([`crate::witness`]) follows MAPEK_PLAN and
//! signs, for each partition, the chain hash of the last decision it read there, and keeps
//! that [`Head`] in the key-value bucket `MAPEK_CHAIN` (key `p<partition>`), which is not part
//! of MAPEK_PLAN: deleting or purging decisions leaves the heads alone, and a head names a
//! decision that is then missing. ADR 0016 says what an attacker can and cannot do.
//!
//! A head is a few lines of text, readable with `nats kv get MAPEK_CHAIN p3`; the signature
//! (ML-DSA-65, the decision key) covers every line before its own:
//!
//! ```text
//! mapek chain head v1
//! partition 3
//! head 5f0c…            chain hash of the last decision read in the partition
//! head_ms 1795867201000 when the server stored that decision
//! since_ms 1795867200000  when it stored the chain's first decision (empty prev_hash), or -
//! at_ms 1795867260000   when the witness signed this
//! signature 8a91…
//! ```

use async_nats::jetstream::kv::{self, Store};
use mapek_bus::{BusError, JetStream};

use crate::{AuditError, SigningKey, VerifyingKey};

/// The first line of every head: what the signature is of, and in which version.
const HEADER: &str = "mapek chain head v1";

/// Where one partition's decision chain ended when the witness signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The plan partition whose chain this is.
    pub partition: u32,
    /// The chain hash of the last decision the witness read in the partition.
    pub head: String,
    /// When the server stored that decision, in ms since the Unix epoch: a head older than
    /// the stream keeps decisions may name one that aged out.
    pub head_ms: i64,
    /// When the server stored the chain's first decision (the one with an empty
    /// `prev_hash`), if the witness saw it: while that is younger than the stream keeps
    /// decisions, the chain's start must still be there.
    pub since_ms: Option<i64>,
    /// When the witness signed this, in ms since the Unix epoch: how fresh it is.
    pub at_ms: i64,
    /// ML-DSA-65 signature of the lines above; empty while unsigned.
    pub signature: Vec<u8>,
}

impl Head {
    /// The signed text: every line but the signature's.
    fn message(&self) -> String {
        let since = self
            .since_ms
            .map_or_else(|| "-".to_owned(), |t| t.to_string());
        format!(
            "{HEADER}\npartition {}\nhead {}\nhead_ms {}\nsince_ms {since}\nat_ms {}\n",
            self.partition, self.head, self.head_ms, self.at_ms
        )
    }

    /// Signs the head in place with the decision key.
    pub fn sign(&mut self, key: &SigningKey) -> Result<(), AuditError> {
        self.signature = key.sign_bytes(self.message().as_bytes())?;
        Ok(())
    }

    /// Whether the head was signed by the holder of `key`'s secret half, as it is.
    pub fn verifies(&self, key: &VerifyingKey) -> bool {
        key.verifies_bytes(self.message().as_bytes(), &self.signature)
    }

    /// The head as stored: its lines, then `signature <hex>`.
    pub fn encode(&self) -> Vec<u8> {
        let mut text = self.message();
        text.push_str("signature ");
        for byte in &self.signature {
            text.push_str(&format!("{byte:02x}"));
        }
        text.push('\n');
        text.into_bytes()
    }

    /// Reads a stored head; the error says which line is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "it is not text".to_owned())?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("its first line is not {HEADER:?}"));
        }
        let mut field = |name: &str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(' '))
                .map(str::to_owned)
                .ok_or_else(|| format!("it has no {name} line where one belongs"))
        };
        let number = |name: &str, value: String| {
            value
                .parse::<i64>()
                .map_err(|_| format!("its {name} {value:?} is not a number"))
        };
        let partition = field("partition")?;
        let partition = u32::try_from(number("partition", partition)?)
            .map_err(|_| "its partition is out of range".to_owned())?;
        let head = field("head")?;
        let head_ms = number("head_ms", field("head_ms")?)?;
        let since_ms = match field("since_ms")?.as_str() {
            "-" => None,
            since => Some(number("since_ms", since.to_owned())?),
        };
        let at_ms = number("at_ms", field("at_ms")?)?;
        let signature = unhex(&field("signature")?)?;
        Ok(Self {
            partition,
            head,
            head_ms,
            since_ms,
            at_ms,
            signature,
        })
    }
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err("its signature has an odd number of hex digits".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&text[i..i + 2], 16)
                .map_err(|_| "its signature is not hex".to_owned())
        })
        .collect()
}

/// The key of partition `partition`'s head in the bucket.
pub fn key_of(partition: u32) -> String {
    format!("p{partition}")
}

/// Opens the bucket of heads, creating it if missing (the witness does; with the streams'
/// replicas).
pub async fn open(js: &JetStream) -> Result<Store, BusError> {
    mapek_bus::buckets::open_or_create(
        js,
        kv::Config {
            bucket: mapek_bus::buckets::CHAIN.into(),
            description: "Signed heads of the decision chains, one per plan partition".into(),
            history: 1,
            ..Default::default()
        },
    )
    .await
}

/// Every head stored, by partition, each read or the reason it cannot be; empty when the
/// bucket does not exist (an audit creates nothing).
pub async fn read_all(
    js: &JetStream,
) -> Result<std::collections::BTreeMap<u32, Result<Head, String>>, BusError> {
    let mut heads = std::collections::BTreeMap::new();
    let Ok(store) = js.get_key_value(mapek_bus::buckets::CHAIN).await else {
        return Ok(heads);
    };
    let failed = |detail: String| BusError::Stream {
        stream: format!("KV_{}", mapek_bus::buckets::CHAIN),
        detail,
    };
    let partitions = mapek_bus::layout::partitions_of(js, mapek_domain::Phase::Plan).await?;
    for partition in 0..partitions {
        let stored = store
            .get(key_of(partition))
            .await
            .map_err(|e| failed(format!("cannot read {}: {e}", key_of(partition))))?;
        if let Some(bytes) = stored {
            let head = Head::decode(&bytes).and_then(|h| match h.partition == partition {
                true => Ok(h),
                false => Err(format!("it is partition {}'s head", h.partition)),
            });
            heads.insert(partition, head);
        }
    }
    Ok(heads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;

    fn head() -> Head {
        Head {
            partition: 3,
            head: "ab".repeat(32),
            head_ms: 1_795_867_201_000,
            since_ms: None,
            at_ms: 1_795_867_260_000,
            signature: Vec::new(),
        }
    }

    #[test]
    fn a_signed_head_reads_back_and_verifies_and_any_change_breaks_it() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keys::generate(dir.path()).unwrap();
        let (signer, checker) = (
            SigningKey::load(&secret).unwrap(),
            VerifyingKey::load(&public).unwrap(),
        );
        let mut h = head();
        assert!(!h.verifies(&checker), "unsigned");
        h.sign(&signer).unwrap();
        let back = Head::decode(&h.encode()).unwrap();
        assert_eq!(back, h);
        assert!(back.verifies(&checker));
        for change in [
            |h: &mut Head| h.partition = 4,
            |h: &mut Head| h.head = "cd".repeat(32),
            |h: &mut Head| h.since_ms = Some(0),
            |h: &mut Head| h.at_ms += 1,
        ] {
            let mut changed = back.clone();
            change(&mut changed);
            assert!(!changed.verifies(&checker), "{changed:?}");
        }
    }

    #[test]
    fn a_damaged_head_is_named() {
        let mut text = String::from_utf8(head().encode()).unwrap();
        text = text.replace("head_ms 1795867201000", "head_ms soon");
        let err = Head::decode(text.as_bytes()).unwrap_err();
        assert!(err.contains("head_ms \"soon\""), "{err}");
        let err = Head::decode(b"mapek chain head v2\n").unwrap_err();
        assert!(err.contains("first line"), "{err}");
    }
}
