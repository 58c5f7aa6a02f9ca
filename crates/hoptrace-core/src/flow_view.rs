//! The flow view: what a flood of paths adds up to, per flow, for a person to read when
//! paths arrive faster than anyone reads them (tracer/flow_view.py switches to it).
//!
//! A [`FlowView`] hears of every shown path (it is a [`PathSink`], beside the lines) and
//! keys it by its first hop's header: (family, protocol, ethertype, source, source port,
//! destination, destination port), the direction the packet went, as it was before any NAT.
//! Per flow it counts paths and bytes (the first hop's IP length), keeps the paths'
//! latencies (first to last sighting: the time the packet took through the hops), the NAT
//! its latest path saw, and the drops by (hop, reason).
//!
//! The caller asks for a [`FlowTable`] a few times a second ([`FlowView::snapshot`]) with
//! its clock: what was added since the last snapshot becomes one bucket, buckets older
//! than the window are forgotten, and the table is the buckets still in the window, merged:
//! rates are counts over the window's span, percentiles as numpy's
//! `percentile(method="nearest")` picks them (report.rs). A flow's latencies are
//! capped per bucket ([`MAX_SAMPLES`], then a reservoir sample), so a flood costs bounded
//! memory; below the cap the percentiles are exact.

use std::collections::VecDeque;

use crate::columns::{push_drop_reason_text, push_hop_name};
use crate::finish::{PathSink, ShownPath};
use crate::flows::ClosedFlow;
use crate::hash::FastMap;
use crate::labels::Labels;
use crate::nat::{Endpoint, NatEvent, NatKind};
use crate::obs::{dir, Obs};
use crate::render::push_proto_name;
use crate::report::percentiles_nearest;
use crate::text::push_u64;
use crate::text_render::{push_addr_port, shown_family};
use crate::view;

/// (family, protocol, ethertype, source, its port, destination, its port) of a first hop.
pub type ViewKey = (u8, u8, u16, [u8; 16], Option<u16>, [u8; 16], Option<u16>);

/// Latencies kept per flow per bucket; past it, a uniform sample of that many.
pub const MAX_SAMPLES: usize = 4096;

/// Drop groups kept per flow per bucket (the rest are counted as one "other" group).
const MAX_DROP_GROUPS: usize = 16;

fn view_key(o: &Obs) -> ViewKey {
    (
        o.family,
        o.proto,
        o.ethertype,
        view::src(o),
        view::sport(o),
        view::dst(o),
        view::dport(o),
    )
}

/// One NAT rewrite as the view names it: (node label, kind, family, rewritten side before,
/// after).
type NatSig = (u32, NatKind, u8, Endpoint, Endpoint);

fn nat_sig(ev: &NatEvent) -> NatSig {
    let (before, after) = ev.rewritten();
    (ev.hop, ev.kind, ev.family, before, after)
}

/// A flow's figures over one bucket (or, merged, over the window).
#[derive(Debug, Default, Clone)]
struct Acc {
    paths: u64,
    bytes: u64,
    /// Paths whose latency was seen (two sightings or more), sampled or not.
    timed: u64,
    latency: Vec<i64>,
    /// (hop label, drop reason code) -> drop sightings; `other`: past MAX_DROP_GROUPS.
    drops: Vec<((u32, u32), u64)>,
    other_drops: u64,
    /// The NAT of its latest path, and that path's arrival number (the latest wins a merge).
    nat: Vec<NatSig>,
    nat_seq: u64,
}

impl Acc {
    fn add_drop(&mut self, key: (u32, u32), n: u64) {
        if let Some(slot) = self.drops.iter_mut().find(|(k, _)| *k == key) {
            slot.1 += n;
        } else if self.drops.len() < MAX_DROP_GROUPS {
            self.drops.push((key, n));
        } else {
            self.other_drops += n;
        }
    }

    fn drop_total(&self) -> u64 {
        self.other_drops + self.drops.iter().map(|(_, n)| n).sum::<u64>()
    }

    /// `other`'s figures added to these (its latencies appended, capped by a stride sample).
    fn merge(&mut self, other: &Acc) {
        self.paths += other.paths;
        self.bytes += other.bytes;
        self.timed += other.timed;
        self.latency.extend_from_slice(&other.latency);
        for &(k, n) in &other.drops {
            self.add_drop(k, n);
        }
        self.other_drops += other.other_drops;
        if other.nat_seq >= self.nat_seq {
            self.nat.clear();
            self.nat.extend_from_slice(&other.nat);
            self.nat_seq = other.nat_seq;
        }
    }
}

