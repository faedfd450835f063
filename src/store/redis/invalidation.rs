//! Invalidation: deleting keys, deleting what a pattern matches, and fencing both with `WAIT` so an acknowledged
//! invalidation survives its primary's failover.
//!
//! Deletes run on each node's own client, like every other command, so they apply at once even while a replica
//! lags. Then the node's fence (`fence`) acknowledges them: a fence write and `WAIT` on the node's invalidation
//! connection, shared by the invalidations running at once. A fence that times out answers UNAVAILABLE but does
//! not count against the node's breaker: a lagging replica is not a failing primary.
//!
//! A pattern inside one group (`user:123:*`) reads the group's members from its primary, matches them here and
//! deletes the matching keys exactly, in short scripts. Patterns that span groups (`user:*:posts`) SCAN every
//! primary instead, a page at a time. Either way Redis stays responsive while a large or hostile pattern is
//! deleted; KEYS is never used.

use super::errors::{backend_error, unavailable};
use super::layout::{self, Found};
use super::nodes::{Node, Nodes, all};
use super::scripts;
use crate::keys::Pattern;
use crate::{Error, Result};
use fred::interfaces::SetsInterface;
use fred::prelude::{ClientLike, Error as FredError, KeysInterface, LuaInterface, ServerInterface};
use fred::types::config::Options;
use fred::types::scan::{ScanResult, Scanner};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pages of SCAN results, from one server or from every primary of a cluster.
type ScanPages = Pin<Box<dyn Stream<Item = Result<ScanResult, FredError>> + Send>>;

/// How invalidations are paged and fenced.
#[derive(Clone, Debug)]
pub(super) struct InvalidationSettings {
    /// Keys asked of each SCAN page.
    pub(super) scan_count: u32,
    /// How long one SCAN page may take (fred's SCAN stream applies no command timeout of its own).
    pub(super) page_timeout: Duration,
    /// Replicas that must acknowledge an invalidation (0: no fence).
    pub(super) replica_acks: usize,
    /// How long to wait for them.
    pub(super) replica_ack_timeout: Duration,
    /// How long any other command may take (the fence write; added to the wait's own timeout).
    pub(super) command_timeout: Duration,
}

/// Keys per delete script of a group pattern: bounds how long one script holds the primary.
const DELETE_CHUNK: usize = 256;

/// Nodes that ran an invalidation's writes, each with a slot its writes used.
type Touched = Vec<(Arc<Node>, u16)>;

/// Fence keys outlive any wait for them; they only need to exist long enough to be replicated.
const FENCE_TTL_MS: i64 = 60_000;

/// Invalidates keys and patterns on the nodes of one deployment.
pub(super) struct Invalidator {
    nodes: Arc<Nodes>,
    settings: InvalidationSettings,
}

impl Invalidator {
    pub(super) fn new(nodes: Arc<Nodes>, settings: InvalidationSettings) -> Invalidator {
        // Exported at 0 from the start, so the unacknowledged-invalidations alert has a series.
        metrics::counter!("cachecoord_invalidations_unreplicated_total").increment(0);
        Invalidator { nodes, settings }
    }

    /// Voids the leases of `keys` and deletes them: one script per hash slot, all slots concurrently. With
    /// `replicate`, the deletes are then fenced on every node that ran them before this answers.
    pub(super) async fn delete_keys(&self, keys: &[&str], replicate: bool) -> Result<u64> {
        let (deleted, touched) = self.delete_by_slot(keys).await?;
        if replicate {
            self.replicate_all(touched).await?;
        }
        Ok(deleted)
    }

    /// Deletes `keys`, one script per hash slot; answers how many existed and where the deletes ran: the
    /// nodes to fence (whatever the slot map says by the time they are fenced).
    async fn delete_by_slot(&self, keys: &[&str]) -> Result<(u64, Touched)> {
        let slots = self
            .nodes
            .by_slot(keys.iter().map(|key| layout::group(key)));
        let deletes = slots.iter().map(|(&slot, indices)| {
            let call = scripts::delete(indices.iter().map(|&i| keys[i]));
            async move {
                let node = self.nodes.for_slot(slot)?;
                let deleted = call.run::<u64>(&node.client).await;
                let deleted = self.nodes.observe(&node, deleted)?;
                Ok::<_, Error>((deleted, (node, slot)))
            }
        });
        let (counts, touched): (Vec<u64>, Touched) = all(deletes).await?.into_iter().unzip();
        Ok((counts.into_iter().sum(), touched))
    }

