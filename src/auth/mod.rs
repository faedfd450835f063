//! Who may call, and what they may touch.
//!
//! Callers send `authorization: Bearer <token>`. The server keeps only SHA-256 hashes of tokens, in a TOML file
//! (a mounted Kubernetes Secret in production) that it re-reads when its contents change, so tokens are added and
//! revoked without a restart; a file that cannot be read or used is refused and the last good tokens stay in
//! force (`reload`). Each token has a name (for logs), a namespace (its tenant: keys of different namespaces are
//! different entries) and scopes for reading, writing and invalidating. With auth off (the local default) every
//! caller is the anonymous caller: default namespace, every scope.
//!
//! - `caller`: [`Caller`] and [`Action`]: scope checks and namespacing of keys.
//! - `tokens_file`: the file format, taken whole or refused.
//! - `reload`: the tokens in force and the watch that reloads them.
//! - `scope`: the scope grammar.

mod caller;
mod reload;
pub mod scope;
mod tokens_file;

pub use caller::{Action, Caller};
pub use tokens_file::hash_token;

use crate::{Error, Result};
use reload::LiveTokens;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Turns a call's metadata into a [`Caller`].
pub struct Authenticator {
    /// `None` when auth is off.
    tokens: Option<LiveTokens>,
    anonymous: Arc<Caller>,
}

impl Authenticator {
    /// Auth off: every call is the anonymous caller.
    pub fn disabled() -> Authenticator {
        Authenticator {
            tokens: None,
            anonymous: Arc::new(Caller::anonymous()),
        }
    }

    /// Auth on, with the tokens in `file`. A file that a reload would refuse (unreadable, invalid, no tokens)
    /// cannot start the server either.
    pub fn from_file(file: &Path) -> anyhow::Result<Authenticator> {
        let tokens = LiveTokens::open(file)
            .map_err(|e| anyhow::anyhow!("tokens file {}: {e}", file.display()))?;
        Ok(Authenticator {
            tokens: Some(tokens),
            anonymous: Arc::new(Caller::anonymous()),
        })
    }

    /// Whether calls need a token.
    pub fn is_enabled(&self) -> bool {
        self.tokens.is_some()
    }

    /// The caller behind a call's `headers`: UNAUTHENTICATED without a known bearer token when auth is on.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Arc<Caller>> {
        let Some(tokens) = &self.tokens else {
            return Ok(self.anonymous.clone());
        };
        let header = headers.get("authorization").ok_or(Error::Unauthenticated {
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
        tokens.caller(&digest).ok_or(Error::Unauthenticated {
            reason: "unknown token",
        })
    }

    /// Re-reads the tokens file every `every` until `stop` (see `reload`); returns at once when auth is off.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: watch::Receiver<bool>) {
        if let Some(tokens) = &self.tokens {
            tokens.watch(every, stop).await;
        }
    }
}
