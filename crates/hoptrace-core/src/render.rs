//! Paths, flows and stats as NDJSON lines (CONTRACT.md), byte for byte what
//! tracer/sinks/output.py writes: `path_line` (`_hop_line`, `_nat_line`), `flow_json` and
//! `stats_json` through `json.dumps` with `(", ", ": ")` separators, keys in their
//! order, `null` for what a packet does not have, names escaped as `json.dumps`
//! escapes them. Everything is appended to the caller's buffer.
//!
//! A flood writes the same few hops and NAT events over and over: per (label, namespace,
//! direction, addresses, ports) a hop's middle part is the same bytes every time, and a
//! NAT event's whole object is the same bytes for each packet of a flow. A small cache per
//! thread ([`Cache`]) keeps those bytes, keyed by everything they are written from
//! (the labels' [`Labels::generation`] included), and copies them rather than writing
//! them again; what differs per packet (times, IP id, TTL, skb, ...) is always written.
//! Nothing allocates once the cache's slots have their buffers.

use std::cell::RefCell;

use crate::labels::Labels;
use crate::nat::{is_inner_event, Endpoints, NatEvent, Verdict};
use crate::obs::{has, Obs};
use crate::text::{push_addr_json, push_hex, push_json_str, push_opt, push_u64};

const ETH_P_ARP: u16 = 0x0806;

/// `Observation.proto_name`: "icmp", "tcp", ..., the number for other IP protocols,
/// "arp" or "ether:0x...." for what is not IP.
pub fn push_proto_name(out: &mut Vec<u8>, family: u8, proto: u8, ethertype: u16) {
    if family == 0 {
        if ethertype == ETH_P_ARP {
            out.extend_from_slice(b"arp");
        } else {
            out.extend_from_slice(b"ether:0x");
            for k in (0..4).rev() {
                out.push(b"0123456789abcdef"[usize::from((ethertype >> (k * 4)) & 0xF)]);
            }
        }
        return;
    }
    let name: &[u8] = match proto {
        1 => b"icmp",
        6 => b"tcp",
        17 => b"udp",
        58 => b"icmp6",
        132 => b"sctp",
        47 => b"gre",
        50 => b"esp",
        _ => return push_u64(out, u64::from(proto)),
    };
    out.extend_from_slice(name);
}

fn push_proto_json(out: &mut Vec<u8>, o: &Obs) {
    out.push(b'"');
    push_proto_name(out, o.family, o.proto, o.ethertype);
    out.push(b'"');
}

/// The family a hop's addresses are shown in: ARP's sender and target protocol
/// addresses are IPv4 addresses (tests/reference/correlate.py `observation`).
#[inline]
fn shown_family(o: &Obs) -> u8 {
    if o.family == 0 && o.ethertype == ETH_P_ARP {
        4
    } else {
        o.family
    }
}

/// One hop as `_hop_line` writes it.
pub fn push_hop(out: &mut Vec<u8>, o: &Obs, labels: &Labels) {
    with_cache(|cache| push_hop_in(out, o, labels, cache));
}

/// [`push_hop`], its constant part from `cache` when there is one.
fn push_hop_in(out: &mut Vec<u8>, o: &Obs, labels: &Labels, cache: Option<&mut Cache>) {
    push_hop_head(out, o, labels, cache);
    push_hop_tail(out, o, labels);
}

/// A hop up to its TTL's value: `{"ts_ns": ..., "node": ..., ..., "ip_id": ..., "ttl": N`.
#[inline]
fn push_hop_head(out: &mut Vec<u8>, o: &Obs, labels: &Labels, cache: Option<&mut Cache>) {
    out.extend_from_slice(b"{\"ts_ns\": ");
    push_u64(out, o.ts_ns);
    match cache {
        Some(c) => c.hop_part(out, o, labels),
        None => push_hop_part(out, o, labels),
    }
    push_opt(out, (o.has & has::IP_ID != 0).then_some(u64::from(o.ip_id)));
    out.extend_from_slice(b", \"ttl\": ");
    push_u64(out, u64::from(o.ttl));
}

/// Whether two hops' tails ([`push_hop_tail`]) are the same bytes under the same labels:
/// every field a tail is written from is equal. The hops of one packet's path mostly are
/// (same skb, length, TCP sequence numbers, ...): the next hop copies the previous one's.
#[inline]
fn same_tail(a: &Obs, b: &Obs) -> bool {
    a.skb == b.skb
        && a.drop_reason == b.drop_reason
        && a.length == b.length
        && a.has == b.has
        && a.family == b.family
        && a.proto == b.proto
        && a.ethertype == b.ethertype
        && a.tcp_flags == b.tcp_flags
        && a.tcp_seq == b.tcp_seq
        && a.tcp_ack == b.tcp_ack
        && a.icmp_type == b.icmp_type
        && a.icmp_code == b.icmp_code
        && a.icmp_id == b.icmp_id
        && a.icmp_seq == b.icmp_seq
        && a.flow_label == b.flow_label
        && a.frag == b.frag
        && (a.has & has::INNER == 0
            || (a.inner_src == b.inner_src
                && a.inner_dst == b.inner_dst
                && a.inner_proto == b.inner_proto
                && a.inner_sport == b.inner_sport
                && a.inner_dport == b.inner_dport))
}

