//! The recorder's blocks for the eBPF ring's batches, made where they are fed (the binding's
//! `Stream.feed_ring`: `live --backend ebpf --record`), so that a recording run keeps the
//! direct road: no rows handed to Python. What a step makes is what tracer/sinks/record.py's
//! `PcapngRecorder.on_batch` queues for the same batches, byte for byte: per batch, in chunks
//! of `CHUNK_ROWS` sightings, an IDB for each hop label the current file has no interface for
//! yet (in hop index order, before the chunk's EPBs), then the chunk's EPBs
//! (pcapng_writer.rs), as many as fit under the file's size limit; when one does not fit, the
//! file rotates and the rest of the chunk is made again for the next file (its own IDBs, its
//! own comment widths).
//!
//! Python keeps the files (0600, names, the flush policy, disk full): it takes a step's bytes
//! once, cut into `Segment`s, each whole blocks, and rotates after a segment that says so. It
//! tells this side what it queued itself meanwhile (the SHB, custom blocks: `set_file`) and,
//! after rows it recorded itself, the interface ids of the current file (`set_ifids`).

use std::collections::HashMap;

use crate::obs::Obs;
use crate::pcapng_writer::encode_obs;

/// Rows encoded at once (tracer/sinks/record.py `CHUNK_ROWS`: the comment widths are a chunk's).
pub const CHUNK_ROWS: usize = 16384;
/// No interface in the current file yet.
pub const NO_IFID: u32 = u32::MAX;

/// Whole blocks of a step, up to `end` (a byte offset into the step's bytes), holding
/// `packets` EPBs and the IDBs of the hop labels `new_hops[..new_hops_end]` not in an earlier
/// segment (in the order written); `rotate`: the file is full, what follows goes to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub end: u64,
    pub packets: u64,
    pub new_hops_end: u64,
    pub rotate: bool,
}

/// One recording's state as the ring's steps see it (see the module documentation).
#[derive(Debug, Default)]
pub struct StepRecorder {
    snaplen: u32,
    max_bytes: Option<u64>,
    reasons: HashMap<u32, Vec<u16>>,
    /// Per hop index: the first hop index whose label equals its own (one interface each).
    keys: Vec<u32>,
    /// Per hop index: its label's IDB.
    idbs: Vec<Vec<u8>>,
    /// Per key (a hop index that is its own key): its interface id in the current file.
    ifids: Vec<u32>,
    next_ifid: u32,
    file_bytes: u64,
    file_packets: u64,
    /// What a new file starts with (the SHB, the custom blocks kept for each file).
    header_len: u64,
    out: Vec<u8>,
    segs: Vec<Segment>,
    new_hops: Vec<u32>,
    seg_packets: u64,
    table: Vec<u32>,
    used: Vec<bool>,
    ends: Vec<u64>,
    error: Option<String>,
}

impl StepRecorder {
    /// `max_bytes`: cut files before they would exceed it (at least one EPB a file);
    /// `reasons`: drop reason names (UTF-16 units) by code.
    pub fn new(snaplen: u32, max_bytes: Option<u64>, reasons: HashMap<u32, Vec<u16>>) -> Self {
        Self {
            snaplen,
            max_bytes,
            reasons,
            ..Self::default()
        }
    }

    /// Hop labels told so far.
    pub fn hops(&self) -> usize {
        self.keys.len()
    }

    /// The next hop label: `key` the first hop index with an equal label (its own index
    /// when none), `idb` its Interface Description Block.
    pub fn add_hop(&mut self, key: u32, idb: Vec<u8>) -> Result<(), String> {
        let index = self.keys.len();
        let own = usize::try_from(key).is_ok_and(|k| k == index);
        let earlier = usize::try_from(key)
            .ok()
            .and_then(|k| self.keys.get(k))
            .is_some_and(|&k2| k2 == key);
        if !own && !earlier {
            return Err(format!(
                "hop label {index} names label {key} as its equal, which is not a first label"
            ));
        }
        self.keys.push(key);
        self.idbs.push(idb);
        self.ifids.push(NO_IFID);
        Ok(())
    }

    /// What the current file holds (whole blocks, written or queued) and what a new file
    /// starts with, as Python counted them.
    pub fn set_file(&mut self, file_bytes: u64, file_packets: u64, header_len: u64) {
        self.file_bytes = file_bytes;
        self.file_packets = file_packets;
        self.header_len = header_len;
    }

    /// The current file's interface ids by hop index (`NO_IFID`: none yet; past the hops told:
    /// ignored) and the next id to give.
    pub fn set_ifids(&mut self, ifids: &[u32], next_ifid: u32) {
        self.ifids.iter_mut().for_each(|i| *i = NO_IFID);
        for (k, &id) in ifids.iter().enumerate() {
            if id == NO_IFID {
                continue;
            }
            let key = self
                .keys
                .get(k)
                .copied()
                .and_then(|x| usize::try_from(x).ok());
            if let Some(slot) = key.and_then(|x| self.ifids.get_mut(x)) {
                *slot = id;
            }
        }
        self.next_ifid = next_ifid;
    }

