//! Paths, flows and stats as text a person reads: byte for byte what tracer/sinks/output.py's
//! `TextSink` writes (`path_text`, `_route_text`, `_hop_detail`, `nat_text`, `flow_text`,
//! `stats_text`, `duration_text`, `what_text`, `drop_hint`, `numeric_path`), from the same
//! data the NDJSON renderer (render.rs) gets.
//!
//! Every untrusted name (node, interface, drop reason) goes through `term_safe`
//! (safe_text.rs): the labels hold their names escaped once, drop reasons are escaped
//! where they are written. Columns are counted in characters, as Python's `ljust` counts
//! them. Everything is appended to the caller's buffer; nothing allocates.

use crate::drops;
use crate::labels::{Label, Labels};
use crate::nat::{is_inner_event, Endpoints, NatEvent, NatKind, Verdict};
use crate::obs::{dir, has, Obs};
use crate::pytext::is_space;
use crate::render::{push_proto_name, FlowLine};
use crate::safe_text::{char_count, push_term_safe};
use crate::text::{push_addr, push_hex, push_u64};

const ETH_P_ARP: u16 = 0x0806;

/// How the text output looks: tcpdump's -n, -q / -v, and colour (tracer/sinks/output.py
/// `TextOptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextOptions {
    /// Nodes as `netns:<inode>` wherever the hop knows its namespace (-n).
    pub numeric: bool,
    /// -1 one line per path (-q), 0 the default block, 1 addresses/TTL/IP id/length per
    /// hop (-v), 2 also the time and skb (-vv). Above 2 reads as 2, below -1 as -1.
    pub detail: i8,
    /// ANSI colours on verdicts, drops and NAT kinds.
    pub color: bool,
}

/// What the finisher writes: CONTRACT.md's NDJSON (`--json`) or text for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Ndjson,
    Text(TextOptions),
}

// ------------------------------------------------------------------ small pieces

/// SGR code of a verdict, a drop, a NAT kind (`_SGR`).
fn sgr_verdict(v: Verdict) -> &'static [u8] {
    match v {
        Verdict::Delivered => b"32",
        Verdict::Dropped => b"1;31",
        Verdict::Left => b"36",
        Verdict::Incomplete => b"33",
    }
}
const SGR_DROP: &[u8] = b"1;31";
const SGR_NAT: &[u8] = b"35";

#[inline]
fn paint_open(out: &mut Vec<u8>, code: &[u8], color: bool) {
    if color {
        out.extend_from_slice(b"\x1b[");
        out.extend_from_slice(code);
        out.push(b'm');
    }
}

#[inline]
fn paint_close(out: &mut Vec<u8>, color: bool) {
    if color {
        out.extend_from_slice(b"\x1b[0m");
    }
}

/// 10^k for k in 0..=3: the precisions `duration_text` uses.
const POW10: [u128; 4] = [1, 10, 100, 1000];

/// `f"{n / d:.{prec}f}"` in Python for `n / d >= 1` and `prec <= 3`: the quotient
/// correctly rounded to a double (int true division), then that double's exact value
/// rounded half to even at `prec` decimals (float formatting). In integers: the double
/// is `m / 2^k` with a 53-bit `m`.
fn push_ratio(out: &mut Vec<u8>, n: u64, d: u64, prec: usize) {
    let t = n / d.max(1);
    if t == 0 {
        return push_u64(out, 0); // outside the domain; never asked
    }
    let e = 63 - t.leading_zeros(); // floor(log2(n / d)), as n / d >= 1
    let k = 52u32.saturating_sub(e); // t < 2^53 for every n / d this module asks
    let d = u128::from(d.max(1));
    let num = u128::from(n) << k;
    let (mut m, r) = (num / d, num % d);
    if 2 * r > d || (2 * r == d && m & 1 == 1) {
        m += 1;
    }
    let p = POW10.get(prec).copied().unwrap_or(1000);
    let s = m * p;
    let (mut v, rem) = (s >> k, s & ((1u128 << k) - 1));
    if k > 0 {
        let half = 1u128 << (k - 1);
        if rem > half || (rem == half && v & 1 == 1) {
            v += 1;
        }
    }
    push_u64(out, u64::try_from(v / p).unwrap_or(u64::MAX));
    if prec > 0 {
        out.push(b'.');
        let frac = u64::try_from(v % p).unwrap_or(0);
        let mut digits = [b'0'; 3];
        let mut f = frac;
        for slot in digits.iter_mut().take(prec).rev() {
            *slot = b'0' + (f % 10) as u8;
            f /= 10;
        }
        out.extend_from_slice(digits.get(..prec).unwrap_or_default());
    }
}

