//! Classic BPF: the programs libpcap compiles a pcap-filter expression into
//! (`--filter`), run over frame bytes exactly as libpcap's own interpreter
//! (`bpf_filter.c`, `pcap_offline_filter`) runs them.
//!
//! libpcap still compiles the expression (the syntax users know from tcpdump);
//! Python hands the compiled `struct bpf_insn` array over as bytes, and
//! [`Program::new`] validates it once with libpcap's rules
//! (`pcapint_validate_filter`): known opcodes, scratch memory slots below 16,
//! no division or modulo by constant 0, no constant shift by more than 31 bits,
//! jumps that land inside the program, a return at the end. Conditional jumps
//! go forward only (their offsets are unsigned); an unconditional `ja` may go
//! backward, because libpcap implements `protochain` with a backward jump, and
//! libpcap's interpreter gives up on a packet (rejects it) after 64 backward
//! jumps, so every program ends on every packet. [`Program::run`] then never
//! panics: a load outside the frame rejects the packet (returns 0), as
//! `bpf_filter` does, and so does a division by X = 0.
//!
//! `wirelen` (what `len` and `BPF_LEN` read) and the captured length (the
//! bytes loads may read) are separate, as in `bpf_filter(pc, p, wirelen, buflen)`.

use std::fmt;

/// `struct bpf_insn` in bytes: u16 code, u8 jt, u8 jf, u32 k, native byte order.
pub const INSN_SIZE: usize = 8;
/// Scratch memory slots (`BPF_MEMWORDS`).
pub const MEMWORDS: usize = 16;
/// The longest program libpcap's userland interpreter accepts (its `BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 3_060_000;
/// Backward jumps one packet may take before it is rejected (libpcap's `MAX_BACKWARD_JUMPS`).
pub const MAX_BACKWARD_JUMPS: u32 = 64;

/// Opcode parts (linux/bpf_common.h, pcap/bpf.h).
pub mod code {
    pub const LD: u16 = 0x00;
    pub const LDX: u16 = 0x01;
    pub const ST: u16 = 0x02;
    pub const STX: u16 = 0x03;
    pub const ALU: u16 = 0x04;
    pub const JMP: u16 = 0x05;
    pub const RET: u16 = 0x06;
    pub const MISC: u16 = 0x07;

    pub const W: u16 = 0x00;
    pub const H: u16 = 0x08;
    pub const B: u16 = 0x10;

    pub const IMM: u16 = 0x00;
    pub const ABS: u16 = 0x20;
    pub const IND: u16 = 0x40;
    pub const MEM: u16 = 0x60;
    pub const LEN: u16 = 0x80;
    pub const MSH: u16 = 0xa0;

    pub const ADD: u16 = 0x00;
    pub const SUB: u16 = 0x10;
    pub const MUL: u16 = 0x20;
    pub const DIV: u16 = 0x30;
    pub const OR: u16 = 0x40;
    pub const AND: u16 = 0x50;
    pub const LSH: u16 = 0x60;
    pub const RSH: u16 = 0x70;
    pub const NEG: u16 = 0x80;
    pub const MOD: u16 = 0x90;
    pub const XOR: u16 = 0xa0;

    pub const JA: u16 = 0x00;
    pub const JEQ: u16 = 0x10;
    pub const JGT: u16 = 0x20;
    pub const JGE: u16 = 0x30;
    pub const JSET: u16 = 0x40;

    pub const K: u16 = 0x00;
    pub const X: u16 = 0x08;
    /// `RET` of the accumulator.
    pub const A: u16 = 0x10;

    pub const TAX: u16 = 0x00;
    pub const TXA: u16 = 0x80;
}

/// One `struct bpf_insn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl Insn {
    pub const fn new(code: u16, jt: u8, jf: u8, k: u32) -> Self {
        Insn { code, jt, jf, k }
    }

    /// One instruction from its 8 bytes in native order (as libpcap's `bf_insns` holds it).
    pub fn from_ne_bytes(b: [u8; INSN_SIZE]) -> Self {
        let [c0, c1, jt, jf, k0, k1, k2, k3] = b;
        Insn {
            code: u16::from_ne_bytes([c0, c1]),
            jt,
            jf,
            k: u32::from_ne_bytes([k0, k1, k2, k3]),
        }
    }
}

