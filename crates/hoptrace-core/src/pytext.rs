//! The few pieces of Python's text semantics that the file reader's labels and
//! comment metadata depend on, so that the core reads a capture exactly as
//! tracer/sources/files.py (the reference) does: `str.isspace`, decimal digits
//! (`str.isdecimal`, `int()` of non-ASCII digits), `int(text, 0)` with its
//! underscores and 4300-digit limit, `str.split()`, and the codecs `json.loads`
//! picks for bytes.
//!
//! Text that may hold lone surrogates (a JSON `"\ud800"`, a file name Python
//! decoded with `surrogateescape`) travels as code points or as "surrogatepass"
//! UTF-8 bytes (Python: `.encode("utf-8", "surrogatepass")`), never as `String`.

/// Python 3.11's `int_max_str_digits` default: `int()` of more decimal digits raises.
pub const MAX_STR_DIGITS: usize = 4300;

/// Code points for which Python's `str.isspace()` is true (Unicode 14, Python 3.11).
const SPACES: &[u32] = &[
    9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 133, 160, 5760, 8192, 8193, 8194, 8195, 8196, 8197,
    8198, 8199, 8200, 8201, 8202, 8232, 8233, 8239, 8287, 12288,
];

/// The zero of every run of ten decimal digits (Unicode category Nd), Python 3.11.
const DECIMAL_ZEROS: &[u32] = &[
    48, 1632, 1776, 1984, 2406, 2534, 2662, 2790, 2918, 3046, 3174, 3302, 3430, 3558, 3664, 3792,
    3872, 4160, 4240, 6112, 6160, 6470, 6608, 6784, 6800, 6992, 7088, 7232, 7248, 42528, 43216,
    43264, 43472, 43504, 43600, 44016, 65296, 66720, 68912, 69734, 69872, 69942, 70096, 70384,
    70736, 70864, 71248, 71360, 71472, 71904, 72016, 72784, 73040, 73120, 92768, 92864, 93008,
    120782, 120792, 120802, 120812, 120822, 123200, 123632, 125264, 130032,
];

/// Python's `str.isspace()` for one code point.
pub fn is_space(c: u32) -> bool {
    SPACES.binary_search(&c).is_ok()
}

/// The decimal value of a code point (Python's `unicodedata.decimal`), if it has one.
pub fn decimal(c: u32) -> Option<u32> {
    let i = match DECIMAL_ZEROS.binary_search(&c) {
        Ok(i) => i,
        Err(0) => return None,
        Err(i) => i - 1,
    };
    let zero = *DECIMAL_ZEROS.get(i)?;
    let d = c - zero;
    (d < 10).then_some(d)
}

/// Code points of a Rust string.
pub fn code_points(s: &str) -> Vec<u32> {
    s.chars().map(u32::from).collect()
}

/// Python's `str.split()` (no argument): runs of whitespace separate, none at the ends.
pub fn split_whitespace(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| is_space(u32::from(c)))
        .filter(|part| !part.is_empty())
}

/// A Python int, as much of it as the reader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PyInt {
    pub negative: bool,
    /// The magnitude modulo 2^64.
    pub low: u64,
    /// The magnitude is above u64::MAX.
    pub big: bool,
}

impl PyInt {
    pub fn from_u64(v: u64) -> PyInt {
        PyInt {
            negative: false,
            low: v,
            big: false,
        }
    }

    /// `value & 0xFFFFFFFFFFFFFFFF` (two's complement for negative values).
    pub fn masked(&self) -> u64 {
        if self.negative {
            self.low.wrapping_neg()
        } else {
            self.low
        }
    }

    /// The value if it is in 0..=u64::MAX.
    pub fn as_u64(&self) -> Option<u64> {
        if self.big || (self.negative && self.low != 0) {
            None
        } else {
            Some(self.low)
        }
    }
}

/// Accumulates digits of one base into a [`PyInt`] magnitude.
struct Acc {
    low: u64,
    big: bool,
}

impl Acc {
    fn push(&mut self, base: u64, d: u64) {
        let (m, o1) = self.low.overflowing_mul(base);
        let (s, o2) = m.overflowing_add(d);
        if (o1 || o2) && !(self.low == 0 && d == 0) {
            self.big = true;
        }
        self.low = s;
    }
}

fn ascii_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

fn digit_value(b: u8) -> u64 {
    match b {
        b'0'..=b'9' => u64::from(b - b'0'),
        b'a'..=b'z' => u64::from(b - b'a') + 10,
        b'A'..=b'Z' => u64::from(b - b'A') + 10,
        _ => 37,
    }
}

