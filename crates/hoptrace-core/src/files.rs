//! Several capture files as one stream of sighting batches, merged by
//! timestamp: tracer/sources/files.py's `FileSource` (`_file_batches`, `_hop`,
//! `_merge`, `_combine`), step for step, so that its batches, hop labels and
//! drop reason ids are the ones Python made.
//!
//! Labels: a pcapng interface named `node/iface` is that hop; otherwise the
//! file's `--hop NODE/IFACE=FILE` label, else the file name's stem as the node
//! and the interface's name (or `if<N>`) as iface. Linux cooked v2 frames
//! carry the interface index, so a `tcpdump -i any` capture yields one hop per
//! index. Nodes without a real netns inode get small synthetic ids (1, 2, ...)
//! per node name, shared across files.
//!
//! Names travel as "surrogatepass" UTF-8 bytes (Python may hand in a file
//! name with lone surrogates, and a JSON comment may hold one).

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::decode::{self, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2};
use crate::meta::{self, DropTable};
use crate::obs::{dir, src_kind, Obs, ROW_SIZE};
use crate::pytext;
use crate::reader::{CaptureError, Chunk, FileReader, Iface, Origin};

const IFINDEX_MAX: u32 = i32::MAX as u32;

/// One input: where to read, the name's stem (for labels), and its `--hop` label.
#[derive(Debug, Clone)]
pub struct Input {
    pub origin: Origin,
    /// The file name's stem (Python's `Path(path).stem or "capture"`).
    pub stem: Vec<u8>,
    /// (node, iface) from `--hop NODE/IFACE=FILE`.
    pub label: Option<(Vec<u8>, Vec<u8>)>,
}

/// Where a sighting happened: tracer.model.HopLabel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopLabel {
    pub node: Vec<u8>,
    pub iface: Vec<u8>,
    pub netns: u64,
    pub ifindex: i32,
    pub linktype: u32,
}

/// A file's error, with the index of the file (the caller names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub file: usize,
    pub error: CaptureError,
}

/// The frame bytes rows point into: a read buffer shared with the reader, or
/// a buffer of its own (merged batches).
#[derive(Debug, Clone)]
pub enum Frames {
    Shared(Arc<Vec<u8>>),
    Owned(Vec<u8>),
}

impl Frames {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Frames::Shared(b) => b.as_slice(),
            Frames::Owned(b) => b.as_slice(),
        }
    }
}

/// A batch of sightings: tracer.model.ObsBatch without its side tables.
#[derive(Debug, Clone)]
pub struct Batch {
    pub rows: Vec<Obs>,
    pub frames: Frames,
}

impl Batch {
    /// The rows as an `OBS_DTYPE` buffer.
    pub fn row_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.rows.len() * ROW_SIZE];
        for (o, chunk) in self.rows.iter().zip(out.chunks_exact_mut(ROW_SIZE)) {
            if let Ok(row) = <&mut [u8; ROW_SIZE]>::try_from(chunk) {
                o.write_row(row);
            }
        }
        out
    }
}

struct Stream {
    reader: FileReader,
    input: Input,
}

/// Labels and tables shared by every file of one source.
#[derive(Default)]
struct Tables {
    /// Recorded answers (crate::local), in the order read.
    locals: Vec<crate::local::LocalNote>,
    /// Recorded relayed connections (crate::relay), in the order read.
    relays: Vec<crate::relay::RelayNote>,
    /// Recorded raw socket spans (crate::raw_block), one table per block, in the order read.
    raws: Vec<Vec<crate::raw_block::RawSpan>>,
    hops: Vec<HopLabel>,
    hop_index: HashMap<(usize, usize, u32), u32>,
    node_netns: HashMap<Vec<u8>, u64>,
    drops: DropTable,
}

/// readers.py's `FileSource.batches()`: the files read and merged here, in this thread.
struct Merge {
    streams: Vec<Stream>,
    tables: Tables,
    /// Merge state: the batch each live stream has pending.
    pending: Vec<Option<Batch>>,
    live: Vec<usize>,
    errors: Vec<FileError>,
    started: bool,
    done: bool,
}

