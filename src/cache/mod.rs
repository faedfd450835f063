//! The coordinator: cache-aside semantics on top of any [`Store`] and [`Loader`], independent of gRPC and of the
//! backend.
//!
//! It validates keys and patterns against the grammar and limits, picks each key's TTL from its policy, wraps
//! values in the entry envelope, and answers misses as data. When a key's entity has a loader, a miss is filled
//! through it (`read_through`): one load per key per replica (singleflight), one per key across replicas (store
//! lease), never a stale write-back (fills are lease-checked), early refresh (XFetch) and stale windows, and a
//! fallback straight to the loader when the store is down (Redis nodes have circuit breakers). It names no tonic, proto or fred type.
//!
//! [`Loader`]: crate::loader::Loader

mod encryption;
mod entry;
mod near;
mod policy;
mod read_through;
mod sensitive;
mod stats;

pub use entry::Entry;
pub use policy::{Policies, Policy};
pub use stats::EntityStats;

use crate::config::{Config, InvalidationConfig, LimitsConfig, ReadThroughConfig};
use crate::keys::{Key, Pattern};
use crate::loader::Loaders;
use crate::store::{Notice, Store, StoreWrite};
use crate::{Error, Result};
use bytes::Bytes;
use encryption::Keyring;
use near::NearCache;
use read_through::Flights;
use sensitive::SensitiveData;
use stats::Stats;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The value was in the cache.
    Hit,
    /// The key was not in the cache and nothing loaded it.
    Miss,
    /// This call loaded the value through the entity's loader.
    Loaded,
    /// This call waited for a load someone else started.
    Coalesced,
    /// A value past its TTL, inside a stale window, was served.
    Stale,
    /// The store was unavailable; the value came straight from the loader.
    Fallback,
    /// The cache remembers that the loader found nothing.
    Negative,
    /// The value came from this replica's near-cache.
    NearHit,
}

/// The answer for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// The value, when found.
    pub value: Option<Bytes>,
    /// Where the answer came from.
    pub source: Source,
    /// How long the value stays fresh, when found.
    pub ttl_remaining: Option<Duration>,
}

impl Lookup {
    fn miss() -> Lookup {
        Lookup {
            value: None,
            source: Source::Miss,
            ttl_remaining: None,
        }
    }

    fn from_entry(entry: &Entry, source: Source) -> Lookup {
        Lookup {
            value: entry.value.clone(),
            source,
            ttl_remaining: entry.ttl_remaining(),
        }
    }
}

/// How a read may be answered.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadOptions {
    /// Answer from the cache only: never call a loader.
    pub cache_only: bool,
}

/// One write as the caller asked for it, before validation.
#[derive(Clone, Debug)]
pub struct SetCommand {
    /// Key to write.
    pub key: String,
    /// Value to store.
    pub value: Bytes,
    /// TTL requested by the caller; `None` lets the entity policy decide.
    pub ttl: Option<Duration>,
    /// Version of the value; a write older than the stored entry's version is refused.
    pub version: Option<u64>,
}

/// What a BatchSet did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchSetOutcome {
    /// Entries written.
    pub written: u64,
    /// Keys whose versioned write was refused because a newer version is stored.
    pub stale_keys: Vec<String>,
}

/// Everything the coordinator's operations share; held behind an `Arc` so background loads can own it.
struct Core {
    store: Arc<dyn Store>,
    loaders: Loaders,
    policies: Policies,
    limits: LimitsConfig,
    invalidation: InvalidationConfig,
    read_through: ReadThroughConfig,
    flights: Flights,
    /// The near-cache, when `near_cache.max_bytes` is set.
    near: Option<Arc<NearCache>>,
    stats: Stats,
    sensitive: SensitiveData,
    /// Keys for `encrypt = true` entities, when configured.
    keyring: Option<Keyring>,
}

/// Cache-aside coordination over one store and its loaders.
pub struct Coordinator {
    core: Arc<Core>,
}

