//! The join: which sightings are one packet's path, and in which order paths
//! finish. The rules of tests/reference/correlate.py's `Correlator`, which stays the
//! reference (tests/unit/test_core_join.py compares the two):
//!
//! * sightings are taken in chunks of [`CHUNK_ROWS`] of a batch, each chunk in
//!   time order (equal times in arrival order);
//! * a sighting continues an open path with its NAT-invariant fingerprint
//!   ([`keys::fingerprint`]): the one with its skb address, else the oldest one,
//!   among those open to it; a different known skb is another packet. A path is
//!   open to a sighting when (open.rs `open_to`, docs/correlation.md):
//!   - its time is within `join_window_ns` of the path's latest sighting;
//!   - the path was not seen at its hop yet ([`keys::hop_signature`]);
//!   - a free ends an skb: after a drop (in path order: time, then arrival) only a
//!     clone's sightings join — frames that are not IP (followed by fingerprint
//!     across a bridge's clones) with another skb than the one freed;
//!   - its header ([`keys::header`]) is that of the sightings before and after it in
//!     path order, or changed where NAT happens: after a receive (or no direction), in
//!     one namespace, neither address link-local nor multicast ([`keys::scoped`]), in a
//!     namespace [`Joiner::set_nat_namespaces`] allows (any, unless set).
//!
//!   Otherwise it opens a path, numbered then (1, 2, ...);
//!   beyond [`MAX_SAME_FP`] open paths with one fingerprint the oldest gets no
//!   more sightings, counting only paths seen within `join_window_ns` before the new
//!   one (an idle path counts as little when expiry has not reached it yet as
//!   when it has: the join does not depend on when expiry runs);
//! * after each chunk, paths idle since before `clock - window_ns` finish (the
//!   clock is the latest time seen, or a source's `now_ns`), in the order they
//!   went idle: (time of the last sighting, number); then, if more than
//!   `max_open_rows` sightings are open, the longest idle finish until that many
//!   are left. `advance` and `flush` finish the same way.
//!
//! Whoever finishes the paths learns, as the join goes, what only the join
//! sees ([`JoinEvents`]): the first sighting of each path when it is an IP
//! packet leaving (tx, or no direction), which teaches where its source address
//! lives (`claim`); a claim taken back when a path's true first sighting turns
//! up late (`retract`); and the end of each expiry step, with the paths it
//! finished (`step_ended`). tests/reference/correlate.py does the same at the same
//! moments (`_own` while stepping through a chunk, the deletion from `owned`,
//! `_expire`), so a verdict judged at the end of a step reads the same owners.
//!
//! For sightings that come in time order (and ticks no later than the next
//! sighting), the paths and the order they finish do not depend on batching. A
//! sighting later than the join window, or one that arrives after its path
//! finished, starts a new path, as in the Python.

mod finished;
mod idle;
pub mod keys;
mod open;
#[cfg(test)]
mod tests;

pub use finished::{Finished, FinishedPath};

use crate::obs::{dir, Obs};
use open::{Claim, Key, NatScope, OpenPaths, Sight};
use std::collections::HashSet;

/// How long a path waits for late sightings before it finishes (ns): the expiry window.
pub const DEFAULT_WINDOW_NS: u64 = 500_000_000;
/// The join window (ns): the most packet time between two sightings of one packet. Hops of
/// a packet are µs apart (the lab's hop-to-hop p99 is 160 µs, docs/correlation.md); 50 ms
/// leaves room for a loaded machine and keeps identical packets sent later apart.
pub const DEFAULT_JOIN_WINDOW_NS: u64 = 50_000_000;
/// Beyond this many sightings in open paths, the longest idle finish early.
pub const DEFAULT_MAX_OPEN_ROWS: usize = 300_000;
/// Rows per step: expiry runs between chunks, so a huge batch stays bounded.
pub const CHUNK_ROWS: usize = 16384;
/// Open paths sharing one fingerprint (identical packets in flight).
pub const MAX_SAME_FP: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct JoinConfig {
    /// How long a path waits for late sightings (expiry).
    pub window_ns: u64,
    /// The join window: a sighting continues a path only this close to its latest sighting.
    pub join_window_ns: u64,
    pub max_open_rows: usize,
    pub chunk_rows: usize,
    pub max_same_fp: usize,
    /// Keep each sighting's `Obs` until its path finishes and hand it out in [`Finished::obs`].
    pub keep_obs: bool,
}