impl Merge {
    fn new(inputs: Vec<Input>, chunk_bytes: usize, batch_rows: usize) -> Merge {
        let streams: Vec<Stream> = inputs
            .into_iter()
            .map(|input| Stream {
                reader: FileReader::with_sizes(input.origin.clone(), chunk_bytes, batch_rows),
                input,
            })
            .collect();
        let n = streams.len();
        Merge {
            streams,
            tables: Tables::default(),
            pending: vec![None; n],
            live: Vec::new(),
            errors: Vec::new(),
            started: false,
            done: false,
        }
    }

    fn bytes_read(&self) -> u64 {
        self.streams.iter().map(|s| s.reader.bytes_read).sum()
    }

    fn packets(&self) -> u64 {
        self.streams.iter().map(|s| s.reader.packets).sum()
    }

    /// Every input is a regular file (not a FIFO, not standard input, not memory).
    fn regular_files(&self) -> bool {
        self.streams.iter().all(|s| match &s.input.origin {
            Origin::Path(p) => std::fs::metadata(p).is_ok_and(|m| m.is_file()),
            _ => false,
        })
    }

    /// See [`FileSet::next_batch`].
    fn next_batch(&mut self) -> Result<Option<Batch>, FileError> {
        if self.done {
            return Ok(None);
        }
        if self.streams.len() == 1 {
            return match self.file_batch(0) {
                Ok(Some(b)) => Ok(Some(b)),
                Ok(None) => {
                    self.done = true;
                    Ok(None)
                }
                Err(e) => {
                    self.done = true;
                    Err(e)
                }
            };
        }
        if !self.started {
            self.started = true;
            self.live = (0..self.streams.len()).collect();
            for k in 0..self.streams.len() {
                self.refill(k);
            }
        }
        if !self.live.is_empty() {
            return Ok(Some(self.merge_step()));
        }
        self.done = true;
        if self.errors.is_empty() {
            Ok(None)
        } else {
            Err(self.errors.remove(0))
        }
    }

    fn refill(&mut self, k: usize) {
        match self.file_batch(k) {
            Ok(Some(b)) => {
                if let Some(slot) = self.pending.get_mut(k) {
                    *slot = Some(b);
                }
            }
            Ok(None) => self.retire(k),
            Err(e) => {
                self.errors.push(e);
                self.retire(k);
            }
        }
    }

    fn retire(&mut self, k: usize) {
        if let Some(slot) = self.pending.get_mut(k) {
            *slot = None;
        }
        self.live.retain(|&x| x != k);
    }

    /// readers.py's `_merge` loop body: emit what every stream has passed (a watermark).
    fn merge_step(&mut self) -> Batch {
        let mark = self
            .live
            .iter()
            .filter_map(|&k| self.pending.get(k)?.as_ref())
            .map(|b| b.rows.iter().map(|o| o.ts_ns).max().unwrap_or(0))
            .min()
            .unwrap_or(0);
        let mut parts: Vec<Batch> = Vec::new();
        for k in self.live.clone() {
            let Some(b) = self.pending.get_mut(k).and_then(Option::take) else {
                continue;
            };
            let taken = b.rows.iter().filter(|o| o.ts_ns <= mark).count();
            if taken == b.rows.len() {
                parts.push(b);
                self.refill(k);
            } else if taken > 0 {
                let (take, rest): (Vec<Obs>, Vec<Obs>) =
                    b.rows.into_iter().partition(|o| o.ts_ns <= mark);
                parts.push(Batch {
                    rows: take,
                    frames: b.frames.clone(),
                });
                if let Some(slot) = self.pending.get_mut(k) {
                    *slot = Some(Batch {
                        rows: rest,
                        frames: b.frames,
                    });
                }
            } else if let Some(slot) = self.pending.get_mut(k) {
                *slot = Some(b);
            }
        }
        combine(&parts)
    }

    /// The next batch of file `k` (readers.py's `_file_batches`).
    fn file_batch(&mut self, k: usize) -> Result<Option<Batch>, FileError> {
        let Some(stream) = self.streams.get_mut(k) else {
            return Ok(None);
        };
        let chunk = stream.reader.next_chunk();
        self.tables.locals.append(&mut stream.reader.locals);
        self.tables.relays.append(&mut stream.reader.relays);
        self.tables.raws.append(&mut stream.reader.raws);
        let chunk = match chunk {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(None),
            Err(error) => return Err(FileError { file: k, error }),
        };
        Ok(Some(build(&mut self.tables, k, stream, chunk)))
    }
}

