//! Who took a packet that ended in a namespace's own stack: the `"local"` object of a
//! path or flow line (CONTRACT.md), kept in a table that Python fills off the hot path
//! (tracer/annotate/local.py `LocalLookup`, run by a worker thread).
//!
//! A path ends locally when its verdict is `delivered` and its last hop is an rx (or a
//! drop after it, in the same namespace). Its key is the last hop's namespace and
//! 5-tuple (ICMP echo: its id for both ports). The first time a key is seen it gets a
//! slot and is queued as a *miss* ([`Locals::take_misses`]: fixed-size records, one
//! batch per step); Python answers later with the slot's JSON fields and its text
//! ([`Locals::set`]). Nothing waits for the answer: a path written before it has no
//! `"local"`; its flow, written when it closes, carries it if it arrived by then, and
//! so do later paths of the same key.
//!
//! What is rendered: `"local": {"node": <the last hop's node>, <fields>}` appended to
//! the line, and in text a line `delivered to nginx (pid 12) on web` (the answer's
//! text, then ` on ` and the node, as the text output names it).

use crate::hash::FastMap;
use crate::labels::Labels;
use crate::obs::{dir, Obs};
use crate::safe_text::term_safe_wtf8;
use crate::view;

/// Bytes of one miss record (see [`Locals::take_misses`]).
pub const MISS_SIZE: usize = 64;

/// A slot preset from a recording, whose node is named by the first path that finds it.
const NO_LABEL: u32 = u32::MAX;

/// pcapng Custom Block types (copiable and not) that may carry hoptrace's annotations.
pub const CUSTOM_BLOCK_TYPES: [u32; 2] = [0x4000_0BAD, 0x0000_0BAD];
/// What a hoptrace custom block's data starts with (after its Private Enterprise Number):
/// the magic, then a kind (u16 LE) and a version (u16 LE). tracer/sinks/record.py writes them.
pub const BLOCK_MAGIC: &[u8; 8] = b"hoptrace";
/// Kinds of hoptrace custom blocks: who took a packet (this module); 2 is kept for `relay`.
pub const KIND_LOCAL: u16 = 1;
pub const KIND_RELAY: u16 = 2;

/// One recorded answer: the miss record (the key), the JSON fields, the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNote {
    pub record: Vec<u8>,
    pub json: Vec<u8>,
    pub text: Vec<u8>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let w: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(w))
}

/// The `local` answer a custom block's data (after the PEN) carries, checked as untrusted
/// input: `magic, kind 1, version 1, u32 record length (64), record, u32 json length, json,
/// u32 text length, text`. The JSON fields must be printable ASCII and read as a JSON
/// object's members (so a line stays one valid object); the text is made `term_safe`. None: not a local block, or damaged.
pub fn parse_block(data: &[u8]) -> Option<LocalNote> {
    if data.get(..8)? != BLOCK_MAGIC {
        return None;
    }
    let kind = u16::from_le_bytes(data.get(8..10)?.try_into().ok()?);
    let version = u16::from_le_bytes(data.get(10..12)?.try_into().ok()?);
    if kind != KIND_LOCAL || version != 1 {
        return None;
    }
    let mut at = 12usize;
    let field = |at: &mut usize| -> Option<&[u8]> {
        let n = u32_at(data, *at)? as usize;
        let start = at.checked_add(4)?;
        let v = data.get(start..start.checked_add(n)?)?;
        *at = start + n;
        Some(v)
    };
    let record = field(&mut at)?;
    let json = field(&mut at)?;
    let text = field(&mut at)?;
    if record.len() != MISS_SIZE {
        return None;
    }
    // As json.dumps writes them (ensure_ascii): printable ASCII, so no newline ends the line.
    if !json.iter().all(|b| (0x20..0x7f).contains(b)) {
        return None;
    }
    let fields = std::str::from_utf8(json).ok()?;
    let object: Vec<u32> = std::iter::once('{')
        .chain(fields.chars())
        .chain(std::iter::once('}'))
        .map(u32::from)
        .collect();
    if !matches!(
        crate::pyjson::loads(&object),
        Some(crate::pyjson::Val::Object(_))
    ) {
        return None;
    }
    Some(LocalNote {
        record: record.to_vec(),
        json: json.to_vec(),
        text: term_safe_wtf8(text),
    })
}

/// Past this many keys, start over (a flood of distinct flows must not grow it forever).
const MAX_KEYS: usize = 200_000;

/// A namespace and the 5-tuple of a packet as it arrived there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    netns: u64,
    family: u8,
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
}

