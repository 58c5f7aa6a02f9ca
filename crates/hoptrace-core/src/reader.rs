//! One capture file (pcap or pcapng), read in chunks with bounded memory and
//! handed out as [`Chunk`]s: the records of one read buffer, at most
//! `batch_rows` of them. This is tracer/sources/files.py's `_FileReader`, step for
//! step (same buffer sizes, same cuts between chunks, same errors), so a
//! batch of the core is the batch Python made.
//!
//! The file is read with plain `read()` into a buffer of `chunk_bytes` (plus
//! what is left of the previous one); a chunk's frames are ranges of that
//! buffer, which is shared (`Arc`), never copied per packet. A FIFO or stdin
//! (`-`) streams: a chunk is handed out before the next read blocks.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use crate::decode;

/// Records per chunk (readers.py's BATCH_ROWS).
pub const BATCH_ROWS: usize = 4096;
/// Bytes per read (readers.py's CHUNK_BYTES).
pub const CHUNK_BYTES: usize = 1 << 20;
/// Read buffers kept for reuse (the engine holds a batch or two, a read-ahead a few more).
const SPARE_BUFFERS: usize = 8;
/// libpcap refuses records bigger than this (MAXIMUM_SNAPLEN); so do we.
pub const MAX_RECORD: u32 = 262_144;
/// The largest pcapng block read.
pub const MAX_BLOCK: u32 = 16 << 20;

pub const PCAP_MAGIC_US: u32 = 0xA1B2_C3D4;
pub const PCAP_MAGIC_NS: u32 = 0xA1B2_3C4D;
pub const PCAPNG_SHB: u32 = 0x0A0D_0D0A;

/// What is wrong with a capture file: one line, without the file's name (the
/// caller prefixes it, as `CaptureFileError` shows "FILE: problem").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureError {
    IsDirectory,
    /// Opening failed: the OS's reason (strerror).
    Open(String),
    Read {
        after: u64,
        reason: String,
    },
    Empty,
    TruncatedFileHeader,
    NotCapture {
        magic: u32,
    },
    TruncatedPcapHeader,
    UnsupportedLinkType(Vec<u32>),
    NoPackets,
    TruncatedRecordHeader {
        after: u64,
    },
    BadRecordLength {
        len: u32,
        after: u64,
    },
    TruncatedPacket {
        after: u64,
    },
    TruncatedBlock {
        after: u64,
    },
    BadByteOrder,
    BadBlockLength {
        len: u32,
        after: u64,
    },
    BadPacketBlock {
        after: u64,
    },
    BadInterfaceBlock,
    BadPacketLength {
        len: u32,
        after: u64,
    },
    UndeclaredInterface {
        ifid: u32,
        after: u64,
    },
}

/// `LINKTYPE_*` names for messages, as readers.py's `linktype_name`.
pub fn linktype_name(lt: u32) -> String {
    let name = match lt {
        0 => "NULL",
        1 => "ETHERNET",
        9 => "PPP",
        12 | 14 | 101 => "RAW",
        104 => "C_HDLC",
        105 => "IEEE802_11",
        107 => "FRELAY",
        108 => "LOOP",
        113 => "LINUX_SLL",
        127 => "IEEE802_11_RADIOTAP",
        143 => "DOCSIS",
        192 => "PPI",
        195 => "IEEE802_15_4",
        228 => "IPV4",
        229 => "IPV6",
        276 => "LINUX_SLL2",
        _ => return lt.to_string(),
    };
    format!("{lt} ({name})")
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CaptureError::*;
        match self {
            IsDirectory => write!(f, "is a directory, not a capture file"),
            Open(reason) => write!(f, "{reason}"),
            Read { after, reason } => write!(f, "read error after {after} packets: {reason}"),
            Empty => write!(f, "empty file"),
            TruncatedFileHeader => write!(f, "truncated file header"),
            NotCapture { magic } => write!(f, "not a pcap or pcapng file (magic 0x{magic:08x})"),
            TruncatedPcapHeader => write!(f, "truncated pcap file header"),
            UnsupportedLinkType(lts) => {
                let names: Vec<String> = lts.iter().map(|&lt| linktype_name(lt)).collect();
                write!(f, "unsupported link type {}", names.join(", "))
            }
            NoPackets => write!(f, "no packets"),
            TruncatedRecordHeader { after } => {
                write!(f, "truncated record header after {after} packets")
            }
            BadRecordLength { len, after } => {
                write!(f, "bad record length {len} after {after} packets")
            }
            TruncatedPacket { after } => write!(f, "truncated packet after {after} packets"),
            TruncatedBlock { after } => write!(f, "truncated block after {after} packets"),
            BadByteOrder => write!(f, "bad pcapng byte-order magic"),
            BadBlockLength { len, after } => {
                write!(f, "bad block length {len} after {after} packets")
            }
            BadPacketBlock { after } => write!(f, "bad packet block after {after} packets"),
            BadInterfaceBlock => write!(f, "bad interface description block"),
            BadPacketLength { len, after } => {
                write!(f, "bad packet length {len} after {after} packets")
            }
            UndeclaredInterface { ifid, after } => {
                write!(
                    f,
                    "packet on undeclared interface {ifid} after {after} packets"
                )
            }
        }
    }
}