/// What the reading thread hands over with each batch: the batch (or the end, or the
/// error), and what reading it taught (labels, drop reasons, progress).
struct Step {
    got: Result<Option<Batch>, FileError>,
    locals: Vec<crate::local::LocalNote>,
    /// Recorded relayed connections (crate::relay), in the order read.
    relays: Vec<crate::relay::RelayNote>,
    /// Recorded raw socket spans (crate::raw_block), one table per block, in the order read.
    raws: Vec<Vec<crate::raw_block::RawSpan>>,
    hops: Vec<HopLabel>,
    reasons: Vec<(u32, Vec<u8>)>,
    bytes_read: u64,
    packets: u64,
}

/// Batches read and decoded ahead by a thread of their own, [`READ_AHEAD`] at most.
struct Ahead {
    rx: Mutex<Receiver<Step>>,
    thread: Option<JoinHandle<()>>,
    locals: Vec<crate::local::LocalNote>,
    /// Recorded relayed connections (crate::relay), in the order read.
    relays: Vec<crate::relay::RelayNote>,
    /// Recorded raw socket spans (crate::raw_block), one table per block, in the order read.
    raws: Vec<Vec<crate::raw_block::RawSpan>>,
    hops: Vec<HopLabel>,
    reasons: Vec<(u32, Vec<u8>)>,
    bytes_read: u64,
    packets: u64,
    done: bool,
}

/// Batches a reading thread may have ready before the consumer takes them.
pub const READ_AHEAD: usize = 4;

enum Source {
    Here(Box<Merge>),
    Ahead(Box<Ahead>),
}

/// Capture files as one stream of batches (readers.py's `FileSource.batches()`).
///
/// Regular files are read and decoded ahead by a thread of their own (unless
/// [`FileSet::set_read_ahead`] says not to), so reading and decoding the next batches
/// overlaps whatever the caller does with this one; the batches, labels, drop reasons and
/// errors are the same, in the same order, as read here. A FIFO, standard input and
/// memory are read here, when asked.
pub struct FileSet {
    source: Source,
    read_ahead: bool,
    hops_told: usize,
    reasons_told: usize,
    locals_told: usize,
    relays_told: usize,
    raws_told: usize,
}

impl FileSet {
    pub fn new(inputs: Vec<Input>) -> FileSet {
        FileSet::with_sizes(
            inputs,
            crate::reader::CHUNK_BYTES,
            crate::reader::BATCH_ROWS,
        )
    }

    /// With readers.py's CHUNK_BYTES and BATCH_ROWS set (tests make them small).
    pub fn with_sizes(inputs: Vec<Input>, chunk_bytes: usize, batch_rows: usize) -> FileSet {
        FileSet {
            source: Source::Here(Box::new(Merge::new(inputs, chunk_bytes, batch_rows))),
            read_ahead: true,
            hops_told: 0,
            reasons_told: 0,
            locals_told: 0,
            relays_told: 0,
            raws_told: 0,
        }
    }

    /// Whether regular files are read ahead by a thread (the default); only before the
    /// first batch (a benchmark times the stages one after the other with it off).
    pub fn set_read_ahead(&mut self, on: bool) {
        self.read_ahead = on;
    }

    /// Every hop label so far (batches' `hop` index into it).
    pub fn hops(&self) -> &[HopLabel] {
        match &self.source {
            Source::Here(m) => &m.tables.hops,
            Source::Ahead(a) => &a.hops,
        }
    }

    fn reasons(&self) -> &[(u32, Vec<u8>)] {
        match &self.source {
            Source::Here(m) => &m.tables.drops.names,
            Source::Ahead(a) => &a.reasons,
        }
    }

    fn locals(&self) -> &[crate::local::LocalNote] {
        match &self.source {
            Source::Here(m) => &m.tables.locals,
            Source::Ahead(a) => &a.locals,
        }
    }

    /// hoptrace's recorded answers (crate::local) read since the last call.
    pub fn new_locals(&mut self) -> &[crate::local::LocalNote] {
        let told = self.locals_told;
        self.locals_told = self.locals().len();
        self.locals()
            .get(told.min(self.locals_told)..)
            .unwrap_or(&[])
    }

