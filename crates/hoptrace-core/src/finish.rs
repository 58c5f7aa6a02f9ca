//! What happens to a path once the join says it is finished: its NAT events, its
//! verdict, its flow, and its NDJSON line, with the state that carries from path to
//! path (tests/reference/correlate.py `_finish`, `_assign_flow`, `take_flows`; tests/reference/nat.py `verdict`).
//!
//! How the join drives a [`PathFinisher`] (the protocol of the Python correlator,
//! whose output this reproduces byte for byte):
//!
//! * while feeding sightings: [`PathFinisher::owners`]`.claim(..)` for the first
//!   sighting of each path when it is an IP packet leaving (tx, or direction
//!   unknown), and `.retract(..)` when a path's true first sighting turns up late;
//! * per expiry step: [`PathFinisher::finish`] for each path that finished, in the
//!   order they finished (idle order: what a path learns from earlier ones, links
//!   and flows, depends on it), then [`PathFinisher::end_step`], which writes the
//!   step's lines in path-number order; or the step at once, [`PathFinisher::finish_step`]
//!   (judged in finishing order, then written in number order: no reordering copy);
//! * after each batch: [`PathFinisher::take_flows`] with the sightings' clock (the
//!   largest time seen): flows idle for `flow_idle_ns` close and their lines follow;
//! * at the end: once no path is open, [`PathFinisher::close_flows`], then
//!   `take_flows`, then [`PathFinisher::push_stats`].
//!
//! Everything goes into one growing buffer; [`PathFinisher::take_output`] hands it over.
//! A second consumer ([`PathSink`], e.g. the report's aggregates and Parquet columns in
//! report.rs) hears of each shown path and each closed flow as it would be written, in
//! the same order, with or without the NDJSON lines ([`PathFinisher::set_sink`]).

use std::any::Any;

use crate::annotate::Notes;
use crate::correlate::FinishedPath;
use crate::drops;
use crate::flows::{ClosedFlow, Flows};
use crate::labels::Labels;
use crate::learned::{Links, Owners};
use crate::local::{ends_locally, Locals};
use crate::nat::{infer_nat, NatEvent, Verdict};
use crate::obs::Obs;
use crate::render::{push_path_line, push_path_line_noted, push_stats_line};
use crate::text_render::{push_path_text, push_path_text_noted, push_stats_text, Format, PathHead};

/// The correlator's settings that finishing reads (tests/reference/correlate.py's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishConfig {
    /// How long a path may stay idle before it finishes: what a verdict may know about
    /// addresses learned after the path's last sighting.
    pub window_ns: u64,
    /// A flow idle this long (in the paths' own time) closes.
    pub flow_idle_ns: u64,
    /// A flow closes when it has this many paths.
    pub max_flow_paths: usize,
    /// What the lines are: NDJSON (`--json`) or text for people (`TextSink`'s blocks).
    pub format: Format,
}

impl Default for FinishConfig {
    fn default() -> Self {
        FinishConfig {
            window_ns: 500_000_000,
            flow_idle_ns: 5_000_000_000,
            max_flow_paths: 1000,
            format: Format::Ndjson,
        }
    }
}

/// A shown path as its line would say it.
#[derive(Debug, Clone, Copy)]
pub struct ShownPath<'a> {
    pub num: u64,
    pub flow: Option<u64>,
    pub verdict: Verdict,
    /// Its sightings in path order, never empty; `hop` fields index the finisher's labels.
    pub hops: &'a [Obs],
    pub nat: &'a [NatEvent],
}