impl Key {
    /// The key a miss record names (see `push_miss`).
    fn from_record(r: &[u8]) -> Option<Key> {
        let b8 = |a: usize| -> Option<[u8; 8]> { r.get(a..a + 8)?.try_into().ok() };
        let b2 = |a: usize| -> Option<[u8; 2]> { r.get(a..a + 2)?.try_into().ok() };
        let b16 = |a: usize| -> Option<[u8; 16]> { r.get(a..a + 16)?.try_into().ok() };
        Some(Key {
            netns: u64::from_le_bytes(b8(8)?),
            family: *r.get(16)?,
            proto: *r.get(17)?,
            sport: u16::from_le_bytes(b2(20)?),
            dport: u16::from_le_bytes(b2(22)?),
            src: b16(32)?,
            dst: b16(48)?,
        })
    }

    fn of(o: &Obs) -> Key {
        let (sport, dport) = match (view::sport(o), view::dport(o)) {
            (Some(s), Some(d)) => (s, d),
            _ if view::is_echo(o) => {
                let id = view::icmp_id(o).unwrap_or(0);
                (id, id)
            }
            _ => (0, 0),
        };
        Key {
            netns: o.netns,
            family: o.family,
            proto: o.proto,
            src: view::src(o),
            dst: view::dst(o),
            sport,
            dport,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Slot {
    /// The label of the hop it was first seen at: its node names the `"node"`.
    label: u32,
    /// The answer: JSON fields (without braces), the text for people. None: not yet.
    json: Option<Vec<u8>>,
    text: Vec<u8>,
}

/// Whether a path with this verdict and last hop ended in its namespace's own stack:
/// delivered there (its last hop an rx, or a drop after it), or freed there because no
/// socket wanted it (`NO_SOCKET`: the kernel answers a RST or a port unreachable, or a
/// raw socket had a clone).
pub fn ends_locally(delivered: bool, last: &Obs, labels: &Labels) -> bool {
    if last.family == 0 {
        return false;
    }
    if delivered {
        return matches!(last.dir, dir::RX | dir::DROP);
    }
    last.dir == dir::DROP && labels.drop_reason(last.drop_reason) == Some("NO_SOCKET")
}

/// The table of answers and the misses Python has not been told of.
#[derive(Debug, Default)]
pub struct Locals {
    map: FastMap<Key, u32>,
    slots: Vec<Slot>,
    misses: Vec<u8>,
    /// Bumped when the table starts over: a slot number from before names nothing.
    epoch: u32,
    /// Keys not seen are queued as misses (live); a replay has nobody to ask.
    quiet: bool,
}

impl Locals {
    pub fn new() -> Locals {
        Locals::default()
    }

    /// A table filled from a recording's answers only ([`Locals::preset`]): no misses.
    pub fn quiet() -> Locals {
        Locals {
            quiet: true,
            ..Locals::default()
        }
    }

    /// A recorded answer (a replay): the key its record names takes it, now and from then on.
    pub fn preset(&mut self, note: &LocalNote) {
        let Some(key) = Key::from_record(&note.record) else {
            return;
        };
        let i = match self.map.get(&key) {
            Some(&i) => i,
            None => {
                if self.slots.len() >= MAX_KEYS {
                    return;
                }
                let Ok(i) = u32::try_from(self.slots.len()) else {
                    return;
                };
                self.slots.push(Slot {
                    label: NO_LABEL,
                    ..Slot::default()
                });
                self.map.insert(key, i);
                i
            }
        };
        if let Some(s) = self.slots.get_mut(i as usize) {
            s.json = Some(note.json.clone());
            s.text.clone_from(&note.text);
        }
    }

    /// The handle (epoch and slot) of the key of a path that ended locally at `last`
    /// (label `label`: the node its line names); a key not seen before is queued as a
    /// miss. None: no room.
    pub fn note(&mut self, last: &Obs, label: u32) -> Option<u64> {
        let key = Key::of(last);
        if let Some(&i) = self.map.get(&key) {
            if let Some(s) = self.slots.get_mut(i as usize) {
                if s.label == NO_LABEL {
                    s.label = label;
                }
            }
            return Some(self.handle(i));
        }
        if self.slots.len() >= MAX_KEYS {
            // Answers still on their way to old slots are dropped: the epoch tells.
            self.map.clear();
            self.slots.clear();
            self.misses.clear();
            self.epoch = self.epoch.wrapping_add(1);
        }
        let i = u32::try_from(self.slots.len()).ok()?;
        self.slots.push(Slot {
            label,
            ..Slot::default()
        });
        self.map.insert(key, i);
        if !self.quiet {
            self.push_miss(i, &key, last);
        }
        Some(self.handle(i))
    }

    fn handle(&self, slot: u32) -> u64 {
        (u64::from(self.epoch) << 32) | u64::from(slot)
    }

    /// The slot a handle names, when it is of the current epoch.
    fn slot(&self, handle: u64) -> Option<&Slot> {
        if (handle >> 32) as u32 != self.epoch {
            return None;
        }
        self.slots.get((handle & 0xffff_ffff) as usize)
    }

    /// Record layout (little-endian, [`MISS_SIZE`] bytes): slot u32, epoch u32, netns u64,
    /// family u8, proto u8, tcp_flags u8, icmp_type u8, sport u16, dport u16, ts_ns u64,
    /// src [16], dst [16]; ports are the echo id for ICMP echo, 0 when none.
    fn push_miss(&mut self, slot: u32, key: &Key, o: &Obs) {
        let m = &mut self.misses;
        m.extend_from_slice(&slot.to_le_bytes());
        m.extend_from_slice(&self.epoch.to_le_bytes());
        m.extend_from_slice(&key.netns.to_le_bytes());
        m.extend_from_slice(&[key.family, key.proto, o.tcp_flags, o.icmp_type]);
        m.extend_from_slice(&key.sport.to_le_bytes());
        m.extend_from_slice(&key.dport.to_le_bytes());
        m.extend_from_slice(&o.ts_ns.to_le_bytes());
        m.extend_from_slice(&key.src);
        m.extend_from_slice(&key.dst);
    }

    /// The keys first seen since the last call, as records (see `push_miss`).
    pub fn take_misses(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.misses)
    }

    /// The answer for `slot` of `epoch`: `json` the object's fields after `"node"`
    /// (`"pid": 12, "comm": "nginx", ...`, or empty), `text` what the text says before
    /// ` on <node>`. An answer for an earlier epoch or an unknown slot is ignored.
    pub fn set(&mut self, slot: u32, epoch: u32, json: &[u8], text: &[u8]) {
        if epoch != self.epoch {
            return;
        }
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.json = Some(json.to_vec());
            s.text = text.to_vec();
        }
    }

    /// Whether the key `handle` names has its answer.
    pub fn known(&self, handle: u64) -> bool {
        self.slot(handle).is_some_and(|s| s.json.is_some())
    }

    /// How many keys are waiting for an answer or were ever asked (the table's size).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The line at `out[line_start..]` (one NDJSON object and its newline) with
    /// `"local"` added last, when the key `handle` names has its answer; `label` names
    /// the node (None: the key's own).
    pub fn patch_json(
        &self,
        line_start: usize,
        out: &mut Vec<u8>,
        handle: u64,
        label: Option<u32>,
        labels: &Labels,
    ) {
        let Some(s) = self.slot(handle) else {
            return;
        };
        let Some(json) = &s.json else {
            return;
        };
        // The line ends `}\n`: take both back, add the key, close again.
        if out.len() < line_start + 2 || !out.ends_with(b"}\n") {
            return;
        }
        out.truncate(out.len() - 2);
        out.extend_from_slice(b", \"local\": {\"node\": ");
        out.extend_from_slice(&labels.get(label.unwrap_or(s.label)).node_json);
        if !json.is_empty() {
            out.extend_from_slice(b", ");
            out.extend_from_slice(json);
        }
        out.extend_from_slice(b"}}\n");
    }

    /// The text block or line at `out[line_start..]` (ending with `gap`, `"\n\n"` or
    /// `"\n"`) with what took the packet added: on a line of its own (`own_line`), or at the end of the line.
    #[allow(clippy::too_many_arguments)]
    pub fn patch_text(
        &self,
        line_start: usize,
        out: &mut Vec<u8>,
        handle: u64,
        label: Option<u32>,
        labels: &Labels,
        gap: &[u8],
        own_line: bool,
    ) {
        let Some(s) = self.slot(handle) else {
            return;
        };
        if s.json.is_none() || s.text.is_empty() {
            return;
        }
        if out.len() < line_start + gap.len() || !out.ends_with(gap) {
            return;
        }
        out.truncate(out.len() - gap.len());
        if own_line {
            out.extend_from_slice(b"\n     ");
        } else {
            out.extend_from_slice(b"  ");
        }
        out.extend_from_slice(&s.text);
        out.extend_from_slice(b" on ");
        out.extend_from_slice(&labels.get(label.unwrap_or(s.label)).node_text);
        out.extend_from_slice(gap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::has;

    fn rx(labels: &mut Labels, netns: u64, sport: u16) -> (Obs, u32) {
        let hop = labels.intern("web", "eth0");
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[172, 17, 0, 3]);
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[172, 17, 0, 2]);
        let o = Obs {
            hop,
            netns,
            dir: dir::RX,
            family: 4,
            proto: 6,
            has: has::L4_PORTS,
            src,
            dst,
            sport,
            dport: 80,
            tcp_flags: 0x02,
            ts_ns: 7,
            ..Obs::default()
        };
        (o, hop)
    }

    #[test]
    fn a_key_is_asked_once_and_its_answer_patches_lines() {
        let mut labels = Labels::new();
        let mut l = Locals::new();
        let (a, hop) = rx(&mut labels, 10, 40000);
        let (b, _) = rx(&mut labels, 10, 40001);
        let s = l.note(&a, hop).expect("room");
        assert_eq!(l.note(&a, hop), Some(s));
        let t = l.note(&b, hop).expect("room");
        assert_ne!(s, t);
        let misses = l.take_misses();
        assert_eq!(misses.len(), 2 * MISS_SIZE);
        assert_eq!(&misses[0..4], &(s as u32).to_le_bytes());
        assert_eq!(&misses[8..16], &10u64.to_le_bytes());
        assert_eq!(&misses[16..20], &[4, 6, 0x02, 0]);
        assert_eq!(&misses[20..22], &40000u16.to_le_bytes());
        assert_eq!(&misses[22..24], &80u16.to_le_bytes());
        assert_eq!(&misses[32..36], &[172, 17, 0, 3]);
        assert_eq!(&misses[48..52], &[172, 17, 0, 2]);
        assert!(l.take_misses().is_empty());

        let line = b"{\"type\": \"path\", \"id\": \"p1\"}\n";
        let mut out = line.to_vec();
        l.patch_json(0, &mut out, s, None, &labels);
        assert_eq!(out, line, "no answer yet: the line is as it was");
        l.set(s as u32, 1, b"\"pid\": 1", b"x"); // another epoch: ignored
        assert!(!l.known(s));
        l.set(
            s as u32,
            0,
            b"\"pid\": 12, \"comm\": \"nginx\"",
            b"delivered to nginx (pid 12)",
        );
        l.patch_json(0, &mut out, s, None, &labels);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "{\"type\": \"path\", \"id\": \"p1\", \"local\": {\"node\": \"web\", \"pid\": 12, \"comm\": \"nginx\"}}\n"
        );
        let mut text = b"p1  tcp\n     web/eth0 rx\n\n".to_vec();
        l.patch_text(0, &mut text, s, None, &labels, b"\n\n", true);
        assert_eq!(
            String::from_utf8(text).expect("utf-8"),
            "p1  tcp\n     web/eth0 rx\n     delivered to nginx (pid 12) on web\n\n"
        );
        let mut text = b"f1  tcp\n".to_vec();
        l.patch_text(0, &mut text, s, None, &labels, b"\n", false);
        assert_eq!(
            String::from_utf8(text).expect("utf-8"),
            "f1  tcp  delivered to nginx (pid 12) on web\n"
        );
    }