/// `duration_text(ns)`: `640 ns`, `1.5 µs`, `164 µs`, `2.3 ms`, `1.25 s`. A negative `ns`
/// (never in time-ordered hops) as Python writes it: `-5 ns`.
pub fn push_duration(out: &mut Vec<u8>, ns: i128) {
    if ns < 1_000 {
        if ns < 0 {
            out.push(b'-');
        }
        push_u64(out, u64::try_from(ns.unsigned_abs()).unwrap_or(u64::MAX));
        out.extend_from_slice(b" ns");
        return;
    }
    let ns = u64::try_from(ns).unwrap_or(u64::MAX);
    if ns < 1_000_000 {
        push_ratio(out, ns, 1_000, if ns >= 10_000 { 0 } else { 1 });
        out.extend_from_slice(" µs".as_bytes());
    } else if ns < 1_000_000_000 {
        push_ratio(out, ns, 1_000_000, 1);
        out.extend_from_slice(b" ms");
    } else {
        push_ratio(out, ns, 1_000_000_000, 2);
        out.extend_from_slice(b" s");
    }
}

/// `addr_port(addr, port)`: `a.b.c.d:port`, `[v6]:port`, or the address alone.
pub(crate) fn push_addr_port(out: &mut Vec<u8>, family: u8, addr: &[u8; 16], port: Option<u16>) {
    match port {
        Some(p) if family == 6 => {
            out.push(b'[');
            push_addr(out, family, addr);
            out.extend_from_slice(b"]:");
            push_u64(out, u64::from(p));
        }
        Some(p) => {
            push_addr(out, family, addr);
            out.push(b':');
            push_u64(out, u64::from(p));
        }
        None => push_addr(out, family, addr),
    }
}

const ARROW: &[u8] = " → ".as_bytes();

/// `src → dst` of a header (`endpoints_text`).
fn push_endpoints(out: &mut Vec<u8>, family: u8, e: &Endpoints) {
    push_addr_port(out, family, &e.src, e.sport);
    out.extend_from_slice(ARROW);
    push_addr_port(out, family, &e.dst, e.dport);
}

/// The family a hop's addresses are shown in: ARP's are IPv4 (as render.rs).
#[inline]
pub(crate) fn shown_family(o: &Obs) -> u8 {
    if o.family == 0 && o.ethertype == ETH_P_ARP {
        4
    } else {
        o.family
    }
}

#[inline]
fn port(o: &Obs, p: u16) -> Option<u16> {
    (o.has & has::L4_PORTS != 0).then_some(p)
}

/// `src:sport → dst:dport` of a hop.
fn push_hop_endpoints(out: &mut Vec<u8>, o: &Obs) {
    let fam = shown_family(o);
    push_addr_port(out, fam, &o.src, port(o, o.sport));
    out.extend_from_slice(ARROW);
    push_addr_port(out, fam, &o.dst, port(o, o.dport));
}

fn icmp_name(proto: u8, t: u8) -> Option<&'static [u8]> {
    Some(match (proto, t) {
        (1, 0) | (58, 129) => b"echo-reply",
        (1, 3) | (58, 1) => b"unreachable",
        (1, 5) => b"redirect",
        (1, 8) | (58, 128) => b"echo-request",
        (1, 11) | (58, 3) => b"time-exceeded",
        (1, 12) => b"parameter-problem",
        (58, 2) => b"packet-too-big",
        (58, 133) => b"router-solicitation",
        (58, 134) => b"router-advertisement",
        (58, 135) => b"neighbor-solicitation",
        (58, 136) => b"neighbor-advertisement",
        _ => return None,
    })
}

/// `what_text(h)`: `icmp echo-request id 7 seq 1`, `tcp [SA]`, `udp frag @1480+`.
pub fn push_what(out: &mut Vec<u8>, o: &Obs) {
    push_proto_name(out, o.family, o.proto, o.ethertype);
    if o.family == 0 {
        return;
    }
    if o.has & has::ICMP != 0 {
        out.push(b' ');
        match icmp_name(o.proto, o.icmp_type) {
            Some(name) => out.extend_from_slice(name),
            None => {
                out.extend_from_slice(b"type ");
                push_u64(out, u64::from(o.icmp_type));
                out.push(b'/');
                push_u64(out, u64::from(o.icmp_code));
            }
        }
        if matches!((o.proto, o.icmp_type), (1, 0 | 8) | (58, 128 | 129)) {
            out.extend_from_slice(b" id ");
            push_u64(out, u64::from(o.icmp_id));
            out.extend_from_slice(b" seq ");
            push_u64(out, u64::from(o.icmp_seq));
        }
    }
    if o.has & has::TCP != 0 {
        out.extend_from_slice(b" [");
        for (i, &c) in b"FSRPAUEC".iter().enumerate() {
            if o.tcp_flags & (1 << i) != 0 {
                out.push(c);
            }
        }
        out.push(b']');
    }
    if o.has & has::FRAG != 0 {
        out.extend_from_slice(b" frag @");
        push_u64(out, u64::from(o.frag & 0x1FFF) * 8);
        if o.frag >= 0x8000 {
            out.push(b'+');
        }
    }
}