/// Python's `int(text, 0)` (None where it raises ValueError).
pub fn int_base0(text: &[u32]) -> Option<PyInt> {
    // _PyUnicode_TransformDecimalAndSpaceToASCII: spaces become ' ', decimal digits
    // ASCII digits, anything else outside ASCII an invalid character.
    let mut s: Vec<u8> = Vec::with_capacity(text.len());
    for &c in text {
        if c < 127 {
            s.push(c as u8);
        } else if is_space(c) {
            s.push(b' ');
        } else if let Some(d) = decimal(c) {
            s.push(b'0' + d as u8);
        } else {
            return None;
        }
    }
    // PyLong_FromString stops at a NUL, and then not all of the text was read.
    if s.contains(&0) {
        return None;
    }
    let mut i = 0;
    while s.get(i).copied().is_some_and(ascii_space) {
        i += 1;
    }
    let mut negative = false;
    match s.get(i) {
        Some(b'+') => i += 1,
        Some(b'-') => {
            negative = true;
            i += 1
        }
        _ => {}
    }
    let c0 = s.get(i).copied().unwrap_or(0);
    let c1 = s.get(i + 1).copied().unwrap_or(0);
    let mut error_if_nonzero = false;
    let base: u64 = if c0 != b'0' {
        10
    } else {
        match c1 {
            b'x' | b'X' => 16,
            b'o' | b'O' => 8,
            b'b' | b'B' => 2,
            _ => {
                error_if_nonzero = true;
                10
            }
        }
    };
    if c0 == b'0' && base != 10 {
        i += 2;
        if s.get(i) == Some(&b'_') {
            i += 1;
        }
    }
    if s.get(i) == Some(&b'_') {
        return None;
    }
    let start = i;
    let mut acc = Acc { low: 0, big: false };
    let mut digits = 0usize;
    let mut prev = 0u8;
    while let Some(&c) = s.get(i) {
        if c == b'_' {
            if prev == b'_' {
                return None;
            }
        } else if digit_value(c) < base {
            digits += 1;
            acc.push(base, digit_value(c));
        } else {
            break;
        }
        prev = c;
        i += 1;
    }
    if prev == b'_' {
        return None;
    }
    if base == 10 && digits > MAX_STR_DIGITS {
        return None;
    }
    let zero = acc.low == 0 && !acc.big;
    if error_if_nonzero && !zero {
        return None;
    }
    if i == start {
        return None;
    }
    while s.get(i).copied().is_some_and(ascii_space) {
        i += 1;
    }
    if i != s.len() {
        return None;
    }
    Some(PyInt {
        negative: negative && !zero,
        low: acc.low,
        big: acc.big,
    })
}

/// Python's `int(v)` for a `v` with `v.isdecimal()`: None when `v` is not all
/// decimal digits (or empty) or has more digits than `int()` converts.
pub fn decimal_str(v: &str) -> Option<PyInt> {
    let mut acc = Acc { low: 0, big: false };
    let mut n = 0usize;
    for c in v.chars() {
        let d = decimal(u32::from(c))?;
        acc.push(10, u64::from(d));
        n += 1;
    }
    if n == 0 || n > MAX_STR_DIGITS {
        return None;
    }
    Some(PyInt {
        negative: false,
        low: acc.low,
        big: acc.big,
    })
}

/// Append a code point as UTF-8, lone surrogates included (Python's "surrogatepass").
pub fn push_wtf8(out: &mut Vec<u8>, c: u32) {
    match c {
        0..=0x7F => out.push(c as u8),
        0x80..=0x7FF => {
            out.push(0xC0 | (c >> 6) as u8);
            out.push(0x80 | (c & 0x3F) as u8);
        }
        0x800..=0xFFFF => {
            out.push(0xE0 | (c >> 12) as u8);
            out.push(0x80 | ((c >> 6) & 0x3F) as u8);
            out.push(0x80 | (c & 0x3F) as u8);
        }
        _ => {
            out.push(0xF0 | (c >> 18) as u8);
            out.push(0x80 | ((c >> 12) & 0x3F) as u8);
            out.push(0x80 | ((c >> 6) & 0x3F) as u8);
            out.push(0x80 | (c & 0x3F) as u8);
        }
    }
}

/// Code points as "surrogatepass" UTF-8.
pub fn wtf8(cps: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cps.len());
    for &c in cps {
        push_wtf8(&mut out, c);
    }
    out
}

/// `bytes.decode("utf-8", "surrogatepass")`; None where Python raises.
pub fn decode_utf8_surrogatepass(b: &[u8]) -> Option<Vec<u32>> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let cont = |i: usize| b.get(i).copied().filter(|x| x & 0xC0 == 0x80);
    while let Some(&b0) = b.get(i) {
        if b0 < 0x80 {
            out.push(u32::from(b0));
            i += 1;
            continue;
        }
        let (n, lo, hi) = match b0 {
            0xC2..=0xDF => (2, 0x80, 0xBF),
            0xE0 => (3, 0xA0, 0xBF),
            0xE1..=0xEF => (3, 0x80, 0xBF), // 0xED A0..BF: a surrogate, passed
            0xF0 => (4, 0x90, 0xBF),
            0xF1..=0xF3 => (4, 0x80, 0xBF),
            0xF4 => (4, 0x80, 0x8F),
            _ => return None,
        };
        let b1 = b.get(i + 1).copied()?;
        if b1 < lo || b1 > hi {
            return None;
        }
        let mut c = (u32::from(b0) & (0x7F >> n)) << 6 | (u32::from(b1) & 0x3F);
        for k in 2..n {
            c = c << 6 | (u32::from(cont(i + k)?) & 0x3F);
        }
        out.push(c);
        i += n;
    }
    Some(out)
}

