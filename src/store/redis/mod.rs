//! Redis through fred: one server or a Redis Cluster, chosen by the URL scheme.
//!
//! Commands go to the node owning their hash slot through that node's own client (`nodes`), so one failed or
//! paused primary cannot stall the others. Multi-key commands must stay inside one hash slot, so batches are
//! grouped by slot; a read sends each primary its slots' MGETs as one pipeline (`read`), and writes and deletes
//! send their per-slot scripts concurrently, which the node's client pipelines on its connection, so a batch
//! costs about one round trip per primary.
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
//! Slots move while cachecoord runs (resharding, rebalancing): `redirect` follows `MOVED` and `ASK` and waits out
//! `TRYAGAIN` for every command sent to one slot, and `migrations` finds the primaries a cross-group pattern must
//! scan again because slots moved to them while it scanned.
//!
//! Dependencies point one way: this file uses the others and none uses it. `read` uses `nodes`, `redirect`,
//! `layout` and `record`; `invalidation` uses `nodes`, `redirect`, `migrations`, `layout` and `scripts` (which
//! uses `layout` and `record`); `redirect` and `migrations` use `nodes`; `pubsub` uses `nodes` and `notices` (the
//! wire format); `notices` uses `nodes`, `redirect` and `layout`; `health` uses `nodes`; `membership` uses
//! `nodes` and `scripts`; `settings` fills the settings types of `nodes` and `invalidation`; `nodes` uses
//! `slot_map` and `fence`; `errors`, `layout` and `record` use nothing here.

mod errors;
mod fence;
mod health;
mod invalidation;
mod layout;
mod membership;
mod migrations;
mod node;
mod nodes;
mod notices;
mod pubsub;
mod read;
mod record;
mod redirect;
mod scripts;
mod settings;
mod slot_map;
mod subscriber;

use crate::config::StoreConfig;
use crate::keys::{Key, Pattern};
use crate::store::contract::{
    Filled, Heard, LeaseToken, Members, NodeHealth, Notice, Store, StoreWrite,
};
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

/// Notices buffered for a slow near-cache before the oldest are dropped (it then hears that it lost some).
const NOTICE_BUFFER: usize = 4096;

/// A Redis server or cluster.
pub struct RedisStore {
    nodes: Arc<Nodes>,
    invalidator: Invalidator,
    subscription: Subscription,
    /// Near-cache notices over sharded pub/sub.
    notices: notices::Notices,
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
        let nodes = Nodes::connect(fred, nodes).await?;
        let timeouts = (connect_timeout, command_timeout);
        let (heard, _) = broadcast::channel(NOTICE_BUFFER);
        let notices = notices::Notices::start(&nodes, heard.clone(), timeouts);
        let subscription = Subscription::connect(&nodes, heard, timeouts).await?;
        let health = health::start(&nodes, health_every).await;
        Ok(RedisStore {
            health,
            invalidator: Invalidator::new(nodes.clone(), invalidation),
            nodes,
            subscription,
            notices,
            version_retention,
        })
    }

    /// Runs a script on the client of the node owning `key`, feeding the outcome to the node's breaker; answers
    /// whether the script reported success (1).
    async fn run_for(&self, key: &Key, call: scripts::Call) -> Result<bool> {
        Ok(self.run_coded(key, call).await? == 1)
    }

    /// Announces that `key`'s lease was filled or released, in the background: the announcement only wakes
    /// waiters early (they poll as well), so the caller does not wait for its round trip.
    fn announce_lease(&self, key: &Key) {
        tokio::spawn(pubsub::announce_lease(
            self.nodes.clone(),
            key.as_str().to_owned(),
        ));
    }

    /// Runs a script as [`RedisStore::run_for`] does; answers the number it returned.
    async fn run_coded(&self, key: &Key, call: scripts::Call) -> Result<i64> {
        let slot = self.nodes.slot_of(layout::group(key.as_str()));
        let call = &call;
        let (coded, _) = redirect::in_slot(&self.nodes, slot, |client| async move {
            call.run::<i64>(&client).await
        })
        .await?;
        Ok(coded)
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
            self.announce_lease(&write.key);
        }
        Ok(filled)
    }

    async fn release_lease(&self, key: &Key, token: LeaseToken) -> Result<bool> {
        let released = self
            .run_for(key, scripts::release_lease(key, token))
            .await?;
        if released {
            self.announce_lease(key);
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
        self.notices.publish(&self.nodes, notice).await
    }

    fn notices(&self) -> broadcast::Receiver<Heard> {
        self.notices.subscribe()
    }

    fn hear_acks(&self, writer: u64) {
        self.notices.hear_acks(writer);
    }

    async fn renew_membership(&self, member: u64, lease: Duration, join: bool) -> Result<bool> {
        let (renewed, node) = membership::renew(&self.nodes, member, lease, join).await?;
        if renewed {
            // A renewal the promoted replica would not hold must not extend what the member serves.
            self.invalidator
                .replicate(&node, membership::slot(&self.nodes))
                .await?;
        }
        Ok(renewed)
    }

    async fn leave_membership(&self, member: u64) -> Result<()> {
        membership::leave(&self.nodes, member).await
    }

    async fn members(&self) -> Result<Members> {
        membership::members(&self.nodes).await
    }

    async fn revoke_member(&self, member: u64) -> Result<Duration> {
        let (left, node) = membership::revoke(&self.nodes, member).await?;
        // A revocation the promoted replica would not hold would let the member renew and serve on (and writers
        // that read it revoked would not wait for it there).
        self.invalidator
            .replicate(&node, membership::slot(&self.nodes))
            .await?;
        Ok(left)
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
