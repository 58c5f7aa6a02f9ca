//! Annotation tables: what live's annotators (tracer/annotate/attribution.py `Attributor`,
//! tracer/annotate/nftrace.py `RuleTrace`) say of a path, kept per path shape so Python is asked
//! once per shape, not once per path.
//!
//! A path's shape is everything an annotator reads of it: per hop its label (node,
//! interface), namespace, ifindex, direction and ICMP echo id (and its IP ID when an
//! annotator answers per packet, as a netfilter trace does), the protocol, and per NAT
//! event its kind, hook, endpoints, ICMP ids and hops. Equal shapes get equal answers
//! until Python says its tables changed ([`Notes::forget`]). An answer is: per hop the
//! node name (the namespace's name), per NAT event its node and the rendered fields an
//! annotator adds (`"rule": ..., "rule_source": ..., "conntrack": {...}` and the text
//! form), the conntrack id its flow takes, and per annotator how many NAT events it
//! found no conntrack entry for (counted per path rendered). An answer marked
//! provisional (no conntrack entry yet: the table may learn it) is asked again at the
//! next step.
//!
//! The finisher collects a step's misses and asks once per step ([`NoteProvider`]):
//! no path waits longer than its step.

use crate::hash::FastMap;
use crate::labels::Labels;
use crate::nat::{Endpoints, NatEvent};
use crate::obs::Obs;

/// What the provider answers for one NAT event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawNatNote {
    /// The node the event happened at ("surrogatepass" UTF-8); None: the label's.
    pub node: Option<Vec<u8>>,
    /// `"rule": ...` and what follows it in the event's NDJSON object (without the
    /// leading `, `), as tracer/sinks/output.py writes it.
    pub json: Vec<u8>,
    /// What `nat_text` appends after the hook (`  rule: ...  ct N`).
    pub text: Vec<u8>,
    pub conntrack_id: Option<u64>,
}

/// What the provider answers for one path shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawNote {
    /// Per hop, its node name; None: the label's.
    pub hop_nodes: Vec<Option<Vec<u8>>>,
    pub nat: Vec<RawNatNote>,
    /// Per annotator, NAT events without a conntrack entry in this path.
    pub counts: Vec<u64>,
    /// Ask again at the next step.
    pub provisional: bool,
}

/// Python's side: answers for a step's unseen path shapes.
pub trait NoteProvider: Send + Sync + std::fmt::Debug {
    /// `lines`: one NDJSON line per miss, unannotated; `extras`: per hop of those lines,
    /// `(ifindex, source, digest, wire_len)`. None: no answer (the paths are written
    /// unannotated, and nothing is remembered).
    fn resolve(&mut self, lines: &[u8], extras: &[u64]) -> Option<Vec<RawNote>>;
}

/// A NAT event's annotation, ready to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatNote {
    /// The label whose node the event names.
    pub label: u32,
    pub json: Vec<u8>,
    pub text: Vec<u8>,
    pub conntrack_id: Option<u64>,
}

#[derive(Debug, Default)]
struct Note {
    /// False until the provider answered.
    ready: bool,
    hop_labels: Vec<u32>,
    nat: Vec<NatNote>,
    counts: Vec<u64>,
    provisional: bool,
}

/// The tables and the provider (see the module documentation).
#[derive(Debug)]
pub struct Notes {
    provider: Box<dyn NoteProvider>,
    per_packet: bool,
    map: FastMap<Box<[u64]>, u32>,
    notes: Vec<Note>,
    key: Vec<u64>,
    /// Per annotator, NAT events without conntrack in the paths rendered so far.
    counts: Vec<u64>,
    /// Shapes asked this step: (note index, the path's hops, its NAT events) as ranges
    /// of `miss_obs` / `miss_nat`.
    misses: Vec<(u32, usize, usize, usize, usize)>,
    miss_keys: Vec<Box<[u64]>>,
    miss_obs: Vec<Obs>,
    miss_nat: Vec<NatEvent>,
}

/// Past this many shapes, start over (a flood of distinct flows must not grow it forever).
const MAX_SHAPES: usize = 200_000;

