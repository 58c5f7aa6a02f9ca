//! A JSON reader that accepts exactly what Python's `json.loads` accepts (its C
//! scanner: `NaN`/`Infinity`, lone surrogate escapes, the 4300-digit int limit,
//! last duplicate key wins) and keeps only what hoptrace's packet comments
//! carry: per top-level object its "v" key and the values of "dir", "skb",
//! "ts_ns", "netns" and "drop_reason". Used where a comment is not in the
//! recorder's exact layout (readers.py's JSON fallback).
//!
//! Nesting deeper than [`MAX_DEPTH`] is an error, as Python's RecursionError is;
//! Python's own limit depends on how deep its stack already is (about 900-990).

use crate::pytext::{PyInt, MAX_STR_DIGITS};

/// Containers nested deeper than this fail the parse.
pub const MAX_DEPTH: usize = 960;

/// A value, as far as the reader looks into it.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    /// An int (a bool is one too: `isinstance(True, int)`).
    Int(PyInt),
    Float,
    Str(Vec<u32>),
    Object(Box<Meta>),
    /// An array, or a container below the top level (not looked into).
    Other,
}

/// The keys of an object the reader uses (absent: None).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Meta {
    pub has_v: bool,
    pub dir: Option<Val>,
    pub skb: Option<Val>,
    pub ts_ns: Option<Val>,
    pub netns: Option<Val>,
    pub drop_reason: Option<Val>,
}

struct Parser<'a> {
    s: &'a [u32],
    i: usize,
}

type R<T> = Result<T, ()>;

fn is_ws(c: u32) -> bool {
    matches!(c, 0x20 | 0x09 | 0x0A | 0x0D)
}

fn is_digit(c: u32) -> bool {
    (0x30..=0x39).contains(&c)
}

fn hex(c: u32) -> Option<u32> {
    char::from_u32(c)?.to_digit(16)
}

