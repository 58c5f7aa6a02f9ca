//! Numbers, addresses and strings as the NDJSON shows them, appended to a byte buffer.
//!
//! Every hop of every path writes a dozen integers, two addresses and a few names:
//! `fmt` would cost more than everything else a path does (DESIGN.md, "Native code
//! here"), so these write digits from lookup tables. Each matches what the Python
//! product prints byte for byte: `str(int)`, `f"0x{skb:x}"`, `socket.inet_ntop`
//! (glibc's, tracer/addr.py) and `json.encoder.encode_basestring_ascii`.

const HEX: &[u8; 16] = b"0123456789abcdef";

// Digits are put together in a register, several per arithmetic step, and stored to the
// buffer whole: writing them byte by byte into a scratch array and copying that out costs
// a failed store-to-load forwarding (the copy's wide load waits for the narrow stores to
// retire) on every number, which was most of what a number cost.

/// Append the first `n` (at most 8) bytes of `w` in memory order (`w`'s lowest byte first):
/// one 8-byte store, then the length.
#[inline(always)]
fn push_word(out: &mut Vec<u8>, w: u64, n: usize) {
    let len = out.len();
    out.extend_from_slice(&w.to_le_bytes());
    out.truncate(len + n.min(8));
}

/// [`push_word`] for up to 16 bytes.
#[inline(always)]
fn push_word16(out: &mut Vec<u8>, w: u128, n: usize) {
    let len = out.len();
    out.extend_from_slice(&w.to_le_bytes());
    out.truncate(len + n.min(16));
}

/// The decimal digits (values 0-9, not yet ASCII) of `x` below 10^8, zero-padded to 8, the
/// first in the lowest byte: 10^4, 10^2 and 10 split in all lanes at once (multiplications
/// by reciprocals, exact for these ranges; no lane overflows into the next).
#[inline(always)]
fn digits8(x: u32) -> u64 {
    let v = u64::from(x / 10_000) | u64::from(x % 10_000) << 32;
    let q = ((v * 10_486) >> 20) & 0x0000_007F_0000_007F; // /100 per 32-bit lane
    let v = q | (v - q * 100) << 16;
    let t = ((v * 103) >> 10) & 0x000F_000F_000F_000F; // /10 per 16-bit lane
    t | (v - t * 10) << 8
}

const ASCII_ZEROS: u64 = 0x3030_3030_3030_3030;

/// `x` below 10^8 as its digits without leading zeros (one at least): the ASCII word
/// shifted down to its first digit, and the digit count.
#[inline(always)]
fn head8(x: u32) -> (u64, usize) {
    let d = digits8(x);
    // Leading zero digits are the low zero bytes.
    let zeros = ((d.trailing_zeros() / 8) as usize).min(7);
    ((d | ASCII_ZEROS) >> (8 * zeros), 8 - zeros)
}

/// `v` in decimal, as `str(int)`.
#[inline(always)]
pub fn push_u64(out: &mut Vec<u8>, v: u64) {
    const E8: u64 = 100_000_000;
    const E16: u64 = E8 * E8;
    if v < E8 {
        let (w, n) = head8(v as u32);
        push_word(out, w, n);
    } else if v < E16 {
        let (w, n) = head8((v / E8) as u32);
        let lo = digits8((v % E8) as u32) | ASCII_ZEROS;
        push_word16(out, u128::from(w) | u128::from(lo) << (8 * n), n + 8);
    } else {
        let (w, n) = head8((v / E16) as u32); // at most 1844
        let rest = v % E16;
        push_word(out, w, n);
        let mid = digits8((rest / E8) as u32) | ASCII_ZEROS;
        let lo = digits8((rest % E8) as u32) | ASCII_ZEROS;
        push_word16(out, u128::from(mid) | u128::from(lo) << 64, 16);
    }
}