/// A hop's node as the text shows it (-n: `netns:<inode>` when the hop knows it), and
/// its length in characters.
fn push_node(out: &mut Vec<u8>, label: &Label, netns: u64, numeric: bool) -> usize {
    if numeric && netns != 0 {
        let at = out.len();
        out.extend_from_slice(b"netns:");
        push_u64(out, netns);
        out.len() - at
    } else {
        out.extend_from_slice(&label.node_text);
        label.node_chars
    }
}

/// The node a NAT event names: with -n, `netns:<inode>` of the last hop of the path with
/// that node's name and a namespace (`numeric_path`'s `inode` dict).
fn push_nat_node(out: &mut Vec<u8>, ev: &NatEvent, hops: &[Obs], labels: &Labels, numeric: bool) {
    let label = labels.get(ev.hop);
    let netns = if numeric {
        hops.iter()
            .rev()
            .find(|h| h.netns != 0 && labels.get(h.hop).node_id == label.node_id)
            .map_or(0, |h| h.netns)
    } else {
        0
    };
    push_node(out, label, netns, numeric);
}

/// `node/iface` (`hop_name`, escaped), and its length in characters.
fn push_hop_name(out: &mut Vec<u8>, o: &Obs, labels: &Labels, numeric: bool) -> usize {
    let label = labels.get(o.hop);
    let n = push_node(out, label, o.netns, numeric);
    out.push(b'/');
    out.extend_from_slice(&label.iface_text);
    n + 1 + label.iface_chars
}

fn dir_name(o: &Obs) -> &'static [u8] {
    match o.dir {
        dir::RX => b"rx",
        dir::TX => b"tx",
        dir::DROP => b"drop",
        _ => b"?",
    }
}

/// Characters of `node/iface dir` (`_where`), without writing it.
fn where_chars(o: &Obs, labels: &Labels, numeric: bool) -> usize {
    let label = labels.get(o.hop);
    let node = if numeric && o.netns != 0 {
        6 + decimal_digits(o.netns)
    } else {
        label.node_chars
    };
    node + 1 + label.iface_chars + 1 + dir_name(o).len()
}

fn decimal_digits(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}

/// The drop reason's name, escaped, or `fallback` when the hop has none.
fn push_drop_reason(out: &mut Vec<u8>, o: &Obs, labels: &Labels, fallback: &[u8]) {
    if o.drop_reason == 0 {
        out.extend_from_slice(fallback);
    } else if let Some(name) = labels.drop_reason(o.drop_reason) {
        push_term_safe(out, name);
    } else {
        out.extend_from_slice(b"UNKNOWN(");
        push_u64(out, u64::from(o.drop_reason));
        out.push(b')');
    }
}

/// Whether drop hop `i` of a path with `verdict` lost the packet, and what the text says
/// after its reason: the reason's meaning (drops.rs), or for the original of a raw socket's
/// copy what happened (tracer/drops.py `drop_note`). In a path that is not `dropped` no free
/// lost anything.
fn drop_note(
    hops: &[Obs],
    i: usize,
    labels: &Labels,
    verdict: Verdict,
) -> (bool, Option<&'static str>) {
    let Some(h) = hops.get(i) else {
        return (false, None);
    };
    let lost = drops::lost(hops, i, labels, verdict);
    let name = labels.drop_reason(h.drop_reason);
    let delivered_kind = name.is_some_and(|n| drops::kind(n) == drops::Kind::Delivered);
    if !lost && !delivered_kind {
        return (false, Some(drops::RAW_COPY_NOTE));
    }
    (lost, name.and_then(drops::meaning))
}

/// Python's `str.rstrip()` of `out[start..]` (UTF-8): trailing whitespace as `str.isspace`
/// sees it goes.
fn rstrip_from(out: &mut Vec<u8>, start: usize) {
    while out.len() > start {
        // The last character: back over continuation bytes to its lead byte.
        let mut i = out.len() - 1;
        while i > start && out.get(i).is_some_and(|b| b & 0xC0 == 0x80) {
            i -= 1;
        }
        let c = std::str::from_utf8(out.get(i..).unwrap_or_default())
            .ok()
            .and_then(|s| s.chars().next())
            .map_or(u32::MAX, u32::from);
        if !is_space(c) {
            return;
        }
        out.truncate(i);
    }
}

#[inline]
fn pad(out: &mut Vec<u8>, n: usize) {
    out.resize(out.len() + n, b' ');
}

// ------------------------------------------------------------------ paths

