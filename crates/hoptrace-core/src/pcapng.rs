//! pcapng: sections of either byte order, interface description blocks
//! (`if_name`, `if_description`, `if_tsresol`, `if_tsoffset`), enhanced,
//! simple and (obsolete) packet blocks, with the EPB flags' direction and
//! hoptrace's JSON comment. readers.py's `_pcapng`, step for step: runs of
//! whole EPBs are only located while reading and parsed when the chunk is
//! settled, so chunks and errors come out where Python's do.

use crate::obs::dir;
use crate::reader::{CaptureError, FileReader, Flow, Iface, Rec, TsUnit, MAX_BLOCK, PCAPNG_SHB};

const EPB: u32 = 6;
const IDB: u32 = 1;
const SPB: u32 = 3;
const PB: u32 = 2;

fn flags_dir(bits: u8) -> u8 {
    match bits & 3 {
        1 => dir::RX,
        2 => dir::TX,
        _ => 0,
    }
}

/// One block, or one run of whole EPBs, or one hand-out of a chunk.
pub(crate) fn step(r: &mut FileReader, big: bool) -> Result<Flow, CaptureError> {
    if r.avail() < 12 {
        if drain(r, big)? {
            return Ok(Flow::Continue);
        }
        if !r.ensure(12)? {
            if r.data.len() > r.pos {
                return Err(CaptureError::TruncatedBlock { after: r.packets });
            }
            return Ok(Flow::Finished);
        }
        r.new_chunk();
    }
    let mut pos = r.pos;
    let mut big = big;
    let mut btype = r.u32_at(pos, big);
    let mut blen = r.u32_at(pos + 4, big);
    let dlen = r.data.len();
    let whole_epb = |btype: u32, blen: u32, pos: usize| {
        btype == EPB && blen >= 32 && (blen as usize) <= dlen - pos && blen % 4 == 0
    };
    if whole_epb(btype, blen, pos) {
        // A run of whole EPBs in this buffer: located now, parsed when settled.
        let limit = r.batch_rows.saturating_sub(r.chunk.recs.len());
        loop {
            r.pend.push(pos);
            pos += blen as usize;
            if r.pend.len() >= limit || pos + 12 > dlen {
                break;
            }
            btype = r.u32_at(pos, big);
            blen = r.u32_at(pos + 4, big);
            if !whole_epb(btype, blen, pos) {
                break;
            }
        }
        r.pos = pos;
        if r.pend.len() + r.chunk.recs.len() >= r.batch_rows {
            drain(r, big)?;
            r.new_chunk();
        }
        return Ok(Flow::Continue);
    }
    if !r.pend.is_empty() {
        settle(r, big)?;
    }
    if btype == PCAPNG_SHB {
        big = match [
            r.byte(pos + 8),
            r.byte(pos + 9),
            r.byte(pos + 10),
            r.byte(pos + 11),
        ] {
            [0x4d, 0x3c, 0x2b, 0x1a] => false,
            [0x1a, 0x2b, 0x3c, 0x4d] => true,
            _ => {
                drain(r, big)?;
                return Err(CaptureError::BadByteOrder);
            }
        };
        r.format = crate::reader::Format::Pcapng { big };
        btype = r.u32_at(pos, big);
        blen = r.u32_at(pos + 4, big);
    }
    if blen < 12 || blen % 4 != 0 || blen > MAX_BLOCK {
        drain(r, big)?;
        return Err(CaptureError::BadBlockLength {
            len: blen,
            after: r.packets,
        });
    }
    let blen = blen as usize;
    if r.avail() < blen {
        if drain(r, big)? {
            return Ok(Flow::Continue);
        }
        if !r.ensure(blen)? {
            return Err(CaptureError::TruncatedBlock { after: r.packets });
        }
        r.new_chunk();
        pos = r.pos;
        if btype == EPB {
            return Ok(Flow::Continue); // now whole: the run above takes it
        }
    }
    if btype == EPB {
        // An EPB too short for its fixed fields.
        drain(r, big)?;
        return Err(CaptureError::BadPacketBlock { after: r.packets });
    }
    match btype {
        IDB => idb(r, pos, blen, big),
        PCAPNG_SHB => r.section_base = r.ifaces.len(),
        SPB if blen >= 16 => {
            let wire = r.u32_at(pos + 8, big);
            let caplen = wire.min(blen as u32 - 16);
            packet(r, pos + 12, caplen, wire, 0, 0, (0, 0), big);
        }
        t if crate::local::CUSTOM_BLOCK_TYPES.contains(&t) && blen >= 16 => {
            // A Custom Block: its Private Enterprise Number, then data (hoptrace's, or not).
            if let Some(data) = r.data.get(pos + 12..pos + blen - 4) {
                if let Some(note) = crate::local::parse_block(data) {
                    r.locals.push(note);
                } else if let Some(note) = crate::relay::parse_block(data) {
                    r.relays.push(note);
                } else if let Some(spans) = crate::raw_block::parse_block(data) {
                    r.raws.push(spans);
                }
            }
        }
        PB if blen >= 32 => {
            let ifid = u32::from(r.u16_at(pos + 8, big));
            let ts = u64::from(r.u32_at(pos + 12, big)) << 32 | u64::from(r.u32_at(pos + 16, big));
            let caplen = r.u32_at(pos + 20, big);
            let wire = r.u32_at(pos + 24, big);
            let body_end = pos + blen - 4;
            if pos + 28 + caplen as usize <= body_end {
                let opts = pos + 28 + ((caplen as usize + 3) & !3);
                packet(r, pos + 28, caplen, wire, ifid, ts, (opts, body_end), big);
            }
        }
        _ => {}
    }
    r.pos = pos + blen;
    if r.error.is_some() {
        drain(r, big)?;
    }
    if r.chunk.recs.len() >= r.batch_rows {
        r.push_chunk();
        r.new_chunk();
    }
    Ok(Flow::Continue)
}

