//! Redis through fred: one server or a Redis Cluster, chosen by the URL scheme.
//!
//! Commands go to the node owning their hash slot through that node's own client (`nodes`), so one failed or
//! paused primary cannot stall the others. Multi-key commands must stay inside one hash slot, so batches are
//! grouped by slot and the per-slot commands are sent concurrently; each node's client pipelines them on its
//! connection, so a batch costs about one round trip per primary.
//!
//! Keys are laid out by group (`layout`, the one place naming Redis keys): a group's values, its index of keys,
//! its epoch and its leases share one hash slot, so the Lua scripts (`scripts`) change them atomically. Each
//! value is kept as the store's own record (`record`: group epoch, version, payload), so versioned writes compare
//! versions without reading the caller's bytes.
//!
//! Invalidations (`invalidation`) are acknowledged only once a replica has them (a fence write and `WAIT`,
//! `fence`), so a primary that dies right after an acknowledged invalidation cannot hand the old value to the
//! replica promoted in its place. Versioned writes leave a version floor beside the value that deletes and
//! expiry do not reset (kept for `store.version_retention_secs`), so a late writer's older version is refused.
//!
//! Eviction can drop bookkeeping; it may then invalidate more than asked, never less: every value carries its
//! group's epoch and is served only while the epoch key still holds it; a write that finds the group's index
//! missing starts a new epoch (so values the lost index knew of are dropped), and so does a pattern invalidation
//! that finds the index missing.
//!
//! Dependencies point one way: this file uses the others and none uses it. `read` uses `nodes`, `layout` and
//! `record`; `invalidation` uses `nodes`, `layout` and `scripts` (which uses `layout` and `record`); `pubsub` uses
//! `nodes`; `health` uses `nodes`; `settings` fills the settings types of `nodes` and `invalidation`; `nodes` uses `slot_map` and `fence`; `errors`,
//! `layout` and `record` use nothing here.

mod errors;
mod fence;
mod health;
mod invalidation;
mod layout;
mod nodes;
mod pubsub;
mod read;
mod record;
mod scripts;
mod settings;
mod slot_map;

use crate::config::StoreConfig;
use crate::keys::{Key, Pattern};
use crate::store::contract::{Filled, Heard, LeaseToken, NodeHealth, Notice, Store, StoreWrite};
use crate::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::ClientLike;
use invalidation::Invalidator;
use nodes::{Nodes, all};
use pubsub::Subscription;
use settings::RedisSettings;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// A Redis server or cluster.
pub struct RedisStore {
    nodes: Arc<Nodes>,
    invalidator: Invalidator,
    subscription: Subscription,
    version_retention: Duration,
    /// Every node's last `INFO` poll (`health`).
    health: health::Snapshot,
}

impl RedisStore {
    /// Connects to `config.redis_url` and waits, up to the configured connect timeout, until Redis answers.
    pub async fn connect(config: &StoreConfig) -> Result<RedisStore> {
        let Some(url) = config.redis_url.as_deref() else {
            return Err(Error::Backend {
                source: "store.redis_url is not set".into(),
            });
        };
        let RedisSettings {
            fred,
            nodes,
            invalidation,
            version_retention,
            health_every,
        } = RedisSettings::new(url, config)?;
        let (connect_timeout, command_timeout) = (nodes.connect_timeout, nodes.command_timeout);
        let nodes = Nodes::connect(fred.clone(), nodes).await?;
        let mut subscriber = fred;
        if let Some(only) = nodes.sole_cluster_primary() {
            // fred's cluster client cannot follow a one-node cluster that reports its own address as empty (no
            // cluster-announce-ip); classic pub/sub works from any node, and here there is one.
            subscriber.server = fred::prelude::ServerConfig::Centralized { server: only };
        }
        let subscription =
            Subscription::connect(subscriber, connect_timeout, command_timeout).await?;
        let health = health::start(&nodes, health_every).await;
        Ok(RedisStore {
            health,
            invalidator: Invalidator::new(nodes.clone(), invalidation),
            nodes,
            subscription,
            version_retention,
        })
    }

    /// Runs a script on the client of the node owning `key`, feeding the outcome to the node's breaker; answers
    /// whether the script reported success (1).
    async fn run_for(&self, key: &Key, call: scripts::Call) -> Result<bool> {
        Ok(self.run_coded(key, call).await? == 1)
    }

    /// Runs a script as [`RedisStore::run_for`] does; answers the number it returned.
    async fn run_coded(&self, key: &Key, call: scripts::Call) -> Result<i64> {
        let node = self.nodes.for_group(layout::group(key.as_str()))?;
        let outcome = call.run::<i64>(&node.client).await;
        self.nodes.observe(&node, outcome)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        read::get_many(&self.nodes, keys).await
    }

    async fn set_many(&self, writes: &[StoreWrite]) -> Result<Vec<bool>> {
        all(writes
            .iter()
            .map(|write| self.run_for(&write.key, scripts::set(write, self.version_retention))))
        .await
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64> {
        let keys: Vec<&str> = keys.iter().map(Key::as_str).collect();
        self.invalidator.delete_keys(&keys, true).await
    }

    async fn delete_matching(&self, pattern: &Pattern) -> Result<u64> {
        self.invalidator.delete_matching(pattern).await
    }

    async fn try_lease(&self, key: &Key, token: LeaseToken, ttl: Duration) -> Result<bool> {
        self.run_for(key, scripts::take_lease(key, token, ttl))
            .await
    }

    async fn fill(&self, token: LeaseToken, write: &StoreWrite) -> Result<Filled> {
        let call = scripts::fill(token, write, self.version_retention);
        let filled = match self.run_coded(&write.key, call).await? {
            1 => Filled::Written,
            2 => Filled::Older,
            _ => Filled::Voided,
        };
        if filled != Filled::Voided {
            pubsub::announce_lease(&self.nodes, write.key.as_str()).await;
        }
        Ok(filled)
    }

    async fn release_lease(&self, key: &Key, token: LeaseToken) -> Result<bool> {
        let released = self
            .run_for(key, scripts::release_lease(key, token))
            .await?;
        if released {
            pubsub::announce_lease(&self.nodes, key.as_str()).await;
        }
        Ok(released)
    }

    async fn renew_lease(&self, key: &Key, token: LeaseToken, ttl: Duration) -> Result<bool> {
        self.run_for(key, scripts::renew_lease(key, token, ttl))
            .await
    }

    fn lease_events(&self) -> broadcast::Receiver<Arc<str>> {
        self.subscription.lease_events()
    }

    async fn publish(&self, notice: &Notice) -> Result<()> {
        pubsub::publish_notice(&self.nodes, notice).await
    }

    fn notices(&self) -> broadcast::Receiver<Heard> {
        self.subscription.notices()
    }

    async fn ping(&self) -> Result<()> {
        let node = self.nodes.any()?;
        let pong = node.client.ping::<()>(None).await;
        self.nodes.observe(&node, pong)
    }

    fn node_health(&self) -> Vec<NodeHealth> {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
