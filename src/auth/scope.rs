//! Scopes: which keys a token may read, write or invalidate.
//!
//! A scope is `*` (every key), a prefix ending in `*` (`invoice:*`, `user:12*`) or one exact key. That is the
//! Momento-style grammar, and it keeps "does this scope allow that pattern?" exact and cheap: every key a pattern
//! can match begins with the pattern's literal prefix (everything before its first wildcard), so a prefix scope
//! covers a pattern exactly when the pattern's literal prefix starts with the scope's prefix. An exact scope covers
//! only the identical wildcard-free pattern.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One scope entry, validated.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scope {
    /// Keys starting with this prefix (the empty prefix is `*`: every key).
    Prefix(String),
    /// This key only.
    Exact(String),
}

impl TryFrom<String> for Scope {
    type Error = String;

    fn try_from(raw: String) -> Result<Scope, String> {
        let body = raw.strip_suffix('*').unwrap_or(&raw);
        if body.contains(['*', '?', '[', ']', '{', '}', '\\', '|'])
            || body.contains(char::is_whitespace)
        {
            return Err(format!(
                "scope {raw:?}: a scope is *, a prefix ending in a single *, or an exact key"
            ));
        }
        Ok(if raw.ends_with('*') {
            Scope::Prefix(body.to_owned())
        } else {
            Scope::Exact(raw)
        })
    }
}

impl From<Scope> for String {
    fn from(scope: Scope) -> String {
        scope.to_string()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Prefix(prefix) => write!(f, "{prefix}*"),
            Scope::Exact(key) => f.write_str(key),
        }
    }
}

impl Scope {
    /// Whether `key` (without namespace) is in this scope.
    pub fn covers_key(&self, key: &str) -> bool {
        match self {
            Scope::Prefix(prefix) => key.starts_with(prefix.as_str()),
            Scope::Exact(exact) => key == exact,
        }
    }

    /// Whether every key `pattern` (Redis glob, `*` and `?`) can match is in this scope.
    pub fn covers_pattern(&self, pattern: &str) -> bool {
        let literal = &pattern[..pattern.find(['*', '?']).unwrap_or(pattern.len())];
        match self {
            Scope::Prefix(prefix) => literal.starts_with(prefix.as_str()),
            Scope::Exact(exact) => literal.len() == pattern.len() && pattern == exact,
        }
    }
}

/// Whether any of `scopes` covers `key`.
pub fn any_covers_key(scopes: &[Scope], key: &str) -> bool {
    scopes.iter().any(|scope| scope.covers_key(key))
}

/// Whether one of `scopes` covers every key of `pattern`. (A pattern straddling two scopes is refused: the
/// check stays sound, and callers can split such a pattern.)
pub fn any_covers_pattern(scopes: &[Scope], pattern: &str) -> bool {
    scopes.iter().any(|scope| scope.covers_pattern(pattern))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(raw: &str) -> Scope {
        Scope::try_from(raw.to_owned()).unwrap()
    }

    #[test]
    fn parses_the_three_forms_and_refuses_others() {
        assert_eq!(scope("*"), Scope::Prefix(String::new()));
        assert_eq!(scope("invoice:*"), Scope::Prefix("invoice:".into()));
        assert_eq!(scope("user:1"), Scope::Exact("user:1".into()));
        for bad in ["user:*:posts", "*:1", "user:?", "**", "a b*", "ns|user:*"] {
            assert!(Scope::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_scopes_cover_patterns_only_inside_them() {
        let invoices = scope("invoice:*");
        assert!(invoices.covers_pattern("invoice:*"));
        assert!(invoices.covers_pattern("invoice:12:*"));
        assert!(invoices.covers_pattern("invoice:1?"));
        assert!(
            !invoices.covers_pattern("invoice*"),
            "could match invoices:1"
        );
        assert!(!invoices.covers_pattern("inv*"));
        assert!(!invoices.covers_pattern("*"));
        assert!(invoices.covers_key("invoice:7"));
        assert!(!invoices.covers_key("invoices:7"));
        let one = scope("user:1");
        assert!(one.covers_pattern("user:1"));
        assert!(!one.covers_pattern("user:1*"));
        assert!(!one.covers_key("user:12"));
    }
}