impl Coordinator {
    /// A coordinator over `store` and `loaders`, configured by `config`.
    pub fn new(store: Arc<dyn Store>, loaders: Loaders, config: &Config) -> Result<Coordinator> {
        let rt = &config.read_through;
        let keyring = match (&config.encryption.keys_dir, &config.encryption.active_key) {
            (Some(dir), Some(active)) => {
                Some(Keyring::from_dir(dir, active).map_err(|e| Error::Backend {
                    source: format!("encryption keys: {e:#}").into(),
                })?)
            }
            _ => None,
        };
        Ok(Coordinator {
            core: Arc::new(Core {
                store,
                loaders,
                policies: Policies::from_config(config)?,
                limits: config.limits.clone(),
                invalidation: config.invalidation.clone(),
                read_through: rt.clone(),
                flights: Flights::default(),
                near: (config.near_cache.max_bytes > 0)
                    .then(|| Arc::new(NearCache::new(&config.near_cache))),
                stats: Stats::default(),
                sensitive: SensitiveData::new(&config.sensitive_data.deny),
                keyring,
            }),
        })
    }

    /// Background work the coordinator needs while serving (the near-cache's notices and heartbeats); runs
    /// until `stop` turns true. `None` when there is none.
    pub fn background(
        &self,
        stop: watch::Receiver<bool>,
    ) -> Option<impl Future<Output = ()> + use<>> {
        let near = self.core.near.clone()?;
        Some(near.run(self.core.store.clone(), stop))
    }

    /// Answers per entity and source since start-up, sorted by entity.
    pub fn stats(&self) -> Vec<EntityStats> {
        self.core.stats.snapshot()
    }

    /// The policy table, for callers that report per-entity figures.
    pub fn policies(&self) -> &Policies {
        &self.core.policies
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> Result<()> {
        self.core.store.ping().await
    }

    /// Reads one key, loading it on a miss when its entity has a loader.
    pub async fn get(&self, key: &str, options: ReadOptions) -> Result<Lookup> {
        let key = self.core.parse_key(key)?;
        let mut answers = self.core.clone().read(vec![key.clone()], options).await?;
        let lookup = answers.pop().unwrap_or_else(Lookup::miss);
        self.core.count(&key, lookup.source);
        Ok(lookup)
    }

    /// Reads many keys; one answer per requested key, in request order. Duplicates are read once and answered
    /// identically. Misses are loaded per loader in one batch call.
    pub async fn batch_get(&self, keys: &[String], options: ReadOptions) -> Result<Vec<Lookup>> {
        self.core.check_batch("keys", keys.len())?;
        let mut distinct: Vec<Key> = Vec::with_capacity(keys.len());
        let mut index_of: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
        let mut positions = Vec::with_capacity(keys.len());
        for raw in keys {
            let index = match index_of.get(raw.as_str()) {
                Some(&index) => index,
                None => {
                    distinct.push(self.core.parse_key(raw)?);
                    index_of.insert(raw, distinct.len() - 1);
                    distinct.len() - 1
                }
            };
            positions.push(index);
        }
        let lookups = self.core.clone().read(distinct.clone(), options).await?;
        for &i in &positions {
            self.core.count(&distinct[i], lookups[i].source);
        }
        Ok(positions.into_iter().map(|i| lookups[i].clone()).collect())
    }

    /// Writes one key (voiding any load in flight for it); answers the TTL applied.
    pub async fn set(&self, command: SetCommand) -> Result<Duration> {
        let version = command.version;
        let write = self.core.prepare_write(command)?;
        let applied = self.core.store.set_many(std::slice::from_ref(&write)).await;
        let keys = std::slice::from_ref(&write.key);
        self.core.announce(keys, applied.is_ok()).await?;
        let applied = applied?;
        if applied.first() == Some(&false) {
            return Err(Error::StaleVersion {
                key: write.key.to_string(),
                version: version.unwrap_or(0),
            });
        }
        Ok(write.ttl)
    }

    /// Writes many keys. Every entry is validated before anything is written, so a bad entry writes nothing.
    pub async fn batch_set(&self, commands: Vec<SetCommand>) -> Result<BatchSetOutcome> {
        self.core.check_batch("entries", commands.len())?;
        let writes = commands
            .into_iter()
            .map(|command| self.core.prepare_write(command))
            .collect::<Result<Vec<_>>>()?;
        let applied = self.core.store.set_many(&writes).await;
        let keys: Vec<Key> = writes.iter().map(|w| w.key.clone()).collect();
        self.core.announce(&keys, applied.is_ok()).await?;
        let applied = applied?;
        let mut outcome = BatchSetOutcome::default();
        for (write, applied) in writes.iter().zip(applied) {
            if applied {
                outcome.written += 1;
            } else {
                outcome.stale_keys.push(write.key.to_string());
            }
        }
        Ok(outcome)
    }

    /// Deletes `keys` and voids their loads in flight; answers how many existed.
    pub async fn invalidate(&self, keys: &[String]) -> Result<u64> {
        self.core.check_batch("keys", keys.len())?;
        let mut seen = HashSet::with_capacity(keys.len());
        let distinct = keys
            .iter()
            .filter(|raw| seen.insert(raw.as_str()))
            .map(|raw| self.core.parse_key(raw))
            .collect::<Result<Vec<_>>>()?;
        let deleted = self.core.store.delete_many(&distinct).await;
        self.core.announce(&distinct, deleted.is_ok()).await?;
        deleted
    }

    /// Deletes every key matching `pattern` and voids their loads in flight; answers how many were deleted.
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        let pattern = Pattern::parse(
            pattern,
            self.core.limits.max_key_bytes,
            self.core.invalidation.allow_cross_entity_patterns,
        )?;
        let max = self.core.limits.max_pattern_wildcards;
        if pattern.wildcards() > max {
            return Err(Error::InvalidPattern {
                pattern: pattern.local().chars().take(80).collect(),
                reason: format!("{} wildcards; the limit is {max}", pattern.wildcards()),
            });
        }
        let deleted = self.core.store.delete_matching(&pattern).await;
        if let Some(near) = &self.core.near {
            // Even a failed call may have deleted some keys: tell the near-caches either way.
            near.evict_matching(&pattern);
            let notice = Notice::Pattern(pattern.to_string());
            let published = self.core.store.publish(&notice).await;
            if deleted.is_ok() {
                published?;
            }
        }
        deleted
    }
}

