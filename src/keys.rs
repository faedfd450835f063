//! The key and pattern grammar: the vocabulary every layer shares.
//!
//! A key is `{entity}:{id}` or `{entity}:{id}:{field}` (more segments allowed): segments separated by `:`, at
//! least two, none empty, printable ASCII without whitespace, glob metacharacters, braces or backslashes. Keeping
//! glob metacharacters out of keys means a key can never be mistaken for a pattern, and keeping braces out means a
//! caller cannot pick a Redis Cluster hash tag and pile its keys onto one primary.
//!
//! A pattern is the same alphabet plus `*` (any run of characters, `:` included) and `?` (exactly one character),
//! matched exactly as Redis `SCAN MATCH` matches them, so the embedded store and Redis delete the same keys.
//!
//! Namespaces: when auth is on, each token belongs to a namespace, and the API qualifies every key and pattern as
//! `{namespace}|{key}` before the coordinator sees it. `|` is reserved in caller keys, so a caller cannot forge
//! another namespace's prefix, and the prefix sits inside the Redis hash tag (`{ns|user:1}`), so tenants never
//! share a stored key, a group index or a lease. Policies and loaders match the key without its namespace.

use crate::{Error, Result};
use std::fmt;

/// Characters that may never appear in a key: glob metacharacters, hash-tag braces and the glob escape.
const RESERVED: &[u8] = b"*?[]{}\\|";

/// Separates a namespace from the key it qualifies.
pub const NAMESPACE_SEPARATOR: char = '|';

/// A validated cache key.
/// Ordered by the raw key (the other fields follow from it): batches take leases in this order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    raw: String,
    /// Length of the `{namespace}|` prefix; 0 in the default namespace.
    ns_len: usize,
    entity_len: usize,
}

impl Key {
    /// Validates `raw` against the key grammar; `max_bytes` is the configured length limit.
    pub fn parse(raw: &str, max_bytes: usize) -> Result<Key> {
        let invalid = |reason: String| Error::InvalidKey {
            key: truncate_for_message(raw),
            reason,
        };
        let (ns_len, local) = split_namespace(raw).map_err(invalid)?;
        let raw_local = raw;
        let raw = local;
        if raw.is_empty() {
            return Err(invalid("the key is empty".into()));
        }
        if raw.len() > max_bytes {
            return Err(invalid(format!(
                "the key is {} bytes long; the limit is {max_bytes}",
                raw.len()
            )));
        }
        if let Some(c) = raw.chars().find(|&c| !is_key_char(c)) {
            return Err(invalid(format!(
                "character {c:?} is not allowed (printable ASCII only, no whitespace and none of * ? [ ] {{ }} \\)"
            )));
        }
        let segments: Vec<&str> = raw.split(':').collect();
        if segments.len() < 2 {
            return Err(invalid(
                "a key needs at least two segments, {entity}:{id}, e.g. user:123".into(),
            ));
        }
        if segments.iter().any(|s| s.is_empty()) {
            return Err(invalid("key segments between ':' must not be empty".into()));
        }
        Ok(Key {
            raw: raw_local.to_owned(),
            ns_len,
            entity_len: segments[0].len(),
        })
    }

    /// The whole key, namespace included: what the store holds.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The key as its caller wrote it, without the namespace: what policies and loaders see.
    pub fn local(&self) -> &str {
        &self.raw[self.ns_len..]
    }

    /// The namespace; empty for the default one.
    pub fn namespace(&self) -> &str {
        self.raw[..self.ns_len].trim_end_matches(NAMESPACE_SEPARATOR)
    }

