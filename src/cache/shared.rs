//! What every coordinator operation shares: the store, the loaders, the policies and limits, the flights in this
//! replica, the near-cache, the counters, and the envelope's way in and out of the store (sealing when a policy
//! says `encrypt`). Held behind an `Arc` so background loads can own it; the operations themselves live in their
//! own files and take it as an argument.

use super::encryption::Keyring;
use super::entry::{Entry, Envelope};
use super::fill_watch::FillWatches;
use super::near::NearCache;
use super::pattern_runs::PatternRuns;
use super::policy::Policies;
use super::redact::Redaction;
use super::sampler::Sampler;
use super::sensitive::SensitiveData;
use super::singleflight::Flights;
use super::stats::Stats;
use super::types::Source;
use crate::config::{Config, InvalidationConfig, LimitsConfig, ReadThroughConfig};
use crate::keys::Key;
use crate::loader::Loaders;
use crate::store::Store;
use crate::{Error, Result, StartupError};
use bytes::Bytes;
use std::sync::Arc;

/// Everything the coordinator's operations share.
pub(super) struct Core {
    pub(super) store: Arc<dyn Store>,
    pub(super) loaders: Loaders,
    pub(super) policies: Policies,
    pub(super) limits: LimitsConfig,
    pub(super) invalidation: InvalidationConfig,
    pub(super) read_through: ReadThroughConfig,
    pub(super) flights: Flights,
    /// Callers waiting here for other callers' fills, one watcher per key.
    pub(super) fill_watches: FillWatches,
    /// Pattern invalidations running here, one per pattern.
    pub(super) pattern_runs: PatternRuns,
    /// The near-cache, when `near_cache.max_bytes` is set.
    pub(super) near: Option<Arc<NearCache>>,
    pub(super) stats: Stats,
    /// The staleness sampler's budget (rate and concurrency of its checks).
    pub(super) sampler: Sampler,
    pub(super) sensitive: SensitiveData,
    /// How keys of sensitive policies appear in logs and spans.
    pub(super) redaction: Redaction,
    /// Keys for `encrypt = true` entities, when configured.
    keyring: Option<Keyring>,
}

impl Core {
    /// The shared state of a coordinator over `store` and `loaders`, configured by `config`.
    pub(super) fn new(
        store: Arc<dyn Store>,
        loaders: Loaders,
        config: &Config,
    ) -> Result<Core, StartupError> {
        let keyring = match (&config.encryption.keys_dir, &config.encryption.active_key) {
            (Some(dir), Some(active)) => Some(
                Keyring::from_dir(dir, active)
                    .map_err(|e| StartupError::unusable("encryption keys", e))?,
            ),
            _ => None,
        };
        let policies =
            Policies::from_config(config).map_err(|e| StartupError::unusable("policies", e))?;
        let strict = policies.any_strict();
        Ok(Core {
            store,
            loaders,
            policies,
            limits: config.limits.clone(),
            invalidation: config.invalidation.clone(),
            read_through: config.read_through.clone(),
            flights: Flights::default(),
            fill_watches: FillWatches::default(),
            pattern_runs: PatternRuns::default(),
            near: (config.near_cache.max_bytes > 0)
                .then(|| Arc::new(NearCache::new(&config.near_cache, strict))),
            stats: Stats::default(),
            sampler: Sampler::new(&config.staleness_sampler),
            sensitive: SensitiveData::new(&config.sensitive_data.deny),
            redaction: Redaction::new(),
            keyring,
        })
    }

    /// The bytes to store for `entry` under `key`: sealed when the key's policy says `encrypt` (negative entries
    /// too), binding the envelope header and the key.
    pub(super) fn encode(&self, key: &Key, entry: Entry) -> Bytes {
        match &self.keyring {
            Some(keyring) if self.policies.for_key(key).encrypt => {
                entry.seal(|header, plaintext| keyring.seal(key.as_str(), header, plaintext))
            }
            _ => entry.encode(),
        }
    }

    /// The entry stored under `key`, opened if sealed; `None` for bytes that are not an entry or do not open
    /// (a retired key, tampering with the value or the header), which then read as a miss.
    pub(super) fn decode(&self, key: &Key, stored: Bytes) -> Option<Entry> {
        match Envelope::parse(stored)? {
            Envelope::Plain(entry) if !self.policies.for_key(key).encrypt => Some(entry),
            Envelope::Plain(_) => {
                // Plaintext where only sealed envelopes are written: planted, or from before `encrypt` was on.
                metrics::counter!("cachecoord_undecryptable_entries_total").increment(1);
                None
            }
            Envelope::Sealed(sealed) => {
                let opened = self.keyring.as_ref().and_then(|keyring| {
                    sealed.open(|header, value| keyring.open(key.as_str(), header, value))
                });
                if opened.is_none() {
                    tracing::warn!(entity = %self.policies.for_key(key).name, "entry does not decrypt; read as a miss");
                    metrics::counter!("cachecoord_undecryptable_entries_total").increment(1);
                }
                opened
            }
        }
    }

    /// The decoded entry in `stored` if it is still fresh.
    pub(super) fn fresh(&self, key: &Key, stored: Option<Bytes>) -> Option<Entry> {
        stored
            .and_then(|b| self.decode(key, b))
            .filter(|entry| entry.stale_for().is_none())
    }

    /// The key's entry if the store holds a fresh one (errors count as none).
    pub(super) async fn fresh_entry(&self, key: &Key) -> Option<Entry> {
        self.fresh_entries(std::slice::from_ref(key))
            .await
            .pop()
            .flatten()
    }

    /// Each key's entry if the store holds a fresh one, in order, read in one batch (errors count as none).
    pub(super) async fn fresh_entries(&self, keys: &[Key]) -> Vec<Option<Entry>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let Ok(stored) = self.store.get_many(keys).await else {
            return vec![None; keys.len()];
        };
        keys.iter()
            .zip(stored)
            .map(|(key, bytes)| self.fresh(key, bytes))
            .collect()
    }

    /// The key's entry as the store holds it now, fresh or expired (errors count as none).
    pub(super) async fn stored_entry(&self, key: &Key) -> Option<Entry> {
        let mut stored = self.store.get_many(std::slice::from_ref(key)).await.ok()?;
        stored.pop().flatten().and_then(|b| self.decode(key, b))
    }

    /// `key` as logs and spans may show it (see `redact`).
    pub(super) fn shown(&self, key: &Key) -> String {
        self.redaction
            .key(self.policies.for_key(key), key.local(), key.as_str())
    }

    /// `error`'s text for logs, with every one of `keys` it may quote shown as [`Core::shown`] shows it. The
    /// operator keeps the upstream detail; a sensitive key does not reach the log through it.
    pub(super) fn shown_error(&self, error: &Error, keys: &[Key]) -> String {
        keys.iter().fold(error.to_string(), |text, key| {
            self.redaction.scrub(self.policies.for_key(key), key, text)
        })
    }

    /// Counts one answer under the entity (policy) of `key`.
    pub(super) fn count(&self, key: &Key, source: Source) {
        self.stats.record(&self.policies.for_key(key).name, source);
    }

    pub(super) fn parse_key(&self, raw: &str) -> Result<Key> {
        Key::parse(raw, self.limits.max_key_bytes)
    }

    pub(super) fn check_batch(&self, what: &'static str, count: usize) -> Result<()> {
        if count == 0 {
            return Err(Error::EmptyRequest { what });
        }
        if count > self.limits.max_batch_keys {
            return Err(Error::BatchTooLarge {
                what,
                count,
                max: self.limits.max_batch_keys,
            });
        }
        Ok(())
    }
}