/// A consumer of finished paths besides (or instead of) the NDJSON lines: it hears of
/// each shown path in the order the lines are written, and of each flow that closes with
/// a path listed. `Any` lets its owner take it back ([`PathFinisher::take_sink`]).
pub trait PathSink: Any + Send + Sync + std::fmt::Debug {
    fn path(&mut self, p: &ShownPath<'_>, labels: &Labels);
    fn flow(&mut self, f: &ClosedFlow);
}

/// One finished path as `format` writes it: its NDJSON line, or its text block and the gap after it.
fn push_path(
    out: &mut Vec<u8>,
    format: Format,
    (num, flow, verdict): (u64, Option<u64>, Verdict),
    hops: &[Obs],
    nat: &[NatEvent],
    labels: &Labels,
) {
    match format {
        Format::Ndjson => push_path_line(out, num, flow, verdict, hops, nat, labels),
        Format::Text(opts) => {
            let head = PathHead { num, flow, verdict };
            push_path_text(out, head, hops, nat, labels, &opts);
        }
    }
}

/// A step's shown path as judged: (number, index in its step, flow, verdict, the key of
/// who took its packet when it ended locally: crate::local).
type Judged = (u64, usize, Option<u64>, Verdict, Option<u64>);

/// Finished paths in, NDJSON (or text) out. See the module documentation for the protocol.
#[derive(Debug)]
pub struct PathFinisher {
    cfg: FinishConfig,
    labels: Labels,
    owners: Owners,
    links: Links,
    flows: Flows,
    nat: Vec<NatEvent>,
    /// The current step's lines are `out[step_start..]`: (path number, start, end) of each.
    step_start: usize,
    step_lines: Vec<(u64, usize, usize)>,
    scratch: Vec<u8>,
    /// `finish_step`'s shown paths: (number, index in its step, flow, verdict).
    judged: Vec<Judged>,
    out: Vec<u8>,
    paths: u64,
    sink: Option<Box<dyn PathSink>>,
    /// Paths' NDJSON lines are written (false: only the sink hears of them).
    lines: bool,
    /// `finish_shown`'s paths for the sink, until their step ends: (number, flow,
    /// verdict, start, end in `pending_obs`).
    pending: Vec<(u64, Option<u64>, Verdict, usize, usize)>,
    pending_obs: Vec<Obs>,
    /// Show at most this many paths (`--count`): the rest are hidden, in output order.
    limit: Option<u64>,
    /// `finish_step`'s numbers of the step's paths that would be shown.
    candidates: Vec<u64>,
    /// Annotation tables (live's annotators), when set: `finish_step` applies them.
    notes: Option<Notes>,
    /// Per shown path of a step, its note; scratch for annotated hops and NAT events.
    step_notes: Vec<Option<u32>>,
    step_shown: Vec<bool>,
    /// Per path of a step whose notes were looked up, its NAT events: `step_nat[a..b]`.
    step_nat: Vec<NatEvent>,
    step_nat_at: Vec<(usize, usize)>,
    noted_hops: Vec<Obs>,
    noted_nat: Vec<NatEvent>,
    /// Scratch: sightings with their unnamed hops named (drops.rs `name_hops`).
    named: Vec<Obs>,
    named_paths: Vec<FinishedPath>,
}

impl PathFinisher {
    pub fn new(cfg: FinishConfig) -> PathFinisher {
        PathFinisher {
            cfg,
            labels: Labels::new(),
            owners: Owners::new(),
            links: Links::new(),
            flows: Flows::new(cfg.flow_idle_ns, cfg.max_flow_paths)
                .with_text(matches!(cfg.format, Format::Text(_))),
            nat: Vec::new(),
            step_start: 0,
            step_lines: Vec::new(),
            scratch: Vec::new(),
            judged: Vec::new(),
            out: Vec::new(),
            paths: 0,
            sink: None,
            lines: true,
            pending: Vec::new(),
            pending_obs: Vec::new(),
            limit: None,
            candidates: Vec::new(),
            notes: None,
            step_notes: Vec::new(),
            step_shown: Vec::new(),
            step_nat: Vec::new(),
            step_nat_at: Vec::new(),
            noted_hops: Vec::new(),
            noted_nat: Vec::new(),
            named: Vec::new(),
            named_paths: Vec::new(),
        }
    }

    /// Where and when raw ICMP sockets were open: (netns, from_ns, to_ns), replacing the
    /// table (a path judged later sees it).
    pub fn set_raw_sockets(&mut self, spans: &[(u64, u64, u64)]) {
        self.labels.set_raw_sockets(spans);
    }

    /// Annotate the paths of each step ([`PathFinisher::finish_step`]) from `notes`.
    pub fn set_notes(&mut self, notes: Notes) {
        self.notes = Some(notes);
    }

    pub fn notes_mut(&mut self) -> Option<&mut Notes> {
        self.notes.as_mut()
    }

    /// The step's shown paths looked up in the tables; the misses asked at once. Each
    /// shown path's NAT events stay in `step_nat` for its line.
    fn look_up_notes(&mut self, shown: &[bool], paths: &[FinishedPath], obs: &[Obs]) {
        self.step_notes.clear();
        self.step_nat.clear();
        self.step_nat_at.clear();
        let Some(notes) = &mut self.notes else {
            return;
        };
        for (p, &show) in paths.iter().zip(shown) {
            let hops = obs.get(p.start..p.end).filter(|h| show && !h.is_empty());
            let start = self.step_nat.len();
            let Some(hops) = hops else {
                self.step_notes.push(None);
                self.step_nat_at.push((start, start));
                continue;
            };
            infer_nat(hops, &self.labels, &mut self.step_nat);
            let nat = self.step_nat.get(start..).unwrap_or_default();
            self.step_notes.push(notes.lookup(hops, nat));
            self.step_nat_at.push((start, self.step_nat.len()));
        }
        if notes.pending() {
            notes.resolve(&mut self.labels, |out, hops, nat, labels| {
                push_path_line(out, 0, None, Verdict::Incomplete, hops, nat, labels);
            });
        }
    }

