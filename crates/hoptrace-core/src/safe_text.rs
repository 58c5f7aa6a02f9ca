//! Untrusted text made safe for a terminal: tracer/safe_text.py `term_safe`, one function.
//!
//! Names hoptrace prints for people come from places it does not control (interface
//! names in a capture file, namespace and container names, drop reasons in a
//! recording's comments). Printed raw, an ESC starts a control sequence, a CR rewrites
//! a line, a bidi override reorders what follows. Every C0 control, DEL, C1 control,
//! bidi mark/embedding/override/isolate, U+2028/U+2029 and lone surrogate is shown as a
//! visible escape: `\t`, `\n`, `\r`, `\xHH` below U+0100, `\uHHHH` above; everything
//! else is copied as it is.
//!
//! Names travel in the core as "surrogatepass" UTF-8 (a lone surrogate is how Python
//! holds an undecodable byte of a name): [`push_term_safe_wtf8`] reads them so.

use crate::pytext::decode_utf8_surrogatepass;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether `term_safe` escapes code point `c` (tracer/safe_text.py `_UNSAFE`).
#[inline]
pub fn is_unsafe(c: u32) -> bool {
    matches!(
        c,
        0x00..=0x1F
            | 0x7F..=0x9F
            | 0x061C
            | 0x200E
            | 0x200F
            | 0x2028..=0x202E
            | 0x2066..=0x2069
            | 0xD800..=0xDFFF
    )
}

/// The visible escape of an unsafe code point (`_escape`).
fn push_escape(out: &mut Vec<u8>, c: u32) {
    match c {
        0x09 => out.extend_from_slice(b"\\t"),
        0x0A => out.extend_from_slice(b"\\n"),
        0x0D => out.extend_from_slice(b"\\r"),
        _ if c < 0x100 => {
            out.extend_from_slice(b"\\x");
            out.push(HEX[(c >> 4) as usize & 0xF]);
            out.push(HEX[c as usize & 0xF]);
        }
        _ => {
            out.extend_from_slice(b"\\u");
            for k in (0..4).rev() {
                out.push(HEX[(c >> (k * 4)) as usize & 0xF]);
            }
        }
    }
}

/// One code point, escaped when unsafe, else as UTF-8.
#[inline]
fn push_code_point(out: &mut Vec<u8>, c: u32) {
    if is_unsafe(c) {
        push_escape(out, c);
    } else if let Some(ch) = char::from_u32(c) {
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    } else {
        // Not a scalar value and not a surrogate: above U+10FFFF, which no str holds.
        out.extend_from_slice("\u{FFFD}".as_bytes());
    }
}

/// `term_safe(s)` appended to `out`.
pub fn push_term_safe(out: &mut Vec<u8>, s: &str) {
    // Most names are printable ASCII: one scan, one copy.
    if s.bytes().all(|b| (0x20..0x7F).contains(&b)) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for ch in s.chars() {
        push_code_point(out, u32::from(ch));
    }
}

/// `term_safe` of the `str` Python decodes "surrogatepass" UTF-8 `name` to, appended to
/// `out` (always valid UTF-8: surrogates come out escaped). Bytes that are not even
/// surrogatepass UTF-8 (no reader makes such a name) read as lossy UTF-8 (U+FFFD), as
/// labels.rs reads them for NDJSON.
pub fn push_term_safe_wtf8(out: &mut Vec<u8>, name: &[u8]) {
    if let Ok(s) = std::str::from_utf8(name) {
        return push_term_safe(out, s);
    }
    match decode_utf8_surrogatepass(name) {
        Some(cps) => cps.into_iter().for_each(|c| push_code_point(out, c)),
        None => push_term_safe(out, &String::from_utf8_lossy(name)),
    }
}

/// `term_safe` of a surrogatepass UTF-8 name, as a new byte string (tables built once).
pub fn term_safe_wtf8(name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len());
    push_term_safe_wtf8(&mut v, name);
    v
}

/// Characters (code points) in UTF-8 text: what Python's `len` and `ljust` count.
#[inline]
pub fn char_count(utf8: &[u8]) -> usize {
    utf8.iter().filter(|&&b| b & 0xC0 != 0x80).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn safe(s: &str) -> String {
        let mut v = Vec::new();
        push_term_safe(&mut v, s);
        String::from_utf8(v).expect("utf8")
    }

    fn safe_wtf8(b: &[u8]) -> String {
        String::from_utf8(term_safe_wtf8(b)).expect("utf8")
    }

    #[test]
    fn escapes_as_tracer_safe_text_does() {
        // tracer.safe_text.term_safe on this machine.
        for (s, want) in [
            ("eth0", "eth0"),
            ("\x1b[2J", "\\x1b[2J"),
            ("a\tb\nc\rd", "a\\tb\\nc\\rd"),
            ("\x00\x1f\x7f", "\\x00\\x1f\\x7f"),
            ("\u{85}\u{9b}\u{9f}\u{a0}", "\\x85\\x9b\\x9f\u{a0}"),
            ("\u{61c}\u{200e}\u{200f}", "\\u061c\\u200e\\u200f"),
            (
                "\u{2028}\u{2029}\u{202e}x\u{2066}\u{2069}",
                "\\u2028\\u2029\\u202ex\\u2066\\u2069",
            ),
            (
                "\u{2027}\u{202f}\u{2065}\u{206a}",
                "\u{2027}\u{202f}\u{2065}\u{206a}",
            ),
            ("héllo 🙂 →", "héllo 🙂 →"),
        ] {
            assert_eq!(safe(s), want, "{s:?}");
        }
    }

    #[test]
    fn lone_surrogates_are_escaped() {
        // "eth\udcff" and "\ud800x" as surrogatepass UTF-8.
        assert_eq!(safe_wtf8(b"eth\xed\xb3\xbf"), "eth\\udcff");
        assert_eq!(safe_wtf8(b"\xed\xa0\x80x"), "\\ud800x");
        // Not even surrogatepass: lossy, as labels.rs reads it.
        assert_eq!(safe_wtf8(b"a\xffb\x1b"), "a\u{FFFD}b\\x1b");
        assert_eq!(char_count("a→🙂".as_bytes()), 3);
    }

    proptest! {
        #[test]
        fn safe_text_as_a_plain_reference_writes_it(s in any::<String>()) {
            // The rule written the obvious way, with fmt.
            let want: String = s
                .chars()
                .map(|c| match u32::from(c) {
                    9 => "\\t".to_owned(),
                    10 => "\\n".to_owned(),
                    13 => "\\r".to_owned(),
                    n if is_unsafe(n) && n < 0x100 => format!("\\x{n:02x}"),
                    n if is_unsafe(n) => format!("\\u{n:04x}"),
                    _ => c.to_string(),
                })
                .collect();
            let got = safe(&s);
            prop_assert_eq!(&got, &want);
            prop_assert!(got.chars().all(|c| !is_unsafe(u32::from(c))));
            prop_assert_eq!(safe_wtf8(s.as_bytes()), got);
        }

        #[test]
        fn any_bytes_come_out_as_utf8(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let v = term_safe_wtf8(&b);
            prop_assert!(std::str::from_utf8(&v).is_ok());
        }
    }
}
