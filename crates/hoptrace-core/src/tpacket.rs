//! The taps' TPACKET_V3 ring blocks: the frames of one block (a pure walk over its
//! bytes), and the reorder window that releases the sightings of all taps in time order,
//! decoded into `OBS_DTYPE` rows.
//!
//! The binding maps the rings and hands each block the kernel retired here as a byte
//! slice; nothing in this module trusts a block: every offset read from it is checked
//! against the block's own bounds (`blk_len`, cut to the slice), and a frame that does
//! not fit ends the walk of its block (counted as malformed), never a panic.
//!
//! Layouts (linux/if_packet.h): `struct tpacket_block_desc` = version, offset_to_priv,
//! then `tpacket_hdr_v1`: block_status (byte 8), num_pkts (12), offset_to_first_pkt
//! (16), blk_len (20), ...; `struct tpacket3_hdr` = tp_next_offset (0), tp_sec (4),
//! tp_nsec (8), tp_snaplen (12), tp_len (16), tp_status (20), tp_mac (u16 at 24), ...,
//! 48 bytes with its padding, then the `sockaddr_ll`: sll_ifindex (i32 at 48 + 4),
//! sll_pkttype (u8 at 48 + 10).

use crate::decode::decode;
use crate::obs::{dir, src_kind, Obs, ROW_SIZE};

/// `tp_status` / `block_status`: the block belongs to the kernel.
pub const TP_STATUS_KERNEL: u32 = 0;
/// `block_status` bit: the block was retired to user space.
pub const TP_STATUS_USER: u32 = 1;
/// Where a block's `block_status` word sits (the binding reads and writes it atomically).
pub const BLOCK_STATUS_OFF: usize = 8;
/// A block's header as far as it is read here (through blk_len).
const BLOCK_HDR_LEN: usize = 24;
/// `tpacket3_hdr` padded to TPACKET_ALIGN: the `sockaddr_ll` follows.
const TPACKET3_HDR_LEN: usize = 48;
const IFINDEX_OFF: usize = TPACKET3_HDR_LEN + 4;
const PKTTYPE_OFF: usize = TPACKET3_HDR_LEN + 10;
/// A frame's header must hold everything read from it: through sll_pkttype.
const FRAME_HDR_MIN: usize = PKTTYPE_OFF + 1;
/// `sll_pkttype` of a frame the host sent.
const PACKET_OUTGOING: u8 = 4;

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let end = off.checked_add(4)?;
    b.get(off..end)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_le_bytes)
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let end = off.checked_add(2)?;
    b.get(off..end)
        .and_then(|s| <[u8; 2]>::try_from(s).ok())
        .map(u16::from_le_bytes)
}

/// The number of frames a block holds as its header says (`num_pkts`), 0 when the slice
/// is too short to hold the header.
pub fn block_frames(block: &[u8]) -> u32 {
    u32_at(block, 12).unwrap_or(0)
}

/// One frame of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// tp_sec * 1e9 + tp_nsec: the skb's timestamp, CLOCK_REALTIME.
    pub ts_ns: u64,
    /// `dir::TX` when the host sent it (PACKET_OUTGOING), else `dir::RX`.
    pub dir: u8,
    /// tp_len: the frame's length on the wire.
    pub wire_len: u32,
    /// sll_ifindex.
    pub ifindex: i32,
    /// The captured bytes (tp_snaplen of them from tp_mac).
    pub data: &'a [u8],
}

/// What a block walk found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Walked {
    /// Frames handed to the callback.
    pub frames: u32,
    /// The block's header or one of its frames did not fit in the block: the walk
    /// stopped there (the frames before it were handed over).
    pub malformed: bool,
}