/// A hop after its TTL's value: `, "skb": ..., "drop_reason": ..., ..., "length": N, ...}`,
/// written from the fields [`same_tail`] compares (and the labels' drop reason names).
#[inline]
fn push_hop_tail(out: &mut Vec<u8>, o: &Obs, labels: &Labels) {
    if o.skb != 0 {
        out.extend_from_slice(b", \"skb\": \"0x");
        push_hex(out, o.skb);
        out.extend_from_slice(b"\", \"drop_reason\": ");
    } else {
        out.extend_from_slice(b", \"skb\": null, \"drop_reason\": ");
    }
    match (o.drop_reason, proto_length_literal(o)) {
        (0, Some(lit)) => out.extend_from_slice(lit),
        _ => {
            if o.drop_reason == 0 {
                out.extend_from_slice(b"null");
            } else if let Some(name) = labels.drop_reason(o.drop_reason) {
                push_json_str(out, name);
            } else {
                out.extend_from_slice(b"\"UNKNOWN(");
                push_u64(out, u64::from(o.drop_reason));
                out.extend_from_slice(b")\"");
            }
            out.extend_from_slice(b", \"proto\": ");
            push_proto_json(out, o);
            out.extend_from_slice(b", \"length\": ");
        }
    }
    push_u64(out, u64::from(o.length));
    if o.has & has::ICMP != 0 {
        out.extend_from_slice(b", \"icmp_type\": ");
        push_u64(out, u64::from(o.icmp_type));
        out.extend_from_slice(b", \"icmp_code\": ");
        push_u64(out, u64::from(o.icmp_code));
        out.extend_from_slice(b", \"icmp_id\": ");
        push_u64(out, u64::from(o.icmp_id));
        out.extend_from_slice(b", \"icmp_seq\": ");
        push_u64(out, u64::from(o.icmp_seq));
    }
    if o.has & has::TCP != 0 {
        out.extend_from_slice(b", \"tcp_flags\": ");
        push_u64(out, u64::from(o.tcp_flags));
        out.extend_from_slice(b", \"tcp_seq\": ");
        push_u64(out, u64::from(o.tcp_seq));
        out.extend_from_slice(b", \"tcp_ack\": ");
        push_u64(out, u64::from(o.tcp_ack));
    }
    if o.has & has::FLOW_LABEL != 0 {
        out.extend_from_slice(b", \"flow_label\": ");
        push_u64(out, u64::from(o.flow_label));
    }
    if o.has & has::FRAG != 0 {
        out.extend_from_slice(b", \"frag\": {\"offset\": ");
        push_u64(out, u64::from(o.frag & 0x1FFF) * 8);
        out.extend_from_slice(if o.frag >= 0x8000 {
            b", \"more\": true}".as_slice()
        } else {
            b", \"more\": false}"
        });
    }
    if o.has & has::INNER != 0 {
        // The quoted header's addresses are of the row's family (no ARP rule here).
        out.extend_from_slice(b", \"inner\": {\"src\": ");
        push_addr_json(out, o.family, &o.inner_src);
        out.extend_from_slice(b", \"dst\": ");
        push_addr_json(out, o.family, &o.inner_dst);
        out.extend_from_slice(b", \"proto\": ");
        push_u64(out, u64::from(o.inner_proto));
        out.extend_from_slice(b", \"sport\": ");
        push_u64(out, u64::from(o.inner_sport));
        out.extend_from_slice(b", \"dport\": ");
        push_u64(out, u64::from(o.inner_dport));
        out.push(b'}');
    }
    out.push(b'}');
}

/// `null, "proto": "<name>", "length": ` of a hop without a drop reason, for the protocols
/// with a name (what [`push_proto_name`] writes for an IP packet), in one copy.
#[inline]
fn proto_length_literal(o: &Obs) -> Option<&'static [u8]> {
    if o.family == 0 {
        return None;
    }
    macro_rules! lit {
        ($name:literal) => {
            concat!("null, \"proto\": \"", $name, "\", \"length\": ").as_bytes()
        };
    }
    Some(match o.proto {
        1 => lit!("icmp"),
        6 => lit!("tcp"),
        17 => lit!("udp"),
        58 => lit!("icmp6"),
        132 => lit!("sctp"),
        47 => lit!("gre"),
        50 => lit!("esp"),
        _ => return None,
    })
}

/// A hop's part that depends on its label, namespace, direction, addresses and ports:
/// `, "node": ..., "netns": ..., "iface": ..., "dir": ..., "src": ..., "dst": ...,
/// "sport": ..., "dport": ..., "ip_id": ` (up to the IP id's value).
fn push_hop_part(out: &mut Vec<u8>, o: &Obs, labels: &Labels) {
    let label = labels.get(o.hop);
    out.extend_from_slice(b", \"node\": ");
    out.extend_from_slice(&label.node_json);
    out.extend_from_slice(b", \"netns\": ");
    push_u64(out, o.netns);
    out.extend_from_slice(b", \"iface\": ");
    out.extend_from_slice(&label.iface_json);
    out.extend_from_slice(match o.dir {
        1 => b", \"dir\": \"rx\", \"src\": ".as_slice(),
        2 => b", \"dir\": \"tx\", \"src\": ",
        3 => b", \"dir\": \"drop\", \"src\": ",
        _ => b", \"dir\": null, \"src\": ",
    });
    let fam = shown_family(o);
    push_addr_json(out, fam, &o.src);
    out.extend_from_slice(b", \"dst\": ");
    push_addr_json(out, fam, &o.dst);
    if o.has & has::L4_PORTS != 0 {
        out.extend_from_slice(b", \"sport\": ");
        push_u64(out, u64::from(o.sport));
        out.extend_from_slice(b", \"dport\": ");
        push_u64(out, u64::from(o.dport));
        out.extend_from_slice(b", \"ip_id\": ");
    } else {
        out.extend_from_slice(b", \"sport\": null, \"dport\": null, \"ip_id\": ");
    }
}

