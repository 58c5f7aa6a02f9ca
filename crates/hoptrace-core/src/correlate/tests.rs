//! The join's rules on hand-made sightings, its invariants on generated
//! streams, and a naive model of the rules (a scan over every open path, a
//! sort to finish) that the slab, candidate lists and idle queue must agree
//! with. The reference is tests/reference/correlate.py: tests/unit/test_core_join.py.

use super::keys::{fingerprint, header, hop_signature, join_skb, scoped};
use super::*;
use crate::obs::dir;
use proptest::prelude::*;

const MS: u64 = 1_000_000;
const US: u64 = 1_000;

/// (netns, hop, ifindex, dir) of a few hops; two without a direction, one a drop.
const HOPS: [(u64, u32, i32, u8); 8] = [
    (4026532001, 0, 2, dir::TX),
    (4026531840, 1, 4, dir::RX),
    (4026531840, 2, 3, dir::RX),
    (4026531840, 3, 2, dir::TX),
    (4026532003, 4, 2, dir::RX),
    (4026531840, 5, 7, dir::UNKNOWN),
    (4026531840, 6, -1, dir::UNKNOWN),
    (4026532003, 4, 2, dir::DROP),
];

fn at(h: usize, ts: u64, ip_id: u32) -> Obs {
    let (netns, hop, ifindex, d) = HOPS[h];
    Obs {
        ts_ns: ts,
        netns,
        hop,
        ifindex,
        dir: d,
        family: 4,
        proto: 1,
        ip_id,
        length: 84,
        ttl: 64,
        ..Obs::default()
    }
}

/// (number, sightings) of every path, in the order they finished, and the steps' emission order.
fn run(cfg: JoinConfig, batches: &[(&[Obs], Option<u64>)]) -> Vec<(u64, Vec<u64>)> {
    let mut j = Joiner::new(cfg);
    let mut out = Finished::default();
    for (rows, now) in batches {
        j.feed(rows, *now, &mut out);
    }
    j.flush(None, &mut out);
    assert_eq!((j.open_paths(), j.open_rows()), (0, 0));
    out.paths
        .iter()
        .map(|p| (p.num, out.sightings_of(p).to_vec()))
        .collect()
}

fn one_batch(rows: &[Obs]) -> Vec<(u64, Vec<u64>)> {
    run(JoinConfig::default(), &[(rows, None)])
}