/// Hand every frame of one ring block (its bytes from the block descriptor on) to
/// `each`, in ring order. Bounds come from the block: `blk_len`, cut to the slice; a
/// frame whose header or data leaves them, or whose `tp_next_offset` cannot reach the
/// next frame, ends the walk (`malformed`).
pub fn walk_block<'a>(block: &'a [u8], mut each: impl FnMut(Frame<'a>)) -> Walked {
    let mut out = Walked::default();
    let (Some(num), Some(first), Some(blk_len)) =
        (u32_at(block, 12), u32_at(block, 16), u32_at(block, 20))
    else {
        out.malformed = block.len() < BLOCK_HDR_LEN;
        return out;
    };
    let end = usize::try_from(blk_len).map_or(block.len(), |l| l.min(block.len()));
    let Some(used) = block.get(..end) else {
        out.malformed = true;
        return out;
    };
    let mut off = first as usize;
    for k in 0..num {
        let Some(frame) = frame_at(used, off) else {
            out.malformed = true;
            break;
        };
        each(frame);
        out.frames += 1;
        if k + 1 == num {
            break;
        }
        // The kernel leaves the last frame's tp_next_offset 0; any other frame's must
        // step past its own header (no loop over one frame, no walk backwards).
        let next = u32_at(used, off).unwrap_or(0) as usize;
        match off.checked_add(next) {
            Some(o) if next >= TPACKET3_HDR_LEN => off = o,
            _ => {
                out.malformed = true;
                break;
            }
        }
    }
    out
}

fn frame_at(used: &[u8], off: usize) -> Option<Frame<'_>> {
    if off.checked_add(FRAME_HDR_MIN)? > used.len() {
        return None;
    }
    let sec = u32_at(used, off + 4)?;
    let nsec = u32_at(used, off + 8)?;
    let snap = u32_at(used, off + 12)?;
    let wire_len = u32_at(used, off + 16)?;
    let mac = u16_at(used, off + 24)?;
    let ifindex = i32::from_le_bytes(u32_at(used, off + IFINDEX_OFF)?.to_le_bytes());
    let pkttype = *used.get(off + PKTTYPE_OFF)?;
    let start = off.checked_add(usize::from(mac))?;
    let data = used.get(start..start.checked_add(snap as usize)?)?;
    Some(Frame {
        ts_ns: u64::from(sec) * 1_000_000_000 + u64::from(nsec),
        dir: if pkttype == PACKET_OUTGOING {
            dir::TX
        } else {
            dir::RX
        },
        wire_len,
        ifindex,
        data,
    })
}

/// A tap's place in the tables: its hop, and its rank among sightings with equal
/// timestamps. A packet socket stamps a frame with the skb's own timestamp, so one skb
/// received on a bridge port and then on the bridge shows the same time at both; within
/// such a tie the kernel's order is fixed: a port receives before its bridge, a bridge
/// transmits before its port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapMeta {
    pub hop: u32,
    pub rank_rx: u8,
    pub rank_tx: u8,
}

/// What the rows of one hop say beside the frame: (netns, ifindex, link type).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HopInfo {
    pub netns: u64,
    pub ifindex: i32,
    pub linktype: u32,
}

/// One held sighting (its frame bytes in [`Reorder`]'s buffer).
#[derive(Debug, Clone, Copy)]
struct Held {
    /// ts << 2 | rank: the order of release (rank < 4; a CLOCK_REALTIME ns timestamp
    /// leaves the top 2 bits free until 2116).
    key: u64,
    hop: u32,
    wire_len: u32,
    off: usize,
    len: u32,
    dir: u8,
}

impl Held {
    fn ts(&self) -> u64 {
        self.key >> 2
    }
}

/// Sightings released by [`Reorder::release`]: `OBS_DTYPE` rows in time order and the
/// frame bytes they point into (`frame_off`/`frame_len`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Released {
    pub rows: Vec<u8>,
    pub frames: Vec<u8>,
    /// The watermark: nothing older can come later.
    pub mark: u64,
}

/// Holds sightings back until no tap can still deliver an older one, then releases them
/// in time order, decoded.
///
/// Each ring hands over whole blocks, when full or when the retire timer fires, so one
/// tap's frames may reach us up to the retire timer's period after a later frame of another
/// tap (measured with 6.18's hrtimer and a 16 ms period, a flood beside a ping every 10 ms:
/// a 15 ms window let 2 sightings out of order in 2 runs, 17 ms none). A path read out of
/// order gets a wrong verdict, so frames wait `delay_ns` (against CLOCK_REALTIME, the clock
/// of the ring timestamps); `late_total` counts those that came later still.
/// Ties are broken by the tap's rank, then by arrival (a stable sort): the order of
/// tests/reference/taps.py's `_Reorder`, the oracle.
#[derive(Debug, Default)]
pub struct Reorder {
    delay_ns: u64,
    held: Vec<Held>,
    bytes: Vec<u8>,
    /// Sightings dropped by [`Reorder::shed`], ever.
    shed: u64,
    malformed: u64,
    /// The newest timestamp released so far, and the sightings released after a newer one
    /// had been (their block retired later than the window allowed): the window's guarantee,
    /// checked.
    released_max: u64,
    late: u64,
    // Reused between releases: no allocation per batch beyond the output.
    out: Vec<Held>,
    keep: Vec<Held>,
}