/// Why a program is refused (`Program::new`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BpfError {
    Empty,
    TooLong { len: usize },
    Ragged { bytes: usize },
    BadOpcode { at: usize, code: u16 },
    BadMemSlot { at: usize, k: u32 },
    DivByZero { at: usize },
    BadShift { at: usize, k: u32 },
    JumpOutside { at: usize },
    JumpToSelf { at: usize },
    NoReturn,
}

impl fmt::Display for BpfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BpfError::Empty => write!(f, "BPF program is empty"),
            BpfError::TooLong { len } => {
                write!(
                    f,
                    "BPF program has {len} instructions, more than {MAX_INSNS}"
                )
            }
            BpfError::Ragged { bytes } => write!(
                f,
                "BPF program is {bytes} bytes, not a whole number of {INSN_SIZE}-byte instructions"
            ),
            BpfError::BadOpcode { at, code } => {
                write!(f, "BPF instruction {at}: unknown opcode {code:#06x}")
            }
            BpfError::BadMemSlot { at, k } => write!(
                f,
                "BPF instruction {at}: scratch memory slot {k} does not exist (0-{})",
                MEMWORDS - 1
            ),
            BpfError::DivByZero { at } => {
                write!(f, "BPF instruction {at}: division or modulo by constant 0")
            }
            BpfError::BadShift { at, k } => {
                write!(
                    f,
                    "BPF instruction {at}: constant shift by {k} bits (at most 31)"
                )
            }
            BpfError::JumpOutside { at } => {
                write!(f, "BPF instruction {at}: jump lands outside the program")
            }
            BpfError::JumpToSelf { at } => {
                write!(f, "BPF instruction {at}: jumps to itself (an endless loop)")
            }
            BpfError::NoReturn => write!(f, "BPF program does not end with a return"),
        }
    }
}

impl std::error::Error for BpfError {}

/// Why a batch of frames cannot be matched (`Program::match_frames`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    Lengths {
        offsets: usize,
        lengths: usize,
        wirelens: usize,
    },
    OutsideBuffer {
        index: usize,
        offset: u64,
        length: u32,
        buffer: usize,
    },
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Lengths { offsets, lengths, wirelens } => write!(
                f,
                "offsets, lengths and wirelens differ in length ({offsets}, {lengths}, {wirelens})"
            ),
            BatchError::OutsideBuffer { index, offset, length, buffer } => write!(
                f,
                "frame {index} (offset {offset}, length {length}) lies outside the {buffer}-byte frames buffer"
            ),
        }
    }
}

impl std::error::Error for BatchError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alu {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    And,
    Or,
    Xor,
    Lsh,
    Rsh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cond {
    Eq,
    Gt,
    Ge,
    Set,
}

/// An instruction decoded once, with absolute jump targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    RetK(u32),
    RetA,
    LdAbsW(u32),
    LdAbsH(u32),
    LdAbsB(u32),
    LdIndW(u32),
    LdIndH(u32),
    LdIndB(u32),
    LdLen,
    LdxLen,
    LdxMsh(u32),
    LdImm(u32),
    LdxImm(u32),
    LdMem(u8),
    LdxMem(u8),
    St(u8),
    Stx(u8),
    Ja {
        to: usize,
        back: bool,
    },
    JmpK {
        cond: Cond,
        k: u32,
        t: usize,
        f: usize,
    },
    JmpX {
        cond: Cond,
        t: usize,
        f: usize,
    },
    AluK(Alu, u32),
    AluX(Alu),
    Neg,
    Tax,
    Txa,
}

/// A validated classic BPF program.
#[derive(Debug, Clone)]
pub struct Program {
    ops: Vec<Op>,
}

