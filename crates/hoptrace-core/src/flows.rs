//! Request and reply paths of one connection, paired through the reversed NAT
//! mapping (tests/reference/correlate.py `_assign_flow`, `OpenFlow`, `take_flows`).
//!
//! A path's flow is found by its first hop's 5-tuple (the original direction) and
//! its last hop's (as translated). A new flow files four keys: original,
//! translated, and both reversed, so the reply, which starts as the translated
//! tuple reversed, finds it. An ICMP error belongs to the flow of the packet it
//! quotes. A flow closes when it has been idle for `idle_ns` (of the paths' own
//! time), when it reaches `max_paths` paths (a long connection is reported in
//! pieces), or at the end of input; its line is written when it closes.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BinaryHeap};

use crate::hash::FastMap;

use crate::labels::Labels;
use crate::local::Locals;
use crate::nat::Endpoints;
use crate::obs::Obs;
use crate::relay::Relays;
use crate::render::{push_flow_line, FlowLine};
use crate::text_render::push_flow_text;
use crate::view;

/// (family, protocol, source, source port or echo id, destination, its port or echo id).
pub type FlowKey = (u8, u8, [u8; 16], Option<u16>, [u8; 16], Option<u16>);

fn flow_key(o: &Obs) -> FlowKey {
    let ids = match (view::sport(o), view::icmp_id(o)) {
        (Some(s), _) => (Some(s), view::dport(o)),
        // conntrack keys ICMP echo by its id, in both directions.
        (None, Some(id)) if view::is_echo(o) => (Some(id), Some(id)),
        _ => (None, None),
    };
    (o.family, o.proto, view::src(o), ids.0, view::dst(o), ids.1)
}

/// The flow key of the packet an ICMP error quotes.
fn quoted_key(o: &Obs) -> Option<FlowKey> {
    let q = view::inner(o)?;
    let dport = if matches!(q.proto, 1 | 58) {
        q.sport
    } else {
        q.dport
    };
    Some((o.family, q.proto, q.src, Some(q.sport), q.dst, Some(dport)))
}

fn reverse(k: &FlowKey) -> FlowKey {
    (k.0, k.1, k.4, k.5, k.2, k.3)
}

#[derive(Debug)]
struct FlowState {
    family: u8,
    proto: u8,
    original: Endpoints,
    reply: Endpoints,
    /// The paths it lists: those shown (a path filter may hide some).
    paths: Vec<u64>,
    /// Every path assigned to it, shown or not (`max_paths` counts these).
    assigned: usize,
    keys: Vec<FlowKey>,
    /// The conntrack entry an annotator named first for one of its paths' NAT events.
    conntrack_id: Option<u64>,
    /// Who took its packets (crate::local): the key of the first of its shown paths that
    /// ended locally, one of the original direction preferred; and whether it is one.
    local: Option<u64>,
    local_original: bool,
    /// The last sighting time of its latest path (None until its first path is counted),
    /// and when that was learnt (a counter).
    touched: Option<u64>,
    seq: u64,
}

/// A flow that closed listing at least one path: what its line says, for a consumer
/// other than the NDJSON renderer (see [`Flows::keep_closed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedFlow {
    pub num: u64,
    pub family: u8,
    pub proto: u8,
    pub original: Endpoints,
    pub reply: Endpoints,
    /// How many paths it lists.
    pub paths: usize,
    /// A leg of a connection a userland proxy relayed (crate::relay).
    pub relayed: bool,
}

/// The open flows and what closed since the last [`Flows::take`].
#[derive(Debug)]
pub struct Flows {
    idle_ns: u64,
    max_paths: usize,
    count: u64,
    keys: FastMap<FlowKey, u64>,
    open: BTreeMap<u64, FlowState>,
    /// (touched, seq, flow) of open flows, one entry each, re-filed lazily when touched since.
    idle: BinaryHeap<Reverse<(u64, u64, u64)>>,
    seq: u64,
    done: Vec<u8>,
    /// Write each closed flow's line (else only [`Flows::take_closed`] hears of it).
    lines: bool,
    /// Closed flows kept for [`Flows::take_closed`] (when [`Flows::keep_closed`] asked).
    keep: bool,
    closed: Vec<ClosedFlow>,
    /// Lines as text for people (`flow_text`) rather than NDJSON.
    text: bool,
    /// Who took the packets that ended locally (crate::local), when asked for, and the
    /// labels its node names come from (a copy, refreshed when they change).
    locals: Option<Locals>,
    /// The connections a userland proxy relayed (crate::relay), when asked for.
    relays: Option<Relays>,
    labels: Labels,
}

