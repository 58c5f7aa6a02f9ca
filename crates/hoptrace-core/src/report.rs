//! `hoptrace report`: capture files through the engine (engine.rs: FileSet -> Joiner ->
//! PathFinisher), the finished paths handed to a [`ReportSink`] instead of NDJSON lines.
//! The sink accumulates what tracer/commands/report.py's `Summary` shows, as `Summary.add_path`
//! and `add_flow` compute it: paths by (protocol, verdict), the flows, NAT rewrites
//! grouped by (node, kind, hook, before, after), drops by (hop, reason), hop-to-hop time
//! deltas per (hop and direction, next hop and direction) and whole-path latencies, with
//! their percentiles as numpy's `percentile(method="nearest")` picks them; and, when
//! asked, the Parquet tables' columns (columns.rs).
//!
//! Groups are keyed by ids while paths stream in and named once at the end
//! ([`ReportSink::summary`]), merged by name (two labels can name the same text).

use std::collections::BTreeMap;
use std::time::Instant;

use crate::column_worker::ColumnBuilder;
use crate::columns::{push_drop_reason_text, push_hop_name, Columns, StrColumn};
use crate::engine::{Engine, EngineConfig, ReplayHooks};
use crate::files::{FileError, FileSet};
use crate::finish::{PathSink, ShownPath};
use crate::flows::ClosedFlow;
use crate::hash::FastMap;
use crate::labels::Labels;
use crate::nat::{Endpoints, Verdict};
use crate::obs::{dir, Obs};
use crate::render::push_proto_name;
use crate::text::push_addr;

/// The percentiles a report shows (tracer/commands/report.py `PERCENTILES`).
pub const PERCENTILES: [u32; 3] = [50, 90, 99];

/// (node label, kind, hook, family, before side, after side) of a NAT event: the side
/// rewritten (source for SNAT, destination for DNAT) as (address, port).
type NatKey = (
    u32,
    u8,
    u8,
    u8,
    ([u8; 16], Option<u16>),
    ([u8; 16], Option<u16>),
);

/// What `Summary.add_path` / `add_flow` accumulate, keyed by ids.
#[derive(Debug, Default)]
pub struct ReportSink {
    paths: u64,
    /// ((family, protocol, ethertype) of the first hop, verdict) -> paths.
    by_proto_verdict: FastMap<(u8, u8, u16, u8), u64>,
    nat: FastMap<NatKey, u64>,
    /// (hop label, drop reason code) of `drop` sightings -> sightings.
    drops: FastMap<(u32, u32), u64>,
    /// (label, direction, next label, its direction) -> deltas in ns.
    deltas: FastMap<(u32, u8, u32, u8), Vec<i64>>,
    latency: Vec<i64>,
    flows: Vec<ClosedFlow>,
    columns: Option<ColumnBuilder>,
}

impl ReportSink {
    /// `columns`: build the Parquet tables' columns too (on a thread of their own: see
    /// column_worker.rs).
    pub fn new(columns: bool) -> ReportSink {
        ReportSink {
            columns: columns.then(ColumnBuilder::start),
            ..ReportSink::default()
        }
    }

    /// Paths counted.
    pub fn paths(&self) -> u64 {
        self.paths
    }

    /// The columns (None unless asked for, or if their thread failed), finished: see
    /// [`Columns::finish`].
    pub fn take_columns(&mut self) -> Option<(Columns, StrColumn, StrColumn)> {
        let mut c = self.columns.take()?.finish()?;
        let (obs_proto, path_proto) = c.finish();
        Some((c, obs_proto, path_proto))
    }