#[test]
fn a_packet_through_nat_is_one_path_in_time_order() {
    let mut ping: Vec<Obs> = (0..5)
        .map(|h| at(h, 1000 * MS + h as u64 * 10 * US, 7))
        .collect();
    // SNAT and routing between hop 2 and 3: other source, TTL - 1
    for o in &mut ping[3..] {
        o.src = [203, 0, 113, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        o.ttl = 63;
    }
    let arrival = [ping[3], ping[0], ping[4], ping[2], ping[1]];
    assert_eq!(one_batch(&arrival), vec![(1, vec![1, 4, 3, 0, 2])]);
    // one row per batch: the same, when the two sides of the rewrite come first
    let arrival = [ping[2], ping[3], ping[0], ping[4], ping[1]];
    let singles: Vec<(&[Obs], Option<u64>)> = arrival
        .iter()
        .map(|o| (std::slice::from_ref(o), None))
        .collect();
    assert_eq!(
        run(JoinConfig::default(), &singles),
        vec![(1, vec![2, 4, 0, 1, 3])]
    );
    // web's tx and host's tx after the rewrite, before the hops between them: two
    // namespaces, two sources, adjacent when they meet: two paths (docs/correlation.md)
    let arrival = [ping[3], ping[0], ping[4], ping[2], ping[1]];
    let singles: Vec<(&[Obs], Option<u64>)> = arrival
        .iter()
        .map(|o| (std::slice::from_ref(o), None))
        .collect();
    assert_eq!(
        run(JoinConfig::default(), &singles),
        vec![(2, vec![1]), (1, vec![4, 3, 0, 2])]
    );
}

#[test]
fn repeated_identical_packets_are_never_merged() {
    // same identity, 5 µs apart, interleaved: one packet passes a hop once
    let mut rows: Vec<Obs> = (0..5)
        .flat_map(|h| {
            let t = 1000 * MS + h as u64 * 10 * US;
            [at(h, t, 1), at(h, t + 5 * US, 1)]
        })
        .collect();
    rows.sort_by_key(|o| o.ts_ns);
    let paths = one_batch(&rows);
    let firsts: Vec<u64> = rows
        .iter()
        .enumerate()
        .filter(|(_, o)| (o.ts_ns - 1000 * MS) % (10 * US) == 0)
        .map(|(i, _)| i as u64)
        .collect();
    assert_eq!(paths.len(), 2);
    assert_eq!(paths[0], (1, firsts));
}

#[test]
fn the_same_known_skb_joins_and_another_is_another_packet() {
    let t = 1000 * MS;
    let rows = [
        Obs {
            skb: 0xA,
            ..at(0, t, 1)
        },
        Obs {
            skb: 0xB,
            ..at(1, t + US, 1)
        },
        Obs {
            skb: 0,
            ..at(2, t + 2 * US, 1)
        },
        Obs {
            skb: 0xA,
            ..at(1, t + 3 * US, 1)
        },
        Obs {
            skb: 0xB,
            ..at(2, t + 4 * US, 1)
        },
    ];
    // row 2 (no skb) joins the oldest path not seen at its hop; row 4 (skb B) the path with B
    assert_eq!(one_batch(&rows), vec![(1, vec![0, 2, 3]), (2, vec![1, 4])]);
    // not IP: skbs are per bridge port, ignored
    let l2: Vec<Obs> = rows.iter().map(|o| Obs { family: 0, ..*o }).collect();
    assert_eq!(one_batch(&l2[..2]), vec![(1, vec![0, 1])]);
}

#[test]
fn a_hop_without_direction_tells_sightings_apart_by_their_header() {
    let t = 1000 * MS;
    // in and out of one bridge port: same hop, another TTL
    let rows = [
        at(5, t, 1),
        Obs {
            ttl: 63,
            ..at(5, t + US, 1)
        },
        at(5, t + 2 * US, 1),
    ];
    assert_eq!(one_batch(&rows), vec![(1, vec![0, 1]), (2, vec![2])]);
}

#[test]
fn paths_finish_in_idle_order_and_steps_hand_them_out_by_number() {
    let t = 1000 * MS;
    // p1 opens first, p2 goes idle first
    let rows = [
        at(0, t, 1),
        at(0, t + US, 2),
        at(1, t + 2 * US, 2),
        at(1, t + 3 * US, 1),
    ];
    let mut j = Joiner::default();
    let mut out = Finished::default();
    j.feed(&rows, None, &mut out);
    assert!(out.is_empty());
    j.advance(t + 2 * US + DEFAULT_WINDOW_NS + 1, &mut out);
    j.advance(t + 3 * US + DEFAULT_WINDOW_NS + 1, &mut out);
    let nums: Vec<(u64, u64)> = out.paths.iter().map(|p| (p.num, p.step)).collect();
    assert_eq!(nums, vec![(2, 2), (1, 3)]);
    // one step: finished p2 then p1, handed out p1 then p2
    let mut j = Joiner::default();
    let mut out = Finished::default();
    j.feed(&rows, None, &mut out);
    j.flush(None, &mut out);
    let nums: Vec<u64> = out.paths.iter().map(|p| p.num).collect();
    assert_eq!(nums, vec![2, 1]);
    assert_eq!(out.emission_order(), vec![1, 0]);
}

#[test]
fn flush_in_slices_and_early_finishing_beyond_max_open_rows() {
    let t = 1000 * MS;
    let rows: Vec<Obs> = (0..50)
        .flat_map(|k| {
            [
                at(0, t + k * US, k as u32),
                at(1, t + k * US + 500, k as u32),
            ]
        })
        .collect();
    let cfg = JoinConfig {
        max_open_rows: 40,
        ..JoinConfig::default()
    };
    let mut j = Joiner::new(cfg);
    let mut out = Finished::default();
    j.feed(&rows, None, &mut out);
    assert_eq!((out.paths.len(), j.open_paths()), (30, 20));
    assert_eq!(out.paths[0].num, 1);
    out.clear();
    j.flush(Some(7), &mut out);
    assert_eq!(
        out.paths.iter().map(|p| p.num).collect::<Vec<_>>(),
        (31..38).collect::<Vec<_>>()
    );
    j.flush(Some(0), &mut out);
    assert_eq!((out.paths.len(), j.open_paths()), (7, 13));
}

#[test]
fn beyond_max_same_fp_the_oldest_gets_no_more_sightings() {
    let t = 1000 * MS;
    let mut rows: Vec<Obs> = (0..70).map(|k| at(0, t + k * US, 1)).collect();
    rows.extend((0..70).map(|k| at(1, t + 100 * US + k * US, 1)));
    let paths = one_batch(&rows);
    let pairs = paths.iter().filter(|(_, s)| s.len() == 2).count();
    assert_eq!(pairs, MAX_SAME_FP);
    assert!(paths.contains(&(7, vec![6, 70])));
}

#[test]
fn a_path_idle_past_the_window_counts_against_max_same_fp_in_no_batching() {
    // (the saved proptest case, smaller) Paths A then B of one packet at one hop; A is seen
    // again; C opens a window (+ d ns) after B's last sighting, then a sighting only A or C
    // can take. At d = 1, B is idle past the window whether or not expiry has reached it:
    // it does not count, so A stays a candidate (the oldest) and takes it. At d = 0, B
    // counts, so A drops out (max_same_fp 2) and C takes it. In one batch or ticked.
    let (t, w) = (1000 * MS, 100 * MS);
    let cfg = JoinConfig {
        window_ns: w,
        join_window_ns: w,
        max_same_fp: 2,
        ..JoinConfig::default()
    };
    for d in [0, 1] {
        let tc = t + US + w + d;
        let rows = [
            at(3, t, 1),           // A
            at(3, t + US, 1),      // B
            at(0, t + 50 * MS, 1), // A
            at(3, tc, 1),          // C (A and B were seen at this hop)
            at(1, tc + US, 1),     // B is too old for it
        ];
        let want = if d == 0 {
            vec![(2, vec![1]), (1, vec![0, 2]), (3, vec![3, 4])]
        } else {
            vec![(2, vec![1]), (3, vec![3]), (1, vec![0, 2, 4])]
        };
        assert_eq!(run(cfg, &[(&rows, None)]), want, "d = {d}");
        // a tick at C's time finishes B first when it is idle past the window
        let ticked = run(cfg, &[(&rows[..3], Some(tc)), (&rows[3..], None)]);
        assert_eq!(ticked, want, "d = {d}, ticked");
    }
}

#[test]
fn chunks_of_a_batch_finish_paths_between_them() {
    // a packet idle for longer than the window inside one batch: finished after its chunk,
    // so a late sighting in a later chunk opens a new path
    let t = 1000 * MS;
    let rows = [at(0, t, 1), at(2, t + 600 * MS, 9), at(1, t + 10 * US, 1)];
    let cfg = JoinConfig {
        chunk_rows: 2,
        ..JoinConfig::default()
    };
    assert_eq!(
        run(cfg, &[(&rows, None)]),
        vec![(1, vec![0]), (3, vec![2]), (2, vec![1])]
    );
    assert_eq!(one_batch(&rows), vec![(1, vec![0, 2]), (2, vec![1])]);
}

/// What a join told its listener, in order.
#[derive(Default)]
struct Log(Vec<String>);

impl JoinEvents for Log {
    fn claim(&mut self, family: u8, src: &[u8; 16], netns: u64, ts_ns: u64) -> bool {
        self.0
            .push(format!("claim {family} {} {netns} {}", src[3], ts_ns % MS));
        src[3] != 99 // 99: known already
    }
    fn retract(&mut self, family: u8, src: &[u8; 16], netns: u64, first_ts: u64) {
        self.0.push(format!(
            "retract {family} {} {netns} {}",
            src[3],
            first_ts % MS
        ));
    }
    fn step_ended(&mut self, out: &mut Finished) {
        let nums: Vec<u64> = out.paths.iter().map(|p| p.num).collect();
        self.0.push(format!("step {nums:?}"));
        out.clear();
    }
}

#[test]
fn first_sightings_that_leave_claim_and_a_late_one_takes_the_claim_back() {
    let t = 1000 * MS;
    let mut tx = at(0, t + 5, 1); // leaving netns ...001
    tx.src[3] = 2;
    let rx = at(1, t + 6, 2); // arriving: teaches nothing
    let mut l2 = at(0, t + 7, 3); // not IP: nothing
    l2.family = 0;
    let mut blind = at(5, t + 8, 4); // no direction: may be leaving
    blind.src[3] = 99;
    // path 1's true first sighting, a chunk late (no direction, in tx's namespace: what it
    // sent may have been rewritten there)
    let mut early = at(5, t + 1, 1);
    early.netns = 4026532001;
    early.src[3] = 7;
    let cfg = JoinConfig {
        chunk_rows: 4,
        ..JoinConfig::default()
    };
    let mut j = Joiner::new(cfg);
    let mut log = Log::default();
    let mut out = Finished::default();
    j.feed_with(&[tx, rx, l2, blind, early], &[], None, &mut out, &mut log);
    j.flush_with(None, &mut out, &mut log);
    assert_eq!(
        log.0,
        [
            "claim 4 2 4026532001 5",
            "claim 4 99 4026531840 8",
            "step []",
            "retract 4 2 4026532001 5",
            "claim 4 7 4026532001 1",
            "step []",
            "step [1, 2, 3, 4]",
        ]
    );
    assert!(out.is_empty(), "the listener took them");
}

// ------------------------------------------------------------------ a naive model

/// The rules as the module doc states them, with no index at all.
fn naive(cfg: JoinConfig, batches: &[(Vec<Obs>, Option<u64>)]) -> Vec<(u64, Vec<u64>)> {
    struct P {
        num: u64,
        fp: u64,
        last: u64,
        skb: u64,
        cand: bool,
        rows: Vec<(u64, u64, u64, Obs)>, // ts, index, hop signature, the sighting
    }
    let mut open: Vec<P> = Vec::new();
    let (mut clock, mut nums, mut fed) = (0u64, 0u64, 0u64);
    let mut done = Vec::new();
    let expire =
        |open: &mut Vec<P>, cutoff: Option<u64>, keep: Option<usize>, done: &mut Vec<_>| {
            open.sort_by_key(|p| (p.last, p.num));
            let total: usize = open.iter().map(|p| p.rows.len()).sum();
            let need = keep.map(|k| total.saturating_sub(k));
            let mut rows = 0;
            let mut n = 0;
            for p in open.iter() {
                if cutoff.is_some_and(|c| p.last >= c) || need.is_some_and(|k| rows >= k) {
                    break;
                }
                rows += p.rows.len();
                n += 1;
            }
            for mut p in open.drain(..n) {
                p.rows.sort_by_key(|r| (r.0, r.1));
                done.push((p.num, p.rows.iter().map(|r| r.1).collect::<Vec<_>>()));
            }
        };
    for (batch, now) in batches {
        for chunk in batch.chunks(cfg.chunk_rows) {
            let mut idx: Vec<usize> = (0..chunk.len()).collect();
            idx.sort_by_key(|&i| chunk[i].ts_ns);
            for i in idx {
                let o = &chunk[i];
                let (t, f, h, s) = (o.ts_ns, fingerprint(o), hop_signature(o), join_skb(o));
                clock = clock.max(t);
                let mut by_num: Vec<usize> = (0..open.len())
                    .filter(|&k| open[k].fp == f && open[k].cand)
                    .collect();
                by_num.sort_by_key(|&k| open[k].num);
                let ok = |p: &P| {
                    p.last.abs_diff(t) <= cfg.join_window_ns
                        && p.rows.iter().all(|r| r.2 != h)
                        && keeps_the_rules(p.rows.iter().map(|r| (r.0, r.1, &r.3)), o)
                };
                let pick = by_num
                    .iter()
                    .copied()
                    .find(|&k| ok(&open[k]) && s != 0 && open[k].skb == s)
                    .or_else(|| {
                        by_num
                            .iter()
                            .copied()
                            .find(|&k| ok(&open[k]) && (s == 0 || open[k].skb == 0))
                    });
                let g = fed + i as u64;
                match pick {
                    Some(k) => {
                        let p = &mut open[k];
                        p.rows.push((t, g, h, *o));
                        p.last = p.last.max(t);
                        if s != 0 {
                            p.skb = s;
                        }
                    }
                    None => {
                        nums += 1;
                        // idle longer than the window before t: no longer a candidate
                        for &k in &by_num {
                            if t.saturating_sub(open[k].last) > cfg.join_window_ns {
                                open[k].cand = false;
                            }
                        }
                        by_num.retain(|&k| open[k].cand);
                        if by_num.len() >= cfg.max_same_fp {
                            open[by_num[0]].cand = false;
                        }
                        open.push(P {
                            num: nums,
                            fp: f,
                            last: t,
                            skb: s,
                            cand: true,
                            rows: vec![(t, g, h, *o)],
                        });
                    }
                }
            }
            fed += chunk.len() as u64;
            expire(
                &mut open,
                Some(clock.saturating_sub(cfg.window_ns)),
                None,
                &mut done,
            );
            let total: usize = open.iter().map(|p| p.rows.len()).sum();
            if total > cfg.max_open_rows {
                expire(&mut open, None, Some(cfg.max_open_rows), &mut done);
            }
        }
        if let Some(now) = now {
            clock = clock.max(*now);
            expire(
                &mut open,
                Some(clock.saturating_sub(cfg.window_ns)),
                None,
                &mut done,
            );
        }
    }
    expire(&mut open, None, None, &mut done);
    done
}

/// A path's sightings (ts, stream index, row) with `o` arriving last: in path order (time,
/// then arrival), nothing follows a drop but a clone's sighting (not IP, another skb), and
/// each two neighbours have one header or a rewrite where NAT happens (after an rx or no
/// direction, in one netns, neither link-local nor multicast). NAT anywhere; no nodes.
fn keeps_the_rules<'a>(rows: impl Iterator<Item = (u64, u64, &'a Obs)>, o: &'a Obs) -> bool {
    let mut seq: Vec<(u64, u64, &Obs)> = rows.collect();
    seq.push((o.ts_ns, u64::MAX, o));
    seq.sort_by_key(|x| (x.0, x.1));
    let ip = o.family != 0;
    let d = |o: &Obs| {
        if o.dir <= dir::DROP {
            o.dir
        } else {
            dir::UNKNOWN
        }
    };
    for (i, a) in seq.iter().enumerate() {
        if d(a.2) == dir::DROP && seq[i + 1..].iter().any(|b| ip || b.2.skb == a.2.skb) {
            return false;
        }
    }
    seq.windows(2).all(|w| {
        let (a, b) = (w[0].2, w[1].2);
        !ip || header(a) == header(b)
            || (a.netns == b.netns
                && matches!(d(a), dir::RX | dir::UNKNOWN)
                && !scoped(a)
                && !scoped(b))
    })
}

