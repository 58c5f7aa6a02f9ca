//! Names of where sightings happened: the hop label table a row's `hop` indexes
//! (node and interface, as Python's `HopLabel`), and the kernel's drop reason names.
//!
//! Names are interned once: NAT inference compares nodes by id, links are keyed
//! by ids, and the renderer copies each name's JSON literal, escaped once here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::drops::RawSockets;
use crate::pytext::decode_utf8_surrogatepass;
use crate::safe_text::{char_count, term_safe_wtf8};
use crate::text::{json_str, push_json_code_points};

/// A "surrogatepass" UTF-8 name as `json.dumps` writes the `str` Python decodes it to.
fn json_wtf8(name: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(name) {
        Ok(s) => json_str(s),
        Err(_) => {
            // Not even surrogatepass UTF-8 (no reader makes such a name): U+FFFD, as lossy decoding.
            let cps = decode_utf8_surrogatepass(name).unwrap_or_else(|| {
                String::from_utf8_lossy(name)
                    .chars()
                    .map(u32::from)
                    .collect()
            });
            let mut v = Vec::with_capacity(cps.len() + 2);
            push_json_code_points(&mut v, &cps);
            v
        }
    }
}

/// One hop label: a (node, interface) pair, its interned ids and JSON literals.
#[derive(Debug, Clone)]
pub struct Label {
    pub node: String,
    pub iface: String,
    /// The names as they were given ("surrogatepass" UTF-8: what Python decodes to its `str`).
    pub node_raw: Vec<u8>,
    pub iface_raw: Vec<u8>,
    /// Equal for labels with equal node names.
    pub node_id: u32,
    /// Equal for labels with equal interface names.
    pub iface_id: u32,
    /// `"node"`, escaped as `json.dumps` escapes it.
    pub node_json: Vec<u8>,
    pub iface_json: Vec<u8>,
    /// The names as the text output shows them: `term_safe`, UTF-8, and their lengths
    /// in characters (what the text's columns count).
    pub node_text: Vec<u8>,
    pub iface_text: Vec<u8>,
    pub node_chars: usize,
    pub iface_chars: usize,
    /// The source could not name the node (`?`: no device and no namespace); finishing
    /// names such hops from their neighbours (drops.rs `name_hops`).
    pub unnamed: bool,
}

/// The hop label table and drop reason names of one source, append-only.
#[derive(Debug, Clone)]
pub struct Labels {
    labels: Vec<Label>,
    /// Keyed by the names' "surrogatepass" UTF-8 bytes (plain UTF-8 for a `str`).
    by_pair: HashMap<(Vec<u8>, Vec<u8>), u32>,
    names: HashMap<Vec<u8>, u32>,
    reasons: HashMap<u32, String>,
    /// Where and when raw ICMP sockets were open (what the source saw; drops.rs).
    raw: RawSockets,
    /// What an index outside the table reads as.
    missing: Label,
    /// Changes with every change of the table (process-wide unique values, so two tables
    /// have the same one only when one is a clone of the other, unchanged since).
    generation: u64,
}

/// The next [`Labels::generation`] value.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed)
}

impl Default for Labels {
    fn default() -> Self {
        Self::new()
    }
}

impl Labels {
    pub fn new() -> Self {
        Labels {
            labels: Vec::new(),
            by_pair: HashMap::new(),
            names: HashMap::new(),
            reasons: HashMap::new(),
            raw: RawSockets::new(),
            missing: Label {
                node: String::new(),
                iface: String::new(),
                node_raw: Vec::new(),
                iface_raw: Vec::new(),
                node_id: u32::MAX,
                iface_id: u32::MAX,
                node_json: json_str(""),
                iface_json: json_str(""),
                node_text: Vec::new(),
                iface_text: Vec::new(),
                node_chars: 0,
                iface_chars: 0,
                unnamed: false,
            },
            generation: next_generation(),
        }
    }

    /// Equal for two looks at the table only if nothing changed in between (a copy
    /// taken at the first look is still the table).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn name_id(&mut self, name: &[u8]) -> u32 {
        if let Some(&id) = self.names.get(name) {
            return id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.insert(name.to_owned(), id);
        id
    }

    /// The index of the label (`node`, `iface`), added if new: what a row's `hop` holds.
    pub fn intern(&mut self, node: &str, iface: &str) -> u32 {
        self.intern_wtf8(node.as_bytes(), iface.as_bytes())
    }

    /// [`Labels::intern`] for names as "surrogatepass" UTF-8 bytes (the file readers'
    /// labels: a capture may name an interface with bytes that are not UTF-8, which
    /// Python holds as lone surrogates and `json.dumps` writes as `\udcXX`).
    pub fn intern_wtf8(&mut self, node: &[u8], iface: &[u8]) -> u32 {
        if let Some(&i) = self.by_pair.get(&(node.to_vec(), iface.to_vec())) {
            return i;
        }
        let (node_text, iface_text) = (term_safe_wtf8(node), term_safe_wtf8(iface));
        let label = Label {
            unnamed: node == b"?",
            node_chars: char_count(&node_text),
            iface_chars: char_count(&iface_text),
            node_text,
            iface_text,
            node: String::from_utf8_lossy(node).into_owned(),
            iface: String::from_utf8_lossy(iface).into_owned(),
            node_raw: node.to_vec(),
            iface_raw: iface.to_vec(),
            node_id: self.name_id(node),
            iface_id: self.name_id(iface),
            node_json: json_wtf8(node),
            iface_json: json_wtf8(iface),
        };
        let i = u32::try_from(self.labels.len()).unwrap_or(u32::MAX);
        self.labels.push(label);
        self.by_pair.insert((node.to_vec(), iface.to_vec()), i);
        self.generation = next_generation();
        i
    }

