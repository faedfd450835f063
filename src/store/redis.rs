//! Redis through fred: one server or a Redis Cluster, chosen by the URL scheme.
//!
//! On a cluster, multi-key commands must stay inside one hash slot (MGET across slots fails with CROSSSLOT), so
//! batches are grouped by slot and the per-slot commands are sent concurrently; fred pipelines them on each
//! primary's connection, so a batch costs about one round trip per primary. Pattern deletion SCANs every primary
//! (never KEYS) and UNLINKs page by page, so Redis stays responsive while a large pattern is deleted.
//!
//! A key's lease lives at `{<key>}:lease`. Keys never contain braces, so the hash tag is exactly the key: the
//! lease always sits in its key's slot, which lets one Lua script check the lease and write the value atomically
//! on any cluster topology, and no caller key can collide with a lease key.

use super::{LeaseToken, Store, StoreWrite};
use crate::config::Config;
use crate::keys::{Key, Pattern};
use crate::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::prelude::{
    Builder, ClientLike, Config as FredConfig, Error as FredError, ErrorKind, EventInterface,
    Expiration, KeysInterface, PubsubInterface, ReconnectPolicy,
};
use fred::types::scan::{ScanResult, Scanner};
use fred::types::scripts::Script;
use futures::{Stream, StreamExt, future};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::broadcast;

/// Channel on which every replica announces filled and released leases.
const LEASE_CHANNEL: &str = "cachecoord:lease-events";
/// Lease events buffered for slow local subscribers before the oldest are dropped (waiters also poll).
const EVENT_BUFFER: usize = 4096;

/// Set, voiding the lease. With ARGV[3] = "1", refuse when the stored entry's version (envelope bytes 11..19,
/// big-endian, see `cache::entry`) exceeds ARGV[4] (8 big-endian bytes). Compared byte by byte: Lua's string
/// `<` follows the server's collation locale, not byte order.
static SET_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
if ARGV[3] == '1' then
  local cur = redis.call('GET', KEYS[1])
  if cur and string.len(cur) >= 23 and string.byte(cur, 1) == 204 and string.byte(cur, 2) == 2 then
    for i = 1, 8 do
      local old, new = string.byte(cur, 11 + i), string.byte(ARGV[4], i)
      if old > new then return 0 end
      if old < new then break end
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
return 1",
    )
});

/// Fill: write only while ARGV[1] holds the lease, then release it.
static FILL_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0",
    )
});

/// Release the lease if ARGV[1] still holds it.
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0",
    )
});

/// Invalidate keys of one slot: KEYS alternates lease, key. Each lease is voided before its key is deleted, in
/// one atomic step, so no fill can land in between. Answers how many keys existed.
static DELETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
local n = 0
for i = 1, #KEYS, 2 do
  redis.call('DEL', KEYS[i])
  n = n + redis.call('UNLINK', KEYS[i + 1])
end
return n",
    )
});

/// Pages of SCAN results, from one server or from every primary of a cluster.
type ScanPages = Pin<Box<dyn Stream<Item = Result<ScanResult, FredError>> + Send>>;

/// A Redis server or cluster.
pub struct RedisStore {
    client: Client,
    /// Kept so its connection (and the task forwarding its messages) lives as long as the store.
    _subscriber: SubscriberClient,
    events: broadcast::Sender<Arc<str>>,
    clustered: bool,
    scan_count: u32,
    command_timeout: Duration,
}

