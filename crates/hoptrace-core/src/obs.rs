//! One sighting of one packet at one hop: the row that travels from a source to
//! the correlator, and its byte layout as Python's `OBS_DTYPE` (tracer/model.py).
//!
//! Python hands batches across the boundary as numpy structured arrays of that
//! dtype (packed, little-endian, 171 bytes a row). The core works on [`Obs`],
//! a plain struct with natural alignment; [`Obs::read_row`] and
//! [`Obs::write_row`] convert one row, and [`LAYOUT`] is the table a Python
//! test compares field for field with `obs_dtype()`, so the two cannot drift.

/// `dir` column values (Python `Dir`).
pub mod dir {
    pub const UNKNOWN: u8 = 0;
    pub const RX: u8 = 1;
    pub const TX: u8 = 2;
    pub const DROP: u8 = 3;
}

/// `source` column values (Python `Src`).
pub mod src_kind {
    pub const FILE: u8 = 0;
    pub const EBPF: u8 = 1;
    pub const PCAP: u8 = 2;
}

/// `has` bits (Python `HAS_*`): which optional groups a row has.
pub mod has {
    pub const L4_PORTS: u16 = 1 << 0;
    pub const ICMP: u16 = 1 << 1;
    pub const TCP: u16 = 1 << 2;
    pub const IP_ID: u16 = 1 << 3;
    pub const INNER: u16 = 1 << 4;
    pub const FRAG: u16 = 1 << 5;
    pub const FLOW_LABEL: u16 = 1 << 6;
}

/// Size in bytes of one `OBS_DTYPE` row.
pub const ROW_SIZE: usize = 171;

/// One sighting. Fields a packet does not have are 0; `has` says which groups
/// are present. Addresses are 16 raw bytes, IPv4 in the first 4.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Obs {
    pub ts_ns: u64,
    /// Kernel `sk_buff` address, 0 when unknown.
    pub skb: u64,
    /// Network namespace inode, or a small synthetic id for file hops.
    pub netns: u64,
    /// Index into the batch's hop label table.
    pub hop: u32,
    pub ifindex: i32,
    pub dir: u8,
    pub source: u8,
    /// 4, 6, or 0 (not IP: ARP or other L2).
    pub family: u8,
    pub proto: u8,
    pub ethertype: u16,
    pub has: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub ip_id: u32,
    pub flow_label: u32,
    pub ttl: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub icmp_id: u16,
    pub icmp_seq: u16,
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    pub length: u32,
    /// Fragment offset in 8-byte units | 0x8000 if more fragments.
    pub frag: u16,
    pub digest: u64,
    /// Kernel `enum skb_drop_reason` value, 0 = none (names in the batch's table).
    pub drop_reason: u32,
    pub frame_off: u64,
    pub frame_len: u32,
    pub wire_len: u32,
    pub inner_src: [u8; 16],
    pub inner_dst: [u8; 16],
    pub inner_proto: u8,
    pub inner_sport: u16,
    pub inner_dport: u16,
}

/// (name, numpy type string, offset) of every `OBS_DTYPE` field, in order.
pub const LAYOUT: &[(&str, &str, usize)] = &[
    ("ts_ns", "<u8", 0),
    ("skb", "<u8", 8),
    ("netns", "<u8", 16),
    ("hop", "<u4", 24),
    ("ifindex", "<i4", 28),
    ("dir", "|u1", 32),
    ("source", "|u1", 33),
    ("family", "|u1", 34),
    ("proto", "|u1", 35),
    ("ethertype", "<u2", 36),
    ("has", "<u2", 38),
    ("src", "|S16", 40),
    ("dst", "|S16", 56),
    ("sport", "<u2", 72),
    ("dport", "<u2", 74),
    ("ip_id", "<u4", 76),
    ("flow_label", "<u4", 80),
    ("ttl", "|u1", 84),
    ("tcp_flags", "|u1", 85),
    ("icmp_type", "|u1", 86),
    ("icmp_code", "|u1", 87),
    ("icmp_id", "<u2", 88),
    ("icmp_seq", "<u2", 90),
    ("tcp_seq", "<u4", 92),
    ("tcp_ack", "<u4", 96),
    ("length", "<u4", 100),
    ("frag", "<u2", 104),
    ("digest", "<u8", 106),
    ("drop_reason", "<u4", 114),
    ("frame_off", "<u8", 118),
    ("frame_len", "<u4", 126),
    ("wire_len", "<u4", 130),
    ("inner_src", "|S16", 134),
    ("inner_dst", "|S16", 150),
    ("inner_proto", "|u1", 166),
    ("inner_sport", "<u2", 167),
    ("inner_dport", "<u2", 169),
];

struct Rd<'a>(&'a [u8; ROW_SIZE], usize);

impl Rd<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.0[self.1..self.1 + N]);
        self.1 += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn i32(&mut self) -> i32 {
        i32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

struct Wr<'a>(&'a mut [u8; ROW_SIZE], usize);

impl Wr<'_> {
    fn put(&mut self, b: &[u8]) {
        self.0[self.1..self.1 + b.len()].copy_from_slice(b);
        self.1 += b.len();
    }
}