/// Parse pending EPBs into the chunk; on a damaged one, hand out what was good and fail.
fn settle(r: &mut FileReader, big: bool) -> Result<(), CaptureError> {
    if !r.pend.is_empty() {
        bulk_epbs(r, big);
    }
    if let Some(e) = r.error.take() {
        r.push_chunk();
        return Err(e);
    }
    Ok(())
}

/// `settle`, then hand the chunk out (before its buffer is replaced); true if it had records.
fn drain(r: &mut FileReader, big: bool) -> Result<bool, CaptureError> {
    settle(r, big)?;
    Ok(r.push_chunk())
}

/// The pending EPBs (offsets into the chunk's buffer; each a whole block of at least 32
/// bytes, its length a multiple of 4, as `step` located it).
fn bulk_epbs(r: &mut FileReader, big: bool) {
    let pend = std::mem::take(&mut r.pend);
    let buf = std::sync::Arc::clone(&r.chunk.buf);
    let u16_of = |x: [u8; 2]| {
        if big {
            u16::from_be_bytes(x)
        } else {
            u16::from_le_bytes(x)
        }
    };
    let u32_of = |x: [u8; 4]| {
        if big {
            u32::from_be_bytes(x)
        } else {
            u32::from_le_bytes(x)
        }
    };
    let nif = r.ifaces.len() - r.section_base;
    let mut n = 0u64;
    for (k, &pos) in pend.iter().enumerate() {
        // The fixed fields: type, length, interface, timestamp (high, low), captured, wire.
        let Some(h) = buf.get(pos..pos + 28) else {
            continue;
        };
        let Ok(h) = <[u8; 28]>::try_from(h) else {
            continue;
        };
        let blen = u32_of([h[4], h[5], h[6], h[7]]) as usize;
        let ifid = u32_of([h[8], h[9], h[10], h[11]]);
        let caplen = u32_of([h[20], h[21], h[22], h[23]]);
        if 28 + caplen as usize > blen.saturating_sub(4) {
            r.error = Some(CaptureError::BadPacketLength {
                len: caplen,
                after: r.packets + k as u64,
            });
            break;
        }
        if ifid as usize >= nif {
            r.error = Some(CaptureError::UndeclaredInterface {
                ifid,
                after: r.packets + k as u64,
            });
            break;
        }
        let gid = ifid as usize + r.section_base;
        if !r.linktype_ok(gid) {
            continue;
        }
        let ts = u64::from(u32_of([h[12], h[13], h[14], h[15]])) << 32
            | u64::from(u32_of([h[16], h[17], h[18], h[19]]));
        let ts_ns = r.ifaces.get(gid).map_or(0, |i| i.ts.ns(ts));
        // Options: the first 8 (flags = 2, comment = 1), within the block's body.
        let mut fdir = 0u8;
        let mut comment: Option<(usize, usize)> = None;
        let first = 28 + ((caplen as usize + 3) & !3);
        let opts = buf.get(pos + first..pos + blen - 4).unwrap_or(&[]);
        let mut p = 0usize;
        for _ in 0..8 {
            let Some(oh) = opts.get(p..p + 4) else {
                break;
            };
            let code = u16_of([oh[0], oh[1]]);
            let ln = usize::from(u16_of([oh[2], oh[3]]));
            let val = opts.get(p + 4..p + 4 + ln).filter(|_| code != 0);
            if let Some(v) = val {
                if code == 2 && ln >= 4 {
                    fdir = flags_dir(v.get(if big { 3 } else { 0 }).copied().unwrap_or(0));
                } else if code == 1 && v.first() == Some(&b'{') && comment.is_none() {
                    comment = Some((pos + first + p + 4, ln));
                }
            }
            p += 4 + ((ln + 3) & !3);
            if val.is_none() {
                break;
            }
        }
        if let Some((s, ln)) = comment {
            r.chunk.meta.push((r.chunk.recs.len(), s, ln));
        }
        r.chunk.recs.push(Rec {
            off: pos + 28,
            len: caplen,
            ts_ns,
            iface: gid as u32,
            wire_len: u32_of([h[24], h[25], h[26], h[27]]),
            dir: fdir,
        });
        n += 1;
    }
    r.packets += n;
    r.pend = pend;
    r.pend.clear();
}

