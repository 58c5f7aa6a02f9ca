//! hoptrace's per-packet comment in its own recordings, read as
//! tracer/sources/files.py reads it (`_apply_meta`, `_apply_meta_fast`):
//!
//! `{"v":1,"dir":"tx","skb":"0x..","hook":..,"netns":N,"drop_reason":"..","ts_ns":N}`
//!
//! overrides a row's direction, skb, netns, drop reason and timestamp. The
//! recorder's exact layout (values space-padded) is matched field by field
//! (readers.py's `_META_RE` over the batch's comments joined by newlines);
//! when not every comment of a batch has that layout, each is read as JSON, as
//! `json.loads` would (see [`crate::pyjson`]).

use std::collections::HashMap;

use crate::obs::{dir, Obs};
use crate::pyjson::{self, Val};
use crate::pytext::{self, PyInt};

/// Drop reason names -> the ids rows carry, numbered 1, 2, ... in order of first sight.
#[derive(Debug, Default)]
pub struct DropTable {
    ids: HashMap<Vec<u8>, u32>,
    /// (id, name as "surrogatepass" UTF-8), in the order they were numbered.
    pub names: Vec<(u32, Vec<u8>)>,
}

impl DropTable {
    pub fn id(&mut self, name: &[u8]) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.ids.len() as u32 + 1;
        self.ids.insert(name.to_vec(), id);
        self.names.push((id, name.to_vec()));
        id
    }
}

/// One comment in the recorder's layout.
struct Fast<'a> {
    dir: u8,
    skb: u64,
    netns: u64,
    reason: Option<&'a [u8]>,
    ts_ns: u64,
}

struct Cur<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn lit(&mut self, t: &[u8]) -> Option<()> {
        if self.s.get(self.i..self.i + t.len())? == t {
            self.i += t.len();
            Some(())
        } else {
            None
        }
    }
    fn spaces(&mut self) {
        while self.s.get(self.i) == Some(&b' ') {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    /// A run of 1..=max bytes that `ok` accepts.
    fn run(&mut self, max: usize, ok: impl Fn(u8) -> bool) -> Option<&'a [u8]> {
        let start = self.i;
        while self.peek().is_some_and(&ok) {
            self.i += 1;
        }
        let n = self.i - start;
        (n >= 1 && n <= max)
            .then(|| self.s.get(start..self.i))
            .flatten()
    }
    fn null(&mut self) -> bool {
        self.lit(b"null").is_some()
    }
    /// A run of 1..=`max` decimal digits (`max` <= 19: the value fits), as a number.
    #[inline]
    fn digits(&mut self, max: usize) -> Option<u64> {
        let rest = self.s.get(self.i..)?;
        let mut v = 0u64;
        let mut n = 0;
        // Eight at a time while they last (a timestamp has 19), then one by one.
        while let Some(x) = rest
            .get(n..n + 8)
            .and_then(|c| <[u8; 8]>::try_from(c).ok())
            .and_then(eight_digits)
        {
            v = v.wrapping_mul(100_000_000).wrapping_add(x);
            n += 8;
        }
        for &c in rest.get(n..).unwrap_or(&[]) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            v = v.wrapping_mul(10).wrapping_add(u64::from(d));
            n += 1;
        }
        self.i += n;
        (1..=max).contains(&n).then_some(v)
    }
    /// A run of 1..=16 hex digits, as a number.
    #[inline]
    fn hex(&mut self) -> Option<u64> {
        let rest = self.s.get(self.i..)?;
        let mut v = 0u64;
        let mut n = 0;
        for &c in rest {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => break,
            };
            v = v << 4 | u64::from(d);
            n += 1;
        }
        self.i += n;
        (1..=16).contains(&n).then_some(v)
    }
}

/// readers.py's `_META_RE` over one line, anchored at both ends.
fn match_line(line: &[u8]) -> Option<Fast<'_>> {
    let mut c = Cur { s: line, i: 0 };
    c.lit(b"{\"v\":")?;
    c.spaces();
    c.lit(b"1,\"dir\":")?;
    c.spaces();
    let d = if c.null() {
        dir::UNKNOWN
    } else {
        c.lit(b"\"")?;
        if c.lit(b"rx\"").is_some() {
            dir::RX
        } else if c.lit(b"tx\"").is_some() {
            dir::TX
        } else {
            c.lit(b"drop\"")?;
            dir::DROP
        }
    };
    c.lit(b",\"skb\":")?;
    c.spaces();
    let skb = if c.null() {
        0
    } else {
        c.lit(b"\"0x")?;
        let hex = c.hex()?;
        c.lit(b"\"")?;
        hex
    };
    c.lit(b",\"hook\":")?;
    c.spaces();
    if !c.null() {
        c.lit(b"\"")?;
        while c.peek().is_some_and(|b| !matches!(b, b'"' | b'\\' | b'\n')) {
            c.i += 1;
        }
        c.lit(b"\"")?;
    }
    c.lit(b",\"netns\":")?;
    c.spaces();
    let netns = c.digits(19)?;
    c.lit(b",\"drop_reason\":")?;
    c.spaces();
    let reason = if c.null() {
        None
    } else {
        c.lit(b"\"")?;
        let r = c.run(usize::MAX, |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'(' | b')')
        })?;
        c.lit(b"\"")?;
        Some(r)
    };
    c.lit(b",\"ts_ns\":")?;
    c.spaces();
    let ts_ns = c.digits(19)?;
    c.lit(b"}")?;
    (c.i == line.len()).then_some(Fast {
        dir: d,
        skb,
        netns,
        reason,
        ts_ns,
    })
}

