//! NAT events and verdicts from the hops of one path (tests/reference/nat.py).
//!
//! Between two consecutive sightings of one packet in the same network namespace
//! the header may have been rewritten: a changed source is SNAT, a changed
//! destination DNAT. `netif_receive_skb` fires before PREROUTING and
//! `net_dev_start_xmit` after POSTROUTING, so a destination changed in a namespace
//! the packet entered is DNAT at PREROUTING (conntrack undoing MASQUERADE on a
//! reply too), one changed where the packet was born (only tx there) DNAT at
//! OUTPUT, and a source change SNAT at POSTROUTING. ICMP errors quote the packet
//! they answer and conntrack rewrites the quote too: each change of it is an event
//! of its own, named like the change of the outer header it mirrors (quoted source
//! <-> outer destination). TTL changes are routing, never NAT; consecutive hops in
//! different namespaces (a veth pair, a link) never produce events.

use crate::labels::Labels;
use crate::obs::Obs;
use crate::view::{self, Direction};

/// Addresses and ports of a header (ports `None` when the protocol has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    pub src: [u8; 16],
    pub sport: Option<u16>,
    pub dst: [u8; 16],
    pub dport: Option<u16>,
}

impl Endpoints {
    pub fn of(o: &Obs) -> Endpoints {
        Endpoints {
            src: view::src(o),
            sport: view::sport(o),
            dst: view::dst(o),
            dport: view::dport(o),
        }
    }

    fn src_side(&self) -> ([u8; 16], Option<u16>) {
        (self.src, self.sport)
    }

    fn dst_side(&self) -> ([u8; 16], Option<u16>) {
        (self.dst, self.dport)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    Snat,
    Dnat,
}

impl NatKind {
    pub fn name(self) -> &'static str {
        match self {
            NatKind::Snat => "snat",
            NatKind::Dnat => "dnat",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Postrouting,
    Output,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "PREROUTING",
            Hook::Postrouting => "POSTROUTING",
            Hook::Output => "OUTPUT",
        }
    }
}

/// One side of a connection: the address (16 bytes, as the rows hold it) and the port.
pub type Endpoint = ([u8; 16], Option<u16>);

/// A rewrite seen between hops `from_hop` and `from_hop + 1` of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatEvent {
    pub kind: NatKind,
    /// The label (hop table index) of the hop before the rewrite: its node is where it happened.
    pub hop: u32,
    pub hook: Hook,
    /// The address family of `before` and `after`.
    pub family: u8,
    pub before: Endpoints,
    pub after: Endpoints,
    pub from_hop: u32,
    /// ICMP echo id before and after, when the rewrite changed it.
    pub icmp_ids: Option<(u16, u16)>,
}

impl NatEvent {
    pub fn to_hop(&self) -> u32 {
        self.from_hop + 1
    }

    /// The rewritten endpoint before and after: the source for SNAT, the destination for DNAT.
    pub fn rewritten(&self) -> (Endpoint, Endpoint) {
        match self.kind {
            NatKind::Snat => (
                (self.before.src, self.before.sport),
                (self.after.src, self.after.sport),
            ),
            NatKind::Dnat => (
                (self.before.dst, self.before.dport),
                (self.after.dst, self.after.dport),
            ),
        }
    }
}

/// Both hops in one namespace: the same node, and the same netns when both know theirs
/// (file hops without a namespace: the node label decides).
#[inline]
pub fn same_namespace(a: &Obs, b: &Obs, labels: &Labels) -> bool {
    if labels.get(a.hop).node_id != labels.get(b.hop).node_id {
        return false;
    }
    a.netns == b.netns || a.netns == 0 || b.netns == 0
}

/// The packet was born in `hops[upto]`'s namespace: it never was elsewhere, only sent.
/// Captures that do not say the direction count as received: a published port reached
/// from outside (PREROUTING) is the common case, OUTPUT needs a known tx.
fn originated(hops: &[Obs], upto: usize, labels: &Labels) -> bool {
    let Some(here) = hops.get(upto) else {
        return false;
    };
    hops[..=upto]
        .iter()
        .all(|h| same_namespace(h, here, labels) && view::direction(h) == Some(Direction::Tx))
}