    /// Hand each shown path and each closed flow to `sink` as well; `lines`: keep writing
    /// their NDJSON lines (false: the sink is the only consumer, nothing is written but
    /// the stats line).
    pub fn set_sink(&mut self, sink: Box<dyn PathSink>, lines: bool) {
        self.sink = Some(sink);
        self.lines = lines;
        self.flows.keep_closed(lines);
    }

    /// The sink, taken back (the steps so far ended, the flows closed so far handed over).
    pub fn take_sink(&mut self) -> Option<Box<dyn PathSink>> {
        self.end_step();
        self.hand_flows();
        self.sink.take()
    }

    fn hand_flows(&mut self) {
        if let Some(sink) = &mut self.sink {
            for f in self.flows.take_closed() {
                sink.flow(&f);
            }
        }
    }

    /// Show at most `limit` paths in all (tracer/engine.py's `count`): [`finish_step`]
    /// hides the paths past it in the order they are written (a step's in number order),
    /// which still teach what any hidden path teaches. `finish`/`finish_shown` ignore it.
    ///
    /// [`finish_step`]: PathFinisher::finish_step
    pub fn set_limit(&mut self, limit: Option<u64>) {
        self.limit = limit;
    }

    /// The limit is reached: nothing more will be shown.
    pub fn limit_reached(&self) -> bool {
        self.limit.is_some_and(|n| self.paths >= n)
    }

    pub fn config(&self) -> FinishConfig {
        self.cfg
    }

    /// The hop label table rows' `hop` fields index, and the drop reason names.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    pub fn labels_mut(&mut self) -> &mut Labels {
        &mut self.labels
    }

    /// Which namespace sends from which address: the join teaches it (see the module doc).
    pub fn owners(&mut self) -> &mut Owners {
        &mut self.owners
    }

    /// Paths finished so far.
    pub fn paths(&self) -> u64 {
        self.paths
    }

    /// Path `num` finished; `hops` are its sightings in path order (time order). Its line
    /// is written at [`PathFinisher::end_step`]. An empty path is ignored.
    pub fn finish(&mut self, num: u64, hops: &[Obs]) {
        self.finish_shown(num, hops, true);
    }

    /// [`PathFinisher::finish`] for a path that a path filter shows or hides: a hidden
    /// path teaches what any path teaches (links, its flow) but writes no line, is not
    /// counted, and its flow does not list it.
    pub fn finish_shown(&mut self, num: u64, hops: &[Obs], shown: bool) {
        if hops.iter().any(|o| drops::unnamed(o, &self.labels)) {
            let mut named = std::mem::take(&mut self.named);
            named.clear();
            named.extend_from_slice(hops);
            drops::name_hops(&mut named, &mut self.labels);
            self.finish_shown_named(num, &named, shown);
            self.named = named;
            return;
        }
        self.finish_shown_named(num, hops, shown);
    }

    fn finish_shown_named(&mut self, num: u64, hops: &[Obs], shown: bool) {
        let Some((flow, v, local)) = self.judge(num, hops, shown, None) else {
            return;
        };
        if !shown {
            return;
        }
        self.paths += 1;
        if self.sink.is_some() {
            let start = self.pending_obs.len();
            self.pending_obs.extend_from_slice(hops);
            self.pending
                .push((num, flow, v, start, self.pending_obs.len()));
        }
        if !self.lines {
            return;
        }
        let labels = &self.labels;
        self.nat.clear();
        infer_nat(hops, labels, &mut self.nat);
        if self.step_lines.is_empty() {
            self.step_start = self.out.len();
        }
        let start = self.out.len();
        push_path(
            &mut self.out,
            self.cfg.format,
            (num, flow, v),
            hops,
            &self.nat,
            labels,
        );
        if let Some(handle) = local {
            self.patch_local(start, handle, None);
        }
        if let Some(first) = hops.first() {
            self.patch_relay(start, first);
        }
        self.step_lines.push((num, start, self.out.len()));
    }

    /// One expiry step's paths at once: `paths` in the order they finished, each path's
    /// sightings `obs[start..end]`, shown when marked or when `all_shown` (see
    /// [`PathFinisher::finish_shown`]). The same lines as `finish_shown` for each path then
    /// `end_step`, but every path is judged first (in finishing order: links, verdict,
    /// flow) and the shown ones are then written straight in number order.
    pub fn finish_step(&mut self, paths: &[FinishedPath], obs: &[Obs], all_shown: bool) {
        let unnamed = obs.iter().any(|o| drops::unnamed(o, &self.labels));
        self.finish_step_labelled(paths, obs, all_shown, unnamed);
    }

