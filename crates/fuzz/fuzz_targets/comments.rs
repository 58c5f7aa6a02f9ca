//! hoptrace's per-packet comments: the recorder's layout and the JSON fallback
//! (Python's json.loads rules, int(text, 0), codecs) over arbitrary bytes,
//! several comments per batch separated by 0xFF: never a panic; drop reasons
//! numbered 1, 2, ... once each; applying the same comments again (the table
//! now full) gives the same rows and no new reason.
#![no_main]

use std::collections::HashSet;

use hoptrace_core::meta::{self, DropTable};
use hoptrace_core::obs::Obs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let metas: Vec<(usize, &[u8])> = data.split(|&b| b == 0xFF).enumerate().collect();
    let mut rows = vec![Obs::default(); metas.len()];
    let mut drops = DropTable::default();
    meta::apply(&mut rows, &metas, &mut drops);
    let n = drops.names.len();
    let ids: Vec<u32> = drops.names.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=n as u32).collect::<Vec<_>>());
    let names: HashSet<&Vec<u8>> = drops.names.iter().map(|(_, name)| name).collect();
    assert_eq!(names.len(), n);
    let mut again = vec![Obs::default(); metas.len()];
    meta::apply(&mut again, &metas, &mut drops);
    assert_eq!(rows, again);
    assert_eq!(drops.names.len(), n);
});
