//! Frame bytes -> the packet fields of a sighting ([`Obs`]), as tests/reference/decode.py's
//! `decode_one` does, bit for bit (the Python decoder is the reference the
//! differential tests hold this one to).
//!
//! Link types (pcap `LINKTYPE_*`): 1 Ethernet (+802.1Q/802.1ad/QinQ, up to 4
//! tags), 113 Linux SLL, 276 Linux SLL2, 101/12/14 raw IP, 228 raw IPv4, 229
//! raw IPv6. It never fails on garbage: what cannot be decoded stays 0 (an
//! undecodable frame has family 0), and every read is bounds-checked against
//! the frame's own end.
//!
//! `digest` is NAT-invariant: a 64-bit hash of (L4 payload length, the first
//! <= 16 bytes of the L4 payload). For ICMP errors the payload is the quoted
//! packet, whose addresses, ports, ICMP id and checksums NAT rewrites: those
//! are zeroed before hashing.

use std::fmt;

use crate::obs::{has, Obs, ROW_SIZE};

pub const LINKTYPE_ETHERNET: u32 = 1;
pub const LINKTYPE_LINUX_SLL: u32 = 113;
pub const LINKTYPE_LINUX_SLL2: u32 = 276;
pub const LINKTYPE_RAW: u32 = 101;
pub const LINKTYPE_IPV4: u32 = 228;
pub const LINKTYPE_IPV6: u32 = 229;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;

const MAX_VLAN_TAGS: u32 = 4;
const MAX_IPV6_EXT: u32 = 8;
/// How much of a quoted packet (ICMP error) goes into the digest.
const QUOTED_DIGEST_BYTES: usize = 64;

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xD6E8_FEB8_6659_FD93;

/// Whether frames of this link type are decoded (others are skipped by the readers).
pub fn is_supported(linktype: u32) -> bool {
    matches!(
        linktype,
        LINKTYPE_ETHERNET
            | LINKTYPE_LINUX_SLL
            | LINKTYPE_LINUX_SLL2
            | LINKTYPE_IPV4
            | LINKTYPE_IPV6
            | LINKTYPE_RAW
            | 12
            | 14
    )
}

fn is_raw(linktype: u32) -> bool {
    matches!(
        linktype,
        LINKTYPE_RAW | 12 | 14 | LINKTYPE_IPV4 | LINKTYPE_IPV6
    )
}

fn is_vlan(et: u16) -> bool {
    matches!(et, 0x8100 | 0x88A8 | 0x9100 | 0x9200)
}

/// IPv6 extension headers walked generically (44, fragment, and 51, AH, are special).
fn is_ext_generic(nxt: u8) -> bool {
    matches!(nxt, 0 | 43 | 60 | 135 | 139 | 140)
}

fn is_port_proto(p: u8) -> bool {
    matches!(p, 6 | 17 | 132 | 136)
}

fn icmp4_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

fn icmp4_with_id(t: u8) -> bool {
    matches!(t, 0 | 8 | 13..=18)
}

fn icmp6_error(t: u8) -> bool {
    matches!(t, 1..=4)
}

fn icmp6_with_id(t: u8) -> bool {
    matches!(t, 128 | 129)
}

/// The digest's mixing step (decode.py's `mix64`).
#[inline]
pub fn mix64(n: u64, w0: u64, w1: u64) -> u64 {
    let mut h = n.wrapping_mul(K1) ^ w0;
    h = (h ^ (h >> 32)).wrapping_mul(K2);
    h ^= w1;
    h = (h ^ (h >> 32)).wrapping_mul(K2);
    h ^ (h >> 32)
}

#[inline]
fn words(block: &[u8; 16]) -> (u64, u64) {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&block[..8]);
    b.copy_from_slice(&block[8..]);
    (u64::from_le_bytes(a), u64::from_le_bytes(b))
}

/// Up to 16 bytes of `data`, zero-padded.
#[inline]
fn block16(data: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let k = data.len().min(16);
    out[..k].copy_from_slice(&data[..k]);
    out
}