impl Core {
    /// The bytes to store for `entry` under `key`: sealed when the key's policy says `encrypt`.
    fn encode(&self, key: &Key, mut entry: Entry) -> Bytes {
        if let (true, Some(keyring), Some(value)) = (
            self.policies.for_key(key).encrypt,
            &self.keyring,
            &entry.value,
        ) {
            entry.value = Some(keyring.seal(key.as_str(), value));
            entry.sealed = true;
        }
        entry.encode()
    }

    /// The entry stored under `key`, opened if sealed; `None` for bytes that are not an entry or do not open
    /// (a retired key, tampering), which then read as a miss.
    fn decode(&self, key: &Key, stored: Bytes) -> Option<Entry> {
        let mut entry = Entry::decode(stored)?;
        if !entry.sealed && entry.value.is_some() && self.policies.for_key(key).encrypt {
            // Plaintext where only ciphertext is written: planted, or from before `encrypt` was turned on.
            metrics::counter!("cachecoord_undecryptable_entries_total").increment(1);
            return None;
        }
        if entry.sealed {
            let opened = self
                .keyring
                .as_ref()
                .and_then(|keyring| keyring.open(key.as_str(), entry.value.as_deref()?));
            if opened.is_none() {
                tracing::warn!(entity = %self.policies.for_key(key).name, "entry does not decrypt; read as a miss");
                metrics::counter!("cachecoord_undecryptable_entries_total").increment(1);
                return None;
            }
            entry.value = opened;
            entry.sealed = false;
        }
        Some(entry)
    }

    /// Counts one answer under the entity (policy) of `key`.
    fn count(&self, key: &Key, source: Source) {
        self.stats.record(&self.policies.for_key(key).name, source);
    }

