//! A raw IP header (and the start of its L4 header) rebuilt from a sighting's fields, for a
//! sighting that carries no frame bytes (a synthetic source, a test): what a path filter
//! matches it by, with the program compiled for `LINKTYPE_RAW`. Enough for
//! host/net/proto/port/icmp filters, which is what people filter paths by. The bytes are
//! those of tracer/filter.py `synth_frame`.

use crate::obs::{has, Obs};

/// pcap's link type of a frame that starts at the IP header.
pub const LINKTYPE_RAW: u32 = 101;

/// `o`'s header into `out` (cleared first); nothing for a sighting that is not IP.
pub fn synth_frame(o: &Obs, out: &mut Vec<u8>) {
    out.clear();
    if o.family != 4 && o.family != 6 {
        return;
    }
    let ports = o.has & has::L4_PORTS != 0;
    let (sport, dport) = if ports { (o.sport, o.dport) } else { (0, 0) };
    let mut l4 = [0u8; 20];
    let l4_len = match o.proto {
        6 | 17 | 132 | 136 => {
            l4[0..2].copy_from_slice(&sport.to_be_bytes());
            l4[2..4].copy_from_slice(&dport.to_be_bytes());
            if o.proto == 6 {
                let tcp = o.has & has::TCP != 0;
                let (seq, ack, flags) = if tcp {
                    (o.tcp_seq, o.tcp_ack, o.tcp_flags)
                } else {
                    (0, 0, 0)
                };
                l4[4..8].copy_from_slice(&seq.to_be_bytes());
                l4[8..12].copy_from_slice(&ack.to_be_bytes());
                l4[12] = 0x50;
                l4[13] = flags;
                20
            } else {
                8
            }
        }
        1 | 58 => {
            if o.has & has::ICMP != 0 {
                l4[0] = o.icmp_type;
                l4[1] = o.icmp_code;
                l4[4..6].copy_from_slice(&o.icmp_id.to_be_bytes());
                l4[6..8].copy_from_slice(&o.icmp_seq.to_be_bytes());
            }
            8
        }
        _ => 0,
    };
    let l4 = l4.get(..l4_len).unwrap_or_default();
    if o.family == 4 {
        let ip_id = if o.has & has::IP_ID != 0 {
            o.ip_id as u16
        } else {
            0
        };
        let offset = o.frag & 0x1FFF;
        let frag = offset | if o.frag & 0x8000 != 0 { 0x2000 } else { 0 };
        out.extend_from_slice(&[0x45, 0]);
        out.extend_from_slice(&(20 + l4_len as u16).to_be_bytes());
        out.extend_from_slice(&ip_id.to_be_bytes());
        out.extend_from_slice(&frag.to_be_bytes());
        out.extend_from_slice(&[o.ttl, o.proto, 0, 0]);
        out.extend_from_slice(&o.src[..4]);
        out.extend_from_slice(&o.dst[..4]);
        if offset == 0 {
            out.extend_from_slice(l4);
        }
        return;
    }
    let label = if o.has & has::FLOW_LABEL != 0 {
        o.flow_label
    } else {
        0
    };
    out.extend_from_slice(&((6u32 << 28) | label).to_be_bytes());
    out.extend_from_slice(&(l4_len as u16).to_be_bytes());
    out.extend_from_slice(&[o.proto, o.ttl]);
    out.extend_from_slice(&o.src);
    out.extend_from_slice(&o.dst);
    out.extend_from_slice(l4);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_icmp_echo_over_ipv4() {
        let mut o = Obs {
            family: 4,
            proto: 1,
            has: has::ICMP | has::IP_ID,
            ttl: 64,
            ip_id: 0x1234,
            icmp_type: 8,
            icmp_id: 7,
            icmp_seq: 1,
            ..Obs::default()
        };
        o.src[..4].copy_from_slice(&[172, 17, 0, 2]);
        o.dst[..4].copy_from_slice(&[198, 51, 100, 8]);
        let mut out = Vec::new();
        synth_frame(&o, &mut out);
        assert_eq!(
            out,
            [
                0x45, 0, 0, 28, 0x12, 0x34, 0, 0, 64, 1, 0, 0, 172, 17, 0, 2, 198, 51, 100, 8, 8,
                0, 0, 0, 0, 7, 0, 1
            ]
        );
        o.family = 0;
        synth_frame(&o, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_later_fragment_has_no_l4_header_and_ipv6_has_its_own() {
        let mut o = Obs {
            family: 4,
            proto: 17,
            has: has::L4_PORTS | has::FRAG,
            frag: 0x8000 | 185,
            sport: 53,
            dport: 999,
            ..Obs::default()
        };
        let mut out = Vec::new();
        synth_frame(&o, &mut out);
        assert_eq!(out.len(), 20);
        assert_eq!(out[6..8], [0x20, 185]);
        o.family = 6;
        o.proto = 6;
        o.has = has::L4_PORTS | has::TCP;
        o.tcp_flags = 2;
        synth_frame(&o, &mut out);
        assert_eq!(out.len(), 40 + 20);
        assert_eq!(out[0..6], [0x60, 0, 0, 0, 0, 20]);
        assert_eq!(out[40 + 13], 2);
    }
}
