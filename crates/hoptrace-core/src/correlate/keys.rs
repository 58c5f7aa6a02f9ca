//! What the join compares: a sighting's NAT-invariant fingerprint and its hop
//! signature, bit for bit the values tests/reference/correlate.py's `fingerprint` and
//! `_hop_signature` compute with numpy (same fields, same mixing), so that even
//! a 64-bit collision joins the same sightings in both.

use crate::obs::{dir, Obs};
use crate::view;
use std::hash::{BuildHasher, Hasher};

const M1: u64 = 0x9E37_79B9_7F4A_7C15;
const M2: u64 = 0xBF58_476D_1CE4_E5B9;

#[inline]
fn mix(h: u64, col: u64) -> u64 {
    let h = (h ^ col).wrapping_mul(M1);
    h ^ (h >> 31)
}

/// An address column as numpy's `view("<u8")` sees it: two little-endian words.
#[inline]
fn words(a: &[u8; 16]) -> (u64, u64) {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&a[..8]);
    hi.copy_from_slice(&a[8..]);
    (u64::from_le_bytes(lo), u64::from_le_bytes(hi))
}

/// A 64-bit hash of the fields NAT and routing leave alone (tests/reference/correlate.py `fingerprint`):
/// protocol, IP ID, flow label, TCP seq/ack/flags, length, ICMP type/code/seq,
/// fragment, payload digest; for non-IP frames also the addresses.
#[inline]
pub fn fingerprint(o: &Obs) -> u64 {
    let mut h = o.digest.wrapping_mul(M2);
    for col in [
        u64::from(o.family),
        u64::from(o.proto),
        u64::from(o.ethertype),
        u64::from(o.has),
        u64::from(o.ip_id),
        u64::from(o.flow_label),
        u64::from(o.tcp_flags),
        u64::from(o.tcp_seq),
        u64::from(o.tcp_ack),
        u64::from(o.icmp_type),
        u64::from(o.icmp_code),
        u64::from(o.icmp_seq),
        u64::from(o.frag),
        u64::from(o.length),
    ] {
        h = mix(h, col);
    }
    if o.family == 0 {
        // Not IP (ARP, ...): nothing rewrites these addresses, and ARP has no other identity.
        let (s0, s1) = words(&o.src);
        let (d0, d1) = words(&o.dst);
        for w in [s0, s1, d0, d1] {
            h = mix(h, w);
        }
    }
    h
}

/// Where and in which direction (`_hop_signature`): one packet passes each
/// (netns, hop, ifindex, dir) once. With no direction, the header as seen there
/// (addresses, ports, TTL) tells apart the two sightings of a packet that went
/// in and out of one interface.
#[inline]
pub fn hop_signature(o: &Obs) -> u64 {
    // numpy's int32 -> uint64 cast sign-extends, as `as` does.
    let mut h = o.netns.wrapping_mul(M2);
    for col in [
        u64::from(o.hop),
        i64::from(o.ifindex) as u64,
        u64::from(o.dir),
    ] {
        h = mix(h, col);
    }
    if o.dir == dir::UNKNOWN {
        let (s0, s1) = words(&o.src);
        let (d0, d1) = words(&o.dst);
        for w in [
            s0,
            s1,
            d0,
            d1,
            u64::from(o.sport),
            u64::from(o.dport),
            u64::from(o.ttl),
        ] {
            h = mix(h, w);
        }
    }
    h
}

/// The skb address the join may use: L2 broadcasts are cloned per bridge port
/// (a new skb each), so non-IP frames join by fingerprint only.
#[inline]
pub fn join_skb(o: &Obs) -> u64 {
    if o.family == 0 {
        0
    } else {
        o.skb
    }
}