    #[test]
    fn delivered_paths_ending_in_rx_or_drop_and_no_socket_drops_end_locally() {
        let mut labels = Labels::new();
        labels.set_drop_reason(2, "NO_SOCKET");
        labels.set_drop_reason(3, "NETFILTER_DROP");
        let (mut o, _) = rx(&mut labels, 1, 1);
        assert!(ends_locally(true, &o, &labels));
        assert!(!ends_locally(false, &o, &labels));
        o.dir = dir::TX;
        assert!(!ends_locally(true, &o, &labels));
        o.dir = dir::DROP;
        assert!(ends_locally(true, &o, &labels));
        o.drop_reason = 3;
        assert!(!ends_locally(false, &o, &labels));
        o.drop_reason = 2;
        assert!(ends_locally(false, &o, &labels));
        o.family = 0;
        assert!(!ends_locally(true, &o, &labels));
    }

    fn block(record: &[u8], json: &[u8], text: &[u8]) -> Vec<u8> {
        let mut b = BLOCK_MAGIC.to_vec();
        b.extend_from_slice(&KIND_LOCAL.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        for f in [record, json, text] {
            b.extend_from_slice(&(f.len() as u32).to_le_bytes());
            b.extend_from_slice(f);
        }
        b.extend_from_slice(&[0, 0, 0]); // padding
        b
    }

    #[test]
    fn recorded_blocks_are_checked_and_preset_the_table() {
        let mut labels = Labels::new();
        let (o, hop) = rx(&mut labels, 10, 40000);
        let mut asker = Locals::new();
        asker.note(&o, hop);
        let record = asker.take_misses();
        let good = parse_block(&block(&record, b"\"kernel\": \"tcp rst\"", b"a\x1bb"));
        let good = good.expect("a good block");
        assert_eq!(good.text, b"a\\x1bb");
        for bad in [
            block(&record, b"\"pid\": 1}, {\"x\": 2", b"t"),
            block(&record, b"\"pid\": 1\n", b"t"),
            block(&record, b"\"pid\": \"\xc3\xa9\"", b"t"),
            block(&record[..10], b"\"pid\": 1", b"t"),
            block(&record, b"", b"t")[..20].to_vec(),
            b"hoptrace".to_vec(),
            Vec::new(),
        ] {
            assert_eq!(parse_block(&bad), None, "{bad:?}");
        }
        let mut empty = block(&record, b"\"pid\": 1", b"t");
        empty[8] = 2; // a relay block: not this module's
        assert_eq!(parse_block(&empty), None);

        let mut replay = Locals::quiet();
        replay.preset(&good);
        let h = replay.note(&o, hop).expect("room");
        assert!(replay.known(h));
        assert!(replay.take_misses().is_empty(), "a replay asks nobody");
        let mut out = b"{\"type\": \"flow\"}\n".to_vec();
        replay.patch_json(0, &mut out, h, None, &labels);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "{\"type\": \"flow\", \"local\": {\"node\": \"web\", \"kernel\": \"tcp rst\"}}\n"
        );
    }