/// `a` and `b` hold the same raw header fields that [`Endpoints::of`], [`view::icmp_id`]
/// and [`view::inner`] read (family, `has`, addresses, ports, echo id, quoted header):
/// those views of the two are equal, so no rewrite happened between them. Most
/// consecutive hops of a path are such a pair; comparing the fields costs less than
/// building the views.
#[inline]
fn same_header_fields(a: &Obs, b: &Obs) -> bool {
    a.family == b.family
        && a.has == b.has
        && a.src == b.src
        && a.dst == b.dst
        && a.sport == b.sport
        && a.dport == b.dport
        && a.icmp_id == b.icmp_id
        && a.inner_src == b.inner_src
        && a.inner_dst == b.inner_dst
        && a.inner_proto == b.inner_proto
        && a.inner_sport == b.inner_sport
        && a.inner_dport == b.inner_dport
}

/// Every rewrite between consecutive sightings in one namespace, in path order,
/// appended to `out`.
pub fn infer_nat(hops: &[Obs], labels: &Labels, out: &mut Vec<NatEvent>) {
    for (i, pair) in hops.windows(2).enumerate() {
        let (a, b) = (&pair[0], &pair[1]);
        if same_header_fields(a, b) {
            continue; // nothing to compare: the views below would be equal too
        }
        if !same_namespace(a, b, labels)
            || a.family == 0
            || a.family != b.family
            || view::direction(a) == Some(Direction::Drop)
        {
            continue;
        }
        let (ea, eb) = (Endpoints::of(a), Endpoints::of(b));
        let (ia, ib) = (view::inner(a), view::inner(b));
        let (id_a, id_b) = (view::icmp_id(a), view::icmp_id(b));
        if ea == eb && id_a == id_b && ia == ib {
            continue;
        }
        pair_events(hops, i, labels, out);
    }
}

fn pair_events(hops: &[Obs], i: usize, labels: &Labels, out: &mut Vec<NatEvent>) {
    let (a, b) = (&hops[i], &hops[i + 1]);
    let from_hop = u32::try_from(i).unwrap_or(u32::MAX);
    let event = |kind, hook, before, after, icmp_ids| NatEvent {
        kind,
        hop: a.hop,
        hook,
        family: a.family,
        before,
        after,
        from_hop,
        icmp_ids,
    };
    let (mut ea, eb) = (Endpoints::of(a), Endpoints::of(b));
    let mut src_changed = ea.src_side() != eb.src_side();
    let mut dst_changed = ea.dst_side() != eb.dst_side();
    let ids = match (view::icmp_id(a), view::icmp_id(b)) {
        (Some(x), Some(y)) if x != y => Some((x, y)),
        _ => None,
    };
    // conntrack treats the echo id as the request's source port and the reply's destination port.
    let id_goes_to_snat = view::is_echo_request(a);
    if ids.is_some() && !src_changed && !dst_changed {
        if id_goes_to_snat {
            src_changed = true;
        } else {
            dst_changed = true;
        }
    }
    let quoted = match (view::inner(a), view::inner(b)) {
        (Some(x), Some(y)) if x != y => Some((x, y)),
        _ => None,
    };
    let dnat_hook = if (dst_changed || quoted.is_some()) && originated(hops, i, labels) {
        Hook::Output
    } else {
        Hook::Prerouting
    };
    if dst_changed {
        let mid = Endpoints {
            dst: eb.dst,
            dport: eb.dport,
            ..ea
        };
        let to_dnat = if !id_goes_to_snat || !src_changed {
            ids
        } else {
            None
        };
        let after = if src_changed { mid } else { eb };
        out.push(event(NatKind::Dnat, dnat_hook, ea, after, to_dnat));
        ea = mid;
    }
    if src_changed {
        let to_snat = if id_goes_to_snat || !dst_changed {
            ids
        } else {
            None
        };
        out.push(event(NatKind::Snat, Hook::Postrouting, ea, eb, to_snat));
    }
    if let Some((ia, ib)) = quoted {
        // A quoted ICMP packet has no ports: its echo id stands where the source port would.
        let icmp_inner = matches!(ia.proto, 1 | 58);
        let ports = |x: u16| (!icmp_inner).then_some(x);
        let mut qa = Endpoints {
            src: ia.src,
            sport: ports(ia.sport),
            dst: ia.dst,
            dport: ports(ia.dport),
        };
        let qb = Endpoints {
            src: ib.src,
            sport: ports(ib.sport),
            dst: ib.dst,
            dport: ports(ib.dport),
        };
        let qids = (icmp_inner && ia.sport != ib.sport).then_some((ia.sport, ib.sport));
        let q_src = qa.src_side() != qb.src_side() || qids.is_some();
        let q_dst = qa.dst_side() != qb.dst_side();
        if q_src {
            // The quoted packet went the other way: its source is the outer destination.
            let qmid = Endpoints {
                src: qb.src,
                sport: qb.sport,
                ..qa
            };
            let after = if q_dst { qmid } else { qb };
            out.push(event(NatKind::Dnat, dnat_hook, qa, after, qids));
            qa = qmid;
        }
        if q_dst {
            out.push(event(NatKind::Snat, Hook::Postrouting, qa, qb, None));
        }
    }
}