/// `{"src": .., "sport": .., "dst": .., "dport": ..}` (`Endpoints.to_json`).
pub fn push_endpoints(out: &mut Vec<u8>, family: u8, e: &Endpoints) {
    out.extend_from_slice(b"{\"src\": ");
    push_addr_json(out, family, &e.src);
    out.extend_from_slice(b", \"sport\": ");
    push_opt(out, e.sport.map(u64::from));
    out.extend_from_slice(b", \"dst\": ");
    push_addr_json(out, family, &e.dst);
    out.extend_from_slice(b", \"dport\": ");
    push_opt(out, e.dport.map(u64::from));
    out.push(b'}');
}

/// One NAT event as `_nat_line` writes it (no rule, conntrack entry or rule source: what
/// annotators add, and a replay has none).
pub fn push_nat(out: &mut Vec<u8>, ev: &NatEvent, hops: &[Obs], labels: &Labels) {
    push_nat_noted(out, ev, hops, labels, None);
}

/// [`push_nat`] with what annotators add (`"rule": ...` onwards: crate::annotate).
pub fn push_nat_noted(
    out: &mut Vec<u8>,
    ev: &NatEvent,
    hops: &[Obs],
    labels: &Labels,
    note: Option<&[u8]>,
) {
    let inner = is_inner_event(hops, ev);
    with_cache(|cache| match cache {
        Some(c) => c.nat(out, ev, inner, labels, note),
        None => push_nat_object(out, ev, inner, labels, note),
    });
}

/// The event's object; `inner`: it rewrote the quoted header of an ICMP error.
fn push_nat_object(
    out: &mut Vec<u8>,
    ev: &NatEvent,
    inner: bool,
    labels: &Labels,
    note: Option<&[u8]>,
) {
    out.extend_from_slice(b"{\"kind\": \"");
    out.extend_from_slice(ev.kind.name().as_bytes());
    out.extend_from_slice(b"\", \"node\": ");
    out.extend_from_slice(&labels.get(ev.hop).node_json);
    out.extend_from_slice(b", \"hook\": \"");
    out.extend_from_slice(ev.hook.name().as_bytes());
    out.extend_from_slice(b"\", \"before\": ");
    push_endpoints(out, ev.family, &ev.before);
    out.extend_from_slice(b", \"after\": ");
    push_endpoints(out, ev.family, &ev.after);
    out.extend_from_slice(b", \"from_hop\": ");
    push_u64(out, u64::from(ev.from_hop));
    out.extend_from_slice(b", \"to_hop\": ");
    push_u64(out, u64::from(ev.to_hop()));
    match note {
        Some(n) => {
            out.extend_from_slice(b", ");
            out.extend_from_slice(n);
        }
        None => out.extend_from_slice(b", \"rule\": null"),
    }
    if let Some((before, after)) = ev.icmp_ids {
        out.extend_from_slice(b", \"icmp_id_before\": ");
        push_u64(out, u64::from(before));
        out.extend_from_slice(b", \"icmp_id_after\": ");
        push_u64(out, u64::from(after));
    }
    if inner {
        out.extend_from_slice(b", \"inner\": true");
    }
    out.push(b'}');
}

/// One path as its NDJSON line, newline included. `hops` is never empty.
pub fn push_path_line(
    out: &mut Vec<u8>,
    num: u64,
    flow: Option<u64>,
    verdict: Verdict,
    hops: &[Obs],
    nat: &[NatEvent],
    labels: &Labels,
) {
    push_path_line_noted(out, num, flow, verdict, hops, nat, &[], labels);
}

/// [`push_path_line`] with the NAT events' annotations (`notes`: one per event, or none).
#[allow(clippy::too_many_arguments)]
pub fn push_path_line_noted(
    out: &mut Vec<u8>,
    num: u64,
    flow: Option<u64>,
    verdict: Verdict,
    hops: &[Obs],
    nat: &[NatEvent],
    notes: &[crate::annotate::NatNote],
    labels: &Labels,
) {
    out.extend_from_slice(b"{\"type\": \"path\", \"id\": \"p");
    push_u64(out, num);
    match flow {
        Some(f) => {
            out.extend_from_slice(b"\", \"flow\": \"f");
            push_u64(out, f);
            out.extend_from_slice(b"\", \"proto\": ");
        }
        None => out.extend_from_slice(b"\", \"flow\": null, \"proto\": "),
    }
    match hops.first() {
        Some(first) => push_proto_json(out, first),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b", \"verdict\": \"");
    out.extend_from_slice(verdict.name().as_bytes());
    out.extend_from_slice(b"\", \"hops\": [");
    with_cache(|mut cache| {
        // The previous hop and where its tail is in `out`.
        let mut prev: Option<(&Obs, std::ops::Range<usize>)> = None;
        for (i, h) in hops.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            push_hop_head(out, h, labels, cache.as_deref_mut());
            let start = out.len();
            match prev {
                Some((p, ref tail)) if same_tail(p, h) => out.extend_from_within(tail.clone()),
                _ => push_hop_tail(out, h, labels),
            }
            prev = Some((h, start..out.len()));
        }
        out.extend_from_slice(b"], \"nat\": [");
        for (i, ev) in nat.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            let note = notes.get(i).map(|n| n.json.as_slice());
            let inner = is_inner_event(hops, ev);
            match cache.as_deref_mut() {
                Some(c) => c.nat(out, ev, inner, labels, note),
                None => push_nat_object(out, ev, inner, labels, note),
            }
        }
    });
    out.extend_from_slice(b"]}\n");
}