impl Reorder {
    pub fn new(delay_ns: u64) -> Reorder {
        Reorder {
            delay_ns,
            ..Reorder::default()
        }
    }

    /// The window: how long a sighting is held back.
    pub fn delay_ns(&self) -> u64 {
        self.delay_ns
    }

    /// Sightings held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Sightings dropped by [`Reorder::shed`] since the start.
    pub fn shed_total(&self) -> u64 {
        self.shed
    }

    /// Blocks whose walk stopped at a frame that did not fit, since the start.
    pub fn malformed_blocks(&self) -> u64 {
        self.malformed
    }

    /// Sightings released after a newer sighting had been released (out of time order
    /// across batches: the window was shorter than their block took to retire), since the
    /// start.
    pub fn late_total(&self) -> u64 {
        self.late
    }

    /// Copy the frames of one ring block in (headers left behind); returns the walk.
    pub fn push_block(&mut self, block: &[u8], tap: TapMeta) -> Walked {
        let (held, bytes) = (&mut self.held, &mut self.bytes);
        let w = walk_block(block, |f| {
            let rank = if f.dir == dir::TX {
                tap.rank_tx
            } else {
                tap.rank_rx
            };
            held.push(Held {
                key: (f.ts_ns << 2) | u64::from(rank & 3),
                hop: tap.hop,
                wire_len: f.wire_len,
                off: bytes.len(),
                len: f.data.len() as u32,
                dir: f.dir,
            });
            bytes.extend_from_slice(f.data);
        });
        if w.malformed {
            self.malformed += 1;
        }
        w
    }

    /// Move everything `other` holds in after what this one holds (arrival order), and
    /// its counters.
    pub fn append(&mut self, other: &mut Reorder) {
        let base = self.bytes.len();
        self.held.extend(other.held.drain(..).map(|mut h| {
            h.off += base;
            h
        }));
        self.bytes.append(&mut other.bytes);
        self.malformed += std::mem::take(&mut other.malformed);
        self.shed += std::mem::take(&mut other.shed);
        self.late += std::mem::take(&mut other.late);
        self.released_max = self.released_max.max(other.released_max);
    }

    /// True when some sighting is older than `now_ns - delay`.
    pub fn due(&self, now_ns: u64) -> bool {
        let Some(mark) = now_ns.checked_sub(self.delay_ns) else {
            return false;
        };
        self.held.iter().any(|h| h.ts() <= mark)
    }

    /// Drop the oldest arrivals while more than `max_rows` are held; returns how many.
    pub fn shed(&mut self, max_rows: usize) -> u64 {
        let excess = self.held.len().saturating_sub(max_rows);
        if excess == 0 {
            return 0;
        }
        self.held.drain(..excess);
        self.compact();
        self.shed += excess as u64;
        excess as u64
    }

    /// Keep only the bytes of the held sightings, moved down in place: the buffer keeps
    /// its capacity, so a steady flood allocates (and page-faults) nothing per batch.
    /// Held frames lie in arrival order at increasing offsets, so each moves down (or
    /// stays); one that does not (never, by construction) keeps an empty frame rather
    /// than overwrite another's bytes.
    fn compact(&mut self) {
        let mut w = 0usize;
        for h in &mut self.held {
            let len = h.len as usize;
            let end = h
                .off
                .checked_add(len)
                .filter(|&e| e <= self.bytes.len() && h.off >= w);
            match end {
                Some(end) => {
                    if h.off != w {
                        self.bytes.copy_within(h.off..end, w);
                    }
                    h.off = w;
                    w += len;
                }
                None => {
                    h.off = w;
                    h.len = 0;
                }
            }
        }
        self.bytes.truncate(w);
    }

