//! The eBPF source's consumer side (probes/skb_hops.c): records walked out of a BPF ring
//! buffer, and their hop events decoded into `OBS_DTYPE` rows.
//!
//! * [`consume`] walks the records between the consumer and the producer positions as
//!   kernel/bpf/ringbuf.c lays them out (an 8-byte header: length with the BUSY and
//!   DISCARD bits, page offset; data 8-byte aligned; the data pages mapped twice so no
//!   record wraps), over any [`RingMemory`]: the binding's mmap (atomics, acquire loads)
//!   or a byte slice (tests, synthetic rings).
//! * [`Decoder`] turns `struct hop_event`s back to back into rows: the kernel's
//!   monotonic stamps converted to UTC by [`UtcClock`] (the offset function Python's
//!   probes/utc_clock.py `MonoToUtc` samples), (netns, ifindex, ifname, link type) mapped
//!   to a hop label index through [`HopKeys`] (a key not seen yet gets the next index at
//!   once and is reported as a [`Miss`] for Python to name: no row waits for a name), and
//!   each frame decoded by [`crate::decode::decode`].
//!
//! The Python decoder this replaced is the tests' oracle (tests/reference/ebpf.py).

use std::fmt;

use crate::decode::decode;
use crate::hash::FastMap;
use crate::obs::{dir, src_kind, Obs, ROW_SIZE};

/// `struct bpf_ringbuf_hdr`'s length bit: reserved, not yet submitted.
pub const RINGBUF_BUSY: u32 = 1 << 31;
/// `struct bpf_ringbuf_hdr`'s length bit: discarded by the producer (skip it).
pub const RINGBUF_DISCARD: u32 = 1 << 30;
/// `struct bpf_ringbuf_hdr`: u32 len, u32 pg_off.
pub const RINGBUF_HDR: usize = 8;
/// pcap link types of the event frames: Ethernet, or raw IP when there is no mac header.
pub const LINKTYPE_ETHERNET: u32 = 1;
pub const LINKTYPE_RAW: u32 = 101;
const IFNAMSIZ: usize = 16;

/// The data area of a ring buffer as the consumer sees it: `2 * size` bytes (the data
/// pages mapped twice), read where the producer has finished writing.
pub trait RingMemory {
    /// Bytes readable (twice the ring's data size).
    fn span(&self) -> usize;
    /// The record header's length word at `off`, with acquire ordering (it publishes the
    /// record's data); None past the end.
    fn load_len(&self, off: usize) -> Option<u32>;
    /// Copy `dst.len()` bytes from `off`; false (nothing copied) past the end.
    fn copy_out(&self, off: usize, dst: &mut [u8]) -> bool;
}

impl RingMemory for [u8] {
    fn span(&self) -> usize {
        self.len()
    }