impl Default for JoinConfig {
    fn default() -> Self {
        JoinConfig {
            window_ns: DEFAULT_WINDOW_NS,
            join_window_ns: DEFAULT_JOIN_WINDOW_NS,
            max_open_rows: DEFAULT_MAX_OPEN_ROWS,
            chunk_rows: CHUNK_ROWS,
            max_same_fp: MAX_SAME_FP,
            keep_obs: false,
        }
    }
}

/// What the join tells whoever finishes its paths, when it happens (see the module doc
/// and finish.rs's protocol).
pub trait JoinEvents {
    /// A path opened with this sighting of an IP packet leaving `netns` from `src` at
    /// `ts_ns`. True when that taught something new: the join takes it back with
    /// [`JoinEvents::retract`] if the path's true first sighting turns up later.
    fn claim(&mut self, family: u8, src: &[u8; 16], netns: u64, ts_ns: u64) -> bool;
    /// A claim made at `first_ts` (which returned true) was wrong.
    fn retract(&mut self, family: u8, src: &[u8; 16], netns: u64, first_ts: u64);
    /// An expiry step ended: the paths it finished are the last ones in `out` (which
    /// holds every finished path not taken yet; taking them is the callee's choice).
    fn step_ended(&mut self, out: &mut Finished);
}

/// Nobody listens: paths pile up in the caller's [`Finished`].
pub struct NoEvents;

impl JoinEvents for NoEvents {
    fn claim(&mut self, _: u8, _: &[u8; 16], _: u64, _: u64) -> bool {
        false
    }
    fn retract(&mut self, _: u8, _: &[u8; 16], _: u64, _: u64) {}
    fn step_ended(&mut self, _: &mut Finished) {}
}

/// Groups sightings into packet paths. Pure: time comes from the sightings.
#[derive(Default)]
pub struct Joiner {
    cfg: JoinConfig,
    clock: u64,
    /// Paths numbered so far.
    paths: u64,
    /// Sightings fed so far: the next one's index in the stream.
    fed: u64,
    /// Expiry steps so far.
    steps: u64,
    open: OpenPaths,
    keys: Vec<Key>,
    /// A chunk's (ts, row) in time order, when it came out of order.
    order: Vec<u128>,
    /// Source hop index -> the node of its label (which namespace a file hop is in).
    hop_nodes: Vec<u32>,
    /// Source hop index -> (the caller's label, whether it is unnamed), when the caller
    /// added its hops with [`Joiner::add_hop_label`]: finished sightings carry the label.
    relabel: Option<Vec<(u32, bool)>>,
    /// Where NAT may change a header: None anywhere (replay), else these namespaces.
    nat_netns: Option<HashSet<u64>>,
}

impl Joiner {
    /// The join window is never longer than the wait (else whether a late sighting joins
    /// would depend on when expiry ran).
    pub fn new(cfg: JoinConfig) -> Joiner {
        let join_window_ns = cfg.join_window_ns.min(cfg.window_ns);
        Joiner {
            cfg: JoinConfig {
                join_window_ns,
                ..cfg
            },
            ..Joiner::default()
        }
    }

    /// Feed a batch (in arrival order); paths that finish go to `out`.
    pub fn feed(&mut self, rows: &[Obs], now_ns: Option<u64>, out: &mut Finished) {
        self.feed_with(rows, &[], now_ns, out, &mut NoEvents);
    }

    /// [`Joiner::feed`], telling `ev` what happens as it happens. `marks` (one per row, or
    /// none) mark sightings: a path with a marked sighting finishes marked (a path filter's
    /// "any hop matches").
    pub fn feed_with<E: JoinEvents>(
        &mut self,
        rows: &[Obs],
        marks: &[bool],
        now_ns: Option<u64>,
        out: &mut Finished,
        ev: &mut E,
    ) {
        let n = self.cfg.chunk_rows.max(1);
        for (c, chunk) in rows.chunks(n).enumerate() {
            let at = c * n;
            let marks = marks.get(at..at + chunk.len()).unwrap_or_default();
            self.feed_chunk(chunk, marks, ev);
            self.expire(Some(self.cutoff()), None, None, out, ev);
            if self.open.rows > self.cfg.max_open_rows {
                self.expire(None, Some(self.cfg.max_open_rows), None, out, ev);
            }
        }
        if let Some(now) = now_ns {
            self.advance_with(now, out, ev);
        }
    }