// ------------------------------------------------------------------ the cache

/// Slots for hops' constant parts (a power of two; two-way sets): a flood's few flows times
/// their hops fit; many flows share slots and take turns.
const HOP_SLOTS: usize = 256;
/// Slots for NAT events' objects (a power of two; two-way sets).
const NAT_SLOTS: usize = 64;

/// Everything a hop's [`push_hop_part`] is written from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct HopKey {
    /// The labels table's [`Labels::generation`]: names are looked up there.
    generation: u64,
    netns: u64,
    hop: u32,
    /// 0 when the hop has no ports (they are not written).
    sport: u16,
    dport: u16,
    dir: u8,
    /// The family the addresses are written in.
    family: u8,
    ports: bool,
    src: [u8; 16],
    dst: [u8; 16],
}

impl HopKey {
    #[inline]
    fn of(o: &Obs, labels: &Labels) -> HopKey {
        let ports = o.has & has::L4_PORTS != 0;
        HopKey {
            generation: labels.generation(),
            netns: o.netns,
            hop: o.hop,
            sport: if ports { o.sport } else { 0 },
            dport: if ports { o.dport } else { 0 },
            dir: o.dir,
            family: shown_family(o),
            ports,
            src: o.src,
            dst: o.dst,
        }
    }

    /// Its set: a multiplicative hash of the fields, top bits.
    #[inline]
    fn set(&self) -> usize {
        let (s, d) = (u128::from_le_bytes(self.src), u128::from_le_bytes(self.dst));
        let h = (s as u64)
            ^ ((s >> 64) as u64).rotate_left(13)
            ^ (d as u64).rotate_left(29)
            ^ ((d >> 64) as u64).rotate_left(43)
            ^ self.netns.rotate_left(7)
            ^ (u64::from(self.hop) << 48)
            ^ (u64::from(self.sport) << 16 | u64::from(self.dport)).rotate_left(37)
            ^ u64::from(self.dir) << 60;
        set_of(h, HOP_SLOTS / 2)
    }
}

/// Which of `sets` (a power of two) `h` goes to: the top bits of a multiplicative hash
/// (they depend on every bit of `h`; the low ones only on its low bits).
#[inline]
fn set_of(h: u64, sets: usize) -> usize {
    let bits = sets.trailing_zeros();
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits).min(63)) as usize
}

/// The slot of two-way set `set` for what `hit` looks for: (the set's first slot, whether
/// it holds it). A hit in the second slot moves to the first; on a miss the first slot is
/// the least recently used one's, to be written (the other moves to the second).
#[inline]
fn lookup<T>(slots: &mut [T], set: usize, hit: impl Fn(&T) -> bool) -> Option<(&mut T, bool)> {
    let Some([a, b]) = slots.get_mut(2 * set..2 * set + 2) else {
        return None;
    };
    if hit(a) {
        return Some((a, true));
    }
    let second = hit(b);
    std::mem::swap(a, b);
    Some((a, second))
}

#[derive(Debug, Default)]
struct HopSlot {
    key: HopKey,
    /// The part's bytes; empty while the slot holds nothing.
    text: Vec<u8>,
}

#[derive(Debug, Default)]
struct NatSlot {
    /// (labels' generation, the event, whether it is an inner one); `None` while empty.
    key: Option<(u64, NatEvent, bool)>,
    /// The annotator's note the object was written with (`noted` false: none).
    noted: bool,
    note: Vec<u8>,
    text: Vec<u8>,
}

/// What was written lately, per thread (see the module documentation).
#[derive(Debug)]
struct Cache {
    hops: Vec<HopSlot>,
    nat: Vec<NatSlot>,
    hops_use: Usefulness,
    nat_use: Usefulness,
}

/// Looks that find nothing cost more than writing afresh: with many flows (more hops than
/// slots) the cache is left alone for a while when fewer than a third of a window's looks hit.
#[derive(Debug, Clone, Copy)]
struct Usefulness {
    looks: u32,
    hits: u32,
    /// Writes left to do without the cache.
    skip: u32,
}

/// Looks per verdict, and writes without the cache after a bad one.
const WINDOW: u32 = 1024;
const SKIP: u32 = 63 * WINDOW;

impl Usefulness {
    const NEW: Usefulness = Usefulness {
        looks: 0,
        hits: 0,
        skip: 0,
    };