    fn load_len(&self, off: usize) -> Option<u32> {
        let b = self.get(off..off.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }

    fn copy_out(&self, off: usize, dst: &mut [u8]) -> bool {
        match off
            .checked_add(dst.len())
            .and_then(|end| self.get(off..end))
        {
            Some(src) => {
                dst.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// What one [`consume`] pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Consumed {
    /// The new consumer position (to be published with release ordering).
    pub cons: u64,
    /// Hop events appended.
    pub events: usize,
    /// Records passed (submitted or discarded).
    pub records: usize,
}

/// Walk the records from `cons` up to `prod` (ring data size `mask + 1`, a power of two)
/// and append the hop events of each submitted one (`struct hop_batch`: a u32 count, the
/// rest of a `header_len`-byte header, then `ev_size`-byte events) to `out`. Stops at the
/// first record still BUSY (records after it wait for it, as libbpf does) and at one that
/// would end outside the mapping (never the kernel's); DISCARDed records are passed over.
pub fn consume<M: RingMemory + ?Sized>(
    mem: &M,
    mask: u64,
    mut cons: u64,
    prod: u64,
    header_len: usize,
    ev_size: usize,
    out: &mut Vec<u8>,
) -> Consumed {
    let mut done = Consumed {
        cons,
        events: 0,
        records: 0,
    };
    if ev_size == 0 {
        return done;
    }
    while cons < prod {
        let Ok(off) = usize::try_from(cons & mask) else {
            break;
        };
        let Some(len) = mem.load_len(off) else { break };
        if len & RINGBUF_BUSY != 0 {
            break;
        }
        let size = (len & !(RINGBUF_BUSY | RINGBUF_DISCARD)) as usize;
        let data = off + RINGBUF_HDR;
        if data.checked_add(size).is_none_or(|end| end > mem.span()) {
            break;
        }
        if len & RINGBUF_DISCARD == 0 && size >= header_len.max(4) {
            let mut count = [0u8; 4];
            if mem.copy_out(data, &mut count) {
                let fits = (size - header_len) / ev_size;
                let n = (u32::from_le_bytes(count) as usize).min(fits);
                if n > 0 {
                    let at = out.len();
                    out.resize(at + n * ev_size, 0);
                    if let Some(dst) = out.get_mut(at..) {
                        if mem.copy_out(data + header_len, dst) {
                            done.events += n;
                        } else {
                            out.truncate(at);
                        }
                    }
                }
            }
        }
        cons += ((size + RINGBUF_HDR + 7) & !7) as u64;
        done.records += 1;
    }
    done.cons = cons;
    done
}

/// Byte offsets of `struct hop_event`'s fields (probes/skb_hops.py `_event_fields`) and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLayout {
    pub size: usize,
    pub ts_ns: usize,
    pub skb: usize,
    pub netns: usize,
    pub ifindex: usize,
    pub drop_reason: usize,
    pub wire_len: usize,
    pub cap_len: usize,
    pub mac_len: usize,
    pub kind: usize,
    pub ifname: usize,
    pub frame: usize,
}

/// A layout whose fields do not all lie inside the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutError(pub &'static str);

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hop_event field {} lies outside the event (a stale probes/skb_hops.py?)",
            self.0
        )
    }
}

impl std::error::Error for LayoutError {}

impl EventLayout {
    /// The layout, checked: every field inside `size` bytes, the frame last.
    pub fn checked(self) -> Result<Self, LayoutError> {
        let fields: [(&'static str, usize, usize); 11] = [
            ("ts_ns", self.ts_ns, 8),
            ("skb", self.skb, 8),
            ("netns", self.netns, 4),
            ("ifindex", self.ifindex, 4),
            ("drop_reason", self.drop_reason, 4),
            ("wire_len", self.wire_len, 4),
            ("cap_len", self.cap_len, 2),
            ("mac_len", self.mac_len, 2),
            ("kind", self.kind, 1),
            ("ifname", self.ifname, IFNAMSIZ),
            ("frame", self.frame, 0),
        ];
        for (name, off, width) in fields {
            if off.checked_add(width).is_none_or(|end| end > self.size) {
                return Err(LayoutError(name));
            }
        }
        Ok(self)
    }

    /// Frame bytes an event has room for.
    pub fn snaplen(&self) -> usize {
        self.size.saturating_sub(self.frame)
    }
}

/// Kernel monotonic ns -> UTC ns: `mono + base + offset(mono)`, the offset piecewise linear
/// between knots (`km`, `ko`; flat outside), computed as probes/utc_clock.py `MonoToUtc.to_utc`
/// does (numpy's `interp` in float64, floored), so the two agree to the nanosecond.
#[derive(Debug, Clone, PartialEq)]
pub struct UtcClock {
    base: i64,
    km: Vec<i64>,
    ko: Vec<i64>,
    kx: Vec<f64>,
    ky: Vec<f64>,
}

impl Default for UtcClock {
    fn default() -> Self {
        UtcClock {
            base: 0,
            km: vec![0],
            ko: vec![0],
            kx: vec![0.0],
            ky: vec![0.0],
        }
    }
}

impl UtcClock {
    /// None unless there is at least one knot, as many offsets as knots and the knots increase.
    pub fn new(base: i64, km: Vec<i64>, ko: Vec<i64>) -> Option<Self> {
        if km.is_empty() || km.len() != ko.len() || km.windows(2).any(|w| w[0] >= w[1]) {
            return None;
        }
        let r = km[0];
        let kx = km.iter().map(|&k| k.wrapping_sub(r) as f64).collect();
        let ky = ko.iter().map(|&o| o as f64).collect();
        Some(UtcClock {
            base,
            km,
            ko,
            kx,
            ky,
        })
    }