/// `nat_text(ev, hops, color)`: `172.17.0.2 → 203.0.113.2  SNAT @ host POSTROUTING`
/// (no rule or conntrack entry: what annotators add, and the core has none yet).
pub fn push_nat_text(
    out: &mut Vec<u8>,
    ev: &NatEvent,
    hops: &[Obs],
    labels: &Labels,
    opts: &TextOptions,
) {
    if is_inner_event(hops, ev) {
        out.extend_from_slice(b"quoted header ");
    }
    let (before, after) = ev.rewritten();
    push_addr_port(out, ev.family, &before.0, before.1);
    out.extend_from_slice(ARROW);
    push_addr_port(out, ev.family, &after.0, after.1);
    if let Some((b, a)) = ev.icmp_ids {
        out.extend_from_slice(b" (icmp id ");
        push_u64(out, u64::from(b));
        out.extend_from_slice(ARROW);
        push_u64(out, u64::from(a));
        out.push(b')');
    }
    out.extend_from_slice(b"  ");
    paint_open(out, SGR_NAT, opts.color);
    out.extend_from_slice(match ev.kind {
        NatKind::Snat => b"SNAT",
        NatKind::Dnat => b"DNAT",
    });
    paint_close(out, opts.color);
    out.extend_from_slice(b" @ ");
    push_nat_node(out, ev, hops, labels, opts.numeric);
    out.push(b' ');
    out.extend_from_slice(ev.hook.name().as_bytes());
}

/// `_hop_detail(h, level)`: `-v` the packet as this hop saw it, `-vv` also when and which skb.
fn push_hop_detail(out: &mut Vec<u8>, o: &Obs, level: i8) {
    if o.family == 0 {
        push_what(out, o);
    } else {
        push_hop_endpoints(out, o);
    }
    if o.ttl != 0 {
        out.extend_from_slice(b"  ttl ");
        push_u64(out, u64::from(o.ttl));
    }
    if o.has & has::IP_ID != 0 {
        out.extend_from_slice(b"  id ");
        push_u64(out, u64::from(o.ip_id));
    }
    out.extend_from_slice(b"  len ");
    push_u64(out, u64::from(o.length));
    if level >= 2 {
        let (secs, ns) = (o.ts_ns / 1_000_000_000, o.ts_ns % 1_000_000_000);
        let day = secs % 86_400;
        out.extend_from_slice(b"  at ");
        for (k, v) in [day / 3600, day / 60 % 60, day % 60]
            .into_iter()
            .enumerate()
        {
            if k > 0 {
                out.push(b':');
            }
            out.push(b'0' + (v / 10) as u8);
            out.push(b'0' + (v % 10) as u8);
        }
        out.push(b'.');
        let mut digits = [b'0'; 9];
        let mut f = ns;
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (f % 10) as u8;
            f /= 10;
        }
        out.extend_from_slice(&digits);
        if o.skb != 0 {
            out.extend_from_slice(b"  skb 0x");
            push_hex(out, o.skb);
        }
    }
}

/// Nanoseconds from `a` to `b` (negative when out of order).
#[inline]
fn span(a: &Obs, b: &Obs) -> i128 {
    i128::from(b.ts_ns) - i128::from(a.ts_ns)
}

/// `+<duration>` of hop `i` (nothing for the first); its length in characters.
fn push_delta(out: &mut Vec<u8>, hops: &[Obs], i: usize) -> usize {
    let (Some(prev), Some(h)) = (i.checked_sub(1).and_then(|p| hops.get(p)), hops.get(i)) else {
        return 0;
    };
    let at = out.len();
    out.push(b'+');
    push_duration(out, span(prev, h));
    char_count(out.get(at..).unwrap_or_default())
}

/// `_route_text`: `client/eth0 → host/docker0 → host/eth0 SNAT → inet/eth0`, a drop as `✖ REASON`.
fn push_route(
    out: &mut Vec<u8>,
    (hops, verdict): (&[Obs], Verdict),
    nat: &[NatEvent],
    labels: &Labels,
    opts: &TextOptions,
) {
    for (i, h) in hops.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(ARROW);
        }
        push_hop_name(out, h, labels, opts.numeric);
        for ev in nat.iter().filter(|ev| ev.to_hop() as usize == i) {
            out.push(b' ');
            paint_open(out, SGR_NAT, opts.color);
            out.extend_from_slice(match ev.kind {
                NatKind::Snat => b"SNAT",
                NatKind::Dnat => b"DNAT",
            });
            paint_close(out, opts.color);
        }
        if h.dir == dir::DROP {
            out.push(b' ');
            if drop_note(hops, i, labels, verdict).0 {
                paint_open(out, SGR_DROP, opts.color);
                out.extend_from_slice("✖ ".as_bytes());
                push_drop_reason(out, h, labels, b"dropped");
                paint_close(out, opts.color);
            } else {
                out.extend_from_slice(b"freed ");
                push_drop_reason(out, h, labels, b"dropped");
            }
        }
    }
}

/// What a path block says, besides its hops and NAT events.
#[derive(Debug, Clone, Copy)]
pub struct PathHead {
    pub num: u64,
    pub flow: Option<u64>,
    pub verdict: Verdict,
}

