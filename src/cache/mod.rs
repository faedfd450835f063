//! The coordinator: cache-aside semantics on top of any [`Store`], independent of gRPC and of the backend.
//!
//! It validates keys and patterns against the grammar and limits, picks each key's TTL from its policy, wraps
//! values in the entry envelope, and answers misses as data. It names no tonic, proto or fred type: the API layer
//! calls it, and it calls the `Store` trait.

mod entry;
mod policy;

pub use entry::Entry;
pub use policy::{Policies, Policy};

use crate::config::{Config, InvalidationConfig, LimitsConfig};
use crate::keys::{Key, Pattern};
use crate::store::{Store, StoreWrite};
use crate::{Error, Result};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The value was in the cache.
    Hit,
    /// The key was not in the cache.
    Miss,
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
}

/// Cache-aside coordination over one store.
pub struct Coordinator {
    store: Arc<dyn Store>,
    policies: Policies,
    limits: LimitsConfig,
    invalidation: InvalidationConfig,
}

impl Coordinator {
    /// A coordinator over `store`, configured by `config`.
    pub fn new(store: Arc<dyn Store>, config: &Config) -> Result<Coordinator> {
        Ok(Coordinator {
            store,
            policies: Policies::from_config(config)?,
            limits: config.limits.clone(),
            invalidation: config.invalidation.clone(),
        })
    }

    /// The policy table, for callers that report per-entity figures.
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> Result<()> {
        self.store.ping().await
    }

    /// Reads one key.
    pub async fn get(&self, key: &str) -> Result<Lookup> {
        let key = self.parse_key(key)?;
        let stored = self.store.get_many(std::slice::from_ref(&key)).await?;
        Ok(to_lookup(stored.into_iter().next().flatten()))
    }

    /// Reads many keys; one answer per requested key, in request order. Duplicates are read once and answered
    /// identically.
    pub async fn batch_get(&self, keys: &[String]) -> Result<Vec<Lookup>> {
        self.check_batch("keys", keys.len())?;
        let mut distinct: Vec<Key> = Vec::with_capacity(keys.len());
        let mut slot_of: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
        let mut slots = Vec::with_capacity(keys.len());
        for raw in keys {
            let slot = match slot_of.get(raw.as_str()) {
                Some(&slot) => slot,
                None => {
                    distinct.push(self.parse_key(raw)?);
                    slot_of.insert(raw, distinct.len() - 1);
                    distinct.len() - 1
                }
            };
            slots.push(slot);
        }
        let lookups: Vec<Lookup> = self
            .store
            .get_many(&distinct)
            .await?
            .into_iter()
            .map(to_lookup)
            .collect();
        Ok(slots
            .into_iter()
            .map(|slot| lookups[slot].clone())
            .collect())
    }

    /// Writes one key; answers the TTL applied.
    pub async fn set(&self, command: SetCommand) -> Result<Duration> {
        let write = self.prepare_write(command)?;
        let ttl = write.ttl;
        self.store.set_many(std::slice::from_ref(&write)).await?;
        Ok(ttl)
    }

    /// Writes many keys. Every entry is validated before anything is written, so a bad entry writes nothing.
    pub async fn batch_set(&self, commands: Vec<SetCommand>) -> Result<u64> {
        self.check_batch("entries", commands.len())?;
        let writes = commands
            .into_iter()
            .map(|command| self.prepare_write(command))
            .collect::<Result<Vec<_>>>()?;
        self.store.set_many(&writes).await?;
        Ok(writes.len() as u64)
    }

    /// Deletes `keys`; answers how many existed.
    pub async fn invalidate(&self, keys: &[String]) -> Result<u64> {
        self.check_batch("keys", keys.len())?;
        let mut seen = HashSet::with_capacity(keys.len());
        let distinct = keys
            .iter()
            .filter(|raw| seen.insert(raw.as_str()))
            .map(|raw| self.parse_key(raw))
            .collect::<Result<Vec<_>>>()?;
        self.store.delete_many(&distinct).await
    }

    /// Deletes every key matching `pattern`; answers how many were deleted.
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        let pattern = Pattern::parse(
            pattern,
            self.limits.max_key_bytes,
            self.invalidation.allow_cross_entity_patterns,
        )?;
        self.store.delete_matching(&pattern).await
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

    fn prepare_write(&self, command: SetCommand) -> Result<StoreWrite> {
        let key = self.parse_key(&command.key)?;
        if command.value.len() > self.limits.max_value_bytes {
            return Err(Error::ValueTooLarge {
                key: key.to_string(),
                size: command.value.len(),
                max: self.limits.max_value_bytes,
            });
        }
        let ttl = self.policies.ttl_for(&key, command.ttl)?;
        Ok(StoreWrite {
            value: Entry::fresh_for(command.value, ttl).encode(),
            key,
            ttl,
        })
    }
}

/// Turns stored bytes into an answer. Bytes that are not an envelope (written by something else) or whose
/// freshness has run out are misses: never serve what cannot be vouched for.
fn to_lookup(stored: Option<Bytes>) -> Lookup {
    let Some(entry) = stored.and_then(Entry::decode) else {
        return Lookup::miss();
    };
    match entry.ttl_remaining() {
        Some(ttl) => Lookup {
            value: Some(entry.value),
            source: Source::Hit,
            ttl_remaining: Some(ttl),
        },
        None => Lookup::miss(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn coordinator() -> Coordinator {
        Coordinator::new(Arc::new(MemoryStore::new(1 << 20)), &Config::default()).unwrap()
    }

    fn set(key: &str, value: &'static [u8]) -> SetCommand {
        SetCommand {
            key: key.into(),
            value: Bytes::from_static(value),
            ttl: None,
        }
    }

    #[tokio::test]
    async fn a_bad_entry_in_a_batch_writes_nothing() {
        let cache = coordinator();
        let result = cache
            .batch_set(vec![set("user:1", b"a"), set("user:{2}", b"b")])
            .await;
        assert!(matches!(result, Err(Error::InvalidKey { .. })));
        assert_eq!(cache.get("user:1").await.unwrap(), Lookup::miss());
    }

    #[tokio::test]
    async fn duplicate_keys_get_identical_answers() {
        let cache = coordinator();
        cache.set(set("user:1", b"a")).await.unwrap();
        let keys = ["user:1", "user:2", "user:1"].map(String::from);
        let answers = cache.batch_get(&keys).await.unwrap();
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
}
