//! The open paths: a slab of them, the candidates per fingerprint (in the
//! order they opened), and the idle queue (last sighting time, number) that
//! finishing reads. No allocation per sighting: a finished path's vectors are
//! kept for the next one.

use super::finished::Finished;
use super::keys::FpHashBuilder;
use crate::obs::Obs;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// A sighting as the join sees it.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    pub ts: u64,
    pub fp: u64,
    pub hop: u64,
    pub skb: u64,
    /// Row index in its chunk.
    pub i: u32,
}

/// One sighting of an open path: its time, its index in the stream, its hop signature.
#[derive(Clone, Copy)]
struct Ref {
    ts: u64,
    g: u64,
    hop: u64,
}

#[derive(Default)]
struct Path {
    num: u64,
    fp: u64,
    last_ts: u64,
    skb: u64,
    refs: Vec<Ref>,
    obs: Vec<Obs>,
}

impl Path {
    /// May the sighting `k` continue this path (hop, window; the skb rule is the caller's)?
    #[inline]
    fn open_to(&self, k: &Key, window: u64) -> bool {
        self.last_ts.abs_diff(k.ts) <= window && !self.refs.iter().any(|r| r.hop == k.hop)
    }
}

/// Open paths sharing one fingerprint, oldest first.
enum Cands {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Default)]
pub struct OpenPaths {
    slab: Vec<Path>,
    free: Vec<u32>,
    by_fp: HashMap<u64, Cands, FpHashBuilder>,
    /// (last sighting time when filed, number, slot): one entry per open path,
    /// re-filed lazily when the path was seen again since.
    idle: BinaryHeap<Reverse<(u64, u64, u32)>>,
    /// Sightings in open paths.
    pub rows: usize,
    perm: Vec<u32>,
}

impl OpenPaths {
    pub fn count(&self) -> usize {
        self.idle.len()
    }

    fn path(&self, slot: u32) -> Option<&Path> {
        self.slab.get(slot as usize)
    }

    /// The open path sighting `k` continues, among those with its fingerprint:
    /// the one with its skb, else the oldest one not yet seen at its hop, within the window.
    #[inline]
    pub fn candidate(&self, k: &Key, window: u64) -> Option<u32> {
        let fits = |c: u32| self.path(c).filter(|p| p.open_to(k, window));
        match self.by_fp.get(&k.fp)? {
            Cands::One(c) => {
                let p = fits(*c)?;
                (k.skb == 0 || p.skb == 0 || p.skb == k.skb).then_some(*c)
            }
            Cands::Many(cs) => {
                let mut fallback = None;
                for &c in cs {
                    let Some(p) = fits(c) else { continue };
                    if k.skb != 0 && p.skb != 0 {
                        if p.skb == k.skb {
                            return Some(c);
                        }
                    } else if fallback.is_none() {
                        fallback = Some(c);
                    }
                }
                fallback
            }
        }
    }

    /// A new path, number `num`, opened by sighting `k` (stream index `g`).
    pub fn start(&mut self, num: u64, k: &Key, g: u64, obs: Option<&Obs>, max_same_fp: usize) {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slab.push(Path::default());
                (self.slab.len() - 1) as u32
            }
        };
        if let Some(p) = self.slab.get_mut(slot as usize) {
            p.num = num;
            p.fp = k.fp;
            p.last_ts = k.ts;
            p.skb = k.skb;
            p.refs.push(Ref {
                ts: k.ts,
                g,
                hop: k.hop,
            });
            p.obs.extend(obs.copied());
        }
        self.rows += 1;
        self.idle.push(Reverse((k.ts, num, slot)));
        match self.by_fp.get_mut(&k.fp) {
            None => {
                self.by_fp.insert(k.fp, Cands::One(slot));
            }
            Some(c) => {
                if let Cands::One(first) = *c {
                    *c = Cands::Many(vec![first]);
                }
                if let Cands::Many(cs) = c {
                    cs.push(slot);
                    if cs.len() > max_same_fp {
                        // A flood of identical packets: the oldest gets no more hops.
                        cs.remove(0);
                    }
                }
            }
        }
    }

    /// Sighting `k` (stream index `g`) continues the path in `slot`.
    #[inline]
    pub fn join(&mut self, slot: u32, k: &Key, g: u64, obs: Option<&Obs>) {
        if let Some(p) = self.slab.get_mut(slot as usize) {
            p.refs.push(Ref {
                ts: k.ts,
                g,
                hop: k.hop,
            });
            p.obs.extend(obs.copied());
            if k.skb != 0 {
                p.skb = k.skb;
            }
            if k.ts > p.last_ts {
                p.last_ts = k.ts;
            }
            self.rows += 1;
        }
    }

    /// The longest idle open path: (its last sighting time, its number, its size).
    pub fn idlest(&mut self) -> Option<(u64, u64, usize)> {
        loop {
            let Reverse((touched, num, slot)) = *self.idle.peek()?;
            let p = self.path(slot)?;
            if p.last_ts == touched {
                return Some((touched, num, p.refs.len()));
            }
            // Seen again since it was filed: re-file it.
            let last = p.last_ts;
            if let Some(mut top) = self.idle.peek_mut() {
                *top = Reverse((last, num, slot));
            }
        }
    }

    /// Finish the path `idlest` returned: its sightings go to `out` in path order
    /// (time, then arrival), as part of expiry step `step`.
    pub fn finish_idlest(&mut self, step: u64, out: &mut Finished) {
        let Some(Reverse((_, _, slot))) = self.idle.pop() else {
            return;
        };
        let Some(p) = self.slab.get_mut(slot as usize) else {
            return;
        };
        if let Some(c) = self.by_fp.get_mut(&p.fp) {
            match c {
                Cands::One(s) => {
                    if *s == slot {
                        self.by_fp.remove(&p.fp);
                    }
                }
                Cands::Many(cs) => {
                    if let Some(at) = cs.iter().position(|&s| s == slot) {
                        cs.remove(at);
                        if cs.is_empty() {
                            self.by_fp.remove(&p.fp);
                        }
                    }
                }
            }
        }
        self.rows -= p.refs.len();
        let refs = &p.refs;
        let start = out.sightings.len();
        if refs
            .windows(2)
            .all(|w| (w[0].ts, w[0].g) <= (w[1].ts, w[1].g))
        {
            out.sightings.extend(refs.iter().map(|r| r.g));
            out.obs.extend_from_slice(&p.obs);
        } else {
            // A late sighting (another CPU's ring): hops in time order, equal times in arrival order.
            self.perm.clear();
            self.perm.extend(0..refs.len() as u32);
            self.perm.sort_unstable_by_key(|&j| {
                refs.get(j as usize)
                    .map(|r| (r.ts, r.g))
                    .unwrap_or_default()
            });
            for &j in &self.perm {
                if let Some(r) = refs.get(j as usize) {
                    out.sightings.push(r.g);
                }
                if let Some(o) = p.obs.get(j as usize) {
                    out.obs.push(*o);
                }
            }
        }
        out.push_path(p.num, step, start);
        p.refs.clear();
        p.obs.clear();
        self.free.push(slot);
    }
}