impl Program {
    /// Validate `insns` (libpcap's rules, see the module docs) and decode them.
    pub fn new(insns: &[Insn]) -> Result<Self, BpfError> {
        let len = insns.len();
        if len == 0 {
            return Err(BpfError::Empty);
        }
        if len > MAX_INSNS {
            return Err(BpfError::TooLong { len });
        }
        let mut ops = Vec::with_capacity(len);
        for (at, insn) in insns.iter().enumerate() {
            ops.push(decode(at, *insn, len)?);
        }
        match ops.last() {
            Some(Op::RetK(_) | Op::RetA) => Ok(Program { ops }),
            _ => Err(BpfError::NoReturn),
        }
    }

    /// [`Program::new`] from the raw `struct bpf_insn` array (native byte order).
    pub fn from_bytes(raw: &[u8]) -> Result<Self, BpfError> {
        let chunks = raw.chunks_exact(INSN_SIZE);
        if !chunks.remainder().is_empty() {
            return Err(BpfError::Ragged { bytes: raw.len() });
        }
        let insns: Vec<Insn> = chunks
            .filter_map(|c| c.first_chunk::<INSN_SIZE>())
            .map(|c| Insn::from_ne_bytes(*c))
            .collect();
        Program::new(&insns)
    }

    /// How many instructions.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Never true: an empty program is refused.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Run over one packet whose captured bytes are `pkt` and whose length on the wire
    /// is `wirelen`: the value of the `ret` it reaches (0 = reject), as `bpf_filter`.
    pub fn run(&self, pkt: &[u8], wirelen: u32) -> u32 {
        let mut a: u32 = 0;
        let mut x: u32 = 0;
        let mut mem = [0u32; MEMWORDS];
        let mut back = 0u32;
        let mut pc = 0usize;
        loop {
            // Validation keeps pc inside the program; a miss would only reject.
            let Some(&op) = self.ops.get(pc) else {
                return 0;
            };
            pc += 1;
            match op {
                Op::RetK(k) => return k,
                Op::RetA => return a,
                Op::LdAbsW(k) => match load_w(pkt, u64::from(k)) {
                    Some(v) => a = v,
                    None => return 0,
                },
                Op::LdAbsH(k) => match load_h(pkt, u64::from(k)) {
                    Some(v) => a = v,
                    None => return 0,
                },
                Op::LdAbsB(k) => match load_b(pkt, u64::from(k)) {
                    Some(v) => a = v,
                    None => return 0,
                },
                Op::LdIndW(k) => match load_w(pkt, u64::from(x) + u64::from(k)) {
                    Some(v) => a = v,
                    None => return 0,
                },
                Op::LdIndH(k) => match load_h(pkt, u64::from(x) + u64::from(k)) {
                    Some(v) => a = v,
                    None => return 0,
                },
                Op::LdIndB(k) => match load_b(pkt, u64::from(x) + u64::from(k)) {
                    Some(v) => a = v,
                    None => return 0,
                },
                Op::LdLen => a = wirelen,
                Op::LdxLen => x = wirelen,
                Op::LdxMsh(k) => match load_b(pkt, u64::from(k)) {
                    Some(v) => x = (v & 0xf) << 2,
                    None => return 0,
                },
                Op::LdImm(k) => a = k,
                Op::LdxImm(k) => x = k,
                Op::LdMem(s) => match mem.get(usize::from(s)) {
                    Some(&v) => a = v,
                    None => return 0,
                },
                Op::LdxMem(s) => match mem.get(usize::from(s)) {
                    Some(&v) => x = v,
                    None => return 0,
                },
                Op::St(s) => match mem.get_mut(usize::from(s)) {
                    Some(m) => *m = a,
                    None => return 0,
                },
                Op::Stx(s) => match mem.get_mut(usize::from(s)) {
                    Some(m) => *m = x,
                    None => return 0,
                },
                Op::Ja { to, back: is_back } => {
                    if is_back {
                        if back >= MAX_BACKWARD_JUMPS {
                            return 0;
                        }
                        back += 1;
                    }
                    pc = to;
                }
                Op::JmpK { cond, k, t, f } => pc = if test(cond, a, k) { t } else { f },
                Op::JmpX { cond, t, f } => pc = if test(cond, a, x) { t } else { f },
                Op::AluK(op, k) => match alu(op, a, k) {
                    Some(v) => a = v,
                    None => return 0,
                },
                Op::AluX(op) => match alu(op, a, x) {
                    Some(v) => a = v,
                    None => return 0,
                },
                Op::Neg => a = 0u32.wrapping_sub(a),
                Op::Tax => x = a,
                Op::Txa => a = x,
            }
        }
    }

