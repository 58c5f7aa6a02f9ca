//! Relayed connections: CONTRACT.md's `"relay"` object on the path and flow lines of both
//! legs of a connection a userland proxy (Docker's `docker-proxy`) carried on.
//!
//! docker-proxy accepts a connection (the *inbound* leg, `172.17.0.3:N -> 203.0.113.2:8080`)
//! and opens one of its own to the container (the *outbound* leg, `172.17.0.1:M ->
//! 172.17.0.2:80`). Python learns the pair off the hot path (tracer/annotate/relay.py
//! `RelayLinker`, from who took the packets: crate::local's answers) and tells the table
//! both legs' flow keys (as their first packet has them), who relayed them (`{"pid": ...,
//! "comm": ...}`) and what the text says on each leg. The table files each leg under its
//! key and its reverse, so the replies find it too. Lines of either leg then carry
//! `"relay": {"by": {...}, "peer_flow": "f9", "peer_paths": ["p31", "p32"], <fields>}`: the
//! other leg's flow and the paths it lists so far, then what Python says of the leg (`"leg":
//! "accepted"`, the peer's endpoints) (a flow line, written when its flow closes,
//! names all of the peer's paths shown by then). A line written before the pair was
//! learnt has no `"relay"`; nothing waits for it.

use crate::flows::FlowKey;
use crate::hash::FastMap;
use crate::safe_text::term_safe_wtf8;

/// What a hoptrace pcapng Custom Block's data starts with (after its Private Enterprise
/// Number), then a kind and a version (u16 LE each); tracer/sinks/record.py writes them, and
/// crate::local reads kind 1 (who took a packet).
pub const BLOCK_MAGIC: &[u8; 8] = b"hoptrace";
/// The kind of block that carries one relayed connection.
pub const KIND_RELAY: u16 = 2;
/// Bytes of a leg in a block: family, proto, sport (u16 LE), dport (u16 LE), src, dst.
pub const LEG_SIZE: usize = 38;

/// One recorded relayed connection (a replay presets the table with it, [`Relays::preset`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayNote {
    pub inbound: FlowKey,
    pub outbound: FlowKey,
    pub by: Vec<u8>,
    pub texts: [Vec<u8>; 2],
    pub fields: [Vec<u8>; 2],
}

fn leg_of(b: &[u8]) -> Option<FlowKey> {
    if b.len() != LEG_SIZE {
        return None;
    }
    let family = *b.first()?;
    if !matches!(family, 4 | 6) {
        return None;
    }
    let port =
        |a: usize| -> Option<u16> { Some(u16::from_le_bytes(b.get(a..a + 2)?.try_into().ok()?)) };
    let addr = |a: usize| -> Option<[u8; 16]> { b.get(a..a + 16)?.try_into().ok() };
    Some((
        family,
        *b.get(1)?,
        addr(6)?,
        Some(port(2)?),
        addr(22)?,
        Some(port(4)?),
    ))
}

/// Whether `json` is what a JSON object holds between its braces (`object`: it is a whole
/// object) as json.dumps writes it with ensure_ascii: printable ASCII, so a line stays one
/// valid line and one valid object.
fn json_members(json: &[u8], object: bool) -> bool {
    if !json.iter().all(|b| (0x20..0x7f).contains(b)) {
        return false;
    }
    let Ok(text) = std::str::from_utf8(json) else {
        return false;
    };
    let chars: Vec<u32> = if object {
        text.chars().map(u32::from).collect()
    } else {
        std::iter::once('{')
            .chain(text.chars())
            .chain(std::iter::once('}'))
            .map(u32::from)
            .collect()
    };
    matches!(
        crate::pyjson::loads(&chars),
        Some(crate::pyjson::Val::Object(_))
    )
}