/// One bucket: the flows' figures between two snapshots.
#[derive(Debug, Default)]
struct Bucket {
    start_ns: u64,
    end_ns: u64,
    flows: FastMap<ViewKey, Acc>,
}

/// One row of a [`FlowTable`]: a flow's figures over the window, and its texts.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowViewRow {
    pub key: ViewKey,
    pub paths: u64,
    pub bytes: u64,
    pub paths_per_s: f64,
    pub bytes_per_s: f64,
    /// Paths with a latency (two sightings or more).
    pub timed: u64,
    /// Latency percentiles (ns), None without a timed path.
    pub p50_ns: Option<i64>,
    pub p99_ns: Option<i64>,
    /// Drop sightings, all reasons and hops.
    pub drops: u64,
    /// `udp 10.0.0.1:5000 → 10.0.0.2:53` ("surrogatepass" UTF-8: names are untrusted).
    pub flow_text: Vec<u8>,
    /// `dnat 10.0.0.1:80 → 172.17.0.2:80 @ host`, several joined by `; `; empty: none.
    pub nat_text: Vec<u8>,
    /// `REASON @ node/iface ×N`, several joined by `; `, most first; empty: none.
    pub drops_text: Vec<u8>,
}

/// What [`FlowView::snapshot`] returns: the busiest flows over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowTable {
    /// The window's span (ns): from the oldest bucket's start to the snapshot.
    pub span_ns: u64,
    /// Paths and bytes over the window, every flow (not only the rows').
    pub paths: u64,
    pub bytes: u64,
    /// Flows seen over the window (the rows are the first `limit` of them).
    pub flows: u64,
    /// Busiest first (paths, then bytes, then key).
    pub rows: Vec<FlowViewRow>,
}

/// The per-flow aggregator. See the module documentation.
#[derive(Debug)]
pub struct FlowView {
    window_ns: u64,
    current: Bucket,
    past: VecDeque<Bucket>,
    /// Emptied buckets, their maps' room reused.
    spare: Vec<Bucket>,
    seq: u64,
    rng: u64,
    /// Paths heard of since creation.
    pub total_paths: u64,
}

impl FlowView {
    /// A view over the last `window_ns` (at least one bucket), its clock starting at `now_ns`.
    pub fn new(window_ns: u64, now_ns: u64) -> FlowView {
        FlowView {
            window_ns,
            current: Bucket {
                start_ns: now_ns,
                ..Bucket::default()
            },
            past: VecDeque::new(),
            spare: Vec::new(),
            seq: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            total_paths: 0,
        }
    }