impl Flows {
    pub fn new(idle_ns: u64, max_paths: usize) -> Flows {
        Flows {
            idle_ns,
            max_paths: max_paths.max(1),
            count: 0,
            keys: FastMap::default(),
            open: BTreeMap::new(),
            idle: BinaryHeap::new(),
            seq: 0,
            done: Vec::new(),
            lines: true,
            keep: false,
            closed: Vec::new(),
            text: false,
            locals: None,
            relays: None,
            labels: Labels::new(),
        }
    }

    /// Say who took the packets of paths that ended locally (crate::local).
    pub fn enable_locals(&mut self) {
        self.locals.get_or_insert_with(Locals::new);
    }

    /// A recorded answer (a replay): the table, when there was none, asks nobody.
    pub fn preset_local(&mut self, note: &crate::local::LocalNote) {
        self.locals.get_or_insert_with(Locals::quiet).preset(note);
    }

    pub fn locals(&self) -> Option<&Locals> {
        self.locals.as_ref()
    }

    pub fn locals_mut(&mut self) -> Option<&mut Locals> {
        self.locals.as_mut()
    }

    /// Say which connections a userland proxy relayed (crate::relay; Python adds the pairs).
    pub fn enable_relays(&mut self) {
        self.relays.get_or_insert_with(Relays::new);
    }

    pub fn relays_mut(&mut self) -> Option<&mut Relays> {
        self.relays.as_mut()
    }