/// The relayed connection a custom block's data (after the PEN) carries, checked as
/// untrusted input: `magic, kind 2, version 1`, then seven u32-length-prefixed fields: the
/// inbound and outbound legs ([`LEG_SIZE`] bytes each), `by` (a JSON object), the inbound
/// and outbound legs' texts (made `term_safe`) and their JSON fields (object members). None:
/// not a relay block, or damaged.
pub fn parse_block(data: &[u8]) -> Option<RelayNote> {
    if data.get(..8)? != BLOCK_MAGIC {
        return None;
    }
    let kind = u16::from_le_bytes(data.get(8..10)?.try_into().ok()?);
    let version = u16::from_le_bytes(data.get(10..12)?.try_into().ok()?);
    if kind != KIND_RELAY || version != 1 {
        return None;
    }
    let mut at = 12usize;
    let mut field = || -> Option<&[u8]> {
        let n = u32::from_le_bytes(data.get(at..at.checked_add(4)?)?.try_into().ok()?) as usize;
        let start = at.checked_add(4)?;
        let v = data.get(start..start.checked_add(n)?)?;
        at = start + n;
        Some(v)
    };
    let (a, b, by) = (field()?, field()?, field()?);
    let (text_in, text_out, fields_in, fields_out) = (field()?, field()?, field()?, field()?);
    let (inbound, outbound) = (leg_of(a)?, leg_of(b)?);
    if !json_members(by, true)
        || !(fields_in.is_empty() || json_members(fields_in, false))
        || !(fields_out.is_empty() || json_members(fields_out, false))
    {
        return None;
    }
    Some(RelayNote {
        inbound,
        outbound,
        by: by.to_vec(),
        texts: [term_safe_wtf8(text_in), term_safe_wtf8(text_out)],
        fields: [fields_in.to_vec(), fields_out.to_vec()],
    })
}

/// Past this many pairs, start over (a flood of proxied connections must not grow it forever).
const MAX_PAIRS: usize = 100_000;

#[derive(Debug, Clone)]
struct Leg {
    /// Its flow's key in the original direction: the peer finds this leg's flow by it.
    key: FlowKey,
    /// `{"pid": 4242, "comm": "docker-proxy"}` as json.dumps writes it.
    by: Vec<u8>,
    /// What the text says on this leg's lines (`docker-proxy relays to web:80 from ...`).
    text: Vec<u8>,
    /// JSON fields written after `"peer_paths"` (`"leg": "accepted", "peer": {...}`), or empty.
    fields: Vec<u8>,
    /// This leg's flow once it closed: its number and the paths it listed.
    closed: Option<(u64, Vec<u64>)>,
}

/// The pairs learnt so far (see the module documentation). Legs come in pairs: leg `2k`
/// is an inbound leg, `2k + 1` its outbound leg, so a leg's peer is `leg ^ 1`.
#[derive(Debug, Default)]
pub struct Relays {
    legs: Vec<Leg>,
    keys: FastMap<FlowKey, u32>,
}

fn reverse(k: &FlowKey) -> FlowKey {
    (k.0, k.1, k.4, k.5, k.2, k.3)
}

impl Relays {
    pub fn new() -> Relays {
        Relays::default()
    }

    /// `inbound` was relayed by `by` as `outbound` (both keys in their original direction);
    /// per leg (inbound first) what its text says and the JSON fields its object ends with.
    /// A key learnt again names the new pair.
    pub fn add(
        &mut self,
        inbound: FlowKey,
        outbound: FlowKey,
        by: &[u8],
        texts: [&[u8]; 2],
        fields: [&[u8]; 2],
    ) {
        if inbound == outbound || inbound == reverse(&outbound) {
            return; // not two legs
        }
        if self.legs.len() >= 2 * MAX_PAIRS {
            self.legs.clear();
            self.keys.clear();
        }
        let Ok(first) = u32::try_from(self.legs.len()) else {
            return;
        };
        for (k, key) in [inbound, outbound].into_iter().enumerate() {
            let leg = first + k as u32;
            self.legs.push(Leg {
                key,
                by: by.to_vec(),
                text: texts.get(k).copied().unwrap_or_default().to_vec(),
                fields: fields.get(k).copied().unwrap_or_default().to_vec(),
                closed: None,
            });
            self.keys.insert(key, leg);
            self.keys.insert(reverse(&key), leg);
        }
    }