/// One path as `TextSink` writes it: `path_text(path, opts)` and the gap after it
/// (`\n\n`, or `\n` with -q). `hops` is never empty (an empty path writes nothing).
pub fn push_path_text(
    out: &mut Vec<u8>,
    head: PathHead,
    hops: &[Obs],
    nat: &[NatEvent],
    labels: &Labels,
    opts: &TextOptions,
) {
    push_path_text_noted(out, head, hops, nat, &[], labels, opts);
}

/// [`push_path_text`] with the NAT events' annotations (`notes`: one per event, or none):
/// each event's line ends with what `nat_text` adds (`  rule: ...  ct N`).
pub fn push_path_text_noted(
    out: &mut Vec<u8>,
    head: PathHead,
    hops: &[Obs],
    nat: &[NatEvent],
    notes: &[crate::annotate::NatNote],
    labels: &Labels,
    opts: &TextOptions,
) {
    let (Some(first), Some(last)) = (hops.first(), hops.last()) else {
        return;
    };
    let color = opts.color;
    out.push(b'p');
    push_u64(out, head.num);
    out.extend_from_slice(b"  ");
    push_what(out, first);
    out.extend_from_slice(b"  ");
    push_hop_endpoints(out, first);
    out.extend_from_slice(b"  ");
    paint_open(out, sgr_verdict(head.verdict), color);
    out.extend_from_slice(head.verdict.name().as_bytes());
    paint_close(out, color);
    out.extend_from_slice(b"  ");
    push_duration(out, span(first, last));
    if let Some(f) = head.flow {
        out.extend_from_slice(b"  flow f");
        push_u64(out, f);
    }
    if opts.detail < 0 {
        out.extend_from_slice(b"  ");
        push_route(out, (hops, head.verdict), nat, labels, opts);
        out.push(b'\n');
        return;
    }
    let width = hops
        .iter()
        .map(|h| where_chars(h, labels, opts.numeric))
        .max()
        .unwrap_or(0);
    let dwidth = if opts.detail > 0 {
        // Measured by writing each and taking it back: no scratch buffer.
        let at = out.len();
        let w = (1..hops.len())
            .map(|i| push_delta(out, hops, i))
            .max()
            .unwrap_or(0);
        out.truncate(at);
        w
    } else {
        0
    };
    for (i, h) in hops.iter().enumerate() {
        out.push(b'\n');
        let start = out.len();
        out.extend_from_slice(if i == 0 {
            b"     ".as_slice()
        } else {
            b"   \xe2\x86\x92 "
        });
        let n = push_hop_name(out, h, labels, opts.numeric);
        out.push(b' ');
        out.extend_from_slice(dir_name(h));
        let wc = n + 1 + dir_name(h).len();
        if opts.detail > 0 {
            pad(out, width.saturating_sub(wc) + 2);
            let dc = push_delta(out, hops, i);
            pad(out, dwidth.saturating_sub(dc) + 2);
            push_hop_detail(out, h, opts.detail);
        } else if i > 0 {
            pad(out, width.saturating_sub(wc) + 2);
            push_delta(out, hops, i);
        } else {
            pad(out, width.saturating_sub(wc)); // a drop may follow; else rstrip takes it
        }
        if h.dir == dir::DROP {
            out.extend_from_slice(b"  ");
            let (lost, note) = drop_note(hops, i, labels, head.verdict);
            if lost {
                paint_open(out, SGR_DROP, color);
                out.extend_from_slice(b"DROPPED: ");
                push_drop_reason(out, h, labels, b"unknown reason");
                paint_close(out, color);
            } else {
                out.extend_from_slice(b"freed: ");
                push_drop_reason(out, h, labels, b"unknown reason");
            }
            if let Some(note) = note {
                out.extend_from_slice(" — ".as_bytes());
                out.extend_from_slice(note.as_bytes());
            }
        }
        for (k, ev) in nat.iter().enumerate() {
            if ev.to_hop() as usize != i {
                continue;
            }
            out.extend_from_slice(b"\n        ");
            push_nat_text(out, ev, hops, labels, opts);
            if let Some(n) = notes.get(k) {
                out.extend_from_slice(&n.text);
            }
        }
        rstrip_from(out, start);
    }
    out.extend_from_slice(b"\n\n");
}

/// One flow as `flow_text(flow)` and its newline.
pub fn push_flow_text(out: &mut Vec<u8>, f: &FlowLine<'_>) {
    out.push(b'f');
    push_u64(out, f.num);
    out.extend_from_slice(b"  ");
    push_proto_name(out, f.family, f.proto, 0);
    out.extend_from_slice(b"  ");
    push_endpoints(out, f.family, f.original);
    out.extend_from_slice(b"  reply ");
    push_endpoints(out, f.family, f.reply);
    out.extend_from_slice(b"  paths");
    for p in f.paths {
        out.extend_from_slice(b" p");
        push_u64(out, *p);
    }
    if let Some(ct) = f.conntrack_id {
        out.extend_from_slice(b"  ct ");
        push_u64(out, ct);
    }
    out.push(b'\n');
}

