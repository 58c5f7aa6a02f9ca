//! Classic pcap (libpcap's format): microsecond and nanosecond magic, either
//! byte order. readers.py's `_pcap`, step for step: record headers are only
//! located while reading and parsed in bulk when a chunk is handed out.

use crate::decode;
use crate::reader::{CaptureError, FileReader, Flow, Format, Iface, TsUnit, MAX_RECORD};
use crate::reader::{Rec, PCAP_MAGIC_NS, PCAP_MAGIC_US};

/// Parse the global header (the magic is known to be pcap's).
pub(crate) fn start(r: &mut FileReader) -> Result<(), CaptureError> {
    if !r.ensure(24)? {
        return Err(CaptureError::TruncatedPcapHeader);
    }
    let big = [PCAP_MAGIC_US, PCAP_MAGIC_NS].contains(&r.u32_at(0, true));
    let ns = r.u32_at(0, big) == PCAP_MAGIC_NS;
    // Upper bits: FCS length, as libpcap's LT_LINKTYPE() masks.
    let lt = r.u32_at(20, big) & 0x03FF_FFFF;
    if !decode::is_supported(lt) {
        return Err(CaptureError::UnsupportedLinkType(vec![lt]));
    }
    let mult = if ns { 1 } else { 1000 };
    let mut iface = Iface::new(lt);
    iface.ts = TsUnit {
        num: mult,
        ..TsUnit::MICROS
    };
    r.ifaces.push(iface);
    r.pos = 24;
    r.new_chunk();
    r.format = Format::Pcap { big, mult };
    Ok(())
}

/// One record (or one hand-out of a chunk).
pub(crate) fn step(r: &mut FileReader, big: bool, mult: u64) -> Result<Flow, CaptureError> {
    if r.avail() < 16 {
        if drain(r, big, mult) {
            return Ok(Flow::Continue); // the next step reads on
        }
        if !r.ensure(16)? {
            if r.data.len() > r.pos {
                return Err(CaptureError::TruncatedRecordHeader { after: r.packets });
            }
            return Ok(Flow::Finished);
        }
        r.new_chunk();
    }
    let mut pos = r.pos;
    let caplen = r.u32_at(pos + 8, big);
    if caplen > MAX_RECORD {
        drain(r, big, mult);
        return Err(CaptureError::BadRecordLength {
            len: caplen,
            after: r.packets,
        });
    }
    let need = 16 + caplen as usize;
    if r.avail() < need {
        if drain(r, big, mult) {
            return Ok(Flow::Continue);
        }
        if !r.ensure(need)? {
            return Err(CaptureError::TruncatedPacket { after: r.packets });
        }
        r.new_chunk();
        pos = r.pos;
    }
    r.pend.push(pos);
    r.pos = pos + need;
    if r.pend.len() >= r.batch_rows {
        drain(r, big, mult);
        r.new_chunk();
    }
    Ok(Flow::Continue)
}

/// Parse the pending record headers into the chunk and hand it out; true if it had records.
fn drain(r: &mut FileReader, big: bool, mult: u64) -> bool {
    if !r.pend.is_empty() {
        let pend = std::mem::take(&mut r.pend);
        let buf = std::sync::Arc::clone(&r.chunk.buf);
        let u32_at = |at: usize| -> u32 {
            let b = buf.get(at..at + 4).unwrap_or(&[0, 0, 0, 0]);
            let b = [b[0], b[1], b[2], b[3]];
            if big {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        r.chunk.recs.reserve(pend.len());
        for &pos in &pend {
            // sec * 1e9 + frac * 1000 < 2^63 for any 32-bit sec/frac: no overflow.
            let ts = u64::from(u32_at(pos)) * 1_000_000_000 + u64::from(u32_at(pos + 4)) * mult;
            r.chunk.recs.push(Rec {
                off: pos + 16,
                len: u32_at(pos + 8),
                ts_ns: ts,
                iface: 0,
                wire_len: u32_at(pos + 12),
                dir: 0,
            });
        }
        r.packets += pend.len() as u64;
        r.pend = pend;
        r.pend.clear();
    }
    r.push_chunk()
}