    #[inline]
    fn next_rand(&mut self) -> u64 {
        // xorshift64*: a reservoir's choice, not a secret.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// One shown path.
    pub fn add(&mut self, hops: &[Obs], nat: &[NatEvent]) {
        let (Some(first), Some(last)) = (hops.first(), hops.last()) else {
            return;
        };
        self.seq += 1;
        self.total_paths += 1;
        let seq = self.seq;
        let pick = self.next_rand();
        let acc = self.current.flows.entry(view_key(first)).or_default();
        acc.paths += 1;
        acc.bytes += u64::from(first.length);
        if hops.len() > 1 {
            acc.timed += 1;
            let lat = (last.ts_ns as i64).wrapping_sub(first.ts_ns as i64);
            if acc.latency.len() < MAX_SAMPLES {
                acc.latency.push(lat);
            } else {
                // Algorithm R: the i-th timed path replaces a kept one with chance MAX/i.
                let slot = (pick % acc.timed) as usize;
                if let Some(s) = acc.latency.get_mut(slot) {
                    *s = lat;
                }
            }
        }
        for h in hops {
            if h.dir == dir::DROP {
                acc.add_drop((h.hop, h.drop_reason), 1);
            }
        }
        let same =
            acc.nat.len() == nat.len() && acc.nat.iter().zip(nat).all(|(s, ev)| *s == nat_sig(ev));
        if !same {
            acc.nat.clear();
            acc.nat.extend(nat.iter().map(nat_sig));
        }
        acc.nat_seq = seq;
    }

    /// Forget every bucket: the view starts again at `now_ns` (its owner does this now and
    /// then while nobody reads it, so the flows of hours do not pile up).
    pub fn reset(&mut self, now_ns: u64) {
        self.current.flows.clear();
        self.current.start_ns = now_ns;
        while let Some(mut old) = self.past.pop_front() {
            old.flows.clear();
            if self.spare.len() < 4 {
                self.spare.push(old);
            }
        }
    }

    /// The window as of `now_ns` (the clock [`FlowView::new`] started): the busiest `limit`
    /// flows, named with `labels`. What was added since the last snapshot becomes a bucket.
    pub fn snapshot(&mut self, now_ns: u64, limit: usize, labels: &Labels) -> FlowTable {
        let next = self.spare.pop().unwrap_or_default();
        let mut closed = std::mem::replace(&mut self.current, next);
        closed.end_ns = now_ns.max(closed.start_ns);
        self.current.start_ns = closed.end_ns;
        self.past.push_back(closed);
        let horizon = now_ns.saturating_sub(self.window_ns);
        while self.past.len() > 1 && self.past.front().is_some_and(|b| b.end_ns <= horizon) {
            if let Some(mut old) = self.past.pop_front() {
                old.flows.clear();
                if self.spare.len() < 4 {
                    self.spare.push(old);
                }
            }
        }
        let start = self.past.front().map_or(now_ns, |b| b.start_ns);
        let span_ns = now_ns.saturating_sub(start);
        let mut merged: FastMap<ViewKey, Acc> = FastMap::default();
        for b in &self.past {
            for (k, a) in &b.flows {
                match merged.get_mut(k) {
                    Some(m) => m.merge(a),
                    None => {
                        merged.insert(*k, a.clone());
                    }
                }
            }
        }
        let (mut paths, mut bytes) = (0u64, 0u64);
        let mut all: Vec<(ViewKey, Acc)> = merged.into_iter().collect();
        for (_, a) in &all {
            paths += a.paths;
            bytes += a.bytes;
        }
        let flows = all.len() as u64;
        all.sort_unstable_by(|(ka, a), (kb, b)| {
            b.paths
                .cmp(&a.paths)
                .then(b.bytes.cmp(&a.bytes))
                .then(ka.cmp(kb))
        });
        all.truncate(limit);
        let secs = span_ns as f64 / 1e9;
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let rows = all
            .into_iter()
            .map(|(key, mut a)| {
                let (p50, p99) = if a.latency.is_empty() {
                    (None, None)
                } else {
                    let p = percentiles_nearest(&mut a.latency);
                    (Some(p[0]), Some(p[2]))
                };
                FlowViewRow {
                    key,
                    paths: a.paths,
                    bytes: a.bytes,
                    paths_per_s: rate(a.paths),
                    bytes_per_s: rate(a.bytes),
                    timed: a.timed,
                    p50_ns: p50,
                    p99_ns: p99,
                    drops: a.drop_total(),
                    flow_text: flow_text(&key),
                    nat_text: nat_text(&a.nat, labels),
                    drops_text: drops_text(&a, labels),
                }
            })
            .collect();
        FlowTable {
            span_ns,
            paths,
            bytes,
            flows,
            rows,
        }
    }
}

/// `udp 10.0.0.1:5000 → 10.0.0.2:53`.
fn flow_text(k: &ViewKey) -> Vec<u8> {
    let &(family, proto, ethertype, src, sport, dst, dport) = k;
    let mut out = Vec::with_capacity(48);
    push_proto_name(&mut out, family, proto, ethertype);
    let probe = Obs {
        family,
        ethertype,
        ..Obs::default()
    };
    let fam = shown_family(&probe);
    if fam != 0 {
        out.push(b' ');
        push_addr_port(&mut out, fam, &src, sport);
        out.extend_from_slice(" → ".as_bytes());
        push_addr_port(&mut out, fam, &dst, dport);
    }
    out
}

/// `dnat 10.0.0.1:80 → 172.17.0.2:80 @ node; ...`.
fn nat_text(nat: &[NatSig], labels: &Labels) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &(hop, kind, family, before, after)) in nat.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(kind.name().as_bytes());
        out.push(b' ');
        push_addr_port(&mut out, family, &before.0, before.1);
        out.extend_from_slice(" → ".as_bytes());
        push_addr_port(&mut out, family, &after.0, after.1);
        out.extend_from_slice(b" @ ");
        out.extend_from_slice(&labels.get(hop).node_raw);
    }
    out
}

/// `REASON @ node/iface ×N; ...`, most first (then by name).
fn drops_text(a: &Acc, labels: &Labels) -> Vec<u8> {
    let mut groups: Vec<(u64, Vec<u8>)> = a
        .drops
        .iter()
        .map(|&((hop, code), n)| {
            let mut name = Vec::new();
            if code == 0 {
                name.extend_from_slice(b"unknown");
            } else {
                push_drop_reason_text(&mut name, code, labels);
            }
            name.extend_from_slice(b" @ ");
            push_hop_name(&mut name, hop, labels);
            (n, name)
        })
        .collect();
    if a.other_drops > 0 {
        groups.push((a.other_drops, b"other".to_vec()));
    }
    groups.sort_by(|x, y| y.0.cmp(&x.0).then_with(|| x.1.cmp(&y.1)));
    let mut out = Vec::new();
    for (i, (n, name)) in groups.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(name);
        out.extend_from_slice(" ×".as_bytes());
        push_u64(&mut out, *n);
    }
    out
}

