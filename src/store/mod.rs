//! Where entries live: one trait, two backends.
//!
//! The coordinator holds an `Arc<dyn Store>`, so the embedded store (`memory`, the zero-config default) and Redis
//! (`redis`, standalone or cluster) run exactly the same coordinator code and the same behaviour tests. A store
//! keeps opaque bytes with a physical TTL; what the bytes mean (the entry envelope) is the coordinator's business.

mod memory;
mod redis;

pub use memory::MemoryStore;
pub use redis::RedisStore;

use crate::Result;
use crate::config::Config;
use crate::keys::{Key, Pattern};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// One write: the value and how long the store keeps it.
#[derive(Clone, Debug)]
pub struct StoreWrite {
    /// Key to write.
    pub key: Key,
    /// Bytes to store.
    pub value: Bytes,
    /// Physical time to live: the store forgets the entry after it.
    pub ttl: Duration,
}

/// The operations the coordinator needs from a backend.
#[async_trait]
pub trait Store: Send + Sync {
    /// Reads `keys`; one answer per key, in order, `None` for a missing or expired key.
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>>;

    /// Writes every entry. Not atomic across keys: on error some entries may have been written.
    async fn set_many(&self, writes: &[StoreWrite]) -> Result<()>;

    /// Deletes `keys` (distinct); answers how many existed.
    async fn delete_many(&self, keys: &[Key]) -> Result<u64>;

    /// Deletes every key matching `pattern` without blocking the backend; answers how many were deleted.
    async fn delete_matching(&self, pattern: &Pattern) -> Result<u64>;

    /// Checks that the backend answers.
    async fn ping(&self) -> Result<()>;
}

/// Opens the store the configuration asks for: Redis when `store.redis_url` is set, the embedded store otherwise.
pub async fn open(config: &Config) -> Result<Arc<dyn Store>> {
    Ok(match &config.store.redis_url {
        Some(url) => Arc::new(RedisStore::connect(url, config).await?),
        None => Arc::new(MemoryStore::new(config.store.memory_max_bytes)),
    })
}