impl std::error::Error for CaptureError {}

/// The OS's reason for an I/O error, as Python's `exc.strerror` (no " (os error N)").
pub fn strerror(e: &std::io::Error) -> String {
    let text = e.to_string();
    match (e.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(at)) => text[..at].to_string(),
        _ => text,
    }
}

/// An empty buffer of at least `cap` bytes: a spare one nothing else holds, else new.
fn reusable(spare: &mut Vec<Arc<Vec<u8>>>, cap: usize) -> Vec<u8> {
    let free = spare
        .iter_mut()
        .position(|b| b.capacity() >= cap && Arc::get_mut(b).is_some());
    if let Some(k) = free {
        if let Ok(mut v) = Arc::try_unwrap(spare.swap_remove(k)) {
            v.clear();
            return v;
        }
    }
    Vec::with_capacity(cap)
}

/// Timestamp units of an interface: `ts * num / den + offset` is UTC ns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsUnit {
    pub num: u64,
    /// The divisor: 10^k (`pow2` false) or 2^k.
    pub den_exp: u32,
    pub pow2: bool,
    pub offset_ns: i128,
}

impl TsUnit {
    pub const MICROS: TsUnit = TsUnit {
        num: 1000,
        den_exp: 0,
        pow2: false,
        offset_ns: 0,
    };

    /// pcapng's `if_tsresol` byte.
    pub fn from_tsresol(r: u8) -> (u64, u32, bool) {
        if r & 0x80 != 0 {
            (1_000_000_000, u32::from(r & 0x7F), true)
        } else if r <= 9 {
            (10u64.pow(9 - u32::from(r)), 0, false)
        } else {
            (1, u32::from(r) - 9, false)
        }
    }

    /// `max(0, min(ts * num // den + offset, 2**64 - 1))`.
    #[inline]
    pub fn ns(&self, ts: u64) -> u64 {
        // The usual units (ns, µs: no divisor, no offset) without 128-bit division.
        if self.den_exp == 0 && self.offset_ns == 0 {
            if let Some(v) = ts.checked_mul(self.num) {
                return v;
            }
        }
        let prod = u128::from(ts) * u128::from(self.num);
        let den: Option<u128> = if self.pow2 {
            1u128.checked_shl(self.den_exp)
        } else {
            10u128.checked_pow(self.den_exp)
        };
        // A divisor beyond u128 is beyond any product too: the quotient is 0.
        let q = den.map_or(0, |d| prod / d);
        let v = q as i128 + self.offset_ns;
        v.clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// One interface of a file (pcap has one).
#[derive(Debug, Clone)]
pub struct Iface {
    pub linktype: u32,
    pub name: String,
    pub description: String,
    pub ts: TsUnit,
}

impl Iface {
    pub fn new(linktype: u32) -> Iface {
        Iface {
            linktype,
            name: String::new(),
            description: String::new(),
            ts: TsUnit::MICROS,
        }
    }
}

/// One packet record of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    /// Where the frame starts in the chunk's buffer.
    pub off: usize,
    pub len: u32,
    pub ts_ns: u64,
    /// Interface index within the file (all sections).
    pub iface: u32,
    pub wire_len: u32,
    /// Direction from pcapng flags, 0 = not said.
    pub dir: u8,
}

/// Records read from one buffer: the raw material of one batch.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub buf: Arc<Vec<u8>>,
    pub recs: Vec<Rec>,
    /// (record index, start, length) of hoptrace JSON comments in `buf`.
    pub meta: Vec<(usize, usize, usize)>,
}

impl Chunk {
    fn new(buf: &Arc<Vec<u8>>) -> Chunk {
        Chunk {
            buf: Arc::clone(buf),
            recs: Vec::new(),
            meta: Vec::new(),
        }
    }
}

/// Where a capture comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Path(PathBuf),
    /// `-`: standard input.
    Stdin,
    /// Bytes in memory (fuzzing, tests).
    Memory(Arc<[u8]>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Start,
    Pcap { big: bool, mult: u64 },
    Pcapng { big: bool },
    Done,
}