    /// The first segment, which names the entity.
    pub fn entity(&self) -> &str {
        &self.local()[..self.entity_len]
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// A validated glob over keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    raw: String,
    /// Length of the `{namespace}|` prefix; 0 in the default namespace.
    ns_len: usize,
}

impl Pattern {
    /// Validates `raw` against the pattern grammar. Unless `allow_cross_entity` is set, the first segment must be
    /// a literal entity followed by `:`, which in particular refuses patterns such as `*` that match every key.
    pub fn parse(raw: &str, max_bytes: usize, allow_cross_entity: bool) -> Result<Pattern> {
        let invalid = |reason: String| Error::InvalidPattern {
            pattern: truncate_for_message(raw),
            reason,
        };
        let (ns_len, local) = split_namespace(raw).map_err(invalid)?;
        let raw_local = raw;
        let raw = local;
        if raw.is_empty() {
            return Err(invalid("the pattern is empty".into()));
        }
        if raw.len() > max_bytes {
            return Err(invalid(format!(
                "the pattern is {} bytes long; the limit is {max_bytes}",
                raw.len()
            )));
        }
        if let Some(c) = raw
            .chars()
            .find(|&c| !(is_key_char(c) || c == '*' || c == '?'))
        {
            return Err(invalid(format!(
                "character {c:?} is not allowed (only * and ? are wildcards; no whitespace, [ ] {{ }} or \\)"
            )));
        }
        let entity = raw.split(':').next().unwrap_or_default();
        let literal_entity = raw.contains(':') && !entity.is_empty() && !has_wildcard(entity);
        if !literal_entity && !allow_cross_entity {
            return Err(Error::PatternTooBroad {
                pattern: truncate_for_message(raw),
            });
        }
        Ok(Pattern {
            raw: raw_local.to_owned(),
            ns_len,
        })
    }

    /// A pattern that matches exactly one key.
    pub fn exact(key: &Key) -> Pattern {
        Pattern {
            raw: key.as_str().to_owned(),
            ns_len: key.ns_len,
        }
    }

    /// The pattern as its caller wrote it, without the namespace.
    pub fn local(&self) -> &str {
        &self.raw[self.ns_len..]
    }

    /// How many wildcards (`*`, `?`) the pattern holds: the server bounds it.
    pub fn wildcards(&self) -> usize {
        self.local().matches(['*', '?']).count()
    }

    /// The pattern as Redis `SCAN MATCH` takes it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// When every key this pattern can match shares its first two segments (`{entity}:{id}`, both literal, then
    /// `:` or the end), answers that group and the pattern for the rest of the key (which is empty or starts
    /// with `:`). `user:123:*` → (`user:123`, `:*`); `user:123` → (`user:123`, ``); `user:*:posts` → `None`.
    pub fn group_scope(&self) -> Option<(&str, &str)> {
        let first = self.raw.find(':')?;
        let second = self.raw[first + 1..]
            .find(':')
            .map_or(self.raw.len(), |i| first + 1 + i);
        let group = &self.raw[..second];
        let id = &group[first + 1..];
        (!id.is_empty() && !has_wildcard(group)).then(|| (group, &self.raw[second..]))
    }