/// Digest of a payload of declared length `n` whose first bytes are `data` (decode.py's `digest_bytes`).
pub fn digest_bytes(n: u64, data: &[u8]) -> u64 {
    if data.len() <= 16 {
        let (w0, w1) = words(&block16(data));
        return mix64(n, w0, w1);
    }
    let mut h = n;
    for part in data.chunks(16) {
        let (w0, w1) = words(&block16(part));
        h = mix64(h, w0, w1);
    }
    h
}

/// Digest of the L4 payload at `p` of declared length `n` (decode.py's `_payload_digest`).
fn payload_digest(f: &[u8], p: usize, n: i64) -> u64 {
    let n = n.max(0) as u64;
    let avail = f.len().saturating_sub(p) as u64;
    let take = n.min(16).min(avail) as usize;
    if take == 0 {
        return mix64(n, 0, 0);
    }
    let data = f.get(p..p + take).unwrap_or(&[]);
    let (w0, w1) = words(&block16(data));
    mix64(n, w0, w1)
}

#[inline]
fn u8_at(f: &[u8], at: usize) -> u8 {
    f.get(at).copied().unwrap_or(0)
}

#[inline]
fn be16(f: &[u8], at: usize) -> u16 {
    match f.get(at..at + 2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => 0,
    }
}