/// `bytes.decode("utf-16-le", "surrogatepass")`.
fn decode_utf16le(b: &[u8]) -> Option<Vec<u32>> {
    if b.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u32> = b
        .chunks_exact(2)
        .map(|u| u32::from(u16::from_le_bytes([u[0], u[1]])))
        .collect();
    let mut out = Vec::with_capacity(units.len());
    let mut i = 0;
    while let Some(&u) = units.get(i) {
        if (0xD800..0xDC00).contains(&u) {
            if let Some(&l) = units.get(i + 1) {
                if (0xDC00..0xE000).contains(&l) {
                    out.push(0x10000 + ((u - 0xD800) << 10) + (l - 0xDC00));
                    i += 2;
                    continue;
                }
            }
        }
        out.push(u);
        i += 1;
    }
    Some(out)
}

/// `bytes.decode("utf-32-le", "surrogatepass")`.
fn decode_utf32le(b: &[u8]) -> Option<Vec<u32>> {
    if b.len() % 4 != 0 {
        return None;
    }
    b.chunks_exact(4)
        .map(|u| {
            let c = u32::from_le_bytes([u[0], u[1], u[2], u[3]]);
            (c <= 0x10FFFF).then_some(c)
        })
        .collect()
}

/// What `json.loads(b)` decodes `b` to, for a `b` that starts with `{` or `[`
/// (json.detect_encoding's choice, decoded with "surrogatepass"); None where
/// decoding raises.
pub fn json_text(b: &[u8]) -> Option<Vec<u32>> {
    let first = b.first().copied().unwrap_or(0);
    let second = b.get(1).copied();
    if first != 0 {
        if b.len() >= 4 && second == Some(0) {
            let b2 = b.get(2).copied().unwrap_or(0);
            let b3 = b.get(3).copied().unwrap_or(0);
            return if b2 != 0 || b3 != 0 {
                decode_utf16le(b)
            } else {
                decode_utf32le(b)
            };
        }
        if b.len() == 2 && second == Some(0) {
            return decode_utf16le(b);
        }
    }
    decode_utf8_surrogatepass(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(s: &str) -> Option<(bool, u64, bool)> {
        int_base0(&code_points(s)).map(|v| (v.negative, v.low, v.big))
    }

    #[test]
    fn int_base0_as_python() {
        assert_eq!(int("0x10"), Some((false, 16, false)));
        assert_eq!(int(" -0o17 "), Some((true, 15, false)));
        assert_eq!(int("0b1_0"), Some((false, 2, false)));
        assert_eq!(int("0x_ff"), Some((false, 255, false)));
        assert_eq!(int("00"), Some((false, 0, false)));
        assert_eq!(int("0_0"), Some((false, 0, false)));
        assert_eq!(int("\u{0663}"), Some((false, 3, false)));
        for bad in [
            "010", "0x", "_1", "1_", "1__0", "0x__1", "", " ", "+", "1 2", "1\0", "0x1g",
        ] {
            assert_eq!(int(bad), None, "{bad:?}");
        }
        assert_eq!(int(&"1".repeat(4300)).map(|v| v.2), Some(true));
        assert_eq!(int(&"1".repeat(4301)), None);
        assert_eq!(
            int(&format!("0x{}", "f".repeat(5000))).map(|v| (v.1, v.2)),
            Some((u64::MAX, true))
        );
        assert_eq!(
            int("-1").map(|_| int_base0(&code_points("-1")).map(|v| v.masked())),
            Some(Some(u64::MAX))
        );
    }

    #[test]
    fn decimals_and_spaces() {
        assert_eq!(decimal(u32::from('7')), Some(7));
        assert_eq!(decimal(0x0669), Some(9));
        assert_eq!(decimal(u32::from('a')), None);
        assert_eq!(decimal(0xB2), None); // superscript two: a digit, not a decimal
        assert!(is_space(0x1C) && is_space(0x3000) && !is_space(0x200B));
        assert_eq!(
            split_whitespace(" a\u{3000}b  c ").collect::<Vec<_>>(),
            vec!["a", "b", "c"]
        );
    }

    #[test]
    fn codecs() {
        assert_eq!(
            decode_utf8_surrogatepass(b"\xed\xa0\x80"),
            Some(vec![0xD800])
        );
        assert_eq!(decode_utf8_surrogatepass(b"\xc0\x80"), None);
        assert_eq!(
            json_text(b"{\x00\"\x00"),
            Some(vec![u32::from('{'), u32::from('"')])
        );
        assert_eq!(json_text(b"{\x00\x00\x00"), Some(vec![u32::from('{')]));
        assert_eq!(wtf8(&[0xD800, 0x41]), b"\xed\xa0\x80A".to_vec());
    }
}