    /// Fences each node of `touched` once, concurrently, with its fence key in a slot its deletes used.
    async fn replicate_all(&self, mut touched: Touched) -> Result<()> {
        touched.sort_by_key(|(node, _)| Arc::as_ptr(node));
        touched.dedup_by(|(a, _), (b, _)| Arc::ptr_eq(a, b));
        all(touched
            .iter()
            .map(|(node, slot)| self.replicate(node, *slot)))
        .await?;
        Ok(())
    }

    /// Voids the leases of, then deletes, every key matching `pattern`.
    pub(super) async fn delete_matching(&self, pattern: &Pattern) -> Result<u64> {
        match pattern.group_scope() {
            Some((group, _)) => self.delete_in_group(pattern, group).await,
            None => self.delete_by_scan(pattern).await,
        }
    }

    /// Waits until `replica_acks` replicas of `node` hold every write the node made before this call (the
    /// caller's deletes among them, made in `slot`). Fewer within the timeout is UNAVAILABLE: the invalidation
    /// reached the primary but might not survive its failover, so the caller should retry (invalidations are
    /// idempotent). The count wanted is the configured one, never lowered to the replicas the slot map lists: a
    /// young or degraded cluster may list none while a lagging replica can still be promoted.
    async fn replicate(&self, node: &Node, slot: u16) -> Result<()> {
        if self.settings.replica_acks == 0 {
            return Ok(());
        }
        node.fence
            .after_writes(|| self.fence(node, slot))
            .await
            .map_err(unavailable)
    }

    /// One fence on `node`: a write in `slot` (one the caller's deletes just used on this node, so it is served
    /// here even while other slots migrate), then `WAIT` for it, on the node's invalidation connection.
    async fn fence(&self, node: &Node, slot: u16) -> Result<(), String> {
        let InvalidationSettings {
            replica_acks: wanted,
            replica_ack_timeout,
            command_timeout,
            ..
        } = self.settings;
        let client = node.invalidator.with_options(&Options {
            timeout: Some(replica_ack_timeout + command_timeout),
            ..Options::default()
        });
        let failed = |error: FredError| {
            // A redirection means the slot map moved under us: look again before the retry.
            self.nodes.refresh_soon();
            format!("{}: {error}; retry", node.name())
        };
        client
            .eval::<(), _, _, _>(scripts::FENCE, layout::fence_key(slot), FENCE_TTL_MS)
            .await
            .map_err(failed)?;
        let timeout_ms = i64::try_from(replica_ack_timeout.as_millis()).unwrap_or(i64::MAX);
        let wanted_i64 = i64::try_from(wanted).unwrap_or(i64::MAX);
        let acked: i64 = client.wait(wanted_i64, timeout_ms).await.map_err(failed)?;
        if acked >= wanted_i64 {
            return Ok(());
        }
        metrics::counter!("cachecoord_invalidations_unreplicated_total").increment(1);
        Err(format!(
            "{} applied the invalidation but {acked} of {wanted} replicas acknowledged it within \
             {replica_ack_timeout:?} (the slot map lists {} for it); retry it",
            node.name(),
            self.nodes.replicas_of(node),
        ))
    }

