//! A fast keyed hasher for the core's small fixed-size keys (flow tuples, addresses,
//! links): every path looks up several, and std's SipHash costs more than rendering a
//! hop. Folded 64x64->128-bit multiplies, as foldhash and wyhash do, with a random
//! seed per table, so keys taken from a capture cannot be chosen to collide without
//! knowing it.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

const K0: u64 = 0x243f_6a88_85a3_08d3;
const K1: u64 = 0x1319_8a2e_0370_7344;

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The hasher; made by [`FastState`].
#[derive(Debug, Clone, Copy)]
pub struct FastHasher {
    acc: u64,
    seed: u64,
}

impl FastHasher {
    #[inline]
    fn mix(&mut self, w: u64) {
        self.acc = fold(self.acc ^ w, self.seed ^ K1);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.mix(u64::from(v));
    }

    #[inline]
    fn write_u16(&mut self, v: u16) {
        self.mix(u64::from(v));
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.mix(u64::from(v));
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }

    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.mix(v as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        fold(self.acc, self.seed ^ K0)
    }
}

/// Builds [`FastHasher`]s with a seed drawn once per table from std's random keys.
#[derive(Debug, Clone, Copy)]
pub struct FastState {
    seed: u64,
}

impl Default for FastState {
    fn default() -> Self {
        FastState {
            seed: RandomState::new().hash_one(0x5eed_u64) | 1,
        }
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;

    #[inline]
    fn build_hasher(&self) -> FastHasher {
        FastHasher {
            acc: self.seed,
            seed: self.seed,
        }
    }
}

pub type FastMap<K, V> = std::collections::HashMap<K, V, FastState>;
pub type FastSet<K> = std::collections::HashSet<K, FastState>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn distinct_small_keys_rarely_collide() {
        let s = FastState::default();
        let mut seen = HashSet::new();
        for fam in [4u8, 6] {
            for a in 0..200u16 {
                for p in 0..50u16 {
                    let mut addr = [0u8; 16];
                    addr[..2].copy_from_slice(&a.to_be_bytes());
                    seen.insert(s.hash_one((fam, addr, Some(p))));
                }
            }
        }
        assert_eq!(seen.len(), 2 * 200 * 50);
    }

    #[test]
    fn tables_get_their_own_seeds() {
        let (a, b) = (FastState::default(), FastState::default());
        assert_ne!(a.hash_one(42u64), b.hash_one(42u64));
        assert_eq!(a.hash_one(42u64), a.hash_one(42u64));
    }
}