    /// Whether to look this time.
    #[inline]
    fn look(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    #[inline]
    fn record(&mut self, hit: bool) {
        self.looks += 1;
        self.hits += u32::from(hit);
        if self.looks >= WINDOW {
            if self.hits * 3 < self.looks {
                self.skip = SKIP;
            }
            self.looks = 0;
            self.hits = 0;
        }
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = const {
        RefCell::new(Cache {
            hops: Vec::new(),
            nat: Vec::new(),
            hops_use: Usefulness::NEW,
            nat_use: Usefulness::NEW,
        })
    };
}

/// `f` with this thread's cache, or without one (while the thread ends, or re-entered).
#[inline]
fn with_cache(f: impl FnOnce(Option<&mut Cache>)) {
    let mut f = Some(f);
    let _ = CACHE.try_with(|c| {
        if let (Ok(mut c), Some(f)) = (c.try_borrow_mut(), f.take()) {
            f(Some(&mut c));
        }
    });
    if let Some(f) = f {
        f(None);
    }
}

impl Cache {
    /// [`push_hop_part`], copied when written before.
    #[inline]
    fn hop_part(&mut self, out: &mut Vec<u8>, o: &Obs, labels: &Labels) {
        if !self.hops_use.look() {
            return push_hop_part(out, o, labels);
        }
        if self.hops.is_empty() {
            self.hops.resize_with(HOP_SLOTS, HopSlot::default);
        }
        let key = HopKey::of(o, labels);
        let hit = |s: &HopSlot| s.key == key && !s.text.is_empty();
        let Some((slot, true_hit)) = lookup(&mut self.hops, key.set(), hit) else {
            return push_hop_part(out, o, labels);
        };
        self.hops_use.record(true_hit);
        if true_hit {
            out.extend_from_slice(&slot.text);
            return;
        }
        let start = out.len();
        push_hop_part(out, o, labels);
        slot.key = key;
        slot.text.clear();
        slot.text
            .extend_from_slice(out.get(start..).unwrap_or_default());
    }

    /// [`push_nat_object`], copied when written before.
    #[inline]
    fn nat(
        &mut self,
        out: &mut Vec<u8>,
        ev: &NatEvent,
        inner: bool,
        labels: &Labels,
        note: Option<&[u8]>,
    ) {
        if !self.nat_use.look() {
            return push_nat_object(out, ev, inner, labels, note);
        }
        if self.nat.is_empty() {
            self.nat.resize_with(NAT_SLOTS, NatSlot::default);
        }
        let key = (labels.generation(), *ev, inner);
        let (b, a) = (&ev.before, &ev.after);
        let h = u128::from_le_bytes(b.src) as u64
            ^ (u128::from_le_bytes(b.dst) as u64).rotate_left(17)
            ^ (u128::from_le_bytes(a.src) as u64).rotate_left(31)
            ^ (u128::from_le_bytes(a.dst) as u64).rotate_left(47)
            ^ u64::from(b.sport.unwrap_or(0)) << 8
            ^ u64::from(a.sport.unwrap_or(0)) << 24
            ^ u64::from(ev.hop) << 40
            ^ u64::from(ev.from_hop) << 56;
        let hit = |s: &NatSlot| {
            let same_note = match note {
                Some(n) => s.noted && s.note == n,
                None => !s.noted,
            };
            same_note && s.key == Some(key)
        };
        let Some((slot, true_hit)) = lookup(&mut self.nat, set_of(h, NAT_SLOTS / 2), hit) else {
            return push_nat_object(out, ev, inner, labels, note);
        };
        self.nat_use.record(true_hit);
        if true_hit {
            out.extend_from_slice(&slot.text);
            return;
        }
        let start = out.len();
        push_nat_object(out, ev, inner, labels, note);
        slot.key = Some(key);
        slot.noted = note.is_some();
        slot.note.clear();
        slot.note.extend_from_slice(note.unwrap_or_default());
        slot.text.clear();
        slot.text
            .extend_from_slice(out.get(start..).unwrap_or_default());
    }
}

/// What a flow line says (`Flow`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowLine<'a> {
    pub num: u64,
    pub family: u8,
    pub proto: u8,
    pub original: &'a Endpoints,
    pub reply: &'a Endpoints,
    pub paths: &'a [u64],
    /// The conntrack entry an annotator found for one of its paths' NAT events.
    pub conntrack_id: Option<u64>,
}

/// One flow as `json.dumps(flow_json(flow))` writes it, newline included.
pub fn push_flow_line(out: &mut Vec<u8>, f: &FlowLine<'_>) {
    out.extend_from_slice(b"{\"type\": \"flow\", \"id\": \"f");
    push_u64(out, f.num);
    out.extend_from_slice(b"\", \"proto\": \"");
    push_proto_name(out, f.family, f.proto, 0);
    out.extend_from_slice(b"\", \"original\": ");
    push_endpoints(out, f.family, f.original);
    out.extend_from_slice(b", \"reply\": ");
    push_endpoints(out, f.family, f.reply);
    out.extend_from_slice(b", \"paths\": [");
    for (i, p) in f.paths.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"\"p");
        push_u64(out, *p);
        out.push(b'"');
    }
    out.push(b']');
    if let Some(ct) = f.conntrack_id {
        out.extend_from_slice(b", \"conntrack_id\": ");
        push_u64(out, ct);
    }
    out.extend_from_slice(b"}\n");
}

