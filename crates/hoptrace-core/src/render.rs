//! Paths, flows and stats as NDJSON lines (CONTRACT.md), byte for byte what
//! tracer/sinks/output.py writes: `path_line` (`_hop_line`, `_nat_line`), `flow_json` and
//! `stats_json` through `json.dumps` with `(", ", ": ")` separators, keys in their
//! order, `null` for what a packet does not have, names escaped as `json.dumps`
//! escapes them. Everything is appended to the caller's buffer; nothing allocates.

use crate::labels::Labels;
use crate::nat::{is_inner_event, Endpoints, NatEvent, Verdict};
use crate::obs::{has, Obs};
use crate::text::{push_addr_json, push_hex, push_json_str, push_opt, push_u64};

const ETH_P_ARP: u16 = 0x0806;

/// `Observation.proto_name`: "icmp", "tcp", ..., the number for other IP protocols,
/// "arp" or "ether:0x...." for what is not IP.
pub fn push_proto_name(out: &mut Vec<u8>, family: u8, proto: u8, ethertype: u16) {
    if family == 0 {
        if ethertype == ETH_P_ARP {
            out.extend_from_slice(b"arp");
        } else {
            out.extend_from_slice(b"ether:0x");
            for k in (0..4).rev() {
                out.push(b"0123456789abcdef"[usize::from((ethertype >> (k * 4)) & 0xF)]);
            }
        }
        return;
    }
    let name: &[u8] = match proto {
        1 => b"icmp",
        6 => b"tcp",
        17 => b"udp",
        58 => b"icmp6",
        132 => b"sctp",
        47 => b"gre",
        50 => b"esp",
        _ => return push_u64(out, u64::from(proto)),
    };
    out.extend_from_slice(name);
}

fn push_proto_json(out: &mut Vec<u8>, o: &Obs) {
    out.push(b'"');
    push_proto_name(out, o.family, o.proto, o.ethertype);
    out.push(b'"');
}

/// The family a hop's addresses are shown in: ARP's sender and target protocol
/// addresses are IPv4 addresses (tests/reference/correlate.py `observation`).
#[inline]
fn shown_family(o: &Obs) -> u8 {
    if o.family == 0 && o.ethertype == ETH_P_ARP {
        4
    } else {
        o.family
    }
}

