//! The Parquet export's three tables (tracer/sinks/analysis.py's schema: observations, paths,
//! nat) as columns, filled path by path from the finished paths: numbers in one `Vec` per
//! column, strings as Arrow lays them out (offsets and bytes), repeating strings as
//! dictionary codes and a dictionary. Python builds pyarrow arrays from these buffers
//! (`pa.Array.from_buffers`, `pa.DictionaryArray.from_arrays`) without a Python object
//! per row.
//!
//! Every dictionary holds its values in order of first appearance down the column, as
//! pyarrow's dictionary builder (`pa.array(values, dictionary type)`) and
//! `dictionary_encode` make them; except `proto`, whose dictionary is one name per
//! (family, protocol, ethertype) present, in that key's numeric order (analysis.py
//! `_proto_names`). A code of -1 is a null. Optional numbers keep their value slot (0
//! when absent) and say presence through the row's `has` bits (observations) or a
//! `valid` column (paths' ports, NAT endpoints).

use std::hash::Hash;

use crate::finish::ShownPath;
use crate::hash::FastMap;
use crate::labels::Labels;
use crate::nat::{Hook, NatKind};
use crate::obs::Obs;
use crate::render::push_proto_name;
use crate::text::{push_addr, push_u64};
use crate::view;

const ETH_P_ARP: u16 = 0x0806;

/// Strings as Arrow's `string` lays them out: n + 1 offsets into the bytes. Offsets
/// are 32-bit, as that type's; a column whose bytes outgrow them says so in `overflow`
/// (its offsets are then wrong, and the column must not be used).
#[derive(Debug, Clone)]
pub struct StrColumn {
    pub offsets: Vec<i32>,
    pub data: Vec<u8>,
    pub overflow: bool,
}

impl Default for StrColumn {
    fn default() -> Self {
        StrColumn {
            offsets: vec![0],
            data: Vec::new(),
            overflow: false,
        }
    }
}

impl StrColumn {
    /// The next string, written by `text` at the end of the bytes.
    #[inline]
    pub fn push_with(&mut self, text: impl FnOnce(&mut Vec<u8>)) {
        text(&mut self.data);
        self.end_string();
    }

    #[inline]
    fn end_string(&mut self) {
        let end = match i32::try_from(self.data.len()) {
            Ok(end) => end,
            Err(_) => {
                self.overflow = true;
                i32::MAX
            }
        };
        self.offsets.push(end);
    }

    pub fn push(&mut self, s: &[u8]) {
        self.push_with(|out| out.extend_from_slice(s));
    }

    /// The last string of `other` (nothing when it is empty).
    #[inline]
    pub fn push_last_of(&mut self, other: &StrColumn) {
        let n = other.offsets.len();
        let (Some(&a), Some(&b)) = (other.offsets.get(n.wrapping_sub(2)), other.offsets.last())
        else {
            return;
        };
        let (Ok(a), Ok(b)) = (usize::try_from(a), usize::try_from(b)) else {
            return;
        };
        if let Some(s) = other.data.get(a..b) {
            self.data.extend_from_slice(s);
        }
        self.end_string();
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th string.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let a = usize::try_from(*self.offsets.get(i)?).ok()?;
        let b = usize::try_from(*self.offsets.get(i + 1)?).ok()?;
        self.data.get(a..b)
    }
}

/// Rows per chunk of a column. Columns grow chunk by chunk, each allocated once at its
/// full size: no reallocation copies the rows already in, whatever the row count. pyarrow
/// writes a chunked column as the same Parquet bytes as one array (tests/unit/
/// test_core_report.py checks both the core's chunked tables and pyarrow's writer).
pub const CHUNK_ROWS: usize = 1 << 14;

/// A column of numbers (or flags) in chunks of [`CHUNK_ROWS`] rows.
#[derive(Debug, Clone)]
pub struct Chunked<T> {
    pub chunks: Vec<Vec<T>>,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked { chunks: Vec::new() }
    }
}