    /// The groups named (`labels`: the engine's, which the paths' `hop` fields index).
    pub fn summary(&mut self, labels: &Labels) -> ReportSummary {
        let mut by_proto_verdict: BTreeMap<(Vec<u8>, &'static str), u64> = BTreeMap::new();
        for (&(family, proto, ethertype, v), &n) in &self.by_proto_verdict {
            let mut name = Vec::new();
            push_proto_name(&mut name, family, proto, ethertype);
            *by_proto_verdict.entry((name, verdict_name(v))).or_default() += n;
        }
        let mut nat: BTreeMap<NatRow, u64> = BTreeMap::new();
        for (&(hop, kind, hook, family, before, after), &n) in &self.nat {
            let row = NatRow {
                node: labels.get(hop).node_raw.clone(),
                kind: if kind == 1 { "snat" } else { "dnat" },
                hook: match hook {
                    0 => "PREROUTING",
                    1 => "POSTROUTING",
                    _ => "OUTPUT",
                },
                before: (addr_text(family, &before.0), before.1),
                after: (addr_text(family, &after.0), after.1),
            };
            *nat.entry(row).or_default() += n;
        }
        let mut drops: BTreeMap<(Vec<u8>, Vec<u8>), u64> = BTreeMap::new();
        for (&(hop, code), &n) in &self.drops {
            let mut name = Vec::new();
            push_hop_name(&mut name, hop, labels);
            let mut reason = Vec::new();
            if code == 0 {
                reason.extend_from_slice(b"unknown");
            } else {
                push_drop_reason_text(&mut reason, code, labels);
            }
            *drops.entry((name, reason)).or_default() += n;
        }
        let mut merged: BTreeMap<(Vec<u8>, Vec<u8>), Vec<i64>> = BTreeMap::new();
        for (&(a, da, b, db), d) in &mut self.deltas {
            let key = (hop_dir_name(a, da, labels), hop_dir_name(b, db, labels));
            let slot = merged.entry(key).or_default();
            if slot.is_empty() {
                std::mem::swap(slot, d);
            } else {
                slot.append(d);
            }
        }
        self.deltas.clear();
        let hop_latency = merged
            .into_iter()
            .map(|((a, b), mut d)| HopLatency {
                from: a,
                to: b,
                count: d.len() as u64,
                percentiles: percentiles_nearest(&mut d),
            })
            .collect();
        let path_latency = (!self.latency.is_empty()).then(|| {
            (
                self.latency.len() as u64,
                percentiles_nearest(&mut self.latency),
            )
        });
        let flows = self
            .flows
            .iter()
            .map(|f| {
                let mut proto = Vec::new();
                push_proto_name(&mut proto, f.family, f.proto, 0);
                FlowRow {
                    num: f.num,
                    proto,
                    original: endpoint_texts(f.family, &f.original),
                    reply: endpoint_texts(f.family, &f.reply),
                    paths: f.paths as u64,
                    relayed: f.relayed,
                }
            })
            .collect();
        ReportSummary {
            paths: self.paths,
            by_proto_verdict: by_proto_verdict
                .into_iter()
                .map(|((p, v), n)| (p, v, n))
                .collect(),
            nat: nat.into_iter().collect(),
            drops: drops.into_iter().map(|((h, r), n)| (h, r, n)).collect(),
            hop_latency,
            path_latency,
            flows,
        }
    }
}

fn verdict_name(v: u8) -> &'static str {
    match v {
        0 => Verdict::Delivered.name(),
        1 => Verdict::Dropped.name(),
        2 => Verdict::Left.name(),
        _ => Verdict::Incomplete.name(),
    }
}

fn addr_text(family: u8, raw: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::new();
    push_addr(&mut out, family, raw);
    out
}

fn endpoint_texts(family: u8, e: &Endpoints) -> EndpointTexts {
    EndpointTexts {
        src: addr_text(family, &e.src),
        sport: e.sport,
        dst: addr_text(family, &e.dst),
        dport: e.dport,
    }
}

/// `"{node}/{iface} {dir or '?'}"`.
fn hop_dir_name(hop: u32, d: u8, labels: &Labels) -> Vec<u8> {
    let mut out = Vec::new();
    push_hop_name(&mut out, hop, labels);
    out.extend_from_slice(match d {
        dir::RX => b" rx".as_slice(),
        dir::TX => b" tx",
        dir::DROP => b" drop",
        _ => b" ?",
    });
    out
}

