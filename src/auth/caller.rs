//! An authenticated caller: what its token may touch, and the namespace its keys live in.

use super::scope::{Scope, any_covers_key, any_covers_pattern};
use crate::keys::NAMESPACE_SEPARATOR;
use crate::{Error, Result};
use serde::Deserialize;

/// What a call does to the keys it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Get, BatchGet (and the loads they trigger).
    Read,
    /// Set, BatchSet.
    Write,
    /// Invalidate, InvalidatePattern.
    Invalidate,
}

impl Action {
    fn label(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Invalidate => "invalidate",
        }
    }
}

/// An authenticated caller: the token's name, namespace and scopes.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caller {
    /// Names the token in logs and errors; never the token itself.
    pub name: String,
    /// The tenant. Empty only for the anonymous caller of an auth-off server.
    pub namespace: String,
    /// Lowercase hex SHA-256 of the token (`cachecoord hash-token` prints it).
    #[serde(default)]
    pub(super) sha256: String,
    /// Scopes Get and BatchGet may touch.
    #[serde(default)]
    read: Vec<Scope>,
    /// Scopes Set and BatchSet may touch.
    #[serde(default)]
    write: Vec<Scope>,
    /// Scopes Invalidate and InvalidatePattern may touch.
    #[serde(default)]
    invalidate: Vec<Scope>,
}

impl Caller {
    /// Everyone, when auth is off.
    pub(super) fn anonymous() -> Caller {
        let all = || vec![Scope::Prefix(String::new())];
        Caller {
            name: "anonymous".into(),
            namespace: String::new(),
            sha256: String::new(),
            read: all(),
            write: all(),
            invalidate: all(),
        }
    }

    fn scopes(&self, action: Action) -> &[Scope] {
        match action {
            Action::Read => &self.read,
            Action::Write => &self.write,
            Action::Invalidate => &self.invalidate,
        }
    }

    /// Checks `key` against the scopes for `action` and qualifies it with the namespace: the key the coordinator
    /// works with. `|` is refused here, so no caller can name another namespace's key.
    pub fn key(&self, action: Action, raw: &str) -> Result<String> {
        if raw.contains(NAMESPACE_SEPARATOR) {
            return Err(Error::InvalidKey {
                key: raw.chars().take(80).collect(),
                reason: format!(
                    "'{NAMESPACE_SEPARATOR}' is reserved (it separates a namespace from the key)"
                ),
            });
        }
        if !any_covers_key(self.scopes(action), raw) {
            return Err(self.denied(action, raw));
        }
        Ok(self.qualify(raw))
    }

    /// [`Caller::key`] for every key of a batch: all are checked before any is touched.
    pub fn keys(&self, action: Action, raw: &[String]) -> Result<Vec<String>> {
        raw.iter().map(|key| self.key(action, key)).collect()
    }

    /// Checks that every key `pattern` could match is in the invalidate scopes, and qualifies it.
    pub fn pattern(&self, raw: &str) -> Result<String> {
        if raw.contains(NAMESPACE_SEPARATOR) {
            return Err(Error::InvalidPattern {
                pattern: raw.chars().take(80).collect(),
                reason: format!(
                    "'{NAMESPACE_SEPARATOR}' is reserved (it separates a namespace from the key)"
                ),
            });
        }
        if !any_covers_pattern(&self.invalidate, raw) {
            return Err(self.denied(Action::Invalidate, raw));
        }
        Ok(self.qualify(raw))
    }

    /// The key as this caller named it, for answers that echo stored keys.
    pub fn unqualify<'k>(&self, stored: &'k str) -> &'k str {
        if self.namespace.is_empty() {
            return stored;
        }
        stored
            .strip_prefix(self.namespace.as_str())
            .and_then(|rest| rest.strip_prefix(NAMESPACE_SEPARATOR))
            .unwrap_or(stored)
    }

    fn qualify(&self, raw: &str) -> String {
        if self.namespace.is_empty() {
            raw.to_owned()
        } else {
            format!("{}{NAMESPACE_SEPARATOR}{raw}", self.namespace)
        }
    }

    fn denied(&self, action: Action, target: &str) -> Error {
        Error::PermissionDenied {
            token: self.name.clone(),
            action: action.label(),
            target: target.chars().take(80).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(read: &[&str]) -> Caller {
        let scopes = |raw: &[&str]| {
            raw.iter()
                .map(|s| Scope::try_from((*s).to_owned()).unwrap())
                .collect()
        };
        Caller {
            name: "t".into(),
            namespace: "billing".into(),
            sha256: String::new(),
            read: scopes(read),
            write: Vec::new(),
            invalidate: scopes(&["invoice:*"]),
        }
    }

    #[test]
    fn qualifies_in_scope_keys_and_refuses_the_rest() {
        let c = caller(&["invoice:*", "user:1"]);
        assert_eq!(
            c.key(Action::Read, "invoice:9").unwrap(),
            "billing|invoice:9"
        );
        assert_eq!(c.key(Action::Read, "user:1").unwrap(), "billing|user:1");
        assert!(matches!(
            c.key(Action::Read, "user:2"),
            Err(Error::PermissionDenied { .. })
        ));
        assert!(matches!(
            c.key(Action::Write, "invoice:9"),
            Err(Error::PermissionDenied { .. })
        ));
        assert!(matches!(
            c.key(Action::Read, "x|invoice:9"),
            Err(Error::InvalidKey { .. })
        ));
        assert_eq!(c.pattern("invoice:9:*").unwrap(), "billing|invoice:9:*");
        assert!(matches!(
            c.pattern("invoice*"),
            Err(Error::PermissionDenied { .. })
        ));
        assert_eq!(c.unqualify("billing|invoice:9"), "invoice:9");
    }
}