/// A [`FlowView`] as the engine's second consumer of shown paths, shared with its reader.
#[derive(Debug, Clone)]
pub struct FlowViewSink(pub std::sync::Arc<std::sync::Mutex<FlowView>>);

impl PathSink for FlowViewSink {
    fn path(&mut self, p: &ShownPath<'_>, _labels: &Labels) {
        // A poisoned lock (a panic elsewhere while held) still holds a whole view.
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.add(p.hops, p.nat);
    }

    fn flow(&mut self, _f: &ClosedFlow) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::{Endpoints, Hook};
    use crate::obs::has;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut x = [0u8; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    fn hop(ts: u64, label: u32, d: u8, sport: u16, len: u32) -> Obs {
        Obs {
            ts_ns: ts,
            hop: label,
            dir: d,
            family: 4,
            proto: 17,
            ethertype: 0x0800,
            has: has::L4_PORTS,
            src: v4([10, 0, 0, 1]),
            dst: v4([10, 0, 0, 2]),
            sport,
            dport: 53,
            length: len,
            ..Obs::default()
        }
    }

    fn labels() -> Labels {
        let mut l = Labels::new();
        l.intern("host", "eth0");
        l.intern("ctr", "eth0");
        l.set_drop_reason(6, "NETFILTER_DROP");
        l
    }

    #[test]
    fn rates_quantiles_and_grouping() {
        let labels = labels();
        let mut v = FlowView::new(10_000_000_000, 1_000_000_000);
        // flow A: 100 paths, latencies 1..=100 us, 60 bytes each
        for i in 1..=100u64 {
            let h = [
                hop(i * 1000, 0, dir::TX, 5000, 60),
                hop(i * 1000 + i * 1000, 1, dir::RX, 5000, 60),
            ];
            v.add(&h, &[]);
        }
        // flow B: 10 single-hop paths dropped at ctr/eth0 by netfilter, 2 by reason 0
        for i in 0..12u64 {
            let reason = if i < 10 { 6 } else { 0 };
            let mut h = hop(i, 1, dir::DROP, 6000, 100);
            h.drop_reason = reason;
            v.add(&[h], &[]);
        }
        let t = v.snapshot(3_000_000_000, 10, &labels);
        assert_eq!(t.span_ns, 2_000_000_000);
        assert_eq!((t.paths, t.bytes, t.flows), (112, 100 * 60 + 12 * 100, 2));
        let a = &t.rows[0];
        assert_eq!(a.flow_text, "udp 10.0.0.1:5000 → 10.0.0.2:53".as_bytes());
        assert_eq!((a.paths, a.bytes, a.timed), (100, 6000, 100));
        assert!((a.paths_per_s - 50.0).abs() < 1e-9);
        assert!((a.bytes_per_s - 3000.0).abs() < 1e-9);
        // numpy nearest: rank round_half_even(99 * 0.5) = 50 (49.5 -> 50), round(98.01) = 98
        assert_eq!(a.p50_ns, Some(51_000));
        assert_eq!(a.p99_ns, Some(99_000));
        assert_eq!(a.drops, 0);
        assert!(a.drops_text.is_empty() && a.nat_text.is_empty());
        let b = &t.rows[1];
        assert_eq!((b.paths, b.timed, b.p50_ns, b.drops), (12, 0, None, 12));
        assert_eq!(
            b.drops_text,
            "NETFILTER_DROP @ ctr/eth0 ×10; unknown @ ctr/eth0 ×2".as_bytes()
        );
        // limit
        assert_eq!(v.snapshot(3_000_000_000, 1, &labels).rows.len(), 1);
    }

    #[test]
    fn the_window_forgets_old_buckets_and_nat_is_the_latest() {
        let labels = labels();
        let mut v = FlowView::new(1_000_000_000, 0);
        let dnat = |to: u8| NatEvent {
            kind: NatKind::Dnat,
            hop: 0,
            hook: Hook::Prerouting,
            family: 4,
            before: Endpoints {
                src: v4([10, 0, 0, 1]),
                sport: Some(5000),
                dst: v4([10, 0, 0, 2]),
                dport: Some(53),
            },
            after: Endpoints {
                src: v4([10, 0, 0, 1]),
                sport: Some(5000),
                dst: v4([172, 17, 0, to]),
                dport: Some(5353),
            },
            from_hop: 0,
            icmp_ids: None,
        };
        let h = [hop(0, 0, dir::RX, 5000, 60), hop(10, 1, dir::RX, 5000, 60)];
        for _ in 0..5 {
            v.add(&h, &[dnat(2)]);
        }
        let t = v.snapshot(500_000_000, 10, &labels);
        assert_eq!(t.rows[0].paths, 5);
        assert!((t.rows[0].paths_per_s - 10.0).abs() < 1e-9);
        for _ in 0..3 {
            v.add(&h, &[dnat(3)]);
        }
        let t = v.snapshot(1_000_000_000, 10, &labels);
        assert_eq!((t.span_ns, t.rows[0].paths), (1_000_000_000, 8));
        assert_eq!(
            t.rows[0].nat_text,
            "dnat 10.0.0.2:53 → 172.17.0.3:5353 @ host".as_bytes()
        );
        // The first bucket ended at 0.5 s: past the 1 s window at 1.6 s.
        v.add(&h, &[]);
        let t = v.snapshot(1_600_000_000, 10, &labels);
        assert_eq!((t.span_ns, t.paths), (1_100_000_000, 4));
        assert!(t.rows[0].nat_text.is_empty(), "the latest path had no NAT");
        // Nothing for longer than the window: the last bucket stays, empty ones follow.
        let t = v.snapshot(5_000_000_000, 10, &labels);
        assert_eq!(t.paths, 0);
        assert!(t.rows.is_empty());
    }

    #[test]
    fn reset_forgets_everything_before() {
        let labels = labels();
        let mut v = FlowView::new(10_000_000_000, 0);
        let h = [hop(0, 0, dir::TX, 1, 10)];
        v.add(&h, &[]);
        v.snapshot(1_000_000_000, 10, &labels);
        v.add(&h, &[]);
        v.reset(5_000_000_000);
        v.add(&h, &[]);
        let t = v.snapshot(6_000_000_000, 10, &labels);
        assert_eq!((t.span_ns, t.paths, t.flows), (1_000_000_000, 1, 1));
        assert_eq!(v.total_paths, 3);
    }

    #[test]
    fn latencies_are_capped_by_a_uniform_sample() {
        let labels = labels();
        let mut v = FlowView::new(10_000_000_000, 0);
        let n = 3 * MAX_SAMPLES as u64;
        for i in 0..n {
            let h = [hop(0, 0, dir::TX, 1, 10), hop(i + 1, 1, dir::RX, 1, 10)];
            v.add(&h, &[]);
        }
        let t = v.snapshot(1_000_000_000, 10, &labels);
        let r = &t.rows[0];
        assert_eq!((r.paths, r.timed), (n, n));
        // The true median is n/2; a sample of 4096 lands within a few percent of it.
        let p50 = r.p50_ns.unwrap_or(0) as f64;
        assert!((p50 - n as f64 / 2.0).abs() < n as f64 * 0.05, "{p50}");
        assert!(r.p99_ns.unwrap_or(0) as f64 > n as f64 * 0.95);
    }

    #[test]
    fn drop_groups_are_bounded() {
        let mut labels = labels();
        for k in 0..40 {
            labels.intern("n", &format!("if{k}"));
        }
        let mut v = FlowView::new(10_000_000_000, 0);
        for k in 0..40u32 {
            let mut h = hop(0, 2 + k, dir::DROP, 1, 10);
            h.drop_reason = 6;
            v.add(&[h], &[]);
        }
        let t = v.snapshot(1, 10, &labels);
        let r = &t.rows[0];
        assert_eq!(r.drops, 40);
        assert!(
            r.drops_text.starts_with("other ×24; ".as_bytes()),
            "most first"
        );
    }

    #[test]
    fn non_ip_and_empty_paths() {
        let labels = labels();
        let mut v = FlowView::new(1, 0);
        v.add(&[], &[]);
        let arp = Obs {
            ethertype: 0x0806,
            src: v4([10, 0, 0, 1]),
            dst: v4([10, 0, 0, 9]),
            ..Obs::default()
        };
        v.add(&[arp], &[]);
        let t = v.snapshot(0, 10, &labels);
        assert_eq!(t.rows.len(), 1);
        assert_eq!(t.rows[0].flow_text, "arp 10.0.0.1 → 10.0.0.9".as_bytes());
        assert_eq!((t.span_ns, t.rows[0].paths_per_s), (0, 0.0));
    }
}
