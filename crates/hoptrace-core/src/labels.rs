//! Names of where sightings happened: the hop label table a row's `hop` indexes
//! (node and interface, as Python's `HopLabel`), and the kernel's drop reason names.
//!
//! Names are interned once: NAT inference compares nodes by id, links are keyed
//! by ids, and the renderer copies each name's JSON literal, escaped once here.

use std::collections::HashMap;

use crate::text::json_str;

/// One hop label: a (node, interface) pair, its interned ids and JSON literals.
#[derive(Debug, Clone)]
pub struct Label {
    pub node: String,
    pub iface: String,
    /// Equal for labels with equal node names.
    pub node_id: u32,
    /// Equal for labels with equal interface names.
    pub iface_id: u32,
    /// `"node"`, escaped as `json.dumps` escapes it.
    pub node_json: Vec<u8>,
    pub iface_json: Vec<u8>,
}

/// The hop label table and drop reason names of one source, append-only.
#[derive(Debug, Clone)]
pub struct Labels {
    labels: Vec<Label>,
    by_pair: HashMap<(String, String), u32>,
    names: HashMap<String, u32>,
    reasons: HashMap<u32, String>,
    /// What an index outside the table reads as.
    missing: Label,
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
            missing: Label {
                node: String::new(),
                iface: String::new(),
                node_id: u32::MAX,
                iface_id: u32::MAX,
                node_json: json_str(""),
                iface_json: json_str(""),
            },
        }
    }

    fn name_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.names.get(name) {
            return id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.insert(name.to_owned(), id);
        id
    }

    /// The index of the label (`node`, `iface`), added if new: what a row's `hop` holds.
    pub fn intern(&mut self, node: &str, iface: &str) -> u32 {
        if let Some(&i) = self.by_pair.get(&(node.to_owned(), iface.to_owned())) {
            return i;
        }
        let label = Label {
            node: node.to_owned(),
            iface: iface.to_owned(),
            node_id: self.name_id(node),
            iface_id: self.name_id(iface),
            node_json: json_str(node),
            iface_json: json_str(iface),
        };
        let i = u32::try_from(self.labels.len()).unwrap_or(u32::MAX);
        self.labels.push(label);
        self.by_pair.insert((node.to_owned(), iface.to_owned()), i);
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

    /// The name of kernel drop reason `code` (`enum skb_drop_reason`).
    pub fn set_drop_reason(&mut self, code: u32, name: &str) {
        self.reasons.insert(code, name.to_owned());
    }

    /// Forget every drop reason name (a batch that brings its own table).
    pub fn clear_drop_reasons(&mut self) {
        self.reasons.clear();
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
    fn drop_reasons_by_code() {
        let mut l = Labels::new();
        l.set_drop_reason(6, "NETFILTER_DROP");
        l.set_drop_reason(7, "");
        assert_eq!(l.drop_reason(6), Some("NETFILTER_DROP"));
        assert_eq!(l.drop_reason(7), None);
        assert_eq!(l.drop_reason(8), None);
    }
}