/// One hop as `_hop_line` writes it.
pub fn push_hop(out: &mut Vec<u8>, o: &Obs, labels: &Labels) {
    let label = labels.get(o.hop);
    out.extend_from_slice(b"{\"ts_ns\": ");
    push_u64(out, o.ts_ns);
    out.extend_from_slice(b", \"node\": ");
    out.extend_from_slice(&label.node_json);
    out.extend_from_slice(b", \"netns\": ");
    push_u64(out, o.netns);
    out.extend_from_slice(b", \"iface\": ");
    out.extend_from_slice(&label.iface_json);
    out.extend_from_slice(match o.dir {
        1 => b", \"dir\": \"rx\", \"src\": ".as_slice(),
        2 => b", \"dir\": \"tx\", \"src\": ",
        3 => b", \"dir\": \"drop\", \"src\": ",
        _ => b", \"dir\": null, \"src\": ",
    });
    let fam = shown_family(o);
    push_addr_json(out, fam, &o.src);
    out.extend_from_slice(b", \"dst\": ");
    push_addr_json(out, fam, &o.dst);
    if o.has & has::L4_PORTS != 0 {
        out.extend_from_slice(b", \"sport\": ");
        push_u64(out, u64::from(o.sport));
        out.extend_from_slice(b", \"dport\": ");
        push_u64(out, u64::from(o.dport));
    } else {
        out.extend_from_slice(b", \"sport\": null, \"dport\": null");
    }
    out.extend_from_slice(b", \"ip_id\": ");
    push_opt(out, (o.has & has::IP_ID != 0).then_some(u64::from(o.ip_id)));
    out.extend_from_slice(b", \"ttl\": ");
    push_u64(out, u64::from(o.ttl));
    if o.skb != 0 {
        out.extend_from_slice(b", \"skb\": \"0x");
        push_hex(out, o.skb);
        out.extend_from_slice(b"\", \"drop_reason\": ");
    } else {
        out.extend_from_slice(b", \"skb\": null, \"drop_reason\": ");
    }
    if o.drop_reason == 0 {
        out.extend_from_slice(b"null");
    } else if let Some(name) = labels.drop_reason(o.drop_reason) {
        push_json_str(out, name);
    } else {
        out.extend_from_slice(b"\"UNKNOWN(");
        push_u64(out, u64::from(o.drop_reason));
        out.extend_from_slice(b")\"");
    }
    out.extend_from_slice(b", \"proto\": ");
    push_proto_json(out, o);
    out.extend_from_slice(b", \"length\": ");
    push_u64(out, u64::from(o.length));
    if o.has & has::ICMP != 0 {
        out.extend_from_slice(b", \"icmp_type\": ");
        push_u64(out, u64::from(o.icmp_type));
        out.extend_from_slice(b", \"icmp_code\": ");
        push_u64(out, u64::from(o.icmp_code));
        out.extend_from_slice(b", \"icmp_id\": ");
        push_u64(out, u64::from(o.icmp_id));
        out.extend_from_slice(b", \"icmp_seq\": ");
        push_u64(out, u64::from(o.icmp_seq));
    }
    if o.has & has::TCP != 0 {
        out.extend_from_slice(b", \"tcp_flags\": ");
        push_u64(out, u64::from(o.tcp_flags));
        out.extend_from_slice(b", \"tcp_seq\": ");
        push_u64(out, u64::from(o.tcp_seq));
        out.extend_from_slice(b", \"tcp_ack\": ");
        push_u64(out, u64::from(o.tcp_ack));
    }
    if o.has & has::FLOW_LABEL != 0 {
        out.extend_from_slice(b", \"flow_label\": ");
        push_u64(out, u64::from(o.flow_label));
    }
    if o.has & has::FRAG != 0 {
        out.extend_from_slice(b", \"frag\": {\"offset\": ");
        push_u64(out, u64::from(o.frag & 0x1FFF) * 8);
        out.extend_from_slice(if o.frag >= 0x8000 {
            b", \"more\": true}".as_slice()
        } else {
            b", \"more\": false}"
        });
    }
    if o.has & has::INNER != 0 {
        // The quoted header's addresses are of the row's family (no ARP rule here).
        out.extend_from_slice(b", \"inner\": {\"src\": ");
        push_addr_json(out, o.family, &o.inner_src);
        out.extend_from_slice(b", \"dst\": ");
        push_addr_json(out, o.family, &o.inner_dst);
        out.extend_from_slice(b", \"proto\": ");
        push_u64(out, u64::from(o.inner_proto));
        out.extend_from_slice(b", \"sport\": ");
        push_u64(out, u64::from(o.inner_sport));
        out.extend_from_slice(b", \"dport\": ");
        push_u64(out, u64::from(o.inner_dport));
        out.push(b'}');
    }
    out.push(b'}');
}

/// `{"src": .., "sport": .., "dst": .., "dport": ..}` (`Endpoints.to_json`).
pub fn push_endpoints(out: &mut Vec<u8>, family: u8, e: &Endpoints) {
    out.extend_from_slice(b"{\"src\": ");
    push_addr_json(out, family, &e.src);
    out.extend_from_slice(b", \"sport\": ");
    push_opt(out, e.sport.map(u64::from));
    out.extend_from_slice(b", \"dst\": ");
    push_addr_json(out, family, &e.dst);
    out.extend_from_slice(b", \"dport\": ");
    push_opt(out, e.dport.map(u64::from));
    out.push(b'}');
}

/// One NAT event as `_nat_line` writes it (no rule, conntrack entry or rule source: what
/// annotators add, and a replay has none).
pub fn push_nat(out: &mut Vec<u8>, ev: &NatEvent, hops: &[Obs], labels: &Labels) {
    push_nat_noted(out, ev, hops, labels, None);
}