    /// Whether the program accepts the packet (`run` is not 0), as `pcap_offline_filter`.
    pub fn matches(&self, pkt: &[u8], wirelen: u32) -> bool {
        self.run(pkt, wirelen) != 0
    }

    /// [`Program::matches`] for a batch: frame `i` is `frames[offsets[i]..][..lengths[i]]`,
    /// `wirelens[i]` long on the wire. One verdict per frame, appended to `out`
    /// (nothing is appended when the batch is refused).
    pub fn match_frames(
        &self,
        frames: &[u8],
        offsets: &[u64],
        lengths: &[u32],
        wirelens: &[u32],
        out: &mut Vec<bool>,
    ) -> Result<(), BatchError> {
        if offsets.len() != lengths.len() || offsets.len() != wirelens.len() {
            return Err(BatchError::Lengths {
                offsets: offsets.len(),
                lengths: lengths.len(),
                wirelens: wirelens.len(),
            });
        }
        let start = out.len();
        out.reserve(offsets.len());
        for (index, ((&offset, &length), &wirelen)) in
            offsets.iter().zip(lengths).zip(wirelens).enumerate()
        {
            let Some(frame) = slice(frames, offset, length) else {
                out.truncate(start);
                return Err(BatchError::OutsideBuffer {
                    index,
                    offset,
                    length,
                    buffer: frames.len(),
                });
            };
            out.push(self.matches(frame, wirelen));
        }
        Ok(())
    }
}

fn slice(frames: &[u8], offset: u64, length: u32) -> Option<&[u8]> {
    let a = usize::try_from(offset).ok()?;
    let b = a.checked_add(usize::try_from(length).ok()?)?;
    frames.get(a..b)
}

