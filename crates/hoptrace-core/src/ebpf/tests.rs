use super::*;
use crate::obs::read_rows;
use proptest::prelude::*;

const SIZE: usize = 1 << 12; // ring data size
const HEADER: usize = 16;

/// The probes' layout with a 128-byte snaplen (probes/skb_hops.py `HopEvent`).
fn layout() -> EventLayout {
    EventLayout {
        size: 192,
        ts_ns: 0,
        skb: 8,
        netns: 16,
        ifindex: 20,
        drop_reason: 28,
        wire_len: 32,
        cap_len: 36,
        mac_len: 38,
        kind: 42,
        ifname: 44,
        frame: 60,
    }
}

/// A ring's data area (twice `SIZE`, the second half the first's mirror) holding `records`
/// (length bits, payload) from `cons` on; returns it and the producer position.
fn ring(cons: u64, records: &[(u32, Vec<u8>)]) -> (Vec<u8>, u64) {
    let mut data = vec![0u8; SIZE];
    let mut pos = cons;
    for (bits, payload) in records {
        let mut rec = Vec::new();
        rec.extend_from_slice(&(payload.len() as u32 | bits).to_le_bytes());
        rec.extend_from_slice(&[0; 4]);
        rec.extend_from_slice(payload);
        for (k, b) in rec.iter().enumerate() {
            data[(pos as usize + k) % SIZE] = *b;
        }
        pos += ((payload.len() + 8 + 7) & !7) as u64;
    }
    let mut both = data.clone();
    both.extend_from_slice(&data);
    (both, pos)
}

fn record(events: &[Vec<u8>]) -> Vec<u8> {
    let mut r = (events.len() as u32).to_le_bytes().to_vec();
    r.extend_from_slice(&[0; HEADER - 4]);
    for e in events {
        r.extend_from_slice(e);
    }
    r
}

#[test]
fn consume_joins_events_passes_discarded_and_stops_at_busy() {
    let ev: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 24]).collect();
    let recs = vec![
        (0, record(&ev[0..2])),
        (RINGBUF_DISCARD, record(&ev[2..3])),
        (0, record(&ev[3..4])),
        (RINGBUF_BUSY, record(&ev[4..5])),
    ];
    let (mem, prod) = ring(4000, &recs); // the first record wraps the data area's end
    let mut out = Vec::new();
    let got = consume(
        mem.as_slice(),
        SIZE as u64 - 1,
        4000,
        prod,
        HEADER,
        24,
        &mut out,
    );
    assert_eq!(out, [ev[0].clone(), ev[1].clone(), ev[3].clone()].concat());
    let busy_at = 4000
        + recs[..3]
            .iter()
            .map(|(_, p)| ((p.len() + 15) & !7) as u64)
            .sum::<u64>();
    assert_eq!((got.cons, got.events, got.records), (busy_at, 3, 3));
    assert!(busy_at < prod);
    // nothing more until the busy record is submitted
    let again = consume(
        mem.as_slice(),
        SIZE as u64 - 1,
        got.cons,
        prod,
        HEADER,
        24,
        &mut out,
    );
    assert_eq!((again.cons, again.events), (busy_at, 0));
}

#[test]
fn consume_trusts_no_count_beyond_the_record_and_no_record_beyond_the_mapping() {
    let mut rec = record(&[vec![7; 24]]);
    rec[0] = 200; // count says 200 events, the record holds 1
    let (mem, prod) = ring(0, &[(0, rec)]);
    let mut out = Vec::new();
    let got = consume(
        mem.as_slice(),
        SIZE as u64 - 1,
        0,
        prod,
        HEADER,
        24,
        &mut out,
    );
    assert_eq!((out.len(), got.events, got.cons), (24, 1, prod));
    // a length word past the mapping: stop, nothing read, position kept
    let mut bad = mem.clone();
    bad[..4].copy_from_slice(&(3 * SIZE as u32).to_le_bytes());
    out.clear();
    let got = consume(
        bad.as_slice(),
        SIZE as u64 - 1,
        0,
        prod,
        HEADER,
        24,
        &mut out,
    );
    assert_eq!((out.len(), got.cons), (0, 0));
    // a record shorter than its header holds no events but is passed
    let (mem, prod) = ring(0, &[(0, vec![5, 0, 0, 0])]);
    let got = consume(
        mem.as_slice(),
        SIZE as u64 - 1,
        0,
        prod,
        HEADER,
        24,
        &mut out,
    );
    assert_eq!((out.len(), got.cons, got.records), (0, prod, 1));
}

