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

    #[test]
    fn numbers_are_written_whole() {
        let mut buf = itoa_buf();
        assert_eq!(fmt_u64(&mut buf, 0), b"0");
        assert_eq!(fmt_u64(&mut buf, 1234567890), b"1234567890");
        assert_eq!(fmt_u64(&mut buf, u64::MAX), b"18446744073709551615");
    }
}
