//! The one redaction rule: how a key, and an error that may quote it, appear wherever an operator can read them
//! (logs, spans). A key of a `sensitive = true` policy appears as its policy's name and a short keyed hash of the
//! key as the caller named it (`patient#3fa2c1b0d9e4`), never as itself; other keys appear as they are. Values
//! never appear at all, and callers never see an upstream error's text (`api::status` answers LOADER_FAILED with
//! a fixed message), so keys are the only thing to take out.
//!
//! The hash is keyed with a secret drawn at start-up: ids are short and guessable (`patient:4711`), and a plain
//! hash of one is reversed by trying them all. The price is that one key's hash differs between replicas and
//! restarts; within a replica it is stable, so its log lines and spans about one key can be followed.

use super::policy::Policy;
use crate::keys::Key;
use sha2::{Digest, Sha256};

/// Hex digits of the hash shown: 48 bits, enough to tell keys apart in a replica's logs, too few to be a lookup
/// table for anyone who learns the secret.
const SHOWN_HEX: usize = 12;

/// The rule, with this process's secret.
pub(crate) struct Redaction {
    secret: [u8; 32],
}

impl Redaction {
    /// A rule with a fresh random secret.
    pub(crate) fn new() -> Redaction {
        Redaction {
            secret: rand::random(),
        }
    }

    /// A key as logs and spans show it under `policy`: `plain` when the policy is not sensitive, else the hash
    /// of `local`, the key without its namespace (as the caller named it), so the API's span and the
    /// coordinator's log lines show one key alike.
    pub(crate) fn key(&self, policy: &Policy, local: &str, plain: &str) -> String {
        if !policy.sensitive {
            return plain.to_owned();
        }
        // SHA-256 over secret ‖ key is a fine keyed hash here: length extension only forges hashes of longer
        // inputs, and nothing checks these.
        let digest = Sha256::new()
            .chain_update(self.secret)
            .chain_update(local.as_bytes())
            .finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}#{}", policy.name, &hex[..SHOWN_HEX])
    }

    /// `text` (an error message that may quote `key`, as cachecoord's errors and some upstreams do) with the key,
    /// qualified or not, replaced by how logs show it.
    pub(crate) fn scrub(&self, policy: &Policy, key: &Key, text: String) -> String {
        if !policy.sensitive {
            return text;
        }
        let shown = self.key(policy, key.local(), key.as_str());
        // The qualified form first: it contains the local one.
        text.replace(key.as_str(), &shown)
            .replace(key.local(), &shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Policies;
    use crate::config::Config;
    use crate::config::PolicyConfig;
    use std::time::Duration;

    fn policies() -> Policies {
        let mut config = Config::default();
        let mut patient = PolicyConfig::new("patient", "patient:*", Duration::from_secs(60));
        patient.sensitive = true;
        config.policies = vec![patient];
        Policies::from_config(&config).unwrap()
    }

    #[test]
    fn sensitive_keys_show_as_entity_and_keyed_hash() {
        let (rule, policies) = (Redaction::new(), policies());
        let key = Key::parse("team-a|patient:4711:hiv-status", 512).unwrap();
        let policy = policies.for_key(&key);
        let shown = rule.key(policy, key.local(), key.as_str());
        assert!(shown.starts_with("patient#") && shown.len() == "patient#".len() + SHOWN_HEX);
        assert_eq!(
            shown,
            rule.key(policy, "patient:4711:hiv-status", "anything"),
            "stable"
        );
        assert_ne!(
            shown,
            Redaction::new().key(policy, key.local(), key.as_str()),
            "keyed"
        );
        let text = format!(
            "loading {:?} failed: no row for {}",
            key.as_str(),
            key.local()
        );
        let scrubbed = rule.scrub(policy, &key, text);
        assert!(!scrubbed.contains("hiv-status"), "{scrubbed}");
        assert!(scrubbed.contains("no row for patient#"));

        let plain = Key::parse("user:1", 512).unwrap();
        let policy = policies.for_key(&plain);
        assert_eq!(rule.key(policy, plain.local(), plain.as_str()), "user:1");
        assert_eq!(rule.scrub(policy, &plain, "user:1".into()), "user:1");
    }
}