// ------------------------------------------------------------------ generated streams

prop_compose! {
    /// A packet: identity, skb, hops in order (maybe one twice), start time gap, hop spacing,
    /// its source (link-local or multicast among them) and where it is rewritten, if it is.
    fn packet()(ip_id in 0u32..3, family in prop::sample::select(vec![4u8, 6, 0]),
                src in prop::sample::select(vec![[172u8, 17, 0, 2], [169, 254, 0, 9], [224, 0, 0, 22], [254, 128, 0, 1]]),
                nat_at in prop::option::of(1usize..5),
                skb in prop::sample::select(vec![0u64, 0xA000, 0xB000, 0xC000]),
                hops in prop::collection::vec(0usize..HOPS.len(), 1..6),
                gap in prop::sample::select(vec![0u64, 1, 3 * US, 40 * US, 2 * MS, 100 * MS, 700 * MS]),
                step in prop::sample::select(vec![0u64, 1, 2 * US, 5 * US]),
                ttl in 63u8..65, lose_skb in any::<bool>())
        -> (Vec<Obs>, u64) {
        let mut t = 0;
        let mut rows = Vec::new();
        for (k, &h) in hops.iter().enumerate() {
            t += step;
            let skb = if lose_skb && k % 2 == 1 { 0 } else { skb };
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(if nat_at.is_some_and(|n| k >= n) { &[203, 0, 113, 2] } else { &src });
            rows.push(Obs { family, skb, ttl, src: a, ..at(h, t, ip_id) });
        }
        (rows, gap)
    }
}

