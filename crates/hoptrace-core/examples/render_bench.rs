//! The renderers' speed on flood-shaped paths (bench/record_bench.py's: NATed UDP, 5 hops,
//! MASQUERADE at host/eth0, a quarter without skb), alone, without the join:
//!
//!     cargo run --release -p hoptrace-core --example render_bench -- [PATHS] [FLOWS] [DISTINCT] [ONLY] [tcp]
//!
//! `tcp`: the paths are a TCP flood's (flags, sequence and acknowledgement numbers per packet)
//! rather than UDP datagrams.
//! DISTINCT paths (default 2000: they stay in the CPU's caches, as a finishing step's do)
//! are rendered over and over to PATHS in all. ONLY (ndjson, ndjson+note or text) runs one.
//! Prints ns per sighting (this thread's CPU time, median and best of 7 runs) for the
//! NDJSON line, the NDJSON line with an annotator's note per NAT event, and the text
//! block; and a digest of the bytes written, the same before and after a change to the
//! renderers that must not change a byte (the first run, written whole, is hashed: that
//! run is the slowest; the median leaves it out).

use hoptrace_core::annotate::NatNote;
use hoptrace_core::labels::Labels;
use hoptrace_core::nat::{Endpoints, Hook, NatEvent, NatKind, Verdict};
use hoptrace_core::obs::{has, Obs};
use hoptrace_core::render::{push_path_line, push_path_line_noted};
use hoptrace_core::text_render::{push_path_text, PathHead, TextOptions};

const RUNS: usize = 7;
const HOPS: usize = 5;

#[path = "common/timing.rs"]
mod timing;
use timing::{cpu_ns, median};

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[..4].copy_from_slice(&a);
    r
}

struct Path {
    num: u64,
    flow: u64,
    hops: [Obs; HOPS],
    nat: NatEvent,
}

fn paths(labels: &mut Labels, n: usize, flows: u64, tcp: bool) -> Vec<Path> {
    let names = [
        ("web", "eth0", 4026532001u64, 2u8),
        ("host", "veth1a2b3c", 4026531840, 1),
        ("host", "docker0", 4026531840, 1),
        ("host", "eth0", 4026531840, 2),
        ("inet", "eth0", 4026532003, 1),
    ];
    let ids: Vec<u32> = names
        .iter()
        .map(|(n, i, _, _)| labels.intern(n, i))
        .collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut ts = 1_795_805_084_432_385_000u64;
    (0..n)
        .map(|k| {
            let f = rnd() % flows;
            let sport = 40000 + f as u16;
            let skb = if k % 4 == 0 {
                0
            } else {
                0xffff_8881_0000_0000 | (rnd() & 0xffff_ff00)
            };
            let ip_id = (rnd() & 0xffff) as u32;
            let (seq, ack) = (rnd() as u32, rnd() as u32);
            let mut hops = [Obs::default(); HOPS];
            for (i, h) in hops.iter_mut().enumerate() {
                ts += 700 + rnd() % 3000;
                let natted = i >= 3;
                *h = Obs {
                    ts_ns: ts,
                    hop: ids[i],
                    netns: names[i].2,
                    dir: names[i].3,
                    family: 4,
                    proto: 17,
                    ethertype: 0x800,
                    has: has::L4_PORTS | has::IP_ID,
                    src: if natted {
                        v4([203, 0, 113, 2])
                    } else {
                        v4([172, 17, 0, 2])
                    },
                    dst: v4([198, 51, 100, 8]),
                    sport: if natted { 61000 + f as u16 } else { sport },
                    dport: 5201,
                    ip_id,
                    ttl: if i >= 2 { 63 } else { 64 },
                    skb,
                    length: 92,
                    ..Obs::default()
                };
                if tcp {
                    h.proto = 6;
                    h.has |= has::TCP;
                    h.tcp_flags = 0x10;
                    h.tcp_seq = seq;
                    h.tcp_ack = ack;
                    h.length = if k % 2 == 0 { 52 } else { 65_226 };
                }
            }
            let nat = NatEvent {
                kind: NatKind::Snat,
                hop: ids[2],
                hook: Hook::Postrouting,
                family: 4,
                before: Endpoints::of(&hops[2]),
                after: Endpoints::of(&hops[3]),
                from_hop: 2,
                icmp_ids: None,
            };
            Path {
                num: k as u64 + 1,
                flow: f + 1,
                hops,
                nat,
            }
        })
        .collect()
}

fn digest(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h = (*h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let flows: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let mut labels = Labels::new();
    labels.set_drop_reason(2, "NETFILTER_DROP");
    let distinct: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let only = args.next().filter(|o| o != "all");
    let tcp = args.next().is_some_and(|p| p == "tcp");
    let ps = paths(&mut labels, distinct.clamp(1, n), flows, tcp);
    let note = NatNote {
        label: 2,
        json: br#""rule": "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE", "rule_source": "nft", "conntrack": {"id": 3735928559, "state": "ASSURED"}"#.to_vec(),
        text: b"  rule: -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE  ct 3735928559"
            .to_vec(),
        conntrack_id: Some(3_735_928_559),
    };
    let notes = [note];
    let mut out: Vec<u8> = Vec::with_capacity(1 << 21);
    type Render<'a> = Box<dyn Fn(&mut Vec<u8>, &Path) + 'a>;
    let kinds: [(&str, Render); 3] = [
        (
            "ndjson",
            Box::new(|o: &mut Vec<u8>, p: &Path| {
                push_path_line(
                    o,
                    p.num,
                    Some(p.flow),
                    Verdict::Left,
                    &p.hops,
                    std::slice::from_ref(&p.nat),
                    &labels,
                )
            }),
        ),
        (
            "ndjson+note",
            Box::new(|o: &mut Vec<u8>, p: &Path| {
                push_path_line_noted(
                    o,
                    p.num,
                    Some(p.flow),
                    Verdict::Left,
                    &p.hops,
                    std::slice::from_ref(&p.nat),
                    &notes,
                    &labels,
                )
            }),
        ),
        (
            "text",
            Box::new(|o: &mut Vec<u8>, p: &Path| {
                push_path_text(
                    o,
                    PathHead {
                        num: p.num,
                        flow: Some(p.flow),
                        verdict: Verdict::Left,
                    },
                    &p.hops,
                    std::slice::from_ref(&p.nat),
                    &labels,
                    &TextOptions::default(),
                )
            }),
        ),
    ];
    let proto = if tcp { "TCP" } else { "UDP" };
    println!(
        "{n} {proto} paths of {HOPS} hops, {flows} flows: ns per sighting, median (best) of {RUNS}"
    );
    for (name, render) in &kinds {
        if only.as_deref().is_some_and(|o| o != *name) {
            continue;
        }
        let mut times = Vec::new();
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut bytes = 0usize;
        for run in 0..RUNS {
            let c = cpu_ns();
            for p in ps.iter().cycle().take(n) {
                render(&mut out, p);
                if out.len() > 1 << 20 {
                    if run == 0 {
                        digest(&mut h, &out);
                        bytes += out.len();
                    }
                    out.clear();
                }
            }
            times.push((cpu_ns() - c) as f64 / (n * HOPS) as f64);
            if run == 0 {
                digest(&mut h, &out);
                bytes += out.len();
            }
            out.clear();
        }
        println!(
            "{name:12} {:>14}  {:.0} bytes/sighting  digest {h:016x}",
            median(times),
            bytes as f64 / (n * HOPS) as f64
        );
    }
}
