//! Classic BPF: any bytes as a program (validated or refused, never a panic) run over any
//! frames; a batch gives the verdicts frame by frame does.
//!
//! Input: byte 0 = number of instructions n (the program is the next 8 n bytes, `struct
//! bpf_insn` in native order); the rest is cut into frames at each 0xff byte, each frame's
//! wire length its captured length plus byte 1.
#![no_main]

use hoptrace_core::bpf::{Program, INSN_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let plen = (usize::from(n) * INSN_SIZE).min(rest.len());
    let (raw, frames) = rest.split_at(plen);
    let Ok(prog) = Program::from_bytes(raw) else {
        return;
    };
    let extra = u32::from(frames.first().copied().unwrap_or(0));
    let (mut offsets, mut lengths, mut wirelens, mut want) = (vec![], vec![], vec![], vec![]);
    let mut off = 0usize;
    for frame in frames.split(|&b| b == 0xff) {
        let len = frame.len() as u32;
        want.push(prog.matches(frame, len + extra));
        offsets.push(off as u64);
        lengths.push(len);
        wirelens.push(len + extra);
        off += frame.len() + 1;
    }
    let mut got = Vec::new();
    prog.match_frames(frames, &offsets, &lengths, &wirelens, &mut got)
        .expect("every frame lies inside the buffer");
    assert_eq!(got, want);
});