/// The stats line (`stats_json`), newline included. `elapsed_s` as Python's
/// `repr(round(x, 3))`: three decimals at most, trailing zeros dropped, at least one kept.
pub fn push_stats_line(
    out: &mut Vec<u8>,
    observations: u64,
    paths: u64,
    lost_events: u64,
    elapsed_s: f64,
) {
    out.extend_from_slice(b"{\"type\": \"stats\", \"observations\": ");
    push_u64(out, observations);
    out.extend_from_slice(b", \"paths\": ");
    push_u64(out, paths);
    out.extend_from_slice(b", \"lost_events\": ");
    push_u64(out, lost_events);
    out.extend_from_slice(b", \"elapsed_s\": ");
    // Once per run: fmt is fine here.
    let text = format!(
        "{:.3}",
        if elapsed_s.is_finite() {
            elapsed_s
        } else {
            0.0
        }
    );
    let trimmed = text.trim_end_matches('0');
    out.extend_from_slice(trimmed.as_bytes());
    if trimmed.ends_with('.') {
        out.push(b'0');
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::{Hook, NatKind};

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).expect("utf8")
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&a);
        r
    }

    #[test]
    fn proto_names() {
        assert_eq!(s(|o| push_proto_name(o, 4, 1, 0x800)), "icmp");
        assert_eq!(s(|o| push_proto_name(o, 6, 58, 0x86dd)), "icmp6");
        assert_eq!(s(|o| push_proto_name(o, 4, 99, 0x800)), "99");
        assert_eq!(s(|o| push_proto_name(o, 0, 0, 0x806)), "arp");
        assert_eq!(s(|o| push_proto_name(o, 0, 0, 0x88cc)), "ether:0x88cc");
        assert_eq!(s(|o| push_proto_name(o, 0, 0, 0x1)), "ether:0x0001");
    }

    #[test]
    fn a_path_line_as_python_writes_it() {
        // tracer.sinks.output.path_line of the same path, on this machine.
        let mut labels = Labels::new();
        let web = labels.intern("web", "eth0");
        let host = labels.intern("host", "eth0");
        labels.set_drop_reason(2, "NETFILTER_DROP");
        let a = Obs {
            ts_ns: 1795805084432385000,
            hop: web,
            netns: 4026532466,
            dir: 2,
            family: 4,
            proto: 1,
            ethertype: 0x800,
            has: has::ICMP | has::IP_ID,
            src: v4([172, 17, 0, 2]),
            dst: v4([198, 51, 100, 8]),
            ip_id: 19776,
            ttl: 64,
            skb: 0xffff888108472600,
            length: 84,
            icmp_type: 8,
            icmp_id: 7,
            icmp_seq: 1,
            ..Obs::default()
        };
        let b = Obs {
            hop: host,
            netns: 4026531840,
            dir: 3,
            src: v4([203, 0, 113, 2]),
            drop_reason: 2,
            skb: 0,
            ..a
        };
        let ev = NatEvent {
            kind: NatKind::Snat,
            hop: host,
            hook: Hook::Postrouting,
            family: 4,
            before: Endpoints::of(&a),
            after: Endpoints::of(&b),
            from_hop: 0,
            icmp_ids: None,
        };
        let line = s(|o| push_path_line(o, 17, Some(4), Verdict::Dropped, &[a, b], &[ev], &labels));
        let want = concat!(
            r#"{"type": "path", "id": "p17", "flow": "f4", "proto": "icmp", "verdict": "dropped", "hops": ["#,
            r#"{"ts_ns": 1795805084432385000, "node": "web", "netns": 4026532466, "iface": "eth0", "dir": "tx", "#,
            r#""src": "172.17.0.2", "dst": "198.51.100.8", "sport": null, "dport": null, "ip_id": 19776, "ttl": 64, "#,
            r#""skb": "0xffff888108472600", "drop_reason": null, "proto": "icmp", "length": 84, "icmp_type": 8, "#,
            r#""icmp_code": 0, "icmp_id": 7, "icmp_seq": 1}, "#,
            r#"{"ts_ns": 1795805084432385000, "node": "host", "netns": 4026531840, "iface": "eth0", "dir": "drop", "#,
            r#""src": "203.0.113.2", "dst": "198.51.100.8", "sport": null, "dport": null, "ip_id": 19776, "ttl": 64, "#,
            r#""skb": null, "drop_reason": "NETFILTER_DROP", "proto": "icmp", "length": 84, "icmp_type": 8, "#,
            r#""icmp_code": 0, "icmp_id": 7, "icmp_seq": 1}], "#,
            r#""nat": [{"kind": "snat", "node": "host", "hook": "POSTROUTING", "#,
            r#""before": {"src": "172.17.0.2", "sport": null, "dst": "198.51.100.8", "dport": null}, "#,
            r#""after": {"src": "203.0.113.2", "sport": null, "dst": "198.51.100.8", "dport": null}, "#,
            r#""from_hop": 0, "to_hop": 1, "rule": null}]}"#,
            "\n"
        );
        assert_eq!(line, want);
    }

    #[test]
    fn flow_and_stats_lines() {
        let e = Endpoints {
            src: v4([172, 17, 0, 2]),
            sport: Some(40000),
            dst: v4([198, 51, 100, 8]),
            dport: Some(53),
        };
        let line = s(|o| {
            push_flow_line(
                o,
                &FlowLine {
                    num: 4,
                    family: 4,
                    proto: 17,
                    original: &e,
                    reply: &e,
                    paths: &[17, 18],
                    conntrack_id: None,
                },
            )
        });
        assert_eq!(
            line,
            concat!(
                r#"{"type": "flow", "id": "f4", "proto": "udp", "#,
                r#""original": {"src": "172.17.0.2", "sport": 40000, "dst": "198.51.100.8", "dport": 53}, "#,
                r#""reply": {"src": "172.17.0.2", "sport": 40000, "dst": "198.51.100.8", "dport": 53}, "#,
                r#""paths": ["p17", "p18"]}"#,
                "\n"
            )
        );
        // repr(round(x, 3)) in Python.
        for (x, want) in [
            (0.0, "0.0"),
            (5.0, "5.0"),
            (0.0574, "0.057"),
            (0.0575, "0.058"), // 0.05750000000000000249... in binary
            (0.0625, "0.062"), // an exact tie: to even, as Python's round
            (12.3456, "12.346"),
            (0.1, "0.1"),
            (100.25, "100.25"),
        ] {
            let line = s(|o| push_stats_line(o, 14, 4, 0, x));
            assert_eq!(
                line,
                format!(
                    "{{\"type\": \"stats\", \"observations\": 14, \"paths\": 4, \"lost_events\": 0, \"elapsed_s\": {want}}}\n"
                )
            );
        }
    }

    /// Hops unlike each other in what the cached part is written from.
    fn template(t: usize) -> Obs {
        let base = Obs {
            netns: 4026531840,
            dir: 1,
            family: 4,
            proto: 17,
            ethertype: 0x800,
            has: has::L4_PORTS | has::IP_ID,
            src: v4([172, 17, 0, 2]),
            dst: v4([198, 51, 100, 8]),
            sport: 40000,
            dport: 53,
            ttl: 64,
            length: 92,
            ..Obs::default()
        };
        let v6 = |last: u8| {
            let mut a = [0u8; 16];
            a[0] = 0x20;
            a[1] = 0x01;
            a[15] = last;
            a
        };
        match t % 8 {
            0 => base,
            1 => Obs {
                hop: 1,
                dir: 2,
                netns: 4026532001,
                ..base
            },
            2 => Obs {
                has: has::IP_ID,
                proto: 1,
                ..base
            }, // no ports: not written
            3 => Obs {
                family: 6,
                ethertype: 0x86dd,
                src: v6(1),
                dst: v6(2),
                proto: 58,
                has: 0,
                ..base
            },
            4 => Obs {
                family: 0,
                ethertype: 0x0806,
                proto: 0,
                has: 0,
                ..base
            }, // ARP: IPv4 shown
            5 => Obs {
                family: 0,
                ethertype: 0x88cc,
                proto: 0,
                has: 0,
                hop: 2,
                ..base
            },
            6 => Obs {
                hop: 5,
                dir: 3,
                drop_reason: 2,
                ..base
            }, // outside the table until names come
            _ => Obs {
                dir: 0,
                proto: 200,
                drop_reason: 77,
                hop: 2,
                ..base
            },
        }
    }

    fn fresh_hop(o: &Obs, labels: &Labels) -> Vec<u8> {
        let mut v = Vec::new();
        push_hop_in(&mut v, o, labels, None);
        v
    }

    #[test]
    fn a_cached_hop_part_follows_its_labels() {
        // Index 5 is outside the table (empty names), then named: the copy must not stay.
        let mut labels = Labels::new();
        for (n, i) in [("web", "eth0"), ("host", "eth0"), ("host", "docker0")] {
            labels.intern(n, i);
        }
        let o = template(6);
        let before = s(|v| push_hop(v, &o, &labels));
        assert!(before.contains(r#""node": "", "#), "{before}");
        labels.intern("a", "b");
        labels.intern("a", "c");
        labels.intern("late\"node", "veth\u{e9}");
        let after = s(|v| push_hop(v, &o, &labels));
        assert!(after.contains(r#""node": "late\"node", "#), "{after}");
        assert!(after.contains(r#""iface": "veth\u00e9", "#), "{after}");
        assert_eq!(after.as_bytes(), fresh_hop(&o, &labels));
    }

    proptest::proptest! {
        #[test]
        fn cached_parts_are_what_is_written_afresh(
            picks in proptest::collection::vec(
                (0usize..8, proptest::prelude::any::<u64>(), 0u16..3, 0u8..8),
                1..80,
            ),
        ) {
            // Two tables with the same indices and other names, and one that grows.
            let mut a = Labels::new();
            let mut b = Labels::new();
            for (n, i) in [("web", "eth0"), ("host", "eth0"), ("host", "docker0")] {
                a.intern(n, i);
            }
            for (n, i) in [("w\u{1F600}", "e"), ("h", "x\ty"), ("h", "")] {
                b.intern(n, i);
            }
            a.set_drop_reason(2, "NETFILTER_DROP");
            b.set_drop_reason(77, "OTHER");
            let mut events = Vec::new();
            for (k, &(t, r, port, what)) in picks.iter().enumerate() {
                if what == 7 {
                    // A new name: the table's generation changes, index 3.. appears.
                    a.intern("grown", &format!("if{k}"));
                }
                let labels = if what & 1 == 0 { &a } else { &b };
                let o = Obs {
                    ts_ns: r,
                    ip_id: (r >> 8) as u32 & 0xffff,
                    skb: if r & 4 == 0 { 0 } else { r | 1 << 63 },
                    sport: template(t).sport + port,
                    ..template(t)
                };
                let cached = s(|v| push_hop(v, &o, labels));
                let fresh = fresh_hop(&o, labels);
                proptest::prop_assert_eq!(cached.as_bytes(), fresh.as_slice());
                // NAT events of a pool, now and then with a note or as an inner one.
                let prev = template(t + 1);
                let ev = NatEvent {
                    kind: if port == 0 { NatKind::Snat } else { NatKind::Dnat },
                    hop: o.hop,
                    hook: Hook::Postrouting,
                    family: o.family,
                    before: Endpoints::of(&prev),
                    after: Endpoints::of(&o),
                    from_hop: u32::from(what & 1),
                    icmp_ids: (what == 3).then_some((7, 9)),
                };
                events.push(ev);
                let ev = events[(r % events.len() as u64) as usize];
                let note: Option<&[u8]> = match what % 3 {
                    0 => None,
                    1 => Some(br#""rule": "MASQUERADE""#),
                    _ => Some(br#""rule": "DNAT", "conntrack": {"id": 5}"#),
                };
                let inner = r & 8 != 0;
                let mut cached = Vec::new();
                with_cache(|c| match c {
                    Some(c) => c.nat(&mut cached, &ev, inner, labels, note),
                    None => push_nat_object(&mut cached, &ev, inner, labels, note),
                });
                let mut fresh = Vec::new();
                push_nat_object(&mut fresh, &ev, inner, labels, note);
                proptest::prop_assert_eq!(cached, fresh);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn a_path_line_is_its_hops_written_afresh(
            picks in proptest::collection::vec(
                (0usize..8, proptest::prelude::any::<u64>(), 0u8..4),
                1..12,
            ),
        ) {
            // Hops that mostly repeat the previous one's tail (one packet's path), now and
            // then differing in one field it is written from.
            let mut labels = Labels::new();
            for (n, i) in [("web", "eth0"), ("host", "eth0"), ("host", "docker0")] {
                labels.intern(n, i);
            }
            labels.set_drop_reason(2, "NETFILTER_DROP");
            let mut hops: Vec<Obs> = Vec::new();
            for &(t, r, how) in &picks {
                let base = match (how, hops.last()) {
                    (0 | 1, Some(p)) => *p,
                    _ => template(t),
                };
                let mut o = Obs { ts_ns: r >> 3, ttl: (r >> 20) as u8, hop: (t % 3) as u32, ..base };
                if how == 1 {
                    match r % 12 {
                        0 => o.skb = r | 1,
                        1 => o.drop_reason = [0, 2, 77][(r >> 8) as usize % 3],
                        2 => o.length = (r >> 8) as u32,
                        3 => o.has ^= [has::TCP, has::ICMP, has::FLOW_LABEL, has::FRAG, has::INNER][(r >> 8) as usize % 5],
                        4 => o.tcp_seq = (r >> 8) as u32,
                        5 => o.tcp_ack = (r >> 8) as u32,
                        6 => o.tcp_flags = (r >> 8) as u8,
                        7 => o.icmp_seq = (r >> 8) as u16,
                        8 => o.frag = (r >> 8) as u16,
                        9 => o.flow_label = (r >> 8) as u32,
                        10 => o.inner_dport = (r >> 8) as u16,
                        _ => o.proto = (r >> 8) as u8,
                    }
                }
                if how == 2 {
                    o.has |= has::TCP | has::INNER | has::FRAG | has::FLOW_LABEL;
                    o.tcp_seq = (r >> 16) as u32;
                    o.inner_src = v4([10, 0, 0, (r >> 40) as u8]);
                }
                hops.push(o);
            }
            let line = s(|v| push_path_line(v, 7, Some(3), Verdict::Delivered, &hops, &[], &labels));
            let start = line.find("\"hops\": [").map(|i| i + "\"hops\": [".len()).unwrap_or(0);
            let mut want = line.as_bytes()[..start].to_vec();
            for (i, h) in hops.iter().enumerate() {
                if i > 0 {
                    want.extend_from_slice(b", ");
                }
                want.extend_from_slice(&fresh_hop(h, &labels));
            }
            want.extend_from_slice(b"], \"nat\": []}\n");
            proptest::prop_assert_eq!(line.as_bytes(), want.as_slice());
        }
    }

    #[test]
    fn a_cache_that_misses_is_left_alone_for_a_while() {
        let mut u = Usefulness::NEW;
        for k in 0..WINDOW {
            assert!(u.look());
            u.record(k % 3 == 0); // a third hit: kept
        }
        assert!(u.look());
        for _ in 0..WINDOW {
            assert!(u.look());
            u.record(false);
        }
        for _ in 0..SKIP {
            assert!(!u.look());
        }
        assert!(u.look());
    }

    #[test]
    fn many_flows_written_as_afresh_with_and_without_the_cache() {
        // More distinct hops than slots, then a few over and over: the cache is skipped,
        // then used again; every hop as written afresh throughout.
        let mut labels = Labels::new();
        for (n, i) in [("web", "eth0"), ("host", "eth0"), ("host", "docker0")] {
            labels.intern(n, i);
        }
        let n = 3 * (WINDOW + SKIP) as usize;
        for k in 0..n {
            let distinct = k < n / 2;
            let f = if distinct { k } else { k % 3 };
            let o = Obs {
                ts_ns: k as u64,
                sport: (f % 60_000) as u16,
                dport: (f / 60_000) as u16,
                ..template(k % 2)
            };
            let cached = s(|v| push_hop(v, &o, &labels));
            assert_eq!(cached.as_bytes(), fresh_hop(&o, &labels), "{k}");
        }
        let used = CACHE.with_borrow(|c| c.hops_use);
        assert_eq!(used.skip, 0, "used again once the flows are few");
    }
}
