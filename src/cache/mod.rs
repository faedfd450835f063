//! The coordinator: cache-aside semantics on top of any [`Store`] and [`Loader`], independent of gRPC and of the
//! backend.
//!
//! It validates keys and patterns against the grammar and limits, picks each key's TTL from its policy, wraps
//! values in the entry envelope, and answers misses as data. When a key's entity has a loader, a miss is filled
//! through it: one load per key per replica (singleflight), one per key across replicas (store lease), never a
//! stale write-back (fills are lease-checked), early refresh (XFetch) and stale windows, and a fallback straight
//! to the loader when the store is down (Redis nodes have circuit breakers). It names no tonic, proto or fred type.
//!
//! [`Coordinator`] only delegates; each operation lives in its own file, and dependencies point one way (down
//! this list):
//! - `read`: Get and BatchGet: near-cache, store, a verdict per key, loads grouped per loader.
//! - `write`: Set, BatchSet, Invalidate, InvalidatePattern, and the near-cache notices they send.
//! - `fallback`: reads while the store is down, straight from the loaders.
//! - `batch`: several misses of one loader in one leased batch call.
//! - `refresh`: background refresh (XFetch early refresh, stale-while-revalidate).
//! - `caller_lease`: leases handed to callers that fill misses themselves (a read with `lease`).
//! - `flight`: one key's load: lease or wait, load, fill, load again when voided.
//! - `load`: one loader call and the entry it becomes.
//! - `lease`: the store lease as a type (`Lease`: take, fill, release).
//! - `shared`: `Core`, what every operation shares, with the envelope's encode and decode.
//! - `singleflight`: the per-replica registry of loads and refreshes in flight.
//! - `consistency_check`: the staleness sampler's background check of a sampled hit against the source.
//! - `redact`: how keys of sensitive policies appear in logs and spans.
//! - `strict`: strict near-cache mode: the member's lease, a strict write's wait for acknowledgements, and the
//!   acknowledgements a member sends (used by `near`).
//! - `types`: the domain types (`Source`, `Lookup`, `ReadOptions`, `SetCommand`, `BatchSetOutcome`).
//! - `entry`, `policy`, `encryption`, `sensitive`, `near`, `sampler`, `stats`: the envelope, the policy table,
//!   sealing, the never-cache rule, the near-cache, the staleness sampler's budget and the per-entity counters.
//!
//! [`Store`]: crate::store::Store
//! [`Loader`]: crate::loader::Loader

mod batch;
mod caller_lease;
mod consistency_check;
mod encryption;
mod entry;
mod fallback;
mod fill_watch;
mod flight;
mod lease;
mod load;
mod near;
mod pattern_runs;
mod policy;
mod read;
mod redact;
mod refresh;
mod sampler;
mod sensitive;
mod shared;
mod singleflight;
mod stats;
mod strict;
mod types;
mod write;

pub use crate::store::NodeHealth;
pub use entry::Entry;
pub use near::NoticeDelays;
pub use policy::{Policies, Policy};
pub use stats::EntityStats;
pub use types::{BatchSetOutcome, CheckResult, Lookup, ReadOptions, SetCommand, Source};

use crate::config::Config;
use crate::loader::Loaders;
use crate::store::Store;
use crate::{Result, StartupError};
use bytes::Bytes;
use shared::Core;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Cache-aside coordination over one store and its loaders.
pub struct Coordinator {
    core: Arc<Core>,
}

