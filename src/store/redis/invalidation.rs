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
use super::migrations::{self, Whereabouts};
use super::node::Node;
use super::nodes::{Nodes, all};
use super::redirect;
use super::scripts;
use crate::keys::Pattern;
use crate::{Error, Result};
use fred::prelude::{ClientLike, Error as FredError, LuaInterface, ServerInterface};
use fred::types::config::Options;
use fred::types::config::Server;
use fred::types::scan::{ScanResult, Scanner};
use futures::{Stream, StreamExt};
use std::collections::BTreeSet;
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

/// Passes of a cross-group pattern (the first over every primary, the others over the primaries keys may have
/// moved to during the one before) before it gives up with UNAVAILABLE while slots keep moving.
const MAX_SCAN_PASSES: usize = 6;

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
                let (deleted, node) = self.run(slot, &call).await?;
                Ok::<_, Error>((deleted, (node, slot)))
            }
        });
        let (counts, touched): (Vec<u64>, Touched) = all(deletes).await?.into_iter().unzip();
        Ok((counts.into_iter().sum(), touched))
    }

    /// Runs `call` in `slot`, following redirections (`redirect`); answers its number and the node that ran it.
    async fn run(&self, slot: u16, call: &scripts::Call) -> Result<(u64, Arc<Node>)> {
        redirect::in_slot(&self.nodes, slot, |client| async move {
            call.run::<u64>(&client).await
        })
        .await
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
    pub(super) async fn replicate(&self, node: &Node, slot: u16) -> Result<()> {
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
        // The fence key must be in a slot the node serves: the caller's slot may have moved on (or been asked
        // for: an importing slot), so try the slots the map gives the node next.
        let mut slots = vec![slot];
        slots.extend(
            self.nodes
                .slots_of(node)
                .into_iter()
                .filter(|s| *s != slot)
                .take(3),
        );
        let mut written = Err(None);
        for fence_slot in slots {
            match client
                .eval::<(), _, _, _>(scripts::FENCE, layout::fence_key(fence_slot), FENCE_TTL_MS)
                .await
            {
                Ok(()) => {
                    written = Ok(());
                    break;
                }
                Err(error) if redirect::redirect_of(&error, &node.server).is_some() => {
                    written = Err(Some(error));
                }
                Err(error) => return Err(failed(error)),
            }
        }
        if let Err(error) = written {
            self.nodes.refresh_soon();
            return Err(match error {
                Some(error) => failed(error),
                None => format!("{}: no slot to fence in; retry", node.name()),
            });
        }
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
        let read = scripts::group_members(group);
        let read = &read;
        // While the slot migrates, each step runs wherever Redis sends it: every node that ran one is fenced.
        let (members, node) = redirect::in_slot(&self.nodes, slot, |client| async move {
            read.run::<Vec<String>>(&client).await
        })
        .await?;
        let mut touched: Touched = vec![(node, slot)];
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
            let (count, node) = self.run(slot, &call).await?;
            deleted += count;
            touched.push((node, slot));
        }
        let (_, node) = self
            .run(slot, &scripts::renew_unindexed_epoch(group))
            .await?;
        touched.push((node, slot));
        self.replicate_all(touched).await?;
        Ok(deleted)
    }

    /// Pattern invalidation across groups: SCAN every primary and delete what matches, then SCAN again the
    /// primaries that may have received keys from a scanned one while it ran (slots migrating: `migrations`),
    /// until a pass sees none arrive. Cost: the keyspace of the pattern's entity, plus `CLUSTER NODES` on every
    /// primary before and after each pass, plus the receivers' keyspace again while slots move.
    async fn delete_by_scan(&self, pattern: &Pattern) -> Result<u64> {
        // Where voids and deletes ran: those nodes are fenced, not whichever are primaries at the end.
        let touched: Mutex<Touched> = Mutex::new(Vec::new());
        let mut deleted = 0;
        let mut only: Option<BTreeSet<Server>> = None;
        for _ in 0..MAX_SCAN_PASSES {
            let before = Whereabouts::read(&self.nodes).await?;
            let scanned: BTreeSet<Server> = match only.take() {
                Some(receivers) => receivers,
                None => self
                    .nodes
                    .primaries()
                    .iter()
                    .map(|node| node.server.clone())
                    .chain(before.primaries.iter().cloned())
                    .collect(),
            };
            deleted += self.scan_pass(pattern, &scanned, &touched).await?;
            let after = Whereabouts::read(&self.nodes).await?;
            let receivers = migrations::receivers(&before, &after, &scanned);
            if receivers.is_empty() {
                // One fence per node covers every page deleted on it.
                self.replicate_all(touched.into_inner().unwrap_or_else(|e| e.into_inner()))
                    .await?;
                return Ok(deleted);
            }
            only = Some(receivers);
        }
        Err(unavailable(format!(
            "slots kept moving during {MAX_SCAN_PASSES} scans of the pattern's keys; retry"
        )))
    }

    /// One pass of a cross-group pattern over the primaries `scanned`: leases first, so a fill racing the scan is
    /// refused or deleted, then values. Answers how many values it deleted.
    async fn scan_pass(
        &self,
        pattern: &Pattern,
        scanned: &BTreeSet<Server>,
        touched: &Mutex<Touched>,
    ) -> Result<u64> {
        let redis_pattern = layout::scan_pattern(pattern);
        let touch = |more: Touched| {
            touched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(more)
        };
        let voided = self
            .for_each_scan_page(scanned, redis_pattern.clone(), |page| async move {
                let mut deleted = 0;
                for key in matching(&page, pattern, |found| match found {
                    Found::Lease(key) => Some(key),
                    _ => None,
                }) {
                    let (count, node) = self.void_lease(&key).await?;
                    deleted += count;
                    touch(vec![node]);
                }
                Ok(deleted)
            })
            .await?;
        let deleted = self
            .for_each_scan_page(scanned, redis_pattern, |page| async move {
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
        Ok(voided + deleted)
    }

    /// Voids `key`'s lease, with the delete script (in one step, its value, which matches the pattern too, goes
    /// with it); answers how many values that deleted and where it ran.
    async fn void_lease(&self, key: &str) -> Result<(u64, (Arc<Node>, u16))> {
        let slot = self.nodes.slot_of(layout::group(key));
        let (deleted, node) = self.run(slot, &scripts::delete([key].into_iter())).await?;
        Ok((deleted, (node, slot)))
    }

    /// SCAN pages from each primary of `scanned` in turn. A primary that cannot be reached fails the scan.
    async fn scan(&self, scanned: &BTreeSet<Server>, pattern: String) -> Result<ScanPages> {
        let count = Some(self.settings.scan_count);
        let mut primaries = Vec::with_capacity(scanned.len());
        for server in scanned {
            primaries.push(self.nodes.redirected_to(server).await?);
        }
        Ok(Box::pin(futures::stream::iter(primaries).flat_map(
            move |node| Box::pin(node.client.scan(pattern.clone(), count, None)),
        )))
    }

    /// Runs `apply` on every page of Redis keys matching `pattern`, on every primary; answers the sum.
    async fn for_each_scan_page<F, Fut>(
        &self,
        scanned: &BTreeSet<Server>,
        pattern: String,
        apply: F,
    ) -> Result<u64>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: Future<Output = Result<u64>>,
    {
        let within = self.settings.page_timeout;
        let mut pages = self.scan(scanned, pattern).await?;
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