prop_compose! {
    /// Packets one after another, delivered late by some, as a stream.
    fn stream()(packets in prop::collection::vec(packet(), 1..25),
                late in prop::collection::vec(prop::sample::select(vec![0u64, 0, 0, 7 * US, 120 * MS, 600 * MS]), 1..8))
        -> Vec<Obs> {
        let mut t = 1000 * MS;
        let mut rows = Vec::new();
        for (pkt, gap) in packets {
            t += gap;
            rows.extend(pkt.into_iter().map(|o| Obs { ts_ns: o.ts_ns + t, ..o }));
        }
        let mut keyed: Vec<(u64, Obs)> = rows.into_iter().enumerate()
            .map(|(i, o)| (o.ts_ns + late[i % late.len()], o)).collect();
        keyed.sort_by_key(|(k, _)| *k);
        keyed.into_iter().map(|(_, o)| o).collect()
    }
}

fn config() -> impl Strategy<Value = JoinConfig> {
    (
        prop::sample::select(vec![500 * MS, 100 * MS, 5 * US]),
        prop::sample::select(vec![300_000usize, 7, 0]),
        prop::sample::select(vec![CHUNK_ROWS, 3, 1]),
        prop::sample::select(vec![MAX_SAME_FP, 2, 1]),
        prop::sample::select(vec![DEFAULT_JOIN_WINDOW_NS, 100 * MS, 5 * US, 1]),
    )
        .prop_map(
            |(window_ns, max_open_rows, chunk_rows, max_same_fp, join)| JoinConfig {
                window_ns,
                // never longer than the wait (the join must not depend on when expiry runs)
                join_window_ns: join.min(window_ns),
                max_open_rows,
                chunk_rows,
                max_same_fp,
                keep_obs: true,
            },
        )
}

