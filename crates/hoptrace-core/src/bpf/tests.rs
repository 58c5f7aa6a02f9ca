use super::code::*;
use super::*;
use proptest::prelude::*;

fn ins(code: u16, k: u32) -> Insn {
    Insn::new(code, 0, 0, k)
}

fn jmp(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn::new(code, jt, jf, k)
}

fn ret_a() -> Insn {
    ins(RET | A, 0)
}

fn prog(insns: &[Insn]) -> Program {
    match Program::new(insns) {
        Ok(p) => p,
        Err(e) => panic!("{e}: {insns:?}"),
    }
}

/// What the program leaves in A (it ends with `ret a`), on `pkt` with wirelen = its length.
fn acc(insns: &[Insn], pkt: &[u8]) -> u32 {
    let mut all = insns.to_vec();
    all.push(ret_a());
    prog(&all).run(pkt, pkt.len() as u32)
}

const PKT: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];

#[test]
fn absolute_loads_read_big_endian_and_reject_past_the_end() {
    assert_eq!(acc(&[ins(LD | W | ABS, 0)], &PKT), 0x11223344);
    assert_eq!(acc(&[ins(LD | W | ABS, 4)], &PKT), 0x55667788);
    assert_eq!(acc(&[ins(LD | W | ABS, 5)], &PKT), 0); // 3 bytes left: reject
    assert_eq!(acc(&[ins(LD | H | ABS, 6)], &PKT), 0x7788);
    assert_eq!(acc(&[ins(LD | H | ABS, 7)], &PKT), 0);
    assert_eq!(acc(&[ins(LD | B | ABS, 7)], &PKT), 0x88);
    assert_eq!(acc(&[ins(LD | B | ABS, 8)], &PKT), 0);
    assert_eq!(acc(&[ins(LD | W | ABS, u32::MAX)], &PKT), 0);
    assert_eq!(acc(&[ins(LD | B | ABS, 0)], &[]), 0);
}

#[test]
fn a_rejecting_load_ends_the_program_even_before_a_nonzero_return() {
    let p = prog(&[ins(LD | B | ABS, 100), ins(RET | K, 7)]);
    assert_eq!(p.run(&PKT, 1000), 0);
    let p = prog(&[ins(LD | B | ABS, 1), ins(RET | K, 7)]);
    assert_eq!(p.run(&PKT, 1000), 7);
}

#[test]
fn indirect_loads_add_x_without_wrapping() {
    assert_eq!(
        acc(&[ins(LDX | IMM, 2), ins(LD | W | IND, 2)], &PKT),
        0x55667788
    );
    assert_eq!(acc(&[ins(LDX | IMM, 2), ins(LD | W | IND, 3)], &PKT), 0);
    assert_eq!(
        acc(&[ins(LDX | IMM, 3), ins(LD | H | IND, 3)], &PKT),
        0x7788
    );
    assert_eq!(acc(&[ins(LDX | IMM, 3), ins(LD | H | IND, 4)], &PKT), 0);
    assert_eq!(acc(&[ins(LDX | IMM, 3), ins(LD | B | IND, 4)], &PKT), 0x88);
    assert_eq!(acc(&[ins(LDX | IMM, 3), ins(LD | B | IND, 5)], &PKT), 0);
    // X + k would wrap to 1 in 32 bits: libpcap rejects, so do we
    for code in [LD | W | IND, LD | H | IND, LD | B | IND] {
        assert_eq!(acc(&[ins(LDX | IMM, u32::MAX), ins(code, 2)], &PKT), 0);
        assert_eq!(acc(&[ins(LDX | IMM, 2), ins(code, u32::MAX)], &PKT), 0);
    }
}