    /// [`PathFinisher::finish_step`] when the caller knows whether a hop of `obs` is
    /// unnamed (`drops::unnamed`; the join can tell as it hands sightings out).
    pub fn finish_step_labelled(
        &mut self,
        paths: &[FinishedPath],
        obs: &[Obs],
        all_shown: bool,
        unnamed: bool,
    ) {
        if unnamed {
            // Each path's unnamed hops named, in a copy of the paths' sightings.
            let (mut named, mut named_paths) = (
                std::mem::take(&mut self.named),
                std::mem::take(&mut self.named_paths),
            );
            named.clear();
            named_paths.clear();
            for p in paths {
                let Some(hops) = obs.get(p.start..p.end) else {
                    continue;
                };
                let start = named.len();
                named.extend_from_slice(hops);
                if let Some(copy) = named.get_mut(start..) {
                    drops::name_hops(copy, &mut self.labels);
                }
                named_paths.push(FinishedPath {
                    start,
                    end: named.len(),
                    ..*p
                });
            }
            self.finish_step_named(&named_paths, &named, all_shown);
            (self.named, self.named_paths) = (named, named_paths);
            return;
        }
        self.finish_step_named(paths, obs, all_shown);
    }

    fn finish_step_named(&mut self, paths: &[FinishedPath], obs: &[Obs], all_shown: bool) {
        self.end_step();
        let mut judged = std::mem::take(&mut self.judged);
        judged.clear();
        // With a limit, the shown paths are the first ones by number that fit under it:
        // those numbered below `cutoff`.
        let cutoff = self.cutoff(paths, obs, all_shown);
        let noted = self.notes.is_some() && self.lines;
        if noted {
            // Annotations first: a flow that closes while its paths are judged names the
            // conntrack entry its paths' NAT events got.
            let mut shown = std::mem::take(&mut self.step_shown);
            shown.clear();
            shown.extend(
                paths
                    .iter()
                    .map(|p| (p.marked || all_shown) && cutoff.is_none_or(|c| p.num < c)),
            );
            self.look_up_notes(&shown, paths, obs);
            self.step_shown = shown;
        } else {
            self.step_notes.clear();
            self.step_nat_at.clear();
        }
        for (k, p) in paths.iter().enumerate() {
            let Some(hops) = obs.get(p.start..p.end) else {
                continue;
            };
            let shown = (p.marked || all_shown) && cutoff.is_none_or(|c| p.num < c);
            let ct = match (self.step_notes.get(k).copied().flatten(), &self.notes) {
                (Some(i), Some(notes)) => notes.conntrack_of(i),
                _ => None,
            };
            if let Some((flow, v, local)) = self.judge(p.num, hops, shown, ct) {
                if shown {
                    judged.push((p.num, k, flow, v, local));
                }
            }
        }
        if !judged.windows(2).all(|w| w[0].0 <= w[1].0) {
            judged.sort_by_key(|j| j.0); // stable: equal numbers stay in finishing order
        }
        for &(num, k, flow, v, local) in &judged {
            let Some(hops) = paths.get(k).and_then(|p| obs.get(p.start..p.end)) else {
                continue;
            };
            self.nat.clear();
            // Found when the notes were looked up (the labels it reads have not changed
            // since: interning only adds labels), else inferred now.
            match self
                .step_nat_at
                .get(k)
                .and_then(|&(a, b)| self.step_nat.get(a..b))
            {
                Some(nat) if noted => self.nat.extend_from_slice(nat),
                _ => infer_nat(hops, &self.labels, &mut self.nat),
            }
            let note = self.step_notes.get(k).copied().flatten();
            let mut written = false;
            let line_start = self.out.len();
            let mut local_label = None;
            if let (Some(i), Some(notes), true) = (note, self.notes.as_mut(), self.lines) {
                if let Some(nn) = notes.apply(
                    i,
                    hops,
                    &self.nat,
                    &mut self.noted_hops,
                    &mut self.noted_nat,
                ) {
                    match self.cfg.format {
                        Format::Ndjson => push_path_line_noted(
                            &mut self.out,
                            num,
                            flow,
                            v,
                            &self.noted_hops,
                            &self.noted_nat,
                            nn,
                            &self.labels,
                        ),
                        Format::Text(opts) => push_path_text_noted(
                            &mut self.out,
                            PathHead {
                                num,
                                flow,
                                verdict: v,
                            },
                            &self.noted_hops,
                            &self.noted_nat,
                            nn,
                            &self.labels,
                            &opts,
                        ),
                    }
                    local_label = self.noted_hops.last().map(|h| h.hop);
                    written = true;
                }
            }
            if self.lines && !written {
                push_path(
                    &mut self.out,
                    self.cfg.format,
                    (num, flow, v),
                    hops,
                    &self.nat,
                    &self.labels,
                );
                written = true;
            }
            if let (Some(handle), true) = (local, written) {
                self.patch_local(line_start, handle, local_label);
            }
            if let (Some(first), true) = (hops.first(), written) {
                self.patch_relay(line_start, first);
            }
            if let Some(sink) = &mut self.sink {
                let p = ShownPath {
                    num,
                    flow,
                    verdict: v,
                    hops,
                    nat: &self.nat,
                };
                sink.path(&p, &self.labels);
            }
            self.paths += 1;
        }
        self.judged = judged;
    }

