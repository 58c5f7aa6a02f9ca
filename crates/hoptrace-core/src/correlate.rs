//! The join: which sightings are one packet's path, and in which order paths
//! finish. The rules of tracer/correlate.py's `Correlator`, which stays the
//! reference (tests/unit/test_core_join.py compares the two):
//!
//! * sightings are taken in chunks of [`CHUNK_ROWS`] of a batch, each chunk in
//!   time order (equal times in arrival order);
//! * a sighting continues an open path with its NAT-invariant fingerprint
//!   ([`keys::fingerprint`]): the one with its skb address, else the oldest one
//!   not yet seen at its hop ([`keys::hop_signature`]), and only if its time is
//!   within `window_ns` of that path's latest sighting; a different known skb is
//!   another packet. Otherwise it opens a path, numbered then (1, 2, ...);
//!   beyond [`MAX_SAME_FP`] open paths with one fingerprint the oldest gets no
//!   more sightings;
//! * after each chunk, paths idle since before `clock - window_ns` finish (the
//!   clock is the latest time seen, or a source's `now_ns`), in the order they
//!   went idle: (time of the last sighting, number); then, if more than
//!   `max_open_rows` sightings are open, the longest idle finish until that many
//!   are left. `advance` and `flush` finish the same way.
//!
//! For sightings that come in time order (and ticks no later than the next
//! sighting), the paths and the order they finish do not depend on batching. A
//! sighting later than the window, or one that arrives after its path
//! finished, starts a new path, as in the Python.

mod finished;
mod idle;
pub mod keys;
mod open;
#[cfg(test)]
mod tests;

pub use finished::{Finished, FinishedPath};

use crate::obs::Obs;
use open::{Key, OpenPaths};

/// How late a sighting may be, and how long a path stays open without one (ns).
pub const DEFAULT_WINDOW_NS: u64 = 500_000_000;
/// Beyond this many sightings in open paths, the longest idle finish early.
pub const DEFAULT_MAX_OPEN_ROWS: usize = 300_000;
/// Rows per step: expiry runs between chunks, so a huge batch stays bounded.
pub const CHUNK_ROWS: usize = 16384;
/// Open paths sharing one fingerprint (identical packets in flight).
pub const MAX_SAME_FP: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct JoinConfig {
    pub window_ns: u64,
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
            max_open_rows: DEFAULT_MAX_OPEN_ROWS,
            chunk_rows: CHUNK_ROWS,
            max_same_fp: MAX_SAME_FP,
            keep_obs: false,
        }
    }
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
}

impl Joiner {
    pub fn new(cfg: JoinConfig) -> Joiner {
        Joiner {
            cfg,
            ..Joiner::default()
        }
    }

    /// Feed a batch (in arrival order); paths that finish go to `out`.
    pub fn feed(&mut self, rows: &[Obs], now_ns: Option<u64>, out: &mut Finished) {
        for chunk in rows.chunks(self.cfg.chunk_rows.max(1)) {
            self.feed_chunk(chunk);
            self.expire(Some(self.cutoff()), None, None, out);
            if self.open.rows > self.cfg.max_open_rows {
                self.expire(None, Some(self.cfg.max_open_rows), None, out);
            }
        }
        if let Some(now) = now_ns {
            self.advance(now, out);
        }
    }

    /// The source's clock says `now_ns`: finish paths idle since before `now_ns - window_ns`.
    pub fn advance(&mut self, now_ns: u64, out: &mut Finished) {
        self.clock = self.clock.max(now_ns);
        self.expire(Some(self.cutoff()), None, None, out);
    }

    /// End of input: every open path finishes (with `max_paths`, only that many, the longest idle).
    pub fn flush(&mut self, max_paths: Option<usize>, out: &mut Finished) {
        self.expire(None, None, max_paths, out);
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

    fn feed_chunk(&mut self, rows: &[Obs]) {
        let keys = &mut self.keys;
        keys.clear();
        keys.extend(rows.iter().enumerate().map(|(i, o)| Key {
            ts: o.ts_ns,
            fp: keys::fingerprint(o),
            hop: keys::hop_signature(o),
            skb: keys::join_skb(o),
            i: i as u32,
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
            order.sort_unstable();
        }
        self.clock = self.clock.max(keys.iter().map(|k| k.ts).max().unwrap_or(0));
        let (window, keep_obs) = (self.cfg.window_ns, self.cfg.keep_obs);
        let in_time_order = order.iter().map(|&o| o as u32 as usize);
        for k in in_time_order
            .filter_map(|i| keys.get(i))
            .chain(keys.iter().filter(|_| order.is_empty()))
        {
            let g = self.fed + u64::from(k.i);
            let obs = rows.get(k.i as usize).filter(|_| keep_obs);
            match self.open.candidate(k, window) {
                Some(slot) => self.open.join(slot, k, g, obs),
                None => {
                    self.paths += 1;
                    self.open.start(self.paths, k, g, obs, self.cfg.max_same_fp);
                }
            }
        }
        self.fed += rows.len() as u64;
    }

    /// Finish paths idle since before `cutoff` (all when None), in idle order, until
    /// `keep_rows` sightings are left open, at most `max_paths` of them: one step.
    fn expire(
        &mut self,
        cutoff: Option<u64>,
        keep_rows: Option<usize>,
        max_paths: Option<usize>,
        out: &mut Finished,
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
            self.open.finish_idlest(self.steps, out);
            rows += size;
            taken += 1;
        }
        self.open.end_step();
    }
}