#[test]
fn length_loads_read_the_wire_length_not_the_captured_one() {
    let p = prog(&[ins(LD | W | LEN, 0), ret_a()]);
    assert_eq!(p.run(&PKT, 1500), 1500);
    let p = prog(&[ins(LDX | W | LEN, 0), ins(MISC | TXA, 0), ret_a()]);
    assert_eq!(p.run(&PKT, 60), 60);
    // ... and loads are bounded by the captured bytes, whatever the wire length
    let p = prog(&[ins(LD | B | ABS, 8), ret_a()]);
    assert_eq!(p.run(&PKT, 1500), 0);
}

#[test]
fn msh_loads_an_ip_header_length() {
    let pkt = [0u8, 0x45, 0];
    assert_eq!(acc(&[ins(LDX | B | MSH, 1), ins(MISC | TXA, 0)], &pkt), 20);
    assert_eq!(acc(&[ins(LDX | B | MSH, 3), ins(MISC | TXA, 0)], &pkt), 0);
}

#[test]
fn immediates_scratch_memory_and_register_moves() {
    assert_eq!(acc(&[ins(LD | IMM, 0xdead)], &[]), 0xdead);
    assert_eq!(acc(&[ins(LDX | IMM, 9), ins(MISC | TXA, 0)], &[]), 9);
    assert_eq!(
        acc(
            &[
                ins(LD | IMM, 5),
                ins(MISC | TAX, 0),
                ins(LD | IMM, 0),
                ins(MISC | TXA, 0)
            ],
            &[]
        ),
        5
    );
    let st = [
        ins(LD | IMM, 1),
        ins(ST, 15),
        ins(LDX | IMM, 2),
        ins(STX, 0),
        ins(LD | IMM, 0),
        ins(LDX | MEM, 15),
        ins(LD | MEM, 0),
        ins(ALU | ADD | X, 0),
    ];
    assert_eq!(acc(&st, &[]), 3);
    // memory starts zeroed
    assert_eq!(acc(&[ins(LD | IMM, 7), ins(LD | MEM, 3)], &[]), 0);
}

#[test]
fn alu_with_constants_and_with_x() {
    let cases: [(u16, u32, u32, u32); 14] = [
        (ADD, 0xffff_ffff, 2, 1),
        (SUB, 1, 2, 0xffff_ffff),
        (MUL, 0x8000_0000, 2, 0),
        (MUL, 6, 7, 42),
        (DIV, 43, 7, 6),
        (MOD, 43, 7, 1),
        (AND, 0xf0f0, 0xff00, 0xf000),
        (OR, 0xf0f0, 0x0f00, 0xfff0),
        (XOR, 0xf0f0, 0xff00, 0x0ff0),
        (LSH, 1, 31, 0x8000_0000),
        (RSH, 0x8000_0000, 31, 1),
        (LSH, 0xffff, 4, 0xffff0),
        (RSH, 0xffff, 4, 0xfff),
        (ADD, 3, 0, 3),
    ];
    for (op, a, b, want) in cases {
        assert_eq!(
            acc(&[ins(LD | IMM, a), ins(ALU | op | K, b)], &[]),
            want,
            "{op:#x} k"
        );
        let x = [ins(LD | IMM, a), ins(LDX | IMM, b), ins(ALU | op | X, 0)];
        assert_eq!(acc(&x, &[]), want, "{op:#x} x");
    }
    assert_eq!(
        acc(&[ins(LD | IMM, 5), ins(ALU | NEG, 0)], &[]),
        5u32.wrapping_neg()
    );
    assert_eq!(
        acc(&[ins(LD | IMM, 0x8000_0000), ins(ALU | NEG, 0)], &[]),
        0x8000_0000
    );
}