impl Obs {
    /// The sighting stored in one `OBS_DTYPE` row.
    pub fn read_row(row: &[u8; ROW_SIZE]) -> Obs {
        let mut r = Rd(row, 0);
        Obs {
            ts_ns: r.u64(),
            skb: r.u64(),
            netns: r.u64(),
            hop: r.u32(),
            ifindex: r.i32(),
            dir: r.u8(),
            source: r.u8(),
            family: r.u8(),
            proto: r.u8(),
            ethertype: r.u16(),
            has: r.u16(),
            src: r.take(),
            dst: r.take(),
            sport: r.u16(),
            dport: r.u16(),
            ip_id: r.u32(),
            flow_label: r.u32(),
            ttl: r.u8(),
            tcp_flags: r.u8(),
            icmp_type: r.u8(),
            icmp_code: r.u8(),
            icmp_id: r.u16(),
            icmp_seq: r.u16(),
            tcp_seq: r.u32(),
            tcp_ack: r.u32(),
            length: r.u32(),
            frag: r.u16(),
            digest: r.u64(),
            drop_reason: r.u32(),
            frame_off: r.u64(),
            frame_len: r.u32(),
            wire_len: r.u32(),
            inner_src: r.take(),
            inner_dst: r.take(),
            inner_proto: r.u8(),
            inner_sport: r.u16(),
            inner_dport: r.u16(),
        }
    }

    /// This sighting as one `OBS_DTYPE` row.
    pub fn write_row(&self, row: &mut [u8; ROW_SIZE]) {
        let mut w = Wr(row, 0);
        w.put(&self.ts_ns.to_le_bytes());
        w.put(&self.skb.to_le_bytes());
        w.put(&self.netns.to_le_bytes());
        w.put(&self.hop.to_le_bytes());
        w.put(&self.ifindex.to_le_bytes());
        w.put(&[self.dir, self.source, self.family, self.proto]);
        w.put(&self.ethertype.to_le_bytes());
        w.put(&self.has.to_le_bytes());
        w.put(&self.src);
        w.put(&self.dst);
        w.put(&self.sport.to_le_bytes());
        w.put(&self.dport.to_le_bytes());
        w.put(&self.ip_id.to_le_bytes());
        w.put(&self.flow_label.to_le_bytes());
        w.put(&[self.ttl, self.tcp_flags, self.icmp_type, self.icmp_code]);
        w.put(&self.icmp_id.to_le_bytes());
        w.put(&self.icmp_seq.to_le_bytes());
        w.put(&self.tcp_seq.to_le_bytes());
        w.put(&self.tcp_ack.to_le_bytes());
        w.put(&self.length.to_le_bytes());
        w.put(&self.frag.to_le_bytes());
        w.put(&self.digest.to_le_bytes());
        w.put(&self.drop_reason.to_le_bytes());
        w.put(&self.frame_off.to_le_bytes());
        w.put(&self.frame_len.to_le_bytes());
        w.put(&self.wire_len.to_le_bytes());
        w.put(&self.inner_src);
        w.put(&self.inner_dst);
        w.put(&[self.inner_proto]);
        w.put(&self.inner_sport.to_le_bytes());
        w.put(&self.inner_dport.to_le_bytes());
        debug_assert_eq!(w.1, ROW_SIZE);
    }
}

/// Rows of a numpy `OBS_DTYPE` buffer as sightings; a trailing partial row is ignored.
pub fn read_rows(buf: &[u8]) -> Vec<Obs> {
    buf.chunks_exact(ROW_SIZE)
        .filter_map(|c| <&[u8; ROW_SIZE]>::try_from(c).ok())
        .map(Obs::read_row)
        .collect()
}

/// Sightings as a numpy `OBS_DTYPE` buffer.
pub fn write_rows(rows: &[Obs]) -> Vec<u8> {
    let mut out = vec![0u8; rows.len() * ROW_SIZE];
    for (o, chunk) in rows.iter().zip(out.chunks_exact_mut(ROW_SIZE)) {
        if let Ok(row) = <&mut [u8; ROW_SIZE]>::try_from(chunk) {
            o.write_row(row);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_contiguous_and_fills_a_row() {
        let size = |t: &str| match t {
            "|u1" => 1,
            "<u2" => 2,
            "<u4" | "<i4" => 4,
            "<u8" => 8,
            "|S16" => 16,
            other => panic!("unknown type {other}"),
        };
        let mut off = 0;
        for (name, t, o) in LAYOUT {
            assert_eq!(*o, off, "{name}");
            off += size(t);
        }
        assert_eq!(off, ROW_SIZE);
    }

    #[test]
    fn fields_land_at_their_offsets() {
        let o = Obs {
            ts_ns: 0x0102030405060708,
            inner_dport: 0xBEEF,
            digest: 0x1122334455667788,
            src: [9; 16],
            ..Obs::default()
        };
        let mut row = [0u8; ROW_SIZE];
        o.write_row(&mut row);
        assert_eq!(&row[0..8], &0x0102030405060708u64.to_le_bytes());
        assert_eq!(&row[106..114], &0x1122334455667788u64.to_le_bytes());
        assert_eq!(&row[40..56], &[9; 16]);
        assert_eq!(&row[169..171], &0xBEEFu16.to_le_bytes());
    }

    proptest! {
        #[test]
        fn a_row_round_trips(bytes in proptest::collection::vec(any::<u8>(), ROW_SIZE)) {
            let mut row = [0u8; ROW_SIZE];
            row.copy_from_slice(&bytes);
            let o = Obs::read_row(&row);
            let mut back = [0u8; ROW_SIZE];
            o.write_row(&mut back);
            prop_assert_eq!(row, back);
        }
    }
}
