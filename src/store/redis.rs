//! Redis through fred: one server or a Redis Cluster, chosen by the URL scheme.
//!
//! Commands go to the node owning their hash slot through that node's own client (`redis_nodes`), so one failed
//! or paused primary cannot stall the others. Multi-key commands must stay inside one hash slot, so batches are
//! grouped by slot and the per-slot commands are sent concurrently; each node's client pipelines them on its
//! connection, so a batch costs about one round trip per primary. Pattern deletion never uses KEYS.
//!
//! Invalidations are acknowledged only once a replica has them (`WAIT`), so a primary that dies right after an
//! acknowledged invalidation cannot hand the old value to the replica promoted in its place.
//!
//! Keys are laid out by group (`redis_layout`): a group's values, its index of keys, its epoch and its leases
//! share one hash slot. That makes the common pattern `user:123:*` one atomic script on one primary whose cost is
//! the group's size, not the keyspace's. Patterns that span groups (`user:*:posts`) SCAN every primary instead,
//! a page at a time, so Redis stays responsive while a large pattern is deleted.
//!
//! Eviction can drop bookkeeping (the chart sets `allkeys-lru`); it may then invalidate more than asked, never
//! less: every value carries its group's epoch and is served only while the epoch key still holds it; a write
//! that finds the group's index missing starts a new epoch (so values the lost index knew of are dropped), and so
//! does a pattern invalidation that finds the index missing.

use super::redis_layout::{self as layout, Found};
use super::redis_nodes::{Node, NodeSettings, Nodes};
use super::{Heard, LeaseToken, Notice, Store, StoreWrite};
use crate::config::Config;
use crate::keys::{Key, Pattern};
use crate::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, ClientLike, Config as FredConfig, Error as FredError, ErrorKind, EventInterface,
    KeysInterface, PubsubInterface, ReconnectPolicy, ServerInterface,
};
use fred::types::Value;
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
/// Channel carrying near-cache notices (invalidated keys and patterns, heartbeats).
const NOTICE_CHANNEL: &str = "cachecoord:notices";
/// Lease events buffered for slow local subscribers before the oldest are dropped (waiters also poll).
const EVENT_BUFFER: usize = 4096;
/// Bytes of group epoch in front of every stored value.
const EPOCH_LEN: usize = 8;

/// Shared by the write scripts: `extend` lengthens a bookkeeping key's TTL to cover a new member; `epoch_for`
/// answers the group epoch a write must carry, starting a new one (ARGV `fresh`) when the epoch or the index is
/// missing, since a missing index may have forgotten live values.
const WRITE_HELPERS: &str = r"
local function extend(key, ttl)
  local left = redis.call('PTTL', key)
  if left == -1 or left < ttl then redis.call('PEXPIRE', key, ttl) end
end
local function epoch_for(epoch_key, index_key, fresh, ttl)
  local epoch = redis.call('GET', epoch_key)
  if not epoch or redis.call('EXISTS', index_key) == 0 then
    epoch = fresh
    redis.call('SET', epoch_key, epoch, 'PX', ttl)
  else
    extend(epoch_key, ttl)
  end
  return epoch
end
local function store(k, member, value, ttl, fresh)
  local epoch = epoch_for(k[5], k[3], fresh, ttl)
  redis.call('SET', k[1], epoch .. value, 'PX', ttl)
  redis.call('SADD', k[3], member)
  extend(k[3], ttl)
  redis.call('DEL', k[2])
  redis.call('SREM', k[4], member)
end
";

