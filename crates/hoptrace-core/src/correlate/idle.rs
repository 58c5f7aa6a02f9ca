//! Open paths in the order they went idle: (time of the last sighting, number).
//!
//! A calendar queue: one entry per path in a bucket of ~1 ms of its last
//! sighting time, filed when the path opens and left there when it is seen
//! again (lazily re-filed). Expiry takes
//! the lowest bucket, brings its entries up to date, sorts it and hands them
//! out in order. Hops of one packet are µs apart and sightings come nearly in
//! time order, so a bucket is touched in sequence, not at random as a binary
//! heap of every open path would be.

use std::collections::BTreeMap;

const SHIFT: u32 = 20; // bucket width: 2^20 ns, ~1 ms
/// Emptied bucket vectors kept for reuse, at most (and none bigger than MAX_SPARE_CAP).
const MAX_SPARE: usize = 64;
const MAX_SPARE_CAP: usize = 1 << 14;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// The path's last sighting time when filed (brought up to date in the front bucket).
    pub touched: u64,
    pub num: u64,
    pub slot: u32,
}

#[derive(Default)]
pub struct IdleQueue {
    buckets: BTreeMap<u64, Vec<Entry>>,
    /// The lowest bucket, up to date and sorted, highest first (what `peek` reads from the end).
    front: Vec<Entry>,
    front_id: Option<u64>,
    spare: Vec<Vec<Entry>>,
}

impl IdleQueue {
    pub fn push(&mut self, e: Entry) {
        // (During a step, only entries re-filed to a later bucket than the front come here.)
        let id = e.touched >> SHIFT;
        // Sightings come nearly in time order: most go to the latest bucket, the map's
        // last, reached down its right edge without comparing keys.
        if let Some(mut last) = self.buckets.last_entry() {
            if *last.key() == id {
                last.get_mut().push(e);
                return;
            }
        }
        match self.buckets.get_mut(&id) {
            Some(b) => b.push(e),
            None => {
                let mut b = self.spare.pop().unwrap_or_default();
                b.push(e);
                self.buckets.insert(id, b);
            }
        }
    }

    /// The longest idle path; `last_of(slot)` is a path's last sighting time now.
    pub fn peek(&mut self, last_of: impl Fn(u32) -> u64) -> Option<Entry> {
        while self.front.is_empty() {
            let (id, mut b) = self.buckets.pop_first()?;
            // Seen again since filed: to its later bucket, or up to date here.
            let mut k = 0;
            while k < b.len() {
                let Some(e) = b.get_mut(k) else { break };
                let now = last_of(e.slot);
                if now != e.touched {
                    e.touched = now;
                    if now >> SHIFT != id {
                        let moved = b.swap_remove(k);
                        self.push(moved);
                        continue;
                    }
                }
                k += 1;
            }
            b.sort_unstable_by(|x, y| y.cmp(x));
            self.front_id = Some(id);
            if b.is_empty() {
                self.front_id = None;
                self.recycle(b);
            } else {
                let old = std::mem::replace(&mut self.front, b);
                self.recycle(old);
            }
        }
        self.front.last().copied()
    }

    /// Remove what `peek` returned.
    pub fn pop(&mut self) -> Option<Entry> {
        let e = self.front.pop();
        if self.front.is_empty() {
            self.front_id = None;
        }
        e
    }

    /// End of an expiry step: the front bucket's rest goes back among the buckets,
    /// where sightings of the next chunk can be filed beside it.
    pub fn end_step(&mut self) {
        if let Some(id) = self.front_id.take() {
            let rest = std::mem::take(&mut self.front);
            match self.buckets.get_mut(&id) {
                Some(b) => b.extend_from_slice(&rest),
                None => {
                    self.buckets.insert(id, rest);
                    return;
                }
            }
            self.recycle(rest);
        }
    }

    /// Keep an emptied bucket's vector for the next bucket, unless enough are kept (or it
    /// grew big in a burst): the pool must not grow a vector a step.
    fn recycle(&mut self, mut v: Vec<Entry>) {
        if v.capacity() > 0 && v.capacity() <= MAX_SPARE_CAP && self.spare.len() < MAX_SPARE {
            v.clear();
            self.spare.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A steady flood: paths open, are taken a step later, for many steps. The pool of
    /// spare bucket vectors stays small (it once grew by a vector a step: the soak's RSS
    /// rose 24 % in 10 minutes).
    #[test]
    fn spare_buckets_stay_bounded() {
        let mut q = IdleQueue::default();
        let mut last: Vec<u64> = Vec::new();
        let mut t = 0u64;
        for _step in 0..20_000 {
            for _ in 0..50 {
                t += 20_000; // 50 paths a ms
                let slot = last.len() as u32;
                last.push(t);
                q.push(Entry {
                    touched: t,
                    num: u64::from(slot) + 1,
                    slot,
                });
            }
            // expire what is older than 3 ms, some of a bucket left for the next step
            let cutoff = t.saturating_sub(3 << SHIFT);
            while let Some(e) = q.peek(|s| last.get(s as usize).copied().unwrap_or(0)) {
                if e.touched >= cutoff {
                    break;
                }
                q.pop();
            }
            q.end_step();
        }
        assert!(
            q.spare.len() <= MAX_SPARE,
            "{} spare vectors",
            q.spare.len()
        );
        assert!(q.buckets.len() < 16, "{} buckets", q.buckets.len());
    }

    proptest! {
        /// Against a sorted set: paths opened, seen again later (re-filed lazily), taken
        /// in steps up to a cutoff, some steps stopping early.
        #[test]
        fn hands_out_the_longest_idle_first(
            ops in prop::collection::vec((0u8..3, 0u64..(40 << SHIFT), 0usize..50), 1..300)
        ) {
            let mut q = IdleQueue::default();
            let mut last: Vec<u64> = Vec::new(); // per slot; u64::MAX when taken
            let mut model = std::collections::BTreeSet::new();
            for (op, t, k) in ops {
                match op {
                    0 => {
                        let slot = last.len() as u32;
                        last.push(t);
                        let num = u64::from(slot) + 1;
                        q.push(Entry { touched: t, num, slot });
                        model.insert((t, num, slot));
                    }
                    1 => {
                        // seen again: later only
                        let Some(slot) = (!last.is_empty()).then(|| k % last.len()) else { continue };
                        let was = last[slot];
                        if was == u64::MAX || t <= was {
                            continue;
                        }
                        last[slot] = t;
                        let num = slot as u64 + 1;
                        model.remove(&(was, num, slot as u32));
                        model.insert((t, num, slot as u32));
                    }
                    _ => {
                        // a step: up to cutoff t, at most k paths
                        let mut taken = 0;
                        while let Some(e) = q.peek(|s| last[s as usize]) {
                            if e.touched >= t || taken == k {
                                break;
                            }
                            let want = model.pop_first();
                            prop_assert_eq!(Some((e.touched, e.num, e.slot)), want);
                            prop_assert_eq!(q.pop(), Some(e));
                            last[e.slot as usize] = u64::MAX;
                            taken += 1;
                        }
                        if let Some(&(t0, _, _)) = model.first() {
                            prop_assert!(taken == k || t0 >= t);
                        }
                        q.end_step();
                    }
                }
            }
        }
    }
}
