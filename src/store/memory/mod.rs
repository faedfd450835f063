//! The embedded in-process store: what `cargo run` uses, so a newcomer needs nothing else. Same semantics as
//! Redis — per-entry TTL, a memory bound (least recently used entries go first), glob deletion, versioned writes
//! and fill leases — on a moka cache. One mutex orders every lease-sensitive step (write, fill, delete), which is
//! what Redis's single-threaded scripts give the Redis store. Version floors (the highest version written to a
//! key, outliving its value for the version retention window) live in a second cache of their own, bounded to
//! `MAX_VERSION_FLOORS` keys: past that, the least recently used floors are forgotten.

mod membership;

use super::contract::{Filled, Heard, LeaseToken, Members, Notice, Store, StoreWrite};
use crate::Result;
use crate::keys::{Key, Pattern};
use async_trait::async_trait;
use bytes::Bytes;
use membership::Membership;
use moka::Expiry;
use moka::sync::Cache;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Bytes charged per entry on top of key and value, for the map's own bookkeeping.
const ENTRY_OVERHEAD_BYTES: usize = 96;
/// Outstanding leases above which expired ones are swept on the next lease taken.
const LEASE_SWEEP_THRESHOLD: usize = 1024;
/// Most version floors kept.
const MAX_VERSION_FLOORS: u64 = 1 << 20;
/// Lease events buffered for slow subscribers before the oldest are dropped (waiters also poll).
const EVENT_BUFFER: usize = 4096;

#[derive(Clone)]
struct Entry {
    value: Bytes,
    ttl: Duration,
    version: u64,
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
    /// Lease holders and their expiry. Its mutex also serialises writes against fills.
    leases: Mutex<HashMap<String, (LeaseToken, Instant)>>,
    /// The highest version written to each key, kept for the version retention window after its last versioned
    /// write whatever happens to the value.
    version_floors: Cache<String, u64>,
    events: broadcast::Sender<Arc<str>>,
    /// In one process every "replica" hears every notice at once; nothing can be lost.
    notices: broadcast::Sender<Heard>,
    /// Near-cache members and when their lease ends. In one process the only members are this process's own
    /// near-caches, but the rules are the same as on Redis.
    members: Membership,
}

impl MemoryStore {
    /// A store that holds at most about `max_bytes` of keys and values, remembering versions for the default
    /// retention.
    pub fn new(max_bytes: u64) -> MemoryStore {
        let retention = crate::config::StoreConfig::default().version_retention;
        MemoryStore::with_version_retention(max_bytes, retention)
    }