impl<T: Copy> Chunked<T> {
    #[inline]
    pub fn push(&mut self, v: T) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK_ROWS => c.push(v),
            _ => self.push_in_new_chunk(v),
        }
    }

    #[cold]
    fn push_in_new_chunk(&mut self, v: T) {
        let mut c = Vec::with_capacity(CHUNK_ROWS);
        c.push(v);
        self.chunks.push(c);
    }

    /// Rows in order; a path's rows in one go when its chunk has room for them all.
    #[inline]
    pub fn extend<I: ExactSizeIterator<Item = T>>(&mut self, rows: I) {
        match self.chunks.last_mut() {
            Some(c) if c.len() + rows.len() <= CHUNK_ROWS => c.extend(rows),
            _ => {
                for v in rows {
                    self.push(v);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks.iter_mut().flatten()
    }

    /// The rows in one `Vec` (for tests and small tables).
    pub fn to_vec(&self) -> Vec<T> {
        self.chunks.iter().flatten().copied().collect()
    }
}

/// A string per row, in chunks of [`CHUNK_ROWS`] rows (each with its own offsets).
#[derive(Debug, Clone, Default)]
pub struct ChunkedStr {
    pub chunks: Vec<StrColumn>,
}

impl ChunkedStr {
    /// Starts a chunk when the last one is full (or there is none).
    #[inline]
    fn make_room(&mut self) {
        if self.chunks.last().is_none_or(|c| c.len() >= CHUNK_ROWS) {
            let mut c = StrColumn::default();
            c.offsets.reserve_exact(CHUNK_ROWS);
            self.chunks.push(c);
        }
    }

    #[inline]
    pub fn push_with(&mut self, text: impl FnOnce(&mut Vec<u8>)) {
        self.make_room();
        if let Some(c) = self.chunks.last_mut() {
            c.push_with(text);
        }
    }

    /// The last row of `other` again, as this column's next row (nothing when it has none).
    #[inline]
    pub fn push_last_of(&mut self, other: &ChunkedStr) {
        if let Some(last) = other.chunks.last() {
            self.make_room();
            if let Some(c) = self.chunks.last_mut() {
                c.push_last_of(last);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.chunks.iter().map(StrColumn::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a chunk outgrew 32-bit offsets (then the column must not be used).
    pub fn overflow(&self) -> bool {
        self.chunks.iter().any(|c| c.overflow)
    }
}

/// The key of a dictionary column's row: what determines its text. Small integer keys
/// (label ids, direction, drop reason codes) have a slot in a dense table, so most rows
/// cost an index instead of a hash.
pub trait DictKey: Hash + Eq + Copy {
    fn slot(&self) -> Option<usize>;
}

/// Keys below this have a dense slot (a table of at most 256 KiB per column).
const DENSE_SLOTS: usize = 1 << 16;

impl DictKey for u8 {
    #[inline]
    fn slot(&self) -> Option<usize> {
        Some(usize::from(*self))
    }
}

impl DictKey for u32 {
    #[inline]
    fn slot(&self) -> Option<usize> {
        usize::try_from(*self).ok().filter(|&i| i < DENSE_SLOTS)
    }
}

impl DictKey for (u8, [u8; 16]) {
    #[inline]
    fn slot(&self) -> Option<usize> {
        None
    }
}

/// A dense slot not filled yet (codes are -1 for null, else >= 0).
const UNSEEN: i32 = i32::MIN;

/// A dictionary-encoded string column: codes into its distinct values, in order of first
/// appearance. Rows are pushed by a key that determines the text (a label id, an
/// address...): the text is made once per key, and equal texts of different keys share
/// one value. The code of a key is found by: the previous row's key, else its dense slot,
/// else a hash lookup.
#[derive(Debug, Clone)]
pub struct DictColumn<K> {
    pub values: StrColumn,
    pub codes: Chunked<i32>,
    by_value: FastMap<Vec<u8>, i32>,
    by_key: FastMap<K, i32>,
    dense: Vec<i32>,
    last: Option<(K, i32)>,
    scratch: Vec<u8>,
}

impl<K> Default for DictColumn<K> {
    fn default() -> Self {
        DictColumn {
            values: StrColumn::default(),
            codes: Chunked::default(),
            by_value: FastMap::default(),
            by_key: FastMap::default(),
            dense: Vec::new(),
            last: None,
            scratch: Vec::new(),
        }
    }
}

impl<K: DictKey> DictColumn<K> {
    /// A row whose text `text` writes (false: the row is null); called once per new key.
    #[inline]
    pub fn push(&mut self, key: K, text: impl FnOnce(&mut Vec<u8>) -> bool) {
        let code = match self.last {
            Some((k, c)) if k == key => c,
            _ => {
                let c = self.code_of(key, text);
                self.last = Some((key, c));
                c
            }
        };
        self.codes.push(code);
    }

    #[inline]
    fn code_of(&mut self, key: K, text: impl FnOnce(&mut Vec<u8>) -> bool) -> i32 {
        match key.slot() {
            Some(i) => match self.dense.get(i) {
                Some(&c) if c != UNSEEN => c,
                _ => {
                    let c = self.new_code(text);
                    if self.dense.len() <= i {
                        self.dense.resize(i + 1, UNSEEN);
                    }
                    if let Some(slot) = self.dense.get_mut(i) {
                        *slot = c;
                    }
                    c
                }
            },
            None => match self.by_key.get(&key) {
                Some(&c) => c,
                None => {
                    let c = self.new_code(text);
                    self.by_key.insert(key, c);
                    c
                }
            },
        }
    }

    #[cold]
    fn new_code(&mut self, text: impl FnOnce(&mut Vec<u8>) -> bool) -> i32 {
        self.scratch.clear();
        if !text(&mut self.scratch) {
            return -1;
        }
        if let Some(&c) = self.by_value.get(&self.scratch) {
            return c;
        }
        let c = i32::try_from(self.values.len()).unwrap_or(i32::MAX);
        self.values.push(&self.scratch);
        self.by_value.insert(self.scratch.clone(), c);
        c
    }
}

/// `proto`'s column: codes into one name per (family, protocol, ethertype) key present,
/// the keys in numeric order (known once every row is in: [`ProtoColumn::finish`]).
#[derive(Debug, Clone, Default)]
pub struct ProtoColumn {
    keys: Vec<u64>,
    by_key: FastMap<u64, i32>,
    last: Option<(u64, i32)>,
    pub codes: Chunked<i32>,
}

impl ProtoColumn {
    #[inline]
    pub fn push(&mut self, o: &Obs) {
        let key = (u64::from(o.family) << 32) | (u64::from(o.proto) << 16) | u64::from(o.ethertype);
        let code = match self.last {
            Some((k, c)) if k == key => c,
            _ => {
                let c = match self.by_key.get(&key) {
                    Some(&c) => c,
                    None => {
                        let c = i32::try_from(self.keys.len()).unwrap_or(i32::MAX);
                        self.keys.push(key);
                        self.by_key.insert(key, c);
                        c
                    }
                };
                self.last = Some((key, c));
                c
            }
        };
        self.codes.push(code);
    }

    /// The codes renumbered to the keys' order, and the names.
    pub fn finish(&mut self) -> StrColumn {
        let mut order: Vec<usize> = (0..self.keys.len()).collect();
        order.sort_by_key(|&i| self.keys.get(i).copied().unwrap_or(0));
        let mut renumber = vec![0i32; self.keys.len()];
        let mut names = StrColumn::default();
        for (rank, &i) in order.iter().enumerate() {
            if let Some(slot) = renumber.get_mut(i) {
                *slot = i32::try_from(rank).unwrap_or(i32::MAX);
            }
            let key = self.keys.get(i).copied().unwrap_or(0);
            names.push_with(|out| {
                push_proto_name(out, (key >> 32) as u8, (key >> 16) as u8, key as u16)
            });
        }
        for c in self.codes.iter_mut() {
            *c = usize::try_from(*c)
                .ok()
                .and_then(|i| renumber.get(i))
                .copied()
                .unwrap_or(-1);
        }
        // Sorted once: pushing again would mix numbering schemes.
        self.keys.clear();
        self.by_key.clear();
        self.last = None;
        names
    }
}

/// The family an address is shown in (ARP's protocol addresses are IPv4) and the bytes
/// that reach its text: the key of an address column.
#[inline]
fn addr_key(family: u8, ethertype: u16, raw: &[u8; 16]) -> (u8, [u8; 16]) {
    let fam = if family == 0 && ethertype == ETH_P_ARP {
        4
    } else {
        family
    };
    let bytes = match fam {
        4 | 6 => view::norm_addr(fam, raw),
        _ => [0; 16],
    };
    (fam, bytes)
}

fn push_addr_row(col: &mut DictColumn<(u8, [u8; 16])>, key: (u8, [u8; 16])) {
    col.push(key, |out| {
        push_addr(out, key.0, &key.1);
        true
    });
}

fn push_drop_reason(col: &mut DictColumn<u32>, code: u32, labels: &Labels) {
    col.push(code, |out| {
        if code == 0 {
            return false;
        }
        push_drop_reason_text(out, code, labels);
        true
    });
}

/// A drop reason's name, or `UNKNOWN(code)` (tests/reference/correlate.py `observation`).
pub fn push_drop_reason_text(out: &mut Vec<u8>, code: u32, labels: &Labels) {
    match labels.drop_reason(code) {
        Some(name) => out.extend_from_slice(name.as_bytes()),
        None => {
            out.extend_from_slice(b"UNKNOWN(");
            push_u64(out, u64::from(code));
            out.push(b')');
        }
    }
}

/// `node/iface` of a label.
pub fn push_hop_name(out: &mut Vec<u8>, hop: u32, labels: &Labels) {
    let l = labels.get(hop);
    out.extend_from_slice(&l.node_raw);
    out.push(b'/');
    out.extend_from_slice(&l.iface_raw);
}

/// observations.parquet's columns, one row per sighting.
#[derive(Debug, Clone, Default)]
pub struct ObsColumns {
    /// The row's path's id and flow (null when not `flow_valid`), as the paths table has them.
    pub path_id: ChunkedStr,
    pub flow: ChunkedStr,
    pub flow_valid: Chunked<bool>,
    pub hop: Chunked<u16>,
    pub ts_ns: Chunked<i64>,
    pub since_first_ns: Chunked<i64>,
    pub node: DictColumn<u32>,
    pub iface: DictColumn<u32>,
    pub netns: Chunked<i64>,
    pub ifindex: Chunked<i32>,
    pub dir: DictColumn<u8>,
    pub source: DictColumn<u8>,
    pub family: Chunked<u8>,
    pub proto: ProtoColumn,
    pub ethertype: Chunked<u16>,
    pub src: DictColumn<(u8, [u8; 16])>,
    pub dst: DictColumn<(u8, [u8; 16])>,
    /// `has` bits: which of the optional numbers below a row has.
    pub has: Chunked<u16>,
    pub sport: Chunked<u16>,
    pub dport: Chunked<u16>,
    pub ip_id: Chunked<u32>,
    pub ttl: Chunked<u8>,
    pub tcp_flags: Chunked<u8>,
    pub tcp_seq: Chunked<u32>,
    pub tcp_ack: Chunked<u32>,
    pub icmp_type: Chunked<u8>,
    pub icmp_code: Chunked<u8>,
    pub icmp_id: Chunked<u16>,
    pub icmp_seq: Chunked<u16>,
    pub length: Chunked<u32>,
    pub wire_len: Chunked<u32>,
    /// 0: unknown (null).
    pub skb: Chunked<u64>,
    pub digest: Chunked<u64>,
    pub drop_reason: DictColumn<u32>,
}

/// paths.parquet's columns, one row per path.
#[derive(Debug, Clone, Default)]
pub struct PathColumns {
    pub path_id: ChunkedStr,
    pub flow: ChunkedStr,
    pub flow_valid: Chunked<bool>,
    pub proto: ProtoColumn,
    pub verdict: DictColumn<u8>,
    pub hops: Chunked<u16>,
    pub first_ts_ns: Chunked<i64>,
    pub last_ts_ns: Chunked<i64>,
    pub latency_ns: Chunked<i64>,
    pub first_hop: DictColumn<u32>,
    pub last_hop: DictColumn<u32>,
    pub src: DictColumn<(u8, [u8; 16])>,
    pub dst: DictColumn<(u8, [u8; 16])>,
    /// The first hop's `has` bits (sport and dport are there when it has ports).
    pub has: Chunked<u16>,
    pub sport: Chunked<u16>,
    pub dport: Chunked<u16>,
    pub nat: DictColumn<u8>,
    pub drop_reason: DictColumn<u32>,
}

/// One side of NAT events' endpoints.
#[derive(Debug, Clone, Default)]
pub struct EndpointColumns {
    pub src: DictColumn<(u8, [u8; 16])>,
    pub sport: Chunked<u16>,
    pub sport_valid: Chunked<bool>,
    pub dst: DictColumn<(u8, [u8; 16])>,
    pub dport: Chunked<u16>,
    pub dport_valid: Chunked<bool>,
}

impl EndpointColumns {
    fn push(&mut self, family: u8, e: &crate::nat::Endpoints) {
        push_addr_row(&mut self.src, addr_key(family, 0, &e.src));
        self.sport.push(e.sport.unwrap_or(0));
        self.sport_valid.push(e.sport.is_some());
        push_addr_row(&mut self.dst, addr_key(family, 0, &e.dst));
        self.dport.push(e.dport.unwrap_or(0));
        self.dport_valid.push(e.dport.is_some());
    }
}

/// nat.parquet's columns, one row per NAT event (rule, rule_source and conntrack_id are
/// always null here: no annotator runs on a capture file).
#[derive(Debug, Clone, Default)]
pub struct NatColumns {
    /// The event's path's id and flow (null when not `flow_valid`), as the paths table has them.
    pub path_id: ChunkedStr,
    pub flow: ChunkedStr,
    pub flow_valid: Chunked<bool>,
    pub seq: Chunked<u8>,
    pub kind: DictColumn<u8>,
    pub node: DictColumn<u32>,
    pub hook: DictColumn<u8>,
    pub from_hop: Chunked<u16>,
    pub to_hop: Chunked<u16>,
    pub ts_ns: Chunked<i64>,
    pub before: EndpointColumns,
    pub after: EndpointColumns,
    pub icmp_id_before: Chunked<u16>,
    pub icmp_id_after: Chunked<u16>,
    pub icmp_id_valid: Chunked<bool>,
}

/// The three tables.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    pub obs: ObsColumns,
    pub paths: PathColumns,
    pub nat: NatColumns,
}

fn kind_key(k: NatKind) -> u8 {
    match k {
        NatKind::Snat => 1,
        NatKind::Dnat => 2,
    }
}

fn hook_key(h: Hook) -> u8 {
    match h {
        Hook::Prerouting => 0,
        Hook::Postrouting => 1,
        Hook::Output => 2,
    }
}

impl Columns {
    /// One shown path's rows, in the order paths are written.
    pub fn add_path(&mut self, p: &ShownPath<'_>, labels: &Labels) {
        let (Some(first), Some(last)) = (p.hops.first(), p.hops.last()) else {
            return;
        };
        // The path's row first: the other tables copy its id and flow.
        self.add_path_row(p, first, last, labels);
        self.add_obs(p.flow.is_some(), p.hops, labels);
        self.add_nat(p, labels);
    }

    /// Whether the strings outgrew 32-bit offsets (then the columns must not be used).
    pub fn overflow(&self) -> bool {
        let (o, p, n) = (&self.obs, &self.paths, &self.nat);
        [
            &o.path_id, &o.flow, &p.path_id, &p.flow, &n.path_id, &n.flow,
        ]
        .iter()
        .any(|c| c.overflow())
    }

    /// The path's rows column by column: a column's values of all its hops in one go.
    fn add_obs(&mut self, flow_valid: bool, hops: &[Obs], labels: &Labels) {
        let c = &mut self.obs;
        let ids = &self.paths;
        let t0 = hops.first().map_or(0, |o| o.ts_ns as i64);
        for _ in hops {
            c.path_id.push_last_of(&ids.path_id);
            c.flow.push_last_of(&ids.flow);
        }
        c.flow_valid.extend(hops.iter().map(|_| flow_valid));
        c.hop.extend((0..hops.len()).map(|k| k as u16));
        c.ts_ns.extend(hops.iter().map(|o| o.ts_ns as i64));
        c.since_first_ns
            .extend(hops.iter().map(|o| (o.ts_ns as i64).wrapping_sub(t0)));
        for o in hops {
            let label = labels.get(o.hop);
            c.node.push(label.node_id, |out| {
                out.extend_from_slice(&label.node_raw);
                true
            });
            c.iface.push(label.iface_id, |out| {
                out.extend_from_slice(&label.iface_raw);
                true
            });
        }
        c.netns.extend(hops.iter().map(|o| o.netns as i64));
        c.ifindex.extend(hops.iter().map(|o| o.ifindex));
        for o in hops {
            c.dir.push(o.dir, |out| {
                let name: &[u8] = match o.dir {
                    1 => b"rx",
                    2 => b"tx",
                    3 => b"drop",
                    _ => return false,
                };
                out.extend_from_slice(name);
                true
            });
            c.source.push(o.source, |out| {
                out.extend_from_slice(match o.source {
                    1 => b"ebpf".as_slice(),
                    2 => b"pcap",
                    _ => b"file",
                });
                true
            });
            c.proto.push(o);
        }
        c.family.extend(hops.iter().map(|o| o.family));
        c.ethertype.extend(hops.iter().map(|o| o.ethertype));
        for o in hops {
            push_addr_row(&mut c.src, addr_key(o.family, o.ethertype, &o.src));
        }
        for o in hops {
            push_addr_row(&mut c.dst, addr_key(o.family, o.ethertype, &o.dst));
        }
        c.has.extend(hops.iter().map(|o| o.has));
        c.sport.extend(hops.iter().map(|o| o.sport));
        c.dport.extend(hops.iter().map(|o| o.dport));
        c.ip_id.extend(hops.iter().map(|o| o.ip_id));
        c.ttl.extend(hops.iter().map(|o| o.ttl));
        c.tcp_flags.extend(hops.iter().map(|o| o.tcp_flags));
        c.tcp_seq.extend(hops.iter().map(|o| o.tcp_seq));
        c.tcp_ack.extend(hops.iter().map(|o| o.tcp_ack));
        c.icmp_type.extend(hops.iter().map(|o| o.icmp_type));
        c.icmp_code.extend(hops.iter().map(|o| o.icmp_code));
        c.icmp_id.extend(hops.iter().map(|o| o.icmp_id));
        c.icmp_seq.extend(hops.iter().map(|o| o.icmp_seq));
        c.length.extend(hops.iter().map(|o| o.length));
        c.wire_len.extend(hops.iter().map(|o| o.wire_len));
        c.skb.extend(hops.iter().map(|o| o.skb));
        c.digest.extend(hops.iter().map(|o| o.digest));
        for o in hops {
            push_drop_reason(&mut c.drop_reason, o.drop_reason, labels);
        }
    }

    fn add_path_row(&mut self, p: &ShownPath<'_>, first: &Obs, last: &Obs, labels: &Labels) {
        let c = &mut self.paths;
        c.path_id.push_with(|out| {
            out.push(b'p');
            push_u64(out, p.num);
        });
        c.flow.push_with(|out| {
            if let Some(f) = p.flow {
                out.push(b'f');
                push_u64(out, f);
            }
        });
        c.flow_valid.push(p.flow.is_some());
        c.proto.push(first);
        c.verdict.push(p.verdict as u8, |out| {
            out.extend_from_slice(p.verdict.name().as_bytes());
            true
        });
        c.hops.push(p.hops.len() as u16);
        let (t0, t1) = (first.ts_ns as i64, last.ts_ns as i64);
        c.first_ts_ns.push(t0);
        c.last_ts_ns.push(t1);
        c.latency_ns.push(t1.wrapping_sub(t0));
        c.first_hop.push(first.hop, |out| {
            push_hop_name(out, first.hop, labels);
            true
        });
        c.last_hop.push(last.hop, |out| {
            push_hop_name(out, last.hop, labels);
            true
        });
        push_addr_row(
            &mut c.src,
            addr_key(first.family, first.ethertype, &first.src),
        );
        push_addr_row(
            &mut c.dst,
            addr_key(first.family, first.ethertype, &first.dst),
        );
        c.has.push(first.has);
        c.sport.push(first.sport);
        c.dport.push(first.dport);
        // "" without NAT, else the kinds it has, sorted and joined with "+".
        let kinds = p.nat.iter().fold(0u8, |k, ev| k | kind_key(ev.kind));
        c.nat.push(kinds, |out| {
            out.extend_from_slice(match kinds {
                1 => b"snat".as_slice(),
                2 => b"dnat",
                3 => b"dnat+snat",
                _ => b"",
            });
            true
        });
        push_drop_reason(&mut c.drop_reason, last.drop_reason, labels);
    }

    fn add_nat(&mut self, p: &ShownPath<'_>, labels: &Labels) {
        let c = &mut self.nat;
        let ids = &self.paths;
        let last_ts = p.hops.last().map_or(0, |o| o.ts_ns);
        for (k, ev) in p.nat.iter().enumerate() {
            c.path_id.push_last_of(&ids.path_id);
            c.flow.push_last_of(&ids.flow);
            c.flow_valid.push(p.flow.is_some());
            c.seq.push(k as u8);
            c.kind.push(kind_key(ev.kind), |out| {
                out.extend_from_slice(ev.kind.name().as_bytes());
                true
            });
            let label = labels.get(ev.hop);
            c.node.push(label.node_id, |out| {
                out.extend_from_slice(&label.node_raw);
                true
            });
            c.hook.push(hook_key(ev.hook), |out| {
                out.extend_from_slice(ev.hook.name().as_bytes());
                true
            });
            c.from_hop.push(ev.from_hop as u16);
            c.to_hop.push(ev.to_hop() as u16);
            // The to_hop's time (the last hop's when to_hop is not on the path).
            let ts = usize::try_from(ev.to_hop())
                .ok()
                .and_then(|i| p.hops.get(i))
                .map_or(last_ts, |o| o.ts_ns);
            c.ts_ns.push(ts as i64);
            c.before.push(ev.family, &ev.before);
            c.after.push(ev.family, &ev.after);
            let (b, a) = ev.icmp_ids.unwrap_or((0, 0));
            c.icmp_id_before.push(b);
            c.icmp_id_after.push(a);
            c.icmp_id_valid.push(ev.icmp_ids.is_some());
        }
    }

    /// Every row is in: the `proto` columns' dictionaries (see [`ProtoColumn::finish`]).
    pub fn finish(&mut self) -> (StrColumn, StrColumn) {
        (self.obs.proto.finish(), self.paths.proto.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dictionaries_keep_first_appearance_and_share_equal_texts() {
        let mut d: DictColumn<u32> = DictColumn::default();
        for (key, text) in [(7, "b"), (3, "a"), (7, "b"), (9, "b"), (4, "")] {
            d.push(key, |out| {
                out.extend_from_slice(text.as_bytes());
                key != 4
            });
        }
        assert_eq!(d.codes.to_vec(), [0, 1, 0, 0, -1]);
        assert_eq!(d.values.len(), 2);
        assert_eq!(d.values.get(0), Some(b"b".as_slice()));
        assert_eq!(d.values.get(1), Some(b"a".as_slice()));
    }

    /// Codes into first-appearance values, made the slow way: one text per row.
    fn naive(texts: &[Option<Vec<u8>>]) -> (Vec<i32>, Vec<Vec<u8>>) {
        let mut values: Vec<Vec<u8>> = Vec::new();
        let codes = texts
            .iter()
            .map(|t| match t {
                None => -1,
                Some(t) => match values.iter().position(|v| v == t) {
                    Some(i) => i as i32,
                    None => {
                        values.push(t.clone());
                        values.len() as i32 - 1
                    }
                },
            })
            .collect();
        (codes, values)
    }

    proptest! {
        /// Whichever way a key's code is found (the previous row's, a dense slot, the
        /// hash map), the codes and values are those of encoding each row's text.
        #[test]
        fn dictionary_codes_match_encoding_each_row(keys in proptest::collection::vec(
            prop_oneof![0u32..8, 65530u32..65542, Just(u32::MAX)], 0..200)) {
            // Texts shared across keys (key % 5), and a null one.
            let text = |k: u32| (k % 5 != 4).then(|| format!("t{}", k % 5).into_bytes());
            let mut d: DictColumn<u32> = DictColumn::default();
            let mut a: DictColumn<(u8, [u8; 16])> = DictColumn::default();
            for &k in &keys {
                d.push(k, |out| match text(k) {
                    Some(t) => { out.extend_from_slice(&t); true }
                    None => false,
                });
                let mut raw = [0u8; 16];
                raw[..4].copy_from_slice(&k.to_le_bytes());
                a.push((4, raw), |out| match text(k) {
                    Some(t) => { out.extend_from_slice(&t); true }
                    None => false,
                });
            }
            let texts: Vec<_> = keys.iter().map(|&k| text(k)).collect();
            let (codes, values) = naive(&texts);
            for col in [(&d.codes, &d.values), (&a.codes, &a.values)] {
                prop_assert_eq!(&col.0.to_vec(), &codes);
                let got: Vec<Vec<u8>> = (0..col.1.len()).filter_map(|i| col.1.get(i).map(<[u8]>::to_vec)).collect();
                prop_assert_eq!(&got, &values);
            }
        }
    }

    #[test]
    fn rows_copy_the_last_string_of_another_column() {
        let mut ids = StrColumn::default();
        let mut rows = StrColumn::default();
        rows.push_last_of(&ids); // nothing to copy: no row
        assert_eq!(rows.len(), 0);
        ids.push(b"p1");
        rows.push_last_of(&ids);
        rows.push_last_of(&ids);
        ids.push(b"");
        rows.push_last_of(&ids);
        ids.push(b"p22");
        rows.push_last_of(&ids);
        assert_eq!(rows.offsets, [0, 2, 4, 4, 7]);
        assert_eq!(rows.data, b"p1p1p22");
        assert!(!rows.overflow);
    }

    #[test]
    fn columns_grow_in_whole_chunks() {
        let mut n: Chunked<u32> = Chunked::default();
        let mut s = ChunkedStr::default();
        let mut ids = ChunkedStr::default();
        for i in 0..(2 * CHUNK_ROWS + 3) {
            if i % 7 == 1 {
                n.extend([i as u32].into_iter()); // a path of one row
            } else {
                n.push(i as u32);
            }
            ids.push_with(|out| out.extend_from_slice(if i % 2 == 0 { b"ab" } else { b"c" }));
            s.push_last_of(&ids);
        }
        let lens: Vec<usize> = n.chunks.iter().map(Vec::len).collect();
        assert_eq!(lens, [CHUNK_ROWS, CHUNK_ROWS, 3]);
        assert!(n.chunks.iter().all(|c| c.capacity() == CHUNK_ROWS));
        assert_eq!(
            n.to_vec(),
            (0..(2 * CHUNK_ROWS as u32 + 3)).collect::<Vec<_>>()
        );
        let lens: Vec<usize> = s.chunks.iter().map(StrColumn::len).collect();
        assert_eq!(lens, [CHUNK_ROWS, CHUNK_ROWS, 3]);
        // Each chunk's offsets start at 0; the rows are the same across chunks.
        for c in &s.chunks {
            assert_eq!(c.offsets.first(), Some(&0));
            assert_eq!(
                (c.get(0), c.get(1)),
                (Some(b"ab".as_slice()), Some(b"c".as_slice()))
            );
        }
        assert_eq!(s.len(), 2 * CHUNK_ROWS + 3);
        assert!(!s.overflow());
    }

    #[test]
    fn paths_rows_cross_chunk_boundaries() {
        let mut n: Chunked<u32> = Chunked::default();
        let mut next = 0u32;
        while (next as usize) < 3 * CHUNK_ROWS {
            let len = 1 + next % 13; // paths of 1 to 13 rows, some across a boundary
            n.extend(next..next + len);
            next += len;
        }
        assert!(n
            .chunks
            .iter()
            .all(|c| c.len() <= CHUNK_ROWS && c.capacity() == CHUNK_ROWS));
        assert_eq!(n.to_vec(), (0..next).collect::<Vec<_>>());
    }

    #[test]
    fn proto_dictionary_is_in_key_order() {
        let mut p = ProtoColumn::default();
        let o = |family, proto, ethertype| Obs {
            family,
            proto,
            ethertype,
            ..Obs::default()
        };
        for r in [
            o(4, 17, 0x800),
            o(0, 0, 0x806),
            o(4, 1, 0x800),
            o(4, 17, 0x800),
            o(6, 1, 0x86dd),
        ] {
            p.push(&r);
        }
        let names = p.finish();
        let got: Vec<&[u8]> = (0..names.len()).filter_map(|i| names.get(i)).collect();
        assert_eq!(got, [b"arp".as_slice(), b"icmp", b"udp", b"icmp"]);
        assert_eq!(p.codes.to_vec(), [2, 0, 1, 2, 3]);
    }
}