    /// The UTC stamp of a sighting stamped `mono` by the kernel.
    pub fn to_utc(&self, mono: u64) -> u64 {
        let m = mono as i64; // numpy's astype(int64)
        if self.km.len() == 1 {
            let off = self
                .base
                .wrapping_add(self.ko.first().copied().unwrap_or(0));
            return m.wrapping_add(off) as u64;
        }
        let r = self.km.first().copied().unwrap_or(0);
        let x = m.wrapping_sub(r) as f64;
        let rel = interp(x, &self.kx, &self.ky).floor() as i64;
        m.wrapping_add(rel).wrapping_add(self.base) as u64
    }
}

/// numpy's `interp` for one finite `x` over increasing `xp` (numpy/_core/src/multiarray/
/// compiled_base.c `arr_interp`, the same operations in the same order).
fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let n = xp.len().min(fp.len());
    let (Some(&x0), Some(&xl), Some(&f0), Some(&fl)) = (
        xp.first(),
        xp.get(n.wrapping_sub(1)),
        fp.first(),
        fp.get(n.wrapping_sub(1)),
    ) else {
        return 0.0;
    };
    if x > xl {
        return fl;
    }
    if x < x0 {
        return f0;
    }
    // the last j with xp[j] <= x
    let j = xp
        .get(..n)
        .unwrap_or_default()
        .partition_point(|&v| v <= x)
        .saturating_sub(1);
    let (Some(&xj), Some(&xj1), Some(&yj), Some(&yj1)) =
        (xp.get(j), xp.get(j + 1), fp.get(j), fp.get(j + 1))
    else {
        return fl;
    };
    if j + 1 >= n {
        return fl;
    }
    if xj == x {
        return yj;
    }
    let slope = (yj1 - yj) / (xj1 - xj);
    let r = slope * (x - xj) + yj;
    if r.is_nan() {
        let r2 = slope * (x - xj1) + yj1;
        if r2.is_nan() && yj == yj1 {
            return yj;
        }
        return r2;
    }
    r
}

/// A hop label the table had no index for: it got `index`; Python names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    pub index: u32,
    pub netns: u32,
    pub ifindex: u32,
    /// The interface name up to its first NUL (the kernel leaves stale bytes after it).
    pub ifname: Vec<u8>,
    pub linktype: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct HopKey {
    netns: u32,
    ifindex: u32,
    raw: bool,
    name: [u8; IFNAMSIZ],
}

/// (netns, ifindex, ifname, link type) -> index into the source's hop label table.
#[derive(Debug, Default, Clone)]
pub struct HopKeys {
    index: FastMap<HopKey, u32>,
    next: u32,
    last: Option<(HopKey, u32)>,
}

impl HopKeys {
    /// A table whose first new key gets index `next` (labels Python already has).
    pub fn starting_at(next: u32) -> Self {
        HopKeys {
            next,
            ..HopKeys::default()
        }
    }

    /// Labels indexed so far (the next new key's index).
    pub fn len(&self) -> u32 {
        self.next
    }

    pub fn is_empty(&self) -> bool {
        self.next == 0
    }

    fn get(&mut self, key: HopKey, misses: &mut Vec<Miss>) -> u32 {
        if let Some((k, i)) = self.last {
            if k == key {
                return i;
            }
        }
        let next = &mut self.next;
        let i = *self.index.entry(key).or_insert_with(|| {
            let i = *next;
            *next = next.wrapping_add(1);
            let len = key.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
            misses.push(Miss {
                index: i,
                netns: key.netns,
                ifindex: key.ifindex,
                ifname: key.name.get(..len).unwrap_or_default().to_vec(),
                linktype: if key.raw {
                    LINKTYPE_RAW
                } else {
                    LINKTYPE_ETHERNET
                },
            });
            i
        });
        self.last = Some((key, i));
        i
    }
}