    /// Pattern invalidation within one group. Its members (index, legacy index, lease set) are read, matched
    /// here rather than in a script — a hostile pattern against long keys costs this replica's CPU, not seconds
    /// of a Redis primary's single thread — and deleted exactly, `DELETE_CHUNK` keys per script (each voiding a
    /// key's lease and deleting its value in one step). Cost on Redis: one script reading the group's members
    /// (linear in the group's size, no matching), then short scripts of at most one chunk each.
    async fn delete_in_group(&self, pattern: &Pattern, group: &str) -> Result<u64> {
        let slot = self.nodes.slot_of(group);
        let node = self.nodes.for_slot(slot)?;
        let members = scripts::group_members(group)
            .run::<Vec<String>>(&node.client)
            .await;
        let members = self.nodes.observe(&node, members)?;
        let (pattern, prefix) = (pattern.clone(), group.to_owned());
        let matching = tokio::task::spawn_blocking(move || {
            let mut keys: Vec<String> = members
                .into_iter()
                .map(|member| format!("{prefix}{member}"))
                .filter(|key| pattern.matches(key))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            keys
        })
        .await
        .map_err(|e| Error::Backend {
            source: format!("matching a pattern failed: {e}").into(),
        })?;
        let mut deleted = 0;
        for chunk in matching.chunks(DELETE_CHUNK) {
            let call = scripts::delete(chunk.iter().map(String::as_str));
            deleted += self
                .nodes
                .observe(&node, call.run::<u64>(&node.client).await)?;
        }
        let renewed = scripts::renew_unindexed_epoch(group)
            .run::<i64>(&node.client)
            .await;
        self.nodes.observe(&node, renewed)?;
        self.replicate(&node, slot).await?;
        Ok(deleted)
    }

    /// Pattern invalidation across groups: SCAN every primary (twice: leases first, so a fill racing the scan is
    /// refused or deleted) and delete what matches. Cost: the keyspace of the pattern's entity.
    async fn delete_by_scan(&self, pattern: &Pattern) -> Result<u64> {
        let redis_pattern = layout::scan_pattern(pattern);
        // Where voids and deletes ran: those nodes are fenced, not whichever are primaries at the end.
        let touched: Mutex<Touched> = Mutex::new(Vec::new());
        let touch = |more: Touched| {
            touched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(more)
        };
        self.for_each_scan_page(redis_pattern.clone(), |page| async move {
            for key in matching(&page, pattern, |found| match found {
                Found::Lease(key) => Some(key),
                _ => None,
            }) {
                touch(vec![self.void_lease(&key).await?]);
            }
            Ok(0)
        })
        .await?;
        let deleted = self
            .for_each_scan_page(redis_pattern, |page| async move {
                let keys = matching(&page, pattern, |found| match found {
                    Found::Value(key) => Some(key),
                    _ => None,
                });
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                if keys.is_empty() {
                    return Ok(0);
                }
                let (deleted, nodes) = self.delete_by_slot(&keys).await?;
                touch(nodes);
                Ok(deleted)
            })
            .await?;
        // One fence per node covers every page deleted on it.
        self.replicate_all(touched.into_inner().unwrap_or_else(|e| e.into_inner()))
            .await?;
        Ok(deleted)
    }

    /// Voids `key`'s lease: deletes it and takes it out of its group's lease set; answers where that ran.
    async fn void_lease(&self, key: &str) -> Result<(Arc<Node>, u16)> {
        let (group, member) = layout::split(key);
        let slot = self.nodes.slot_of(group);
        let node = self.nodes.for_slot(slot)?;
        let voided: Result<(), FredError> = async {
            node.client.del::<(), _>(layout::lease_key(key)).await?;
            node.client
                .srem::<(), _, _>(layout::leases_key(group), member)
                .await
        }
        .await;
        self.nodes.observe(&node, voided)?;
        Ok((node, slot))
    }

    /// SCAN pages from every primary in turn. A primary that cannot be reached fails the scan.
    fn scan(&self, pattern: String) -> ScanPages {
        let count = Some(self.settings.scan_count);
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
        let within = self.settings.page_timeout;
        let mut pages = self.scan(pattern);
        let mut total = 0;
        // fred's SCAN stream does not apply the command timeout and stalls while Redis is down: bound each page.
        while let Some(page) = tokio::time::timeout(within, pages.next())
            .await
            .map_err(|_| unavailable(format!("SCAN got no page within {within:?}")))?
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
}

/// The keys of `page` that `pick` accepts and `pattern` matches.
fn matching(
    page: &[String],
    pattern: &Pattern,
    pick: impl Fn(Found) -> Option<String>,
) -> Vec<String> {
    page.iter()
        .filter_map(|redis_key| pick(layout::classify(redis_key)))
        .filter(|key| pattern.matches(key))
        .collect()
}