/// [`push_nat`] with what annotators add (`"rule": ...` onwards: crate::annotate).
pub fn push_nat_noted(
    out: &mut Vec<u8>,
    ev: &NatEvent,
    hops: &[Obs],
    labels: &Labels,
    note: Option<&[u8]>,
) {
    out.extend_from_slice(b"{\"kind\": \"");
    out.extend_from_slice(ev.kind.name().as_bytes());
    out.extend_from_slice(b"\", \"node\": ");
    out.extend_from_slice(&labels.get(ev.hop).node_json);
    out.extend_from_slice(b", \"hook\": \"");
    out.extend_from_slice(ev.hook.name().as_bytes());
    out.extend_from_slice(b"\", \"before\": ");
    push_endpoints(out, ev.family, &ev.before);
    out.extend_from_slice(b", \"after\": ");
    push_endpoints(out, ev.family, &ev.after);
    out.extend_from_slice(b", \"from_hop\": ");
    push_u64(out, u64::from(ev.from_hop));
    out.extend_from_slice(b", \"to_hop\": ");
    push_u64(out, u64::from(ev.to_hop()));
    match note {
        Some(n) => {
            out.extend_from_slice(b", ");
            out.extend_from_slice(n);
        }
        None => out.extend_from_slice(b", \"rule\": null"),
    }
    if let Some((before, after)) = ev.icmp_ids {
        out.extend_from_slice(b", \"icmp_id_before\": ");
        push_u64(out, u64::from(before));
        out.extend_from_slice(b", \"icmp_id_after\": ");
        push_u64(out, u64::from(after));
    }
    if is_inner_event(hops, ev) {
        out.extend_from_slice(b", \"inner\": true");
    }
    out.push(b'}');
}

/// One path as its NDJSON line, newline included. `hops` is never empty.
pub fn push_path_line(
    out: &mut Vec<u8>,
    num: u64,
    flow: Option<u64>,
    verdict: Verdict,
    hops: &[Obs],
    nat: &[NatEvent],
    labels: &Labels,
) {
    push_path_line_noted(out, num, flow, verdict, hops, nat, &[], labels);
}

/// [`push_path_line`] with the NAT events' annotations (`notes`: one per event, or none).
#[allow(clippy::too_many_arguments)]
pub fn push_path_line_noted(
    out: &mut Vec<u8>,
    num: u64,
    flow: Option<u64>,
    verdict: Verdict,
    hops: &[Obs],
    nat: &[NatEvent],
    notes: &[crate::annotate::NatNote],
    labels: &Labels,
) {
    out.extend_from_slice(b"{\"type\": \"path\", \"id\": \"p");
    push_u64(out, num);
    match flow {
        Some(f) => {
            out.extend_from_slice(b"\", \"flow\": \"f");
            push_u64(out, f);
            out.extend_from_slice(b"\", \"proto\": ");
        }
        None => out.extend_from_slice(b"\", \"flow\": null, \"proto\": "),
    }
    match hops.first() {
        Some(first) => push_proto_json(out, first),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b", \"verdict\": \"");
    out.extend_from_slice(verdict.name().as_bytes());
    out.extend_from_slice(b"\", \"hops\": [");
    for (i, h) in hops.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        push_hop(out, h, labels);
    }
    out.extend_from_slice(b"], \"nat\": [");
    for (i, ev) in nat.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        push_nat_noted(
            out,
            ev,
            hops,
            labels,
            notes.get(i).map(|n| n.json.as_slice()),
        );
    }
    out.extend_from_slice(b"]}\n");
}

/// What a flow line says (`Flow`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowLine<'a> {
    pub num: u64,
    pub family: u8,
    pub proto: u8,
    pub original: &'a Endpoints,
    pub reply: &'a Endpoints,
    pub paths: &'a [u64],
    /// The conntrack entry an annotator found for one of its paths' NAT events.
    pub conntrack_id: Option<u64>,
}

