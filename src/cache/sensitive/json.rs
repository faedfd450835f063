//! A JSON reader for the never-cache rule: it checks that bytes are exactly one JSON document (RFC 8259, UTF-8)
//! and hands every object key, at any depth, to the caller. It is iterative — one pass over the bytes with an
//! explicit stack of open containers — so no nesting depth makes it give up (a recursive parser's depth limit is
//! exactly where a secret could hide), and its work is linear in the input.

use std::fmt;

/// Why bytes are not one JSON document, and where the reader noticed.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Malformed {
    /// Byte offset into the document.
    at: usize,
    what: &'static str,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// What the reader expects next.
#[derive(Clone, Copy)]
enum Expect {
    /// Any value.
    Value,
    /// An object key (after `{` or a `,` inside an object).
    Key,
    /// A `,` or the close of the innermost container; the end of the input when none is open.
    AfterValue,
}

/// Reads `doc` as one JSON document and calls `visit` with each object key (escapes decoded) in document order,
/// stopping at the first key it answers `Some` for. `Ok(None)` when the document is well-formed and no key was
/// picked; `Err` when it is not exactly one JSON document (whitespace around it is allowed, nothing else).
pub(super) fn find_key<T>(
    doc: &[u8],
    mut visit: impl FnMut(&str) -> Option<T>,
) -> Result<Option<T>, Malformed> {
    // Checking UTF-8 once up front lets the scan below treat every byte >= 0x80 as part of a valid character.
    let text = std::str::from_utf8(doc).map_err(|e| Malformed {
        at: e.valid_up_to(),
        what: "invalid UTF-8",
    })?;
    let mut reader = Reader {
        text,
        bytes: doc,
        at: 0,
    };
    // One entry per open container: true for an object, false for an array.
    let mut open: Vec<bool> = Vec::new();
    let mut expect = Expect::Value;
    loop {
        reader.skip_whitespace();
        expect = match expect {
            Expect::Value => match reader.next_byte()? {
                b'{' => {
                    open.push(true);
                    reader.skip_whitespace();
                    if reader.eat(b'}') {
                        open.pop();
                        Expect::AfterValue
                    } else {
                        Expect::Key
                    }
                }
                b'[' => {
                    open.push(false);
                    reader.skip_whitespace();
                    if reader.eat(b']') {
                        open.pop();
                        Expect::AfterValue
                    } else {
                        Expect::Value
                    }
                }
                b'"' => {
                    reader.string(None)?;
                    Expect::AfterValue
                }
                b't' => reader.literal(b"rue")?,
                b'f' => reader.literal(b"alse")?,
                b'n' => reader.literal(b"ull")?,
                b'-' | b'0'..=b'9' => reader.number()?,
                _ => return Err(reader.malformed_before("expected a value")),
            },
            Expect::Key => {
                if reader.next_byte()? != b'"' {
                    return Err(reader.malformed_before("expected an object key"));
                }
                let mut key = String::new();
                reader.string(Some(&mut key))?;
                if let Some(found) = visit(&key) {
                    return Ok(Some(found));
                }
                reader.skip_whitespace();
                if reader.next_byte()? != b':' {
                    return Err(reader.malformed_before("expected ':' after an object key"));
                }
                Expect::Value
            }
            Expect::AfterValue => match (open.last(), reader.peek()) {
                (None, None) => return Ok(None),
                (None, Some(_)) => return Err(reader.malformed("data after the document")),
                (Some(&object), _) => match (object, reader.next_byte()?) {
                    (true, b',') => Expect::Key,
                    (false, b',') => Expect::Value,
                    (true, b'}') | (false, b']') => {
                        open.pop();
                        Expect::AfterValue
                    }
                    _ => return Err(reader.malformed_before("expected ',' or a closing bracket")),
                },
            },
        };
    }
}

