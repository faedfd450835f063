//! The tokens file: `[[tokens]]` tables, each a caller with the SHA-256 of its token. A file is taken whole or
//! not at all: one that does not parse, fails a check, or holds no token is refused with the reason, so a file
//! caught half-written or emptied never locks callers out.

use super::caller::Caller;
use crate::keys::is_namespace;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// Token hash → caller.
pub(super) type TokenTable = HashMap<[u8; 32], Arc<Caller>>;

/// Why a tokens file was not taken. `reason` is the metric label, `detail` what the log says.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub(super) struct Refusal {
    /// `unreadable`, `invalid` or `empty`.
    pub(super) reason: &'static str,
    pub(super) detail: String,
}

impl Refusal {
    pub(super) fn unreadable(error: &std::io::Error) -> Refusal {
        Refusal {
            reason: "unreadable",
            detail: format!("cannot read it: {error}"),
        }
    }

    fn invalid(detail: String) -> Refusal {
        Refusal {
            reason: "invalid",
            detail,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<Caller>,
}

/// The table in `bytes` (a whole tokens file), or why it is refused.
pub(super) fn parse(bytes: &[u8]) -> Result<TokenTable, Refusal> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| Refusal::invalid(format!("not UTF-8: {e}")))?;
    let parsed: TokensFile = toml::from_str(text).map_err(|e| Refusal::invalid(e.to_string()))?;
    if parsed.tokens.is_empty() {
        // Never what an operator means: revoking every token is stopping the service, not editing a file.
        return Err(Refusal {
            reason: "empty",
            detail: "it holds no [[tokens]]".into(),
        });
    }
    let mut table = TokenTable::new();
    for caller in parsed.tokens {
        if !is_namespace(&caller.namespace) {
            return Err(Refusal::invalid(format!(
                "token {:?}: namespace must be 1–64 letters, digits, '_', '-' or '.'",
                caller.name
            )));
        }
        let digest = parse_sha256(&caller.sha256).ok_or_else(|| {
            Refusal::invalid(format!(
                "token {:?}: sha256 must be 64 hex digits (cachecoord hash-token prints it)",
                caller.name
            ))
        })?;
        if table.insert(digest, Arc::new(caller)).is_some() {
            return Err(Refusal::invalid("the same token hash appears twice".into()));
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

    #[test]
    fn hashes_round_trip_through_the_file_format() {
        let hash = hash_token("s3cret-token\n");
        assert_eq!(hash.len(), 64);
        assert_eq!(parse_sha256(&hash).map(|d| d.len()), Some(32));
        assert!(parse_sha256("zz").is_none());
    }

    #[test]
    fn refuses_files_that_would_lock_callers_out() {
        let token = |name: &str, sha: &str| {
            format!(
                "[[tokens]]\nname = {name:?}\nnamespace = \"ns\"\nsha256 = {sha:?}\nread = [\"*\"]\n"
            )
        };
        let good = token("a", &hash_token("a")) + &token("b", &hash_token("b"));
        assert_eq!(parse(good.as_bytes()).unwrap().len(), 2);
        let reason = |text: &str| parse(text.as_bytes()).unwrap_err().reason;
        assert_eq!(reason(""), "empty");
        assert_eq!(reason("# nothing here\n"), "empty");
        assert_eq!(reason(&good[..good.len() - 10]), "invalid", "cut short");
        assert_eq!(reason(&format!("{good}[[tokens]\n")), "invalid");
        assert_eq!(reason(&token("c", "abc")), "invalid");
        assert_eq!(
            reason(&(token("a", &hash_token("a")) + &token("b", &hash_token("a")))),
            "invalid"
        );
    }
}
