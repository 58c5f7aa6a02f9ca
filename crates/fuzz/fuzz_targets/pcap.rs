//! Classic pcap files: the whole reader (chunks, records, decode, labels) must
//! never panic, and every batch must be self-consistent. The first byte picks
//! the magic (so inputs need not find it), the read buffer and batch sizes.
#![no_main]

use hoptrace_fuzz::{check_files, magic_pcap, sizes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (chunk_bytes, batch_rows) = sizes(sel);
    let mut file = magic_pcap(sel).to_vec();
    file.extend_from_slice(rest);
    check_files(&[file], chunk_bytes, batch_rows);
});