/// `rows` cut at `cuts`, each batch with a tick `tick` after its latest sighting (if any).
fn batches(rows: &[Obs], cuts: &[usize], ticks: &[Option<u64>]) -> Vec<(Vec<Obs>, Option<u64>)> {
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(rows.len())).collect();
    bounds.extend([0, rows.len()]);
    bounds.sort_unstable();
    bounds.dedup();
    bounds
        .windows(2)
        .enumerate()
        .map(|(k, w)| {
            let b = rows[w[0]..w[1]].to_vec();
            let now = ticks
                .get(k % ticks.len().max(1))
                .copied()
                .flatten()
                .and_then(|d| b.iter().map(|o| o.ts_ns).max().map(|m| m + d));
            (b, now)
        })
        .collect()
}

fn joined(cfg: JoinConfig, batches: &[(Vec<Obs>, Option<u64>)]) -> Finished {
    let mut j = Joiner::new(cfg);
    let mut out = Finished::default();
    for (rows, now) in batches {
        j.feed(rows, *now, &mut out);
    }
    j.flush(None, &mut out);
    out
}

fn paths_of(out: &Finished) -> Vec<(u64, Vec<u64>)> {
    out.paths
        .iter()
        .map(|p| (p.num, out.sightings_of(p).to_vec()))
        .collect()
}

