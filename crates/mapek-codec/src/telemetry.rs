//! The newest `Telemetry` schema, written and read by hand.
//!
//! Telemetry is the one event every node sends several times a second, and the analyze workers
//! read every one: the generic serde path of apache-avro spent about 3 µs reading a sample
//! and 2 µs writing one, on the machine that shares its two cores with nats-server. This
//! module writes exactly the bytes apache-avro writes for [`VERSION`] (one block per map or
//! array, then the empty block; tested byte for byte against it) and reads any valid datum of
//! that version, negative block counts included. It answers `None` for anything it does not
//! read cleanly, and the caller then takes the generic path, which says what is wrong: an
//! error never comes from here.

use std::collections::BTreeMap;

use mapek_domain::{LinkSample, NodeId, Telemetry};

/// The schema version this module writes and reads; a new version of `telemetry.avsc` needs
/// this module updated (a test fails until it is).
pub const VERSION: u32 = 2;

/// The fewest bytes a map entry takes: an empty key and a double.
const MIN_METRIC_BYTES: usize = 1 + 8;
/// The fewest bytes a link takes: an empty peer, a boolean and two doubles.
const MIN_LINK_BYTES: usize = 1 + 1 + 8 + 8;

/// Writes the datum of `t` (no single-object header) at the end of `buf`.
pub(crate) fn write(t: &Telemetry, buf: &mut Vec<u8>) {
    write_str(buf, &t.event_id);
    write_str(buf, t.node.as_str());
    write_long(buf, t.ts_ms);
    if !t.metrics.is_empty() {
        write_long(buf, t.metrics.len() as i64);
        for (name, value) in &t.metrics {
            write_str(buf, name);
            buf.extend_from_slice(&value.to_le_bytes());
        }
    }
    write_long(buf, 0);
    if !t.links.is_empty() {
        write_long(buf, t.links.len() as i64);
        for link in &t.links {
            write_str(buf, link.peer.as_str());
            buf.push(u8::from(link.up));
            buf.extend_from_slice(&link.latency_ms.to_le_bytes());
            buf.extend_from_slice(&link.loss.to_le_bytes());
        }
    }
    write_long(buf, 0);
    match &t.site {
        None => write_long(buf, 0),
        Some(site) => {
            write_long(buf, 1);
            write_str(buf, site);
        }
    }
}

/// Reads a whole datum (no single-object header), or `None` if it is not a clean one.
pub(crate) fn read(bytes: &[u8]) -> Option<Telemetry> {
    let mut r = Reader { rest: bytes };
    let event_id = r.string()?.to_owned();
    let node = NodeId::new(r.string()?).ok()?;
    let ts_ms = r.long()?;
    let mut metrics = BTreeMap::new();
    while let Some(count) = r.block(MIN_METRIC_BYTES)? {
        for _ in 0..count {
            let name = r.string()?.to_owned();
            metrics.insert(name, r.double()?);
        }
    }
    let mut links = Vec::new();
    while let Some(count) = r.block(MIN_LINK_BYTES)? {
        links.reserve(count);
        for _ in 0..count {
            let peer = NodeId::new(r.string()?).ok()?;
            let up = match r.byte()? {
                0 => false,
                1 => true,
                _ => return None,
            };
            links.push(LinkSample {
                peer,
                up,
                latency_ms: r.double()?,
                loss: r.double()?,
            });
        }
    }
    let site = match r.long()? {
        0 => None,
        1 => Some(r.string()?.to_owned()),
        _ => return None,
    };
    r.rest.is_empty().then_some(Telemetry {
        event_id,
        node,
        ts_ms,
        metrics,
        links,
        site,
    })
}

