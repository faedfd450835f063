//! Who may call, and what they may touch.
//!
//! Callers send `authorization: Bearer <token>`. The server keeps only SHA-256 hashes of tokens, in a TOML file
//! (a mounted Kubernetes Secret in production) that it re-reads when it changes, so tokens are added and revoked
//! without a restart. Each token has a name (for logs), a namespace (its tenant: keys of different namespaces are
//! different entries) and scopes for reading, writing and invalidating. With auth off (the local default) every
//! caller is the anonymous caller: default namespace, every scope.

pub mod scope;

use crate::keys::{NAMESPACE_SEPARATOR, is_namespace};
use crate::{Error, Result};
use scope::{Scope, any_covers_key, any_covers_pattern};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caller {
    /// Names the token in logs and errors; never the token itself.
    pub name: String,
    /// The tenant. Empty only for the anonymous caller of an auth-off server.
    pub namespace: String,
    /// Lowercase hex SHA-256 of the token (`cachecoord hash-token` prints it).
    #[serde(default)]
    sha256: String,
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
    fn anonymous() -> Caller {
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

/// The tokens file: `[[tokens]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<Caller>,
}

/// Token hash → caller.
type TokenTable = HashMap<[u8; 32], Arc<Caller>>;

/// Turns a call's metadata into a [`Caller`].
pub struct Authenticator {
    /// `None` when auth is off.
    tokens: Option<RwLock<Arc<TokenTable>>>,
    file: Option<PathBuf>,
    anonymous: Arc<Caller>,
}

impl Authenticator {
    /// Auth off: every call is the anonymous caller.
    pub fn disabled() -> Authenticator {
        Authenticator {
            tokens: None,
            file: None,
            anonymous: Arc::new(Caller::anonymous()),
        }
    }

    /// Auth on, with the tokens in `file`.
    pub fn from_file(file: &Path) -> anyhow::Result<Authenticator> {
        let table = read_tokens(file)?;
        Ok(Authenticator {
            tokens: Some(RwLock::new(Arc::new(table))),
            file: Some(file.to_owned()),
            anonymous: Arc::new(Caller::anonymous()),
        })
    }

    /// The caller behind `metadata`: UNAUTHENTICATED without a known bearer token when auth is on.
    pub fn authenticate(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Arc<Caller>> {
        let Some(tokens) = &self.tokens else {
            return Ok(self.anonymous.clone());
        };
        let header = metadata
            .get("authorization")
            .ok_or(Error::Unauthenticated {
                reason: "no bearer token",
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or(Error::Unauthenticated {
                reason: "the authorization header is not `Bearer <token>`",
            })?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let table = tokens.read().unwrap_or_else(|e| e.into_inner()).clone();
        table.get(&digest).cloned().ok_or(Error::Unauthenticated {
            reason: "unknown token",
        })
    }

    /// Re-reads the tokens file whenever its modification time changes, until `stop`. A file that no longer
    /// parses is logged and ignored: the previous tokens stay in force.
    pub async fn watch(self: Arc<Self>, every: Duration, mut stop: watch::Receiver<bool>) {
        let (Some(tokens), Some(file)) = (&self.tokens, &self.file) else {
            return;
        };
        let modified = |file: &Path| std::fs::metadata(file).and_then(|m| m.modified()).ok();
        let mut seen: Option<SystemTime> = modified(file);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(every) => {}
            }
            let now = modified(file);
            if now == seen {
                continue;
            }
            seen = now;
            match read_tokens(file) {
                Ok(table) => {
                    tracing::info!(tokens = table.len(), file = %file.display(), "tokens reloaded");
                    *tokens.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
                }
                Err(error) => {
                    tracing::error!(%error, file = %file.display(), "tokens file not reloaded; the previous tokens stay in force")
                }
            }
        }
    }
}

/// Reads and validates a tokens file.
fn read_tokens(file: &Path) -> anyhow::Result<TokenTable> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read tokens file {}: {e}", file.display()))?;
    let parsed: TokensFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("tokens file {}: {e}", file.display()))?;
    let mut table = TokenTable::new();
    for caller in parsed.tokens {
        if !is_namespace(&caller.namespace) {
            anyhow::bail!(
                "token {:?}: namespace must be 1–64 letters, digits, '_', '-' or '.'",
                caller.name
            );
        }
        let digest = parse_sha256(&caller.sha256).ok_or_else(|| {
            anyhow::anyhow!(
                "token {:?}: sha256 must be 64 hex digits (cachecoord hash-token prints it)",
                caller.name
            )
        })?;
        if table.insert(digest, Arc::new(caller)).is_some() {
            anyhow::bail!("the same token hash appears twice");
        }
    }
    Ok(table)
}

/// The lowercase hex SHA-256 of `token`, as the tokens file stores it.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
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

    #[test]
    fn hashes_round_trip_through_the_file_format() {
        let hash = hash_token("s3cret-token\n");
        assert_eq!(hash.len(), 64);
        assert_eq!(parse_sha256(&hash).map(|d| d.len()), Some(32));
        assert!(parse_sha256("zz").is_none());
    }
}