    fn relays(&self) -> &[crate::relay::RelayNote] {
        match &self.source {
            Source::Here(m) => &m.tables.relays,
            Source::Ahead(a) => &a.relays,
        }
    }

    /// hoptrace's recorded relayed connections (crate::relay) read since the last call.
    pub fn new_relays(&mut self) -> &[crate::relay::RelayNote] {
        let told = self.relays_told;
        self.relays_told = self.relays().len();
        self.relays()
            .get(told.min(self.relays_told)..)
            .unwrap_or(&[])
    }

    fn raws(&self) -> &[Vec<crate::raw_block::RawSpan>] {
        match &self.source {
            Source::Here(m) => &m.tables.raws,
            Source::Ahead(a) => &a.raws,
        }
    }

    /// hoptrace's recorded raw socket spans (crate::raw_block) read since the last call:
    /// one table per block, in the order read.
    pub fn new_raw_sockets(&mut self) -> &[Vec<crate::raw_block::RawSpan>] {
        let told = self.raws_told;
        self.raws_told = self.raws().len();
        self.raws().get(told.min(self.raws_told)..).unwrap_or(&[])
    }

    /// Labels made since the last call.
    pub fn new_hops(&mut self) -> &[HopLabel] {
        let told = self.hops_told;
        self.hops_told = self.hops().len();
        self.hops().get(told.min(self.hops_told)..).unwrap_or(&[])
    }

    /// Drop reasons numbered since the last call: (id, name).
    pub fn new_drop_reasons(&mut self) -> &[(u32, Vec<u8>)] {
        let told = self.reasons_told;
        self.reasons_told = self.reasons().len();
        self.reasons()
            .get(told.min(self.reasons_told)..)
            .unwrap_or(&[])
    }

    /// Bytes read so far, over all files (for a progress line).
    pub fn bytes_read(&self) -> u64 {
        match &self.source {
            Source::Here(m) => m.bytes_read(),
            Source::Ahead(a) => a.bytes_read,
        }
    }

    /// Packets read so far, over all files.
    pub fn packets(&self) -> u64 {
        match &self.source {
            Source::Here(m) => m.packets(),
            Source::Ahead(a) => a.packets,
        }
    }

    /// The next batch; `Ok(None)` at the end. With several files, a file's error
    /// comes after every other file's batches (the first error, if several).
    pub fn next_batch(&mut self) -> Result<Option<Batch>, FileError> {
        if let Source::Here(m) = &mut self.source {
            // Decided once, at the first batch.
            if !(std::mem::take(&mut self.read_ahead) && !m.done && m.regular_files()) {
                return m.next_batch();
            }
            let placeholder = Box::new(Merge::new(Vec::new(), 1, 1));
            let merge = std::mem::replace(m, placeholder);
            match start_reading(merge) {
                Ok(a) => self.source = Source::Ahead(a),
                Err(merge) => self.source = Source::Here(merge),
            }
        }
        match &mut self.source {
            Source::Here(m) => m.next_batch(),
            Source::Ahead(a) => a.next_batch(),
        }
    }
}

/// The reading thread over `merge`; `merge` back when no thread can be made.
fn start_reading(merge: Box<Merge>) -> Result<Box<Ahead>, Box<Merge>> {
    let (tx, rx) = mpsc::sync_channel::<Step>(READ_AHEAD);
    // The thread owns the merge, so it comes back only if the thread never ran: a slot.
    let slot = Arc::new(Mutex::new(Some(merge)));
    let theirs = Arc::clone(&slot);
    let spawned = std::thread::Builder::new()
        .name("hoptrace-read".into())
        .spawn(move || {
            let taken = theirs.lock().map(|mut g| g.take()).unwrap_or(None);
            if let Some(merge) = taken {
                read_ahead(merge, &tx);
            }
        });
    match spawned {
        Ok(thread) => Ok(Box::new(Ahead {
            rx: Mutex::new(rx),
            thread: Some(thread),
            locals: Vec::new(),
            relays: Vec::new(),
            raws: Vec::new(),
            hops: Vec::new(),
            reasons: Vec::new(),
            bytes_read: 0,
            packets: 0,
            done: false,
        })),
        Err(_) => {
            let back = slot.lock().map(|mut g| g.take()).unwrap_or(None);
            Err(back.unwrap_or_else(|| Box::new(Merge::new(Vec::new(), 1, 1))))
        }
    }
}