    /// The peer leg's flow of relay leg `leg`: open (its number and the paths it lists so
    /// far) or closed (as it closed).
    fn relay_peer<'a>(
        keys: &FastMap<FlowKey, u64>,
        open: &'a BTreeMap<u64, FlowState>,
        relays: &'a Relays,
        leg: u32,
    ) -> Option<(u64, &'a [u64])> {
        relays
            .peer_key(leg)
            .and_then(|k| keys.get(&k))
            .and_then(|n| open.get(n).map(|fs| (*n, fs.paths.as_slice())))
            .or_else(|| relays.peer_closed(leg))
    }

    /// The path line (or text block: `text` = its gap and whether the story goes on a line of
    /// its own) just written at `out[start..]` with `"relay"` when its flow, found by its
    /// first hop `first`, is a leg of a relayed connection.
    pub fn patch_relay(
        &self,
        start: usize,
        out: &mut Vec<u8>,
        first: &Obs,
        text: Option<(&[u8], bool)>,
    ) {
        let Some(relays) = &self.relays else {
            return;
        };
        let Some(leg) = relays.leg(&flow_key(first)) else {
            return;
        };
        match text {
            Some((gap, own_line)) => relays.patch_text(start, out, leg, gap, own_line),
            None => {
                let peer = Self::relay_peer(&self.keys, &self.open, relays, leg);
                relays.patch_json(start, out, leg, peer);
            }
        }
    }

    /// The labels a closing flow's `"local"` names its node from (the finisher's).
    pub fn set_labels(&mut self, labels: &Labels) {
        if self.locals.is_some() && self.labels.generation() != labels.generation() {
            self.labels = labels.clone();
        }
    }

    /// Keep each flow that closes for [`Flows::take_closed`]; `lines`: write its line too.
    pub fn keep_closed(&mut self, lines: bool) {
        self.keep = true;
        self.lines = lines;
    }

    /// The flows that closed since the last call (kept when [`Flows::keep_closed`] asked),
    /// in the order their lines would be written.
    pub fn take_closed(&mut self) -> std::vec::Drain<'_, ClosedFlow> {
        self.closed.drain(..)
    }

    /// Flows written as text for people (`flow_text`) rather than NDJSON lines.
    pub fn with_text(mut self, text: bool) -> Flows {
        self.text = text;
        self
    }

    /// The flow of path `num`, whose first and last hops are `first` and `last` (in path
    /// order, so `first.ts_ns` and `last.ts_ns` are its first and last sighting times).
    /// None for what is not IP, and for an ICMP error whose quoted packet has no open flow.
    pub fn assign(&mut self, num: u64, first: &Obs, last: &Obs) -> Option<u64> {
        self.assign_shown(num, first, last, true)
    }

    /// [`Flows::assign`] for a path that is shown or not (a path filter hid it): a hidden
    /// path counts towards its flow's `max_paths` but is not listed; a flow that lists no
    /// path writes no line (tracer/engine.py's `_events`).
    pub fn assign_shown(&mut self, num: u64, first: &Obs, last: &Obs, shown: bool) -> Option<u64> {
        self.assign_noted(num, first, last, shown, None)
    }

    /// [`Flows::assign_shown`] for a path whose NAT events an annotator found conntrack
    /// entry `conntrack` for: the flow names the first such entry of its shown paths.
    pub fn assign_noted(
        &mut self,
        num: u64,
        first: &Obs,
        last: &Obs,
        shown: bool,
        conntrack: Option<u64>,
    ) -> Option<u64> {
        self.assign_local(num, first, last, shown, conntrack, None)
    }

    /// [`Flows::assign_noted`] for a path that ended locally with key `local`
    /// ([`Locals::note`]): the flow says who took its packets.
    pub fn assign_local(
        &mut self,
        num: u64,
        first: &Obs,
        last: &Obs,
        shown: bool,
        conntrack: Option<u64>,
        local: Option<u64>,
    ) -> Option<u64> {
        if first.family == 0 {
            return None; // ARP and other L2: no connection
        }
        let last_ts = last.ts_ns;
        let fnum = match quoted_key(first) {
            // An ICMP error belongs to the flow of the packet it quotes, if any.
            Some(q) => *self.keys.get(&q)?,
            None => self.find_or_open(first, last),
        };
        let max_paths = self.max_paths;
        let Some(fs) = self.open.get_mut(&fnum) else {
            return None; // unreachable: keys name open flows only
        };
        if shown {
            fs.paths.push(num);
            if let Some(ct) = conntrack {
                fs.conntrack_id.get_or_insert(ct);
            }
            if let Some(l) = local {
                if !fs.local_original {
                    let original = Endpoints::of(first) == fs.original;
                    if fs.local.is_none() || original {
                        fs.local = Some(l);
                        fs.local_original = original;
                    }
                }
            }
        }
        fs.assigned += 1;
        if fs.touched.is_none_or(|t| last_ts > t) {
            self.seq += 1;
            if fs.touched.is_none() {
                self.idle.push(Reverse((last_ts, self.seq, fnum)));
            }
            fs.touched = Some(last_ts);
            fs.seq = self.seq;
        }
        if fs.assigned >= max_paths {
            self.close(fnum);
        }
        Some(fnum)
    }

    fn find_or_open(&mut self, first: &Obs, last: &Obs) -> u64 {
        let orig = flow_key(first);
        if let Some(&n) = self.keys.get(&orig) {
            let idle = self.open.get(&n).is_some_and(|fs| {
                let touched = fs.touched.map_or(-1, i128::from);
                i128::from(first.ts_ns) - touched > i128::from(self.idle_ns)
            });
            if !idle {
                return n;
            }
            // Idle that long: a new connection on the same addresses (judged on the
            // packets' own times, so any batching gives the same flows).
            self.close(n);
        }
        self.count += 1;
        let n = self.count;
        let trans = flow_key(last);
        let mut fs = FlowState {
            conntrack_id: None,
            local: None,
            local_original: false,
            family: first.family,
            proto: first.proto,
            original: Endpoints::of(first),
            reply: Endpoints {
                src: view::dst(last),
                sport: view::dport(last),
                dst: view::src(last),
                dport: view::sport(last),
            },
            paths: Vec::new(),
            assigned: 0,
            keys: Vec::with_capacity(4),
            touched: None,
            seq: 0,
        };
        for k in [orig, trans, reverse(&trans), reverse(&orig)] {
            if let Entry::Vacant(e) = self.keys.entry(k) {
                e.insert(n);
                fs.keys.push(k);
            }
        }
        self.open.insert(n, fs);
        n
    }

    fn close(&mut self, n: u64) {
        let Some(fs) = self.open.remove(&n) else {
            return;
        };
        for k in &fs.keys {
            if let Entry::Occupied(e) = self.keys.entry(*k) {
                if *e.get() == n {
                    e.remove();
                }
            }
        }
        if fs.paths.is_empty() {
            return;
        }
        let relay_leg = self.relays.as_mut().and_then(|r| {
            let leg = r.leg_of_any(&fs.keys)?;
            r.close(leg, n, &fs.paths);
            Some(leg)
        });
        if self.keep {
            self.closed.push(ClosedFlow {
                num: n,
                family: fs.family,
                proto: fs.proto,
                original: fs.original,
                reply: fs.reply,
                paths: fs.paths.len(),
                relayed: relay_leg.is_some(),
            });
        }
        if !self.lines {
            return;
        }
        let write = if self.text {
            push_flow_text
        } else {
            push_flow_line
        };
        let start = self.done.len();
        write(
            &mut self.done,
            &FlowLine {
                num: n,
                family: fs.family,
                proto: fs.proto,
                original: &fs.original,
                reply: &fs.reply,
                paths: &fs.paths,
                conntrack_id: fs.conntrack_id,
            },
        );
        if let (Some(locals), Some(handle)) = (&self.locals, fs.local) {
            if self.text {
                locals.patch_text(
                    start,
                    &mut self.done,
                    handle,
                    None,
                    &self.labels,
                    b"\n",
                    false,
                );
            } else {
                locals.patch_json(start, &mut self.done, handle, None, &self.labels);
            }
        }
        if let (Some(relays), Some(leg)) = (&self.relays, relay_leg) {
            if self.text {
                relays.patch_text(start, &mut self.done, leg, b"\n", false);
            } else {
                let peer = Self::relay_peer(&self.keys, &self.open, relays, leg);
                relays.patch_json(start, &mut self.done, leg, peer);
            }
        }
    }

    /// Close the flows idle since before `clock_ns - idle_ns` (the sightings' clock).
    pub fn expire(&mut self, clock_ns: u64) {
        let cutoff = i128::from(clock_ns) - i128::from(self.idle_ns);
        while let Some(&Reverse((touched, _seq, n))) = self.idle.peek() {
            if i128::from(touched) >= cutoff {
                break;
            }
            match self.open.get(&n) {
                None => {
                    self.idle.pop(); // closed already (its path cap)
                }
                Some(fs) if fs.touched != Some(touched) => {
                    let entry = Reverse((fs.touched.unwrap_or(touched), fs.seq, n));
                    self.idle.pop();
                    self.idle.push(entry); // touched since it was filed
                }
                Some(_) => {
                    self.idle.pop();
                    self.close(n);
                }
            }
        }
    }

    /// End of input: every open flow closes, in the order they opened.
    pub fn close_all(&mut self) {
        let nums: Vec<u64> = self.open.keys().copied().collect();
        for n in nums {
            self.close(n);
        }
    }

    /// The lines of the flows that closed since the last call, appended to `out`.
    pub fn take(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.done);
    }

    /// How many flows are open.
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::has;

    fn v4(last: u8) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, 0, 0, last]);
        a
    }

    /// A UDP packet `src:sport -> dst:dport` at `ts`.
    fn udp(ts: u64, src: u8, sport: u16, dst: u8, dport: u16) -> Obs {
        Obs {
            ts_ns: ts,
            family: 4,
            proto: 17,
            has: has::L4_PORTS,
            src: v4(src),
            dst: v4(dst),
            sport,
            dport,
            ..Obs::default()
        }
    }

    fn lines(f: &mut Flows) -> String {
        let mut out = Vec::new();
        f.take(&mut out);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn request_and_reply_through_nat_are_one_flow() {
        let mut f = Flows::new(5_000, 1000);
        // 10.0.0.2:5000 -> 10.0.0.9:53 leaves as 10.0.0.1:40000; the reply comes back to it.
        let (a, b) = (udp(0, 2, 5000, 9, 53), udp(10, 1, 40000, 9, 53));
        assert_eq!(f.assign(1, &a, &b), Some(1));
        let (c, d) = (udp(100, 9, 53, 1, 40000), udp(110, 9, 53, 2, 5000));
        assert_eq!(f.assign(2, &c, &d), Some(1));
        // Another source port: another flow.
        let e = udp(120, 2, 5001, 9, 53);
        assert_eq!(f.assign(3, &e, &e), Some(2));
        // An ICMP error quoting the first packet as translated joins its flow; one quoting
        // nothing open has none.
        let mut err = Obs {
            ts_ns: 130,
            family: 4,
            proto: 1,
            has: has::ICMP | has::INNER,
            icmp_type: 3,
            src: v4(9),
            dst: v4(1),
            inner_src: v4(1),
            inner_dst: v4(9),
            inner_proto: 17,
            inner_sport: 40000,
            inner_dport: 53,
            ..Obs::default()
        };
        assert_eq!(f.assign(4, &err, &err), Some(1));
        err.inner_sport = 7;
        assert_eq!(f.assign(5, &err, &err), None);
        assert_eq!(lines(&mut f), "");
        f.close_all();
        assert_eq!(
            lines(&mut f),
            concat!(
                r#"{"type": "flow", "id": "f1", "proto": "udp", "original": {"src": "10.0.0.2", "sport": 5000, "#,
                r#""dst": "10.0.0.9", "dport": 53}, "reply": {"src": "10.0.0.9", "sport": 53, "dst": "10.0.0.1", "#,
                r#""dport": 40000}, "paths": ["p1", "p2", "p4"]}"#,
                "\n",
                r#"{"type": "flow", "id": "f2", "proto": "udp", "original": {"src": "10.0.0.2", "sport": 5001, "#,
                r#""dst": "10.0.0.9", "dport": 53}, "reply": {"src": "10.0.0.9", "sport": 53, "dst": "10.0.0.2", "#,
                r#""dport": 5001}, "paths": ["p3"]}"#,
                "\n",
            )
        );
        assert_eq!(f.open(), 0);
    }

    #[test]
    fn idle_flows_close_in_idle_order_and_silence_starts_a_new_one() {
        let mut f = Flows::new(1_000, 1000);
        let a = udp(0, 2, 1, 9, 53);
        let b = udp(100, 2, 2, 9, 53);
        assert_eq!(f.assign(1, &a, &a), Some(1));
        assert_eq!(f.assign(2, &b, &b), Some(2));
        let a2 = udp(500, 2, 1, 9, 53);
        assert_eq!(f.assign(3, &a2, &a2), Some(1)); // f1 touched at 500 now
        f.expire(1_050); // cutoff 50: nothing idle that long
        assert_eq!(lines(&mut f), "");
        f.expire(1_200); // cutoff 200: f2 (last at 100); f1 is re-filed at 500
        assert!(lines(&mut f).starts_with(r#"{"type": "flow", "id": "f2""#));
        // Same addresses after more than the idle time: f1 closes, f3 opens.
        let a3 = udp(1_600, 2, 1, 9, 53);
        assert_eq!(f.assign(4, &a3, &a3), Some(3));
        let out = lines(&mut f);
        assert!(out.starts_with(r#"{"type": "flow", "id": "f1""#), "{out}");
        assert!(out.ends_with("\"paths\": [\"p1\", \"p3\"]}\n"), "{out}");
    }

    #[test]
    fn a_flow_at_its_path_cap_closes_and_the_next_path_opens_another() {
        let mut f = Flows::new(1_000, 2);
        let a = udp(0, 2, 1, 9, 53);
        assert_eq!(f.assign(1, &a, &a), Some(1));
        assert_eq!(f.assign(2, &a, &a), Some(1));
        assert_eq!(f.assign(3, &a, &a), Some(2));
        assert!(lines(&mut f).ends_with("\"paths\": [\"p1\", \"p2\"]}\n"));
        f.expire(u64::MAX); // f1's heap entry goes quietly; f2 closes
        assert!(lines(&mut f).starts_with(r#"{"type": "flow", "id": "f2""#));
        assert_eq!(
            f.assign(4, &Obs::default(), &Obs::default()),
            None,
            "not IP"
        );
    }
}
