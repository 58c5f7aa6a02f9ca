//! Raw ICMP socket spans in a recording: where and when a raw socket was open, so a replay
//! judges a NO_SOCKET free of ICMP (crate::drops `Free::RawCopy`) as live did.
//!
//! Live, tracer/annotate/raw_sockets.py polls /proc and the engine hands the spans to the
//! core (`Labels::set_raw_sockets`). The recorder (tracer/sinks/record.py
//! `on_raw_sockets`) writes the whole table into a Custom Block each time it changes:
//! `magic, kind 3, version 1`, then one u32-length-prefixed field of `(netns, from_ns,
//! to_ns)` u64 LE triples (24 bytes each; `to_ns` = u64::MAX: still open). A later block
//! supersedes an earlier one's span of the same `(netns, from_ns)` (an open span that
//! closed).

use crate::relay::BLOCK_MAGIC;

/// The kind of block that carries the raw socket spans.
pub const KIND_RAW_SOCKETS: u16 = 3;
/// Bytes of one span in a block.
pub const SPAN_SIZE: usize = 24;
/// More spans than this in one block: damaged or hostile, left out.
pub const MAX_SPANS: usize = 65_536;

/// One `(netns, from_ns, to_ns)` span.
pub type RawSpan = (u64, u64, u64);

/// The spans a custom block's data (after the PEN) carries, checked as untrusted input:
/// `magic, kind 3, version 1`, one field whose length is a multiple of [`SPAN_SIZE`] and at
/// most [`MAX_SPANS`] spans. None: not a raw socket block, or damaged.
pub fn parse_block(data: &[u8]) -> Option<Vec<RawSpan>> {
    if data.get(..8)? != BLOCK_MAGIC {
        return None;
    }
    let kind = u16::from_le_bytes(data.get(8..10)?.try_into().ok()?);
    let version = u16::from_le_bytes(data.get(10..12)?.try_into().ok()?);
    if kind != KIND_RAW_SOCKETS || version != 1 {
        return None;
    }
    let n = u32::from_le_bytes(data.get(12..16)?.try_into().ok()?) as usize;
    let body = data.get(16..16usize.checked_add(n)?)?;
    if n % SPAN_SIZE != 0 || n / SPAN_SIZE > MAX_SPANS {
        return None;
    }
    let u64_at = |b: &[u8], a: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(a..a + 8)?.try_into().ok()?))
    };
    body.chunks_exact(SPAN_SIZE)
        .map(|s| Some((u64_at(s, 0)?, u64_at(s, 8)?, u64_at(s, 16)?)))
        .collect()
}

/// The spans of every block read so far, a later block's span superseding an earlier
/// one's of the same `(netns, from_ns)`: what a replay hands the core.
#[derive(Debug, Default, Clone)]
pub struct RawSpans {
    by_start: std::collections::BTreeMap<(u64, u64), u64>,
}

impl RawSpans {
    pub fn new() -> RawSpans {
        RawSpans::default()
    }

    /// Take in one block's spans.
    pub fn add(&mut self, spans: &[RawSpan]) {
        for &(netns, from, to) in spans {
            if self.by_start.len() >= MAX_SPANS && !self.by_start.contains_key(&(netns, from)) {
                continue;
            }
            self.by_start.insert((netns, from), to);
        }
    }

    /// Take in the tables of blocks read since the last time (`FileSet::new_raw_sockets`):
    /// whether there were any (then hand [`RawSpans::spans`] to the core).
    pub fn take_in(&mut self, tables: &[Vec<RawSpan>]) -> bool {
        for t in tables {
            self.add(t);
        }
        !tables.is_empty()
    }

    /// Every span, in `(netns, from_ns)` order.
    pub fn spans(&self) -> Vec<RawSpan> {
        self.by_start
            .iter()
            .map(|(&(netns, from), &to)| (netns, from, to))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(kind: u16, version: u16, spans: &[RawSpan]) -> Vec<u8> {
        let mut b = BLOCK_MAGIC.to_vec();
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&((spans.len() * SPAN_SIZE) as u32).to_le_bytes());
        for &(n, a, z) in spans {
            for v in [n, a, z] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        b
    }

    #[test]
    fn a_good_block_gives_its_spans() {
        let spans = [(4026532000, 10, u64::MAX), (4026532001, 5, 900)];
        assert_eq!(parse_block(&block(3, 1, &spans)), Some(spans.to_vec()));
        assert_eq!(parse_block(&block(3, 1, &[])), Some(vec![]));
        // pcapng pads the block to 4 bytes: trailing bytes are not the field's.
        let mut padded = block(3, 1, &spans);
        padded.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(parse_block(&padded), Some(spans.to_vec()));
    }

    #[test]
    fn other_kinds_versions_and_damage_are_not_spans() {
        let good = block(3, 1, &[(1, 2, 3)]);
        assert_eq!(parse_block(&block(1, 1, &[(1, 2, 3)])), None);
        assert_eq!(parse_block(&block(2, 1, &[(1, 2, 3)])), None);
        assert_eq!(parse_block(&block(3, 2, &[(1, 2, 3)])), None);
        let mut magic = good.clone();
        magic[0] = b'H';
        assert_eq!(parse_block(&magic), None);
        // Every truncation: none panics, none but the whole block parses.
        for cut in 0..good.len() {
            assert_eq!(parse_block(&good[..cut]), None, "cut at {cut}");
        }
        // A length that is not a multiple of a span, or longer than the data.
        let mut odd = good.clone();
        odd[12..16].copy_from_slice(&23u32.to_le_bytes());
        assert_eq!(parse_block(&odd), None);
        let mut long = good.clone();
        long[12..16].copy_from_slice(&48u32.to_le_bytes());
        assert_eq!(parse_block(&long), None);
    }

    #[test]
    fn hostile_lengths_do_not_panic_or_allocate() {
        let mut huge = block(3, 1, &[]);
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_block(&huge), None);
        let max = (u32::MAX as usize / SPAN_SIZE * SPAN_SIZE) as u32;
        huge[12..16].copy_from_slice(&max.to_le_bytes());
        assert_eq!(parse_block(&huge), None);
        // Too many spans, though all present.
        let many = vec![(1, 2, 3); MAX_SPANS + 1];
        assert_eq!(parse_block(&block(3, 1, &many)), None);
        assert_eq!(
            parse_block(&block(3, 1, &many[..MAX_SPANS])).map(|v| v.len()),
            Some(MAX_SPANS)
        );
    }

    #[test]
    fn a_later_block_closes_an_open_span() {
        let mut t = RawSpans::new();
        t.add(&[(7, 100, u64::MAX)]);
        t.add(&[(7, 100, 500), (8, 0, u64::MAX)]);
        assert_eq!(t.spans(), vec![(7, 100, 500), (8, 0, u64::MAX)]);
        t.add(&[]);
        assert_eq!(t.spans().len(), 2);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_block(&data);
            let mut b = block(3, 1, &[]);
            b.truncate(12);
            b.extend_from_slice(&data);
            if let Some(spans) = parse_block(&b) {
                proptest::prop_assert!(spans.len() * SPAN_SIZE <= data.len());
            }
        }
    }
}