/// True when `ev` rewrote the header quoted in an ICMP error, not the outer one.
pub fn is_inner_event(hops: &[Obs], ev: &NatEvent) -> bool {
    let Some(h) = hops.get(ev.from_hop as usize) else {
        return false;
    };
    let Some(q) = view::inner(h) else {
        return false;
    };
    let before = (ev.before.src, ev.before.dst);
    before == (q.src, q.dst) && before != (view::src(h), view::dst(h))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Delivered,
    Dropped,
    Left,
    Incomplete,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Delivered => "delivered",
            Verdict::Dropped => "dropped",
            Verdict::Left => "left",
            Verdict::Incomplete => "incomplete",
        }
    }
}

/// dropped / delivered / left / incomplete, from the hops and what traffic taught.
///
/// `dst_owned`: the last hop's destination address is known to live in the last hop's
/// namespace (it sent from there, or topology said so). `linked`: the last hop is a tx
/// whose packets were seen arriving at another traced hop, so a packet that last left
/// through it and never arrived is incomplete, not gone.
pub fn verdict(hops: &[Obs], dst_owned: bool, linked: bool) -> Verdict {
    let Some(last) = hops.last() else {
        return Verdict::Incomplete;
    };
    if hops
        .iter()
        .any(|h| view::direction(h) == Some(Direction::Drop))
    {
        return Verdict::Dropped;
    }
    let d = view::direction(last);
    if last.family == 0 {
        return if d == Some(Direction::Rx) || (d.is_none() && hops.len() > 1) {
            Verdict::Delivered
        } else {
            Verdict::Left
        };
    }
    if matches!(d, Some(Direction::Rx) | None) && dst_owned {
        return Verdict::Delivered;
    }
    if matches!(d, Some(Direction::Tx) | None) && !linked {
        return Verdict::Left;
    }
    Verdict::Incomplete
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::{dir, has};
    use proptest::prelude::*;

    struct Lab {
        labels: Labels,
    }

    const HOST: u64 = 4026531840;
    const WEB: u64 = 4026532001;
    const INET: u64 = 4026532003;

    fn ip(s: &str) -> [u8; 16] {
        let v4: std::net::Ipv4Addr = s.parse().expect("ipv4");
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&v4.octets());
        a
    }

    impl Lab {
        fn new() -> Lab {
            Lab {
                labels: Labels::new(),
            }
        }

        /// An ICMP echo request web -> 198.51.100.8 seen at `at` ("node/iface").
        fn obs(&mut self, at: &str, d: u8, src: &str, dst: &str) -> Obs {
            let (node, iface) = at.split_once('/').expect("node/iface");
            let netns = match node {
                "host" => HOST,
                "web" => WEB,
                _ => INET,
            };
            Obs {
                hop: self.labels.intern(node, iface),
                netns,
                dir: d,
                family: 4,
                proto: 1,
                has: has::ICMP | has::IP_ID,
                src: ip(src),
                dst: ip(dst),
                icmp_type: 8,
                icmp_id: 77,
                ttl: 64,
                ..Obs::default()
            }
        }
    }

    fn events(hops: &[Obs], labels: &Labels) -> Vec<(NatKind, Hook, u32)> {
        let mut out = Vec::new();
        infer_nat(hops, labels, &mut out);
        out.iter().map(|e| (e.kind, e.hook, e.from_hop)).collect()
    }

    #[test]
    fn masquerade_is_snat_at_postrouting() {
        let mut lab = Lab::new();
        let hops = [
            lab.obs("web/eth0", dir::TX, "172.17.0.2", "198.51.100.8"),
            lab.obs("host/veth1", dir::RX, "172.17.0.2", "198.51.100.8"),
            lab.obs("host/docker0", dir::RX, "172.17.0.2", "198.51.100.8"),
            lab.obs("host/eth0", dir::TX, "203.0.113.2", "198.51.100.8"),
            lab.obs("inet/eth0", dir::RX, "203.0.113.2", "198.51.100.8"),
        ];
        let mut out = Vec::new();
        infer_nat(&hops, &lab.labels, &mut out);
        assert_eq!(out.len(), 1);
        let e = out[0];
        assert_eq!(
            (e.kind, e.hook, e.from_hop, e.to_hop(), e.icmp_ids),
            (NatKind::Snat, Hook::Postrouting, 2, 3, None)
        );
        assert_eq!(
            (e.before.src, e.after.src),
            (ip("172.17.0.2"), ip("203.0.113.2"))
        );
        assert_eq!(lab.labels.get(e.hop).node, "host");
    }

    #[test]
    fn reply_is_dnat_at_prerouting_and_output_when_born_here() {
        let mut lab = Lab::new();
        let reply = [
            lab.obs("host/eth0", dir::RX, "198.51.100.8", "203.0.113.2"),
            lab.obs("host/docker0", dir::TX, "198.51.100.8", "172.17.0.2"),
        ];
        assert_eq!(
            events(&reply, &lab.labels),
            [(NatKind::Dnat, Hook::Prerouting, 0)]
        );
        // Sent from the host itself to a published port: DNAT at OUTPUT.
        let local = [
            lab.obs("host/lo", dir::TX, "203.0.113.2", "203.0.113.2"),
            lab.obs("host/docker0", dir::TX, "203.0.113.2", "172.17.0.2"),
        ];
        assert_eq!(
            events(&local, &lab.labels),
            [(NatKind::Dnat, Hook::Output, 0)]
        );
        // Direction unknown: counts as received.
        let unknown = [
            lab.obs("host/lo", dir::UNKNOWN, "203.0.113.2", "203.0.113.2"),
            lab.obs("host/docker0", dir::TX, "203.0.113.2", "172.17.0.2"),
        ];
        assert_eq!(
            events(&unknown, &lab.labels),
            [(NatKind::Dnat, Hook::Prerouting, 0)]
        );
    }

    #[test]
    fn hairpin_is_dnat_then_snat_through_the_middle() {
        let mut lab = Lab::new();
        let hops = [
            lab.obs("host/docker0", dir::RX, "172.17.0.3", "203.0.113.2"),
            lab.obs("host/veth1", dir::TX, "172.17.0.1", "172.17.0.2"),
        ];
        let mut out = Vec::new();
        infer_nat(&hops, &lab.labels, &mut out);
        let mid = Endpoints {
            src: ip("172.17.0.3"),
            sport: None,
            dst: ip("172.17.0.2"),
            dport: None,
        };
        assert_eq!(
            out.iter()
                .map(|e| (e.kind, e.before, e.after))
                .collect::<Vec<_>>(),
            [
                (NatKind::Dnat, Endpoints::of(&hops[0]), mid),
                (NatKind::Snat, mid, Endpoints::of(&hops[1])),
            ]
        );
    }

    #[test]
    fn ttl_is_routing_and_other_namespaces_never_nat() {
        let mut lab = Lab::new();
        let mut b = lab.obs("host/eth0", dir::TX, "172.17.0.2", "198.51.100.8");
        b.ttl = 63;
        let a = lab.obs("host/docker0", dir::RX, "172.17.0.2", "198.51.100.8");
        assert_eq!(events(&[a, b], &lab.labels), []);
        // A veth pair: addresses differ, but across namespaces that is no rewrite.
        let c = lab.obs("web/eth0", dir::TX, "172.17.0.2", "198.51.100.8");
        let d = lab.obs("host/veth1", dir::RX, "10.0.0.1", "10.0.0.2");
        assert_eq!(events(&[c, d], &lab.labels), []);
        // Same node name, other namespace (two labs on one machine).
        let mut e = lab.obs("host/eth0", dir::RX, "10.0.0.1", "10.0.0.2");
        e.netns = 1234;
        assert_eq!(events(&[a, e], &lab.labels), []);
        // A drop hop is where the packet ended: nothing after it is a rewrite.
        let f = lab.obs("host/docker0", dir::DROP, "172.17.0.2", "198.51.100.8");
        assert_eq!(events(&[f, b], &lab.labels), []);
    }

    #[test]
    fn icmp_id_rewrite_goes_with_snat_on_requests_and_dnat_on_replies() {
        let mut lab = Lab::new();
        let a = lab.obs("host/docker0", dir::RX, "172.17.0.2", "198.51.100.8");
        let mut b = lab.obs("host/eth0", dir::TX, "172.17.0.2", "198.51.100.8");
        b.icmp_id = 1000;
        let mut out = Vec::new();
        infer_nat(&[a, b], &lab.labels, &mut out);
        assert_eq!(
            out.iter().map(|e| (e.kind, e.icmp_ids)).collect::<Vec<_>>(),
            [(NatKind::Snat, Some((77, 1000)))]
        );
        let (mut c, mut d) = (a, b);
        c.icmp_type = 0;
        d.icmp_type = 0;
        out.clear();
        infer_nat(&[c, d], &lab.labels, &mut out);
        assert_eq!(
            out.iter()
                .map(|e| (e.kind, e.hook, e.icmp_ids))
                .collect::<Vec<_>>(),
            [(NatKind::Dnat, Hook::Prerouting, Some((77, 1000)))]
        );
    }

    #[test]
    fn quoted_header_of_an_icmp_error_is_rewritten_too() {
        // inet answers a MASQUERADEd UDP packet with port unreachable; conntrack turns the
        // quote back into the container's.
        let mut lab = Lab::new();
        let quote = |o: &mut Obs, s: &str, d: &str, sp: u16| {
            o.has |= has::INNER;
            o.icmp_type = 3;
            o.inner_src = ip(s);
            o.inner_dst = ip(d);
            o.inner_proto = 17;
            o.inner_sport = sp;
            o.inner_dport = 53;
        };
        let mut a = lab.obs("host/eth0", dir::RX, "198.51.100.8", "203.0.113.2");
        quote(&mut a, "203.0.113.2", "198.51.100.8", 40000);
        let mut b = lab.obs("host/docker0", dir::TX, "198.51.100.8", "172.17.0.2");
        quote(&mut b, "172.17.0.2", "198.51.100.8", 5000);
        let hops = [a, b];
        let mut out = Vec::new();
        infer_nat(&hops, &lab.labels, &mut out);
        let got: Vec<_> = out
            .iter()
            .map(|e| (e.kind, e.hook, is_inner_event(&hops, e)))
            .collect();
        assert_eq!(
            got,
            [
                (NatKind::Dnat, Hook::Prerouting, false),
                (NatKind::Dnat, Hook::Prerouting, true),
            ]
        );
        assert_eq!(
            (out[1].before.sport, out[1].after.sport, out[1].after.src),
            (Some(40000), Some(5000), ip("172.17.0.2"))
        );
    }

    #[test]
    fn verdicts() {
        let mut lab = Lab::new();
        let tx = lab.obs("host/eth0", dir::TX, "172.17.0.2", "198.51.100.8");
        let rx = lab.obs("inet/eth0", dir::RX, "172.17.0.2", "198.51.100.8");
        let drop = lab.obs("inet/eth0", dir::DROP, "172.17.0.2", "198.51.100.8");
        assert_eq!(verdict(&[tx, drop], true, true), Verdict::Dropped);
        assert_eq!(verdict(&[tx, rx], true, false), Verdict::Delivered);
        assert_eq!(verdict(&[tx, rx], false, false), Verdict::Incomplete);
        assert_eq!(verdict(&[rx, tx], false, false), Verdict::Left);
        assert_eq!(verdict(&[rx, tx], true, true), Verdict::Incomplete);
        let mut arp = rx;
        arp.family = 0;
        assert_eq!(verdict(&[arp], false, false), Verdict::Delivered);
        arp.dir = dir::UNKNOWN;
        assert_eq!(verdict(&[arp], false, false), Verdict::Left);
        assert_eq!(verdict(&[arp, arp], false, false), Verdict::Delivered);
        assert_eq!(verdict(&[], false, false), Verdict::Incomplete);
    }

    proptest! {
        /// Whatever the headers, hops in different namespaces, of another family or after a
        /// drop give no event, and unchanged headers (TTL aside) give none either.
        #[test]
        fn events_only_between_changed_headers_in_one_namespace(
            same_ns in any::<bool>(), fam_b in prop_oneof![Just(4u8), Just(6u8), Just(0u8)],
            da in 0u8..4, ttl in any::<u8>(), change in any::<bool>(),
            s in any::<[u8; 4]>(), t in any::<[u8; 4]>(),
        ) {
            let mut lab = Lab::new();
            let mut a = lab.obs("host/docker0", da, "172.17.0.2", "198.51.100.8");
            let mut b = lab.obs(if same_ns { "host/eth0" } else { "web/eth0" }, dir::TX,
                                "172.17.0.2", "198.51.100.8");
            b.family = fam_b;
            b.ttl = ttl;
            if change {
                a.src[..4].copy_from_slice(&s);
                b.dst[..4].copy_from_slice(&t);
            }
            let mut out = Vec::new();
            infer_nat(&[a, b], &lab.labels, &mut out);
            let may = same_ns && fam_b == 4 && da != dir::DROP
                && (Endpoints::of(&a) != Endpoints::of(&b));
            prop_assert_eq!(!out.is_empty(), may);
            for e in &out {
                // OUTPUT only where the packet was born: sent from the first hop's namespace.
                prop_assert!(e.hook != Hook::Output || da == dir::TX);
                prop_assert!(e.before != e.after);
            }
        }

        /// IPv4 rows may carry anything after their first 4 address bytes: it never
        /// reaches the text, so it never is a rewrite.
        #[test]
        fn ipv4_bytes_beyond_the_address_are_no_rewrite(junk in any::<[u8; 12]>()) {
            let mut lab = Lab::new();
            let a = lab.obs("host/docker0", dir::RX, "172.17.0.2", "198.51.100.8");
            let mut b = lab.obs("host/eth0", dir::TX, "172.17.0.2", "198.51.100.8");
            b.src[4..].copy_from_slice(&junk);
            prop_assert_eq!(events(&[a, b], &lab.labels), []);
        }
    }
}