impl Parser<'_> {
    fn peek(&self) -> Option<u32> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.i += 1;
        }
    }

    fn lit(&mut self, word: &str) -> bool {
        let n = word.len();
        match self.s.get(self.i..self.i + n) {
            Some(got)
                if got
                    .iter()
                    .zip(word.bytes())
                    .all(|(&a, b)| a == u32::from(b)) =>
            {
                self.i += n;
                true
            }
            _ => false,
        }
    }

    /// A value; `keep`: an object here is looked into (else only validated).
    fn value(&mut self, depth: usize, keep: bool) -> R<Val> {
        match self.peek().ok_or(())? {
            0x22 => {
                self.i += 1;
                Ok(Val::Str(self.string()?))
            }
            0x7B => {
                if depth >= MAX_DEPTH {
                    return Err(());
                }
                self.i += 1;
                self.object(depth + 1, keep)
            }
            0x5B => {
                if depth >= MAX_DEPTH {
                    return Err(());
                }
                self.i += 1;
                self.array(depth + 1, None)?;
                Ok(Val::Other)
            }
            0x6E if self.lit("null") => Ok(Val::Null),
            0x74 if self.lit("true") => Ok(Val::Int(PyInt::from_u64(1))),
            0x66 if self.lit("false") => Ok(Val::Int(PyInt::from_u64(0))),
            0x4E if self.lit("NaN") => Ok(Val::Float),
            0x49 if self.lit("Infinity") => Ok(Val::Float),
            0x2D if self.lit("-Infinity") => Ok(Val::Float),
            _ => self.number(),
        }
    }

    fn number(&mut self) -> R<Val> {
        let negative = self.peek() == Some(0x2D);
        if negative {
            self.i += 1;
        }
        let start = self.i;
        match self.peek() {
            Some(0x30) => self.i += 1,
            Some(c) if is_digit(c) => {
                while self.peek().is_some_and(is_digit) {
                    self.i += 1;
                }
            }
            _ => return Err(()),
        }
        let int_end = self.i;
        let mut float = false;
        if self.peek() == Some(0x2E) && self.s.get(self.i + 1).copied().is_some_and(is_digit) {
            float = true;
            self.i += 2;
            while self.peek().is_some_and(is_digit) {
                self.i += 1;
            }
        }
        if matches!(self.peek(), Some(0x65 | 0x45)) {
            let e_start = self.i;
            self.i += 1;
            if matches!(self.peek(), Some(0x2B | 0x2D)) {
                self.i += 1;
            }
            let digits_start = self.i;
            while self.peek().is_some_and(is_digit) {
                self.i += 1;
            }
            if self.i > digits_start {
                float = true;
            } else {
                self.i = e_start;
            }
        }
        if float {
            return Ok(Val::Float);
        }
        let digits = self.s.get(start..int_end).unwrap_or(&[]);
        if digits.len() > MAX_STR_DIGITS {
            return Err(()); // int(): "Exceeds the limit (4300 digits)"
        }
        let mut low = 0u64;
        let mut big = false;
        for &d in digits {
            let (m, o1) = low.overflowing_mul(10);
            let (s, o2) = m.overflowing_add(u64::from(d - 0x30));
            big |= o1 || o2;
            low = s;
        }
        let zero = low == 0 && !big;
        Ok(Val::Int(PyInt {
            negative: negative && !zero,
            low,
            big,
        }))
    }

    /// The rest of a string after its opening quote.
    fn string(&mut self) -> R<Vec<u32>> {
        let mut out = Vec::new();
        loop {
            let c = self.peek().ok_or(())?;
            self.i += 1;
            match c {
                0x22 => return Ok(out),
                0x5C => {
                    let e = self.peek().ok_or(())?;
                    self.i += 1;
                    let v = match e {
                        0x22 | 0x5C | 0x2F => e,
                        0x62 => 0x08,
                        0x66 => 0x0C,
                        0x6E => 0x0A,
                        0x72 => 0x0D,
                        0x74 => 0x09,
                        0x75 => {
                            let mut c = self.hex4()?;
                            if (0xD800..0xDC00).contains(&c)
                                && self.s.get(self.i) == Some(&0x5C)
                                && self.s.get(self.i + 1) == Some(&0x75)
                            {
                                let save = self.i;
                                self.i += 2;
                                let c2 = self.hex4()?;
                                if (0xDC00..0xE000).contains(&c2) {
                                    c = 0x10000 + ((c - 0xD800) << 10) + (c2 - 0xDC00);
                                } else {
                                    self.i = save;
                                }
                            }
                            c
                        }
                        _ => return Err(()),
                    };
                    out.push(v);
                }
                c if c < 0x20 => return Err(()),
                c => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> R<u32> {
        let mut v = 0;
        for _ in 0..4 {
            v = v << 4 | hex(self.peek().ok_or(())?).ok_or(())?;
            self.i += 1;
        }
        Ok(v)
    }

    /// The rest of an object after `{`.
    fn object(&mut self, depth: usize, keep: bool) -> R<Val> {
        let mut meta = Meta::default();
        self.ws();
        if self.peek() == Some(0x7D) {
            self.i += 1;
            return Ok(if keep {
                Val::Object(Box::new(meta))
            } else {
                Val::Other
            });
        }
        loop {
            if self.peek() != Some(0x22) {
                return Err(());
            }
            self.i += 1;
            let key = self.string()?;
            self.ws();
            if self.peek() != Some(0x3A) {
                return Err(());
            }
            self.i += 1;
            self.ws();
            let v = self.value(depth, false)?;
            if keep {
                let slot = match key.as_slice() {
                    [0x76] => {
                        meta.has_v = true;
                        None
                    }
                    [0x64, 0x69, 0x72] => Some(&mut meta.dir),
                    [0x73, 0x6B, 0x62] => Some(&mut meta.skb),
                    k if k.iter().copied().eq("ts_ns".bytes().map(u32::from)) => {
                        Some(&mut meta.ts_ns)
                    }
                    k if k.iter().copied().eq("netns".bytes().map(u32::from)) => {
                        Some(&mut meta.netns)
                    }
                    k if k.iter().copied().eq("drop_reason".bytes().map(u32::from)) => {
                        Some(&mut meta.drop_reason)
                    }
                    _ => None,
                };
                if let Some(slot) = slot {
                    *slot = Some(v);
                }
            }
            self.ws();
            match self.peek() {
                Some(0x7D) => {
                    self.i += 1;
                    break;
                }
                Some(0x2C) => {
                    self.i += 1;
                    self.ws();
                }
                _ => return Err(()),
            }
        }
        Ok(if keep {
            Val::Object(Box::new(meta))
        } else {
            Val::Other
        })
    }

    /// The rest of an array after `[`; its elements go to `items` (looked into) when given.
    fn array(&mut self, depth: usize, mut items: Option<&mut Vec<Val>>) -> R<()> {
        self.ws();
        if self.peek() == Some(0x5D) {
            self.i += 1;
            return Ok(());
        }
        loop {
            let v = self.value(depth, items.is_some())?;
            if let Some(items) = items.as_deref_mut() {
                items.push(v);
            }
            self.ws();
            match self.peek() {
                Some(0x5D) => {
                    self.i += 1;
                    return Ok(());
                }
                Some(0x2C) => {
                    self.i += 1;
                    self.ws();
                }
                _ => return Err(()),
            }
        }
    }

    fn end(&mut self) -> R<()> {
        self.ws();
        if self.i == self.s.len() {
            Ok(())
        } else {
            Err(()) // "Extra data"
        }
    }
}

/// `json.loads(text)` of a document that should be one array: its elements
/// (objects looked into), or None where Python raises or the value is no array.
pub fn loads_array(text: &[u32]) -> Option<Vec<Val>> {
    let mut p = Parser { s: text, i: 0 };
    p.ws();
    if p.peek() != Some(0x5B) {
        return None;
    }
    p.i += 1;
    let mut items = Vec::new();
    p.array(1, Some(&mut items)).ok()?;
    p.end().ok()?;
    Some(items)
}

/// `json.loads(text)`: the value (an object looked into), or None where Python raises.
pub fn loads(text: &[u32]) -> Option<Val> {
    let mut p = Parser { s: text, i: 0 };
    p.ws();
    let v = p.value(0, true).ok()?;
    p.end().ok()?;
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pytext::code_points;

    fn obj(s: &str) -> Option<Meta> {
        match loads(&code_points(s)) {
            Some(Val::Object(m)) => Some(*m),
            _ => None,
        }
    }

    #[test]
    fn objects_as_python_reads_them() {
        let m = obj(r#"{"v": 1, "dir": "rx", "skb": 5, "ts_ns": 1e3, "netns": true, "dir": "tx"}"#);
        let m = m.expect("parses");
        assert!(m.has_v);
        assert_eq!(m.dir, Some(Val::Str(code_points("tx"))));
        assert_eq!(m.skb, Some(Val::Int(PyInt::from_u64(5))));
        assert_eq!(m.ts_ns, Some(Val::Float));
        assert_eq!(m.netns, Some(Val::Int(PyInt::from_u64(1))));
        assert!(
            obj(r#"{"a": NaN, "b": -Infinity, "c": [1, {"d": null}], "e": "\ud800"}"#).is_some()
        );
        for bad in [
            r#"{"a": 1,}"#,
            r#"{"a": 01}"#,
            "{\"a\": \"\t\"}",
            r#"{"a": 1} x"#,
            r#"{"a": "\x"}"#,
            "{'a': 1}",
            r#"{"a": 1."#,
        ] {
            assert_eq!(obj(bad), None, "{bad}");
        }
        let deep = format!("{{\"v\":{}{}}}", "[".repeat(2000), "]".repeat(2000));
        assert_eq!(obj(&deep), None);
        assert_eq!(obj(&format!("{{\"a\": {}}}", "1".repeat(4301))), None);
        assert!(obj(&format!("{{\"a\": {}}}", "1".repeat(4300))).is_some());
    }

    #[test]
    fn arrays_count_their_elements() {
        let items = loads_array(&code_points(r#"[{"v":1}, 5, {"x":[]}]"#)).expect("parses");
        assert_eq!(items.len(), 3);
        assert_eq!(items[1], Val::Int(PyInt::from_u64(5)));
        assert_eq!(loads_array(&code_points(r#"[{"v":1},,{}]"#)), None);
    }
}