#[inline]
fn be32(f: &[u8], at: usize) -> u32 {
    match f.get(at..at + 4) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

/// `n` bytes at `at` into a 16-byte address (zero-padded, as numpy's `S16`).
#[inline]
fn addr(f: &[u8], at: usize, n: usize) -> [u8; 16] {
    let mut out = [0u8; 16];
    if let Some(b) = f.get(at..at + n) {
        let k = n.min(16);
        out[..k].copy_from_slice(&b[..k]);
    }
    out
}

/// (ethertype, L3 offset); the offset is `None` when the link header is not understood.
fn link(f: &[u8], linktype: u32) -> (u16, Option<usize>) {
    let end = f.len();
    let (mut et, mut p) = match linktype {
        LINKTYPE_ETHERNET => {
            if 14 > end {
                return (0, None);
            }
            (be16(f, 12), 14)
        }
        LINKTYPE_LINUX_SLL => {
            if 16 > end {
                return (0, None);
            }
            (be16(f, 14), 16)
        }
        LINKTYPE_LINUX_SLL2 => {
            if 20 > end {
                return (0, None);
            }
            (be16(f, 0), 20)
        }
        lt if is_raw(lt) => {
            let Some(&b0) = f.first() else {
                return (0, None);
            };
            // By the version nibble, also for 228 (IPv4 only): tshark's IPv4 dissector
            // hands a version-6 header on to IPv6; for 229 it does not.
            return match b0 >> 4 {
                4 if lt != LINKTYPE_IPV6 => (ETH_P_IP, Some(0)),
                6 => (ETH_P_IPV6, Some(0)),
                _ => (0, None),
            };
        }
        _ => return (0, None),
    };
    let mut tags = 0;
    while is_vlan(et) && tags < MAX_VLAN_TAGS {
        if p + 4 > end {
            return (et, None);
        }
        et = be16(f, p + 2);
        p += 4;
        tags += 1;
    }
    (et, Some(p))
}

/// (ifindex, packet type) from a Linux cooked header; (0, -1) for other link types.
///
/// SLL2 carries the interface index (`tcpdump -i any`); SLL v1 only the
/// packet type (4 = PACKET_OUTGOING, i.e. tx).
pub fn link_meta(f: &[u8], linktype: u32) -> (u32, i32) {
    if linktype == LINKTYPE_LINUX_SLL2 && f.len() >= 20 {
        return (be32(f, 4), i32::from(u8_at(f, 10)));
    }
    if linktype == LINKTYPE_LINUX_SLL && f.len() >= 16 {
        return (0, i32::from(be16(f, 0)));
    }
    (0, -1)
}

/// What an ICMP error quotes: inner addresses (None: no usable quoted IP header),
/// protocol, ports (or echo id) and the digest of the NAT-neutralised quote.
struct Quoted {
    src: Option<([u8; 16], [u8; 16])>,
    proto: u8,
    sport: u16,
    dport: u16,
    digest: u64,
}

fn quoted(f: &[u8], p: usize, qlen: i64, v6: bool) -> Quoted {
    let stop = f.len().min(p.saturating_add(QUOTED_DIGEST_BYTES));
    let mut buf = [0u8; QUOTED_DIGEST_BYTES];
    let n = stop.saturating_sub(p);
    if let Some(src) = f.get(p..p + n) {
        buf[..n].copy_from_slice(src);
    }
    let raw = &mut buf[..n];
    let len = raw.len();
    let mut out = Quoted {
        src: None,
        proto: 0,
        sport: 0,
        dport: 0,
        digest: 0,
    };
    let mut l4: Option<usize> = None;
    if !v6 {
        if len >= 20 && u8_at(raw, 0) >> 4 == 4 {
            let ihl = usize::from(u8_at(raw, 0) & 0x0F) * 4;
            out.proto = u8_at(raw, 9);
            out.src = Some((addr(raw, 12, 4), addr(raw, 16, 4)));
            zero(raw, 10, 20);
            let frag_off = be16(raw, 6) & 0x1FFF;
            if ihl >= 20 && frag_off == 0 {
                l4 = Some(ihl);
            }
        }
    } else if len >= 40 && u8_at(raw, 0) >> 4 == 6 {
        let mut nxt = u8_at(raw, 6);
        out.src = Some((addr(raw, 8, 16), addr(raw, 24, 16)));
        zero(raw, 8, 40);
        let mut at = 40usize;
        let mut hops = 0;
        while is_ext_generic(nxt) && at + 2 <= len && hops < MAX_IPV6_EXT {
            let next_at = at + (usize::from(u8_at(raw, at + 1)) + 1) * 8;
            nxt = u8_at(raw, at);
            at = next_at;
            hops += 1;
        }
        if !(is_ext_generic(nxt) || nxt == 44) {
            l4 = Some(at);
        }
        out.proto = nxt;
    }
    if let (Some(_), Some(l4)) = (out.src, l4) {
        let pr = out.proto;
        if is_port_proto(pr) && l4 + 4 <= len {
            out.sport = be16(raw, l4);
            out.dport = be16(raw, l4 + 2);
            zero(raw, l4, l4 + 4);
            let ck = match pr {
                6 => Some(16),
                17 | 136 => Some(6),
                _ => None,
            };
            if let Some(ck) = ck {
                if l4 + ck + 2 <= len {
                    zero(raw, l4 + ck, l4 + ck + 2);
                }
            }
        } else if (pr == 1 || pr == 58) && l4 + 8 <= len {
            // A quoted ICMP echo: its id is what NAT rewrote; the checksum precedes it.
            zero(raw, l4 + 2, l4 + 4);
            let with_id = if pr == 58 {
                icmp6_with_id(u8_at(raw, l4))
            } else {
                icmp4_with_id(u8_at(raw, l4))
            };
            if with_id {
                out.sport = be16(raw, l4 + 4);
                zero(raw, l4 + 4, l4 + 6);
            }
        }
    }
    out.digest = digest_bytes(qlen.max(0) as u64, raw);
    out
}

/// Zero `raw[from..to]` (what NAT rewrites in a quoted header).
fn zero(raw: &mut [u8], from: usize, to: usize) {
    if let Some(part) = raw.get_mut(from..to) {
        part.fill(0);
    }
}

/// Zero the fields `decode` fills (decode.py's DECODED_FIELDS), leaving the caller's.
fn clear_decoded(o: &mut Obs) {
    o.family = 0;
    o.proto = 0;
    o.ethertype = 0;
    o.has = 0;
    o.src = [0; 16];
    o.dst = [0; 16];
    o.sport = 0;
    o.dport = 0;
    o.ip_id = 0;
    o.flow_label = 0;
    o.ttl = 0;
    o.tcp_flags = 0;
    o.icmp_type = 0;
    o.icmp_code = 0;
    o.icmp_id = 0;
    o.icmp_seq = 0;
    o.tcp_seq = 0;
    o.tcp_ack = 0;
    o.length = 0;
    o.frag = 0;
    o.digest = 0;
    o.inner_src = [0; 16];
    o.inner_dst = [0; 16];
    o.inner_proto = 0;
    o.inner_sport = 0;
    o.inner_dport = 0;
}

/// Decode one frame of the given link type into the packet fields of `o`
/// (family .. digest and the inner_* fields); the other fields are left alone.
pub fn decode(f: &[u8], linktype: u32, o: &mut Obs) {
    clear_decoded(o);
    let end = f.len();
    let (et, p) = link(f, linktype);
    o.ethertype = et;
    let Some(p) = p else {
        return;
    };
    // A version-6 header behind the IPv4 ethertype: tshark's IPv4 dissector hands it
    // to IPv6 (and is the oracle), so decode it as the IPv6 packet it is.
    let et6 = et == ETH_P_IP && p < end && u8_at(f, p) >> 4 == 6;
    let mut hs: u16;
    let family: u8;
    let mut proto: u8;
    let mut l4: usize;
    let mut plen: i64;
    let mut later_fragment: u32;
    if et == ETH_P_IP && !et6 {
        if p + 20 > end {
            return;
        }
        let vihl = u8_at(f, p);
        let length = be16(f, p + 2);
        let ihl = usize::from(vihl & 0x0F) * 4;
        if vihl >> 4 != 4 || ihl < 20 || (length > 0 && usize::from(length) < ihl) {
            // Bogus version or lengths: not a header to trust (tshark agrees). A zero
            // total length is not bogus: it is TSO/GSO on tx.
            return;
        }
        let fragw = be16(f, p + 6);
        family = 4;
        proto = u8_at(f, p + 9);
        o.ip_id = u32::from(be16(f, p + 4));
        o.ttl = u8_at(f, p + 8);
        o.src = addr(f, p + 12, 4);
        o.dst = addr(f, p + 16, 4);
        o.length = u32::from(length);
        hs = has::IP_ID;
        l4 = p + ihl;
        o.frag = (fragw & 0x1FFF) | if fragw & 0x2000 != 0 { 0x8000 } else { 0 };
        plen = if length != 0 {
            i64::from(length)
        } else {
            (end - p) as i64
        } - ihl as i64;
        if o.frag != 0 {
            hs |= has::FRAG;
        }
        later_fragment = u32::from(fragw & 0x1FFF);
    } else if et == ETH_P_IPV6 || et6 {
        if p + 40 > end {
            return;
        }
        let vtcfl = be32(f, p);
        if vtcfl >> 28 != 6 {
            return;
        }
        family = 6;
        plen = i64::from(be16(f, p + 4));
        proto = u8_at(f, p + 6);
        o.ttl = u8_at(f, p + 7);
        o.src = addr(f, p + 8, 16);
        o.dst = addr(f, p + 24, 16);
        o.flow_label = vtcfl & 0xFFFFF;
        hs = has::FLOW_LABEL;
        o.length = 40 + plen as u32;
        l4 = p + 40;
        later_fragment = 0;
        let mut hops = 0;
        while hops < MAX_IPV6_EXT {
            let size: usize;
            if is_ext_generic(proto) {
                if l4 + 2 > end {
                    break;
                }
                size = (usize::from(u8_at(f, l4 + 1)) + 1) * 8;
                proto = u8_at(f, l4);
            } else if proto == 44 {
                if l4 + 8 > end {
                    break;
                }
                proto = u8_at(f, l4);
                let offm = be16(f, l4 + 2);
                o.ip_id = be32(f, l4 + 4);
                o.frag = (offm >> 3) | if offm & 1 != 0 { 0x8000 } else { 0 };
                later_fragment = u32::from(offm >> 3);
                hs |= has::FRAG | has::IP_ID;
                size = 8;
            } else if proto == 51 {
                if l4 + 2 > end {
                    break;
                }
                size = (usize::from(u8_at(f, l4 + 1)) + 2) * 4;
                proto = u8_at(f, l4);
            } else {
                break;
            }
            plen -= size as i64;
            l4 += size;
            hops += 1;
            if later_fragment != 0 {
                break;
            }
        }
    } else if et == ETH_P_ARP {
        // ARP: L2 only; sender/target protocol addresses stand in for src/dst.
        if p + 8 > end {
            return;
        }
        let hlen = usize::from(u8_at(f, p + 4));
        let plen_a = usize::from(u8_at(f, p + 5));
        let size = 8 + 2 * hlen + 2 * plen_a;
        if p + size > end || plen_a > 16 {
            return;
        }
        o.src = addr(f, p + 8 + hlen, plen_a);
        o.dst = addr(f, p + 8 + 2 * hlen + plen_a, plen_a);
        o.length = size as u32;
        o.digest = payload_digest(f, p + 6, size as i64);
        return;
    } else {
        return;
    }
    o.family = family;
    o.proto = proto;

    let digest = if later_fragment != 0 {
        // A later fragment has no L4 header: digest its first bytes, which NAT leaves alone.
        payload_digest(f, l4, plen)
    } else {
        match proto {
            6 => {
                if l4 + 20 <= end {
                    o.sport = be16(f, l4);
                    o.dport = be16(f, l4 + 2);
                    o.tcp_seq = be32(f, l4 + 4);
                    o.tcp_ack = be32(f, l4 + 8);
                    let hl = usize::from(u8_at(f, l4 + 12) >> 4) * 4;
                    o.tcp_flags = u8_at(f, l4 + 13);
                    hs |= has::L4_PORTS | has::TCP;
                    payload_digest(f, l4 + hl, plen - hl as i64)
                } else if l4 + 4 <= end {
                    o.sport = be16(f, l4);
                    o.dport = be16(f, l4 + 2);
                    hs |= has::L4_PORTS;
                    payload_digest(f, l4 + 20, plen - 20)
                } else {
                    payload_digest(f, l4, plen)
                }
            }
            17 | 136 => {
                if l4 + 4 <= end {
                    o.sport = be16(f, l4);
                    o.dport = be16(f, l4 + 2);
                    hs |= has::L4_PORTS;
                }
                payload_digest(f, l4 + 8, plen - 8)
            }
            1 | 58 => {
                if l4 + 8 <= end {
                    let t = u8_at(f, l4);
                    o.icmp_type = t;
                    o.icmp_code = u8_at(f, l4 + 1);
                    o.icmp_id = be16(f, l4 + 4);
                    o.icmp_seq = be16(f, l4 + 6);
                    hs |= has::ICMP;
                    let (error, with_id) = if proto == 1 {
                        (icmp4_error(t), icmp4_with_id(t))
                    } else {
                        (icmp6_error(t), icmp6_with_id(t))
                    };
                    if error {
                        o.icmp_id = 0;
                        o.icmp_seq = 0;
                        let q = quoted(f, l4 + 8, plen - 8, family == 6);
                        if let Some((s, d)) = q.src {
                            o.inner_src = s;
                            o.inner_dst = d;
                            hs |= has::INNER;
                        }
                        o.inner_proto = q.proto;
                        o.inner_sport = q.sport;
                        o.inner_dport = q.dport;
                        q.digest
                    } else {
                        if !with_id {
                            o.icmp_id = 0;
                            o.icmp_seq = 0;
                        }
                        payload_digest(f, l4 + 8, plen - 8)
                    }
                } else if l4 + 2 <= end {
                    o.icmp_type = u8_at(f, l4);
                    o.icmp_code = u8_at(f, l4 + 1);
                    hs |= has::ICMP;
                    payload_digest(f, l4 + 8, plen - 8)
                } else {
                    payload_digest(f, l4, plen)
                }
            }
            132 => {
                if l4 + 4 <= end {
                    o.sport = be16(f, l4);
                    o.dport = be16(f, l4 + 2);
                    hs |= has::L4_PORTS;
                }
                payload_digest(f, l4 + 12, plen - 12)
            }
            _ => payload_digest(f, l4, plen),
        }
    };
    o.has = hs;
    o.digest = digest;
}

/// The link types of a batch of frames: one for all, or one per frame.
#[derive(Debug, Clone, Copy)]
pub enum LinkTypes<'a> {
    One(u32),
    Each(&'a [u32]),
}

/// Why a batch of frames cannot be decoded into rows ([`decode_rows`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// offsets, lengths, per-frame link types and rows do not count the same frames.
    Counts {
        offsets: usize,
        lengths: usize,
        linktypes: Option<usize>,
        rows: usize,
    },
    /// The rows buffer is not whole `OBS_DTYPE` rows.
    PartialRow { bytes: usize },
    /// A frame's bytes are not all in the buffer.
    OutsideBuffer {
        index: usize,
        offset: u64,
        length: u32,
        buffer: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Counts { offsets, lengths, linktypes, rows } => {
                write!(f, "{offsets} offsets, {lengths} lengths")?;
                if let Some(n) = linktypes {
                    write!(f, ", {n} link types")?;
                }
                write!(f, " and {rows} rows: one of each per frame")
            }
            DecodeError::PartialRow { bytes } => write!(
                f,
                "a rows buffer of {bytes} bytes is not whole {ROW_SIZE}-byte OBS_DTYPE rows"
            ),
            DecodeError::OutsideBuffer { index, offset, length, buffer } => write!(
                f,
                "frame {index} (offset {offset}, length {length}) lies outside the {buffer}-byte frames buffer"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decode frame `i` (`buf[offsets[i]..][..lengths[i]]`) into row `i` of `rows`
/// (`OBS_DTYPE` rows back to back): the packet fields [`decode`] fills are written,
/// every other field of the row (time, skb, hop, ...: the caller's) keeps its bytes.
/// Every count and frame bound is checked before anything is written, so on an
/// error `rows` is untouched.
pub fn decode_rows(
    buf: &[u8],
    offsets: &[u64],
    lengths: &[u32],
    linktypes: LinkTypes<'_>,
    rows: &mut [u8],
) -> Result<(), DecodeError> {
    let n = offsets.len();
    let each = match linktypes {
        LinkTypes::Each(lts) => Some(lts.len()),
        LinkTypes::One(_) => None,
    };
    if rows.len() % ROW_SIZE != 0 {
        return Err(DecodeError::PartialRow { bytes: rows.len() });
    }
    let rows_n = rows.len() / ROW_SIZE;
    if lengths.len() != n || each.is_some_and(|k| k != n) || rows_n != n {
        return Err(DecodeError::Counts {
            offsets: n,
            lengths: lengths.len(),
            linktypes: each,
            rows: rows_n,
        });
    }
    let mut spans = Vec::with_capacity(n);
    for (index, (&offset, &length)) in offsets.iter().zip(lengths).enumerate() {
        let span = usize::try_from(offset).ok().and_then(|start| {
            let end = start.checked_add(usize::try_from(length).ok()?)?;
            (end <= buf.len()).then_some(start..end)
        });
        match span {
            Some(s) => spans.push(s),
            None => {
                return Err(DecodeError::OutsideBuffer {
                    index,
                    offset,
                    length,
                    buffer: buf.len(),
                })
            }
        }
    }
    for (k, (span, chunk)) in spans
        .into_iter()
        .zip(rows.chunks_exact_mut(ROW_SIZE))
        .enumerate()
    {
        let lt = match linktypes {
            LinkTypes::One(lt) => lt,
            LinkTypes::Each(lts) => lts.get(k).copied().unwrap_or(0),
        };
        let (Some(frame), Ok(row)) = (buf.get(span), <&mut [u8; ROW_SIZE]>::try_from(chunk)) else {
            continue; // both checked above
        };
        let mut o = Obs::read_row(row);
        decode(frame, lt, &mut o);
        o.write_row(row);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::read_rows;
    use proptest::prelude::*;

    fn ipv4_icmp_echo(payload: &[u8]) -> Vec<u8> {
        let total = (20 + 8 + payload.len()) as u16;
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0x12,
            0x34,
            0,
            0,
            64,
            1,
            0,
            0,
        ]);
        f.extend_from_slice(&[172, 17, 0, 2, 198, 51, 100, 8]);
        f.extend_from_slice(&[8, 0, 0, 0, 0, 7, 0, 1]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn mix64_matches_python() {
        // tests/reference/decode.py's mix64(5, 1, 2), digest_bytes(3, b"abc"), digest_bytes(100, bytes(range(40))).
        assert_eq!(mix64(5, 1, 2), 0x6e60_eaaa_bbdc_46e0);
        assert_eq!(digest_bytes(3, b"abc"), 0x9e50_991c_b0ae_566d);
        let data: Vec<u8> = (0..40).collect();
        assert_eq!(digest_bytes(100, &data), 0xc164_3580_5a8e_87b5);
    }

    #[test]
    fn icmp_echo_fields() {
        let f = ipv4_icmp_echo(b"payload-of-a-ping");
        let mut o = Obs::default();
        decode(&f, LINKTYPE_ETHERNET, &mut o);
        assert_eq!((o.family, o.proto, o.ethertype), (4, 1, ETH_P_IP));
        assert_eq!(&o.src[..4], &[172, 17, 0, 2]);
        assert_eq!(
            (o.ip_id, o.ttl, o.icmp_type, o.icmp_id, o.icmp_seq),
            (0x1234, 64, 8, 7, 1)
        );
        assert_eq!(o.has, has::IP_ID | has::ICMP);
        assert_eq!(o.length, 45);
        assert_eq!(o.digest, payload_digest(b"payload-of-a-ping", 0, 17));
    }

    #[test]
    fn vlan_tags_and_cut_frames() {
        let inner = ipv4_icmp_echo(b"x");
        let mut f = inner[..12].to_vec();
        f.extend_from_slice(&[0x81, 0x00, 0, 5, 0x88, 0xA8, 0, 6]);
        f.extend_from_slice(&inner[12..]);
        let mut o = Obs::default();
        decode(&f, LINKTYPE_ETHERNET, &mut o);
        assert_eq!((o.family, o.icmp_seq), (4, 1));
        decode(&f[..15], LINKTYPE_ETHERNET, &mut o);
        assert_eq!((o.family, o.ethertype), (0, 0x8100));
    }

    fn rows_of(n: usize) -> Vec<u8> {
        let mut rows = vec![0u8; n * ROW_SIZE];
        for (k, chunk) in rows.chunks_exact_mut(ROW_SIZE).enumerate() {
            let o = Obs {
                ts_ns: 1000 + k as u64,
                skb: 0xFFFF_0000 + k as u64,
                netns: 4_026_531_840,
                hop: k as u32,
                ifindex: 7,
                dir: 2,
                source: 1,
                drop_reason: 77,
                frame_off: 9,
                frame_len: 10,
                wire_len: 11,
                family: 9,
                src: [0xEE; 16],
                digest: 5,
                inner_dport: 3,
                ..Obs::default()
            };
            o.write_row(chunk.try_into().expect("a whole row"));
        }
        rows
    }

    #[test]
    fn decode_rows_fills_the_packet_fields_and_keeps_the_rest() {
        let a = ipv4_icmp_echo(b"first");
        let b = ipv4_icmp_echo(b"second one");
        let mut buf = vec![0xAA; 3];
        buf.extend_from_slice(&a);
        buf.extend_from_slice(&[0xBB; 5]);
        buf.extend_from_slice(&b);
        let offs = [3, (3 + a.len() + 5) as u64, 3];
        let lens = [a.len() as u32, b.len() as u32, 14];
        let mut rows = rows_of(3);
        let before = read_rows(&rows);
        decode_rows(&buf, &offs, &lens, LinkTypes::Each(&[1, 1, 101]), &mut rows)
            .expect("in bounds");
        for (k, (got, was)) in read_rows(&rows).iter().zip(&before).enumerate() {
            let mut want = *was;
            let frame = &buf[offs[k] as usize..][..lens[k] as usize];
            decode(frame, [1, 1, 101][k], &mut want);
            assert_eq!(*got, want, "row {k}");
            assert_eq!(
                (got.ts_ns, got.skb, got.hop, got.drop_reason),
                (was.ts_ns, was.skb, was.hop, 77)
            );
        }
        // The Ethernet header bytes as raw IP: nothing IP-shaped, every packet field cleared.
        assert_eq!(
            (read_rows(&rows)[2].family, read_rows(&rows)[2].digest),
            (0, 0)
        );
    }

    #[test]
    fn decode_rows_checks_everything_before_writing() {
        let a = ipv4_icmp_echo(b"x");
        let mut rows = rows_of(2);
        let before = rows.clone();
        let lens = [a.len() as u32, a.len() as u32];
        let out = decode_rows(&a, &[0, 1], &lens, LinkTypes::One(1), &mut rows);
        assert_eq!(
            out,
            Err(DecodeError::OutsideBuffer {
                index: 1,
                offset: 1,
                length: lens[1],
                buffer: a.len()
            })
        );
        let huge = decode_rows(&a, &[0, u64::MAX], &[1, 2], LinkTypes::One(1), &mut rows);
        assert!(matches!(
            huge,
            Err(DecodeError::OutsideBuffer { index: 1, .. })
        ));
        let counts = decode_rows(&a, &[0, 0], &[1, 1], LinkTypes::Each(&[1]), &mut rows);
        assert_eq!(
            counts.map_err(|e| e.to_string()),
            Err("2 offsets, 2 lengths, 1 link types and 2 rows: one of each per frame".to_string())
        );
        let short = decode_rows(
            &a,
            &[0, 0],
            &[1, 1],
            LinkTypes::One(1),
            &mut rows[..ROW_SIZE + 1],
        );
        assert_eq!(
            short,
            Err(DecodeError::PartialRow {
                bytes: ROW_SIZE + 1
            })
        );
        let fewer = decode_rows(
            &a,
            &[0, 0],
            &[1, 1],
            LinkTypes::One(1),
            &mut rows[..ROW_SIZE],
        );
        assert!(matches!(fewer, Err(DecodeError::Counts { rows: 1, .. })));
        assert_eq!(rows, before);
        assert_eq!(
            decode_rows(&a, &[], &[], LinkTypes::One(1), &mut []),
            Ok(())
        );
    }

    proptest! {
        #[test]
        fn never_panics(f in proptest::collection::vec(any::<u8>(), 0..200),
                        lt in prop::sample::select(vec![0u32, 1, 12, 14, 101, 113, 228, 229, 276, 127])) {
            let mut o = Obs::default();
            decode(&f, lt, &mut o);
            prop_assert!(matches!(o.family, 0 | 4 | 6));
            let _ = link_meta(&f, lt);
        }

        #[test]
        fn decode_rows_is_decode_per_frame(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..90), 0..8),
            gap in 0usize..5,
            lts in proptest::collection::vec(prop::sample::select(vec![1u32, 101, 113, 228, 229, 276, 7]), 8),
            fill in any::<u8>(),
        ) {
            let mut buf = Vec::new();
            let (mut offs, mut lens) = (Vec::new(), Vec::new());
            for f in &frames {
                buf.extend(std::iter::repeat_n(0xC3, gap));
                offs.push(buf.len() as u64);
                lens.push(f.len() as u32);
                buf.extend_from_slice(f);
            }
            let lts = &lts[..frames.len()];
            let mut rows = vec![fill; frames.len() * ROW_SIZE];
            let mut want = read_rows(&rows);
            for ((o, f), lt) in want.iter_mut().zip(&frames).zip(lts) {
                decode(f, *lt, o);
            }
            decode_rows(&buf, &offs, &lens, LinkTypes::Each(lts), &mut rows).expect("in bounds");
            prop_assert_eq!(read_rows(&rows), want);
        }

        #[test]
        fn reads_nothing_past_the_frame(f in proptest::collection::vec(any::<u8>(), 0..120),
                                        pad in proptest::collection::vec(any::<u8>(), 0..64),
                                        lt in prop::sample::select(vec![1u32, 101, 113, 228, 229, 276])) {
            let mut a = Obs::default();
            decode(&f, lt, &mut a);
            let mut longer = f.clone();
            longer.extend_from_slice(&pad);
            let mut b = Obs::default();
            decode(&longer[..f.len()], lt, &mut b);
            prop_assert_eq!(a, b);
        }
    }
}