    /// Release the sightings older than `now_ns - delay` (all with `None`), oldest first
    /// (ties by rank, then arrival), decoded with the hop table `hops` (a hop outside it
    /// reads as netns 0, ifindex 0, Ethernet). The watermark with `None` is the newest
    /// timestamp held, `now_ns` when nothing is (or 0).
    pub fn release(&mut self, now_ns: Option<u64>, final_now: u64, hops: &[HopInfo]) -> Released {
        let mut frames = Vec::new();
        match self.release_into(now_ns, final_now, hops, &mut frames) {
            Some((rows, mark)) => Released { rows, frames, mark },
            None => Released::default(),
        }
    }

    /// [`Reorder::release`] with the frame bytes written into `frames` (cleared first; a
    /// buffer the caller reuses): returns the rows and the watermark, None when `now_ns`
    /// is younger than the window (nothing can be due).
    pub fn release_into(
        &mut self,
        now_ns: Option<u64>,
        final_now: u64,
        hops: &[HopInfo],
        frames: &mut Vec<u8>,
    ) -> Option<(Vec<u8>, u64)> {
        frames.clear();
        let mark = match now_ns {
            Some(now) => now.checked_sub(self.delay_ns)?,
            None => self.held.iter().map(Held::ts).max().unwrap_or(final_now),
        };
        self.out.clear();
        self.keep.clear();
        let (mut out_bytes, mut kept_bytes) = (0usize, 0usize);
        for h in &self.held {
            if h.ts() <= mark {
                self.out.push(*h);
                out_bytes += h.len as usize;
            } else {
                self.keep.push(*h);
                kept_bytes += h.len as usize;
            }
        }
        self.out.sort_by_key(|h| h.key); // stable: arrival order within a tie
        let n = self.out.len();
        // Sorted: only the batch's oldest can be older than what earlier batches released.
        let before = self.released_max;
        self.late += self.out.iter().take_while(|h| h.ts() < before).count() as u64;
        if let Some(last) = self.out.last() {
            self.released_max = before.max(last.ts());
        }
        let mut rows = vec![0u8; n * ROW_SIZE];
        frames.reserve(out_bytes);
        for (h, chunk) in self.out.iter().zip(rows.chunks_exact_mut(ROW_SIZE)) {
            let data = self.bytes.get(h.off..h.off + h.len as usize).unwrap_or(&[]);
            let hop = hops.get(h.hop as usize).copied().unwrap_or(HopInfo {
                linktype: 1,
                ..HopInfo::default()
            });
            let mut o = Obs {
                ts_ns: h.ts(),
                netns: hop.netns,
                hop: h.hop,
                ifindex: hop.ifindex,
                dir: h.dir,
                source: src_kind::PCAP,
                frame_off: frames.len() as u64,
                frame_len: data.len() as u32,
                wire_len: h.wire_len,
                ..Obs::default()
            };
            decode(data, hop.linktype, &mut o);
            frames.extend_from_slice(data);
            if let Ok(row) = <&mut [u8; ROW_SIZE]>::try_from(chunk) {
                o.write_row(row);
            }
        }
        std::mem::swap(&mut self.held, &mut self.keep);
        if self.held.is_empty() {
            self.bytes.clear();
        } else if n > 0 && self.bytes.len() - kept_bytes.min(self.bytes.len()) >= kept_bytes {
            // Compacting moves the kept bytes: only once the dead ones are as many, so
            // each byte is moved about once however short the batches.
            self.compact();
        }
        Some((rows, mark))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::read_rows;
    use proptest::prelude::*;

    const MAC_OFF: usize = 82;

    /// A frame as a SOCK_RAW packet socket lays it out (tests/taps' `_tp_frame`).
    fn tp_frame(ns: u64, data: &[u8], pkttype: u8, wire: u32, last: bool) -> Vec<u8> {
        let size = (MAC_OFF + data.len() + 7) & !7;
        let mut f = vec![0u8; size];
        let next = if last { 0 } else { size as u32 };
        f[0..4].copy_from_slice(&next.to_le_bytes());
        f[4..8].copy_from_slice(&((ns / 1_000_000_000) as u32).to_le_bytes());
        f[8..12].copy_from_slice(&((ns % 1_000_000_000) as u32).to_le_bytes());
        f[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
        f[16..20].copy_from_slice(&wire.to_le_bytes());
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..26].copy_from_slice(&(MAC_OFF as u16).to_le_bytes());
        f[52..56].copy_from_slice(&7i32.to_le_bytes());
        f[58] = pkttype;
        f[MAC_OFF..MAC_OFF + data.len()].copy_from_slice(data);
        f
    }

    fn tp_block(frames: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = frames.concat();
        let mut b = vec![0u8; 48];
        b[0..4].copy_from_slice(&1u32.to_le_bytes());
        b[8..12].copy_from_slice(&TP_STATUS_USER.to_le_bytes());
        b[12..16].copy_from_slice(&(frames.len() as u32).to_le_bytes());
        b[16..20].copy_from_slice(&48u32.to_le_bytes());
        b[20..24].copy_from_slice(&((48 + body.len()) as u32).to_le_bytes());
        b.extend_from_slice(&body);
        b
    }

    fn block_of(specs: &[(u64, Vec<u8>, u8)]) -> Vec<u8> {
        let n = specs.len();
        let frames: Vec<Vec<u8>> = specs
            .iter()
            .enumerate()
            .map(|(i, (ts, d, pt))| tp_frame(*ts, d, *pt, d.len() as u32 + 1000, i + 1 == n))
            .collect();
        tp_block(&frames)
    }

    /// (ts, dir, wire length, ifindex, bytes) per frame.
    type Walk = Vec<(u64, u8, u32, i32, Vec<u8>)>;

    fn walk(block: &[u8]) -> (Walk, Walked) {
        let mut got = Vec::new();
        let w = walk_block(block, |f| {
            got.push((f.ts_ns, f.dir, f.wire_len, f.ifindex, f.data.to_vec()))
        });
        (got, w)
    }

    #[test]
    fn walks_every_frame_of_a_block() {
        let specs = vec![
            (1_700_000_000_000_000_001, vec![1u8; 60], 0),
            (1_700_000_000_000_000_002, vec![2u8; 128], 4),
            (1_700_000_000_999_999_999, vec![3u8; 1], 0),
        ];
        let (got, w) = walk(&block_of(&specs));
        assert_eq!(
            w,
            Walked {
                frames: 3,
                malformed: false
            }
        );
        let want: Vec<_> = specs
            .iter()
            .map(|(ts, d, pt)| {
                let dir = if *pt == 4 { dir::TX } else { dir::RX };
                (*ts, dir, d.len() as u32 + 1000, 7, d.clone())
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn an_empty_block_and_short_slices() {
        let (got, w) = walk(&tp_block(&[]));
        assert!(got.is_empty() && !w.malformed);
        for n in 0..BLOCK_HDR_LEN {
            let (got, w) = walk(&vec![0xffu8; n]);
            assert!(got.is_empty() && w.malformed, "{n}");
        }
    }

    #[test]
    fn frames_past_the_block_end_stop_the_walk() {
        let specs: Vec<_> = (0..4).map(|i| (100 + i, vec![i as u8; 60], 0)).collect();
        let blk = block_of(&specs);
        // blk_len cut inside the third frame: two frames, then malformed.
        let mut cut = blk.clone();
        let third = 48 + 2 * ((MAC_OFF + 60 + 7) & !7);
        cut[20..24].copy_from_slice(&((third + 40) as u32).to_le_bytes());
        let (got, w) = walk(&cut);
        assert_eq!((got.len(), w.malformed), (2, true));
        // The slice shorter than blk_len says: the slice wins.
        let (got, w) = walk(&blk[..third + 10]);
        assert_eq!((got.len(), w.malformed), (2, true));
        // num_pkts larger than the frames there: the walk stops at the zero next offset.
        let mut more = blk.clone();
        more[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let (got, w) = walk(&more);
        assert_eq!((got.len(), w.malformed), (4, true));
        // A next offset that does not step past the header.
        let mut back = blk.clone();
        back[48..52].copy_from_slice(&8u32.to_le_bytes());
        let (got, w) = walk(&back);
        assert_eq!((got.len(), w.malformed), (1, true));
        // Snap length past the end.
        let mut snap = blk;
        snap[48 + 12..48 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        let (got, w) = walk(&snap);
        assert_eq!((got.len(), w.malformed), (0, true));
    }

    fn meta(hop: u32) -> TapMeta {
        TapMeta {
            hop,
            rank_rx: if hop == 0 { 0 } else { 2 },
            rank_tx: if hop == 0 { 2 } else { 0 },
        }
    }

    #[test]
    fn release_is_time_ordered_with_the_frames() {
        let hops = [
            HopInfo {
                netns: 11,
                ifindex: 4,
                linktype: 1,
            },
            HopInfo {
                netns: 11,
                ifindex: 3,
                linktype: 1,
            },
        ];
        let mut r = Reorder::new(10);
        r.push_block(
            &block_of(&[(100, b"a100".to_vec(), 0), (130, b"b130".to_vec(), 0)]),
            meta(0),
        );
        r.push_block(
            &block_of(&[(95, b"c95".to_vec(), 0), (125, b"d125".to_vec(), 0)]),
            meta(1),
        );
        assert!(r.due(105) && !r.due(104));
        let out = r.release(Some(126), 0, &hops);
        assert_eq!(out.mark, 116);
        let rows = read_rows(&out.rows);
        let got: Vec<_> = rows
            .iter()
            .map(|o| {
                let f = &out.frames[o.frame_off as usize..][..o.frame_len as usize];
                (o.ts_ns, o.hop, o.ifindex, o.netns, f.to_vec(), o.source)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (95, 1, 3, 11, b"c95".to_vec(), src_kind::PCAP),
                (100, 0, 4, 11, b"a100".to_vec(), src_kind::PCAP)
            ]
        );
        assert_eq!(r.len(), 2);
        let rest = r.release(None, 0, &hops);
        assert_eq!(rest.mark, 130);
        let ts: Vec<u64> = read_rows(&rest.rows).iter().map(|o| o.ts_ns).collect();
        assert_eq!(ts, vec![125, 130]);
        assert!(r.is_empty());
        let none = r.release(None, 77, &hops);
        assert_eq!((none.rows.len(), none.mark), (0, 77));
    }

    #[test]
    fn a_sighting_older_than_one_released_is_counted_late() {
        let mut r = Reorder::new(10);
        r.push_block(&block_of(&[(100, b"a".to_vec(), 0)]), meta(0));
        r.push_block(&block_of(&[(120, b"b".to_vec(), 0)]), meta(1));
        assert_eq!(r.release(Some(115), 0, &[]).rows.len(), ROW_SIZE); // 100 out, 120 held
        assert_eq!(r.late_total(), 0);
        // A block retired after the window: 95 and 99 are older than 100, 105 is not.
        r.push_block(
            &block_of(&[
                (95, b"c".to_vec(), 0),
                (99, b"d".to_vec(), 0),
                (105, b"e".to_vec(), 0),
            ]),
            meta(0),
        );
        let out = r.release(Some(125), 0, &[]);
        let ts: Vec<u64> = read_rows(&out.rows).iter().map(|o| o.ts_ns).collect();
        assert_eq!(ts, vec![95, 99, 105]);
        assert_eq!(r.late_total(), 2);
        // In time: nothing more; the count moves with append like the others.
        r.push_block(&block_of(&[(130, b"f".to_vec(), 0)]), meta(0));
        r.release(None, 0, &[]);
        let mut other = Reorder::new(10);
        other.append(&mut r);
        assert_eq!((other.late_total(), r.late_total()), (2, 0));
    }

    #[test]
    fn ties_go_by_rank_then_arrival() {
        let mut r = Reorder::new(0);
        // The bridge's tap (hop 1: rx rank 2) drained before its port's (hop 0: rx rank 0).
        r.push_block(&block_of(&[(100, b"br".to_vec(), 0)]), meta(1));
        r.push_block(&block_of(&[(100, b"port".to_vec(), 0)]), meta(0));
        r.push_block(&block_of(&[(100, b"port2".to_vec(), 0)]), meta(0));
        let out = r.release(None, 0, &[]);
        let hops: Vec<u32> = read_rows(&out.rows).iter().map(|o| o.hop).collect();
        assert_eq!(hops, vec![0, 0, 1]);
        assert_eq!(&out.frames[..9], b"portport2");
    }

    #[test]
    fn shedding_drops_the_oldest_arrivals() {
        let mut r = Reorder::new(0);
        for i in 0..10u64 {
            r.push_block(&block_of(&[(1000 - i, vec![i as u8; 3], 0)]), meta(0));
        }
        assert_eq!(r.shed(4), 6);
        assert_eq!(r.shed(4), 0);
        assert_eq!(r.shed_total(), 6);
        let out = r.release(None, 0, &[]);
        assert_eq!(out.frames, vec![9, 9, 9, 8, 8, 8, 7, 7, 7, 6, 6, 6]);
    }

    /// (ts, hop, frame) of released rows, in row order.
    fn released(out: &Released) -> Vec<(u64, u32, Vec<u8>)> {
        read_rows(&out.rows)
            .iter()
            .map(|o| {
                let f = &out.frames[o.frame_off as usize..][..o.frame_len as usize];
                (o.ts_ns, o.hop, f.to_vec())
            })
            .collect()
    }

    #[test]
    fn a_reused_frame_buffer_is_cleared_and_rows_point_into_it() {
        let mut r = Reorder::new(0);
        let mut frames = b"stale bytes of the last batch".to_vec();
        r.push_block(&block_of(&[(5, b"xy".to_vec(), 0)]), meta(0));
        let Some((rows, mark)) = r.release_into(Some(5), 0, &[], &mut frames) else {
            panic!("a due sighting was not released");
        };
        assert_eq!((frames.as_slice(), mark), (&b"xy"[..], 5));
        assert_eq!(read_rows(&rows)[0].frame_off, 0);
        // A watermark before the window's start: nothing, the buffer emptied.
        let mut r = Reorder::new(10);
        assert!(r.release_into(Some(3), 0, &[], &mut frames).is_none());
        assert!(frames.is_empty());
    }

    proptest! {
        /// Released in steps (blocks pushed in between, the kept frames' bytes compacted
        /// in place or left with holes), every sighting comes out once with its own bytes,
        /// each step no later than its watermark allows and in time order.
        #[test]
        fn stepwise_releases_keep_every_frame_intact(
            steps in proptest::collection::vec(
                (proptest::collection::vec((0u64..400, 0usize..90, 0u32..3), 0..12), 0u64..500),
                1..10),
            delay in 0u64..60,
        ) {
            let mut r = Reorder::new(delay);
            let mut frames = Vec::new();
            let mut model: Vec<(u64, u32, Vec<u8>)> = Vec::new();
            let mut got = Vec::new();
            let mut seq = 0usize;
            let mut now = 0u64;
            for (blocks, advance) in steps {
                for (ts, len, hop) in blocks {
                    let data: Vec<u8> = (0..len).map(|i| (seq + i) as u8).collect();
                    let m = meta(hop);
                    r.push_block(&block_of(&[(ts, data.clone(), 0)]), m);
                    model.push((ts, hop, data));
                    seq += 1;
                }
                now += advance;
                if let Some((rows, _)) = r.release_into(Some(now), 0, &[], &mut frames) {
                    let out = Released { rows, frames: frames.clone(), mark: 0 };
                    let step = released(&out);
                    let mark = now.saturating_sub(delay);
                    prop_assert!(step.iter().all(|(ts, _, _)| *ts <= mark));
                    prop_assert!(step.windows(2).all(|w| w[0].0 <= w[1].0));
                    got.extend(step);
                }
            }
            got.extend(released(&r.release(None, 0, &[])));
            prop_assert!(r.is_empty());
            // Every frame pushed came out once, with its own bytes.
            let mut a = got;
            let mut b = model;
            a.sort();
            b.sort();
            prop_assert_eq!(a, b);
        }

        #[test]
        fn any_bytes_never_panic(block in proptest::collection::vec(any::<u8>(), 0..600)) {
            let (got, w) = walk(&block);
            prop_assert_eq!(got.len() as u32, w.frames);
            let mut r = Reorder::new(0);
            r.push_block(&block, meta(0));
            let out = r.release(None, 0, &[]);
            prop_assert_eq!(out.rows.len(), got.len() * ROW_SIZE);
        }

        #[test]
        fn corrupted_headers_never_panic(
            sizes in proptest::collection::vec(0usize..200, 0..6),
            pokes in proptest::collection::vec((0usize..2000, any::<u32>()), 0..6),
            cut in 0usize..2000,
        ) {
            let specs: Vec<_> = sizes.iter().enumerate()
                .map(|(i, &n)| (i as u64, vec![i as u8; n], (i % 2 * 4) as u8)).collect();
            let mut blk = block_of(&specs);
            for (at, v) in pokes {
                if let Some(s) = blk.get_mut(at..at + 4) {
                    s.copy_from_slice(&v.to_le_bytes());
                }
            }
            let blk = &blk[..cut.min(blk.len())];
            let (got, _) = walk(blk);
            for (_, _, _, _, d) in &got {
                prop_assert!(d.len() <= blk.len());
            }
        }
    }
}