/// The reading thread: every batch, with what it taught, until the end, an error, or
/// nobody takes them any more.
fn read_ahead(mut merge: Box<Merge>, tx: &SyncSender<Step>) {
    let (mut hops_sent, mut reasons_sent, mut locals_sent, mut relays_sent) = (0, 0, 0, 0);
    let mut raws_sent = 0;
    loop {
        let got = merge.next_batch();
        let last = !matches!(got, Ok(Some(_)));
        let locals = merge
            .tables
            .locals
            .get(locals_sent..)
            .unwrap_or(&[])
            .to_vec();
        locals_sent += locals.len();
        let relays = merge
            .tables
            .relays
            .get(relays_sent..)
            .unwrap_or(&[])
            .to_vec();
        relays_sent += relays.len();
        let raws = merge.tables.raws.get(raws_sent..).unwrap_or(&[]).to_vec();
        raws_sent += raws.len();
        let hops = merge.tables.hops.get(hops_sent..).unwrap_or(&[]).to_vec();
        let names = &merge.tables.drops.names;
        let reasons = names.get(reasons_sent..).unwrap_or(&[]).to_vec();
        hops_sent += hops.len();
        reasons_sent += reasons.len();
        let step = Step {
            got,
            locals,
            relays,
            raws,
            hops,
            reasons,
            bytes_read: merge.bytes_read(),
            packets: merge.packets(),
        };
        if tx.send(step).is_err() || last {
            return;
        }
    }
}

impl Ahead {
    fn next_batch(&mut self) -> Result<Option<Batch>, FileError> {
        if self.done {
            return Ok(None);
        }
        let got = match self.rx.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        match got {
            Ok(step) => {
                self.hops.extend(step.hops);
                self.reasons.extend(step.reasons);
                self.locals.extend(step.locals);
                self.relays.extend(step.relays);
                self.raws.extend(step.raws);
                self.bytes_read = step.bytes_read;
                self.packets = step.packets;
                self.done = !matches!(step.got, Ok(Some(_)));
                step.got
            }
            Err(_) => {
                // The thread ended without saying so: it panicked. The panic goes on here,
                // as it would have, had the batch been read in this thread.
                self.done = true;
                if let Some(Err(payload)) = self.thread.take().map(JoinHandle::join) {
                    std::panic::resume_unwind(payload);
                }
                Ok(None)
            }
        }
    }
}

/// readers.py's `_combine`: rows of several buffers in time order (stable), with
/// their frames copied into one buffer.
fn combine(parts: &[Batch]) -> Batch {
    let mut all: Vec<(Obs, usize)> = Vec::with_capacity(parts.iter().map(|b| b.rows.len()).sum());
    for (p, b) in parts.iter().enumerate() {
        all.extend(b.rows.iter().map(|o| (*o, p)));
    }
    all.sort_by_key(|(o, _)| o.ts_ns); // stable
    let mut out = Vec::new();
    let rows = all
        .into_iter()
        .map(|(mut o, p)| {
            let src = parts.get(p).map_or(&[][..], |b| b.frames.bytes());
            let start = o.frame_off as usize;
            let frame = src
                .get(start..start.saturating_add(o.frame_len as usize))
                .unwrap_or(&[]);
            o.frame_off = out.len() as u64;
            out.extend_from_slice(frame);
            o
        })
        .collect();
    Batch {
        rows,
        frames: Frames::Owned(out),
    }
}