/// Set. KEYS: value, lease, index, lease set, epoch. ARGV: envelope, ttl ms, versioned ("1"/"0"), version (8 B
/// big-endian), member, fresh epoch. A versioned write is refused when the live stored entry's version
/// (envelope bytes 11..19, see `cache::entry`, after the 8-byte epoch) is higher; compared byte by byte because
/// Lua's string `<` follows the server's collation locale.
static SET_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(format!(
        r"{WRITE_HELPERS}
local ttl = tonumber(ARGV[2])
if ARGV[3] == '1' then
  local cur = redis.call('GET', KEYS[1])
  local epoch = redis.call('GET', KEYS[5])
  if cur and epoch and string.len(cur) >= 31 and string.sub(cur, 1, 8) == epoch
      and string.byte(cur, 9) == 204 and string.byte(cur, 10) == 2 then
    for i = 1, 8 do
      local old, new = string.byte(cur, 19 + i), string.byte(ARGV[4], i)
      if old > new then return 0 end
      if old < new then break end
    end
  end
end
store(KEYS, ARGV[5], ARGV[1], ttl, ARGV[6])
return 1"
    ))
});

/// Fill: write only while ARGV[1] holds the lease, then release it. KEYS as SET_SCRIPT. ARGV: token, envelope,
/// ttl ms, member, fresh epoch.
static FILL_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(format!(
        r"{WRITE_HELPERS}
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
-- A lease missing from the group's lease set (evicted) could not have been voided by a pattern: refuse.
if redis.call('SISMEMBER', KEYS[4], ARGV[4]) == 0 then return 0 end
store(KEYS, ARGV[4], ARGV[2], tonumber(ARGV[3]), ARGV[5])
return 1"
    ))
});

/// Take a lease. KEYS: lease, lease set. ARGV: token, ttl ms, member.
static LEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('SADD', KEYS[2], ARGV[3])
local left = redis.call('PTTL', KEYS[2])
if left == -1 or left < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 1",
    )
});

/// Release a lease still held by ARGV[1]. KEYS: lease, lease set. ARGV: token, member.
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1",
    )
});

/// Invalidate keys of one slot. KEYS: per key, value, lease, index, lease set. ARGV: per key, its member. Each
/// lease is voided before its value is deleted, in one atomic step, so no fill can land in between. Answers how
/// many values existed.
static DELETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
local n = 0
for i = 1, #ARGV do
  local b = (i - 1) * 4
  redis.call('DEL', KEYS[b + 2])
  redis.call('SREM', KEYS[b + 4], ARGV[i])
  n = n + redis.call('UNLINK', KEYS[b + 1])
  redis.call('SREM', KEYS[b + 3], ARGV[i])
end
return n",
    )
});

/// Invalidate the keys of one group matching a pattern. KEYS: index, lease set, epoch. ARGV: glob over members
/// (`*` and `?` only; matched by `glob`, a linear-time port of `keys::glob_match`, never Lua's backtracking
/// patterns), group tag, fresh epoch. Voids matching leases first, then deletes matching values. If the index is
/// gone (evicted, or every member expired) while the epoch lives, the whole group is dropped by a new epoch:
/// more than asked, never less. Cost: the size of the group, whatever the size of the keyspace.
static GROUP_PATTERN_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
local function glob(p, s)
  local pi, si, star, mark = 1, 1, 0, 0
  while si <= #s do
    local c = string.sub(p, pi, pi)
    if c == '*' then
      star, mark, pi = pi, si, pi + 1
    elseif pi <= #p and (c == '?' or c == string.sub(s, si, si)) then
      pi, si = pi + 1, si + 1
    elseif star > 0 then
      mark = mark + 1
      pi, si = star + 1, mark
    else
      return false
    end
  end
  while string.sub(p, pi, pi) == '*' do pi = pi + 1 end
  return pi > #p
end
local pattern, tag = ARGV[1], ARGV[2]
for _, member in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if glob(pattern, member) then
    redis.call('DEL', tag .. '#lease' .. member)
    redis.call('SREM', KEYS[2], member)
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('SET', KEYS[3], ARGV[3], 'KEEPTTL') end
  return 0
end
local n = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if glob(pattern, member) then
    n = n + redis.call('UNLINK', tag .. member)
    redis.call('SREM', KEYS[1], member)
  end
end
return n",
    )
});

/// Pages of SCAN results, from one server or from every primary of a cluster.
type ScanPages = Pin<Box<dyn Stream<Item = Result<ScanResult, FredError>> + Send>>;

