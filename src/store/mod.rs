//! Where entries live: one trait, two backends.
//!
//! The coordinator holds an `Arc<dyn Store>`, so the embedded store (`memory`, the zero-config default) and Redis
//! (`redis`, standalone or cluster) run exactly the same coordinator code and the same behaviour tests. A store
//! keeps opaque bytes with a physical TTL; what the bytes mean (the entry envelope) is the coordinator's business.
//! A write's version travels beside the bytes (`StoreWrite::version`) and the store keeps it beside them, so
//! versioned writes are compared inside the store, atomically, without reading the bytes.
//!
//! Leases make read-through loading safe across replicas: a loader first takes the key's lease (one holder per
//! key, with an expiry so a dead holder cannot block forever), and its fill lands only if it still holds the lease.
//! Every write and invalidation of a key voids its lease, so a load that raced an update can never write the old
//! value back. Fills and released leases are announced on [`Store::lease_events`], on every replica.

mod contract;
mod memory;
mod metered;
mod redis;

pub use contract::{
    Acks, Filled, Heard, LeaseToken, Members, NodeHealth, Notice, Stamp, Store, StoreWrite,
};
pub use memory::MemoryStore;
pub use metered::MeteredStore;
pub use redis::RedisStore;

use crate::StartupError;
use crate::config::StoreConfig;
use std::sync::Arc;

/// Opens the store `[store]` asks for: Redis when `redis_url` is set, the embedded store otherwise;
/// either way observed by [`MeteredStore`].
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StartupError> {
    let backend: Arc<dyn Store> = match &config.redis_url {
        Some(_) => Arc::new(RedisStore::connect(config).await.map_err(|source| {
            StartupError::Unreachable {
                what: "Redis",
                source,
            }
        })?),
        None => Arc::new(MemoryStore::with_version_retention(
            config.memory_max_bytes,
            config.version_retention,
        )),
    };
    Ok(Arc::new(MeteredStore::new(backend)))
}
