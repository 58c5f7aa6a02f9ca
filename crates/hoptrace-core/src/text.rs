//! Numbers, addresses and strings as the NDJSON shows them, appended to a byte buffer.
//!
//! Every hop of every path writes a dozen integers, two addresses and a few names:
//! `fmt` would cost more than everything else a path does (DESIGN.md, "Native code
//! here"), so these write digits from lookup tables. Each matches what the Python
//! product prints byte for byte: `str(int)`, `f"0x{skb:x}"`, `socket.inet_ntop`
//! (glibc's, tracer/addr.py) and `json.encoder.encode_basestring_ascii`.

/// "00".."99": two decimal digits per lookup.
const DIGITS2: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

const HEX: &[u8; 16] = b"0123456789abcdef";

/// 10^k for k in 0..=19.
const POW10: [u64; 20] = {
    let mut t = [1u64; 20];
    let mut k = 1;
    while k < 20 {
        t[k] = t[k - 1] * 10;
        k += 1;
    }
    t
};

/// How many decimal digits `v` has.
#[inline]
fn decimal_len(v: u64) -> usize {
    // log10 from the bit length (1233/4096 ~ log10(2)), then one correction.
    let t = (((64 - (v | 1).leading_zeros()) * 1233) >> 12) as usize;
    let below = POW10.get(t).is_some_and(|&p| v < p);
    (t + 1 - usize::from(below)).max(1)
}

/// Append a fixed-size buffer and keep its first `n` bytes: a copy of known size is a
/// few stores, where a copy of a variable length is a call to `memcpy`.
#[inline]
fn push_prefix<const N: usize>(out: &mut Vec<u8>, buf: &[u8; N], n: usize) {
    let len = out.len();
    out.extend_from_slice(buf);
    out.truncate(len + n.min(N));
}

/// `v` in decimal, as `str(int)`.
#[inline]
pub fn push_u64(out: &mut Vec<u8>, v: u64) {
    let n = decimal_len(v);
    let mut tmp = [0u8; 20];
    let mut i = n;
    let mut v = v;
    // Four digits per 64-bit division; the two pairs of each from 32-bit arithmetic.
    while v >= 10_000 {
        let rem = (v % 10_000) as u32;
        v /= 10_000;
        let (hi, lo) = ((rem / 100) as usize * 2, (rem % 100) as usize * 2);
        i -= 4;
        tmp[i..i + 2].copy_from_slice(&DIGITS2[hi..hi + 2]);
        tmp[i + 2..i + 4].copy_from_slice(&DIGITS2[lo..lo + 2]);
    }
    let mut v = v as u32;
    if v >= 100 {
        let lo = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        tmp[i..i + 2].copy_from_slice(&DIGITS2[lo..lo + 2]);
    }
    if v >= 10 {
        let d = v as usize * 2;
        tmp[i - 2..i].copy_from_slice(&DIGITS2[d..d + 2]);
    } else {
        tmp[i - 1] = b'0' + v as u8;
    }
    push_prefix(out, &tmp, n);
}

/// `v` in decimal, or `null`.
#[inline]
pub fn push_opt(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => push_u64(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// `v` in lowercase hex without leading zeros (`format(v, "x")`).
#[inline]
pub fn push_hex(out: &mut Vec<u8>, v: u64) {
    let nibbles = (64 - (v | 1).leading_zeros()).div_ceil(4);
    for k in (0..nibbles).rev() {
        out.push(HEX[((v >> (k * 4)) & 0xF) as usize]);
    }
}

/// Dotted quad: each octet's digits, (length, up to three digits).
static OCTETS: [(u8, [u8; 3]); 256] = {
    let mut t = [(0u8, [0u8; 3]); 256];
    let mut i = 0;
    while i < 256 {
        let (h, d, u) = ((i / 100) as u8, ((i / 10) % 10) as u8, (i % 10) as u8);
        t[i] = if i >= 100 {
            (3, [b'0' + h, b'0' + d, b'0' + u])
        } else if i >= 10 {
            (2, [b'0' + d, b'0' + u, 0])
        } else {
            (1, [b'0' + u, 0, 0])
        };
        i += 1;
    }
    t
};

/// `"a.b.c.d"` (quoted when `quote`) into `buf`, returning its length.
#[inline]
fn ipv4_text(a: &[u8; 4], quote: bool, buf: &mut [u8; 20]) -> usize {
    let mut n = 0;
    if quote {
        buf[0] = b'"';
        n = 1;
    }
    for (k, &b) in a.iter().enumerate() {
        if k > 0 {
            buf[n] = b'.';
            n += 1;
        }
        let (len, d) = &OCTETS[b as usize];
        buf[n..n + 3].copy_from_slice(d);
        n += *len as usize;
    }
    if quote {
        buf[n] = b'"';
        n += 1;
    }
    n
}

/// An IPv4 address in dotted-quad form.
#[inline]
pub fn push_ipv4(out: &mut Vec<u8>, a: &[u8; 4]) {
    let mut buf = [0u8; 20];
    let n = ipv4_text(a, false, &mut buf);
    push_prefix(out, &buf, n);
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
        let mut buf = [0u8; 20];
        let n = ipv4_text(&[raw[0], raw[1], raw[2], raw[3]], true, &mut buf);
        push_prefix(out, &buf, n);
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