/// Eight ASCII decimal digits (the first the most significant) as their value, or None
/// when one of them is not a digit: a few word operations instead of eight steps.
#[inline]
fn eight_digits(b: [u8; 8]) -> Option<u64> {
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    let v = u64::from_le_bytes(b);
    // Every byte 0x30..=0x39: its high nibble is 3, and still 3 with 6 added (no carry:
    // the first test bounds every byte to 0x30..=0x3F).
    if v & HIGH != ZEROS || v.wrapping_add(0x0606_0606_0606_0606) & HIGH != ZEROS {
        return None;
    }
    let d = v - ZEROS; // one digit per byte, the first in the lowest
    let d = (d * 10 + (d >> 8)) & 0x00FF_00FF_00FF_00FF; // pairs
    let d = (d * 100 + (d >> 16)) & 0x0000_FFFF_0000_FFFF; // fours
    Some((d * 10_000 + (d >> 32)) & 0xFFFF_FFFF)
}

fn set_nonzero<T: Copy + Default + PartialEq>(slot: &mut T, v: T) {
    if v != T::default() {
        *slot = v;
    }
}

fn dir_of(v: &Option<Val>) -> u8 {
    let Some(Val::Str(s)) = v else {
        return 0;
    };
    let is = |w: &str| s.iter().copied().eq(w.bytes().map(u32::from));
    if is("rx") {
        dir::RX
    } else if is("tx") {
        dir::TX
    } else if is("drop") {
        dir::DROP
    } else {
        0
    }
}

/// readers.py's `_parse_skb`.
fn skb_of(v: &Option<Val>) -> u64 {
    match v {
        Some(Val::Int(i)) => i.masked(),
        Some(Val::Str(s)) => pytext::int_base0(s).map_or(0, |i| i.masked()),
        _ => 0,
    }
}