    /// Whether `key` matches, with Redis glob semantics for `*` and `?`.
    pub fn matches(&self, key: &str) -> bool {
        glob_match(self.raw.as_bytes(), key.as_bytes())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Splits `ns|rest` into the prefix length and `rest`; a string without `|` is in the default namespace. A
/// namespace is a non-empty run of ASCII letters, digits, `_`, `-` and `.`.
fn split_namespace(raw: &str) -> Result<(usize, &str), String> {
    let Some((namespace, rest)) = raw.split_once(NAMESPACE_SEPARATOR) else {
        return Ok((0, raw));
    };
    if !is_namespace(namespace) {
        return Err(format!(
            "'{NAMESPACE_SEPARATOR}' is reserved (it separates a namespace from the key)"
        ));
    }
    Ok((namespace.len() + 1, rest))
}

/// Whether `name` can name a namespace.
pub fn is_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_graphic() && !RESERVED.contains(&(c as u8))
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// Iterative glob matching with single-star backtracking: linear in practice, and never recursive, so a hostile
/// pattern such as `a*a*a*a*…b` cannot blow the stack.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    backtrack = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Error messages echo the offending input, but never more than a screenful of it.
fn truncate_for_message(raw: &str) -> String {
    const SHOWN: usize = 80;
    match raw.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &raw[..cut]),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_common_key_forms() {
        for raw in ["user:123", "user:123:posts", "posts:page:1", "a:b:c:d:e"] {
            assert_eq!(Key::parse(raw, 512).unwrap().as_str(), raw);
        }
        assert_eq!(Key::parse("user:123:posts", 512).unwrap().entity(), "user");
    }

    #[test]
    fn rejects_keys_outside_the_grammar() {
        let long = format!("user:{}", "x".repeat(600));
        for raw in [
            "",
            "user",
            "user:",
            ":1",
            "user::1",
            "user:1 2",
            "user:1\n",
            "user:*",
            "user:{1}",
            "user:[1]",
            "user:1\\",
            "usér:1",
            "user:a|b",
            "|user:1",
            "a b|user:1",
            "ns|user:1|x",
            long.as_str(),
        ] {
            assert!(
                matches!(Key::parse(raw, 512), Err(Error::InvalidKey { .. })),
                "{raw:?} should be rejected"
            );
        }
    }

    #[test]
    fn a_namespace_prefix_qualifies_but_does_not_change_the_entity() {
        let key = Key::parse("billing|user:1:posts", 512).unwrap();
        assert_eq!(key.as_str(), "billing|user:1:posts");
        assert_eq!(key.local(), "user:1:posts");
        assert_eq!(key.namespace(), "billing");
        assert_eq!(key.entity(), "user");
        assert_eq!(Key::parse("user:1", 512).unwrap().namespace(), "");
        let pattern = Pattern::parse("billing|user:1:*", 512, false).unwrap();
        assert!(pattern.matches("billing|user:1:posts"));
        assert!(!pattern.matches("user:1:posts"));
        assert_eq!(pattern.local(), "user:1:*");
        assert_eq!(pattern.group_scope(), Some(("billing|user:1", ":*")));
        assert!(matches!(
            Pattern::parse("billing|*", 512, false),
            Err(Error::PatternTooBroad { .. })
        ));
    }

    #[test]
    fn patterns_need_a_literal_entity_unless_allowed() {
        for raw in ["*", "**", "*:*", "?ser:1", "user*", "user"] {
            assert!(
                matches!(
                    Pattern::parse(raw, 512, false),
                    Err(Error::PatternTooBroad { .. })
                ),
                "{raw:?} should be too broad"
            );
            assert!(Pattern::parse(raw, 512, true).is_ok());
        }
        assert!(Pattern::parse("user:*:posts", 512, false).is_ok());
        assert!(matches!(
            Pattern::parse("user:[12]", 512, true),
            Err(Error::InvalidPattern { .. })
        ));
    }

    #[test]
    fn group_scope_covers_patterns_with_a_literal_entity_and_id() {
        let scope = |s| {
            Pattern::parse(s, 512, true)
                .unwrap()
                .group_scope()
                .map(|(g, r)| (g.to_owned(), r.to_owned()))
        };
        assert_eq!(scope("user:123:*"), Some(("user:123".into(), ":*".into())));
        assert_eq!(scope("user:123"), Some(("user:123".into(), "".into())));
        assert_eq!(
            scope("posts:page:*"),
            Some(("posts:page".into(), ":*".into()))
        );
        assert_eq!(
            scope("user:123:po?ts"),
            Some(("user:123".into(), ":po?ts".into()))
        );
        for broad in ["user:*:posts", "user:12*", "user:*", "*", "user", "user:"] {
            assert_eq!(scope(broad), None, "{broad}");
        }
    }

    #[test]
    fn glob_matches_like_redis() {
        let p = |s| Pattern::parse(s, 512, true).unwrap();
        assert!(p("user:123:*").matches("user:123:posts"));
        assert!(p("user:123:*").matches("user:123:posts:1"));
        assert!(!p("user:123:*").matches("user:1234"));
        assert!(!p("user:123:*").matches("user:123"));
        assert!(p("user:*:posts").matches("user:9:posts"));
        assert!(p("user:*:posts").matches("user:9:x:posts"));
        assert!(!p("user:*:posts").matches("user:9:posts:1"));
        assert!(p("user:?").matches("user:7"));
        assert!(!p("user:?").matches("user:77"));
        assert!(p("*").matches("anything:at:all"));
        assert!(p("a*a*a*b").matches("aaaaaaaaaab"));
        assert!(!p(&format!("{}b", "a*".repeat(40))).matches(&"a".repeat(200)));
    }
}