/// One capture file, read chunk by chunk.
pub struct FileReader {
    origin: Origin,
    src: Option<Box<dyn Read + Send + Sync>>,
    pub(crate) data: Arc<Vec<u8>>,
    pub(crate) pos: usize,
    eof: bool,
    pub(crate) chunk_bytes: usize,
    pub(crate) batch_rows: usize,
    /// Interfaces declared so far (all sections; `section_base` is the current section's first).
    pub ifaces: Vec<Iface>,
    pub(crate) section_base: usize,
    /// Packets read (of supported link types).
    pub packets: u64,
    /// Bytes read from the file so far (progress: `FileSet::bytes_read`).
    pub bytes_read: u64,
    pub(crate) skipped: BTreeSet<u32>,
    pub(crate) format: Format,
    pub(crate) chunk: Chunk,
    pub(crate) pend: Vec<usize>,
    ready: VecDeque<Chunk>,
    /// Read buffers handed out with chunks, kept to be filled again once every batch
    /// made from them is gone (no fresh pages to fault in per chunk).
    spare: Vec<Arc<Vec<u8>>>,
    failed: Option<CaptureError>,
    /// A damaged block found while parsing, raised once the good records before it are out.
    pub(crate) error: Option<CaptureError>,
    /// hoptrace's recorded answers read so far and not taken (crate::local: custom blocks).
    pub locals: Vec<crate::local::LocalNote>,
    /// hoptrace's recorded relayed connections read so far and not taken (crate::relay).
    pub relays: Vec<crate::relay::RelayNote>,
    /// hoptrace's recorded raw socket spans read so far and not taken (crate::raw_block):
    /// one table per block.
    pub raws: Vec<Vec<crate::raw_block::RawSpan>>,
}

/// What one step of a format's loop did.
pub(crate) enum Flow {
    Continue,
    Finished,
}

impl FileReader {
    pub fn new(origin: Origin) -> FileReader {
        FileReader::with_sizes(origin, CHUNK_BYTES, BATCH_ROWS)
    }

    pub fn with_sizes(origin: Origin, chunk_bytes: usize, batch_rows: usize) -> FileReader {
        let data = Arc::new(Vec::new());
        FileReader {
            origin,
            src: None,
            chunk: Chunk::new(&data),
            data,
            pos: 0,
            eof: false,
            chunk_bytes: chunk_bytes.max(1),
            batch_rows: batch_rows.max(1),
            ifaces: Vec::new(),
            section_base: 0,
            packets: 0,
            bytes_read: 0,
            skipped: BTreeSet::new(),
            format: Format::Start,
            pend: Vec::new(),
            ready: VecDeque::new(),
            spare: Vec::new(),
            failed: None,
            error: None,
            locals: Vec::new(),
            relays: Vec::new(),
            raws: Vec::new(),
        }
    }