#[test]
fn division_by_x_zero_rejects_and_shifts_by_x_past_31_give_zero() {
    for op in [DIV, MOD] {
        let p = prog(&[
            ins(LD | IMM, 5),
            ins(LDX | IMM, 0),
            ins(ALU | op | X, 0),
            ins(RET | K, 1),
        ]);
        assert_eq!(p.run(&[], 0), 0);
    }
    for (op, x) in [(LSH, 32), (RSH, 32), (LSH, u32::MAX), (RSH, 1000)] {
        assert_eq!(
            acc(
                &[
                    ins(LD | IMM, 0xffff_ffff),
                    ins(LDX | IMM, x),
                    ins(ALU | op | X, 0)
                ],
                &[]
            ),
            0
        );
    }
}

#[test]
fn conditional_jumps_with_constants_and_with_x() {
    // A = 10; if A <cond> 10 then ret 1 else ret 2
    let cases = [
        (JEQ, 10, true),
        (JEQ, 11, false),
        (JGT, 9, true),
        (JGT, 10, false),
        (JGE, 10, true),
        (JGE, 11, false),
        (JSET, 2, true),
        (JSET, 5, false),
    ];
    for (cond, b, want) in cases {
        let expect = if want { 1 } else { 2 };
        let k = prog(&[
            ins(LD | IMM, 10),
            jmp(JMP | cond | K, b, 0, 1),
            ins(RET | K, 1),
            ins(RET | K, 2),
        ]);
        assert_eq!(k.run(&[], 0), expect, "{cond:#x} k {b}");
        let x = prog(&[
            ins(LD | IMM, 10),
            ins(LDX | IMM, b),
            jmp(JMP | cond | X, 0, 0, 1),
            ins(RET | K, 1),
            ins(RET | K, 2),
        ]);
        assert_eq!(x.run(&[], 0), expect, "{cond:#x} x {b}");
    }
    // comparisons are unsigned
    let p = prog(&[
        ins(LD | IMM, 0xffff_ffff),
        jmp(JMP | JGT | K, 1, 0, 1),
        ins(RET | K, 1),
        ins(RET | K, 2),
    ]);
    assert_eq!(p.run(&[], 0), 1);
    // offsets skip forward from the next instruction
    let p = prog(&[
        jmp(JMP | JEQ | K, 0, 2, 0),
        ins(RET | K, 1),
        ins(RET | K, 2),
        ins(RET | K, 3),
    ]);
    assert_eq!(p.run(&[], 0), 3);
}

#[test]
fn unconditional_jumps_forward_and_backward() {
    let p = prog(&[jmp(JMP | JA, 1, 0, 0), ins(RET | K, 1), ins(RET | K, 2)]);
    assert_eq!(p.run(&[], 0), 2);
    // for (A = 0; A < n; A++) with a backward ja: n iterations take n - 1 backward jumps
    let count_to = |n: u32| {
        prog(&[
            ins(LD | IMM, 0),
            ins(ALU | ADD | K, 1),
            jmp(JMP | JGE | K, n, 1, 0),
            jmp(JMP | JA, (-3i32) as u32, 0, 0),
            ret_a(),
        ])
    };
    assert_eq!(count_to(1).run(&[], 0), 1);
    assert_eq!(count_to(65).run(&[], 0), 65); // 64 backward jumps: allowed
    assert_eq!(count_to(66).run(&[], 0), 0); // the 65th: rejected, as libpcap
    assert_eq!(count_to(u32::MAX).run(&[], 0), 0);
}

#[test]
fn returns() {
    assert_eq!(prog(&[ins(RET | K, 0x40000)]).run(&[], 0), 0x40000);
    assert_eq!(prog(&[ins(RET | K, 0)]).run(&PKT, 8), 0);
    assert_eq!(prog(&[ins(LD | IMM, 3), ret_a()]).run(&[], 0), 3);
    assert!(prog(&[ins(RET | K, 1)]).matches(&[], 0));
    assert!(!prog(&[ins(RET | K, 0)]).matches(&[], 0));
}