    /// The source's clock says `now_ns`: finish paths idle since before `now_ns - window_ns`.
    pub fn advance(&mut self, now_ns: u64, out: &mut Finished) {
        self.advance_with(now_ns, out, &mut NoEvents);
    }

    pub fn advance_with<E: JoinEvents>(&mut self, now_ns: u64, out: &mut Finished, ev: &mut E) {
        self.clock = self.clock.max(now_ns);
        self.expire(Some(self.cutoff()), None, None, out, ev);
    }

    /// End of input: every open path finishes (with `max_paths`, only that many, the longest idle).
    pub fn flush(&mut self, max_paths: Option<usize>, out: &mut Finished) {
        self.flush_with(max_paths, out, &mut NoEvents);
    }

    pub fn flush_with<E: JoinEvents>(
        &mut self,
        max_paths: Option<usize>,
        out: &mut Finished,
        ev: &mut E,
    ) {
        self.expire(None, None, max_paths, out, ev);
    }

    /// The next source hop (rows' `hop` index them in the order they are added) belongs to
    /// node `node` (a label's `node_id`): with the netns, the namespace a sighting is in.
    pub fn add_hop_node(&mut self, node: u32) {
        self.hop_nodes.push(node);
    }

    /// [`Joiner::add_hop_node`], and the label finished sightings of the hop carry in their
    /// `hop` (an index the join never reads), with whether it is unnamed
    /// ([`Finished::unnamed`]). A caller adds every hop this way or none.
    pub fn add_hop_label(&mut self, node: u32, label: u32, unnamed: bool) {
        self.hop_nodes.push(node);
        self.relabel
            .get_or_insert_with(Vec::new)
            .push((label, unnamed));
    }

    /// Source hop index -> node, all at once (a batch with a label table of its own); the
    /// sightings fed so far keep theirs.
    pub fn set_hop_nodes(&mut self, nodes: &[u32]) {
        self.hop_nodes.clear();
        self.hop_nodes.extend_from_slice(nodes);
    }

    /// Where a header may change between two sightings of a packet (NAT): `None`, in any
    /// namespace (replay: rules and conntrack are not known); else only in these network
    /// namespaces (live: those with NAT rules or conntrack entries; refreshed by the caller).
    pub fn set_nat_namespaces(&mut self, netns: Option<&[u64]>) {
        self.nat_netns = netns.map(|n| n.iter().copied().collect());
    }