/// One flow as `json.dumps(flow_json(flow))` writes it, newline included.
pub fn push_flow_line(out: &mut Vec<u8>, f: &FlowLine<'_>) {
    out.extend_from_slice(b"{\"type\": \"flow\", \"id\": \"f");
    push_u64(out, f.num);
    out.extend_from_slice(b"\", \"proto\": \"");
    push_proto_name(out, f.family, f.proto, 0);
    out.extend_from_slice(b"\", \"original\": ");
    push_endpoints(out, f.family, f.original);
    out.extend_from_slice(b", \"reply\": ");
    push_endpoints(out, f.family, f.reply);
    out.extend_from_slice(b", \"paths\": [");
    for (i, p) in f.paths.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"\"p");
        push_u64(out, *p);
        out.push(b'"');
    }
    out.push(b']');
    if let Some(ct) = f.conntrack_id {
        out.extend_from_slice(b", \"conntrack_id\": ");
        push_u64(out, ct);
    }
    out.extend_from_slice(b"}\n");
}

/// The stats line (`stats_json`), newline included. `elapsed_s` as Python's
/// `repr(round(x, 3))`: three decimals at most, trailing zeros dropped, at least one kept.
pub fn push_stats_line(
    out: &mut Vec<u8>,
    observations: u64,
    paths: u64,
    lost_events: u64,
    elapsed_s: f64,
) {
    out.extend_from_slice(b"{\"type\": \"stats\", \"observations\": ");
    push_u64(out, observations);
    out.extend_from_slice(b", \"paths\": ");
    push_u64(out, paths);
    out.extend_from_slice(b", \"lost_events\": ");
    push_u64(out, lost_events);
    out.extend_from_slice(b", \"elapsed_s\": ");
    // Once per run: fmt is fine here.
    let text = format!(
        "{:.3}",
        if elapsed_s.is_finite() {
            elapsed_s
        } else {
            0.0
        }
    );
    let trimmed = text.trim_end_matches('0');
    out.extend_from_slice(trimmed.as_bytes());
    if trimmed.ends_with('.') {
        out.push(b'0');
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::{Hook, NatKind};

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).expect("utf8")
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&a);
        r
    }

    #[test]
    fn proto_names() {
        assert_eq!(s(|o| push_proto_name(o, 4, 1, 0x800)), "icmp");
        assert_eq!(s(|o| push_proto_name(o, 6, 58, 0x86dd)), "icmp6");
        assert_eq!(s(|o| push_proto_name(o, 4, 99, 0x800)), "99");
        assert_eq!(s(|o| push_proto_name(o, 0, 0, 0x806)), "arp");
        assert_eq!(s(|o| push_proto_name(o, 0, 0, 0x88cc)), "ether:0x88cc");
        assert_eq!(s(|o| push_proto_name(o, 0, 0, 0x1)), "ether:0x0001");
    }

    #[test]
    fn a_path_line_as_python_writes_it() {
        // tracer.sinks.output.path_line of the same path, on this machine.
        let mut labels = Labels::new();
        let web = labels.intern("web", "eth0");
        let host = labels.intern("host", "eth0");
        labels.set_drop_reason(2, "NETFILTER_DROP");
        let a = Obs {
            ts_ns: 1795805084432385000,
            hop: web,
            netns: 4026532466,
            dir: 2,
            family: 4,
            proto: 1,
            ethertype: 0x800,
            has: has::ICMP | has::IP_ID,
            src: v4([172, 17, 0, 2]),
            dst: v4([198, 51, 100, 8]),
            ip_id: 19776,
            ttl: 64,
            skb: 0xffff888108472600,
            length: 84,
            icmp_type: 8,
            icmp_id: 7,
            icmp_seq: 1,
            ..Obs::default()
        };
        let b = Obs {
            hop: host,
            netns: 4026531840,
            dir: 3,
            src: v4([203, 0, 113, 2]),
            drop_reason: 2,
            skb: 0,
            ..a
        };
        let ev = NatEvent {
            kind: NatKind::Snat,
            hop: host,
            hook: Hook::Postrouting,
            family: 4,
            before: Endpoints::of(&a),
            after: Endpoints::of(&b),
            from_hop: 0,
            icmp_ids: None,
        };
        let line = s(|o| push_path_line(o, 17, Some(4), Verdict::Dropped, &[a, b], &[ev], &labels));
        let want = concat!(
            r#"{"type": "path", "id": "p17", "flow": "f4", "proto": "icmp", "verdict": "dropped", "hops": ["#,
            r#"{"ts_ns": 1795805084432385000, "node": "web", "netns": 4026532466, "iface": "eth0", "dir": "tx", "#,
            r#""src": "172.17.0.2", "dst": "198.51.100.8", "sport": null, "dport": null, "ip_id": 19776, "ttl": 64, "#,
            r#""skb": "0xffff888108472600", "drop_reason": null, "proto": "icmp", "length": 84, "icmp_type": 8, "#,
            r#""icmp_code": 0, "icmp_id": 7, "icmp_seq": 1}, "#,
            r#"{"ts_ns": 1795805084432385000, "node": "host", "netns": 4026531840, "iface": "eth0", "dir": "drop", "#,
            r#""src": "203.0.113.2", "dst": "198.51.100.8", "sport": null, "dport": null, "ip_id": 19776, "ttl": 64, "#,
            r#""skb": null, "drop_reason": "NETFILTER_DROP", "proto": "icmp", "length": 84, "icmp_type": 8, "#,
            r#""icmp_code": 0, "icmp_id": 7, "icmp_seq": 1}], "#,
            r#""nat": [{"kind": "snat", "node": "host", "hook": "POSTROUTING", "#,
            r#""before": {"src": "172.17.0.2", "sport": null, "dst": "198.51.100.8", "dport": null}, "#,
            r#""after": {"src": "203.0.113.2", "sport": null, "dst": "198.51.100.8", "dport": null}, "#,
            r#""from_hop": 0, "to_hop": 1, "rule": null}]}"#,
            "\n"
        );
        assert_eq!(line, want);
    }

    #[test]
    fn flow_and_stats_lines() {
        let e = Endpoints {
            src: v4([172, 17, 0, 2]),
            sport: Some(40000),
            dst: v4([198, 51, 100, 8]),
            dport: Some(53),
        };
        let line = s(|o| {
            push_flow_line(
                o,
                &FlowLine {
                    num: 4,
                    family: 4,
                    proto: 17,
                    original: &e,
                    reply: &e,
                    paths: &[17, 18],
                    conntrack_id: None,
                },
            )
        });
        assert_eq!(
            line,
            concat!(
                r#"{"type": "flow", "id": "f4", "proto": "udp", "#,
                r#""original": {"src": "172.17.0.2", "sport": 40000, "dst": "198.51.100.8", "dport": 53}, "#,
                r#""reply": {"src": "172.17.0.2", "sport": 40000, "dst": "198.51.100.8", "dport": 53}, "#,
                r#""paths": ["p17", "p18"]}"#,
                "\n"
            )
        );
        // repr(round(x, 3)) in Python.
        for (x, want) in [
            (0.0, "0.0"),
            (5.0, "5.0"),
            (0.0574, "0.057"),
            (0.0575, "0.058"), // 0.05750000000000000249... in binary
            (0.0625, "0.062"), // an exact tie: to even, as Python's round
            (12.3456, "12.346"),
            (0.1, "0.1"),
            (100.25, "100.25"),
        ] {
            let line = s(|o| push_stats_line(o, 14, 4, 0, x));
            assert_eq!(
                line,
                format!(
                    "{{\"type\": \"stats\", \"observations\": 14, \"paths\": 4, \"lost_events\": 0, \"elapsed_s\": {want}}}\n"
                )
            );
        }
    }
}