/// A Redis server or cluster.
pub struct RedisStore {
    nodes: Arc<Nodes>,
    /// Kept so its connection (and the task forwarding its messages) lives as long as the store.
    _subscriber: SubscriberClient,
    events: broadcast::Sender<Arc<str>>,
    notices: broadcast::Sender<Heard>,
    clustered: bool,
    scan_count: u32,
    command_timeout: Duration,
    /// Replicas that must acknowledge an invalidation (capped by the replicas each primary has).
    replica_acks: usize,
    replica_ack_timeout: Duration,
}

impl RedisStore {
    /// Connects to `url` and waits, up to the configured connect timeout, until Redis answers.
    pub async fn connect(url: &str, config: &Config) -> Result<RedisStore> {
        let mut fred_config = FredConfig::from_url(url).map_err(backend_error)?;
        apply_credentials(&mut fred_config, &config.store)?;
        let clustered = fred_config.server.is_clustered();
        let command_timeout = Duration::from_millis(config.store.redis_command_timeout_ms);
        let connect_timeout = Duration::from_millis(config.store.redis_connect_timeout_ms);
        let settings = NodeSettings {
            command_timeout,
            connect_timeout,
            refresh_every: Duration::from_millis(config.store.redis_topology_refresh_ms),
            breaker_failures: config.read_through.breaker_failures,
            breaker_cooldown: Duration::from_millis(config.read_through.breaker_cooldown_ms),
        };
        let nodes = Nodes::connect(fred_config.clone(), settings).await?;
        // Pub/sub keeps fred's own client (cluster-aware, resubscribing after reconnects): a stall there delays
        // notices, which the near-cache detects by its heartbeat, never data commands.
        let mut builder = Builder::from_config(fred_config);
        builder
            .with_connection_config(|conn| {
                conn.connection_timeout = connect_timeout;
                conn.internal_command_timeout = command_timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2));
        let subscriber = builder.build_subscriber_client().map_err(backend_error)?;
        let connecting = async {
            subscriber.init().await?;
            subscriber.manage_subscriptions();
            subscriber
                .subscribe(vec![LEASE_CHANNEL, NOTICE_CHANNEL])
                .await
        };
        tokio::time::timeout(connect_timeout, connecting)
            .await
            .map_err(|elapsed| Error::BackendUnavailable {
                source: format!("no connection to {url} after {elapsed}").into(),
            })?
            .map_err(backend_error)?;

        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (notices, _) = broadcast::channel(EVENT_BUFFER);
        let (forward_events, forward_notices) = (events.clone(), notices.clone());
        let mut messages = subscriber.message_rx();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => {
                        let Some(text) = message.value.as_str() else {
                            continue;
                        };
                        if &*message.channel == LEASE_CHANNEL {
                            let _ = forward_events.send(Arc::from(&*text));
                        } else if let Some(notice) = decode_notice(&text) {
                            let _ = forward_notices.send(Heard::Notice(notice));
                        }
                    }
                    // Missed messages are missed notices: the near-cache must not trust itself.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = forward_notices.send(Heard::Lost);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        // A subscriber connection that ends (or errs) may have dropped notices.
        let lost = notices.clone();
        let mut errors = subscriber.error_rx();
        tokio::spawn(async move {
            while let Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) = errors.recv().await {
                let _ = lost.send(Heard::Lost);
            }
        });
        Ok(RedisStore {
            nodes,
            _subscriber: subscriber,
            events,
            notices,
            clustered,
            scan_count: config.invalidation.scan_count,
            command_timeout,
            replica_acks: config.store.invalidation_replica_acks,
            replica_ack_timeout: Duration::from_millis(config.store.replica_ack_timeout_ms),
        })
    }

    /// Groups item indices by hash slot (of their group tag); on a standalone server everything is one group.
    fn by_slot<'k>(&self, keys: impl Iterator<Item = &'k str>) -> BTreeMap<u16, Vec<usize>> {
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (index, key) in keys.enumerate() {
            let slot = if self.clustered {
                fred::util::redis_keyslot(layout::split(key).0.as_bytes())
            } else {
                0
            };
            groups.entry(slot).or_default().push(index);
        }
        groups
    }

    /// Voids the leases of `keys` and deletes them: one script per hash slot, all slots concurrently. With
    /// `replicate`, each slot's deletion is also acknowledged by its replicas before this answers.
    async fn delete_keys(&self, keys: &[&str], replicate: bool) -> Result<u64> {
        let groups = self.by_slot(keys.iter().copied());
        let deletes = groups.iter().map(|(&slot, indices)| {
            let mut script_keys = Vec::with_capacity(indices.len() * 4);
            let mut members = Vec::with_capacity(indices.len());
            for &i in indices {
                let (group, rest) = layout::split(keys[i]);
                script_keys.extend([
                    layout::value_key(keys[i]),
                    layout::lease_key(keys[i]),
                    layout::index_key(group),
                    layout::leases_key(group),
                ]);
                members.push(rest.to_owned());
            }
            async move {
                let node = self.nodes.for_slot(slot)?;
                let deleted = DELETE_SCRIPT
                    .evalsha_with_reload::<u64, _, _>(&node.invalidator, script_keys, members)
                    .await;
                let deleted = self.nodes.observe(&node, deleted)?;
                if replicate {
                    self.replicate(&node).await?;
                }
                Ok::<_, Error>(deleted)
            }
        });
        let counts = all(deletes).await?;
        Ok(counts.into_iter().sum())
    }

    /// Waits until the replicas of `node` (up to `replica_acks`) have every write made so far on its
    /// connection. Fewer acknowledgements within the timeout is UNAVAILABLE: the invalidation reached the primary
    /// but might not survive its failover, so the caller should retry (invalidations are idempotent).
    async fn replicate(&self, node: &Node) -> Result<()> {
        let wanted = self.replica_acks.min(self.nodes.replicas_of(node));
        if wanted == 0 {
            return Ok(());
        }
        let timeout_ms = i64::try_from(self.replica_ack_timeout.as_millis()).unwrap_or(i64::MAX);
        let wanted_i64 = i64::try_from(wanted).unwrap_or(i64::MAX);
        let acked: i64 = node
            .invalidator
            .wait(wanted_i64, timeout_ms)
            .await
            .map_err(backend_error)?;
        if acked >= wanted_i64 {
            Ok(())
        } else {
            metrics::counter!("cachecoord_invalidations_unreplicated_total").increment(1);
            Err(Error::BackendUnavailable {
                source: format!(
                    "{} applied the invalidation but {acked} of {wanted} replicas acknowledged it within {:?}; \
                     retry it",
                    node.name(),
                    self.replica_ack_timeout
                )
                .into(),
            })
        }
    }

    /// Pattern invalidation within one group: one script on the group's slot.
    async fn delete_in_group(&self, group: &str, rest_pattern: &str) -> Result<u64> {
        let keys = vec![
            layout::index_key(group),
            layout::leases_key(group),
            layout::epoch_key(group),
        ];
        let args: Vec<Value> = vec![
            rest_pattern.into(),
            layout::tag(group).into(),
            fresh_epoch(),
        ];
        let node = self.nodes.for_slot(self.slot_of(group))?;
        let deleted = GROUP_PATTERN_SCRIPT
            .evalsha_with_reload(&node.invalidator, keys, args)
            .await;
        let deleted = self.nodes.observe(&node, deleted)?;
        self.replicate(&node).await?;
        Ok(deleted)
    }

    /// The hash slot of a group (0 on a standalone server).
    fn slot_of(&self, group: &str) -> u16 {
        if self.clustered {
            fred::util::redis_keyslot(group.as_bytes())
        } else {
            0
        }
    }

    /// SCAN pages from every primary in turn. A primary that cannot be reached fails the scan.
    fn scan(&self, pattern: String) -> ScanPages {
        let count = Some(self.scan_count);
        let primaries = self.nodes.primaries();
        Box::pin(
            futures::stream::iter(primaries)
                .flat_map(move |node| Box::pin(node.client.scan(pattern.clone(), count, None))),
        )
    }

    /// Runs `apply` on every page of Redis keys matching `pattern`, on every primary; answers the sum.
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

    /// Pattern invalidation across groups: SCAN every primary (twice: leases first, so a fill racing the scan is
    /// refused or deleted) and delete what matches. Cost: the keyspace of the pattern's entity.
    async fn delete_by_scan(&self, pattern: &Pattern) -> Result<u64> {
        let entity = pattern.as_str().split(':').next().unwrap_or_default();
        let redis_pattern = if entity.contains(['*', '?']) || !pattern.as_str().contains(':') {
            "{*".to_owned()
        } else {
            format!("{{{entity}:*")
        };
        self.for_each_scan_page(redis_pattern.clone(), |page| async move {
            let leases: Vec<String> = page
                .iter()
                .filter_map(|redis_key| match layout::classify(redis_key) {
                    Found::Lease(key) if pattern.matches(&key) => Some(key),
                    _ => None,
                })
                .collect();
            for key in &leases {
                let (group, rest) = layout::split(key);
                let node = self.nodes.for_slot(self.slot_of(group))?;
                let voided: Result<(), FredError> = async {
                    node.invalidator
                        .del::<(), _>(layout::lease_key(key))
                        .await?;
                    fred::interfaces::SetsInterface::srem::<(), _, _>(
                        &node.invalidator,
                        layout::leases_key(group),
                        rest,
                    )
                    .await
                }
                .await;
                self.nodes.observe(&node, voided)?;
            }
            Ok(0)
        })
        .await?;
        let deleted = self
            .for_each_scan_page(redis_pattern, |page| async move {
                let keys: Vec<String> = page
                    .iter()
                    .filter_map(|redis_key| match layout::classify(redis_key) {
                        Found::Value(key) if pattern.matches(&key) => Some(key),
                        _ => None,
                    })
                    .collect();
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                if keys.is_empty() {
                    Ok(0)
                } else {
                    self.delete_keys(&keys, false).await
                }
            })
            .await?;
        // One acknowledgement per primary covers every page deleted on it.
        let primaries = self.nodes.primaries();
        all(primaries.iter().map(|node| self.replicate(node))).await?;
        Ok(deleted)
    }

    async fn announce(&self, key: &str) {
        // Best effort: waiters poll as well, so a lost announcement only costs them a poll interval.
        let published = match self.nodes.any() {
            Ok(node) => node
                .client
                .publish::<(), _, _>(LEASE_CHANNEL, key)
                .await
                .map_err(backend_error),
            Err(error) => Err(error),
        };
        if let Err(error) = published {
            tracing::debug!(%error, key, "could not announce a lease event");
        }
    }

    /// Runs a write script (SET_SCRIPT or FILL_SCRIPT) whose KEYS are the five of `key`'s layout.
    async fn write_script(&self, script: &Script, key: &Key, args: Vec<Value>) -> Result<bool> {
        let (group, _) = layout::split(key.as_str());
        let keys = vec![
            layout::value_key(key.as_str()),
            layout::lease_key(key.as_str()),
            layout::index_key(group),
            layout::leases_key(group),
            layout::epoch_key(group),
        ];
        let node = self.nodes.for_slot(self.slot_of(group))?;
        let written = script
            .evalsha_with_reload::<i64, _, _>(&node.client, keys, args)
            .await;
        Ok(self.nodes.observe(&node, written)? == 1)
    }
}

