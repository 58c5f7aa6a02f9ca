//! The open paths: a slab of them, the candidates per fingerprint (in the
//! order they opened), and the idle queue (last sighting time, number) that
//! finishing reads. No allocation per sighting: a finished path's vectors are
//! kept for the next one.

use super::finished::Finished;
use super::idle::{Entry, IdleQueue};
use super::keys::FpHashBuilder;
use crate::obs::dir;
use crate::obs::Obs;
use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, HashSet};

/// A sighting as the join sees it.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    pub ts: u64,
    pub fp: u64,
    pub hop: u64,
    pub skb: u64,
    /// Row index in its chunk.
    pub i: u32,
    /// The caller's mark on the sighting (see `Joiner::feed_with`): its path is marked.
    pub marked: bool,
    /// Its address family (a path's sightings share it: it is in the fingerprint).
    pub family: u8,
    pub at: Sight,
}

/// What the join's acceptance rules read of a sighting (see [`Sight::accepts`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Sight {
    /// [`super::keys::header`].
    pub hdr: u64,
    pub netns: u64,
    /// The node of its hop (labels' `node_id`): with `netns`, which namespace it is in.
    pub node: u32,
    /// `dir::RX`, `TX`, `DROP`, or `UNKNOWN` (any other value too, as Python reads it).
    pub dir: u8,
    /// The kernel skb address as seen (also for frames whose skb the join ignores).
    pub skb: u64,
    /// [`super::keys::scoped`]: link-local or multicast.
    pub scoped: bool,
}

/// Where a header may change between two sightings of one packet: `None` anywhere
/// (replay: no rules known), else only in these namespaces (live: NAT rules or conntrack).
#[derive(Clone, Copy)]
pub struct NatScope<'a>(pub Option<&'a HashSet<u64>>);

impl Sight {
    /// Both in one namespace, as nat.rs's `same_namespace` says (netns 0: the node decides).
    #[inline]
    fn same_namespace(&self, b: &Sight) -> bool {
        self.node == b.node && (self.netns == b.netns || self.netns == 0 || b.netns == 0)
    }

    /// May `self` and `b` (the sighting after it, in path order) be one packet's? The same
    /// header, or a rewrite where NAT can happen: after a receive (or no direction), before
    /// the next sighting in the same namespace (sent, freed, or received again by a bridge
    /// after br_netfilter's PREROUTING at its port), in a namespace that may NAT, neither
    /// link-local nor multicast. Frames that are not IP have no header to rewrite.
    #[inline]
    fn accepts(&self, b: &Sight, family: u8, scope: NatScope<'_>) -> bool {
        if family == 0 || self.hdr == b.hdr {
            return true;
        }
        let ns = if self.netns != 0 { self.netns } else { b.netns };
        self.same_namespace(b)
            && matches!(self.dir, dir::RX | dir::UNKNOWN)
            && !self.scoped
            && !b.scoped
            && scope.0.is_none_or(|s| s.contains(&ns))
    }

    /// After `self`, a drop (a free), may `later` still join? Only a clone's sighting: a frame
    /// that is not IP (the join follows those by fingerprint across the bridge's clones)
    /// with another skb than the one freed.
    #[inline]
    fn outlived_by(&self, later: &Sight, family: u8) -> bool {
        family == 0 && later.skb != self.skb
    }
}

/// One sighting of an open path: its time, its index in the stream, its hop signature.
#[derive(Clone, Copy)]
struct Ref {
    ts: u64,
    g: u64,
    hop: u64,
    at: Sight,
}

/// Where a path's first sighting said its source address lives, when that was new
/// (see `JoinEvents::claim`): taken back if an earlier sighting turns up.
#[derive(Clone, Copy, Debug)]
pub struct Claim {
    pub family: u8,
    pub src: [u8; 16],
    pub netns: u64,
}

/// A path's first sighting as it was before an earlier one turned up.
#[derive(Clone, Copy, Debug)]
pub struct First {
    pub ts: u64,
    pub claim: Option<Claim>,
}

#[derive(Default)]
struct Path {
    /// 0 once finished (numbers start at 1).
    num: u64,
    fp: u64,
    first_ts: u64,
    claim: Option<Claim>,
    /// A sighting of it was marked.
    marked: bool,
    last_ts: u64,
    skb: u64,
    refs: Vec<Ref>,
    obs: Vec<Obs>,
}