/// One chunk of file `fidx` as a batch: decoded rows, labels, comment metadata.
fn build(t: &mut Tables, fidx: usize, stream: &mut Stream, chunk: Chunk) -> Batch {
    let buf = chunk.buf.as_slice();
    let ifaces = &stream.reader.ifaces;
    let lt_of = |ifid: u32| ifaces.get(ifid as usize).map_or(0, |i| i.linktype);
    let mut rows: Vec<Obs> = chunk
        .recs
        .iter()
        .map(|r| {
            let frame = buf
                .get(r.off..r.off.saturating_add(r.len as usize))
                .unwrap_or(&[]);
            let mut o = Obs {
                ts_ns: r.ts_ns,
                frame_off: r.off as u64,
                frame_len: r.len,
                wire_len: r.wire_len,
                dir: r.dir,
                source: src_kind::FILE,
                ..Obs::default()
            };
            decode::decode(frame, lt_of(r.iface), &mut o);
            o
        })
        .collect();
    // Hops per interface in ascending order (np.unique), then rows in order: the
    // order labels are made in is the order Python made them.
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| chunk.recs.get(i).map_or(0, |r| r.iface));
    let mut i = 0;
    while let Some(&first) = order.get(i) {
        let ifid = chunk.recs.get(first).map_or(0, |r| r.iface);
        let mut j = i;
        while order
            .get(j)
            .and_then(|&x| chunk.recs.get(x))
            .is_some_and(|r| r.iface == ifid)
        {
            j += 1;
        }
        let group = order.get(i..j).unwrap_or(&[]);
        let Some(iface) = ifaces.get(ifid as usize) else {
            i = j;
            continue;
        };
        let lt = iface.linktype;
        if lt != LINKTYPE_LINUX_SLL && lt != LINKTYPE_LINUX_SLL2 {
            let h = hop(t, fidx, ifid as usize, 0, iface, &stream.input);
            for &r in group {
                if let Some(o) = rows.get_mut(r) {
                    o.hop = h;
                }
            }
        } else {
            for &r in group {
                let Some(rec) = chunk.recs.get(r) else {
                    continue;
                };
                let frame = buf
                    .get(rec.off..rec.off.saturating_add(rec.len as usize))
                    .unwrap_or(&[]);
                let (mut ifindex, pkttype) = decode::link_meta(frame, lt);
                if ifindex > IFINDEX_MAX {
                    ifindex = 0; // a garbage index: the kernel's are positive int32
                }
                let h = hop(t, fidx, ifid as usize, ifindex, iface, &stream.input);
                if let Some(o) = rows.get_mut(r) {
                    if pkttype >= 0 && o.dir == 0 {
                        o.dir = if pkttype == 4 { dir::TX } else { dir::RX };
                    }
                    o.hop = h;
                }
            }
        }
        i = j;
    }
    for o in rows.iter_mut() {
        if let Some(h) = t.hops.get(o.hop as usize) {
            o.netns = h.netns;
            o.ifindex = h.ifindex;
        }
    }
    if !chunk.meta.is_empty() {
        let metas: Vec<(usize, &[u8])> = chunk
            .meta
            .iter()
            .map(|&(row, s, n)| (row, buf.get(s..s.saturating_add(n)).unwrap_or(&[])))
            .collect();
        meta::apply(&mut rows, &metas, &mut t.drops);
    }
    Batch {
        rows,
        frames: Frames::Shared(Arc::clone(&chunk.buf)),
    }
}

fn starts_with_if(name: &[u8]) -> bool {
    name.starts_with(b"if")
}