    /// A recorded pair (a replay: [`parse_block`]).
    pub fn preset(&mut self, note: &RelayNote) {
        self.add(
            note.inbound,
            note.outbound,
            &note.by,
            [&note.texts[0], &note.texts[1]],
            [&note.fields[0], &note.fields[1]],
        );
    }

    /// The leg a flow key (either direction) belongs to.
    pub fn leg(&self, key: &FlowKey) -> Option<u32> {
        self.keys.get(key).copied()
    }

    /// The first of `keys` (a flow's) that names a leg.
    pub fn leg_of_any(&self, keys: &[FlowKey]) -> Option<u32> {
        keys.iter().find_map(|k| self.leg(k))
    }

    /// The key of `leg`'s peer (its flow's original direction).
    pub fn peer_key(&self, leg: u32) -> Option<FlowKey> {
        self.legs.get((leg ^ 1) as usize).map(|l| l.key)
    }

    /// The peer's flow after it closed: its number and the paths it listed.
    pub fn peer_closed(&self, leg: u32) -> Option<(u64, &[u64])> {
        let l = self.legs.get((leg ^ 1) as usize)?;
        l.closed.as_ref().map(|(n, p)| (*n, p.as_slice()))
    }

    /// `leg`'s flow closed as flow `num`, listing `paths`.
    pub fn close(&mut self, leg: u32, num: u64, paths: &[u64]) {
        if let Some(l) = self.legs.get_mut(leg as usize) {
            l.closed = Some((num, paths.to_vec()));
        }
    }

    pub fn len(&self) -> usize {
        self.legs.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.legs.is_empty()
    }