proptest! {
    // 300 cases unless PROPTEST_CASES says (with_cases alone would ignore it)
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
    ))]

    #[test]
    fn the_join_is_the_naive_model(rows in stream(), cfg in config(),
                                   cuts in prop::collection::vec(0usize..120, 0..6),
                                   ticks in prop::collection::vec(prop::option::of(prop::sample::select(vec![0u64, 200 * MS, 900 * MS])), 0..3)) {
        let b = batches(&rows, &cuts, &ticks);
        prop_assert_eq!(paths_of(&joined(cfg, &b)), naive(cfg, &b));
    }

    #[test]
    fn sightings_in_time_order_join_alike_in_any_batching(rows in stream(), cfg in config(),
                                                          cuts in prop::collection::vec(0usize..120, 0..8)) {
        let mut rows = rows;
        rows.sort_by_key(|o| o.ts_ns);
        let cfg = JoinConfig { max_open_rows: DEFAULT_MAX_OPEN_ROWS, ..cfg };
        let whole = joined(cfg, &batches(&rows, &[], &[]));
        let cut = batches(&rows, &cuts, &[]);
        // ticks no later than the next batch's first sighting
        let ticked: Vec<(Vec<Obs>, Option<u64>)> = cut.iter().enumerate()
            .map(|(k, (b, _))| (b.clone(), cut.get(k + 1).and_then(|(n, _)| n.first()).map(|o| o.ts_ns)))
            .collect();
        prop_assert_eq!(paths_of(&joined(cfg, &cut)), paths_of(&whole));
        prop_assert_eq!(paths_of(&joined(cfg, &ticked)), paths_of(&whole));
        // and the order they finish in is the idle order
        let lasts: Vec<(u64, u64)> = whole.paths.iter()
            .map(|p| (whole.sightings_of(p).iter().map(|&g| rows[g as usize].ts_ns).max().unwrap_or(0), p.num))
            .collect();
        prop_assert!(lasts.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn every_path_keeps_the_rules(rows in stream(), cfg in config(),
                                  cuts in prop::collection::vec(0usize..120, 0..6)) {
        let out = joined(cfg, &batches(&rows, &cuts, &[Some(0)]));
        // every sighting in exactly one path, every number once, Obs kept alongside
        let mut all: Vec<u64> = out.sightings.clone();
        all.sort_unstable();
        prop_assert_eq!(all, (0..rows.len() as u64).collect::<Vec<_>>());
        let mut nums: Vec<u64> = out.paths.iter().map(|p| p.num).collect();
        nums.sort_unstable();
        prop_assert_eq!(nums, (1..=out.paths.len() as u64).collect::<Vec<_>>());
        prop_assert_eq!(out.obs.len(), out.sightings.len());
        for (g, o) in out.sightings.iter().zip(&out.obs) {
            prop_assert_eq!(rows[*g as usize], *o);
        }
        for p in &out.paths {
            let s: Vec<&Obs> = out.sightings_of(p).iter().map(|&g| &rows[g as usize]).collect();
            // one packet: one fingerprint, one known skb, each hop once
            prop_assert!(s.iter().all(|o| fingerprint(o) == fingerprint(s[0])));
            let skbs: Vec<u64> = s.iter().map(|o| join_skb(o)).filter(|&k| k != 0).collect();
            prop_assert!(skbs.windows(2).all(|w| w[0] == w[1]));
            let mut hops: Vec<u64> = s.iter().map(|o| hop_signature(o)).collect();
            hops.sort_unstable();
            prop_assert!(hops.windows(2).all(|w| w[0] != w[1]));
            // in time order, and no two consecutive sightings further apart than the join window
            prop_assert!(s.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns
                && w[1].ts_ns - w[0].ts_ns <= cfg.join_window_ns));
            // nothing after a drop but a clone's; a header changes only where NAT happens
            if let Some((last, rest)) = s.split_last() {
                let before = rest.iter().enumerate().map(|(i, o)| (o.ts_ns, i as u64, *o));
                prop_assert!(keeps_the_rules(before, last));
            }
        }
    }
}