#[test]
fn validation_refuses_what_libpcap_refuses() {
    let ret = ins(RET | K, 1);
    let err = |insns: &[Insn]| Program::new(insns).err();
    assert_eq!(err(&[]), Some(BpfError::Empty));
    assert_eq!(err(&[ins(LD | IMM, 0)]), Some(BpfError::NoReturn));
    for code in [
        0x08,
        0x0e,
        0x0d,
        0x5d,
        0x45 | 0x100,
        0x8c,
        0xb4,
        0xc4,
        0x17,
        0x26,
        0x88,
        0x41,
        0xffff,
    ] {
        assert_eq!(
            err(&[ins(code, 1), ret]),
            Some(BpfError::BadOpcode { at: 0, code }),
            "{code:#x}"
        );
    }
    for code in [LD | MEM, LDX | MEM, ST, STX] {
        assert_eq!(
            err(&[ins(code, 16), ret]),
            Some(BpfError::BadMemSlot { at: 0, k: 16 })
        );
        assert_eq!(
            err(&[ins(code, 256), ret]),
            Some(BpfError::BadMemSlot { at: 0, k: 256 })
        );
        assert!(err(&[ins(code, 15), ret]).is_none());
    }
    for op in [DIV, MOD] {
        assert_eq!(
            err(&[ins(ALU | op | K, 0), ret]),
            Some(BpfError::DivByZero { at: 0 })
        );
        assert!(err(&[ins(ALU | op | X, 0), ret]).is_none()); // X = 0 rejects at run time
    }
    for op in [LSH, RSH] {
        assert_eq!(
            err(&[ins(ALU | op | K, 32), ret]),
            Some(BpfError::BadShift { at: 0, k: 32 })
        );
        assert!(err(&[ins(ALU | op | K, 31), ret]).is_none());
    }
    // conditional jumps land inside the program, whichever way they go
    assert_eq!(
        err(&[jmp(JMP | JEQ | K, 0, 1, 0), ret]),
        Some(BpfError::JumpOutside { at: 0 })
    );
    assert_eq!(
        err(&[jmp(JMP | JEQ | K, 0, 0, 1), ret]),
        Some(BpfError::JumpOutside { at: 0 })
    );
    assert!(err(&[jmp(JMP | JEQ | K, 0, 1, 0), ret, ret]).is_none());
    // ja: inside the program either way, never to itself
    assert_eq!(
        err(&[jmp(JMP | JA, 1, 0, 0), ret]),
        Some(BpfError::JumpOutside { at: 0 })
    );
    assert_eq!(
        err(&[jmp(JMP | JA, (-2i32) as u32, 0, 0), ret]),
        Some(BpfError::JumpOutside { at: 0 })
    );
    assert_eq!(
        err(&[ret, jmp(JMP | JA, u32::MAX, 0, 0), ret]),
        Some(BpfError::JumpToSelf { at: 1 })
    );
    assert!(err(&[ret, jmp(JMP | JA, (-2i32) as u32, 0, 0), ret]).is_none());
    // the last instruction returns: no way to run off the end
    assert_eq!(
        err(&[ret, jmp(JMP | JA, 0, 0, 0)]),
        Some(BpfError::JumpOutside { at: 1 })
    );
    assert_eq!(err(&[ret, ins(LD | IMM, 0)]), Some(BpfError::NoReturn));
}

#[test]
fn errors_are_one_line() {
    let errs = [
        BpfError::Empty,
        BpfError::TooLong { len: 5_000_000 },
        BpfError::Ragged { bytes: 9 },
        BpfError::BadOpcode {
            at: 3,
            code: 0xffff,
        },
        BpfError::BadMemSlot { at: 1, k: 99 },
        BpfError::DivByZero { at: 2 },
        BpfError::BadShift { at: 2, k: 40 },
        BpfError::JumpOutside { at: 4 },
        BpfError::JumpToSelf { at: 4 },
        BpfError::NoReturn,
    ];
    for e in errs {
        let s = e.to_string();
        assert!(!s.is_empty() && !s.contains('\n'), "{s}");
    }
    assert_eq!(
        BpfError::BadOpcode { at: 3, code: 0xff }.to_string(),
        "BPF instruction 3: unknown opcode 0x00ff"
    );
}