/// Runs every per-slot call to completion, then answers the first error, if any. Never `try_join_all`: dropping
/// the other calls at the first error would cancel a breaker's probe in flight, and its outcome would be lost.
async fn all<T>(
    calls: impl IntoIterator<Item = impl Future<Output = Result<T>>>,
) -> Result<Vec<T>> {
    future::join_all(calls).await.into_iter().collect()
}

/// Notices on the wire: a tag line, then one item per line (keys and patterns hold no whitespace).
fn encode_notice(notice: &Notice) -> String {
    match notice {
        Notice::Keys(keys) => format!("k\n{}", keys.join("\n")),
        Notice::Pattern(pattern) => format!("p\n{pattern}"),
        Notice::Heartbeat(replica, seq) => format!("h\n{replica}\n{seq}"),
    }
}

fn decode_notice(text: &str) -> Option<Notice> {
    let mut lines = text.split('\n');
    match lines.next()? {
        "k" => Some(Notice::Keys(lines.map(str::to_owned).collect())),
        "p" => Some(Notice::Pattern(lines.next()?.to_owned())),
        "h" => Some(Notice::Heartbeat(
            lines.next()?.parse().ok()?,
            lines.next()?.parse().ok()?,
        )),
        _ => None,
    }
}

/// 8 random bytes, offered to a script in case the group needs a new epoch.
fn fresh_epoch() -> Value {
    Bytes::copy_from_slice(&rand::random::<[u8; EPOCH_LEN]>()).into()
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn member(key: &Key) -> String {
    layout::split(key.as_str()).1.to_owned()
}

#[async_trait]
impl Store for RedisStore {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        let groups = self.by_slot(keys.iter().map(Key::as_str));
        let reads = groups.into_iter().map(|(slot, indices)| async move {
            let node = self.nodes.for_slot(slot)?;
            // One MGET per slot: the values, then the epochs of their groups (same slot by construction).
            let mut epochs: Vec<&str> = indices
                .iter()
                .map(|&i| layout::split(keys[i].as_str()).0)
                .collect();
            epochs.sort_unstable();
            epochs.dedup();
            let mut redis_keys: Vec<String> = indices
                .iter()
                .map(|&i| layout::value_key(keys[i].as_str()))
                .collect();
            redis_keys.extend(epochs.iter().map(|group| layout::epoch_key(group)));
            let values = node.client.mget::<Vec<Option<Bytes>>, _>(redis_keys).await;
            let mut values = self.nodes.observe(&node, values)?;
            let epoch_values = values.split_off(indices.len());
            let epoch_of = |group: &str| {
                epochs
                    .binary_search(&group)
                    .ok()
                    .and_then(|at| epoch_values[at].clone())
            };
            let answers: Vec<Option<Bytes>> = indices
                .iter()
                .zip(values)
                .map(|(&i, value)| {
                    let value = value?;
                    let epoch = epoch_of(layout::split(keys[i].as_str()).0)?;
                    (value.len() >= EPOCH_LEN && value[..EPOCH_LEN] == epoch[..])
                        .then(|| value.slice(EPOCH_LEN..))
                })
                .collect();
            Ok::<_, Error>((indices, answers))
        });
        let mut answers = vec![None; keys.len()];
        for (indices, values) in all(reads).await? {
            for (index, value) in indices.into_iter().zip(values) {
                answers[index] = value;
            }
        }
        Ok(answers)
    }

    async fn set_many(&self, writes: &[StoreWrite]) -> Result<Vec<bool>> {
        let sets = writes.iter().map(|write| {
            let version = write.version.unwrap_or(0).to_be_bytes();
            let args: Vec<Value> = vec![
                write.value.clone().into(),
                ttl_ms(write.ttl).into(),
                if write.version.is_some() { "1" } else { "0" }.into(),
                Bytes::copy_from_slice(&version).into(),
                member(&write.key).into(),
                fresh_epoch(),
            ];
            self.write_script(&SET_SCRIPT, &write.key, args)
        });
        all(sets).await
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64> {
        let keys: Vec<&str> = keys.iter().map(Key::as_str).collect();
        self.delete_keys(&keys, true).await
    }

    async fn delete_matching(&self, pattern: &Pattern) -> Result<u64> {
        match pattern.group_scope() {
            Some((group, rest)) => self.delete_in_group(group, rest).await,
            None => self.delete_by_scan(pattern).await,
        }
    }

    async fn try_lease(&self, key: &Key, token: LeaseToken, ttl: Duration) -> Result<bool> {
        let keys = vec![
            layout::lease_key(key.as_str()),
            layout::leases_key(layout::split(key.as_str()).0),
        ];
        let args: Vec<Value> = vec![
            token.to_string().into(),
            ttl_ms(ttl).into(),
            member(key).into(),
        ];
        let node = self
            .nodes
            .for_slot(self.slot_of(layout::split(key.as_str()).0))?;
        let taken = LEASE_SCRIPT
            .evalsha_with_reload::<i64, _, _>(&node.client, keys, args)
            .await;
        Ok(self.nodes.observe(&node, taken)? == 1)
    }

    async fn fill(&self, token: LeaseToken, write: &StoreWrite) -> Result<bool> {
        let args: Vec<Value> = vec![
            token.to_string().into(),
            write.value.clone().into(),
            ttl_ms(write.ttl).into(),
            member(&write.key).into(),
            fresh_epoch(),
        ];
        let filled = self.write_script(&FILL_SCRIPT, &write.key, args).await?;
        if filled {
            self.announce(write.key.as_str()).await;
        }
        Ok(filled)
    }

    async fn release_lease(&self, key: &Key, token: LeaseToken) -> Result<()> {
        let keys = vec![
            layout::lease_key(key.as_str()),
            layout::leases_key(layout::split(key.as_str()).0),
        ];
        let args: Vec<Value> = vec![token.to_string().into(), member(key).into()];
        let node = self
            .nodes
            .for_slot(self.slot_of(layout::split(key.as_str()).0))?;
        let released = RELEASE_SCRIPT
            .evalsha_with_reload::<i64, _, _>(&node.client, keys, args)
            .await;
        if self.nodes.observe(&node, released)? == 1 {
            self.announce(key.as_str()).await;
        }
        Ok(())
    }

    fn lease_events(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    async fn publish(&self, notice: &Notice) -> Result<()> {
        let node = self.nodes.any()?;
        let published = node
            .client
            .publish::<(), _, _>(NOTICE_CHANNEL, encode_notice(notice))
            .await;
        self.nodes.observe(&node, published)
    }

    fn notices(&self) -> broadcast::Receiver<Heard> {
        self.notices.subscribe()
    }

    async fn ping(&self) -> Result<()> {
        let node = self.nodes.any()?;
        let pong = node.client.ping::<()>(None).await;
        self.nodes.observe(&node, pong)
    }
}

/// The ACL user, password and TLS trust configured apart from the URL (so the password can come from a Secret).
fn apply_credentials(
    fred_config: &mut FredConfig,
    store: &crate::config::StoreConfig,
) -> Result<()> {
    if let Some(username) = &store.redis_username {
        fred_config.username = Some(username.clone());
    }
    if let Some(password) = &store.redis_password {
        fred_config.password = Some(password.clone());
    }
    if fred_config.tls.is_some() || store.redis_tls_ca_file.is_some() {
        let tls = crate::tls::client_config(store.redis_tls_ca_file.as_deref()).map_err(|e| {
            Error::Backend {
                source: format!("Redis TLS: {e:#}").into(),
            }
        })?;
        fred_config.tls = Some(fred::types::config::TlsConnector::from(tls).into());
    }
    Ok(())
}

/// Connection, timeout and cluster-topology errors mean "try again later" (UNAVAILABLE); anything else is a
/// backend failure cachecoord cannot explain.
pub(super) fn backend_error(error: FredError) -> Error {
    let transient = matches!(
        error.kind(),
        ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Cluster
            | ErrorKind::Routing
            | ErrorKind::Backpressure
    ) || [
        "CLUSTERDOWN",
        "TRYAGAIN",
        "LOADING",
        "MASTERDOWN",
        "READONLY",
        // The slot moved (a failover the slot map has not caught up with yet).
        "MOVED",
        "ASK",
        // A WAIT cut short, or refused, because its primary was just demoted.
        "UNBLOCKED",
        "WAIT cannot be used with replica",
    ]
    .iter()
    // Anywhere in the message: Redis wraps an error raised inside a script ("ERR Error running script ...").
    .any(|code| error.details().contains(code));
    let source = Box::new(error);
    if transient {
        Error::BackendUnavailable { source }
    } else {
        Error::Backend { source }
    }
}
