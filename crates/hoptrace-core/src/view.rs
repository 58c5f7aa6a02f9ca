//! What an [`Obs`] row means, field by field, as Python's `Observation` reads it:
//! optional groups present only when their `has` bit is set, the direction as a
//! label (or none), addresses compared the way their text compares.

use crate::obs::{dir, has, Obs};

/// `direction` of an `Observation`: `None` when the capture did not say (and for any
/// value outside the `Dir` enum, which Python shows as null too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Rx,
    Tx,
    Drop,
}

#[inline]
pub fn direction(o: &Obs) -> Option<Direction> {
    match o.dir {
        dir::RX => Some(Direction::Rx),
        dir::TX => Some(Direction::Tx),
        dir::DROP => Some(Direction::Drop),
        _ => None,
    }
}

/// An address as its text compares: IPv4 keeps only its first 4 bytes (what follows
/// them never reaches the text), other families all 16.
#[inline]
pub fn norm_addr(family: u8, raw: &[u8; 16]) -> [u8; 16] {
    if family == 4 {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&raw[..4]);
        a
    } else {
        *raw
    }
}

#[inline]
pub fn src(o: &Obs) -> [u8; 16] {
    norm_addr(o.family, &o.src)
}

#[inline]
pub fn dst(o: &Obs) -> [u8; 16] {
    norm_addr(o.family, &o.dst)
}

#[inline]
pub fn sport(o: &Obs) -> Option<u16> {
    (o.has & has::L4_PORTS != 0).then_some(o.sport)
}

#[inline]
pub fn dport(o: &Obs) -> Option<u16> {
    (o.has & has::L4_PORTS != 0).then_some(o.dport)
}

#[inline]
pub fn icmp_type(o: &Obs) -> Option<u8> {
    (o.has & has::ICMP != 0).then_some(o.icmp_type)
}

#[inline]
pub fn icmp_id(o: &Obs) -> Option<u16> {
    (o.has & has::ICMP != 0).then_some(o.icmp_id)
}

/// The header quoted in an ICMP error (`InnerHeader`); its addresses are of the row's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inner {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

#[inline]
pub fn inner(o: &Obs) -> Option<Inner> {
    (o.has & has::INNER != 0).then(|| Inner {
        src: norm_addr(o.family, &o.inner_src),
        dst: norm_addr(o.family, &o.inner_dst),
        proto: o.inner_proto,
        sport: o.inner_sport,
        dport: o.inner_dport,
    })
}

/// ICMP echo request (v4 type 8, v6 type 128).
#[inline]
pub fn is_echo_request(o: &Obs) -> bool {
    matches!((o.proto, icmp_type(o)), (1, Some(8)) | (58, Some(128)))
}

/// ICMP echo request or reply.
#[inline]
pub fn is_echo(o: &Obs) -> bool {
    matches!(
        (o.proto, icmp_type(o)),
        (1, Some(8 | 0)) | (58, Some(128 | 129))
    )
}