    /// The first error (a sighting of a hop not told): nothing is recorded after it.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Record one batch of the ring (its sightings and the bytes their frames point into).
    pub fn record(&mut self, obs: &[Obs], frames: &[u8]) {
        if self.error.is_some() {
            return;
        }
        for chunk in obs.chunks(CHUNK_ROWS) {
            if let Err(e) = self.record_chunk(chunk, frames) {
                self.error = Some(e);
                return;
            }
        }
    }

    fn record_chunk(&mut self, mut rows: &[Obs], frames: &[u8]) -> Result<(), String> {
        while !rows.is_empty() {
            self.interfaces(rows)?;
            let start = self.out.len();
            self.ends.clear();
            encode_obs(
                rows,
                frames,
                &self.table,
                self.snaplen,
                &self.reasons,
                &mut self.out,
                &mut self.ends,
            )?;
            let mut take = rows.len();
            if let Some(max) = self.max_bytes {
                let room = max.checked_sub(self.file_bytes);
                take = room.map_or(0, |room| self.ends.partition_point(|&e| e <= room));
                if take == 0 && self.file_packets == 0 {
                    take = 1; // a file always holds at least one packet
                }
            }
            let end = take
                .checked_sub(1)
                .and_then(|i| self.ends.get(i))
                .copied()
                .unwrap_or(0);
            self.out.truncate(start + end as usize);
            self.file_bytes += end;
            self.file_packets += take as u64;
            self.seg_packets += take as u64;
            if take < rows.len() {
                self.close_segment(true);
                self.ifids.iter_mut().for_each(|i| *i = NO_IFID);
                self.next_ifid = 0;
                self.file_bytes = self.header_len;
                self.file_packets = 0;
            }
            rows = rows.get(take..).unwrap_or_default();
        }
        Ok(())
    }

    /// The interface id of each hop label `rows` use (`self.table`), an IDB queued for each
    /// one the file has none for yet, in hop index order.
    fn interfaces(&mut self, rows: &[Obs]) -> Result<(), String> {
        let n = self.keys.len();
        self.used.clear();
        self.used.resize(n, false);
        for o in rows {
            match usize::try_from(o.hop)
                .ok()
                .and_then(|h| self.used.get_mut(h))
            {
                Some(u) => *u = true,
                None => {
                    return Err(format!(
                        "a sighting names hop {} of a recording told {n} hop labels",
                        o.hop
                    ))
                }
            }
        }
        self.table.clear();
        self.table.resize(n, 0);
        for h in 0..n {
            if !self.used[h] {
                continue;
            }
            let key = self.keys[h] as usize; // add_hop: an earlier index or h itself
            let mut id = self.ifids[key];
            if id == NO_IFID {
                id = self.next_ifid;
                self.next_ifid = self.next_ifid.saturating_add(1);
                self.ifids[key] = id;
                let idb = &self.idbs[h];
                self.out.extend_from_slice(idb);
                self.file_bytes += idb.len() as u64;
                self.new_hops.push(h as u32);
            }
            self.table[h] = id;
        }
        Ok(())
    }

    fn close_segment(&mut self, rotate: bool) {
        self.segs.push(Segment {
            end: self.out.len() as u64,
            packets: self.seg_packets,
            new_hops_end: self.new_hops.len() as u64,
            rotate,
        });
        self.seg_packets = 0;
    }