/// A position in the document being read.
struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn malformed(&self, what: &'static str) -> Malformed {
        Malformed { at: self.at, what }
    }

    /// For a byte already taken by `next_byte`.
    fn malformed_before(&self, what: &'static str) -> Malformed {
        Malformed {
            at: self.at - 1,
            what,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next_byte(&mut self) -> Result<u8, Malformed> {
        let byte = self.peek().ok_or(self.malformed("unexpected end"))?;
        self.at += 1;
        Ok(byte)
    }

    fn eat(&mut self, byte: u8) -> bool {
        let matched = self.peek() == Some(byte);
        self.at += usize::from(matched);
        matched
    }

    /// JSON's whitespace only: space, tab, line feed, carriage return.
    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The rest of `true`, `false` or `null`, its first byte taken.
    fn literal(&mut self, rest: &[u8]) -> Result<Expect, Malformed> {
        if !self.bytes[self.at..].starts_with(rest) {
            return Err(self.malformed_before("unknown literal"));
        }
        self.at += rest.len();
        Ok(Expect::AfterValue)
    }

    /// A number, its first byte (`-` or a digit) taken: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Result<Expect, Malformed> {
        let first = self.bytes[self.at - 1];
        let first = if first == b'-' {
            self.next_byte()?
        } else {
            first
        };
        match first {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return Err(self.malformed_before("expected a digit")),
        }
        if self.eat(b'.') {
            self.some_digits()?;
        }
        if self.eat(b'e') || self.eat(b'E') {
            let _ = self.eat(b'+') || self.eat(b'-');
            self.some_digits()?;
        }
        Ok(Expect::AfterValue)
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Result<(), Malformed> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.malformed("expected a digit"));
        }
        self.digits();
        Ok(())
    }

    /// A string, its opening quote taken; decoded into `out` when given (keys), only checked otherwise.
    fn string(&mut self, mut out: Option<&mut String>) -> Result<(), Malformed> {
        loop {
            let run = self.at;
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.at += 1;
            }
            if let Some(out) = out.as_deref_mut() {
                // Stops only at ASCII bytes, so the run ends on a character boundary.
                out.push_str(&self.text[run..self.at]);
            }
            match self.next_byte()? {
                b'"' => return Ok(()),
                b'\\' => {
                    let decoded = self.escape()?;
                    if let Some(out) = out.as_deref_mut() {
                        out.push(decoded);
                    }
                }
                _ => return Err(self.malformed_before("control character in a string")),
            }
        }
    }

    /// An escape, its backslash taken. A `\u` surrogate without its pair decodes as U+FFFD: JSON's grammar
    /// allows it, and a key stays matchable by what surrounds it.
    fn escape(&mut self) -> Result<char, Malformed> {
        Ok(match self.next_byte()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4()?;
                if (0xD800..0xDC00).contains(&unit) && self.bytes[self.at..].starts_with(b"\\u") {
                    let resume = self.at;
                    self.at += 2;
                    let low = self.hex4()?;
                    if (0xDC00..0xE000).contains(&low) {
                        let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                        return Ok(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
                    }
                    // Not a low surrogate: read it as an escape of its own.
                    self.at = resume;
                }
                char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER)
            }
            _ => return Err(self.malformed_before("unknown escape")),
        })
    }

    fn hex4(&mut self) -> Result<u32, Malformed> {
        let mut unit = 0;
        for _ in 0..4 {
            let digit = char::from(self.next_byte()?)
                .to_digit(16)
                .ok_or_else(|| self.malformed_before("expected a hex digit"))?;
            unit = unit * 16 + digit;
        }
        Ok(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(doc: &[u8]) -> Result<Vec<String>, Malformed> {
        let mut seen = Vec::new();
        find_key(doc, |key| {
            seen.push(key.to_owned());
            None::<()>
        })?;
        Ok(seen)
    }

    #[test]
    fn finds_every_key_in_order_with_escapes_decoded() {
        let doc = br#" {"a":1,"b":[{"c":null},{"d\u0041\n":"x"}],"e":{"f":{}},"g":[],"h":"\"}"} "#;
        assert_eq!(
            keys(doc).unwrap(),
            ["a", "b", "c", "dA\n", "e", "f", "g", "h"]
        );
        assert_eq!(
            keys(br#"{"pass\u0077ord":1,"\ud83d\ude00":2,"\ud800x":3}"#).unwrap(),
            ["password", "😀", "\u{FFFD}x"]
        );
        assert_eq!(keys("{\"clé\":\"värde\"}".as_bytes()).unwrap(), ["clé"]);
    }

    #[test]
    fn accepts_every_kind_of_value() {
        for doc in [
            &br#"[true,false,null,0,-0,12,-3.25,1e5,2E-3,4.5e+10,"",[],{}]"#[..],
            b"{}",
            b"[]",
            b"\t\r\n [ 1 , { \"k\" : [ ] } ] \n",
        ] {
            assert_eq!(
                keys(doc).map(|_| ()),
                Ok(()),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
    }

    #[test]
    fn refuses_what_is_not_exactly_one_document() {
        for doc in [
            &b""[..],
            b"{",
            b"[1,]",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{a:1}",
            b"[1 2]",
            b"{\"a\":1}]",
            b"[1]}",
            b"{\"a\":1} {\"b\":2}",
            b"{\"a\":1}x",
            b"[01]",
            b"[1.]",
            b"[.5]",
            b"[1e]",
            b"[-]",
            b"[+1]",
            b"[tru]",
            b"[nul]",
            b"[\"\\x\"]",
            b"[\"\\u12g4\"]",
            b"[\"tab\tinside\"]",
            b"[\"unterminated]",
            b"\xEF\xBB\xBF{}",
            b"{\"a\":\"\xFF\"}",
            b"\x0C{}",
            b"[1]\x00",
        ] {
            assert!(keys(doc).is_err(), "{}", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn has_no_depth_limit() {
        let depth = 100_000;
        let doc = format!("{}{{\"deep\":1}}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(keys(doc.as_bytes()).unwrap(), ["deep"]);
        let doc = format!("{}1{}", r#"{"k":"#.repeat(depth), "}".repeat(depth));
        assert_eq!(keys(doc.as_bytes()).unwrap().len(), depth);
        let unclosed = "[".repeat(depth);
        assert!(keys(unclosed.as_bytes()).is_err());
    }

    #[test]
    fn stops_at_the_first_key_picked() {
        let mut visited = 0;
        let found = find_key(br#"{"a":1,"b":2,"c":3} trailing"#, |key| {
            visited += 1;
            (key == "b").then_some(key.len())
        });
        assert_eq!(found, Ok(Some(1)));
        assert_eq!(visited, 2);
    }
}