#[test]
fn from_bytes_reads_struct_bpf_insn_in_native_order() {
    let mut raw = Vec::new();
    for i in [
        ins(LD | H | ABS, 12),
        jmp(JMP | JEQ | K, 0x0800, 0, 1),
        ins(RET | K, 0x40000),
        ins(RET | K, 0),
    ] {
        raw.extend_from_slice(&i.code.to_ne_bytes());
        raw.extend_from_slice(&[i.jt, i.jf]);
        raw.extend_from_slice(&i.k.to_ne_bytes());
    }
    let p = Program::from_bytes(&raw).expect("valid");
    assert_eq!(p.len(), 4);
    let mut ipv4 = [0u8; 14];
    ipv4[12] = 0x08;
    assert!(p.matches(&ipv4, 14));
    ipv4[12] = 0x86;
    assert!(!p.matches(&ipv4, 14));
    assert_eq!(
        Program::from_bytes(&raw[..9]).err(),
        Some(BpfError::Ragged { bytes: 9 })
    );
    assert_eq!(Program::from_bytes(&[]).err(), Some(BpfError::Empty));
}

/// `tcp dst port 80` as libpcap 1.10 compiles it for Ethernet.
fn tcp_dst_port_80() -> Program {
    prog(&[
        Insn::new(0x0028, 0, 0, 0xc),
        Insn::new(0x0015, 0, 4, 0x86dd),
        Insn::new(0x0030, 0, 0, 0x14),
        Insn::new(0x0015, 0, 11, 0x6),
        Insn::new(0x0028, 0, 0, 0x38),
        Insn::new(0x0015, 8, 9, 0x50),
        Insn::new(0x0015, 0, 8, 0x800),
        Insn::new(0x0030, 0, 0, 0x17),
        Insn::new(0x0015, 0, 6, 0x6),
        Insn::new(0x0028, 0, 0, 0x14),
        Insn::new(0x0045, 4, 0, 0x1fff),
        Insn::new(0x00b1, 0, 0, 0xe),
        Insn::new(0x0048, 0, 0, 0x10),
        Insn::new(0x0015, 0, 1, 0x50),
        Insn::new(0x0006, 0, 0, 0x40000),
        Insn::new(0x0006, 0, 0, 0x0),
    ])
}

/// `ip6 protochain 6` as libpcap 1.10 compiles it for Ethernet (two backward `ja`s).
fn ip6_protochain_tcp() -> Program {
    prog(&[
        Insn::new(0x0028, 0, 0, 0xc),
        Insn::new(0x0015, 0, 33, 0x86dd),
        Insn::new(0x0030, 0, 0, 0x14),
        Insn::new(0x0001, 0, 0, 0x28),
        Insn::new(0x0015, 27, 0, 0x6),
        Insn::new(0x0015, 26, 0, 0x3b),
        Insn::new(0x0015, 3, 0, 0x0),
        Insn::new(0x0015, 2, 0, 0x3c),
        Insn::new(0x0015, 1, 0, 0x2b),
        Insn::new(0x0015, 0, 9, 0x2c),
        Insn::new(0x0050, 0, 0, 0xe),
        Insn::new(0x0002, 0, 0, 0x0),
        Insn::new(0x0050, 0, 0, 0xf),
        Insn::new(0x0004, 0, 0, 0x1),
        Insn::new(0x0024, 0, 0, 0x8),
        Insn::new(0x000c, 0, 0, 0x0),
        Insn::new(0x0007, 0, 0, 0x0),
        Insn::new(0x0060, 0, 0, 0x0),
        Insn::new(0x0005, 0, 0, 0xfffffff1),
        Insn::new(0x0015, 0, 12, 0x33),
        Insn::new(0x0087, 0, 0, 0x0),
        Insn::new(0x0050, 0, 0, 0xe),
        Insn::new(0x0002, 0, 0, 0x0),
        Insn::new(0x0087, 0, 0, 0x0),
        Insn::new(0x0004, 0, 0, 0x1),
        Insn::new(0x0007, 0, 0, 0x0),
        Insn::new(0x0050, 0, 0, 0xe),
        Insn::new(0x0004, 0, 0, 0x2),
        Insn::new(0x0024, 0, 0, 0x4),
        Insn::new(0x0007, 0, 0, 0x0),
        Insn::new(0x0060, 0, 0, 0x0),
        Insn::new(0x0005, 0, 0, 0xffffffe4),
        Insn::new(0x0004, 0, 0, 0x0),
        Insn::new(0x0015, 0, 1, 0x6),
        Insn::new(0x0006, 0, 0, 0x40000),
        Insn::new(0x0006, 0, 0, 0x0),
    ])
}