impl Path {
    /// May the sighting `k` continue this path (the skb rule is the caller's)? Within the
    /// join window of its latest sighting; not seen at `k`'s hop yet; nothing after a drop
    /// but a clone's sightings, in path order (time, then arrival: `k` arrived last); and
    /// the sightings before and after `k` accept it ([`Sight::accepts`]).
    #[inline]
    fn open_to(&self, k: &Key, join: u64, scope: NatScope<'_>) -> bool {
        if self.last_ts.abs_diff(k.ts) > join {
            return false;
        }
        let (mut pred, mut succ): (Option<&Ref>, Option<&Ref>) = (None, None);
        for r in &self.refs {
            if r.hop == k.hop {
                return false;
            }
            if r.ts <= k.ts {
                if r.at.dir == dir::DROP && !r.at.outlived_by(&k.at, k.family) {
                    return false;
                }
                if pred.is_none_or(|p| (r.ts, r.g) > (p.ts, p.g)) {
                    pred = Some(r);
                }
            } else {
                if k.at.dir == dir::DROP && !k.at.outlived_by(&r.at, k.family) {
                    return false;
                }
                if succ.is_none_or(|q| (r.ts, r.g) < (q.ts, q.g)) {
                    succ = Some(r);
                }
            }
        }
        pred.is_none_or(|a| a.at.accepts(&k.at, k.family, scope))
            && succ.is_none_or(|b| k.at.accepts(&b.at, k.family, scope))
    }
}

/// Open paths sharing one fingerprint, oldest first, as (slot, number). A path
/// that finished stays listed until its fingerprint is next seen or the table
/// is swept (so finishing a path does not look its fingerprint up again): an
/// entry counts only while its slot still holds that number, and against
/// `max_same_fp` only while seen within the join window of the path opening (as if
/// finished: expiry may not have reached it yet).
enum Cands {
    One((u32, u64)),
    Many(Vec<(u32, u64)>),
}

#[derive(Default)]
pub struct OpenPaths {
    slab: Vec<Path>,
    free: Vec<u32>,
    by_fp: HashMap<u64, Cands, FpHashBuilder>,
    idle: IdleQueue,
    count: usize,
    /// Sightings in open paths.
    pub rows: usize,
    perm: Vec<u32>,
}

impl OpenPaths {
    pub fn count(&self) -> usize {
        self.count
    }

    fn path(&self, slot: u32) -> Option<&Path> {
        self.slab.get(slot as usize)
    }