    /// The NDJSON line at `out[line_start..]` (one object and its newline) with `"relay"`
    /// added last: `leg`'s proxy, and its peer's flow and paths (`peer`: None when the peer
    /// leg has no flow yet).
    pub fn patch_json(
        &self,
        line_start: usize,
        out: &mut Vec<u8>,
        leg: u32,
        peer: Option<(u64, &[u64])>,
    ) {
        let Some(l) = self.legs.get(leg as usize) else {
            return;
        };
        if out.len() < line_start + 2 || !out.ends_with(b"}\n") {
            return;
        }
        out.truncate(out.len() - 2);
        out.extend_from_slice(b", \"relay\": {\"by\": ");
        out.extend_from_slice(&l.by);
        out.extend_from_slice(b", \"peer_flow\": ");
        let mut buf = itoa_buf();
        match peer {
            Some((num, _)) => {
                out.extend_from_slice(b"\"f");
                out.extend_from_slice(fmt_u64(&mut buf, num));
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b", \"peer_paths\": [");
        for (k, p) in peer.map(|(_, p)| p).unwrap_or_default().iter().enumerate() {
            if k > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(b"\"p");
            out.extend_from_slice(fmt_u64(&mut buf, *p));
            out.push(b'"');
        }
        out.push(b']');
        if !l.fields.is_empty() {
            out.extend_from_slice(b", ");
            out.extend_from_slice(&l.fields);
        }
        out.extend_from_slice(b"}}\n");
    }

    /// The text block or line at `out[line_start..]` (ending with `gap`) with `leg`'s text
    /// added: on a line of its own (`own_line`: a path block), or at the end of the line
    /// (a flow line).
    pub fn patch_text(
        &self,
        line_start: usize,
        out: &mut Vec<u8>,
        leg: u32,
        gap: &[u8],
        own_line: bool,
    ) {
        let Some(l) = self.legs.get(leg as usize) else {
            return;
        };
        if l.text.is_empty() || out.len() < line_start + gap.len() || !out.ends_with(gap) {
            return;
        }
        out.truncate(out.len() - gap.len());
        out.extend_from_slice(if own_line { b"\n     " } else { b"  " });
        out.extend_from_slice(&l.text);
        out.extend_from_slice(gap);
    }
}

fn itoa_buf() -> [u8; 20] {
    [0u8; 20]
}

/// `n` in decimal, written into the end of `buf`.
fn fmt_u64(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(b) = buf.get_mut(i) {
            *b = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    buf.get(i..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut x = [0u8; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    fn keys() -> (FlowKey, FlowKey) {
        (
            (
                4,
                6,
                v4([172, 17, 0, 3]),
                Some(40000),
                v4([203, 0, 113, 2]),
                Some(8080),
            ),
            (
                4,
                6,
                v4([172, 17, 0, 1]),
                Some(35216),
                v4([172, 17, 0, 2]),
                Some(80),
            ),
        )
    }

    fn table() -> Relays {
        let (a, b) = keys();
        let mut r = Relays::new();
        r.add(
            a,
            b,
            b"{\"pid\": 4242, \"comm\": \"docker-proxy\"}",
            [
                b"\xe2\x86\x92 docker-proxy relays to web:80 from 172.17.0.1:35216",
                b"\xe2\x86\x90 docker-proxy relays 172.17.0.3:40000 \xe2\x86\x92 203.0.113.2:8080",
            ],
            [b"\"leg\": \"accepted\"", b""],
        );
        r
    }

    #[test]
    fn both_legs_in_both_directions_find_each_other() {
        let (a, b) = keys();
        let r = table();
        assert_eq!(r.len(), 1);
        assert_eq!((r.leg(&a), r.leg(&reverse(&a))), (Some(0), Some(0)));
        assert_eq!((r.leg(&b), r.leg(&reverse(&b))), (Some(1), Some(1)));
        assert_eq!((r.peer_key(0), r.peer_key(1)), (Some(b), Some(a)));
        let other = (4, 6, v4([1, 2, 3, 4]), Some(1), v4([5, 6, 7, 8]), Some(2));
        assert_eq!(r.leg(&other), None);
        assert_eq!(r.leg_of_any(&[other, reverse(&b)]), Some(1));
    }

    #[test]
    fn lines_name_the_peer_flow_and_its_paths() {
        let r = table();
        let line = b"{\"type\": \"path\", \"id\": \"p3\"}\n";
        let mut out = b"earlier\n".to_vec();
        let start = out.len();
        out.extend_from_slice(line);
        r.patch_json(start, &mut out, 0, Some((12, &[4, 6, 10])));
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "earlier\n{\"type\": \"path\", \"id\": \"p3\", \"relay\": {\"by\": {\"pid\": 4242, \
             \"comm\": \"docker-proxy\"}, \"peer_flow\": \"f12\", \"peer_paths\": [\"p4\", \"p6\", \"p10\"], \
             \"leg\": \"accepted\"}}\n"
        );
        let mut out = line.to_vec();
        r.patch_json(0, &mut out, 1, None);
        assert!(out.ends_with(b"\"peer_flow\": null, \"peer_paths\": []}}\n"));
        // Not a whole line: left as it is.
        let mut out = b"{\"x\": 1".to_vec();
        r.patch_json(0, &mut out, 0, None);
        assert_eq!(out, b"{\"x\": 1");
        let mut out = line.to_vec();
        r.patch_json(0, &mut out, 7, None);
        assert_eq!(out, line, "no such leg");
    }

    #[test]
    fn text_says_the_story_on_each_leg() {
        let r = table();
        let mut out = b"p1  tcp\n     client/eth0 tx\n\n".to_vec();
        r.patch_text(0, &mut out, 0, b"\n\n", true);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "p1  tcp\n     client/eth0 tx\n     \u{2192} docker-proxy relays to web:80 from 172.17.0.1:35216\n\n"
        );
        let mut out = b"f2  tcp\n".to_vec();
        r.patch_text(0, &mut out, 1, b"\n", false);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "f2  tcp  \u{2190} docker-proxy relays 172.17.0.3:40000 \u{2192} 203.0.113.2:8080\n"
        );
    }

    #[test]
    fn a_closed_peer_is_remembered_and_a_full_table_starts_over() {
        let (a, b) = keys();
        let mut r = table();
        assert_eq!(r.peer_closed(0), None);
        r.close(1, 9, &[4, 5]);
        assert_eq!(r.peer_closed(0), Some((9, &[4u64, 5][..])));
        r.add(a, a, b"{}", [b"", b""], [b"", b""]); // one flow is not two legs
        r.add(a, reverse(&a), b"{}", [b"", b""], [b"", b""]);
        assert_eq!(r.len(), 1);
        for k in 0..MAX_PAIRS as u32 {
            let mut x = a;
            x.2 = v4(k.to_be_bytes());
            r.add(x, b, b"{}", [b"", b""], [b"", b""]);
        }
        assert!(r.len() <= MAX_PAIRS);
        assert_eq!(r.leg(&keys().0), None, "started over");
    }

    fn block(legs: [&[u8]; 2], by: &[u8], texts: [&[u8]; 2], fields: [&[u8]; 2]) -> Vec<u8> {
        let mut b = BLOCK_MAGIC.to_vec();
        b.extend_from_slice(&KIND_RELAY.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        for f in [
            legs[0], legs[1], by, texts[0], texts[1], fields[0], fields[1],
        ] {
            b.extend_from_slice(&(f.len() as u32).to_le_bytes());
            b.extend_from_slice(f);
        }
        b.extend_from_slice(&[0, 0]); // padding
        b
    }

    fn leg_bytes(k: &FlowKey) -> Vec<u8> {
        let mut b = vec![k.0, k.1];
        b.extend_from_slice(&k.3.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&k.5.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&k.2);
        b.extend_from_slice(&k.4);
        b
    }

    #[test]
    fn a_recorded_pair_is_read_back_and_checked() {
        let (a, b) = keys();
        let (la, lb) = (leg_bytes(&a), leg_bytes(&b));
        let by = b"{\"pid\": 4242, \"comm\": \"docker-proxy\"}".as_slice();
        let good = block(
            [&la, &lb],
            by,
            [b"to web\x1b[2J", b"back"],
            [b"\"leg\": \"accepted\"", b""],
        );
        let note = parse_block(&good).expect("a relay block");
        assert_eq!((note.inbound, note.outbound), (a, b));
        assert_eq!(
            note.texts[0], b"to web\\x1b[2J",
            "the text is made terminal-safe"
        );
        let mut r = Relays::new();
        r.preset(&note);
        assert_eq!((r.leg(&a), r.leg(&reverse(&b))), (Some(0), Some(1)));
        // Damaged or hostile: refused whole.
        let bad_json = block([&la, &lb], b"{\"pid\": 1", [b"", b""], [b"", b""]);
        let newline = block([&la, &lb], by, [b"", b""], [b"\"leg\": \"a\nb\"", b""]);
        let not_members = block([&la, &lb], by, [b"", b""], [b"\"leg\"}, {\"x\": 1", b""]);
        let short_leg = block([&la[..37], &lb], by, [b"", b""], [b"", b""]);
        let mut other_kind = good.clone();
        other_kind[8] = 1;
        for (what, data) in [
            ("bad by", &bad_json),
            ("newline", &newline),
            ("not members", &not_members),
            ("short leg", &short_leg),
            ("kind 1", &other_kind),
        ] {
            assert_eq!(parse_block(data), None, "{what}");
        }
        for cut in 0..good.len() - 2 {
            assert_eq!(parse_block(&good[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn numbers_are_written_whole() {
        let mut buf = itoa_buf();
        assert_eq!(fmt_u64(&mut buf, 0), b"0");
        assert_eq!(fmt_u64(&mut buf, 1234567890), b"1234567890");
        assert_eq!(fmt_u64(&mut buf, u64::MAX), b"18446744073709551615");
    }
}