fn push_ends(key: &mut Vec<u64>, e: &Endpoints) {
    let (s0, s1) = e.src.split_at(8);
    let (d0, d1) = e.dst.split_at(8);
    for half in [s0, s1, d0, d1] {
        let mut b = [0u8; 8];
        b.copy_from_slice(half);
        key.push(u64::from_le_bytes(b));
    }
    key.push(
        u64::from(e.sport.map_or(0, |p| u32::from(p) | 0x1_0000))
            | (u64::from(e.dport.map_or(0, |p| u32::from(p) | 0x1_0000)) << 32),
    );
}

impl Notes {
    /// `per_packet`: an annotator reads each packet's IP ID (the shape includes it).
    pub fn new(provider: Box<dyn NoteProvider>, per_packet: bool) -> Notes {
        Notes {
            provider,
            per_packet,
            map: FastMap::default(),
            notes: Vec::new(),
            key: Vec::new(),
            counts: Vec::new(),
            misses: Vec::new(),
            miss_keys: Vec::new(),
            miss_obs: Vec::new(),
            miss_nat: Vec::new(),
        }
    }

    /// Python's tables changed: every answer is asked again.
    pub fn forget(&mut self) {
        self.map.clear();
        self.notes.clear();
    }

    /// Per annotator, the NAT events rendered without a conntrack entry since the last call.
    pub fn take_counts(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.counts)
    }

    fn shape(&mut self, hops: &[Obs], nat: &[NatEvent]) {
        let key = &mut self.key;
        key.clear();
        key.push(hops.len() as u64 | ((nat.len() as u64) << 32));
        key.push(hops.first().map_or(0, |h| u64::from(h.proto)));
        for h in hops {
            key.push(h.netns);
            key.push(u64::from(h.hop) | (u64::from(h.dir) << 32) | (u64::from(h.icmp_id) << 40));
            key.push(
                u64::from(h.ifindex as u32)
                    | (u64::from(h.family) << 32)
                    | (u64::from(h.has) << 40),
            );
            if self.per_packet {
                key.push(u64::from(h.ip_id));
            }
        }
        for ev in nat {
            key.push(
                u64::from(ev.hop)
                    | ((ev.kind as u64) << 32)
                    | ((ev.hook as u64) << 36)
                    | (u64::from(ev.family) << 40),
            );
            key.push(u64::from(ev.from_hop) | (u64::from(ev.icmp_ids.is_some()) << 32));
            if let Some((b, a)) = ev.icmp_ids {
                key.push(u64::from(b) | (u64::from(a) << 16));
            }
            push_ends(key, &ev.before);
            push_ends(key, &ev.after);
        }
    }

    /// The note of a path's shape, for [`Notes::apply`]; a shape not seen is queued for
    /// [`Notes::resolve`] (once per shape per step). None: no room.
    pub fn lookup(&mut self, hops: &[Obs], nat: &[NatEvent]) -> Option<u32> {
        self.shape(hops, nat);
        if let Some(&i) = self.map.get(self.key.as_slice()) {
            return Some(i);
        }
        if self.notes.len() >= MAX_SHAPES && self.misses.is_empty() {
            self.forget();
        }
        let i = u32::try_from(self.notes.len()).ok()?;
        self.notes.push(Note::default());
        let key: Box<[u64]> = self.key.clone().into_boxed_slice();
        self.map.insert(key.clone(), i);
        self.miss_keys.push(key);
        let (o0, n0) = (self.miss_obs.len(), self.miss_nat.len());
        self.miss_obs.extend_from_slice(hops);
        self.miss_nat.extend_from_slice(nat);
        self.misses
            .push((i, o0, self.miss_obs.len(), n0, self.miss_nat.len()));
        Some(i)
    }

    /// Whether shapes are waiting for an answer.
    pub fn pending(&self) -> bool {
        !self.misses.is_empty()
    }

    /// Ask the provider about the queued shapes; `render` writes a miss's unannotated line.
    pub fn resolve(
        &mut self,
        labels: &mut Labels,
        mut render: impl FnMut(&mut Vec<u8>, &[Obs], &[NatEvent], &Labels),
    ) {
        if self.misses.is_empty() {
            return;
        }
        let mut lines = Vec::new();
        let mut extras = Vec::new();
        for &(_, o0, o1, n0, n1) in &self.misses {
            let (Some(hops), Some(nat)) = (self.miss_obs.get(o0..o1), self.miss_nat.get(n0..n1))
            else {
                continue;
            };
            render(&mut lines, hops, nat, labels);
            for o in hops {
                extras.extend([
                    u64::from(o.ifindex as u32),
                    u64::from(o.source),
                    o.digest,
                    u64::from(o.wire_len),
                ]);
            }
        }
        let answers = self.provider.resolve(&lines, &extras);
        let misses = std::mem::take(&mut self.misses);
        let ok = answers.as_ref().is_some_and(|a| a.len() == misses.len());
        for (k, &(i, o0, o1, n0, n1)) in misses.iter().enumerate() {
            let raw = answers.as_ref().and_then(|a| a.get(k)).filter(|_| ok);
            let (Some(raw), Some(hops), Some(nat)) =
                (raw, self.miss_obs.get(o0..o1), self.miss_nat.get(n0..n1))
            else {
                continue;
            };
            if raw.hop_nodes.len() != hops.len() || raw.nat.len() != nat.len() {
                continue;
            }
            let relabel = |labels: &mut Labels, hop: u32, node: &Option<Vec<u8>>| match node {
                Some(n) if labels.get(hop).node_raw != *n => {
                    let iface = labels.get(hop).iface_raw.clone();
                    labels.intern_wtf8(n, &iface)
                }
                _ => hop,
            };
            let hop_labels = hops
                .iter()
                .zip(&raw.hop_nodes)
                .map(|(h, n)| relabel(labels, h.hop, n))
                .collect();
            let nat_notes = nat
                .iter()
                .zip(&raw.nat)
                .map(|(ev, n)| NatNote {
                    label: relabel(labels, ev.hop, &n.node),
                    json: n.json.clone(),
                    text: n.text.clone(),
                    conntrack_id: n.conntrack_id,
                })
                .collect();
            if let Some(note) = self.notes.get_mut(i as usize) {
                *note = Note {
                    ready: true,
                    hop_labels,
                    nat: nat_notes,
                    counts: raw.counts.clone(),
                    provisional: raw.provisional,
                };
            }
        }
        // Shapes without an answer, and provisional ones, are asked again next time.
        let keys = std::mem::take(&mut self.miss_keys);
        for (&(i, ..), key) in misses.iter().zip(&keys) {
            let drop = self
                .notes
                .get(i as usize)
                .is_none_or(|n| !n.ready || n.provisional);
            if drop && self.map.get(key) == Some(&i) {
                self.map.remove(key);
            }
        }
        self.miss_obs.clear();
        self.miss_nat.clear();
    }

    /// The conntrack entry note `i` names first (its path's flow's), when answered.
    pub fn conntrack_of(&self, i: u32) -> Option<u64> {
        let note = self.notes.get(i as usize).filter(|n| n.ready)?;
        note.nat.iter().find_map(|n| n.conntrack_id)
    }

    /// Note `i` applied to a path: its hops relabelled into `hops_out`, its NAT events'
    /// labels into `nat_out`; its counts added. None when `i` has no answer.
    pub fn apply<'a>(
        &'a mut self,
        i: u32,
        hops: &[Obs],
        nat: &[NatEvent],
        hops_out: &mut Vec<Obs>,
        nat_out: &mut Vec<NatEvent>,
    ) -> Option<&'a [NatNote]> {
        let note = self.notes.get(i as usize).filter(|n| n.ready)?;
        hops_out.clear();
        hops_out.extend_from_slice(hops);
        for (h, &l) in hops_out.iter_mut().zip(&note.hop_labels) {
            h.hop = l;
        }
        nat_out.clear();
        nat_out.extend_from_slice(nat);
        for (ev, n) in nat_out.iter_mut().zip(&note.nat) {
            ev.hop = n.label;
        }
        if self.counts.len() < note.counts.len() {
            self.counts.resize(note.counts.len(), 0);
        }
        for (c, &d) in self.counts.iter_mut().zip(&note.counts) {
            *c += d;
        }
        Some(&note.nat)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Renames every hop's node to "named" and counts its calls and the lines it was asked.
    #[derive(Debug, Default)]
    struct Namer {
        calls: Arc<AtomicUsize>,
        lines: Arc<AtomicUsize>,
        provisional: bool,
    }

    impl NoteProvider for Namer {
        fn resolve(&mut self, lines: &[u8], _extras: &[u64]) -> Option<Vec<RawNote>> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let n = lines.iter().filter(|&&b| b == b'\n').count();
            self.lines.fetch_add(n, Ordering::Relaxed);
            Some(
                (0..n)
                    .map(|_| RawNote {
                        hop_nodes: vec![Some(b"named".to_vec()), None],
                        nat: Vec::new(),
                        counts: vec![1],
                        provisional: self.provisional,
                    })
                    .collect(),
            )
        }
    }

    fn path(labels: &mut Labels, netns: u64, ip_id: u32) -> Vec<Obs> {
        let a = labels.intern("web", "eth0");
        let b = labels.intern("host", "eth0");
        [(a, netns, 2u8), (b, netns + 1, 1u8)]
            .map(|(hop, netns, dir)| Obs {
                hop,
                netns,
                dir,
                ip_id,
                ..Obs::default()
            })
            .to_vec()
    }

    fn render(out: &mut Vec<u8>, _: &[Obs], _: &[NatEvent], _: &Labels) {
        out.extend_from_slice(b"{}\n");
    }

    #[test]
    fn a_shape_is_asked_once_and_its_answer_applies_to_every_path_of_it() {
        let calls = Arc::new(AtomicUsize::new(0));
        let lines = Arc::new(AtomicUsize::new(0));
        let namer = Namer {
            calls: Arc::clone(&calls),
            lines: Arc::clone(&lines),
            provisional: false,
        };
        let mut notes = Notes::new(Box::new(namer), false);
        let mut labels = Labels::new();
        let (p1, p2, p3) = (
            path(&mut labels, 10, 1),
            path(&mut labels, 10, 2),
            path(&mut labels, 20, 1),
        );
        let ids: Vec<Option<u32>> = [&p1, &p2, &p3]
            .iter()
            .map(|p| notes.lookup(p, &[]))
            .collect();
        assert_eq!(ids[0], ids[1]); // the IP ID is not part of the shape
        assert_ne!(ids[0], ids[2]);
        notes.resolve(&mut labels, render);
        assert_eq!(
            (calls.load(Ordering::Relaxed), lines.load(Ordering::Relaxed)),
            (1, 2)
        );
        let (mut hops, mut nat) = (Vec::new(), Vec::new());
        let i = notes.lookup(&p2, &[]).expect("room");
        assert!(notes.apply(i, &p2, &[], &mut hops, &mut nat).is_some());
        assert_eq!(labels.get(hops[0].hop).node, "named");
        assert_eq!(labels.get(hops[1].hop).node, "host");
        assert!(!notes.pending());
        assert_eq!(notes.take_counts(), vec![1]);
        notes.forget();
        notes.lookup(&p2, &[]);
        assert!(notes.pending());
    }

    #[test]
    fn per_packet_shapes_and_provisional_answers_are_asked_again() {
        let calls = Arc::new(AtomicUsize::new(0));
        let namer = Namer {
            calls: Arc::clone(&calls),
            provisional: true,
            ..Namer::default()
        };
        let mut notes = Notes::new(Box::new(namer), true);
        let mut labels = Labels::new();
        let (p1, p2) = (path(&mut labels, 10, 1), path(&mut labels, 10, 2));
        assert_ne!(notes.lookup(&p1, &[]), notes.lookup(&p2, &[]));
        notes.resolve(&mut labels, render);
        let i = notes.lookup(&p1, &[]).expect("room");
        assert!(notes.pending()); // provisional: asked again at the next step
        let (mut hops, mut nat) = (Vec::new(), Vec::new());
        assert!(notes.apply(i, &p1, &[], &mut hops, &mut nat).is_none());
        notes.resolve(&mut labels, render);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }
}
