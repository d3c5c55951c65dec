//! One stored message, as a replay reads it: from a live stream or from a slice file.

use async_nats::HeaderMap;
use bytes::Bytes;
use mapek_bus::headers;
use mapek_codec::{AvroEvent, CodecError};

/// A message as JetStream stored it: everything a replay needs to decode it again exactly.
#[derive(Clone, Debug)]
pub struct Record {
    /// The stream (`MAPEK_MONITOR`, or `MAPEK_MONITOR_1` when telemetry is split over several
    /// streams).
    pub stream: String,
    /// Its sequence in that stream.
    pub seq: u64,
    /// The stored subject, partition included (`mapek.monitor.3.n17`).
    pub subject: String,
    /// When the server stored it, in milliseconds since the Unix epoch.
    pub stored_ms: i64,
    /// Its headers (`Nats-Msg-Id`, `Content-Type`, …).
    pub headers: Option<HeaderMap>,
    /// The body, byte for byte: Avro single-object encoding, or JSON telemetry.
    pub body: Bytes,
}

impl Record {
    /// The value of header `name`, if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    }

    /// Decodes the body as `E`, as the workers did (Avro, or JSON on the monitor subjects when
    /// the headers say so).
    pub fn decode<E: AvroEvent>(&self) -> Result<E, CodecError> {
        headers::decode_body::<E>(self.headers.as_ref(), &self.body)
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4): the slice file's encoding of bodies. Written
/// here rather than pulled in, because it is twenty lines and the format must not drift with
/// a dependency's defaults.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes [`base64_encode`]'s output; `None` if `text` is not standard padded base64.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| ALPHABET.iter().position(|&a| a == c).map(|v| v as u32);
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for chunk in text.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..40u8 {
            let bytes: Vec<u8> = (0..len)
                .map(|i| i.wrapping_mul(37).wrapping_add(200))
                .collect();
            let text = base64_encode(&bytes);
            assert_eq!(base64_decode(&text), Some(bytes), "{text}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm9=v"), None);
    }
}