    /// The path line or block just written at `out[start..]` with who took its packet,
    /// when the answer is in (crate::local); `label` names the node (None: the key's).
    fn patch_local(&mut self, start: usize, handle: u64, label: Option<u32>) {
        let Some(locals) = self.flows.locals() else {
            return;
        };
        match self.cfg.format {
            Format::Ndjson => locals.patch_json(start, &mut self.out, handle, label, &self.labels),
            Format::Text(opts) => {
                let (gap, own_line) = if opts.detail < 0 {
                    (b"\n".as_slice(), false)
                } else {
                    (b"\n\n".as_slice(), true)
                };
                locals.patch_text(
                    start,
                    &mut self.out,
                    handle,
                    label,
                    &self.labels,
                    gap,
                    own_line,
                );
            }
        }
    }

    /// The path line or block just written at `out[start..]` with the relay its flow is a
    /// leg of (crate::relay), when Python has linked it.
    fn patch_relay(&mut self, start: usize, first: &Obs) {
        let text = match self.cfg.format {
            Format::Ndjson => None,
            Format::Text(opts) if opts.detail < 0 => Some((b"\n".as_slice(), false)),
            Format::Text(_) => Some((b"\n\n".as_slice(), true)),
        };
        self.flows.patch_relay(start, &mut self.out, first, text);
    }

    /// Say which connections a userland proxy relayed (crate::relay).
    pub fn enable_relays(&mut self) {
        self.flows.enable_relays();
    }

    pub fn relays_mut(&mut self) -> Option<&mut crate::relay::Relays> {
        self.flows.relays_mut()
    }

    /// Say who took the packets of paths that ended locally (crate::local): Python
    /// answers the misses ([`PathFinisher::locals_mut`]).
    pub fn enable_locals(&mut self) {
        self.flows.enable_locals();
    }

    pub fn locals_mut(&mut self) -> Option<&mut Locals> {
        self.flows.locals_mut()
    }

    /// A recorded answer (a replay; crate::local): paths that end at its key from now on,
    /// and their flows, say it.
    pub fn preset_local(&mut self, note: &crate::local::LocalNote) {
        self.flows.preset_local(note);
    }

    /// The smallest path number of the step that the limit hides (None: no limit applies).
    fn cutoff(&mut self, paths: &[FinishedPath], obs: &[Obs], all_shown: bool) -> Option<u64> {
        let room = self.limit?.saturating_sub(self.paths);
        self.candidates.clear();
        self.candidates.extend(
            paths
                .iter()
                .filter(|p| {
                    (p.marked || all_shown) && p.end > p.start && obs.get(p.start..p.end).is_some()
                })
                .map(|p| p.num),
        );
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        if self.candidates.len() <= room {
            return None;
        }
        self.candidates.sort_unstable();
        self.candidates.get(room).copied()
    }

    /// What finishing a path teaches (links, its flow) and its verdict; None for an empty path.
    /// `conntrack`: the entry an annotator found for the path's NAT events (its flow's).
    fn judge(
        &mut self,
        num: u64,
        hops: &[Obs],
        shown: bool,
        conntrack: Option<u64>,
    ) -> Option<(Option<u64>, Verdict, Option<u64>)> {
        let (first, last) = (hops.first()?, hops.last()?);
        let labels = &self.labels;
        self.links.learn(hops, labels);
        // What was known when the path went idle: an address learned later than a window
        // after its last sighting was not (live, its tick came then; a replay may have
        // read further): the same verdict in any batching.
        let owned = last.family != 0
            && self
                .owners
                .since(last.family, &last.dst, last.netns)
                .is_some_and(|since| {
                    u128::from(since) <= u128::from(last.ts_ns) + u128::from(self.cfg.window_ns)
                });
        let linked = self.links.contains(last, labels);
        let v = drops::path_verdict(hops, labels, owned, linked);
        let local = match self.flows.locals_mut() {
            Some(locals) if shown && ends_locally(v == Verdict::Delivered, last, &self.labels) => {
                locals.note(last, last.hop)
            }
            _ => None,
        };
        self.flows.set_labels(&self.labels);
        let flow = self
            .flows
            .assign_local(num, first, last, shown, conntrack, local);
        Some((flow, v, local))
    }