fn eth_ipv4(proto: u8, ihl: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00, 0x40 | ihl, 0]);
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(&frag.to_be_bytes());
    f.extend_from_slice(&[64, proto, 0, 0]);
    f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    f.resize(14 + usize::from(ihl) * 4, 0);
    f.extend_from_slice(l4);
    f
}

#[test]
fn a_libpcap_program_over_real_headers() {
    let p = tcp_dst_port_80();
    let to80 = [0x9c, 0x40, 0, 80];
    let from80 = [0, 80, 0x9c, 0x40];
    let n = |f: &[u8]| p.matches(f, f.len() as u32);
    assert!(n(&eth_ipv4(6, 5, 0, &to80)));
    assert!(n(&eth_ipv4(6, 6, 0, &to80))); // options: MSH finds the port
    assert!(!n(&eth_ipv4(6, 5, 0, &from80)));
    assert!(!n(&eth_ipv4(17, 5, 0, &to80)));
    assert!(!n(&eth_ipv4(6, 5, 0x0001, &to80))); // a later fragment has no ports
    assert!(!n(&eth_ipv4(6, 5, 0, &to80[..3]))); // truncated before the port
}

fn eth_ipv6(next: u8, exts: &[(u8, usize)], l4: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 0, next, 64]);
    f.extend_from_slice(&[0u8; 32]);
    for &(nh, len8) in exts {
        let mut h = vec![0u8; 8 * (len8 + 1)];
        h[0] = nh;
        h[1] = len8 as u8;
        f.extend_from_slice(&h);
    }
    f.extend_from_slice(l4);
    f
}

#[test]
fn protochain_walks_extension_headers_with_backward_jumps() {
    let p = ip6_protochain_tcp();
    let n = |f: &[u8]| p.matches(f, f.len() as u32);
    assert!(n(&eth_ipv6(6, &[], &[0; 20])));
    assert!(!n(&eth_ipv6(17, &[], &[0; 8])));
    // hop-by-hop (0) -> destination options (60) -> tcp
    assert!(n(&eth_ipv6(0, &[(60, 0), (6, 1)], &[0; 20])));
    assert!(!n(&eth_ipv6(0, &[(60, 0), (17, 1)], &[0; 8])));
    // a chain longer than 64 backward jumps is rejected, as libpcap does
    let long: Vec<(u8, usize)> = (0..70).map(|i| (if i == 69 { 6 } else { 60 }, 0)).collect();
    assert!(!n(&eth_ipv6(60, &long, &[0; 20])));
    let short: Vec<(u8, usize)> = (0..10).map(|i| (if i == 9 { 6 } else { 60 }, 0)).collect();
    assert!(n(&eth_ipv6(60, &short, &[0; 20])));
}