fn udp_frame(sport: u16) -> Vec<u8> {
    let mut f = vec![2u8; 6];
    f.extend_from_slice(&[4u8; 6]);
    f.extend_from_slice(&[0x08, 0x00]);
    let payload = b"0123456789abcdef";
    let total = (20 + 8 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&53u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

#[derive(Clone, Copy)]
struct Ev<'a> {
    ts: u64,
    netns: u32,
    ifindex: u32,
    kind: u8,
    name: &'a [u8],
    frame: &'a [u8],
    mac_len: u16,
}

fn event(e: &Ev<'_>) -> Vec<u8> {
    let l = layout();
    let mut b = vec![0u8; l.size];
    b[l.ts_ns..l.ts_ns + 8].copy_from_slice(&e.ts.to_le_bytes());
    b[l.skb..l.skb + 8].copy_from_slice(&0xFFFF_0000u64.to_le_bytes());
    b[l.netns..l.netns + 4].copy_from_slice(&e.netns.to_le_bytes());
    b[l.ifindex..l.ifindex + 4].copy_from_slice(&e.ifindex.to_le_bytes());
    b[l.drop_reason..l.drop_reason + 4].copy_from_slice(&9u32.to_le_bytes());
    b[l.wire_len..l.wire_len + 4].copy_from_slice(&(e.frame.len() as u32).to_le_bytes());
    let cap = e.frame.len().min(l.snaplen());
    b[l.cap_len..l.cap_len + 2].copy_from_slice(&(cap as u16).to_le_bytes());
    b[l.mac_len..l.mac_len + 2].copy_from_slice(&e.mac_len.to_le_bytes());
    b[l.kind] = e.kind;
    b[l.ifname..l.ifname + e.name.len()].copy_from_slice(e.name);
    b[l.frame..l.frame + cap].copy_from_slice(&e.frame[..cap]);
    b
}

#[test]
fn events_decode_into_rows_with_labels_utc_time_and_the_frame() {
    let f = udp_frame(4000);
    let evs = [
        Ev {
            ts: 100,
            netns: 7,
            ifindex: 2,
            kind: 2,
            name: b"eth0",
            frame: &f,
            mac_len: 14,
        },
        Ev {
            ts: 200,
            netns: 9,
            ifindex: 5,
            kind: 1,
            name: b"veth1",
            frame: &f,
            mac_len: 14,
        },
        Ev {
            ts: 300,
            netns: 7,
            ifindex: 2,
            kind: 3,
            name: b"eth0\0old",
            frame: &f[14..],
            mac_len: 0,
        },
        Ev {
            ts: 400,
            netns: 7,
            ifindex: 2,
            kind: 9,
            name: b"eth0",
            frame: &f,
            mac_len: 14,
        },
    ];
    let buf: Vec<u8> = evs.iter().flat_map(event).collect();
    let mut d = Decoder::new(layout().checked().expect("the probes' layout"));
    d.clock = UtcClock::new(1_000_000, vec![0], vec![5]).expect("one knot");
    let (mut rows, mut misses) = (Vec::new(), Vec::new());
    let mut fresh = Decoder::new(d.layout);
    fresh.clock = d.clock.clone();
    assert_eq!(d.decode(&buf, &mut rows, &mut misses), 4);
    let obs = read_rows(&rows);
    let (mut direct, mut direct_misses) = (Vec::new(), Vec::new());
    assert_eq!(fresh.decode_obs(&buf, &mut direct, &mut direct_misses), 4);
    assert_eq!((&direct, &direct_misses), (&obs, &misses));
    assert_eq!(
        obs.iter()
            .map(|o| (o.ts_ns, o.hop, o.dir, o.netns, o.ifindex))
            .collect::<Vec<_>>(),
        [
            (1_000_105, 0, 2, 7, 2),
            (1_000_205, 1, 1, 9, 5),
            (1_000_305, 2, 3, 7, 2),
            (1_000_405, 0, 0, 7, 2)
        ]
    );
    assert_eq!(
        misses
            .iter()
            .map(|m| (m.index, m.ifname.as_slice(), m.linktype))
            .collect::<Vec<_>>(),
        [
            (0, &b"eth0"[..], 1),
            (1, &b"veth1"[..], 1),
            (2, &b"eth0"[..], 101)
        ]
    );
    for (o, e) in obs.iter().zip(&evs) {
        let at = o.frame_off as usize;
        assert_eq!(&buf[at..at + o.frame_len as usize], e.frame);
        assert_eq!(
            (o.source, o.family, o.proto, o.sport, o.dport),
            (1, 4, 17, 4000, 53)
        );
        assert_eq!(
            (o.drop_reason, o.wire_len, o.skb),
            (9, e.frame.len() as u32, 0xFFFF_0000)
        );
    }
    assert_eq!(obs[0].digest, obs[2].digest);
    // a second batch: known keys are hits, a new one the next index
    misses.clear();
    let more: Vec<u8> = [
        Ev {
            ts: 1,
            netns: 8,
            ifindex: 2,
            kind: 1,
            name: b"eth0",
            frame: &f,
            mac_len: 14,
        },
        Ev { ..evs[0] },
    ]
    .iter()
    .flat_map(event)
    .collect();
    d.decode(&more, &mut rows, &mut misses);
    assert_eq!(
        read_rows(&rows).iter().map(|o| o.hop).collect::<Vec<_>>(),
        [3, 0]
    );
    assert_eq!(misses.len(), 1);
    assert_eq!(d.keys.len(), 4);
}

#[test]
fn a_layout_outside_the_event_is_refused() {
    let mut l = layout();
    l.ifname = 180;
    assert_eq!(l.checked(), Err(LayoutError("ifname")));
    assert!(layout().checked().is_ok());
}

#[test]
fn the_clock_is_flat_outside_its_knots_and_linear_between() {
    let c = UtcClock::new(1_000, vec![100, 200], vec![0, 50]).expect("knots");
    assert_eq!(
        [0u64, 100, 150, 200, 10_000].map(|m| c.to_utc(m)),
        [1_000, 1_100, 1_175, 1_250, 11_050]
    );
    assert!(UtcClock::new(0, vec![5, 5], vec![0, 1]).is_none());
    assert!(UtcClock::new(0, vec![], vec![]).is_none());
}

proptest! {
    #[test]
    fn the_clock_never_reorders(steps in proptest::collection::vec((1i64..1_000_000, -400_000i64..400_000), 1..8),
                                 probes in proptest::collection::vec(0u64..20_000_000, 2..50)) {
        // knots as MonoToUtc makes them: a fall slewed at 0.5 at most
        let (mut km, mut ko) = (vec![1_000_000i64], vec![0i64]);
        for (dm, d) in steps {
            let last = *ko.last().unwrap_or(&0);
            let dm = dm.max(if d < 0 { 2 * -d + 1 } else { 1 });
            km.push(km.last().unwrap_or(&0) + dm);
            ko.push(last + d);
        }
        let c = UtcClock::new(1 << 60, km, ko).expect("increasing knots");
        let mut p = probes;
        p.sort_unstable();
        let utc: Vec<u64> = p.iter().map(|&m| c.to_utc(m)).collect();
        prop_assert!(utc.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn any_ring_bytes_are_walked_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                                cons in 0u64..10_000, len in 0u64..10_000) {
        let mut out = Vec::new();
        let got = consume(bytes.as_slice(), 255, cons, cons + len, HEADER, 24, &mut out);
        prop_assert!(got.cons >= cons);
        prop_assert_eq!(out.len(), got.events * 24);
        let mut d = Decoder::new(layout());
        let (mut rows, mut misses) = (Vec::new(), Vec::new());
        let n = d.decode(&bytes, &mut rows, &mut misses);
        prop_assert_eq!(rows.len(), n * ROW_SIZE);
        // the same events as sightings: the rows' sightings, the same keys reported
        let mut d2 = Decoder::new(layout());
        let (mut obs, mut misses2) = (Vec::new(), Vec::new());
        prop_assert_eq!(d2.decode_obs(&bytes, &mut obs, &mut misses2), n);
        prop_assert_eq!(crate::obs::write_rows(&obs), rows);
        prop_assert_eq!(misses2, misses);
    }
}