/// pcapng options between `p` and `end`: (code, value start, value length); stops at garbage.
fn options(r: &FileReader, mut p: usize, end: usize, big: bool) -> Vec<(u16, usize, usize)> {
    let mut out = Vec::new();
    while p + 4 <= end {
        let code = r.u16_at(p, big);
        let ln = usize::from(r.u16_at(p + 2, big));
        if code == 0 || p + 4 + ln > end {
            break;
        }
        out.push((code, p + 4, ln));
        p += 4 + ((ln + 3) & !3);
    }
    out
}

fn text(r: &FileReader, start: usize, len: usize) -> String {
    let raw = r.data.get(start..start + len).unwrap_or(&[]);
    String::from_utf8_lossy(raw)
        .trim_end_matches('\0')
        .to_string()
}

fn idb(r: &mut FileReader, pos: usize, blen: usize, big: bool) {
    if blen < 20 {
        r.error = Some(CaptureError::BadInterfaceBlock);
        return;
    }
    let mut iface = Iface::new(u32::from(r.u16_at(pos + 8, big)));
    for (code, start, len) in options(r, pos + 16, pos + blen - 4, big) {
        match code {
            2 => iface.name = text(r, start, len),
            3 => iface.description = text(r, start, len),
            9 if len > 0 => {
                let (num, den_exp, pow2) = TsUnit::from_tsresol(r.byte(start));
                iface.ts.num = num;
                iface.ts.den_exp = den_exp;
                iface.ts.pow2 = pow2;
            }
            14 if len >= 8 => {
                let b: Vec<u8> = (0..8).map(|k| r.byte(start + k)).collect();
                let mut x = [0u8; 8];
                x.copy_from_slice(&b);
                let secs = if big {
                    i64::from_be_bytes(x)
                } else {
                    i64::from_le_bytes(x)
                };
                iface.ts.offset_ns = i128::from(secs) * 1_000_000_000;
            }
            _ => {}
        }
    }
    r.ifaces.push(iface);
}

/// A simple or obsolete packet block's packet (readers.py's `_packet`).
#[allow(clippy::too_many_arguments)]
fn packet(
    r: &mut FileReader,
    off: usize,
    caplen: u32,
    wire: u32,
    ifid: u32,
    ts: u64,
    (opt_start, opt_end): (usize, usize),
    big: bool,
) {
    if ifid as usize >= r.ifaces.len() - r.section_base {
        r.error = Some(CaptureError::UndeclaredInterface {
            ifid,
            after: r.packets,
        });
        return;
    }
    let gid = ifid as usize + r.section_base;
    if !r.linktype_ok(gid) {
        return;
    }
    let mut fdir = 0u8;
    let mut p = opt_start;
    if opt_end >= p + 4 {
        while p + 4 <= opt_end {
            let code = r.u16_at(p, big);
            let ln = usize::from(r.u16_at(p + 2, big));
            if code == 0 || p + 4 + ln > opt_end {
                break;
            }
            if code == 2 && ln >= 4 {
                fdir = flags_dir(r.byte(p + 4 + if big { 3 } else { 0 }));
            } else if code == 1 && r.byte(p + 4) == b'{' && p + 4 < r.data.len() {
                // Every such comment, as readers.py's per-packet path collects them.
                r.chunk.meta.push((r.chunk.recs.len(), p + 4, ln));
            }
            p += 4 + ((ln + 3) & !3);
        }
    }
    let ts_ns = r.ifaces.get(gid).map_or(0, |i| i.ts.ns(ts));
    r.chunk.recs.push(Rec {
        off,
        len: caplen,
        ts_ns,
        iface: gid as u32,
        wire_len: wire,
        dir: fdir,
    });
    r.packets += 1;
}