/// The part of a header NAT may rewrite, as nat.rs's `infer_nat` compares it (tests/reference/correlate.py
/// `header`): addresses, ports, the ICMP echo id and an ICMP error's quoted header, each
/// as its text compares ([`view`]). Equal headers, equal values; a 64-bit hash, so
/// two different ones collide once in 2^64.
#[inline]
pub fn header(o: &Obs) -> u64 {
    let opt = |v: Option<u16>| v.map_or(1 << 32, u64::from);
    // Python shows an address of no known family as "": all such addresses compare equal.
    let ip = matches!(o.family, 4 | 6);
    let addr = |a: [u8; 16]| if ip { a } else { [0; 16] };
    let (s0, s1) = words(&addr(view::src(o)));
    let (d0, d1) = words(&addr(view::dst(o)));
    let mut h = mix(M2, s0);
    for w in [
        s1,
        d0,
        d1,
        opt(view::sport(o)),
        opt(view::dport(o)),
        opt(view::icmp_id(o)),
    ] {
        h = mix(h, w);
    }
    if let Some(q) = view::inner(o) {
        let (s0, s1) = words(&addr(q.src));
        let (d0, d1) = words(&addr(q.dst));
        let ports = u64::from(q.proto) << 32 | u64::from(q.sport) << 16 | u64::from(q.dport);
        for w in [1, s0, s1, d0, d1, ports] {
            h = mix(h, w);
        }
    }
    h
}

/// Link-local (169.254/16, fe80::/10) or multicast (224/4, ff00::/8): an address no NAT
/// rewrites, so a packet from or to one never changes its header between hops.
#[inline]
pub fn scoped_addr(family: u8, a: &[u8; 16]) -> bool {
    match family {
        4 => (a[0] == 169 && a[1] == 254) || a[0] & 0xF0 == 0xE0,
        6 => (a[0] == 0xFE && a[1] & 0xC0 == 0x80) || a[0] == 0xFF,
        _ => false,
    }
}

/// The sighting's source or destination is [`scoped_addr`].
#[inline]
pub fn scoped(o: &Obs) -> bool {
    scoped_addr(o.family, &o.src) || scoped_addr(o.family, &o.dst)
}

/// Hashes fingerprints for the open-path table: they are hashes already, but
/// of packet contents a capture controls, so they are folded with a per-process
/// random key before they pick a bucket.
#[derive(Clone)]
pub struct FpHashBuilder(u64);

impl Default for FpHashBuilder {
    fn default() -> Self {
        let k = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        FpHashBuilder(k | 1)
    }
}

impl BuildHasher for FpHashBuilder {
    type Hasher = FpHasher;
    fn build_hasher(&self) -> FpHasher {
        FpHasher { key: self.0, h: 0 }
    }
}

pub struct FpHasher {
    key: u64,
    h: u64,
}

impl Hasher for FpHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    #[inline]
    fn write_u64(&mut self, x: u64) {
        let p = u128::from(x ^ self.h ^ self.key)
            .wrapping_mul(u128::from(M1 ^ self.key.rotate_left(17)));
        self.h = (p as u64) ^ ((p >> 64) as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_and_routing_do_not_change_the_fingerprint() {
        let a = Obs {
            family: 4,
            proto: 1,
            ip_id: 7,
            src: [172, 17, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ttl: 64,
            icmp_id: 77,
            ..Obs::default()
        };
        let b = Obs {
            src: [203, 0, 113, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ttl: 63,
            icmp_id: 1024,
            sport: 5,
            ..a
        };
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&Obs { ip_id: 8, ..a }));
        // Not IP: the addresses are its identity.
        let l2 = Obs { family: 0, ..a };
        assert_ne!(fingerprint(&l2), fingerprint(&Obs { family: 0, ..b }));
    }

    #[test]
    fn headers_tell_hops_apart_only_without_a_direction() {
        let a = Obs {
            dir: dir::RX,
            ttl: 64,
            ..Obs::default()
        };
        assert_eq!(hop_signature(&a), hop_signature(&Obs { ttl: 63, ..a }));
        let u = Obs {
            dir: dir::UNKNOWN,
            ..a
        };
        assert_ne!(hop_signature(&u), hop_signature(&Obs { ttl: 63, ..u }));
        assert_ne!(hop_signature(&a), hop_signature(&Obs { hop: 1, ..a }));
    }
}
