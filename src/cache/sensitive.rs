//! What must never be cached: keys with a segment (the entity included) that names a secret, and JSON values
//! with a field whose name does. Matching is by case-insensitive substring, on purpose conservative:
//! `user:1:password_hash` and `{"apiToken": …}` are refused too. A Set that violates the rule is refused with
//! SENSITIVE_DATA; a loader result that violates it is served to its caller but never written to the cache.

use crate::keys::Key;

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

    /// Why `value` may not be cached, if it is JSON holding a field named by the deny-list.
    pub(crate) fn value_violation(&self, value: &[u8]) -> Option<String> {
        let first = value.iter().find(|b| !b.is_ascii_whitespace())?;
        if *first != b'{' && *first != b'[' {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(value).ok()?;
        self.field_violation(&json)
    }

    fn field_violation(&self, json: &serde_json::Value) -> Option<String> {
        match json {
            serde_json::Value::Object(fields) => fields.iter().find_map(|(name, inner)| {
                self.denied(name)
                    .map(|word| format!("JSON field {name:?} names {word:?}"))
                    .or_else(|| self.field_violation(inner))
            }),
            serde_json::Value::Array(items) => {
                items.iter().find_map(|item| self.field_violation(item))
            }
            _ => None,
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
        assert!(rule().value_violation(b"{not json").is_none());
    }
}