impl RedisStore {
    /// Connects to `url` and waits, up to the configured connect timeout, until Redis answers.
    pub async fn connect(url: &str, config: &Config) -> Result<RedisStore> {
        let fred_config = FredConfig::from_url(url).map_err(backend_error)?;
        let clustered = fred_config.server.is_clustered();
        let command_timeout = Duration::from_millis(config.store.redis_command_timeout_ms);
        let connect_timeout = Duration::from_millis(config.store.redis_connect_timeout_ms);
        let mut builder = Builder::from_config(fred_config);
        builder
            .with_performance_config(|perf| perf.default_command_timeout = command_timeout)
            .with_connection_config(|conn| {
                conn.connection_timeout = connect_timeout;
                conn.internal_command_timeout = command_timeout;
            })
            // Reconnect forever with capped backoff: Redis coming back must not need a cachecoord restart.
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
        let client = builder.build().map_err(backend_error)?;
        let subscriber = builder.build_subscriber_client().map_err(backend_error)?;
        let connecting = async {
            client.init().await?;
            subscriber.init().await?;
            subscriber.manage_subscriptions();
            subscriber.subscribe(LEASE_CHANNEL).await
        };
        tokio::time::timeout(connect_timeout, connecting)
            .await
            .map_err(|elapsed| Error::BackendUnavailable {
                source: format!("no connection to {url} after {elapsed}").into(),
            })?
            .map_err(backend_error)?;

        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let forward = events.clone();
        let mut messages = subscriber.message_rx();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => {
                        if let Some(key) = message.value.as_str() {
                            let _ = forward.send(Arc::from(&*key));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(RedisStore {
            client,
            _subscriber: subscriber,
            events,
            clustered,
            scan_count: config.invalidation.scan_count,
            command_timeout,
        })
    }

    /// Groups item indices by hash slot; on a standalone server everything is one group.
    fn by_slot<'k>(&self, keys: impl Iterator<Item = &'k str>) -> BTreeMap<u16, Vec<usize>> {
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (index, key) in keys.enumerate() {
            let slot = if self.clustered {
                fred::util::redis_keyslot(key.as_bytes())
            } else {
                0
            };
            groups.entry(slot).or_default().push(index);
        }
        groups
    }

    /// Voids the leases of `keys` and deletes them: one script per hash slot, all slots concurrently.
    async fn delete_keys(&self, keys: &[&str]) -> Result<u64> {
        let groups = self.by_slot(keys.iter().copied());
        let deletes = groups.values().map(|indices| {
            let script_keys: Vec<String> = indices
                .iter()
                .flat_map(|&i| [lease_key(keys[i]), keys[i].to_owned()])
                .collect();
            DELETE_SCRIPT.evalsha_with_reload::<u64, _, _>(&self.client, script_keys, ())
        });
        let counts = future::try_join_all(deletes).await.map_err(backend_error)?;
        Ok(counts.into_iter().sum())
    }

    /// Unlinks `keys` as they are (used for lease keys found by SCAN), one UNLINK per slot.
    async fn unlink_keys(&self, keys: &[&str]) -> Result<u64> {
        let groups = self.by_slot(keys.iter().copied());
        let unlinks = groups.values().map(|indices| {
            let group: Vec<&str> = indices.iter().map(|&i| keys[i]).collect();
            self.client.unlink::<u64, _>(group)
        });
        let counts = future::try_join_all(unlinks).await.map_err(backend_error)?;
        Ok(counts.into_iter().sum())
    }

    fn scan(&self, pattern: String) -> ScanPages {
        let count = Some(self.scan_count);
        if self.clustered {
            Box::pin(self.client.scan_cluster(pattern, count, None))
        } else {
            Box::pin(self.client.scan(pattern, count, None))
        }
    }

    /// Runs `apply` on every page of keys matching `pattern`, on every primary; answers the sum of its results.
    async fn for_each_scan_page<F, Fut>(&self, pattern: String, apply: F) -> Result<u64>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: Future<Output = Result<u64>>,
    {
        let mut pages = self.scan(pattern);
        let mut total = 0;
        // fred's SCAN stream does not apply the command timeout and stalls while Redis is down: bound each page.
        let stalled = || Error::BackendUnavailable {
            source: format!("SCAN got no page within {:?}", self.command_timeout).into(),
        };
        while let Some(page) = tokio::time::timeout(self.command_timeout, pages.next())
            .await
            .map_err(|_| stalled())?
        {
            let mut page = page.map_err(backend_error)?;
            if let Some(found) = page.take_results() {
                let keys: Vec<String> = found
                    .iter()
                    .filter_map(|key| key.as_str().map(str::to_owned))
                    .collect();
                if !keys.is_empty() {
                    total += apply(keys).await?;
                }
            }
            page.next();
        }
        Ok(total)
    }

    async fn announce(&self, key: &str) {
        // Best effort: waiters poll as well, so a lost announcement only costs them a poll interval.
        if let Err(error) = self.client.publish::<(), _, _>(LEASE_CHANNEL, key).await {
            tracing::debug!(%error, key, "could not announce a lease event");
        }
    }
}

/// Where `key`'s lease lives: hash-tagged by the whole key, so it shares the key's slot.
fn lease_key(key: &str) -> String {
    format!("{{{key}}}:lease")
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

#[async_trait]
impl Store for RedisStore {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        let groups = self.by_slot(keys.iter().map(Key::as_str));
        let reads = groups.into_values().map(|indices| async move {
            let group: Vec<&str> = indices.iter().map(|&i| keys[i].as_str()).collect();
            // A one-key MGET still answers an array, so one code path serves every group size.
            let values: Vec<Option<Bytes>> = self.client.mget(group).await?;
            Ok::<_, FredError>((indices, values))
        });
        let mut answers = vec![None; keys.len()];
        for (indices, values) in future::try_join_all(reads).await.map_err(backend_error)? {
            for (index, value) in indices.into_iter().zip(values) {
                answers[index] = value;
            }
        }
        Ok(answers)
    }

    async fn set_many(&self, writes: &[StoreWrite]) -> Result<Vec<bool>> {
        let sets = writes.iter().map(|write| {
            let keys = vec![write.key.as_str().to_owned(), lease_key(write.key.as_str())];
            let version = write.version.unwrap_or(0).to_be_bytes();
            let args: Vec<fred::types::Value> = vec![
                write.value.clone().into(),
                ttl_ms(write.ttl).into(),
                if write.version.is_some() { "1" } else { "0" }.into(),
                Bytes::copy_from_slice(&version).into(),
            ];
            SET_SCRIPT.evalsha_with_reload::<i64, _, _>(&self.client, keys, args)
        });
        let applied = future::try_join_all(sets).await.map_err(backend_error)?;
        Ok(applied.into_iter().map(|n| n == 1).collect())
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64> {
        let keys: Vec<&str> = keys.iter().map(Key::as_str).collect();
        self.delete_keys(&keys).await
    }

    async fn delete_matching(&self, pattern: &Pattern) -> Result<u64> {
        // Leases first: a fill that lands after its lease is gone is refused, and one that landed before is
        // deleted by the key scan that follows.
        self.for_each_scan_page(lease_key(pattern.as_str()), |leases| async move {
            let leases: Vec<&str> = leases.iter().map(String::as_str).collect();
            self.unlink_keys(&leases).await
        })
        .await?;
        self.for_each_scan_page(pattern.as_str().to_owned(), |keys| async move {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            self.delete_keys(&keys).await
        })
        .await
    }

    async fn try_lease(&self, key: &Key, token: LeaseToken, ttl: Duration) -> Result<bool> {
        let taken: Option<String> = self
            .client
            .set(
                lease_key(key.as_str()),
                token.to_string(),
                Some(Expiration::PX(ttl_ms(ttl))),
                Some(fred::types::SetOptions::NX),
                false,
            )
            .await
            .map_err(backend_error)?;
        Ok(taken.is_some())
    }

    async fn fill(&self, token: LeaseToken, write: &StoreWrite) -> Result<bool> {
        let keys = vec![write.key.as_str().to_owned(), lease_key(write.key.as_str())];
        let args: Vec<fred::types::Value> = vec![
            token.to_string().into(),
            write.value.clone().into(),
            ttl_ms(write.ttl).into(),
        ];
        let filled: i64 = FILL_SCRIPT
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(backend_error)?;
        if filled == 1 {
            self.announce(write.key.as_str()).await;
        }
        Ok(filled == 1)
    }

    async fn release_lease(&self, key: &Key, token: LeaseToken) -> Result<()> {
        let released: i64 = RELEASE_SCRIPT
            .evalsha_with_reload(
                &self.client,
                vec![lease_key(key.as_str())],
                token.to_string(),
            )
            .await
            .map_err(backend_error)?;
        if released == 1 {
            self.announce(key.as_str()).await;
        }
        Ok(())
    }

    fn lease_events(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    async fn ping(&self) -> Result<()> {
        self.client.ping::<()>(None).await.map_err(backend_error)
    }
}

/// Connection, timeout and cluster-topology errors mean "try again later" (UNAVAILABLE); anything else is a
/// backend failure cachecoord cannot explain.
fn backend_error(error: FredError) -> Error {
    let transient = matches!(
        error.kind(),
        ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Cluster
            | ErrorKind::Routing
            | ErrorKind::Backpressure
    ) || ["CLUSTERDOWN", "TRYAGAIN", "LOADING", "MASTERDOWN"]
        .iter()
        .any(|code| error.details().starts_with(code));
    let source = Box::new(error);
    if transient {
        Error::BackendUnavailable { source }
    } else {
        Error::Backend { source }
    }
}
