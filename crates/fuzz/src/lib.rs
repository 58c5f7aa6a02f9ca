//! Helpers shared by the fuzz targets.

use std::sync::Arc;

use hoptrace_core::files::{FileSet, Input};
use hoptrace_core::obs::ROW_SIZE;
use hoptrace_core::reader::Origin;

/// A classic pcap magic (µs or ns, either byte order) chosen by `sel`.
pub fn magic_pcap(sel: u8) -> [u8; 4] {
    match sel & 3 {
        0 => [0xD4, 0xC3, 0xB2, 0xA1],
        1 => [0xA1, 0xB2, 0xC3, 0xD4],
        2 => [0x4D, 0x3C, 0xB2, 0xA1],
        _ => [0xA1, 0xB2, 0x3C, 0x4D],
    }
}

/// (read buffer bytes, rows per batch): mostly the real ones, sometimes tiny.
pub fn sizes(sel: u8) -> (usize, usize) {
    match (sel >> 2) & 7 {
        0 => (16, 1),
        1 => (64, 3),
        2 => (700, 5),
        3 => (4096, 100),
        _ => (1 << 20, 4096),
    }
}

/// Read the files as one source to the end (or an error) and check every batch.
pub fn check_files(files: &[Vec<u8>], chunk_bytes: usize, batch_rows: usize) {
    let inputs = files
        .iter()
        .enumerate()
        .map(|(k, f)| Input {
            origin: Origin::Memory(Arc::from(f.as_slice())),
            stem: format!("f{k}").into_bytes(),
            label: (k > 0).then(|| (b"n".to_vec(), b"i".to_vec())),
        })
        .collect();
    let mut set = FileSet::with_sizes(inputs, chunk_bytes, batch_rows);
    let mut batches = 0;
    loop {
        match set.next_batch() {
            Ok(Some(b)) => {
                batches += 1;
                assert!(!b.rows.is_empty());
                assert_eq!(b.row_bytes().len(), b.rows.len() * ROW_SIZE);
                let frames = b.frames.bytes().len() as u64;
                for o in &b.rows {
                    assert!((o.hop as usize) < set.hops().len());
                    assert!(o.frame_off + u64::from(o.frame_len) <= frames);
                    assert!(matches!(o.family, 0 | 4 | 6));
                }
                let _ = set.new_hops();
                let _ = set.new_drop_reasons();
            }
            Ok(None) => break,
            Err(e) => {
                assert!(e.file < files.len());
                assert!(!e.error.to_string().contains('\n'));
                break;
            }
        }
        assert!(batches < 1_000_000);
    }
}