#[test]
fn match_frames_slices_the_buffer_and_checks_the_slices() {
    let p = prog(&[
        ins(LD | W | LEN, 0),
        jmp(JMP | JGT | K, 3, 0, 1),
        ins(RET | K, 1),
        ins(RET | K, 0),
    ]);
    let buf = [0u8; 10];
    let mut out = vec![true];
    p.match_frames(&buf, &[0, 2, 10], &[2, 8, 0], &[2, 100, 4], &mut out)
        .expect("in range");
    assert_eq!(out, [true, false, true, true]);
    let err = p.match_frames(&buf, &[0, 5], &[1, 6], &[1, 6], &mut out);
    assert_eq!(
        err,
        Err(BatchError::OutsideBuffer {
            index: 1,
            offset: 5,
            length: 6,
            buffer: 10
        })
    );
    assert_eq!(out.len(), 4, "nothing appended for a refused batch");
    let err = p.match_frames(&buf, &[0, 5], &[1], &[1, 6], &mut out);
    assert_eq!(
        err,
        Err(BatchError::Lengths {
            offsets: 2,
            lengths: 1,
            wirelens: 2
        })
    );
    let err = p.match_frames(&buf, &[u64::MAX], &[u32::MAX], &[0], &mut out);
    assert!(matches!(
        err,
        Err(BatchError::OutsideBuffer { index: 0, .. })
    ));
}

/// Every opcode libpcap's validator knows.
const VALID_CODES: [u16; 49] = [
    RET | K,
    RET | A,
    LD | W | ABS,
    LD | H | ABS,
    LD | B | ABS,
    LD | W | LEN,
    LDX | W | LEN,
    LD | W | IND,
    LD | H | IND,
    LD | B | IND,
    LDX | B | MSH,
    LD | IMM,
    LDX | IMM,
    LD | MEM,
    LDX | MEM,
    ST,
    STX,
    JMP | JA,
    JMP | JGT | K,
    JMP | JGE | K,
    JMP | JEQ | K,
    JMP | JSET | K,
    JMP | JGT | X,
    JMP | JGE | X,
    JMP | JEQ | X,
    JMP | JSET | X,
    ALU | ADD | X,
    ALU | SUB | X,
    ALU | MUL | X,
    ALU | DIV | X,
    ALU | MOD | X,
    ALU | AND | X,
    ALU | OR | X,
    ALU | XOR | X,
    ALU | LSH | X,
    ALU | RSH | X,
    ALU | ADD | K,
    ALU | SUB | K,
    ALU | MUL | K,
    ALU | DIV | K,
    ALU | MOD | K,
    ALU | AND | K,
    ALU | OR | K,
    ALU | XOR | K,
    ALU | LSH | K,
    ALU | RSH | K,
    ALU | NEG,
    MISC | TAX,
    MISC | TXA,
];

#[test]
fn exactly_libpcaps_opcodes_are_known() {
    let known = VALID_CODES;
    for code in 0..=u16::MAX {
        // k = 1: a valid memory slot, divisor and shift; jumps of 0 and ja +0 land on the return
        let r = Program::new(&[
            Insn::new(code, 0, 0, if code == JMP | JA { 0 } else { 1 }),
            ins(RET | K, 1),
        ]);
        let ok = !matches!(r, Err(BpfError::BadOpcode { .. }));
        assert_eq!(ok, known.contains(&code), "{code:#06x}");
    }
}

fn any_code() -> impl Strategy<Value = u16> {
    prop_oneof![
        8 => proptest::sample::select(VALID_CODES.to_vec()),
        1 => any::<u16>(),
    ]
}

fn any_k() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..20,
        0u32..80,
        Just(u32::MAX),
        (-40i32..0).prop_map(|v| v as u32),
        any::<u32>()
    ]
}

fn any_insn() -> impl Strategy<Value = Insn> {
    (any_code(), 0u8..6, 0u8..6, any_k()).prop_map(|(c, jt, jf, k)| Insn::new(c, jt, jf, k))
}