    fn parse_key(&self, raw: &str) -> Result<Key> {
        Key::parse(raw, self.limits.max_key_bytes)
    }

    fn check_batch(&self, what: &'static str, count: usize) -> Result<()> {
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

    /// Tells every replica's near-cache (this one's at once) that `keys` changed. Without a near-cache, nothing
    /// to tell. A notice that cannot be sent fails the call: the write happened, but other replicas may still
    /// serve the old value, and the caller should retry (writes and invalidations are idempotent).
    /// `succeeded` says whether the store call did: a failed one may still have applied some keys, so it is
    /// announced too, but only a successful call's failed announcement is an error of its own.
    async fn announce(&self, keys: &[Key], succeeded: bool) -> Result<()> {
        let Some(near) = &self.near else {
            return Ok(());
        };
        near.evict(keys);
        let notice = Notice::Keys(keys.iter().map(Key::to_string).collect());
        let published = self.store.publish(&notice).await;
        if succeeded { published } else { Ok(()) }
    }

    fn prepare_write(&self, command: SetCommand) -> Result<StoreWrite> {
        let key = self.parse_key(&command.key)?;
        if command.value.len() > self.limits.max_value_bytes {
            return Err(Error::ValueTooLarge {
                key: key.to_string(),
                size: command.value.len(),
                max: self.limits.max_value_bytes,
            });
        }
        let violation = self
            .sensitive
            .key_violation(&key)
            .or_else(|| self.sensitive.value_violation(&command.value));
        if let Some(reason) = violation {
            return Err(Error::SensitiveData {
                key: key.to_string(),
                reason,
            });
        }
        let ttl = self.policies.ttl_for(&key, command.ttl)?;
        let mut entry = Entry::fresh_for(Some(command.value), ttl);
        entry.version = command.version.unwrap_or(0);
        Ok(StoreWrite {
            value: self.encode(&key, entry),
            key,
            ttl,
            version: command.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn coordinator() -> Coordinator {
        Coordinator::new(
            Arc::new(MemoryStore::new(1 << 20)),
            Loaders::default(),
            &Config::default(),
        )
        .unwrap()
    }

    fn set(key: &str, value: &'static [u8]) -> SetCommand {
        SetCommand {
            key: key.into(),
            value: Bytes::from_static(value),
            ttl: None,
            version: None,
        }
    }

    const READ: ReadOptions = ReadOptions { cache_only: false };

    #[tokio::test]
    async fn a_bad_entry_in_a_batch_writes_nothing() {
        let cache = coordinator();
        let result = cache
            .batch_set(vec![set("user:1", b"a"), set("user:{2}", b"b")])
            .await;
        assert!(matches!(result, Err(Error::InvalidKey { .. })));
        assert_eq!(cache.get("user:1", READ).await.unwrap(), Lookup::miss());
    }

    #[tokio::test]
    async fn duplicate_keys_get_identical_answers() {
        let cache = coordinator();
        cache.set(set("user:1", b"a")).await.unwrap();
        let keys = ["user:1", "user:2", "user:1"].map(String::from);
        let answers = cache.batch_get(&keys, READ).await.unwrap();
        assert_eq!(answers[0], answers[2]);
        assert_eq!(answers[0].value.as_deref(), Some(&b"a"[..]));
        assert_eq!(answers[1], Lookup::miss());
    }

    #[tokio::test]
    async fn invalidate_counts_each_key_once() {
        let cache = coordinator();
        cache.set(set("user:1", b"a")).await.unwrap();
        let keys = ["user:1", "user:1", "user:2"].map(String::from);
        assert_eq!(cache.invalidate(&keys).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn versioned_sets_refuse_older_versions() {
        let cache = coordinator();
        let versioned = |version| SetCommand {
            version: Some(version),
            ..set("user:1", b"v")
        };
        cache.set(versioned(2)).await.unwrap();
        assert!(matches!(
            cache.set(versioned(1)).await,
            Err(Error::StaleVersion { version: 1, .. })
        ));
        cache.set(versioned(3)).await.unwrap();
    }
}