/// readers.py's `_hop`: the label index of (file, interface, SLL2 ifindex).
fn hop(
    t: &mut Tables,
    fidx: usize,
    ifid: usize,
    ifindex: u32,
    iface: &Iface,
    input: &Input,
) -> u32 {
    let key = (fidx, ifid, ifindex);
    if let Some(&h) = t.hop_index.get(&key) {
        return h;
    }
    let name = iface.name.as_bytes();
    let (node, mut ifname): (Vec<u8>, Vec<u8>) =
        if let Some(at) = name.iter().position(|&b| b == b'/') {
            (name[..at].to_vec(), name[at + 1..].to_vec())
        } else {
            let fallback = || {
                if name.is_empty() {
                    format!("if{ifid}").into_bytes()
                } else {
                    name.to_vec()
                }
            };
            match &input.label {
                Some((node, lif)) => (
                    node.clone(),
                    if ifid == 0 { lif.clone() } else { fallback() },
                ),
                None => (input.stem.clone(), fallback()),
            }
        };
    let mut ifindex = ifindex;
    if ifindex != 0 {
        ifname = if ifname == b"any" || ifname.is_empty() || starts_with_if(&ifname) {
            format!("if{ifindex}").into_bytes()
        } else {
            let mut s = ifname;
            s.extend_from_slice(format!(":if{ifindex}").as_bytes());
            s
        };
    }
    let mut netns = 0u64;
    let mut declared = false; // netns=0 is real: a drop the kernel saw on no device
    let desc = iface.description.replace(',', " ");
    for part in pytext::split_whitespace(&desc) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        if k == "netns" {
            if let Some(n) = pytext::decimal_str(v).and_then(|n| n.as_u64()) {
                netns = n;
                declared = true;
            }
        } else if k == "ifindex" && ifindex == 0 {
            if let Some(n) = pytext::decimal_str(v).and_then(|n| n.as_u64()) {
                if n <= u64::from(IFINDEX_MAX) {
                    ifindex = n as u32;
                }
            }
        }
    }
    if netns == 0 && !declared {
        let next = t.node_netns.len() as u64 + 1;
        netns = *t.node_netns.entry(node.clone()).or_insert(next);
    }
    t.hops.push(HopLabel {
        node,
        iface: ifname,
        netns,
        ifindex: ifindex as i32,
        linktype: iface.linktype,
    });
    let h = (t.hops.len() - 1) as u32;
    t.hop_index.insert(key, h);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A pcap file of `n` Ethernet/IPv4/UDP frames, `step_us` apart from `t0_us`, its
    /// last `cut` bytes cut off.
    fn pcap(name: &str, n: u32, t0_us: u64, step_us: u64, cut: usize) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("hoptrace-files-{}-{name}", std::process::id()));
        let mut f = Vec::new();
        for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        for k in 0..n {
            let mut fr = vec![0u8; 12];
            fr.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 28]);
            fr.extend_from_slice(&(k as u16).to_be_bytes());
            fr.extend_from_slice(&[0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
            fr.extend_from_slice(&[0x30, 0x39, 0, 53, 0, 8, 0, 0]);
            let t = t0_us + u64::from(k) * step_us;
            for v in [(t / 1_000_000) as u32, (t % 1_000_000) as u32] {
                f.extend_from_slice(&v.to_le_bytes());
            }
            for v in [fr.len() as u32, fr.len() as u32] {
                f.extend_from_slice(&v.to_le_bytes());
            }
            f.extend_from_slice(&fr);
        }
        f.truncate(f.len() - cut);
        std::fs::write(&path, f).expect("temp file");
        path
    }

    type Seen = (
        Vec<(Vec<Obs>, Vec<u8>)>,
        Vec<HopLabel>,
        Option<FileError>,
        u64,
        u64,
    );

    fn read_all(paths: &[PathBuf], ahead: bool) -> Seen {
        let inputs = paths
            .iter()
            .enumerate()
            .map(|(k, p)| Input {
                origin: Origin::Path(p.clone()),
                stem: format!("f{k}").into_bytes(),
                label: None,
            })
            .collect();
        let mut set = FileSet::with_sizes(inputs, 4096, 50);
        set.set_read_ahead(ahead);
        let (mut batches, mut hops, mut error) = (Vec::new(), Vec::new(), None);
        loop {
            match set.next_batch() {
                Ok(Some(b)) => {
                    hops.extend_from_slice(set.new_hops());
                    batches.push((b.rows.clone(), b.frames.bytes().to_vec()));
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        assert!(
            matches!(set.next_batch(), Ok(None)),
            "the end stays the end"
        );
        assert_eq!(hops, set.hops());
        (batches, hops, error, set.bytes_read(), set.packets())
    }

    #[test]
    fn read_ahead_gives_what_reading_here_gives() {
        let a = pcap("a.pcap", 400, 1_000_000, 7, 0);
        let b = pcap("b.pcap", 300, 1_000_003, 11, 0);
        let bad = pcap("bad.pcap", 250, 1_000_001, 5, 9);
        for set in [
            vec![a.clone()],
            vec![a.clone(), b.clone()],
            vec![bad.clone()],
            vec![a.clone(), bad.clone(), b.clone()],
        ] {
            let here = read_all(&set, false);
            let ahead = read_all(&set, true);
            assert!(here.0.len() > 3, "several batches");
            assert_eq!(here.0, ahead.0);
            assert_eq!(here.1, ahead.1);
            assert_eq!(here.2, ahead.2);
            assert_eq!((here.3, here.4), (ahead.3, ahead.4));
            assert_eq!(here.2.is_some(), set.contains(&bad));
        }
        for p in [a, b, bad] {
            let _ = std::fs::remove_file(p);
        }
    }
}
