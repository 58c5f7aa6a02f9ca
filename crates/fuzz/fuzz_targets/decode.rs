//! One frame of any link type: decoding never panics, reads nothing past the
//! frame's end (the same frame inside a longer buffer decodes the same), and
//! yields family 0, 4 or 6.
#![no_main]

use hoptrace_core::decode;
use hoptrace_core::obs::Obs;
use libfuzzer_sys::fuzz_target;

const LINKTYPES: [u32; 10] = [1, 12, 14, 101, 113, 228, 229, 276, 0, 127];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else {
        return;
    };
    let lt = LINKTYPES[usize::from(sel) % LINKTYPES.len()];
    let mut a = Obs::default();
    decode::decode(frame, lt, &mut a);
    assert!(matches!(a.family, 0 | 4 | 6));
    let mut longer = frame.to_vec();
    longer.extend_from_slice(&[0xFF; 80]);
    let mut b = Obs::default();
    decode::decode(&longer[..frame.len()], lt, &mut b);
    assert_eq!(a, b);
    let _ = decode::link_meta(frame, lt);
});