    /// The step's paths are all in: their lines go out in path-number order (the order
    /// they were first seen).
    pub fn end_step(&mut self) {
        self.hand_pending();
        if !self.step_lines.windows(2).all(|w| w[0].0 <= w[1].0) {
            // Written in finishing order: put them in number order (stable for equal numbers),
            // one copy when the step is all the buffer holds (the binding takes every step).
            self.step_lines.sort_by_key(|&(num, _, _)| num);
            let base = self.step_start;
            self.scratch.clear();
            if base == 0 {
                std::mem::swap(&mut self.scratch, &mut self.out);
                self.out.reserve(self.scratch.len());
            } else {
                self.scratch
                    .extend_from_slice(self.out.get(base..).unwrap_or_default());
                self.out.truncate(base);
            }
            for &(_, a, b) in &self.step_lines {
                if let Some(line) = self
                    .scratch
                    .get(a.saturating_sub(base)..b.saturating_sub(base))
                {
                    self.out.extend_from_slice(line);
                }
            }
        }
        self.step_lines.clear();
    }

    /// `finish_shown`'s paths of the step to the sink, in number order (stable).
    fn hand_pending(&mut self) {
        let Some(sink) = &mut self.sink else {
            return;
        };
        if self.pending.is_empty() {
            return;
        }
        self.pending.sort_by_key(|p| p.0);
        for &(num, flow, verdict, a, b) in &self.pending {
            let Some(hops) = self.pending_obs.get(a..b) else {
                continue;
            };
            self.nat.clear();
            infer_nat(hops, &self.labels, &mut self.nat);
            let p = ShownPath {
                num,
                flow,
                verdict,
                hops,
                nat: &self.nat,
            };
            sink.path(&p, &self.labels);
        }
        self.pending.clear();
        self.pending_obs.clear();
    }

    /// Room for `bytes` more output (the binding knows a batch's size before it starts).
    pub fn reserve_output(&mut self, bytes: usize) {
        self.out.reserve(bytes);
    }

    /// The sightings' clock is at `clock_ns`: flows idle since before `clock_ns -
    /// flow_idle_ns` close; the lines of every flow closed since the last call follow.
    pub fn take_flows(&mut self, clock_ns: u64) {
        self.end_step();
        self.flows.set_labels(&self.labels);
        self.flows.expire(clock_ns);
        self.flows.take(&mut self.out);
        self.hand_flows();
    }

    /// End of input with no path open: every open flow closes (taken by `take_flows`).
    pub fn close_flows(&mut self) {
        self.end_step();
        self.flows.set_labels(&self.labels);
        self.flows.close_all();
    }

    /// The last line of a run.
    pub fn push_stats(&mut self, observations: u64, lost_events: u64, elapsed_s: f64) {
        self.end_step();
        let write = match self.cfg.format {
            Format::Ndjson => push_stats_line,
            Format::Text(_) => push_stats_text,
        };
        write(
            &mut self.out,
            observations,
            self.paths,
            lost_events,
            elapsed_s,
        );
    }

    /// The lines written since the last call; those of a step not ended yet stay.
    pub fn take_output(&mut self) -> Vec<u8> {
        if self.step_lines.is_empty() {
            return std::mem::take(&mut self.out);
        }
        let rest = self.out.split_off(self.step_start);
        for line in &mut self.step_lines {
            line.1 -= self.step_start;
            line.2 -= self.step_start;
        }
        self.step_start = 0;
        std::mem::replace(&mut self.out, rest)
    }

    /// Write the lines of ended steps to `w` and forget them, keeping the buffer (a writer
    /// to a file or stdout pays no fresh memory per batch, as [`take_output`] does).
    ///
    /// [`take_output`]: PathFinisher::take_output
    pub fn write_output<W: std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.with_output(|ended| w.write_all(ended))
    }

    /// Hand the lines of ended steps to `f`, then forget them, keeping the buffer: a caller
    /// that copies them (into a Python `bytes`) pays no fresh pages per batch.
    pub fn with_output<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> R {
        let ended = if self.step_lines.is_empty() {
            self.out.len()
        } else {
            self.step_start
        };
        let got = f(self.out.get(..ended).unwrap_or_default());
        self.out.drain(..ended);
        keep_modest(&mut self.out);
        if !self.step_lines.is_empty() {
            for line in &mut self.step_lines {
                line.1 -= ended;
                line.2 -= ended;
            }
            self.step_start = 0;
        }
        got
    }

    /// The lines written so far and not taken (a step not ended yet included).
    pub fn output(&self) -> &[u8] {
        &self.out
    }
}

/// What an output buffer keeps between batches: a step's output is a few MB (8192 sightings
/// of ~450 B); a consumer that fell behind takes many batches at once, and the buffer that
/// grew for them is given back rather than held for the rest of the run.
pub const KEEP_BYTES: usize = 16 << 20;