    /// The next chunk; `Ok(None)` at the end; an error after the last good chunk.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, CaptureError> {
        loop {
            if let Some(c) = self.ready.pop_front() {
                return Ok(Some(c));
            }
            if let Some(e) = self.failed.take() {
                self.finish();
                return Err(e);
            }
            let step = match self.format {
                Format::Done => return Ok(None),
                Format::Start => self.start().map(|()| Flow::Continue),
                Format::Pcap { big, mult } => crate::pcap::step(self, big, mult),
                Format::Pcapng { big } => crate::pcapng::step(self, big),
            };
            match step {
                Ok(Flow::Continue) => {}
                Ok(Flow::Finished) => {
                    if self.packets == 0 {
                        self.failed = Some(if self.skipped.is_empty() {
                            CaptureError::NoPackets
                        } else {
                            CaptureError::UnsupportedLinkType(
                                self.skipped.iter().copied().collect(),
                            )
                        });
                    } else {
                        self.finish();
                    }
                }
                Err(e) => self.failed = Some(e),
            }
        }
    }

    fn finish(&mut self) {
        self.format = Format::Done;
        self.src = None;
        self.pend = Vec::new();
        self.spare = Vec::new();
    }

    fn start(&mut self) -> Result<(), CaptureError> {
        let src: Box<dyn Read + Send + Sync> = match &self.origin {
            Origin::Stdin => {
                use std::os::fd::AsFd;
                let fd = std::io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| CaptureError::Open(strerror(&e)))?;
                Box::new(File::from(fd))
            }
            Origin::Memory(bytes) => Box::new(std::io::Cursor::new(Arc::clone(bytes))),
            Origin::Path(p) => {
                // Python's Path("") is ".": a directory.
                let p = if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.clone()
                };
                if p.is_dir() {
                    return Err(CaptureError::IsDirectory);
                }
                Box::new(File::open(&p).map_err(|e| CaptureError::Open(strerror(&e)))?)
            }
        };
        self.src = Some(src);
        if !self.ensure(4)? {
            return Err(if self.data.is_empty() {
                CaptureError::Empty
            } else {
                CaptureError::TruncatedFileHeader
            });
        }
        let head = [self.byte(0), self.byte(1), self.byte(2), self.byte(3)];
        let magic_be = u32::from_be_bytes(head);
        let magic_le = u32::from_le_bytes(head);
        if magic_le == PCAPNG_SHB {
            self.chunk = Chunk::new(&self.data);
            self.format = Format::Pcapng { big: false };
            Ok(())
        } else if [PCAP_MAGIC_US, PCAP_MAGIC_NS].contains(&magic_be)
            || [PCAP_MAGIC_US, PCAP_MAGIC_NS].contains(&magic_le)
        {
            crate::pcap::start(self)
        } else {
            Err(CaptureError::NotCapture { magic: magic_be })
        }
    }

    pub(crate) fn byte(&self, at: usize) -> u8 {
        self.data.get(at).copied().unwrap_or(0)
    }

    #[inline]
    pub(crate) fn u16_at(&self, at: usize, big: bool) -> u16 {
        let b = match self.data.get(at..at.saturating_add(2)) {
            Some(&[b0, b1]) => [b0, b1],
            _ => [self.byte(at), self.byte(at + 1)],
        };
        if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    #[inline]
    pub(crate) fn u32_at(&self, at: usize, big: bool) -> u32 {
        let b = match self.data.get(at..at.saturating_add(4)) {
            Some(&[b0, b1, b2, b3]) => [b0, b1, b2, b3],
            // Past the end: the bytes there read as 0.
            _ => [
                self.byte(at),
                self.byte(at + 1),
                self.byte(at + 2),
                self.byte(at + 3),
            ],
        };
        if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    pub(crate) fn avail(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// Make `need` bytes available at `pos` (readers.py's `_ensure`); false at EOF (short).
    pub(crate) fn ensure(&mut self, need: usize) -> Result<bool, CaptureError> {
        while self.avail() < need {
            let Some(src) = self.src.as_mut() else {
                return Ok(false);
            };
            if self.eof {
                return Ok(false);
            }
            let want = self.chunk_bytes.max(need);
            let rest = self.data.get(self.pos..).unwrap_or(&[]);
            let mut fresh = reusable(&mut self.spare, rest.len() + want);
            fresh.extend_from_slice(rest);
            let before = fresh.len();
            src.take(want as u64)
                .read_to_end(&mut fresh)
                .map_err(|e| CaptureError::Read {
                    after: self.packets,
                    reason: strerror(&e),
                })?;
            if fresh.len() == before {
                self.eof = true;
                return Ok(false);
            }
            self.bytes_read += (fresh.len() - before) as u64;
            let old = std::mem::replace(&mut self.data, Arc::new(fresh));
            if self.spare.len() < SPARE_BUFFERS && old.capacity() >= self.chunk_bytes {
                self.spare.push(old);
            }
            self.pos = 0;
        }
        Ok(true)
    }

    /// A fresh chunk over the current buffer.
    pub(crate) fn new_chunk(&mut self) {
        self.chunk = Chunk::new(&self.data);
    }

    /// Hand the current chunk out if it has records; true when it did.
    pub(crate) fn push_chunk(&mut self) -> bool {
        if self.chunk.recs.is_empty() {
            return false;
        }
        let fresh = Chunk::new(&self.chunk.buf);
        self.ready
            .push_back(std::mem::replace(&mut self.chunk, fresh));
        true
    }

    /// A record for interface `ifid` (global index) at the current chunk, unless
    /// its link type is not decoded. The timestamp is in the interface's units.
    pub(crate) fn linktype_ok(&mut self, ifid: usize) -> bool {
        let lt = self.ifaces.get(ifid).map_or(0, |i| i.linktype);
        if decode::is_supported(lt) {
            true
        } else {
            self.skipped.insert(lt);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_units() {
        let (num, den_exp, pow2) = TsUnit::from_tsresol(0x80 | 10);
        let u = TsUnit {
            num,
            den_exp,
            pow2,
            offset_ns: 0,
        };
        assert_eq!(u.ns(1024 * 5 + 512), 5_500_000_000);
        let (num, den_exp, pow2) = TsUnit::from_tsresol(127);
        let u = TsUnit {
            num,
            den_exp,
            pow2,
            offset_ns: -5,
        };
        assert_eq!(u.ns(u64::MAX), 0);
        let big = TsUnit {
            num: 1_000_000_000,
            den_exp: 0,
            pow2: false,
            offset_ns: 0,
        };
        assert_eq!(big.ns(u64::MAX), u64::MAX);
        assert_eq!(TsUnit::MICROS.ns(7), 7000);
    }

    #[test]
    fn messages() {
        assert_eq!(
            CaptureError::UnsupportedLinkType(vec![9, 127, 300]).to_string(),
            "unsupported link type 9 (PPP), 127 (IEEE802_11_RADIOTAP), 300"
        );
        assert_eq!(
            CaptureError::NotCapture { magic: 0x7468_6973 }.to_string(),
            "not a pcap or pcapng file (magic 0x74686973)"
        );
    }
}
