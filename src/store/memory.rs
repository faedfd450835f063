//! The embedded in-process store: what `cargo run` uses, so a newcomer needs nothing else. Same semantics as
//! Redis — per-entry TTL, a memory bound (least recently used entries go first), glob deletion — on a moka cache.

use super::{Store, StoreWrite};
use crate::Result;
use crate::keys::{Key, Pattern};
use async_trait::async_trait;
use bytes::Bytes;
use moka::Expiry;
use moka::sync::Cache;
use std::time::{Duration, Instant};

/// Bytes charged per entry on top of key and value, for the map's own bookkeeping.
const ENTRY_OVERHEAD_BYTES: usize = 96;

#[derive(Clone)]
struct Entry {
    value: Bytes,
    ttl: Duration,
}

/// Expires each entry after the TTL it was written with; a rewrite restarts the clock, as Redis `SET PX` does.
struct WriteTtl;

impl Expiry<String, Entry> for WriteTtl {
    fn expire_after_create(&self, _: &String, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// The embedded store, bounded in bytes.
pub struct MemoryStore {
    cache: Cache<String, Entry>,
}

impl MemoryStore {
    /// A store that holds at most about `max_bytes` of keys and values.
    pub fn new(max_bytes: u64) -> MemoryStore {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, entry: &Entry| {
                let bytes = key.len() + entry.value.len() + ENTRY_OVERHEAD_BYTES;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .expire_after(WriteTtl)
            .build();
        MemoryStore { cache }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        Ok(keys
            .iter()
            .map(|key| self.cache.get(key.as_str()).map(|entry| entry.value))
            .collect())
    }

    async fn set_many(&self, writes: &[StoreWrite]) -> Result<()> {
        for write in writes {
            let entry = Entry {
                value: write.value.clone(),
                ttl: write.ttl,
            };
            self.cache.insert(write.key.as_str().to_owned(), entry);
        }
        Ok(())
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64> {
        Ok(keys
            .iter()
            .filter(|key| self.cache.remove(key.as_str()).is_some())
            .count() as u64)
    }

    async fn delete_matching(&self, pattern: &Pattern) -> Result<u64> {
        // Collect first: removing while iterating a concurrent map may skip entries.
        let matching: Vec<String> = self
            .cache
            .iter()
            .filter(|(key, _)| pattern.matches(key))
            .map(|(key, _)| key.as_ref().clone())
            .collect();
        Ok(matching
            .iter()
            .filter(|key| self.cache.remove(key.as_str()).is_some())
            .count() as u64)
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str) -> Key {
        Key::parse(raw, 512).unwrap()
    }

    fn write(raw: &str, value: &'static [u8], ttl: Duration) -> StoreWrite {
        StoreWrite {
            key: key(raw),
            value: Bytes::from_static(value),
            ttl,
        }
    }

    #[tokio::test]
    async fn deletes_exactly_the_matching_keys() {
        let store = MemoryStore::new(1 << 20);
        let hour = Duration::from_secs(3600);
        store
            .set_many(&[
                write("user:1:posts", b"a", hour),
                write("user:1:likes", b"b", hour),
                write("user:12", b"c", hour),
            ])
            .await
            .unwrap();
        let pattern = Pattern::parse("user:1:*", 512, false).unwrap();
        assert_eq!(store.delete_matching(&pattern).await.unwrap(), 2);
        let left = store
            .get_many(&[key("user:1:posts"), key("user:12")])
            .await
            .unwrap();
        assert_eq!(left, vec![None, Some(Bytes::from_static(b"c"))]);
    }

    #[tokio::test]
    async fn entries_expire_after_their_ttl() {
        let store = MemoryStore::new(1 << 20);
        store
            .set_many(&[write("user:1", b"a", Duration::from_millis(30))])
            .await
            .unwrap();
        // moka reads its own clock, so this waits for real time to pass; it asserts expiry, not speed.
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(store.get_many(&[key("user:1")]).await.unwrap(), vec![None]);
    }

    #[tokio::test]
    async fn stays_within_its_memory_budget() {
        let store = MemoryStore::new(64 * 1024);
        let value = vec![7u8; 1024];
        for i in 0..1000 {
            let write = StoreWrite {
                key: key(&format!("user:{i}")),
                value: Bytes::from(value.clone()),
                ttl: Duration::from_secs(60),
            };
            store.set_many(&[write]).await.unwrap();
        }
        store.cache.run_pending_tasks();
        assert!(store.cache.weighted_size() <= 64 * 1024);
    }
}