fn write_long(buf: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

fn write_str(buf: &mut Vec<u8>, s: &str) {
    write_long(buf, s.len() as i64);
    buf.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(taken)
    }

    fn long(&mut self) -> Option<i64> {
        let mut z = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some((z >> 1) as i64 ^ -((z & 1) as i64));
            }
        }
        None
    }

    fn double(&mut self) -> Option<f64> {
        Some(f64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.long()?).ok()?;
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// The item count of the next block of a map or array, `None` inside at the closing
    /// empty block; a count that the bytes left cannot hold (items of at least `min_item`
    /// bytes) is not clean.
    fn block(&mut self, min_item: usize) -> Option<Option<usize>> {
        let count = self.long()?;
        if count == 0 {
            return Some(None);
        }
        if count < 0 {
            // A negative count is followed by the block's size in bytes.
            self.long()?;
        }
        let count = usize::try_from(count.unsigned_abs()).ok()?;
        (count <= self.rest.len() / min_item).then_some(Some(count))
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;

    use super::*;
    use crate::Registry;

    /// A small deterministic generator, so a failure repeats.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn name(&mut self) -> String {
            let len = self.below(70) as usize;
            (0..len)
                .map(|_| b"abcXYZ019_-"[self.below(11) as usize] as char)
                .collect()
        }
    }

    fn sample(rng: &mut Rng) -> Telemetry {
        let node = NodeId::new(format!("n{}", rng.below(100_000))).unwrap();
        let metrics = (0..rng.below(7))
            .map(|i| {
                let name = match i {
                    0 => "latency_ms".to_owned(),
                    1 => "ünïcode metric".to_owned(),
                    _ => rng.name(),
                };
                (name, rng.next() as f64 / 7.0)
            })
            .collect();
        let links = (0..rng.below(6))
            .map(|_| LinkSample {
                peer: NodeId::new(format!("p{}", rng.below(1000))).unwrap(),
                up: rng.below(2) == 1,
                latency_ms: rng.below(1_000_000) as f64 / 1000.0,
                loss: rng.below(1000) as f64 / 1000.0,
            })
            .collect();
        Telemetry {
            event_id: rng.name(),
            node,
            ts_ms: rng.next() as i64 >> rng.below(64),
            metrics,
            links,
            site: (rng.below(2) == 1).then(|| rng.name()),
        }
    }

    fn schema() -> &'static apache_avro::Schema {
        let known = Registry::global().latest("Telemetry").unwrap();
        assert_eq!(
            known.version, VERSION,
            "telemetry.avsc has a new version: write and read it by hand here too"
        );
        &known.schema
    }

    fn generic_bytes(t: &Telemetry) -> Vec<u8> {
        let writer = GenericDatumWriter::builder(schema())
            .human_readable(false)
            .build()
            .unwrap();
        let mut buf = Vec::new();
        writer.write_ser(&mut buf, t).unwrap();
        buf
    }

    fn generic_read(bytes: &[u8]) -> Option<Telemetry> {
        let reader = GenericDatumReader::builder(schema())
            .human_readable(false)
            .build()
            .unwrap();
        let mut body = bytes;
        let t: Telemetry = reader.read_deser(&mut body).ok()?;
        body.is_empty().then_some(t)
    }

    #[test]
    fn writes_the_bytes_apache_avro_writes_and_reads_them_back() {
        let mut rng = Rng(0x5eed);
        for _ in 0..5_000 {
            let t = sample(&mut rng);
            let mut ours = Vec::new();
            write(&t, &mut ours);
            assert_eq!(ours, generic_bytes(&t), "{t:?}");
            assert_eq!(read(&ours).as_ref(), Some(&t));
        }
    }

    #[test]
    fn reads_blocks_with_a_negative_count_and_a_byte_size() {
        let mut rng = Rng(7);
        let mut t = sample(&mut rng);
        t.metrics = BTreeMap::from([("cpu".to_owned(), 0.5), ("mem".to_owned(), 0.25)]);
        t.site = None;
        t.links.clear();
        // The same datum, its map written as one block of -2 items with their size.
        let mut bytes = Vec::new();
        write_str(&mut bytes, &t.event_id);
        write_str(&mut bytes, t.node.as_str());
        write_long(&mut bytes, t.ts_ms);
        write_long(&mut bytes, -2);
        write_long(&mut bytes, 2 * (1 + 3 + 8));
        for (name, value) in &t.metrics {
            write_str(&mut bytes, name);
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes.extend_from_slice(&[0, 0, 0]);
        assert_eq!(generic_read(&bytes).as_ref(), Some(&t));
        assert_eq!(read(&bytes).as_ref(), Some(&t));
    }

    #[test]
    fn what_it_reads_from_damaged_bytes_the_generic_reader_reads_the_same() {
        let mut rng = Rng(0xbad);
        let mut read_anyway = 0;
        for _ in 0..20_000 {
            let mut bytes = Vec::new();
            write(&sample(&mut rng), &mut bytes);
            match rng.below(3) {
                0 => {
                    let i = rng.below(bytes.len() as u64) as usize;
                    bytes[i] = rng.next() as u8;
                }
                1 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
                _ => bytes.push(rng.next() as u8),
            }
            if let Some(ours) = read(&bytes) {
                read_anyway += 1;
                assert_eq!(generic_read(&bytes), Some(ours), "{bytes:?}");
            }
        }
        // Some damage still leaves a valid datum (a changed digit of a double, say).
        assert!(read_anyway > 0);
    }
}