proptest! {
    /// The bounded insertion sort sorts when it says so, and a full sort after it gives the
    /// sorted keys either way (nearly sorted keys, as sightings come, and shuffled ones).
    #[test]
    fn insertion_within_a_budget_sorts_or_says_not(
        keys in proptest::collection::vec(0u64..5_000, 0..400),
        jitter in proptest::collection::vec(0u64..40, 400),
        near in any::<bool>(),
        budget in 0usize..3_000,
    ) {
        let mut v: Vec<u128> = keys
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let ts = if near { i as u64 * 10 + jitter[i] } else { k };
                u128::from(ts) << 32 | i as u128
            })
            .collect();
        let mut want = v.clone();
        want.sort_unstable();
        if !insertion_sort_within(&mut v, budget) {
            v.sort_unstable();
        }
        prop_assert_eq!(v, want);
    }
}

#[test]
fn nearly_sorted_keys_sort_within_a_few_moves_each() {
    // Four hops 9 µs apart, a packet every 20 µs: each key is a few places early.
    let mut v: Vec<u128> = (0..4000u64)
        .map(|i| u128::from((i / 4) * 20_000 + (i % 4) * 9_000) << 32 | u128::from(i))
        .collect();
    let mut want = v.clone();
    want.sort_unstable();
    assert!(insertion_sort_within(&mut v, 4000 * NEAR_ORDER_MOVES));
    assert_eq!(v, want);
    // Reversed: far too many moves.
    let mut r: Vec<u128> = (0..4000u128).rev().collect();
    assert!(!insertion_sort_within(&mut r, 4000 * NEAR_ORDER_MOVES));
}