/// A program libpcap's validator accepts: known opcodes with valid operands, jumps in range.
fn valid_program() -> impl Strategy<Value = Vec<Insn>> {
    proptest::collection::vec(
        (any_code(), any::<u8>(), any::<u8>(), any_k(), any::<u32>()),
        1..40,
    )
    .prop_map(|raw| {
        let n = raw.len() + 1;
        let mut out: Vec<Insn> = raw
            .into_iter()
            .enumerate()
            .map(|(at, (code, jt, jf, k, r))| {
                let code = if VALID_CODES.contains(&code) {
                    code
                } else {
                    LD | IMM
                };
                let room = (n - at - 2) as u32; // instructions after the next one
                let jt = (u32::from(jt) % (room.min(255) + 1)) as u8;
                let jf = (u32::from(jf) % (room.min(255) + 1)) as u8;
                let k = match code {
                    c if c == LD | MEM || c == LDX | MEM || c == ST || c == STX => k % 16,
                    c if c == ALU | DIV | K || c == ALU | MOD | K => k.max(1),
                    c if c == ALU | LSH | K || c == ALU | RSH | K => k % 32,
                    c if c == JMP | JA => {
                        // anywhere but itself
                        let to = (r as usize) % n;
                        let to = if to == at { n - 1 } else { to };
                        (to as u32).wrapping_sub(at as u32 + 1)
                    }
                    _ => k,
                };
                Insn::new(code, jt, jf, k)
            })
            .collect();
        out.push(ins(RET | A, 0));
        out
    })
}

fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..96)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_program_validates_or_not_and_never_panics(
        insns in proptest::collection::vec(any_insn(), 0..48),
        frame in any_frame(),
        wirelen in any::<u32>(),
    ) {
        if let Ok(p) = Program::new(&insns) {
            let _ = p.run(&frame, wirelen);
        }
    }

    #[test]
    fn valid_programs_are_accepted_and_end_on_any_frame(
        insns in valid_program(),
        frame in any_frame(),
    ) {
        let p = Program::new(&insns);
        prop_assert!(p.is_ok(), "{:?}: {:?}", p.err(), insns);
        if let Ok(p) = p {
            let _ = p.run(&frame, frame.len() as u32);
        }
    }

    #[test]
    fn any_bytes_are_a_program_or_an_error(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        match Program::from_bytes(&raw) {
            Ok(p) => prop_assert_eq!(p.len() * INSN_SIZE, raw.len()),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn libpcap_programs_on_random_frames(frame in any_frame(), tail in any_frame(), cut in any::<usize>()) {
        // Ethernet + IPv6 + random: drives the protochain loop down arbitrary chains
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&frame);
        f.extend_from_slice(&tail);
        let f = &f[..cut % (f.len() + 1)];
        let _ = ip6_protochain_tcp().run(f, f.len() as u32);
        let _ = tcp_dst_port_80().run(f, f.len() as u32);
    }

    #[test]
    fn match_frames_is_matches_per_frame(
        frames in proptest::collection::vec(any_frame(), 0..20),
        insns in valid_program(),
    ) {
        let p = match Program::new(&insns) { Ok(p) => p, Err(e) => return Err(TestCaseError::fail(e.to_string())) };
        let buf: Vec<u8> = frames.concat();
        let mut offsets = Vec::new();
        let mut off = 0u64;
        for f in &frames {
            offsets.push(off);
            off += f.len() as u64;
        }
        let lengths: Vec<u32> = frames.iter().map(|f| f.len() as u32).collect();
        let wirelens: Vec<u32> = lengths.iter().map(|l| l * 3).collect();
        let mut out = Vec::new();
        prop_assert!(p.match_frames(&buf, &offsets, &lengths, &wirelens, &mut out).is_ok());
        let want: Vec<bool> = frames.iter().zip(&wirelens).map(|(f, &w)| p.matches(f, w)).collect();
        prop_assert_eq!(out, want);
    }
}
