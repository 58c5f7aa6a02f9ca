//! What a free means: whether a drop hop lost the packet, and what to say about it
//! (tests/reference/drops.py says the same in Python; docs/drop-reasons.md says why).
//!
//! * The table of every `enum skb_drop_reason` name the kernel has (data/drop_reasons.tsv,
//!   read from BTF once, meanings written by hand): its kind and its one-line meaning.
//! * A free after the packet reached its socket (`delivered` kind: the socket closed with
//!   it unread, a duplicate of data the socket had) is no loss, when the free follows the
//!   packet's arrival in that namespace: the hop before it is an rx there, and the free has
//!   no device (a socket's queue) or is at that rx's interface.
//! * `NO_SOCKET` for ICMP that a raw ICMP socket of that namespace got a copy of (busybox
//!   ping: the raw socket gets a clone, the original finds no ping socket): no loss either,
//!   when the source saw a raw ICMP socket open there then ([`RawSockets`]).
//! * Hops with no device and no namespace (`?` from the source) are named by the hop before
//!   them (or after, for a first hop), interface `(no device)`: a hop is never `?`.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::labels::Labels;
use crate::nat::{verdict, Verdict};
use crate::obs::{dir, Obs};

/// The table: `name<TAB>kind<TAB>meaning` lines, `#` comments.
pub const TABLE: &str = include_str!("../data/drop_reasons.tsv");

/// The interface of a hop whose skb had no device.
pub const NO_DEVICE: &str = "(no device)";
/// The node of a hop with no device and no namespace, in a path with no other hop.
pub const NO_NETNS: &str = "(no netns)";

/// Whether a free with a reason lost the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Loss,
    /// The packet reached a socket (or the stack acted on it) before the free.
    Delivered,
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    meaning: &'static str,
}

fn table() -> &'static HashMap<&'static str, Entry> {
    static T: OnceLock<HashMap<&'static str, Entry>> = OnceLock::new();
    T.get_or_init(|| {
        TABLE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let mut f = l.splitn(3, '\t');
                let (name, kind, meaning) = (f.next()?, f.next()?, f.next()?);
                let kind = if kind == "delivered" {
                    Kind::Delivered
                } else {
                    Kind::Loss
                };
                Some((name, Entry { kind, meaning }))
            })
            .collect()
    })
}

/// The one-line meaning of drop reason `name`, when the table has it.
pub fn meaning(name: &str) -> Option<&'static str> {
    table().get(name).map(|e| e.meaning)
}

/// The kind of drop reason `name`; a name the table lacks is a loss.
pub fn kind(name: &str) -> Kind {
    table().get(name).map_or(Kind::Loss, |e| e.kind)
}

/// Per namespace, the times (UTC ns, inclusive) a raw ICMP or ICMPv6 socket was open
/// there, as the source saw them (live: /proc/net/raw polled; replay: none).
#[derive(Debug, Clone, Default)]
pub struct RawSockets {
    spans: HashMap<u64, Vec<(u64, u64)>>,
}

impl RawSockets {
    pub fn new() -> RawSockets {
        RawSockets::default()
    }

