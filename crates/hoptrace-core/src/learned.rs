//! What traffic taught, across paths: which namespace sends from an address
//! ([`Owners`]), and which tx hops lead to another traced hop ([`Links`]). A
//! verdict reads both (tests/reference/correlate.py `owned`, `links`).

use std::collections::VecDeque;

use crate::hash::{FastMap, FastSet};

use crate::labels::Labels;
use crate::obs::Obs;
use crate::view::{self, Direction};

/// At most this many learned addresses: beyond it the one learned first is forgotten.
pub const MAX_OWNED: usize = 65536;

/// An address in a namespace. The same private address lives in many namespaces
/// (every Docker host, every lab on one machine uses 172.17.0.0/16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerKey {
    pub netns: u64,
    pub family: u8,
    pub addr: [u8; 16],
}

impl OwnerKey {
    pub fn new(family: u8, raw: &[u8; 16], netns: u64) -> OwnerKey {
        OwnerKey {
            netns,
            family,
            addr: view::norm_addr(family, raw),
        }
    }
}

/// Address -> the namespace that sends from it, and since when (the time of the first
/// sighting that taught it; 0 for what topology said).
#[derive(Debug, Default, Clone)]
pub struct Owners {
    map: FastMap<OwnerKey, (u64, u64)>, // key -> (since, insertion number)
    order: VecDeque<(OwnerKey, u64)>,   // insertion order, with stale entries skipped lazily
    inserted: u64,
}

impl Owners {
    pub fn new() -> Self {
        Self::default()
    }

    fn insert_new(&mut self, key: OwnerKey, since: u64) {
        self.inserted += 1;
        self.map.insert(key, (since, self.inserted));
        self.order.push_back((key, self.inserted));
        if self.order.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.order
                .retain(|(k, n)| map.get(k).is_some_and(|&(_, m)| m == *n));
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((k, n)) = self.order.pop_front() {
            if self.map.get(&k).is_some_and(|&(_, m)| m == n) {
                self.map.remove(&k);
                return;
            }
        }
    }

    /// A packet from `raw` was first seen leaving `netns` at `ts_ns`: it lives there
    /// (the earliest such time is kept). True when the address was new, so that a path
    /// whose real first sighting arrives late can take it back ([`Owners::retract`]).
    /// The join calls this for a path's first sighting when it is a tx (or of unknown
    /// direction) of an IP packet.
    pub fn claim(&mut self, family: u8, raw: &[u8; 16], netns: u64, ts_ns: u64) -> bool {
        let key = OwnerKey::new(family, raw, netns);
        match self.map.get_mut(&key) {
            Some((since, _)) => {
                if ts_ns < *since {
                    *since = ts_ns;
                }
                false
            }
            None => {
                if self.map.len() >= MAX_OWNED {
                    self.evict_oldest();
                }
                self.insert_new(key, ts_ns);
                true
            }
        }
    }

    /// A path that claimed `raw` in `netns` at `first_ts` learned its first sighting was
    /// another: the claim goes, unless an earlier sighting confirmed it since.
    pub fn retract(&mut self, family: u8, raw: &[u8; 16], netns: u64, first_ts: u64) {
        let key = OwnerKey::new(family, raw, netns);
        if self
            .map
            .get(&key)
            .is_some_and(|&(since, _)| since == first_ts)
        {
            self.map.remove(&key);
        }
    }

    /// `raw` belongs to `netns` (from topology): its packets arriving there are delivered.
    pub fn learn(&mut self, family: u8, raw: &[u8; 16], netns: u64) {
        let key = OwnerKey::new(family, raw, netns);
        match self.map.get_mut(&key) {
            Some((since, _)) => *since = 0,
            None => self.insert_new(key, 0),
        }
    }

    /// Since when `raw` is known to live in `netns`, if it is.
    pub fn since(&self, family: u8, raw: &[u8; 16], netns: u64) -> Option<u64> {
        self.map
            .get(&OwnerKey::new(family, raw, netns))
            .map(|&(since, _)| since)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// tx hops (netns, node, interface) whose packets were seen arriving at a traced hop in
/// another namespace (a veth pair, a link): a packet that last left through one of those
/// and was never seen arriving is incomplete, not gone.
#[derive(Debug, Default, Clone)]
pub struct Links {
    set: FastSet<(u64, u32, u32)>,
}

impl Links {
    pub fn new() -> Self {
        Self::default()
    }

    /// Learn from one path's consecutive hops.
    pub fn learn(&mut self, hops: &[Obs], labels: &Labels) {
        for pair in hops.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if !matches!(view::direction(a), Some(Direction::Tx) | None)
                || !matches!(view::direction(b), Some(Direction::Rx) | None)
            {
                continue;
            }
            let (la, lb) = (labels.get(a.hop), labels.get(b.hop));
            if a.netns != b.netns || la.node_id != lb.node_id {
                self.set.insert((a.netns, la.node_id, la.iface_id));
            }
        }
    }

    /// `o` left through a link (see the type).
    pub fn contains(&self, o: &Obs, labels: &Labels) -> bool {
        let l = labels.get(o.hop);
        self.set.contains(&(o.netns, l.node_id, l.iface_id))
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::dir;
    use proptest::prelude::*;

    fn v4(last: u8) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[172, 17, 0, last]);
        a
    }