fn rd<const N: usize>(ev: &[u8], off: usize) -> [u8; N] {
    let mut b = [0u8; N];
    if let Some(s) = off.checked_add(N).and_then(|end| ev.get(off..end)) {
        b.copy_from_slice(s);
    }
    b
}

/// Hop events -> `OBS_DTYPE` rows: layout, clock and label table kept across batches.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub layout: EventLayout,
    pub clock: UtcClock,
    pub keys: HopKeys,
}

impl Decoder {
    pub fn new(layout: EventLayout) -> Self {
        Decoder {
            layout,
            clock: UtcClock::default(),
            keys: HopKeys::default(),
        }
    }

    /// Decode the whole events in `events` (back to back; a trailing partial event is
    /// ignored) into `rows` (replaced: one `ROW_SIZE` row per event), each row's frame
    /// at `frame_off`/`frame_len` in `events`. Keys not in the table are appended to
    /// `misses` in the order their index was given. Returns the number of rows.
    pub fn decode(&mut self, events: &[u8], rows: &mut Vec<u8>, misses: &mut Vec<Miss>) -> usize {
        let l = self.layout;
        if l.size == 0 {
            rows.clear();
            return 0;
        }
        let n = events.len() / l.size;
        rows.clear();
        rows.resize(n * ROW_SIZE, 0);
        for (k, (ev, row)) in events
            .chunks_exact(l.size)
            .zip(rows.chunks_exact_mut(ROW_SIZE))
            .enumerate()
        {
            let Ok(row) = <&mut [u8; ROW_SIZE]>::try_from(row) else {
                continue;
            };
            self.event(k, ev, misses).write_row(row);
        }
        n
    }

    /// `decode` into sightings rather than row bytes (`out` replaced): what an engine fed
    /// straight from the ring takes, no row written and read back.
    pub fn decode_obs(
        &mut self,
        events: &[u8],
        out: &mut Vec<Obs>,
        misses: &mut Vec<Miss>,
    ) -> usize {
        out.clear();
        let l = self.layout;
        if l.size == 0 {
            return 0;
        }
        out.reserve(events.len() / l.size);
        for (k, ev) in events.chunks_exact(l.size).enumerate() {
            let o = self.event(k, ev, misses);
            out.push(o);
        }
        out.len()
    }

    /// Event `k` of a batch (`ev`: its bytes) as a sighting.
    fn event(&mut self, k: usize, ev: &[u8], misses: &mut Vec<Miss>) -> Obs {
        let l = self.layout;
        let snap = l.snaplen();
        let netns = u32::from_le_bytes(rd(ev, l.netns));
        let ifindex = u32::from_le_bytes(rd(ev, l.ifindex));
        let mac_len = u16::from_le_bytes(rd(ev, l.mac_len));
        let kind = rd::<1>(ev, l.kind)[0];
        let cap = usize::from(u16::from_le_bytes(rd(ev, l.cap_len))).min(snap);
        let raw = mac_len < 14;
        let key = HopKey {
            netns,
            ifindex: ifindex & 0x7FFF_FFFF,
            raw,
            name: rd(ev, l.ifname),
        };
        let mut o = Obs {
            ts_ns: self.clock.to_utc(u64::from_le_bytes(rd(ev, l.ts_ns))),
            skb: u64::from_le_bytes(rd(ev, l.skb)),
            netns: u64::from(netns),
            hop: self.keys.get(key, misses),
            ifindex: ifindex as i32,
            dir: match kind {
                dir::RX | dir::TX | dir::DROP => kind,
                _ => dir::UNKNOWN,
            },
            source: src_kind::EBPF,
            drop_reason: u32::from_le_bytes(rd(ev, l.drop_reason)),
            wire_len: u32::from_le_bytes(rd(ev, l.wire_len)),
            frame_off: (k * l.size + l.frame) as u64,
            frame_len: cap as u32,
            ..Obs::default()
        };
        let frame = ev.get(l.frame..l.frame + cap).unwrap_or_default();
        decode(
            frame,
            if raw { LINKTYPE_RAW } else { LINKTYPE_ETHERNET },
            &mut o,
        );
        o
    }
}

#[cfg(test)]
mod tests;