    /// The open path sighting `k` continues, among those with its fingerprint:
    /// the one with its skb, else the oldest one, among those open to it.
    #[inline]
    pub fn candidate(&self, k: &Key, join: u64, scope: NatScope<'_>) -> Option<u32> {
        let fits = |(c, num): (u32, u64)| {
            self.path(c)
                .filter(|p| p.num == num && p.open_to(k, join, scope))
        };
        match self.by_fp.get(&k.fp)? {
            Cands::One(c) => {
                let p = fits(*c)?;
                (k.skb == 0 || p.skb == 0 || p.skb == k.skb).then_some(c.0)
            }
            Cands::Many(cs) => {
                let mut fallback = None;
                for &c in cs {
                    let Some(p) = fits(c) else { continue };
                    let c = c.0;
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

    /// A new path, number `num`, opened by sighting `k` (stream index `g`), which claimed `claim`.
    /// It joins its fingerprint's candidates, the oldest of which drops out beyond
    /// `max_same_fp`; candidates idle longer than the join window before `k` leave first, whether
    /// or not they have finished yet (when expiry ran depends on batching, `k.ts` does not).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        num: u64,
        k: &Key,
        g: u64,
        obs: Option<&Obs>,
        claim: Option<Claim>,
        max_same_fp: usize,
        join: u64,
    ) {
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
            p.first_ts = k.ts;
            p.claim = claim;
            p.marked = k.marked;
            p.last_ts = k.ts;
            p.skb = k.skb;
            p.refs.push(Ref {
                ts: k.ts,
                g,
                hop: k.hop,
                at: k.at,
            });
            p.obs.extend(obs.copied());
        }
        self.rows += 1;
        self.count += 1;
        self.idle.push(Entry {
            touched: k.ts,
            num,
            slot,
        });
        let me = (slot, num);
        let slab = &self.slab;
        let live = |(s, n): (u32, u64)| {
            slab.get(s as usize)
                .is_some_and(|p| p.num == n && k.ts.saturating_sub(p.last_ts) <= join)
        };
        match self.by_fp.entry(k.fp) {
            Slot::Vacant(v) => {
                v.insert(Cands::One(me));
            }
            Slot::Occupied(mut o) => {
                let c = o.get_mut();
                if let Cands::One(first) = *c {
                    if !live(first) && max_same_fp > 0 {
                        // The one listed has finished (or is idle past the join window): this path
                        // alone, no list.
                        *c = Cands::One(me);
                        return;
                    }
                    *c = Cands::Many(vec![first]);
                }
                if let Cands::Many(cs) = c {
                    cs.retain(|&e| live(e));
                    cs.push(me);
                    if cs.len() > max_same_fp {
                        // A flood of identical packets: the oldest gets no more hops.
                        cs.remove(0);
                    }
                }
            }
        }
    }

    /// Sighting `k` (stream index `g`) continues the path in `slot`. When it is earlier
    /// than the path's first sighting, it becomes the first: what the first was is returned.
    #[inline]
    pub fn join(&mut self, slot: u32, k: &Key, g: u64, obs: Option<&Obs>) -> Option<First> {
        let mut was = None;
        if let Some(p) = self.slab.get_mut(slot as usize) {
            p.refs.push(Ref {
                ts: k.ts,
                g,
                hop: k.hop,
                at: k.at,
            });
            p.obs.extend(obs.copied());
            p.marked |= k.marked;
            if k.skb != 0 {
                p.skb = k.skb;
            }
            if k.ts > p.last_ts {
                p.last_ts = k.ts;
            } else if k.ts < p.first_ts {
                was = Some(First {
                    ts: p.first_ts,
                    claim: p.claim.take(),
                });
                p.first_ts = k.ts;
            }
            self.rows += 1;
        }
        was
    }

    /// What the path in `slot`'s (new) first sighting claimed.
    pub fn set_claim(&mut self, slot: u32, claim: Option<Claim>) {
        if let Some(p) = self.slab.get_mut(slot as usize) {
            p.claim = claim;
        }
    }

    /// The longest idle open path: (its last sighting time, its number, its size).
    pub fn idlest(&mut self) -> Option<(u64, u64, usize)> {
        let slab = &self.slab;
        let e = self
            .idle
            .peek(|slot| slab.get(slot as usize).map_or(0, |p| p.last_ts))?;
        let p = self.path(e.slot)?;
        Some((e.touched, e.num, p.refs.len()))
    }

    /// The end of an expiry step.
    pub fn end_step(&mut self) {
        self.idle.end_step();
        // Fingerprints of finished paths are dropped now and then, all at once.
        if self.by_fp.len() > 2 * self.count + 4096 {
            let slab = &self.slab;
            let live = |(s, n): &(u32, u64)| slab.get(*s as usize).is_some_and(|p| p.num == *n);
            self.by_fp.retain(|_, c| match c {
                Cands::One(e) => live(e),
                Cands::Many(cs) => {
                    cs.retain(live);
                    !cs.is_empty()
                }
            });
        }
    }

    /// Finish the path `idlest` returned: its sightings go to `out` in path order
    /// (time, then arrival), as part of expiry step `step`, with their `hop` rewritten by
    /// `relabel` when given (source hop -> (label, unnamed); an unknown hop gets
    /// `u32::MAX`, which is not unnamed).
    pub fn finish_idlest(
        &mut self,
        step: u64,
        relabel: Option<&[(u32, bool)]>,
        out: &mut Finished,
    ) {
        let Some(Entry { slot, .. }) = self.idle.pop() else {
            return;
        };
        let Some(p) = self.slab.get_mut(slot as usize) else {
            return;
        };
        self.rows -= p.refs.len();
        self.count -= 1;
        let refs = &p.refs;
        let start = out.sightings.len();
        if refs
            .windows(2)
            .all(|w| (w[0].ts, w[0].g) <= (w[1].ts, w[1].g))
        {
            out.sightings.extend(refs.iter().map(|r| r.g));
            match relabel {
                None => out.obs.extend_from_slice(&p.obs),
                Some(t) => {
                    let mut unnamed = false;
                    out.obs
                        .extend(p.obs.iter().map(|o| relabelled(o, t, &mut unnamed)));
                    out.unnamed |= unnamed;
                }
            }
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
                    match relabel {
                        None => out.obs.push(*o),
                        Some(t) => out.obs.push(relabelled(o, t, &mut out.unnamed)),
                    }
                }
            }
        }
        out.push_path(p.num, step, start, p.marked);
        p.num = 0;
        p.claim = None;
        p.refs.clear();
        p.obs.clear();
        self.free.push(slot);
    }
}

/// `o` with its source hop's label from `table`; `unnamed` set when that label is.
#[inline]
fn relabelled(o: &Obs, table: &[(u32, bool)], unnamed: &mut bool) -> Obs {
    let (hop, u) = table
        .get(o.hop as usize)
        .copied()
        .unwrap_or((u32::MAX, false));
    *unnamed |= u;
    Obs { hop, ..*o }
}