// ------------------------------------------------------------------ look-alikes

/// One of `n` identical packets (one fingerprint): its sender (0..4, each with its own source,
/// link-local or multicast when `scoped`), the gap before it, its skb (a pool of three:
/// recycled) and how far it goes: sender tx, host rx, then host tx and inet rx, a free at
/// the host, host tx only, or nothing more.
fn look_alike_rows(pkts: &[(u8, u64, u64, usize)], scoped: bool) -> (Vec<Obs>, Vec<u8>) {
    const HOST: u64 = 4026531840;
    let mut rows = Vec::new();
    let mut t = 1000 * MS;
    for &(s, gap, skb, tail) in pkts {
        t += gap;
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&match (scoped, s % 2) {
            (true, 1) => [169, 254, 0, 10 + s],
            (true, _) => [224, 0, 0, 10 + s],
            _ => [172, 17, 0, 10 + s],
        });
        let mut route = vec![
            (5000 + u64::from(s), u32::from(s), dir::TX),
            (HOST, 10 + u32::from(s), dir::RX),
        ];
        route.extend_from_slice(match tail {
            0 => &[(HOST, 20, dir::TX), (4026532300, 22, dir::RX)][..],
            1 => &[(HOST, 21, dir::DROP)][..],
            2 => &[(HOST, 20, dir::TX)][..],
            _ => &[][..],
        });
        for (k, &(netns, hop, d)) in route.iter().enumerate() {
            rows.push((
                Obs {
                    ts_ns: t + k as u64 * 2 * US,
                    netns,
                    hop,
                    ifindex: hop as i32 + 2,
                    dir: d,
                    family: 4,
                    proto: 2,
                    ip_id: 1,
                    length: 40,
                    ttl: 1,
                    skb,
                    src,
                    ..Obs::default()
                },
                s,
            ));
        }
    }
    rows.sort_by_key(|(o, _)| o.ts_ns);
    rows.into_iter().unzip()
}

proptest! {
    /// Identical packets from different senders, recycled skbs, frees followed by look-alikes:
    /// no path holds two senders' sightings, nor anything after a drop — link-local and
    /// multicast sources with NAT allowed anywhere, other sources where no namespace may NAT.
    #[test]
    fn identical_packets_from_different_hosts_are_never_one_path(
        pkts in prop::collection::vec((0u8..4,
            prop::sample::select(vec![0u64, 1, 3 * US, 40 * US, 2 * MS, 30 * MS, 60 * MS]),
            prop::sample::select(vec![0u64, 0xA000, 0xB000, 0xC000]), 0usize..4), 2..30),
        scoped in any::<bool>(),
        cuts in prop::collection::vec(0usize..90, 0..4),
    ) {
        let (rows, sender) = look_alike_rows(&pkts, scoped);
        let mut j = Joiner::new(JoinConfig::default());
        if !scoped {
            j.set_nat_namespaces(Some(&[]));
        }
        let mut out = Finished::default();
        for (b, now) in batches(&rows, &cuts, &[]) {
            j.feed(&b, now, &mut out);
        }
        j.flush(None, &mut out);
        for p in &out.paths {
            let s = out.sightings_of(p);
            prop_assert!(s.iter().all(|&g| sender[g as usize] == sender[s[0] as usize]));
            prop_assert!(s[..s.len() - 1].iter().all(|&g| rows[g as usize].dir != dir::DROP));
        }
    }
}
