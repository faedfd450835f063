//! What must never be cached: keys with a segment (the entity included) that names a secret, and JSON values
//! with a field whose name does. Matching is by case-insensitive substring, on purpose conservative:
//! `user:1:password_hash` and `{"apiToken": …}` are refused too. A Set that violates the rule is refused with
//! SENSITIVE_DATA; a loader result that violates it is served to its caller but never written to the cache.
//!
//! The rule fails closed: a value that looks like JSON (past leading whitespace and byte-order marks it opens
//! with `{` or `[`) but is not exactly one JSON document violates it too. Lenient readers (a streaming parser,
//! one that skips a BOM or replaces invalid UTF-8, one without a depth limit) may still see fields in it that
//! the rule could not check.

mod json;

use crate::keys::Key;

/// The UTF-8 byte-order mark, which some writers put before a JSON document.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The deny-list, lowercased.
#[derive(Clone, Debug)]
pub(crate) struct SensitiveData {
    deny: Vec<String>,
}

impl SensitiveData {
    /// A rule refusing the words in `deny`.
    pub(crate) fn new(deny: &[String]) -> SensitiveData {
        SensitiveData {
            deny: deny.iter().map(|word| word.to_ascii_lowercase()).collect(),
        }
    }

    fn denied(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.deny
            .iter()
            .find(|word| name.contains(word.as_str()))
            .map(String::as_str)
    }

    /// Why `key` may not be cached, if it may not.
    pub(crate) fn key_violation(&self, key: &Key) -> Option<String> {
        key.local().split(':').find_map(|segment| {
            self.denied(segment)
                .map(|word| format!("key segment {segment:?} names {word:?}"))
        })
    }

    /// Why `value` may not be cached, if it looks like JSON and either holds a field named by the deny-list or
    /// is not exactly one JSON document.
    pub(crate) fn value_violation(&self, value: &[u8]) -> Option<String> {
        if !looks_like_json(value) {
            return None;
        }
        let doc = value.strip_prefix(BOM).unwrap_or(value);
        let found = json::find_key(doc, |name| {
            self.denied(name)
                .map(|word| format!("JSON field {name:?} names {word:?}"))
        });
        found.unwrap_or_else(|malformed| {
            Some(format!(
                "the value looks like JSON but is not one JSON document ({malformed}), so its fields cannot be checked"
            ))
        })
    }
}

/// Whether `value`, past any leading whitespace and byte-order marks, opens a JSON object or array.
fn looks_like_json(mut value: &[u8]) -> bool {
    loop {
        value = value.trim_ascii_start();
        match value.strip_prefix(BOM) {
            Some(rest) => value = rest,
            None => return matches!(value.first(), Some(b'{' | b'[')),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> SensitiveData {
        SensitiveData::new(&[
            "password".into(),
            "token".into(),
            "session".into(),
            "api_key".into(),
        ])
    }

    #[test]
    fn refuses_keys_naming_secrets() {
        let key = |raw| Key::parse(raw, 512).unwrap();
        assert!(rule().key_violation(&key("user:1:password")).is_some());
        assert!(rule().key_violation(&key("session:abc")).is_some());
        assert!(rule().key_violation(&key("user:1:Password_Hash")).is_some());
        assert!(rule().key_violation(&key("user:1:posts")).is_none());
    }

    #[test]
    fn refuses_json_with_secret_fields_at_any_depth() {
        assert!(
            rule()
                .value_violation(br#"{"name":"ada","password":"x"}"#)
                .is_some()
        );
        assert!(
            rule()
                .value_violation(br#"[{"profile":{"apiToken":"x"}}]"#)
                .is_some()
        );
        assert!(
            rule()
                .value_violation(br#"{"name":"ada","bio":"my password is long"}"#)
                .is_none()
        );
        assert!(
            rule()
                .value_violation(b"password as plain bytes is not JSON")
                .is_none()
        );
    }

    #[test]
    fn refuses_what_looks_like_json_but_does_not_parse() {
        for value in [
            &b"{not json"[..],
            b"{\"name\":\"ada\"} trailing",
            b"[1,2",
            b" \xEF\xBB\xBF{}",
            b"\xEF\xBB\xBF\xEF\xBB\xBF[]",
            b"{\"bio\":\"\xFF\"}",
        ] {
            let reason = rule().value_violation(value);
            assert!(
                reason.is_some_and(|r| r.contains("not one JSON document")),
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn reads_past_a_byte_order_mark_and_any_depth() {
        let bom = b"\xEF\xBB\xBF \n{\"Password\":1}";
        assert!(rule().value_violation(bom).unwrap().contains("Password"));
        assert!(
            rule()
                .value_violation(b"\xEF\xBB\xBF{\"name\":1}")
                .is_none()
        );
        let deep = format!(
            "{}{{\"session\":1}}{}",
            "[".repeat(5_000),
            "]".repeat(5_000)
        );
        assert!(
            rule()
                .value_violation(deep.as_bytes())
                .unwrap()
                .contains("session")
        );
        let harmless = format!(
            "{}{}",
            r#"{"a":"#.repeat(5_000),
            "1".to_owned() + &"}".repeat(5_000)
        );
        assert!(rule().value_violation(harmless.as_bytes()).is_none());
    }

    #[test]
    fn leaves_values_that_do_not_look_like_json_alone() {
        for value in [&b""[..], b"   ", b"plain {\"password\":1}", b"\xFF[", b"42"] {
            assert!(rule().value_violation(value).is_none());
        }
    }
}