/// Give back what `buf` grew beyond [`KEEP_BYTES`] once it holds less than that.
pub fn keep_modest(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_BYTES && buf.len() <= KEEP_BYTES {
        buf.shrink_to(KEEP_BYTES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::{dir, has};

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&a);
        r
    }

    /// web (172.17.0.2) pings 198.51.100.8 through MASQUERADE, and inet answers.
    fn lab(f: &mut PathFinisher, t0: u64, reply: bool) -> Vec<Obs> {
        let hops: [(&str, &str, u64, u8); 3] = [
            ("web", "eth0", 2, dir::TX),
            ("host", "eth0", 1, dir::TX),
            ("inet", "eth0", 3, dir::RX),
        ];
        let (web, public, server) = (
            v4([172, 17, 0, 2]),
            v4([203, 0, 113, 2]),
            v4([198, 51, 100, 8]),
        );
        let mut out = Vec::new();
        for (k, (node, iface, netns, d)) in hops.into_iter().enumerate() {
            let mut o = Obs {
                ts_ns: t0 + k as u64 * 10,
                hop: f.labels_mut().intern(node, iface),
                netns,
                dir: d,
                family: 4,
                proto: 1,
                has: has::ICMP,
                src: if k == 0 { web } else { public },
                dst: server,
                icmp_type: 8,
                icmp_id: 7,
                ..Obs::default()
            };
            if reply {
                (o.src, o.dst, o.icmp_type) = (server, o.src, 0);
                o.dir = if d == dir::TX { dir::RX } else { dir::TX };
            }
            out.push(o);
        }
        if reply {
            out.reverse();
            for (k, o) in out.iter_mut().enumerate() {
                o.ts_ns = t0 + k as u64 * 10;
            }
        }
        out
    }

    fn text(f: &mut PathFinisher) -> String {
        String::from_utf8(f.take_output()).expect("ascii")
    }

    #[test]
    fn keep_modest_keeps_a_normal_buffer_and_cuts_one_grown_past_keep_bytes() {
        let mut buf = Vec::with_capacity(KEEP_BYTES / 4);
        buf.extend_from_slice(b"x");
        keep_modest(&mut buf);
        assert_eq!(
            buf.capacity(),
            KEEP_BYTES / 4,
            "a normal buffer is kept as it is"
        );
        let mut buf = vec![0u8; 4 * KEEP_BYTES];
        keep_modest(&mut buf);
        assert!(buf.capacity() >= 4 * KEEP_BYTES, "a full buffer is not cut");
        buf.truncate(10);
        keep_modest(&mut buf);
        assert!(
            buf.capacity() <= KEEP_BYTES && buf.capacity() >= 10,
            "{}",
            buf.capacity()
        );
        assert_eq!(buf.len(), 10, "what it holds stays");
    }

    #[test]
    fn with_output_lends_what_ended_and_keeps_the_buffer() {
        let mut f = PathFinisher::new(FinishConfig::default());
        f.push_stats(1, 0, 0.5);
        let cap = f.out.capacity();
        assert!(cap > 0);
        let seen = f.with_output(|b| String::from_utf8(b.to_vec()).expect("ascii"));
        assert!(seen.starts_with("{\"type\": \"stats\""), "{seen}");
        assert!(f.output().is_empty());
        assert_eq!(f.out.capacity(), cap, "the buffer stays for the next batch");
        assert_eq!(f.with_output(<[u8]>::len), 0, "nothing twice");
    }

    #[test]
    fn text_format_writes_blocks_flows_and_the_stats_line_as_text_sink() {
        use crate::text_render::TextOptions;
        for (detail, gap) in [(0i8, "\n\n"), (-1, "\n")] {
            let cfg = FinishConfig {
                format: Format::Text(TextOptions {
                    detail,
                    ..TextOptions::default()
                }),
                ..FinishConfig::default()
            };
            let mut f = PathFinisher::new(cfg);
            let ping = lab(&mut f, 1_000, false);
            f.finish(1, &ping);
            f.end_step();
            f.close_flows();
            f.take_flows(0);
            f.push_stats(3, 0, 0.25);
            let out = text(&mut f);
            let head = "p1  icmp echo-request id 7 seq 0  172.17.0.2 → 198.51.100.8  incomplete  20 ns  flow f1";
            let block = if detail < 0 {
                format!("{head}  web/eth0 → host/eth0 → inet/eth0")
            } else {
                format!("{head}\n     web/eth0 tx\n   → host/eth0 tx  +10 ns\n   → inet/eth0 rx  +10 ns")
            };
            let flow =
                "f1  icmp  172.17.0.2 → 198.51.100.8  reply 198.51.100.8 → 203.0.113.2  paths p1\n";
            let stats = "stats: 3 observations, 1 paths, 0 lost events, 0.250 s\n";
            assert_eq!(out, format!("{block}{gap}{flow}{stats}"));
        }
    }

    #[test]
    fn a_step_writes_in_path_order_what_it_judged_in_finishing_order() {
        let mut f = PathFinisher::new(FinishConfig::default());
        let ping = lab(&mut f, 1_000, false);
        let pong = lab(&mut f, 2_000, true);
        // inet sends from 198.51.100.8: the ping is delivered (learned within the window).
        assert!(f.owners().claim(4, &pong[0].src, 3, 2_000));
        f.finish(2, &pong);
        f.finish(1, &ping);
        assert_eq!(text(&mut f), "", "nothing before the step ends");
        f.end_step();
        f.close_flows();
        f.take_flows(0);
        f.push_stats(6, 0, 0.25);
        let out = text(&mut f);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        // The pong finished first: it opened the flow, the ping (its reverse) joined it.
        // Nothing taught where 172.17.0.2 lives: the pong is incomplete.
        assert!(lines[0].starts_with(r#"{"type": "path", "id": "p1", "flow": "f1", "proto": "icmp", "verdict": "delivered""#), "{out}");
        assert!(lines[1].starts_with(r#"{"type": "path", "id": "p2", "flow": "f1", "proto": "icmp", "verdict": "incomplete""#), "{out}");
        assert!(lines[2].starts_with(r#"{"type": "flow", "id": "f1", "proto": "icmp", "original": {"src": "198.51.100.8""#), "{out}");
        assert!(lines[2].ends_with(r#""paths": ["p2", "p1"]}"#), "{out}");
        assert_eq!(
            lines[3],
            r#"{"type": "stats", "observations": 6, "paths": 2, "lost_events": 0, "elapsed_s": 0.25}"#
        );
        assert_eq!(f.paths(), 2);
    }

    #[test]
    fn a_step_at_once_writes_what_path_by_path_writes() {
        let run = |at_once: bool, marked: [bool; 3]| {
            let mut f = PathFinisher::new(FinishConfig::default());
            let ping = lab(&mut f, 1_000, false);
            let pong = lab(&mut f, 2_000, true);
            f.owners().claim(4, &pong[0].src, 3, 2_000);
            // Finished pong (3), ping (1), ping again (2): written 1, 2, 3.
            let obs: Vec<Obs> = [&pong[..], &ping[..], &ping[..]].concat();
            let paths: Vec<FinishedPath> = [(3, 0), (1, 3), (2, 6)]
                .iter()
                .zip(marked)
                .map(|(&(num, start), marked)| FinishedPath {
                    num,
                    step: 1,
                    start,
                    end: start + 3,
                    marked,
                })
                .collect();
            if at_once {
                f.finish_step(&paths, &obs, false);
            } else {
                for p in &paths {
                    f.finish_shown(p.num, &obs[p.start..p.end], p.marked);
                }
                f.end_step();
            }
            f.close_flows();
            f.take_flows(0);
            f.push_stats(9, 0, 0.5);
            text(&mut f)
        };
        for marked in [[true; 3], [true, false, true], [false; 3]] {
            assert_eq!(run(true, marked), run(false, marked));
        }
        let all = run(true, [true; 3]);
        let ids: Vec<_> = all.lines().filter_map(|l| l.split('"').nth(7)).collect();
        assert_eq!(ids, ["p1", "p2", "p3", "f1", "paths"]); // the stats line's 4th key
    }

    #[test]
    fn an_address_learned_after_the_window_does_not_count() {
        let cfg = FinishConfig {
            window_ns: 100,
            ..FinishConfig::default()
        };
        let mut f = PathFinisher::new(cfg);
        let ping = lab(&mut f, 1_000, false);
        let last = ping[2];
        f.owners().claim(4, &last.dst, last.netns, last.ts_ns + 101);
        f.finish(1, &ping);
        f.owners().claim(4, &last.dst, last.netns, last.ts_ns + 100);
        f.finish(2, &ping);
        f.end_step();
        let out = text(&mut f);
        let verdicts: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split("\"verdict\": \"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(verdicts, ["incomplete", "delivered"]);
        f.finish(3, &[]);
        f.end_step();
        assert_eq!(text(&mut f), "", "an empty path writes nothing");
    }

    #[test]
    fn output_is_handed_over_by_whole_steps() {
        let mut f = PathFinisher::new(FinishConfig::default());
        let ping = lab(&mut f, 1_000, false);
        let pong = lab(&mut f, 2_000, true);
        let id = |l: &str| l.split('"').nth(7).map(str::to_owned);
        // Out of order, with nothing taken yet (the reorder keeps what came before).
        f.finish(3, &ping);
        f.end_step();
        f.finish(5, &pong);
        f.finish(4, &ping);
        f.end_step();
        f.finish(6, &ping); // its step has not ended
        let mut w = Vec::new();
        f.write_output(&mut w).expect("a Vec takes it");
        let written = String::from_utf8(w).expect("ascii");
        let ids: Vec<_> = written.lines().filter_map(id).collect();
        assert_eq!(ids, ["p3", "p4", "p5"]);
        assert_eq!(text(&mut f), "", "the open step stays");
        f.finish(2, &pong);
        f.end_step();
        let rest = text(&mut f);
        let ids: Vec<_> = rest.lines().filter_map(id).collect();
        assert_eq!(ids, ["p2", "p6"]);
    }
}