    /// What was made since the last call: `f(bytes, segments, new_hops)`; then forgotten
    /// (the buffers kept for the next step).
    pub fn take<R>(&mut self, f: impl FnOnce(&[u8], &[Segment], &[u32]) -> R) -> R {
        let (end, hops_end) = self.segs.last().map_or((0, 0), |s| (s.end, s.new_hops_end));
        if self.out.len() as u64 > end || self.new_hops.len() as u64 > hops_end {
            self.close_segment(false);
        }
        let r = f(&self.out, &self.segs, &self.new_hops);
        self.out.clear();
        crate::finish::keep_modest(&mut self.out);
        self.segs.clear();
        self.new_hops.clear();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::write_rows;
    use crate::pcapng_writer::encode_epbs;

    fn obs(hops: &[u32]) -> Vec<Obs> {
        hops.iter()
            .enumerate()
            .map(|(i, &hop)| Obs {
                ts_ns: 1_000 + i as u64 * 977,
                skb: 0x10 + i as u64,
                netns: 7,
                hop,
                dir: (i % 3) as u8,
                frame_off: (i % 4) as u64,
                frame_len: 6,
                ..Obs::default()
            })
            .collect()
    }

    fn recorder(max_bytes: Option<u64>, hops: u32) -> StepRecorder {
        let mut r = StepRecorder::new(128, max_bytes, HashMap::new());
        for h in 0..hops {
            r.add_hop(h, vec![h as u8; 8])
                .map_err(|e| e.to_string())
                .ok();
        }
        r.set_file(40, 0, 40);
        r
    }

    fn epbs(rows: &[Obs], frames: &[u8], ifids: &[u32]) -> Vec<u8> {
        let (mut out, mut ends) = (Vec::new(), Vec::new());
        let r = encode_epbs(
            &write_rows(rows),
            frames,
            ifids,
            128,
            &HashMap::new(),
            &mut out,
            &mut ends,
        );
        assert_eq!(r, Ok(()));
        out
    }

    #[test]
    fn a_step_is_the_new_labels_idbs_then_the_epbs() {
        let frames = b"abcdefghij";
        let rows = obs(&[1, 0, 1]);
        let mut r = recorder(None, 2);
        r.set_ifids(&[NO_IFID, 0], 1); // hop 1 has interface 0 already
        r.record(&rows, frames);
        let (bytes, segs, new) = r.take(|b, s, n| (b.to_vec(), s.to_vec(), n.to_vec()));
        let mut want = vec![0u8; 8];
        want.extend(epbs(&rows, frames, &[1, 0]));
        assert_eq!(bytes, want);
        assert_eq!(new, vec![0]);
        assert_eq!(
            segs,
            vec![Segment {
                end: want.len() as u64,
                packets: 3,
                new_hops_end: 1,
                rotate: false
            }]
        );
        assert_eq!(r.take(|b, s, _| (b.len(), s.len())), (0, 0));
    }

    #[test]
    fn equal_labels_share_one_interface() {
        let mut r = recorder(None, 1);
        assert!(r.add_hop(0, vec![9; 8]).is_ok());
        assert!(r.add_hop(1, vec![9; 8]).is_err()); // 1 is not a first label
        let rows = obs(&[1, 0]);
        r.record(&rows, b"abcdefghij");
        let (bytes, new) = r.take(|b, _, n| (b.to_vec(), n.to_vec()));
        assert_eq!(new, vec![0]);
        assert_eq!(&bytes[..8], &[0u8; 8]);
        assert_eq!(&bytes[8..], &epbs(&rows, b"abcdefghij", &[0, 0])[..]);
    }

    #[test]
    fn a_full_file_rotates_and_the_rest_is_made_again() {
        let frames = b"abcdefghij";
        let rows = obs(&[0, 0, 0, 0, 0]);
        let one = epbs(&rows[..1], frames, &[0]).len() as u64;
        // Room for the header, the IDB and two EPBs.
        let mut r = recorder(Some(40 + 8 + 2 * one + 3), 1);
        r.record(&rows, frames);
        let (bytes, segs, new) = r.take(|b, s, n| (b.to_vec(), s.to_vec(), n.to_vec()));
        assert_eq!(new, vec![0, 0, 0]);
        assert_eq!(
            segs.iter().map(|s| s.packets).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        assert_eq!(
            segs.iter().map(|s| s.rotate).collect::<Vec<_>>(),
            [true, true, false]
        );
        let mut want = vec![0u8; 8];
        want.extend(epbs(&rows[..2], frames, &[0]));
        // Each file's EPBs are encoded with the widths of what is left of the chunk.
        let mut first = epbs(&rows, frames, &[0]);
        first.truncate(want.len() - 8);
        assert_eq!(&want[8..], &first[..]);
        assert_eq!(&bytes[..want.len()], &want[..]);
        let mut second = vec![0u8; 8];
        let rest = epbs(&rows[2..], frames, &[0]);
        second.extend_from_slice(&rest[..rest.len() / 3 * 2]);
        assert_eq!(
            &bytes[want.len()..segs[1].end as usize],
            &second[..],
            "the second file: its IDB, then the rest encoded afresh"
        );
    }

    #[test]
    fn an_oversized_epb_still_makes_a_file_of_one() {
        let rows = obs(&[0, 0]);
        let mut r = recorder(Some(10), 1);
        r.record(&rows, b"abcdefghij");
        let segs = r.take(|_, s, _| s.to_vec());
        assert_eq!(segs.iter().map(|s| s.packets).collect::<Vec<_>>(), [1, 1]);
        assert_eq!(
            segs.iter().map(|s| s.rotate).collect::<Vec<_>>(),
            [true, false]
        );
    }

    #[test]
    fn a_hop_not_told_stops_the_recording_with_an_error() {
        let mut r = recorder(None, 1);
        r.record(&obs(&[3]), b"");
        assert!(r.error().is_some_and(|e| e.contains("hop 3")));
        r.record(&obs(&[0]), b"abcdefghij");
        assert_eq!(r.take(|b, _, _| b.len()), 0);
    }
}