/// Validate and decode the instruction at `at` of a `len`-instruction program.
fn decode(at: usize, insn: Insn, len: usize) -> Result<Op, BpfError> {
    use code::*;
    let Insn { code, jt, jf, k } = insn;
    let bad = Err(BpfError::BadOpcode { at, code });
    let slot = || match u8::try_from(k) {
        Ok(s) if usize::from(s) < MEMWORDS => Ok(s),
        _ => Err(BpfError::BadMemSlot { at, k }),
    };
    // Conditional jumps: from the next instruction, forward by an unsigned 8-bit offset.
    let target = |off: u8| {
        let to = at + 1 + usize::from(off);
        if to < len {
            Ok(to)
        } else {
            Err(BpfError::JumpOutside { at })
        }
    };
    let cond = |c: u16| match c {
        JEQ => Some(Cond::Eq),
        JGT => Some(Cond::Gt),
        JGE => Some(Cond::Ge),
        JSET => Some(Cond::Set),
        _ => None,
    };
    let alu_op = |c: u16| match c {
        ADD => Some(Alu::Add),
        SUB => Some(Alu::Sub),
        MUL => Some(Alu::Mul),
        DIV => Some(Alu::Div),
        MOD => Some(Alu::Mod),
        AND => Some(Alu::And),
        OR => Some(Alu::Or),
        XOR => Some(Alu::Xor),
        LSH => Some(Alu::Lsh),
        RSH => Some(Alu::Rsh),
        _ => None,
    };
    Ok(match code {
        c if c == RET | K => Op::RetK(k),
        c if c == RET | A => Op::RetA,
        c if c == LD | W | ABS => Op::LdAbsW(k),
        c if c == LD | H | ABS => Op::LdAbsH(k),
        c if c == LD | B | ABS => Op::LdAbsB(k),
        c if c == LD | W | IND => Op::LdIndW(k),
        c if c == LD | H | IND => Op::LdIndH(k),
        c if c == LD | B | IND => Op::LdIndB(k),
        c if c == LD | W | LEN => Op::LdLen,
        c if c == LDX | W | LEN => Op::LdxLen,
        c if c == LDX | B | MSH => Op::LdxMsh(k),
        c if c == LD | IMM => Op::LdImm(k),
        c if c == LDX | IMM => Op::LdxImm(k),
        c if c == LD | MEM => Op::LdMem(slot()?),
        c if c == LDX | MEM => Op::LdxMem(slot()?),
        ST => Op::St(slot()?),
        STX => Op::Stx(slot()?),
        c if c == JMP | JA => {
            // libpcap's rule: (at + 1 + k) mod 2^32 inside the program, k != -1 (to itself).
            // A k whose signed value is negative jumps backward (protochain).
            let Ok(from) = u32::try_from(at + 1) else {
                return Err(BpfError::JumpOutside { at });
            };
            let to = from.wrapping_add(k) as usize;
            if to >= len {
                return Err(BpfError::JumpOutside { at });
            }
            if k == u32::MAX {
                return Err(BpfError::JumpToSelf { at });
            }
            Op::Ja { to, back: to <= at }
        }
        c if c & 0x07 == JMP => {
            if c & !(0x07 | 0xf0 | X) != 0 {
                return bad;
            }
            let Some(cd) = cond(c & 0xf0) else {
                return bad;
            };
            let (t, f) = (target(jt)?, target(jf)?);
            if c & X != 0 {
                Op::JmpX { cond: cd, t, f }
            } else {
                Op::JmpK { cond: cd, k, t, f }
            }
        }
        c if c == ALU | NEG => Op::Neg,
        c if c & 0x07 == ALU => {
            if c & !(0x07 | 0xf0 | X) != 0 {
                return bad;
            }
            let Some(op) = alu_op(c & 0xf0) else {
                return bad;
            };
            if c & X != 0 {
                Op::AluX(op)
            } else {
                match op {
                    Alu::Div | Alu::Mod if k == 0 => return Err(BpfError::DivByZero { at }),
                    Alu::Lsh | Alu::Rsh if k >= 32 => return Err(BpfError::BadShift { at, k }),
                    _ => Op::AluK(op, k),
                }
            }
        }
        c if c == MISC | TAX => Op::Tax,
        c if c == MISC | TXA => Op::Txa,
        _ => return bad,
    })
}

#[inline]
fn test(cond: Cond, a: u32, b: u32) -> bool {
    match cond {
        Cond::Eq => a == b,
        Cond::Gt => a > b,
        Cond::Ge => a >= b,
        Cond::Set => a & b != 0,
    }
}

/// `a op b`; None (reject the packet) for a division or modulo by 0. A shift by 32 or
/// more gives 0 (libpcap's answer to what C leaves undefined).
#[inline]
fn alu(op: Alu, a: u32, b: u32) -> Option<u32> {
    Some(match op {
        Alu::Add => a.wrapping_add(b),
        Alu::Sub => a.wrapping_sub(b),
        Alu::Mul => a.wrapping_mul(b),
        Alu::Div => a.checked_div(b)?,
        Alu::Mod => a.checked_rem(b)?,
        Alu::And => a & b,
        Alu::Or => a | b,
        Alu::Xor => a ^ b,
        Alu::Lsh => a.checked_shl(b).unwrap_or(0),
        Alu::Rsh => a.checked_shr(b).unwrap_or(0),
    })
}

#[inline]
fn at_offset(pkt: &[u8], k: u64) -> Option<&[u8]> {
    pkt.get(usize::try_from(k).ok()?..)
}

#[inline]
fn load_w(pkt: &[u8], k: u64) -> Option<u32> {
    at_offset(pkt, k)?
        .first_chunk::<4>()
        .map(|b| u32::from_be_bytes(*b))
}

#[inline]
fn load_h(pkt: &[u8], k: u64) -> Option<u32> {
    at_offset(pkt, k)?
        .first_chunk::<2>()
        .map(|b| u32::from(u16::from_be_bytes(*b)))
}

#[inline]
fn load_b(pkt: &[u8], k: u64) -> Option<u32> {
    at_offset(pkt, k)?.first().map(|&b| u32::from(b))
}

#[cfg(test)]
mod tests;