impl Coordinator {
    /// A coordinator over `store` and `loaders`, configured by `config`.
    pub fn new(
        store: Arc<dyn Store>,
        loaders: Loaders,
        config: &Config,
    ) -> Result<Coordinator, StartupError> {
        Ok(Coordinator {
            core: Arc::new(Core::new(store, loaders, config)?),
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

    /// How long near-cache notices took to reach this replica; `None` without a near-cache.
    pub fn notice_delays(&self) -> Option<NoticeDelays> {
        self.core.near.as_ref().map(|near| near.notice_delays())
    }

    /// The store's nodes as last polled (Redis only; empty for the embedded store).
    pub fn store_health(&self) -> Vec<NodeHealth> {
        self.core.store.node_health()
    }

    /// Checks `raw` against the key grammar and length limit, without touching anything: for callers that must
    /// refuse a bad key before looking at the rest of a request.
    pub fn check_key(&self, raw: &str) -> Result<()> {
        self.core.parse_key(raw).map(drop)
    }

    /// Refuses an answer whose values (`sizes`, duplicates counted) exceed `limits.max_response_bytes`, before it
    /// is encoded: one call must not make the replica build an unbounded response.
    pub fn check_response_size(&self, sizes: impl Iterator<Item = usize>) -> Result<()> {
        let max = self.core.limits.max_response_bytes;
        let size = sizes.fold(0usize, usize::saturating_add);
        if size > max {
            return Err(crate::Error::ResponseTooLarge { size, max });
        }
        Ok(())
    }

    /// `raw` (a key or pattern as the caller named it, checked or not) as spans and logs may show it, with its
    /// entity: a sensitive policy's key as its entity and a keyed hash, the same one the coordinator's own log
    /// lines use. A key over `limits.max_key_bytes` is never matched against the policies (whose globs cost
    /// time in its length) nor shown: it is described by its length alone.
    pub fn describe_key(&self, raw: &str) -> (&str, String) {
        if raw.len() > self.core.limits.max_key_bytes {
            return ("", format!("<{} bytes, over the key limit>", raw.len()));
        }
        let policy = self.core.policies.for_raw(raw);
        (
            policy.name.as_str(),
            self.core.redaction.key(policy, raw, raw),
        )
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> Result<()> {
        self.core.store.ping().await
    }

    /// Reads one key, loading it on a miss when its entity has a loader.
    pub async fn get(&self, key: &str, options: ReadOptions) -> Result<Lookup> {
        read::get(self.core.clone(), key, options).await
    }

    /// Reads many keys; one answer per requested key, in request order. Duplicates are read once and answered
    /// identically. Misses are loaded per loader in one batch call.
    pub async fn batch_get(&self, keys: &[String], options: ReadOptions) -> Result<Vec<Lookup>> {
        read::batch_get(self.core.clone(), keys, options).await
    }

    /// Writes one key (voiding any load in flight for it); answers the TTL applied.
    pub async fn set(&self, command: SetCommand) -> Result<Duration> {
        write::set(&self.core, command).await
    }

    /// Writes many keys. Every entry is validated before anything is written, so a bad entry writes nothing.
    pub async fn batch_set(&self, commands: Vec<SetCommand>) -> Result<BatchSetOutcome> {
        write::batch_set(&self.core, commands).await
    }

    /// Deletes `keys` and voids their loads in flight; answers how many existed.
    pub async fn invalidate(&self, keys: &[String]) -> Result<u64> {
        write::invalidate(&self.core, keys).await
    }

    /// Deletes every key matching `pattern` and voids their loads in flight; answers how many were deleted.
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        write::invalidate_pattern(&self.core, pattern).await
    }

    /// Gives back a lease a leased read handed out (`token`), so a waiting caller takes it at once; answers
    /// whether the token still held it.
    pub async fn release_lease(&self, key: &str, token: &[u8]) -> Result<bool> {
        write::release_lease(&self.core, key, token).await
    }

    /// Gives back, in the background, leases handed out in answers that will not reach their caller after all
    /// (the call failed once they were in it): each a key, qualified as the read named it, and its token.
    pub fn give_back_leases(&self, leases: Vec<(String, Bytes)>) {
        for (key, token) in leases {
            let core = self.core.clone();
            tokio::spawn(async move {
                let _ = write::release_lease(&core, &key, &token).await;
            });
        }
    }

    /// Extends a lease a leased read handed out by the key's lease TTL; answers that TTL, or
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) when the token no longer holds it.
    pub async fn renew_lease(&self, key: &str, token: &[u8]) -> Result<Duration> {
        write::renew_lease(&self.core, key, token).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::store::MemoryStore;
    use bytes::Bytes;

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
            lease_token: None,
        }
    }

    const READ: ReadOptions = ReadOptions {
        cache_only: false,
        lease: false,
        wait_until: None,
    };

    #[test]
    fn keys_over_the_limit_are_described_by_their_length_alone() {
        let coordinator = coordinator();
        let huge = format!("user:{}", "k".repeat(1_000_000));
        assert_eq!(
            coordinator.describe_key(&huge),
            ("", "<1000005 bytes, over the key limit>".to_owned())
        );
        assert_eq!(coordinator.describe_key("user:1").0, "user");
    }

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