/// `v` in decimal, or `null`.
#[inline(always)]
pub fn push_opt(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => push_u64(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// `x`'s 8 hex digits in ASCII (lowercase), the first in the lowest byte.
#[inline]
fn hex8(x: u32) -> u64 {
    // Nibble k (from the lowest) to byte k, then reversed: the first digit lowest.
    let v = u64::from(x);
    let v = (v | v << 16) & 0x0000_FFFF_0000_FFFF;
    let v = (v | v << 8) & 0x00FF_00FF_00FF_00FF;
    let v = ((v | v << 4) & 0x0F0F_0F0F_0F0F_0F0F).swap_bytes();
    // Digits 10-15 carry into bit 4 when 6 is added: those get 'a' - '0' - 10 more.
    let letters = ((v + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    v + ASCII_ZEROS + letters * (b'a' - b'0' - 10) as u64
}

/// `v` in lowercase hex without leading zeros (`format(v, "x")`).
#[inline]
pub fn push_hex(out: &mut Vec<u8>, v: u64) {
    let n = (64 - (v | 1).leading_zeros()).div_ceil(4) as usize; // 1..=16
    if n <= 8 {
        push_word(out, hex8(v as u32) >> (8 * (8 - n)), n);
    } else {
        let hi = hex8((v >> 32) as u32) >> (8 * (16 - n));
        let lo = hex8(v as u32);
        push_word16(out, u128::from(hi) | u128::from(lo) << (8 * (n - 8)), n);
    }
}

/// Dotted quad: each octet's digits (the first in the lowest byte) and their count.
static OCTETS: [(u32, u8); 256] = {
    let mut t = [(0u32, 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let (h, d, u) = ((i / 100) as u32, ((i / 10) % 10) as u32, (i % 10) as u32);
        t[i] = if i >= 100 {
            (0x30_30_30 | h | d << 8 | u << 16, 3)
        } else if i >= 10 {
            (0x30_30 | d | u << 8, 2)
        } else {
            (0x30 | u, 1)
        };
        i += 1;
    }
    t
};

/// `a.b.c.d` as a word (the first character in the lowest byte) and its length (at most 15).
#[inline]
fn ipv4_word(a: &[u8; 4]) -> (u128, usize) {
    let (mut w, mut n) = (0u128, 0usize);
    for (k, &b) in a.iter().enumerate() {
        if k > 0 {
            w |= u128::from(b'.') << (8 * n);
            n += 1;
        }
        let (d, len) = OCTETS[usize::from(b)];
        w |= u128::from(d) << (8 * n);
        n += usize::from(len);
    }
    (w, n)
}

/// An IPv4 address in dotted-quad form.
#[inline]
pub fn push_ipv4(out: &mut Vec<u8>, a: &[u8; 4]) {
    let (w, n) = ipv4_word(a);
    push_word16(out, w, n);
}

/// An IPv6 address as glibc's `inet_ntop` writes it (what Python's `socket.inet_ntop`
/// returns): the first longest run of two or more zero words as `::`, lowercase hex
/// without leading zeros, and the last 32 bits dotted when the address is
/// IPv4-compatible (`::a.b.c.d`, six zero words then a nonzero one) or IPv4-mapped
/// (`::ffff:a.b.c.d`). The one difference from `Ipv6Addr`'s `Display`: it writes an
/// IPv4-compatible address in hex.
pub fn push_ipv6(out: &mut Vec<u8>, a: &[u8; 16]) {
    let mut words = [0u16; 8];
    for (i, w) in words.iter_mut().enumerate() {
        *w = u16::from_be_bytes([a[2 * i], a[2 * i + 1]]);
    }
    // The first longest run of zero words (glibc replaces a run only when strictly longer).
    let (mut best, mut best_len) = (usize::MAX, 0usize);
    let mut i = 0;
    while i < 8 {
        if words[i] == 0 {
            let start = i;
            while i < 8 && words[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                best = start;
                best_len = i - start;
            }
        } else {
            i += 1;
        }
    }
    if best_len < 2 {
        best = usize::MAX;
    }
    let mut i = 0;
    while i < 8 {
        if best != usize::MAX && i >= best && i < best + best_len {
            if i == best {
                out.push(b':');
            }
            i += 1;
            continue;
        }
        if i != 0 {
            out.push(b':');
        }
        if i == 6 && best == 0 && (best_len == 6 || (best_len == 5 && words[5] == 0xffff)) {
            push_ipv4(out, &[a[12], a[13], a[14], a[15]]);
            return;
        }
        push_hex(out, u64::from(words[i]));
        i += 1;
    }
    if best != usize::MAX && best + best_len == 8 {
        out.push(b':');
    }
}

/// An address of `family` (4 or 6) from its 16 raw bytes (IPv4 in the first 4); nothing
/// for any other family (tracer/addr.py `addr_text`).
#[inline]
pub fn push_addr(out: &mut Vec<u8>, family: u8, raw: &[u8; 16]) {
    match family {
        4 => push_ipv4(out, &[raw[0], raw[1], raw[2], raw[3]]),
        6 => push_ipv6(out, raw),
        _ => {}
    }
}

/// `"addr"`: the address as a JSON string (addresses need no escaping).
#[inline]
pub fn push_addr_json(out: &mut Vec<u8>, family: u8, raw: &[u8; 16]) {
    if family == 4 {
        // The closing quote fits in the word: 15 characters at most before it.
        let (w, n) = ipv4_word(&[raw[0], raw[1], raw[2], raw[3]]);
        out.push(b'"');
        push_word16(out, w | u128::from(b'"') << (8 * n), n + 1);
        return;
    }
    out.push(b'"');
    push_addr(out, family, raw);
    out.push(b'"');
}

/// `s` as a JSON string literal, quotes included, exactly as Python's
/// `json.encoder.encode_basestring_ascii` (what `json.dumps` uses): every character
/// outside printable ASCII as `\uXXXX` (lowercase; UTF-16 surrogate pairs above U+FFFF).
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        push_json_char(out, u32::from(c));
    }
    out.push(b'"');
}

/// Code points (lone surrogates included: a Python `str` may hold them) as a JSON string
/// literal, quotes included, as [`push_json_str`] writes a `str`.
pub fn push_json_code_points(out: &mut Vec<u8>, cps: &[u32]) {
    out.push(b'"');
    for &c in cps {
        push_json_char(out, c);
    }
    out.push(b'"');
}

#[inline]
fn push_json_char(out: &mut Vec<u8>, c: u32) {
    let unit = |out: &mut Vec<u8>, u: u32| {
        out.extend_from_slice(b"\\u");
        for k in (0..4).rev() {
            out.push(HEX[((u >> (k * 4)) & 0xF) as usize]);
        }
    };
    match c {
        0x22 => out.extend_from_slice(b"\\\""),
        0x5C => out.extend_from_slice(b"\\\\"),
        0x0A => out.extend_from_slice(b"\\n"),
        0x0D => out.extend_from_slice(b"\\r"),
        0x09 => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0C => out.extend_from_slice(b"\\f"),
        0x20..=0x7E => out.push(c as u8),
        0x1_0000.. => {
            // UTF-16 surrogate pair, as Python writes a character above U+FFFF.
            let v = c - 0x1_0000;
            unit(out, 0xD800 + (v >> 10));
            unit(out, 0xDC00 + (v & 0x3FF));
        }
        _ => unit(out, c),
    }
}

/// `s` as a JSON string literal, as a new byte string (for tables built once).
pub fn json_str(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 2);
    push_json_str(&mut v, s);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).expect("ascii")
    }

    fn v6(s: &str) -> [u8; 16] {
        s.parse::<Ipv6Addr>().expect("address").octets()
    }

    #[test]
    fn integers_at_the_edges() {
        for v in [
            0,
            1,
            9,
            10,
            99,
            100,
            101,
            999,
            1000,
            u64::MAX,
            u64::from(u32::MAX),
        ] {
            assert_eq!(text(|o| push_u64(o, v)), v.to_string());
            assert_eq!(text(|o| push_hex(o, v)), format!("{v:x}"));
        }
        assert_eq!(text(|o| push_opt(o, None)), "null");
        // Every digit count and the 8-digit groups' edges: 10^k and 2^k, each +-1.
        let mut edges = vec![u64::MAX - 1];
        for k in 0..20 {
            let p = 10u64.pow(k);
            edges.extend([p - 1, p, p + 1, p.saturating_mul(10) - 1]);
        }
        for k in 0..64 {
            let p = 1u64 << k;
            edges.extend([p - 1, p, p + 1]);
        }
        for v in edges {
            assert_eq!(text(|o| push_u64(o, v)), v.to_string());
            assert_eq!(text(|o| push_hex(o, v)), format!("{v:x}"));
        }
    }

    #[test]
    fn ipv6_as_glibc_writes_it() {
        // Checked against Python's socket.inet_ntop on this machine.
        for (addr, want) in [
            ("::", "::"),
            ("::1", "::1"),
            ("1::", "1::"),
            ("2001:db8::1", "2001:db8::1"),
            ("2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"),
            ("2001:0:0:1:0:0:1:1", "2001::1:0:0:1:1"),
            ("1:0:2:0:3:0:4:0", "1:0:2:0:3:0:4:0"),
            ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
            ("::1.2.3.4", "::1.2.3.4"),
            ("::0.1.0.0", "::0.1.0.0"),
            ("::0.0.1.2", "::102"),
            ("::ffff:0:0", "::ffff:0.0.0.0"),
            ("0:0:0:0:0:ffff:0:1", "::ffff:0.0.0.1"),
            ("fe80::ffff:1.2.3.4", "fe80::ffff:102:304"),
            ("0:0:0:0:1:ffff:102:304", "::1:ffff:102:304"),
        ] {
            assert_eq!(text(|o| push_ipv6(o, &v6(addr))), want, "{addr}");
        }
    }

    #[test]
    fn json_strings_as_python_escapes_them() {
        // json.encoder.encode_basestring_ascii on this machine.
        for (s, want) in [
            ("eth0", r#""eth0""#),
            ("a\"b\\c", r#""a\"b\\c""#),
            ("\n\r\t\u{8}\u{c}\u{1}\u{1f}", r#""\n\r\t\b\f\u0001\u001f""#),
            ("\u{7f}é\u{fffd}", r#""\u007f\u00e9\ufffd""#),
            ("\u{1F600}", r#""\ud83d\ude00""#),
        ] {
            assert_eq!(text(|o| push_json_str(o, s)), want);
        }
    }

    proptest! {
        #[test]
        fn decimal_as_std(v in any::<u64>()) {
            prop_assert_eq!(text(|o| push_u64(o, v)), v.to_string());
            prop_assert_eq!(text(|o| push_hex(o, v)), format!("{v:x}"));
        }

        #[test]
        fn decimal_as_std_at_every_size(v in any::<u64>(), shift in 0u32..64) {
            // Uniform u64s are nearly all 19-20 digits: shift to reach every length.
            let v = v >> shift;
            prop_assert_eq!(text(|o| push_u64(o, v)), v.to_string());
            prop_assert_eq!(text(|o| push_hex(o, v)), format!("{v:x}"));
            // Appended after what the buffer holds, nothing else touched.
            let mut buf = b"x".to_vec();
            push_u64(&mut buf, v);
            push_hex(&mut buf, v);
            prop_assert_eq!(buf, format!("x{v}{v:x}").into_bytes());
        }

        #[test]
        fn ipv4_as_std(a in any::<[u8; 4]>()) {
            prop_assert_eq!(text(|o| push_ipv4(o, &a)), Ipv4Addr::from(a).to_string());
        }

        #[test]
        fn ipv6_as_std(a in any::<[u8; 16]>(), zeros in any::<u8>(), from in 0usize..8) {
            // Runs of zero words are what the compression rules are about: make some.
            let mut a = a;
            for w in from..8 {
                if zeros & (1 << w) != 0 {
                    a[2 * w] = 0;
                    a[2 * w + 1] = 0;
                }
            }
            let ip = Ipv6Addr::from(a);
            let compat = a[..12].iter().all(|&b| b == 0) && a[12..14] != [0, 0];
            let want = if compat {
                // glibc keeps the dotted form Rust dropped for IPv4-compatible addresses.
                format!("::{}", Ipv4Addr::new(a[12], a[13], a[14], a[15]))
            } else {
                ip.to_string()
            };
            prop_assert_eq!(text(|o| push_ipv6(o, &a)), want);
        }

        #[test]
        fn json_strings_round_trip_and_stay_ascii(s in any::<String>()) {
            let lit = text(|o| push_json_str(o, &s));
            prop_assert!(lit.is_ascii());
            prop_assert!(lit.starts_with('"') && lit.ends_with('"'));
            // Undo the escapes: the string comes back.
            let body = &lit[1..lit.len() - 1];
            let mut units: Vec<u16> = Vec::new();
            let mut it = body.chars();
            while let Some(c) = it.next() {
                if c != '\\' {
                    units.push(c as u16);
                    continue;
                }
                match it.next() {
                    Some('u') => {
                        let hex: String = it.by_ref().take(4).collect();
                        prop_assert_eq!(hex.to_lowercase(), hex.clone());
                        units.push(u16::from_str_radix(&hex, 16).expect("hex"));
                    }
                    Some('n') => units.push(10),
                    Some('r') => units.push(13),
                    Some('t') => units.push(9),
                    Some('b') => units.push(8),
                    Some('f') => units.push(12),
                    Some(c) => units.push(c as u16),
                    None => prop_assert!(false, "dangling escape"),
                }
            }
            prop_assert_eq!(String::from_utf16(&units).expect("utf16"), s);
        }
    }
}