    /// The latest time seen (a sighting's, or a source's `now_ns`): flows expire by it.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    pub fn open_paths(&self) -> usize {
        self.open.count()
    }

    pub fn open_rows(&self) -> usize {
        self.open.rows
    }

    /// Sightings fed so far.
    pub fn fed(&self) -> u64 {
        self.fed
    }

    fn cutoff(&self) -> u64 {
        // Nothing is idle since before time 0.
        self.clock.saturating_sub(self.cfg.window_ns)
    }

    fn feed_chunk<E: JoinEvents>(&mut self, rows: &[Obs], marks: &[bool], ev: &mut E) {
        let keys = &mut self.keys;
        let hop_nodes = &self.hop_nodes;
        keys.clear();
        keys.extend(rows.iter().enumerate().map(|(i, o)| Key {
            ts: o.ts_ns,
            fp: keys::fingerprint(o),
            hop: keys::hop_signature(o),
            skb: keys::join_skb(o),
            i: i as u32,
            marked: marks.get(i).copied().unwrap_or(false),
            family: o.family,
            at: Sight {
                hdr: keys::header(o),
                netns: o.netns,
                node: hop_nodes.get(o.hop as usize).copied().unwrap_or(u32::MAX),
                dir: match o.dir {
                    dir::RX | dir::TX | dir::DROP => o.dir,
                    _ => dir::UNKNOWN,
                },
                skb: o.skb,
                scoped: keys::scoped(o),
            },
        }));
        let order = &mut self.order;
        order.clear();
        if keys.windows(2).any(|w| w[1].ts < w[0].ts) {
            // Per-CPU rings and several taps deliver out of order: time order, equal
            // times in arrival order, as (ts, i) packed in one sort key.
            order.extend(
                keys.iter()
                    .map(|k| u128::from(k.ts) << 32 | u128::from(k.i)),
            );
            // Nearly in order (hops of a packet µs apart, rings a little behind): each key
            // moves a few places. A full sort when they move more than that.
            let budget = order.len().saturating_mul(NEAR_ORDER_MOVES);
            if !insertion_sort_within(order, budget) {
                order.sort_unstable();
            }
        }
        self.clock = self.clock.max(keys.iter().map(|k| k.ts).max().unwrap_or(0));
        let (join, keep_obs) = (self.cfg.join_window_ns, self.cfg.keep_obs);
        let scope = NatScope(self.nat_netns.as_ref());
        let in_time_order = order.iter().map(|&o| o as u32 as usize);
        for k in in_time_order
            .filter_map(|i| keys.get(i))
            .chain(keys.iter().filter(|_| order.is_empty()))
        {
            let g = self.fed + u64::from(k.i);
            let row = rows.get(k.i as usize);
            let obs = row.filter(|_| keep_obs);
            match self.open.candidate(k, join, scope) {
                Some(slot) => {
                    if let Some(first) = self.open.join(slot, k, g, obs) {
                        // Its true first sighting came late (another CPU's ring): what the
                        // forwarded copy taught was wrong; learn from the real one.
                        if let Some(c) = first.claim {
                            ev.retract(c.family, &c.src, c.netns, first.ts);
                        }
                        let claim = row.and_then(|o| claim(o, ev));
                        self.open.set_claim(slot, claim);
                    }
                }
                None => {
                    self.paths += 1;
                    let claim = row.and_then(|o| claim(o, ev));
                    let max_same_fp = self.cfg.max_same_fp;
                    self.open
                        .start(self.paths, k, g, obs, claim, max_same_fp, join);
                }
            }
        }
        self.fed += rows.len() as u64;
    }

    /// Finish paths idle since before `cutoff` (all when None), in idle order, until
    /// `keep_rows` sightings are left open, at most `max_paths` of them: one step.
    fn expire<E: JoinEvents>(
        &mut self,
        cutoff: Option<u64>,
        keep_rows: Option<usize>,
        max_paths: Option<usize>,
        out: &mut Finished,
        ev: &mut E,
    ) {
        self.steps += 1;
        let need_rows = keep_rows.map(|k| self.open.rows.saturating_sub(k));
        let (mut rows, mut taken) = (0usize, 0usize);
        while let Some((touched, _num, size)) = self.open.idlest() {
            if cutoff.is_some_and(|c| touched >= c)
                || need_rows.is_some_and(|n| rows >= n)
                || max_paths == Some(taken)
            {
                break;
            }
            self.open
                .finish_idlest(self.steps, self.relabel.as_deref(), out);
            rows += size;
            taken += 1;
        }
        self.open.end_step();
        ev.step_ended(out);
    }
}

/// Moves per key an insertion sort may spend on a chunk before a full sort takes over.
const NEAR_ORDER_MOVES: usize = 16;

/// Sort `v` by insertion, unless that takes more than `budget` moves: false then (`v` is
/// left partly sorted). Linear on nearly sorted keys, where a general sort is not.
fn insertion_sort_within(v: &mut [u128], mut budget: usize) -> bool {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && v[j - 1] > v[j] {
            if budget == 0 {
                return false;
            }
            budget -= 1;
            v.swap(j - 1, j);
            j -= 1;
        }
    }
    true
}

/// What a path's first sighting taught: its source address lives where it was seen
/// leaving (tests/reference/correlate.py `_claim`, for IP packets seen on tx or with no direction).
fn claim<E: JoinEvents>(o: &Obs, ev: &mut E) -> Option<Claim> {
    if o.family == 0 || !(o.dir == dir::TX || o.dir == dir::UNKNOWN) {
        return None;
    }
    ev.claim(o.family, &o.src, o.netns, o.ts_ns)
        .then_some(Claim {
            family: o.family,
            src: o.src,
            netns: o.netns,
        })
}