    /// A store that holds at most about `max_bytes` of keys and values, and remembers each key's highest version
    /// for `version_retention` after its last versioned write.
    pub fn with_version_retention(max_bytes: u64, version_retention: Duration) -> MemoryStore {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, entry: &Entry| {
                let bytes = key.len() + entry.value.len() + ENTRY_OVERHEAD_BYTES;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .expire_after(WriteTtl)
            .build();
        MemoryStore {
            cache,
            leases: Mutex::new(HashMap::new()),
            // LRU, not moka's default admission policy, which may refuse a new floor once the cache is full.
            version_floors: Cache::builder()
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .max_capacity(MAX_VERSION_FLOORS)
                .time_to_live(version_retention)
                .build(),
            events: broadcast::channel(EVENT_BUFFER).0,
            notices: broadcast::channel(EVENT_BUFFER).0,
            members: Membership::default(),
        }
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<String, (LeaseToken, Instant)>> {
        // A panic while holding the lock cannot leave the map inconsistent (every step is one insert or remove).
        self.leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `write` is versioned and older than what its key has held (its floor, or its stored entry).
    fn older_than_stored(&self, write: &StoreWrite) -> bool {
        let Some(version) = write.version else {
            return false;
        };
        let key = write.key.as_str();
        let floor = self.version_floors.get(key).unwrap_or(0);
        let stored = self.cache.get(key).map_or(0, |e| e.version);
        floor.max(stored) > version
    }

    /// Writes `write` (the caller holds the lease mutex) and raises its key's version floor.
    fn insert(&self, write: &StoreWrite) {
        if let Some(version) = write.version {
            self.version_floors
                .insert(write.key.as_str().to_owned(), version);
        }
        let entry = Entry {
            value: write.value.clone(),
            ttl: write.ttl,
            version: write.version.unwrap_or(0),
        };
        self.cache.insert(write.key.as_str().to_owned(), entry);
    }

    fn announce(&self, key: &Key) {
        // No receiver is fine: nobody is waiting.
        let _ = self.events.send(Arc::from(key.as_str()));
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

    async fn set_many(&self, writes: &[StoreWrite]) -> Result<Vec<bool>> {
        let mut leases = self.leases();
        Ok(writes
            .iter()
            .map(|write| {
                if self.older_than_stored(write) {
                    return false;
                }
                leases.remove(write.key.as_str());
                self.insert(write);
                true
            })
            .collect())
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64> {
        let mut leases = self.leases();
        Ok(keys
            .iter()
            .filter(|key| {
                leases.remove(key.as_str());
                self.cache.remove(key.as_str()).is_some()
            })
            .count() as u64)
    }

    async fn delete_matching(&self, pattern: &Pattern) -> Result<u64> {
        self.leases().retain(|key, _| !pattern.matches(key));
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

    async fn try_lease(&self, key: &Key, token: LeaseToken, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut leases = self.leases();
        // Leases of holders that never came back expire; sweep them before the map grows (amortised O(1)).
        if leases.len() >= LEASE_SWEEP_THRESHOLD {
            leases.retain(|_, &mut (_, expires)| expires > now);
        }
        match leases.get(key.as_str()) {
            Some(&(_, expires)) if expires > now => Ok(false),
            _ => {
                leases.insert(key.as_str().to_owned(), (token, now + ttl));
                Ok(true)
            }
        }
    }

    async fn fill(&self, token: LeaseToken, write: &StoreWrite) -> Result<Filled> {
        let filled = {
            let mut leases = self.leases();
            let held = leases
                .get(write.key.as_str())
                .is_some_and(|&(holder, expires)| holder == token && expires > Instant::now());
            if !held {
                Filled::Voided
            } else {
                leases.remove(write.key.as_str());
                if self.older_than_stored(write) {
                    Filled::Older
                } else {
                    self.insert(write);
                    Filled::Written
                }
            }
        };
        if filled != Filled::Voided {
            self.announce(&write.key);
        }
        Ok(filled)
    }

    async fn release_lease(&self, key: &Key, token: LeaseToken) -> Result<bool> {
        let released = {
            let mut leases = self.leases();
            // A lease that ran out is no longer the holder's to give back (as on Redis, where it has expired).
            let now = Instant::now();
            let found = leases.get(key.as_str()).copied();
            let held = found.is_some_and(|(holder, expires)| holder == token && expires > now);
            if found.is_some_and(|(holder, _)| holder == token) {
                leases.remove(key.as_str());
            }
            held
        };
        if released {
            self.announce(key);
        }
        Ok(released)
    }

    async fn renew_lease(&self, key: &Key, token: LeaseToken, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut leases = self.leases();
        match leases.get_mut(key.as_str()) {
            Some((holder, expires)) if *holder == token && *expires > now => {
                *expires = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn lease_events(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    async fn publish(&self, notice: &Notice) -> Result<()> {
        let _ = self.notices.send(Heard::Notice(notice.clone()));
        Ok(())
    }

    fn notices(&self) -> broadcast::Receiver<Heard> {
        self.notices.subscribe()
    }

    async fn renew_membership(&self, member: u64, lease: Duration, join: bool) -> Result<bool> {
        Ok(self.members.renew(member, lease, join))
    }

    async fn leave_membership(&self, member: u64) -> Result<()> {
        self.members.leave(member);
        Ok(())
    }

    async fn members(&self) -> Result<Members> {
        Ok(self.members.list())
    }

    async fn revoke_member(&self, member: u64) -> Result<Duration> {
        Ok(self.members.revoke(member))
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
            version: None,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn deletes_exactly_the_matching_keys() {
        let store = MemoryStore::new(1 << 20);
        store
            .set_many(&[
                write("user:1:posts", b"a", HOUR),
                write("user:1:likes", b"b", HOUR),
                write("user:12", b"c", HOUR),
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
    async fn an_expired_lease_is_not_released_by_its_old_holder() {
        let store = MemoryStore::new(1 << 20);
        let key = key("user:lease");
        assert!(store.try_lease(&key, 7, HOUR).await.unwrap());
        assert!(store.release_lease(&key, 7).await.unwrap());
        assert!(
            store
                .try_lease(&key, 8, Duration::from_millis(20))
                .await
                .unwrap()
        );
        // Waits for the lease to run out; asserts the answer, not speed.
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!store.release_lease(&key, 8).await.unwrap());
        assert!(store.try_lease(&key, 9, HOUR).await.unwrap());
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
                version: None,
            };
            store.set_many(&[write]).await.unwrap();
        }
        store.cache.run_pending_tasks();
        assert!(store.cache.weighted_size() <= 64 * 1024);
    }

    #[tokio::test]
    async fn an_invalidation_voids_the_lease_of_a_load_in_flight() {
        let store = MemoryStore::new(1 << 20);
        let k = key("user:1");
        assert!(store.try_lease(&k, 1, HOUR).await.unwrap());
        assert!(
            !store.try_lease(&k, 2, HOUR).await.unwrap(),
            "one holder at a time"
        );
        store.delete_many(std::slice::from_ref(&k)).await.unwrap();
        assert_eq!(
            store.fill(1, &write("user:1", b"old", HOUR)).await.unwrap(),
            Filled::Voided
        );
        assert_eq!(
            store.get_many(std::slice::from_ref(&k)).await.unwrap(),
            vec![None]
        );

        assert!(store.try_lease(&k, 3, HOUR).await.unwrap());
        let mut events = store.lease_events();
        assert_eq!(
            store.fill(3, &write("user:1", b"new", HOUR)).await.unwrap(),
            Filled::Written
        );
        assert_eq!(&*events.recv().await.unwrap(), "user:1");
    }

    #[tokio::test]
    async fn older_versions_are_refused() {
        let store = MemoryStore::new(1 << 20);
        let versioned = |version| StoreWrite {
            version: Some(version),
            ..write("user:1", b"v", HOUR)
        };
        assert_eq!(store.set_many(&[versioned(5)]).await.unwrap(), vec![true]);
        assert_eq!(store.set_many(&[versioned(4)]).await.unwrap(), vec![false]);
        assert_eq!(store.set_many(&[versioned(5)]).await.unwrap(), vec![true]);
        store.delete_many(&[key("user:1")]).await.unwrap();
        assert_eq!(
            store.set_many(&[versioned(4)]).await.unwrap(),
            vec![false],
            "a delete does not forget the version"
        );
    }
}