/// numpy's `percentile(values, PERCENTILES, method="nearest")`: the value of rank
/// `round_half_even((n - 1) * q / 100)` in sorted order. `values` is reordered; empty: 0s.
pub fn percentiles_nearest(values: &mut [i64]) -> [i64; 3] {
    let mut out = [0i64; 3];
    let Some(last) = values.len().checked_sub(1) else {
        return out;
    };
    for (slot, q) in out.iter_mut().zip(PERCENTILES) {
        let virtual_index = (last as f64 * (f64::from(q) / 100.0)).round_ties_even();
        let rank = (virtual_index as usize).min(last);
        let (_, v, _) = values.select_nth_unstable(rank);
        *slot = *v;
    }
    out
}

/// A NAT group, named: the node, kind, hook, and the rewritten side before and after
/// (address text, port).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NatRow {
    pub node: Vec<u8>,
    pub kind: &'static str,
    pub hook: &'static str,
    pub before: (Vec<u8>, Option<u16>),
    pub after: (Vec<u8>, Option<u16>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointTexts {
    pub src: Vec<u8>,
    pub sport: Option<u16>,
    pub dst: Vec<u8>,
    pub dport: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRow {
    pub num: u64,
    pub proto: Vec<u8>,
    pub original: EndpointTexts,
    pub reply: EndpointTexts,
    pub paths: u64,
    /// A leg of a connection a userland proxy relayed (crate::relay).
    pub relayed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopLatency {
    pub from: Vec<u8>,
    pub to: Vec<u8>,
    pub count: u64,
    pub percentiles: [i64; 3],
}

/// What a report shows, named ("surrogatepass" UTF-8 names, as the labels hold them);
/// each list in key order (a report sorts them its own way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSummary {
    pub paths: u64,
    /// (protocol name, verdict, paths).
    pub by_proto_verdict: Vec<(Vec<u8>, &'static str, u64)>,
    pub nat: Vec<(NatRow, u64)>,
    /// (hop name, reason, sightings).
    pub drops: Vec<(Vec<u8>, Vec<u8>, u64)>,
    pub hop_latency: Vec<HopLatency>,
    /// (paths with two hops or more, percentiles of their first-to-last time).
    pub path_latency: Option<(u64, [i64; 3])>,
    /// In the order they closed (their lines' order).
    pub flows: Vec<FlowRow>,
}

impl ReportSink {
    #[inline]
    fn add_deltas(&mut self, hops: &[Obs]) {
        for w in hops.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            let key = (a.hop, a.dir.min(4), b.hop, b.dir.min(4));
            let delta = (b.ts_ns as i64).wrapping_sub(a.ts_ns as i64);
            match self.deltas.get_mut(&key) {
                Some(v) => v.push(delta),
                None => {
                    self.deltas.insert(key, vec![delta]);
                }
            }
        }
    }
}

impl PathSink for ReportSink {
    fn path(&mut self, p: &ShownPath<'_>, labels: &Labels) {
        let (Some(first), Some(last)) = (p.hops.first(), p.hops.last()) else {
            return;
        };
        self.paths += 1;
        *self
            .by_proto_verdict
            .entry((first.family, first.proto, first.ethertype, p.verdict as u8))
            .or_default() += 1;
        for ev in p.nat {
            let (before, after) = ev.rewritten();
            let kind = match ev.kind {
                crate::nat::NatKind::Snat => 1,
                crate::nat::NatKind::Dnat => 2,
            };
            let hook = match ev.hook {
                crate::nat::Hook::Prerouting => 0,
                crate::nat::Hook::Postrouting => 1,
                crate::nat::Hook::Output => 2,
            };
            *self
                .nat
                .entry((ev.hop, kind, hook, ev.family, before, after))
                .or_default() += 1;
        }
        for (i, h) in p.hops.iter().enumerate() {
            // Frees that lost nothing (after delivery, a raw socket's copy) are no drops.
            if h.dir == dir::DROP && crate::drops::lost(p.hops, i, labels, p.verdict) {
                *self.drops.entry((h.hop, h.drop_reason)).or_default() += 1;
            }
        }
        if p.hops.len() > 1 {
            self.add_deltas(p.hops);
            self.latency
                .push((last.ts_ns as i64).wrapping_sub(first.ts_ns as i64));
        }
        if let Some(c) = &mut self.columns {
            c.add_path(p, labels);
        }
    }

    fn flow(&mut self, f: &ClosedFlow) {
        self.flows.push(f.clone());
    }
}

/// How a report's run ended, with what it found.
#[derive(Debug)]
pub struct Report {
    pub observations: u64,
    pub elapsed_s: f64,
    pub summary: ReportSummary,
    /// The Parquet columns, and the observations' and paths' `proto` dictionaries.
    pub columns: Option<(Columns, StrColumn, StrColumn)>,
    /// A file was damaged or unreadable: what it held before the damage is reported.
    pub error: Option<FileError>,
}

/// `hoptrace report`: `files` through the engine into a [`ReportSink`], batch by batch as
/// [`crate::engine::replay_ndjson`] runs them (the hooks between batches, a path filter's
/// programs asked once per link type), nothing written. A hook's stop ends the run.
pub fn report_files<H: ReplayHooks>(
    files: &mut FileSet,
    cfg: EngineConfig,
    columns: bool,
    hooks: &mut H,
) -> Result<Report, H::Stop> {
    let t0 = Instant::now();
    let mut engine = Engine::new(cfg);
    engine.set_sink(Box::new(ReportSink::new(columns)), false);
    let mut error = None;
    let mut raws = crate::raw_block::RawSpans::new();
    loop {
        let batch = match files.next_batch() {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        for h in files.new_hops() {
            engine.add_hop(&h.node, &h.iface, h.linktype);
        }
        for lt in engine.linktypes_without_program() {
            let program = hooks.program(lt);
            engine.set_program(lt, program);
        }
        for (code, name) in files.new_drop_reasons() {
            engine.set_drop_reason(*code, name);
        }
        // A recording's relayed connections: their flows are counted beside the NAT.
        for note in files.new_relays() {
            engine.preset_relay(note);
        }
        // A recording's raw socket spans: a NO_SOCKET free of ICMP is judged as live did.
        if raws.take_in(files.new_raw_sockets()) {
            engine.set_raw_sockets(&raws.spans());
        }
        engine.feed(&batch.rows, batch.frames.bytes(), None);
        let records = batch.rows.len();
        drop(batch);
        engine.take_output(); // the stats line's buffer only: no path writes a line
        hooks.between_batches(records, files.bytes_read())?;
    }
    engine.flush();
    engine.take_output();
    let mut sink = take_report_sink(&mut engine);
    let summary = sink.summary(engine.labels());
    Ok(Report {
        observations: engine.observations(),
        elapsed_s: t0.elapsed().as_secs_f64(),
        summary,
        columns: sink.take_columns(),
        error,
    })
}

fn take_report_sink(engine: &mut Engine) -> ReportSink {
    let any: Option<Box<dyn std::any::Any>> =
        engine.take_sink().map(|s| s as Box<dyn std::any::Any>);
    match any.map(|a| a.downcast::<ReportSink>()) {
        Some(Ok(sink)) => *sink,
        // The engine holds the sink it was given: unreachable, and an empty report if not.
        _ => ReportSink::new(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_percentiles_as_numpy_picks_them() {
        // numpy.percentile(x, (50, 90, 99), method="nearest") of each, on this machine.
        let cases: [(&[i64], [i64; 3]); 6] = [
            (&[5], [5, 5, 5]),
            (&[1, 2], [1, 2, 2]),             // 0.5 rounds to 0 (half to even)
            (&[1, 2, 3, 4], [3, 4, 4]),       // 1.5 rounds to 2
            (&[6, 1, 4, 3, 5, 2], [3, 5, 6]), // 2.5 -> 2, 4.5 -> 4, 4.95 -> 5
            (
                &[10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110],
                [60, 100, 110],
            ),
            (&[], [0, 0, 0]),
        ];
        for (values, want) in cases {
            let mut v = values.to_vec();
            assert_eq!(percentiles_nearest(&mut v), want, "{values:?}");
        }
    }
}