    #[test]
    fn earliest_claim_wins_and_only_a_new_one_says_so() {
        let mut o = Owners::new();
        assert!(o.claim(4, &v4(2), 7, 100));
        assert!(!o.claim(4, &v4(2), 7, 50));
        assert!(!o.claim(4, &v4(2), 7, 80));
        assert_eq!(o.since(4, &v4(2), 7), Some(50));
        assert_eq!(o.since(4, &v4(2), 8), None, "another namespace");
        o.retract(4, &v4(2), 7, 100); // confirmed earlier since: stays
        assert_eq!(o.since(4, &v4(2), 7), Some(50));
        o.retract(4, &v4(2), 7, 50);
        assert_eq!(o.since(4, &v4(2), 7), None);
        o.learn(4, &v4(3), 7);
        assert_eq!(o.since(4, &v4(3), 7), Some(0));
        // IPv4: bytes after the address do not make another key.
        let mut junk = v4(3);
        junk[9] = 1;
        assert_eq!(o.since(4, &junk, 7), Some(0));
    }

    #[test]
    fn the_first_learned_is_forgotten_first() {
        let mut o = Owners::new();
        let key = |i: usize| {
            let mut a = [0u8; 16];
            a[..8].copy_from_slice(&(i as u64).to_le_bytes());
            a
        };
        for i in 0..MAX_OWNED {
            assert!(o.claim(6, &key(i), 1, i as u64 + 1));
        }
        o.retract(6, &key(1), 1, 2); // gone: the eviction order skips it later
        assert!(!o.claim(6, &key(0), 1, 0)); // an update keeps its place in the order
        assert!(o.claim(6, &key(MAX_OWNED), 1, 9)); // room left by the retraction
        assert_eq!(o.since(6, &key(0), 1), Some(0));
        assert!(o.claim(6, &key(MAX_OWNED + 1), 1, 9));
        assert_eq!(o.since(6, &key(0), 1), None);
        assert_eq!(o.since(6, &key(2), 1), Some(3));
        assert!(o.claim(6, &key(MAX_OWNED + 2), 1, 9));
        assert_eq!(o.since(6, &key(2), 1), None);
        assert_eq!(o.since(6, &key(3), 1), Some(4));
        assert_eq!(o.len(), MAX_OWNED);
    }

    proptest! {
        /// Against a model: a map plus its insertion order, as Python's dict keeps it.
        #[test]
        fn owners_as_an_ordered_dict(ops in proptest::collection::vec((0u8..3, 0u8..6, 0u64..5), 0..200)) {
            let mut o = Owners::new();
            let mut model: Vec<(u8, u64)> = Vec::new();
            for (op, a, ts) in ops {
                let raw = v4(a);
                match op {
                    0 => {
                        let new = o.claim(4, &raw, 1, ts);
                        let pos = model.iter().position(|(k, _)| *k == a);
                        prop_assert_eq!(new, pos.is_none());
                        match pos {
                            Some(p) => model[p].1 = model[p].1.min(ts),
                            None => model.push((a, ts)),
                        }
                    }
                    1 => {
                        o.retract(4, &raw, 1, ts);
                        model.retain(|&(k, s)| !(k == a && s == ts));
                    }
                    _ => {
                        o.learn(4, &raw, 1);
                        match model.iter().position(|(k, _)| *k == a) {
                            Some(p) => model[p].1 = 0,
                            None => model.push((a, 0)),
                        }
                    }
                }
                for k in 0..6u8 {
                    let want = model.iter().find(|(m, _)| *m == k).map(|(_, s)| *s);
                    prop_assert_eq!(o.since(4, &v4(k), 1), want);
                }
            }
        }
    }

    #[test]
    fn links_from_tx_to_rx_across_namespaces() {
        let mut labels = Labels::new();
        let hop = |labels: &mut Labels, at: &str, netns: u64, d: u8| {
            let (n, i) = at.split_once('/').expect("node/iface");
            Obs {
                hop: labels.intern(n, i),
                netns,
                dir: d,
                ..Obs::default()
            }
        };
        let a = hop(&mut labels, "host/veth1", 1, dir::TX);
        let b = hop(&mut labels, "web/eth0", 2, dir::RX);
        let c = hop(&mut labels, "web/eth0", 2, dir::TX);
        let d = hop(&mut labels, "host/eth0", 1, dir::UNKNOWN);
        let mut links = Links::new();
        links.learn(&[b, c], &labels); // same namespace: no link
        links.learn(&[b, a], &labels); // rx then tx: no link
        assert!(links.is_empty());
        links.learn(&[a, b, c, d], &labels);
        assert!(links.contains(&a, &labels));
        assert!(links.contains(&c, &labels));
        assert!(!links.contains(&d, &labels));
        assert_eq!(links.len(), 2);
    }
}