/// The stats line (`stats_text`) and its newline.
pub fn push_stats_text(
    out: &mut Vec<u8>,
    observations: u64,
    paths: u64,
    lost_events: u64,
    elapsed_s: f64,
) {
    out.extend_from_slice(b"stats: ");
    push_u64(out, observations);
    out.extend_from_slice(b" observations, ");
    push_u64(out, paths);
    out.extend_from_slice(b" paths, ");
    push_u64(out, lost_events);
    out.extend_from_slice(b" lost events, ");
    // Once per run: fmt is fine here (exact, ties to even, as Python's float format).
    let x = if elapsed_s.is_finite() {
        elapsed_s
    } else {
        0.0
    };
    out.extend_from_slice(format!("{x:.3}").as_bytes());
    out.extend_from_slice(b" s\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::Hook;
    use proptest::prelude::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).expect("utf8")
    }

    fn ip(text: &str) -> [u8; 16] {
        match text.parse::<std::net::IpAddr>().expect("address") {
            std::net::IpAddr::V4(a) => {
                let mut r = [0u8; 16];
                r[..4].copy_from_slice(&a.octets());
                r
            }
            std::net::IpAddr::V6(a) => a.octets(),
        }
    }

    #[test]
    fn durations_as_python_writes_them() {
        // tracer.sinks.output.duration_text on this machine: ties of the decimal text are not
        // ties of the double (1.05 is above, 9.95 below), and above 2^53 ns the quotient
        // is the correctly rounded one, not (n as f64) / 1e9 (the last four cases here).
        for (ns, want) in [
            (0u64, "0 ns"),
            (1, "1 ns"),
            (999, "999 ns"),
            (1000, "1.0 µs"),
            (1049, "1.0 µs"),
            (1050, "1.1 µs"),
            (1051, "1.1 µs"),
            (1150, "1.1 µs"),
            (1250, "1.2 µs"),
            (1350, "1.4 µs"),
            (9949, "9.9 µs"),
            (9950, "9.9 µs"),
            (9951, "10.0 µs"),
            (9999, "10.0 µs"),
            (10000, "10 µs"),
            (10499, "10 µs"),
            (10500, "10 µs"),
            (11500, "12 µs"),
            (12500, "12 µs"),
            (999499, "999 µs"),
            (999500, "1000 µs"),
            (999999, "1000 µs"),
            (1000000, "1.0 ms"),
            (1050000, "1.1 ms"),
            (1150000, "1.1 ms"),
            (1250000, "1.2 ms"),
            (2250000, "2.2 ms"),
            (999949999, "999.9 ms"),
            (999950000, "1000.0 ms"),
            (999999999, "1000.0 ms"),
            (1000000000, "1.00 s"),
            (1005000000, "1.00 s"),
            (1015000000, "1.01 s"),
            (1025000000, "1.02 s"),
            (1125000000, "1.12 s"),
            (9007199254740991, "9007199.25 s"),
            (9007199254740992, "9007199.25 s"),
            (9007199254740993, "9007199.25 s"),
            (1152921504606859321, "1152921504.61 s"),
            (18446744073709551615, "18446744073.71 s"),
            (18446744073704551615, "18446744073.70 s"),
            (123456789012345678, "123456789.01 s"),
            (8691320059965000001, "8691320059.97 s"),
            (1600218985015000001, "1600218985.02 s"),
            (8044638897345000001, "8044638897.35 s"),
            (4712315750824999999, "4712315750.82 s"),
            (9547526002075000000, "9547526002.08 s"),
            (5294817241004999999, "5294817241.01 s"),
            (9352753530914999999, "9352753530.92 s"),
            (12456975713004999999, "12456975713.00 s"),
            (4945962571705000001, "4945962571.70 s"),
            (12834957793064999999, "12834957793.07 s"),
            (12875745797165000000, "12875745797.17 s"),
            (1006345069495000001, "1006345069.50 s"),
            (921774490, "921.8 ms"),
            (142996371, "143.0 ms"),
            (310966605, "311.0 ms"),
            (450048120, "450.0 ms"),
            (154893713, "154.9 ms"),
            (580558051, "580.6 ms"),
            (12513132930984999764, "12513132930.99 s"),
            (9920115068095000183, "9920115068.09 s"),
            (10707507004814999729, "10707507004.82 s"),
            (18386885227795000099, "18386885227.80 s"),
        ] {
            assert_eq!(s(|o| push_duration(o, i128::from(ns))), want, "{ns}");
        }
        assert_eq!(s(|o| push_duration(o, -5)), "-5 ns");
    }

    proptest! {
        /// Below 2^53 ns the quotient of two exact doubles is the correctly rounded one, and
        /// std's float formatting is exact with ties to even, as Python's.
        #[test]
        fn ratios_as_float_formatting(n in 1_000u64..(1 << 53), which in 0usize..4) {
            let (d, prec) = [(1_000u64, 1usize), (1_000, 0), (1_000_000, 1), (1_000_000_000, 2)][which];
            let n = n.max(d);
            let want = format!("{:.*}", prec, n as f64 / d as f64);
            prop_assert_eq!(s(|o| push_ratio(o, n, d, prec)), want);
        }

        #[test]
        fn any_duration_is_one_number_and_a_unit(ns in any::<u64>()) {
            let t = s(|o| push_duration(o, i128::from(ns)));
            let (num, unit) = t.split_once(' ').expect("a space");
            prop_assert!(["ns", "µs", "ms", "s"].contains(&unit));
            prop_assert!(num.parse::<f64>().is_ok());
        }
    }

    /// The (node, iface) labels of the tests, hostile names among them.
    fn labels() -> (Labels, [u32; 3]) {
        let mut l = Labels::new();
        let web = l.intern("w\x1beb", "eth0");
        let docker = l.intern("host", "docker\u{202e}0");
        let eth1 = l.intern("host", "eth1");
        l.set_drop_reason(7, "BAD\u{a0}");
        l.set_drop_reason(8, "NO_SOCKET");
        l.set_drop_reason(9, "X\u{a0}\u{3000}");
        (l, [web, docker, eth1])
    }

    fn text(
        head: PathHead,
        hops: &[Obs],
        nat: &[NatEvent],
        l: &Labels,
        opts: TextOptions,
    ) -> String {
        s(|o| push_path_text(o, head, hops, nat, l, &opts))
    }

    #[test]
    fn a_path_block_as_python_writes_it() {
        // tracer.sinks.output.path_text of the same path, on this machine.
        let (l, [web, docker, eth1]) = labels();
        let a = Obs {
            ts_ns: 1795805084432385000,
            hop: web,
            netns: 4026532466,
            dir: dir::TX,
            family: 6,
            proto: 17,
            has: has::L4_PORTS | has::FLOW_LABEL,
            src: ip("2001:db8::2"),
            dst: ip("2001:db8::8"),
            sport: 40000,
            dport: 8080,
            flow_label: 5,
            ttl: 64,
            length: 120,
            ..Obs::default()
        };
        let b = Obs {
            ts_ns: a.ts_ns + 1_049,
            hop: docker,
            netns: 4026531840,
            dir: dir::RX,
            ..a
        };
        let c = Obs {
            ts_ns: b.ts_ns + 12_500_000,
            hop: eth1,
            dir: dir::DROP,
            dst: ip("2001:db8::9"),
            dport: 80,
            ttl: 63,
            skb: 0xffff888108472600,
            drop_reason: 7,
            ..b
        };
        let ev = NatEvent {
            kind: NatKind::Dnat,
            hop: docker,
            hook: Hook::Prerouting,
            family: 6,
            before: Endpoints::of(&b),
            after: Endpoints::of(&c),
            from_hop: 1,
            icmp_ids: None,
        };
        let head = PathHead {
            num: 7,
            flow: Some(3),
            verdict: Verdict::Dropped,
        };
        let hops = [a, b, c];
        let t = |opts| text(head, &hops, &[ev], &l, opts);
        let top = "p7  udp  [2001:db8::2]:40000 → [2001:db8::8]:8080  ";
        assert_eq!(
            t(TextOptions::default()),
            format!(
                "{top}dropped  12.5 ms  flow f3\n     w\\x1beb/eth0 tx\n   → host/docker\\u202e0 rx  +1.0 µs\n   → \
                 host/eth1 drop         +12.5 ms  DROPPED: BAD\u{a0}\n        [2001:db8::8]:8080 → [2001:db8::9]:80  \
                 DNAT @ host PREROUTING\n\n"
            )
        );
        assert_eq!(
            t(TextOptions { numeric: false, detail: -1, color: true }),
            format!(
                "{top}\x1b[1;31mdropped\x1b[0m  12.5 ms  flow f3  w\\x1beb/eth0 → host/docker\\u202e0 → host/eth1 \
                 \x1b[35mDNAT\x1b[0m \x1b[1;31m✖ BAD\u{a0}\x1b[0m\n"
            )
        );
        assert_eq!(
            t(TextOptions { numeric: true, detail: 2, color: false }),
            format!(
                "{top}dropped  12.5 ms  flow f3\n     netns:4026532466/eth0 tx                     \
                 [2001:db8::2]:40000 → [2001:db8::8]:8080  ttl 64  len 120  at 18:44:44.432385000\n   → \
                 netns:4026531840/docker\\u202e0 rx  +1.0 µs   [2001:db8::2]:40000 → [2001:db8::8]:8080  ttl 64  \
                 len 120  at 18:44:44.432386049\n   → netns:4026531840/eth1 drop         +12.5 ms  \
                 [2001:db8::2]:40000 → [2001:db8::9]:80  ttl 63  len 120  at 18:44:44.444886049  skb \
                 0xffff888108472600  DROPPED: BAD\u{a0}\n        [2001:db8::8]:8080 → [2001:db8::9]:80  DNAT @ \
                 netns:4026531840 PREROUTING\n\n"
            )
        );
    }

    #[test]
    fn drops_hints_and_what_is_not_ip() {
        // tracer.sinks.output.path_text on this machine; a line ends as str.rstrip() ends it.
        let (l, [web, ..]) = labels();
        let reply = Obs {
            ts_ns: 5,
            hop: web,
            dir: dir::DROP,
            family: 4,
            proto: 1,
            has: has::ICMP | has::IP_ID,
            src: ip("10.0.0.1"),
            dst: ip("10.0.0.2"),
            length: 84,
            icmp_id: 9,
            icmp_seq: 3,
            ip_id: 1,
            drop_reason: 8,
            ..Obs::default()
        };
        let tcp = Obs {
            proto: 6,
            has: has::L4_PORTS | has::TCP | has::FRAG,
            sport: 1,
            dport: 2,
            tcp_flags: 0x12,
            frag: 0x8000 | 185,
            length: 60,
            drop_reason: 9,
            ..reply
        };
        let arp = Obs {
            family: 0,
            proto: 0,
            ethertype: ETH_P_ARP,
            has: 0,
            dir: 0,
            length: 42,
            drop_reason: 0,
            ..reply
        };
        let head = |num, verdict| PathHead {
            num,
            flow: None,
            verdict,
        };
        let plain = TextOptions::default();
        let v = TextOptions { detail: 1, ..plain };
        let hint = "DROPPED: NO_SOCKET — no socket listens for it (closed port, or no ping socket for an echo reply)";
        let top = "p1  icmp echo-reply id 9 seq 3  10.0.0.1 → 10.0.0.2  dropped  0 ns\n     w\\x1beb/eth0 drop";
        let t = |h, o: &Obs, opts| text(h, std::slice::from_ref(o), &[], &l, opts);
        let dropped = head(1, Verdict::Dropped);
        assert_eq!(t(dropped, &reply, plain), format!("{top}  {hint}\n\n"));
        assert_eq!(
            t(dropped, &reply, v),
            format!("{top}    10.0.0.1 → 10.0.0.2  id 1  len 84  {hint}\n\n")
        );
        let top = "p2  tcp [SA] frag @1480+  10.0.0.1:1 → 10.0.0.2:2  dropped  0 ns\n     w\\x1beb/eth0 drop  ";
        assert_eq!(
            t(head(2, Verdict::Dropped), &tcp, plain),
            format!("{top}DROPPED: X\n\n")
        );
        assert_eq!(
            t(head(2, Verdict::Dropped), &tcp, v),
            format!("{top}  10.0.0.1:1 → 10.0.0.2:2  len 60  DROPPED: X\n\n")
        );
        let top = "p3  arp  10.0.0.1 → 10.0.0.2  left  0 ns\n     w\\x1beb/eth0 ?";
        assert_eq!(t(head(3, Verdict::Left), &arp, plain), format!("{top}\n\n"));
        assert_eq!(
            t(head(3, Verdict::Left), &arp, v),
            format!("{top}    arp  len 42\n\n")
        );
    }

    #[test]
    fn flow_and_stats_text() {
        let e = Endpoints {
            src: ip("172.17.0.3"),
            sport: None,
            dst: ip("198.51.100.8"),
            dport: None,
        };
        let r = Endpoints {
            src: ip("198.51.100.8"),
            sport: None,
            dst: ip("203.0.113.2"),
            dport: None,
        };
        let line = s(|o| {
            push_flow_text(
                o,
                &FlowLine {
                    num: 1,
                    family: 4,
                    proto: 1,
                    original: &e,
                    reply: &r,
                    paths: &[1, 4],
                    conntrack_id: None,
                },
            )
        });
        assert_eq!(
            line,
            "f1  icmp  172.17.0.3 → 198.51.100.8  reply 198.51.100.8 → 203.0.113.2  paths p1 p4\n"
        );
        // f"{x:.3f}" in Python.
        for (x, want) in [
            (0.0574, "0.057"),
            (0.0625, "0.062"),
            (0.0575, "0.058"),
            (12.0, "12.000"),
        ] {
            assert_eq!(
                s(|o| push_stats_text(o, 14, 4, 0, x)),
                format!("stats: 14 observations, 4 paths, 0 lost events, {want} s\n")
            );
        }
    }
}
