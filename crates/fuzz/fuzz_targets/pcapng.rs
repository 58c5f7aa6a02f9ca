//! pcapng files, alone and merged with a second file cut from the same input:
//! blocks, options, comments, sections of both byte orders must never panic,
//! and every batch must be self-consistent.
#![no_main]

use hoptrace_fuzz::{check_files, sizes};
use libfuzzer_sys::fuzz_target;

const SHB: [u8; 4] = [0x0A, 0x0D, 0x0D, 0x0A];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (chunk_bytes, batch_rows) = sizes(sel);
    let mut file = SHB.to_vec();
    file.extend_from_slice(rest);
    check_files(std::slice::from_ref(&file), chunk_bytes, batch_rows);
    if sel & 0x80 != 0 {
        let cut = usize::from(sel & 0x7F) * file.len() / 128;
        check_files(
            &[file.clone(), file[..cut].to_vec()],
            chunk_bytes,
            batch_rows,
        );
    }
});