    /// The label a row's `hop` points at. An index outside the table (a source that
    /// broke its contract) reads as a label with empty names rather than panicking.
    #[inline]
    pub fn get(&self, hop: u32) -> &Label {
        self.labels.get(hop as usize).unwrap_or(&self.missing)
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The name of kernel drop reason `code` (`enum skb_drop_reason`), as "surrogatepass"
    /// UTF-8 bytes (names are ASCII; anything else is shown as Python would decode it).
    pub fn set_drop_reason_wtf8(&mut self, code: u32, name: &[u8]) {
        match std::str::from_utf8(name) {
            Ok(s) => self.set_drop_reason(code, s),
            Err(_) => {
                let text: String = decode_utf8_surrogatepass(name)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| char::from_u32(c).unwrap_or('\u{FFFD}'))
                    .collect();
                self.set_drop_reason(code, &text);
            }
        }
    }

    /// The name of kernel drop reason `code` (`enum skb_drop_reason`).
    pub fn set_drop_reason(&mut self, code: u32, name: &str) {
        self.reasons.insert(code, name.to_owned());
        self.generation = next_generation();
    }

    /// Forget every drop reason name (a batch that brings its own table).
    pub fn clear_drop_reasons(&mut self) {
        self.reasons.clear();
        self.generation = next_generation();
    }

    /// Where and when raw ICMP sockets were open: (netns, from_ns, to_ns), replacing the
    /// table (paths judged later see it).
    pub fn set_raw_sockets(&mut self, spans: &[(u64, u64, u64)]) {
        self.raw.set(spans);
        self.generation = next_generation();
    }

    pub fn raw_sockets(&self) -> &RawSockets {
        &self.raw
    }

    /// The name of `code`, when known and not empty.
    pub fn drop_reason(&self, code: u32) -> Option<&str> {
        self.reasons
            .get(&code)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_gives_one_index_per_pair_and_one_id_per_name() {
        let mut l = Labels::new();
        let a = l.intern("host", "eth0");
        let b = l.intern("web", "eth0");
        assert_eq!(l.intern("host", "eth0"), a);
        assert_ne!(a, b);
        assert_eq!(l.get(a).iface_id, l.get(b).iface_id);
        assert_ne!(l.get(a).node_id, l.get(b).node_id);
        assert_eq!(l.get(a).node_json, b"\"host\"");
        assert_eq!(l.get(999).node, "");
    }

    #[test]
    fn names_that_are_not_utf8_are_written_as_python_escapes_them() {
        let mut l = Labels::new();
        // "eth\udcff" as surrogatepass UTF-8, and a non-BMP character.
        let a = l.intern_wtf8(b"web", b"eth\xed\xb3\xbf");
        let b = l.intern_wtf8("h\u{1F600}".as_bytes(), b"eth0");
        assert_eq!(l.get(a).iface_json, br#""eth\udcff""#);
        assert_eq!(l.get(b).node_json, br#""h\ud83d\ude00""#);
        assert_eq!(l.intern("web", "eth0"), l.intern_wtf8(b"web", b"eth0"));
        let plain = l.intern("web", "eth0");
        assert_ne!(l.get(a).iface_id, l.get(plain).iface_id);
        l.set_drop_reason_wtf8(3, b"X\xed\xb3\xbf");
        assert_eq!(l.drop_reason(3), Some("X\u{FFFD}"));
    }

    #[test]
    fn drop_reasons_by_code() {
        let mut l = Labels::new();
        l.set_drop_reason(6, "NETFILTER_DROP");
        l.set_drop_reason(7, "");
        assert_eq!(l.drop_reason(6), Some("NETFILTER_DROP"));
        assert_eq!(l.drop_reason(7), None);
        assert_eq!(l.drop_reason(8), None);
    }

    #[test]
    fn generation_changes_with_the_table_only() {
        let mut l = Labels::new();
        let g0 = l.generation();
        assert_ne!(Labels::new().generation(), g0); // another table
        l.intern("host", "eth0");
        let g1 = l.generation();
        assert_ne!(g1, g0);
        l.intern("host", "eth0"); // known: no change
        assert_eq!(l.generation(), g1);
        let copy = l.clone();
        assert_eq!(copy.generation(), g1);
        l.set_drop_reason(2, "X");
        let g2 = l.generation();
        assert_ne!(g2, g1);
        l.clear_drop_reasons();
        assert_ne!(l.generation(), g2);
        assert_eq!(copy.generation(), g1);
    }
}
