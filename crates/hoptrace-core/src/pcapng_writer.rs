//! The recorder's Enhanced Packet Blocks (`live --record`): one EPB per sighting of a
//! batch, byte for byte what the Python encoder wrote (tests/reference/record.py, the
//! oracle; tests/unit/test_core_record.py holds the two equal). File handling (0600,
//! rotation, disk-full policy) and the SHB/IDBs stay in tracer/sinks/record.py (for the eBPF
//! ring's batches, record_step.rs places its IDBs and cuts the files where it would).
//!
//! Every EPB of a batch has the same layout apart from its frame words: the comment's
//! values are right-aligned in slots as wide as the batch's widest value (JSON allows
//! the spaces), `skb` is zero-padded hex. Layout in 32-bit words:
//! `[7 header][frame words][comment opt: 1 + cw][flags: 2][packet id: 3][end: 1][total: 1]`.

use std::collections::HashMap;
use std::io::Write;

use crate::obs::{Obs, ROW_SIZE};

const BT_EPB: u32 = 6;
const OPT_COMMENT: u32 = 1;
const EPB_FLAGS: u32 = 2;
const EPB_PACKETID: u32 = 5;
const COMMENT_VERSION: u32 = 1;
/// Index = min(dir, 3).
const DIR_JSON: [&[u8]; 4] = [b"null", b"\"rx\"", b"\"tx\"", b"\"drop\""];
const DIR_FLAGS: [u32; 4] = [0, 1, 2, 0];
const DIR_W: usize = 6;
const FP_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's finaliser.
fn mix64(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// The NAT-invariant fingerprint written as `epb_packetid` (equal at every hop of a packet).
pub fn packet_id(o: &Obs) -> u64 {
    let fields = [
        u64::from(o.family),
        u64::from(o.proto),
        u64::from(o.ip_id),
        u64::from(o.tcp_seq),
        u64::from(o.tcp_ack),
        u64::from(o.tcp_flags),
        u64::from(o.icmp_type),
        u64::from(o.icmp_code),
        u64::from(o.icmp_seq),
        u64::from(o.frag),
        o.digest,
    ];
    fields.iter().fold(FP_SEED, |h, &f| mix64(h ^ f))
}

/// A string, as UTF-16 code units, as Python's `json.dumps` writes it (`ensure_ascii`):
/// quoted, `"` `\` and controls escaped, every unit past ASCII as `\uXXXX` (so a
/// surrogate pair stays a pair and a lone surrogate, which a Python name can hold, too).
pub fn json_str(units: &[u16], out: &mut Vec<u8>) {
    out.push(b'"');
    for &u in units {
        match u {
            0x22 => out.extend_from_slice(b"\\\""),
            0x5c => out.extend_from_slice(b"\\\\"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0d => out.extend_from_slice(b"\\r"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x20..=0x7e => out.push(u as u8),
            _ => {
                let _ = write!(out, "\\u{u:04x}");
            }
        }
    }
    out.push(b'"');
}

fn decimal_width(mut x: u64) -> usize {
    let mut w = 1;
    while x >= 10 {
        x /= 10;
        w += 1;
    }
    w
}

/// Right-aligns `value` in `dst` (spaces before); the slots are as wide as the widest value.
fn put_right(dst: &mut [u8], value: &[u8]) {
    let n = dst.len();
    let value = value
        .get(value.len().saturating_sub(n)..)
        .unwrap_or_default();
    let pad = n - value.len();
    dst.iter_mut().take(pad).for_each(|b| *b = b' ');
    dst[pad..].copy_from_slice(value);
}

/// `x` in decimal, right-aligned with spaces, into `dst`.
fn put_decimal(dst: &mut [u8], mut x: u64) {
    let mut i = dst.len();
    loop {
        if i == 0 {
            return;
        }
        i -= 1;
        dst[i] = b'0' + (x % 10) as u8;
        x /= 10;
        if x == 0 {
            break;
        }
    }
    dst[..i].iter_mut().for_each(|b| *b = b' ');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Seven 32-bit words, little-endian, as one piece (one copy into the block, not seven).
fn le_words(w: [u32; 7]) -> [u8; 28] {
    let mut b = [0u8; 28];
    for (dst, x) in b.chunks_exact_mut(4).zip(w) {
        dst.copy_from_slice(&x.to_le_bytes());
    }
    b
}

/// EPBs for `rows` (a numpy `OBS_DTYPE` buffer; one EPB a row, in row order) appended
/// to `out`, and the byte offset (from where this call began) where each ends into `ends`.
/// `ifids[hop]` is each hop label's interface id in the file; `reasons` names drop
/// reason codes (UTF-16 units) (`UNKNOWN(n)` otherwise). A frame is what `frames` holds of
/// `[frame_off, frame_off + frame_len)`, cut to `snaplen`.
pub fn encode_epbs(
    rows: &[u8],
    frames: &[u8],
    ifids: &[u32],
    snaplen: u32,
    reasons: &HashMap<u32, Vec<u16>>,
    out: &mut Vec<u8>,
    ends: &mut Vec<u64>,
) -> Result<(), String> {
    let obs: Vec<Obs> = rows
        .chunks_exact(ROW_SIZE)
        .filter_map(|c| <&[u8; ROW_SIZE]>::try_from(c).ok())
        .map(Obs::read_row)
        .collect();
    encode_obs(&obs, frames, ifids, snaplen, reasons, out, ends)
}

/// `encode_epbs` for sightings already decoded (the eBPF ring's batches: record_step.rs).
pub fn encode_obs(
    obs: &[Obs],
    frames: &[u8],
    ifids: &[u32],
    snaplen: u32,
    reasons: &HashMap<u32, Vec<u16>>,
    out: &mut Vec<u8>,
    ends: &mut Vec<u64>,
) -> Result<(), String> {
    let Some(first) = obs.first() else {
        return Ok(());
    };
    let mut skb_max = 0u64;
    let (mut ns_hi, mut t_max) = (first.netns, first.ts_ns);
    let mut reason_json: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut dr_w = 0usize;
    // Rows run in drop reasons (mostly none): the table is looked up when the code changes.
    let mut last_code = None;
    for o in obs {
        skb_max = skb_max.max(o.skb);
        ns_hi = ns_hi.max(o.netns);
        t_max = t_max.max(o.ts_ns);
        if usize::try_from(o.hop).map_or(true, |h| h >= ifids.len()) {
            return Err(format!(
                "a sighting names hop {} of a batch with {} hop labels",
                o.hop,
                ifids.len()
            ));
        }
        if last_code == Some(o.drop_reason) {
            continue;
        }
        last_code = Some(o.drop_reason);
        if let std::collections::hash_map::Entry::Vacant(e) = reason_json.entry(o.drop_reason) {
            let mut v = Vec::new();
            if o.drop_reason == 0 {
                v.extend_from_slice(b"null");
            } else if let Some(name) = reasons.get(&o.drop_reason) {
                json_str(name, &mut v);
            } else {
                let name: Vec<u16> = format!("UNKNOWN({})", o.drop_reason)
                    .encode_utf16()
                    .collect();
                json_str(&name, &mut v);
            }
            dr_w = dr_w.max(v.len());
            e.insert(v);
        }
    }
    let skb_w = ((64 - skb_max.leading_zeros()) as usize).div_ceil(4).max(1);
    let ns_w = decimal_width(ns_hi);
    let ts_w = decimal_width(t_max);

    // The comment, with this batch's slot widths.
    let mut comment = Vec::with_capacity(160);
    let _ = write!(comment, "{{\"v\":{COMMENT_VERSION},\"dir\":");
    let dir_at = comment.len();
    comment.resize(dir_at + DIR_W, b' ');
    comment.extend_from_slice(b",\"skb\":");
    let skb_at = comment.len();
    comment.resize(skb_at + skb_w + 4, b' ');
    comment.extend_from_slice(b",\"hook\":null,\"netns\":");
    let ns_at = comment.len();
    comment.resize(ns_at + ns_w, b' ');
    comment.extend_from_slice(b",\"drop_reason\":");
    let dr_at = comment.len();
    comment.resize(dr_at + dr_w, b' ');
    comment.extend_from_slice(b",\"ts_ns\":");
    let ts_at = comment.len();
    comment.resize(ts_at + ts_w, b' ');
    comment.push(b'}');
    let clen = comment.len();
    let cw = clen.div_ceil(4);
    comment.resize(4 * cw, 0);
    let clen = u32::try_from(clen).map_err(|_| "comment too long".to_string())?;

    let start = out.len();
    // The usual block (frames as long as the snaplen) fits without growing `out` on the way.
    out.reserve(
        obs.len()
            .saturating_mul(4 * (15 + cw) + (snaplen as usize).min(1 << 16)),
    );
    let mut last_reason: Option<(u32, &[u8])> = None;
    for o in obs {
        let avail = usize::try_from(o.frame_off)
            .ok()
            .map_or(0, |off| frames.len().saturating_sub(off));
        let caplen = (o.frame_len as usize).min(avail).min(snaplen as usize);
        let words = caplen.div_ceil(4);
        let total = 4 * (15 + cw + words);
        let total32 = u32::try_from(total).map_err(|_| "a block too large".to_string())?;
        let wire = if o.wire_len > 0 {
            o.wire_len
        } else {
            o.frame_len
        };
        let caplen32 = caplen as u32; // <= snaplen
        let d = usize::from(o.dir.min(3));
        let ifid = usize::try_from(o.hop)
            .ok()
            .and_then(|h| ifids.get(h))
            .copied()
            .unwrap_or(0);
        out.extend_from_slice(&le_words([
            BT_EPB,
            total32,
            ifid,
            (o.ts_ns >> 32) as u32,
            o.ts_ns as u32,
            caplen32,
            wire.max(caplen32),
        ]));
        if caplen > 0 {
            let off = o.frame_off as usize; // caplen > 0: within frames
            out.extend_from_slice(frames.get(off..off + caplen).unwrap_or_default());
        }
        out.resize(out.len() + 4 * words - caplen, 0);
        out.extend_from_slice(&(OPT_COMMENT | (clen << 16)).to_le_bytes());
        let c0 = out.len();
        out.extend_from_slice(&comment);
        let c = &mut out[c0..];
        put_right(&mut c[dir_at..dir_at + DIR_W], DIR_JSON[d]);
        let slot = &mut c[skb_at..skb_at + skb_w + 4];
        if o.skb == 0 {
            put_right(slot, b"null");
        } else {
            slot[0] = b'"';
            slot[1] = b'0';
            slot[2] = b'x';
            for (i, b) in slot[3..3 + skb_w].iter_mut().enumerate() {
                let shift = 4 * (skb_w - 1 - i);
                *b = HEX[((o.skb >> shift) & 0xf) as usize];
            }
            slot[3 + skb_w] = b'"';
        }
        put_decimal(&mut c[ns_at..ns_at + ns_w], o.netns);
        let reason = match last_reason {
            Some((code, json)) if code == o.drop_reason => Some(json),
            _ => reason_json.get(&o.drop_reason).map(Vec::as_slice),
        };
        if let Some(r) = reason {
            put_right(&mut c[dr_at..dr_at + dr_w], r);
            last_reason = Some((o.drop_reason, r));
        }
        put_decimal(&mut c[ts_at..ts_at + ts_w], o.ts_ns);
        let pid = packet_id(o);
        out.extend_from_slice(&le_words([
            EPB_FLAGS | (4 << 16),
            DIR_FLAGS[d],
            EPB_PACKETID | (8 << 16),
            pid as u32,
            (pid >> 32) as u32,
            0,
            total32,
        ]));
        ends.push((out.len() - start) as u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::write_rows;

    fn one(o: Obs, frames: &[u8], snaplen: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ends = Vec::new();
        let reasons = HashMap::from([(6, "NETFILTER_DROP".encode_utf16().collect())]);
        let r = encode_epbs(
            &write_rows(&[o]),
            frames,
            &[3],
            snaplen,
            &reasons,
            &mut out,
            &mut ends,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(ends, vec![out.len() as u64]);
        out
    }

    #[test]
    fn an_epb_is_whole_words_with_its_comment() {
        let o = Obs {
            ts_ns: 1_700_000_000_123_456_789,
            skb: 0xabc,
            netns: 4026531840,
            dir: 1,
            frame_len: 5,
            wire_len: 60,
            drop_reason: 6,
            ..Obs::default()
        };
        let b = one(o, b"hello", 128);
        assert_eq!(b.len() % 4, 0);
        assert_eq!(&b[0..4], &6u32.to_le_bytes());
        assert_eq!(&b[8..12], &3u32.to_le_bytes());
        assert_eq!(&b[20..24], &5u32.to_le_bytes());
        assert_eq!(&b[24..28], &60u32.to_le_bytes());
        assert_eq!(&b[28..33], b"hello");
        let text = String::from_utf8_lossy(&b);
        assert!(text.contains(
            "{\"v\":1,\"dir\":  \"rx\",\"skb\":\"0xabc\",\"hook\":null,\"netns\":4026531840,\
             \"drop_reason\":\"NETFILTER_DROP\",\"ts_ns\":1700000000123456789}"
        ));
    }

    #[test]
    fn frames_outside_the_buffer_are_cut_not_read() {
        let o = Obs {
            frame_off: u64::MAX,
            frame_len: 40,
            ..Obs::default()
        };
        let b = one(o, b"abc", 128);
        assert_eq!(&b[20..24], &0u32.to_le_bytes());
        let o = Obs {
            frame_off: 1,
            frame_len: 40,
            ..Obs::default()
        };
        let b = one(o, b"abcdef", 3);
        assert_eq!(&b[20..24], &3u32.to_le_bytes());
        assert_eq!(&b[28..32], b"bcd\0");
    }

    #[test]
    fn a_hop_past_the_table_is_an_error() {
        let o = Obs {
            hop: 5,
            ..Obs::default()
        };
        let r = encode_epbs(
            &write_rows(&[o]),
            b"",
            &[0],
            128,
            &HashMap::new(),
            &mut Vec::new(),
            &mut Vec::new(),
        );
        assert!(r.is_err());
    }

    #[test]
    fn json_strings_escape_like_python() {
        let mut v = Vec::new();
        let units: Vec<u16> = "a\"b\\\u{1}é\u{1F600}\u{7f}".encode_utf16().collect();
        json_str(&units, &mut v);
        let mut lone = Vec::new();
        json_str(&[0x61, 0xd800], &mut lone);
        assert_eq!(lone, b"\"a\\ud800\"");
        assert_eq!(v, b"\"a\\\"b\\\\\\u0001\\u00e9\\ud83d\\ude00\\u007f\"");
    }
}