/// readers.py's `_positive_u64`.
fn positive_u64(v: &Option<Val>) -> u64 {
    match v {
        Some(Val::Int(i)) => i.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn is_u32_positive(i: &PyInt) -> bool {
    matches!(i.as_u64(), Some(v) if v > 0 && v < 1 << 32)
}

/// Apply the comments `metas` ((row, comment bytes), in row order) to `rows`.
pub fn apply(rows: &mut [Obs], metas: &[(usize, &[u8])], drops: &mut DropTable) {
    if metas.is_empty() {
        return;
    }
    if apply_fast(rows, metas, drops) {
        return;
    }
    // The JSON path: all comments as one array first (one parse), one by one when
    // that fails or does not come out one object per comment.
    let mut joined = Vec::with_capacity(metas.iter().map(|(_, r)| r.len() + 1).sum::<usize>() + 2);
    joined.push(b'[');
    for (k, (_, raw)) in metas.iter().enumerate() {
        if k > 0 {
            joined.push(b',');
        }
        joined.extend_from_slice(raw);
    }
    joined.push(b']');
    let objs: Vec<Option<Val>> =
        match pytext::json_text(&joined).and_then(|t| pyjson::loads_array(&t)) {
            Some(items) if items.len() == metas.len() => items.into_iter().map(Some).collect(),
            _ => metas
                .iter()
                .map(|(_, raw)| pytext::json_text(raw).and_then(|t| pyjson::loads(&t)))
                .collect(),
        };
    for ((row, _), obj) in metas.iter().zip(objs) {
        let Some(Val::Object(m)) = obj else {
            continue;
        };
        if !m.has_v {
            continue;
        }
        let Some(o) = rows.get_mut(*row) else {
            continue;
        };
        set_nonzero(&mut o.dir, dir_of(&m.dir));
        set_nonzero(&mut o.skb, skb_of(&m.skb));
        set_nonzero(&mut o.ts_ns, positive_u64(&m.ts_ns));
        set_nonzero(&mut o.netns, positive_u64(&m.netns));
        match &m.drop_reason {
            Some(Val::Str(s)) if !s.is_empty() => o.drop_reason = drops.id(&pytext::wtf8(s)),
            Some(Val::Int(i)) if is_u32_positive(i) => o.drop_reason = i.low as u32,
            _ => {}
        }
    }
}

fn apply_fast(rows: &mut [Obs], metas: &[(usize, &[u8])], drops: &mut DropTable) -> bool {
    // The regex runs over the comments joined by newlines: a line is one match or none.
    let mut found = Vec::with_capacity(metas.len());
    for (_, raw) in metas {
        let mut rest: &[u8] = raw;
        loop {
            let (line, next) = match memchr::memchr(b'\n', rest) {
                Some(at) => (rest.get(..at).unwrap_or(&[]), rest.get(at + 1..)),
                None => (rest, None),
            };
            if let Some(m) = match_line(line) {
                found.push(m);
            }
            match next {
                Some(n) => rest = n,
                None => break,
            }
        }
    }
    if found.len() != metas.len() {
        return false;
    }
    for ((row, _), m) in metas.iter().zip(found) {
        let Some(o) = rows.get_mut(*row) else {
            continue;
        };
        set_nonzero(&mut o.dir, m.dir);
        set_nonzero(&mut o.skb, m.skb);
        set_nonzero(&mut o.netns, m.netns);
        set_nonzero(&mut o.ts_ns, m.ts_ns);
        if let Some(r) = m.reason {
            o.drop_reason = drops.id(r);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const PADDED: &[u8] = br#"{"v":1,"dir":"drop","skb":"0x00000005","hook":null,"netns":9,"drop_reason":"NETFILTER_DROP","ts_ns": 333}"#;
    const REORDERED: &[u8] = br#"{"ts_ns": 333, "v": 1, "netns": 9, "skb": "0x5", "dir": "drop", "drop_reason": "NETFILTER_DROP"}"#;

    #[test]
    fn fast_and_json_layouts_agree() {
        for raw in [PADDED, REORDERED] {
            let mut rows = vec![Obs::default(); 2];
            let mut drops = DropTable::default();
            apply(&mut rows, &[(1, raw)], &mut drops);
            assert_eq!(
                (
                    rows[1].ts_ns,
                    rows[1].dir,
                    rows[1].skb,
                    rows[1].netns,
                    rows[1].drop_reason
                ),
                (333, dir::DROP, 5, 9, 1)
            );
            assert_eq!(rows[0], Obs::default());
            assert_eq!(drops.names, vec![(1, b"NETFILTER_DROP".to_vec())]);
        }
        assert!(match_line(PADDED).is_some());
        assert!(match_line(REORDERED).is_none());
    }

    #[test]
    fn eight_digits_at_once_or_none() {
        assert_eq!(eight_digits(*b"01234567"), Some(1_234_567));
        assert_eq!(eight_digits(*b"99999999"), Some(99_999_999));
        assert_eq!(eight_digits(*b"00000000"), Some(0));
        for bad in [
            *b"1234567:",
            *b"/1234567",
            *b"12 45678",
            *b"1234\xff678",
            *b"123a5678",
        ] {
            assert_eq!(eight_digits(bad), None);
        }
    }

    proptest::proptest! {
        /// The numbers read as a byte-by-byte loop reads them, wherever the digits stop.
        #[test]
        fn digits_as_one_by_one(s in "[0-9]{0,24}[^0-9]?[0-9]{0,3}", max in 1usize..=19) {
            let bytes = s.as_bytes();
            let run = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
            let want = (1..=max).contains(&run).then(|| {
                bytes[..run].iter().fold(0u64, |v, &c| v.wrapping_mul(10).wrapping_add(u64::from(c - b'0')))
            });
            let mut c = Cur { s: bytes, i: 0 };
            proptest::prop_assert_eq!(c.digits(max), want);
            proptest::prop_assert_eq!(c.i, run);
        }
    }

    #[test]
    fn bad_comments_are_skipped_good_ones_kept() {
        let mut rows = vec![Obs::default(); 3];
        let mut drops = DropTable::default();
        let metas: [(usize, &[u8]); 3] = [
            (0, b"{\"v\":1,\"dir\":\"rx\"\xff}"),
            (1, br#"{"v":1,"dir":"tx","skb":" -1 ","drop_reason":7}"#),
            (2, br#"{"dir":"tx"}"#),
        ];
        apply(&mut rows, &metas, &mut drops);
        assert_eq!((rows[0].dir, rows[1].dir, rows[2].dir), (0, dir::TX, 0));
        assert_eq!((rows[1].skb, rows[1].drop_reason), (u64::MAX, 7));
    }
}