    #[test]
    fn a_full_table_starts_over_in_a_new_epoch() {
        let mut labels = Labels::new();
        let mut l = Locals::new();
        let (mut o, hop) = rx(&mut labels, 1, 1);
        for k in 0..MAX_KEYS as u64 {
            o.netns = k;
            l.note(&o, hop);
        }
        l.take_misses();
        let old = l
            .note(
                &{
                    let mut p = o;
                    p.netns = 0;
                    p
                },
                hop,
            )
            .expect("room");
        o.netns = u64::MAX;
        assert_eq!(l.note(&o, hop), Some(1 << 32));
        assert!(
            l.slot(old).is_none(),
            "a handle of the old epoch names nothing"
        );
        assert_eq!(l.len(), 1);
        let m = l.take_misses();
        assert_eq!(&m[4..8], &1u32.to_le_bytes());
    }

    proptest::proptest! {
        /// Any bytes: no panic; what is accepted keeps a line one JSON object and its text safe.
        #[test]
        fn any_block_is_refused_or_renders_one_safe_line(
            json in r#"("[a-z\\]{1,3}": ("[a-z\\\n]{0,3}"|[0-9]{1,3}|null|\{\}|\[)(, |\}, |,)?){0,3}"#,
            text in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..120),
            cut in 0usize..200,
        ) {
            let _ = parse_block(&junk);
            let mut labels = Labels::new();
            let (o, hop) = rx(&mut labels, 10, 40000);
            let mut asker = Locals::new();
            asker.note(&o, hop);
            let record = asker.take_misses();
            let whole = block(&record, json.as_bytes(), &text);
            let _ = parse_block(whole.get(..cut.min(whole.len())).unwrap_or(&[]));
            if let Some(note) = parse_block(&whole) {
                let mut replay = Locals::quiet();
                replay.preset(&note);
                let h = replay.note(&o, hop).expect("room");
                let mut out = b"{\"type\": \"flow\"}\n".to_vec();
                replay.patch_json(0, &mut out, h, None, &labels);
                let line = String::from_utf8(out).expect("ascii");
                proptest::prop_assert_eq!(line.matches('\n').count(), 1);
                let cps: Vec<u32> = line.trim_end().chars().map(u32::from).collect();
                proptest::prop_assert!(matches!(crate::pyjson::loads(&cps), Some(crate::pyjson::Val::Object(_))));
                let mut t = b"f1  tcp\n".to_vec();
                replay.patch_text(0, &mut t, h, None, &labels, b"\n", false);
                proptest::prop_assert!(!t.iter().any(|&b| b == 0x1b || b == b'\r'));
            }
        }
    }
}