    /// Replace the table with `spans`: (netns, from_ns, to_ns).
    pub fn set(&mut self, spans: &[(u64, u64, u64)]) {
        self.spans.clear();
        for &(netns, a, b) in spans {
            self.spans
                .entry(netns)
                .or_default()
                .push((a.min(b), a.max(b)));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// A raw ICMP socket was open in `netns` at `ts_ns`.
    pub fn open_at(&self, netns: u64, ts_ns: u64) -> bool {
        self.spans
            .get(&netns)
            .is_some_and(|v| v.iter().any(|&(a, b)| a <= ts_ns && ts_ns <= b))
    }
}

/// What a drop hop was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Free {
    /// The packet was lost here.
    Loss,
    /// Freed after it reached a socket (the reason's kind is `delivered`).
    AfterDelivery,
    /// The original of an ICMP packet a raw socket got a copy of, freed with NO_SOCKET.
    RawCopy,
}

/// What the text says about an [`Free::RawCopy`] hop.
pub const RAW_COPY_NOTE: &str = "a raw socket (ping) got a copy; the original found no ping socket";

/// The hop had no device: its interface is `(no device)` (or the legacy `?`).
fn no_device(o: &Obs, labels: &Labels) -> bool {
    let iface = &labels.get(o.hop).iface;
    iface == NO_DEVICE || iface == "?"
}

/// What drop hop `i` of `hops` was (`Loss` for a hop that is no drop).
pub fn free_kind(hops: &[Obs], i: usize, labels: &Labels) -> Free {
    let Some(h) = hops.get(i).filter(|h| h.dir == dir::DROP) else {
        return Free::Loss;
    };
    let Some(name) = labels.drop_reason(h.drop_reason) else {
        return Free::Loss;
    };
    // It arrived in this namespace and was freed there: by its socket (no device) or
    // where it came in.
    let arrived = i.checked_sub(1).and_then(|p| hops.get(p)).is_some_and(|p| {
        let (lp, lh) = (labels.get(p.hop), labels.get(h.hop));
        p.dir == dir::RX
            && p.netns == h.netns
            && (no_device(h, labels) || (lp.node_id, lp.iface_id) == (lh.node_id, lh.iface_id))
    });
    if !arrived {
        return Free::Loss;
    }
    if kind(name) == Kind::Delivered {
        return Free::AfterDelivery;
    }
    let icmp = matches!((h.family, h.proto), (4, 1) | (6, 58));
    if name == "NO_SOCKET" && icmp && labels.raw_sockets().open_at(h.netns, h.ts_ns) {
        return Free::RawCopy;
    }
    Free::Loss
}

/// The path's verdict: `dropped` only for a loss; a path whose frees all came after
/// delivery is `delivered`; else as [`verdict`] says.
pub fn path_verdict(hops: &[Obs], labels: &Labels, dst_owned: bool, linked: bool) -> Verdict {
    let mut freed = false;
    for (i, h) in hops.iter().enumerate() {
        if h.dir != dir::DROP {
            continue;
        }
        if free_kind(hops, i, labels) == Free::Loss {
            return Verdict::Dropped;
        }
        freed = true;
    }
    if freed {
        return Verdict::Delivered;
    }
    verdict(hops, dst_owned, linked)
}

/// Whether drop hop `i` of a path with `verdict` lost the packet, as the text, the TUI and the
/// report count it: in a path that is not `dropped` no free lost anything; in one that is,
/// every free but those after delivery did.
pub fn lost(hops: &[Obs], i: usize, labels: &Labels, verdict: Verdict) -> bool {
    verdict == Verdict::Dropped && free_kind(hops, i, labels) != Free::AfterDelivery
}

/// The hop's node is unknown (the source had neither device nor namespace).
#[inline]
pub fn unnamed(o: &Obs, labels: &Labels) -> bool {
    labels.get(o.hop).unnamed
}

/// Name the unnamed hops of one path in place: the node and namespace of the hop before
/// (for a first hop, the first named hop after it), interface `(no device)` when it had
/// none. A path with no named hop gets node `(no netns)`.
pub fn name_hops(hops: &mut [Obs], labels: &mut Labels) {
    for i in 0..hops.len() {
        let Some(h) = hops.get(i).copied() else {
            continue;
        };
        if !unnamed(&h, labels) {
            continue;
        }
        let named = hops.get(..i).and_then(|b| b.last()).copied().or_else(|| {
            hops.get(i + 1..)
                .and_then(|a| a.iter().find(|o| !unnamed(o, labels)))
                .copied()
        });
        let label = labels.get(h.hop);
        let iface = if label.iface_raw.is_empty() || label.iface == "?" {
            NO_DEVICE.as_bytes().to_vec()
        } else {
            label.iface_raw.clone()
        };
        let (node, netns) = match named {
            Some(n) => (labels.get(n.hop).node_raw.clone(), n.netns),
            None => (NO_NETNS.as_bytes().to_vec(), h.netns),
        };
        let hop = labels.intern_wtf8(&node, &iface);
        if let Some(slot) = hops.get_mut(i) {
            slot.hop = hop;
            slot.netns = netns;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(labels: &mut Labels, at: &str, d: u8, netns: u64, reason: u32) -> Obs {
        let (node, iface) = at.split_once('/').expect("node/iface");
        Obs {
            ts_ns: 1_000,
            hop: labels.intern(node, iface),
            netns,
            dir: d,
            family: 4,
            proto: 6,
            drop_reason: reason,
            ..Obs::default()
        }
    }

    fn lab() -> Labels {
        let mut l = Labels::new();
        for (code, name) in [
            (3, "NO_SOCKET"),
            (12, "NETFILTER_DROP"),
            (47, "TCP_CLOSE"),
            (105, "QUEUE_PURGE"),
            (200, "SOMETHING_NEW"),
        ] {
            l.set_drop_reason(code, name);
        }
        l
    }

    #[test]
    fn the_table_has_every_name_once_with_a_kind_and_a_meaning() {
        let mut seen = std::collections::HashSet::new();
        for l in TABLE.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 3, "{l}");
            assert!(seen.insert(f[0]), "{l}");
            assert!(["loss", "delivered"].contains(&f[1]), "{l}");
            assert!(!f[2].is_empty() && !f[2].contains('?'), "{l}");
        }
        assert_eq!(table().len(), seen.len());
        assert_eq!(
            meaning("SOCKET_CLOSE"),
            Some("discarded unread when the socket closed")
        );
        assert_eq!(kind("NETFILTER_DROP"), Kind::Loss);
        assert_eq!(kind("QUEUE_PURGE"), Kind::Delivered);
        assert_eq!(
            (kind("NOT_A_REASON"), meaning("NOT_A_REASON")),
            (Kind::Loss, None)
        );
    }

    #[test]
    fn frees_after_delivery_are_no_loss_only_where_the_packet_arrived() {
        let mut l = lab();
        let tx = obs(&mut l, "host/veth1", dir::TX, 1, 0);
        let rx = obs(&mut l, "api/eth0", dir::RX, 2, 0);
        let purge = obs(&mut l, "api/(no device)", dir::DROP, 2, 105);
        let close = obs(&mut l, "api/eth0", dir::DROP, 2, 47);
        let close_elsewhere = obs(&mut l, "api/eth1", dir::DROP, 2, 47);
        let filtered = obs(&mut l, "api/eth0", dir::DROP, 2, 12);
        let new = obs(&mut l, "api/eth0", dir::DROP, 2, 200);
        let v = |hops: &[Obs]| path_verdict(hops, &l, false, false);
        assert_eq!(v(&[tx, rx, purge]), Verdict::Delivered);
        assert_eq!(v(&[tx, rx, close]), Verdict::Delivered);
        assert_eq!(v(&[tx, rx, close_elsewhere]), Verdict::Dropped);
        assert_eq!(v(&[tx, purge]), Verdict::Dropped, "it never arrived");
        assert_eq!(v(&[purge]), Verdict::Dropped);
        assert_eq!(v(&[tx, rx, filtered]), Verdict::Dropped);
        assert_eq!(
            v(&[tx, rx, new]),
            Verdict::Dropped,
            "an unknown name is a loss"
        );
        let mut other_ns = purge;
        other_ns.netns = 1;
        assert_eq!(v(&[tx, rx, other_ns]), Verdict::Dropped);
        assert_eq!(free_kind(&[tx, rx, purge], 2, &l), Free::AfterDelivery);
        assert_eq!(free_kind(&[tx, rx, purge], 1, &l), Free::Loss);
    }

    #[test]
    fn no_socket_is_no_loss_only_for_icmp_a_raw_socket_had_a_copy_of() {
        let mut l = lab();
        let mut rx = obs(&mut l, "client/eth0", dir::RX, 5, 0);
        let mut free = obs(&mut l, "client/eth0", dir::DROP, 5, 3);
        (rx.proto, free.proto) = (1, 1);
        let v = |hops: &[Obs], l: &Labels| path_verdict(hops, l, false, false);
        assert_eq!(v(&[rx, free], &l), Verdict::Dropped);
        l.set_raw_sockets(&[(5, 2_000, 900), (6, 0, 5_000)]); // spans given backwards are put right
        assert_eq!(v(&[rx, free], &l), Verdict::Delivered);
        assert_eq!(free_kind(&[rx, free], 1, &l), Free::RawCopy);
        let mut later = free;
        later.ts_ns = 2_001;
        assert_eq!(
            v(&[rx, later], &l),
            Verdict::Dropped,
            "the socket had closed"
        );
        let mut udp = free;
        udp.proto = 17;
        assert_eq!(v(&[rx, udp], &l), Verdict::Dropped, "a closed UDP port");
        let mut v6 = free;
        (v6.family, v6.proto) = (6, 58);
        assert_eq!(v(&[rx, v6], &l), Verdict::Delivered);
        l.set_raw_sockets(&[]);
        assert!(l.raw_sockets().is_empty());
    }

    #[test]
    fn unnamed_hops_take_the_name_of_the_hop_before_or_after() {
        let mut l = lab();
        let rx = obs(&mut l, "api/eth0", dir::RX, 2, 0);
        let lost = obs(&mut l, "?/?", dir::DROP, 0, 105);
        let lost2 = obs(&mut l, "?/", dir::DROP, 0, 105);
        let mut hops = [lost, rx, lost2];
        name_hops(&mut hops, &mut l);
        let names: Vec<(String, String, u64)> = hops
            .iter()
            .map(|o| {
                let lb = l.get(o.hop);
                (lb.node.clone(), lb.iface.clone(), o.netns)
            })
            .collect();
        let want = |n: &str, i: &str, ns: u64| (n.to_owned(), i.to_owned(), ns);
        assert_eq!(
            names,
            [
                want("api", NO_DEVICE, 2),
                want("api", "eth0", 2),
                want("api", NO_DEVICE, 2)
            ]
        );
        let mut alone = [obs(&mut l, "?/?", dir::DROP, 0, 12)];
        name_hops(&mut alone, &mut l);
        assert_eq!(l.get(alone[0].hop).node, NO_NETNS);
        assert!(!l.get(alone[0].hop).unnamed);
    }
}
