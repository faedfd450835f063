//! Strict near-cache mode (`near_cache = "strict"`): an acknowledged write means no replica's near-cache serves the
//! older value afterwards (Chubby's cache leases).
//!
//! Every replica with a strict policy is a near-cache *member*: it holds a lease in the store (`MemberLease` is
//! its own view of it) and serves strict keys from its near-cache only while that lease runs, counted on its own
//! monotonic clock from when it *sent* the renewal, minus a margin, so it always stops before the store's view of
//! the lease ends. A strict write sends one stamped notice (writer id, sequence number), then reads the members
//! and waits, for each other member, for its acknowledgement of that sequence number (`Pending`). A member that
//! does not acknowledge within the ack timeout is revoked (it can no longer renew) and the writer waits out what
//! its lease still ran when revoked, or for a late acknowledgement. A paused, partitioned or dead member therefore
//! delays a write by at most the ack timeout plus one lease, and never makes it stale.
//!
//! Costs per strict write: one publish, one membership read and one acknowledgement message per member (members
//! batch their acknowledgements per writer), never a round trip per member per key.

use crate::Result;
use crate::store::{Acks, Members, Stamp, Store};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// This member's lease as it sees it: strict keys are served only before its end.
pub(super) struct MemberLease {
    base: Instant,
    /// Nanoseconds after `base` when this member stops serving strict keys; 0 without a lease.
    ends: AtomicU64,
}

impl MemberLease {
    pub(super) fn new() -> MemberLease {
        MemberLease {
            base: Instant::now(),
            ends: AtomicU64::new(0),
        }
    }

    /// Whether strict keys may be served now.
    pub(super) fn serving(&self) -> bool {
        let ends = self.ends.load(Ordering::Acquire);
        ends != 0 && (self.base.elapsed().as_nanos() as u64) < ends
    }

    /// Records a renewal sent at `sent` and granted for `lease`: serving until `sent + lease - margin`.
    pub(super) fn granted(&self, sent: Instant, lease: Duration, margin: Duration) {
        let ends = (sent + lease.saturating_sub(margin)).saturating_duration_since(self.base);
        self.ends
            .store((ends.as_nanos() as u64).max(1), Ordering::Release);
    }

    /// No lease any more: stops serving strict keys at once.
    pub(super) fn end(&self) {
        self.ends.store(0, Ordering::Release);
    }
}

/// The writer's side: its strict notices still waiting, and which members acknowledged each.
#[derive(Default)]
pub(super) struct Pending {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, watch::Sender<HashSet<u64>>>>,
}

impl Pending {
    /// Registers a new strict notice of `writer` (before it is sent, so no acknowledgement is missed).
    pub(super) fn begin(self: &Arc<Self>, writer: u64) -> Waiting {
        let seq = self.next.fetch_add(1, Ordering::AcqRel) + 1;
        let (sender, acked) = watch::channel(HashSet::new());
        self.lock().insert(seq, sender);
        Waiting {
            pending: self.clone(),
            stamp: Stamp { writer, seq },
            acked,
        }
    }

    /// Records acknowledgements addressed to this writer.
    pub(super) fn acked(&self, acks: &Acks) {
        let waiting = self.lock();
        for seq in &acks.seqs {
            if let Some(sender) = waiting.get(seq) {
                sender.send_modify(|acked| {
                    acked.insert(acks.member);
                });
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, watch::Sender<HashSet<u64>>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One strict notice in flight; forgotten when dropped.
pub(super) struct Waiting {
    pending: Arc<Pending>,
    stamp: Stamp,
    acked: watch::Receiver<HashSet<u64>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.stamp.seq);
    }
}

impl Waiting {
    /// The stamp to send the notice with.
    pub(super) fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// Waits until every member other than the writer acknowledged the notice or can no longer serve strict keys.
    /// Call after the notice was sent: a member that joins later reads the store only after joining, so after the
    /// write, and needs no wait. A member another writer revoked may still serve until its lease ends, so it is
    /// waited out too (or its acknowledgement).
    pub(super) async fn confirmed(self, store: &dyn Store, ack_timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let Members { live, revoked } = store.members().await?;
        let writer = self.stamp.writer;
        let revoked = revoked
            .into_iter()
            .filter(|(member, _)| *member != writer && !live.contains(member))
            .map(|(member, left)| self.acked_within(member, left));
        let live = live
            .iter()
            .filter(|&&member| member != writer)
            .map(|&member| self.one(store, member, ack_timeout));
        futures::future::join(
            futures::future::try_join_all(live),
            futures::future::join_all(revoked),
        )
        .await
        .0?;
        metrics::histogram!("cachecoord_near_strict_wait_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn one(&self, store: &dyn Store, member: u64, ack_timeout: Duration) -> Result<()> {
        let mut acked = self.acked.clone();
        let acknowledged = acked.wait_for(|acked| acked.contains(&member));
        if let Ok(Ok(_)) = tokio::time::timeout(ack_timeout, acknowledged).await {
            return Ok(());
        }
        // Silent: take away its right to renew, then wait out what its lease still runs (an acknowledgement
        // arriving meanwhile also settles it: the member applied the notice).
        let left = store.revoke_member(member).await?;
        metrics::counter!("cachecoord_near_members_revoked_total").increment(1);
        tracing::info!(
            member,
            ?left,
            "near-cache member did not acknowledge a strict notice: revoked"
        );
        self.acked_within(member, left).await;
        Ok(())
    }

    /// Until `member` acknowledges the notice or `left` has passed (its lease is over).
    async fn acked_within(&self, member: u64, left: Duration) {
        let mut acked = self.acked.clone();
        let acknowledged = acked.wait_for(|acked| acked.contains(&member));
        let _ = tokio::time::timeout(left, acknowledged).await;
    }
}

/// Sends this member's acknowledgements, batched per writer, until every sender is gone.
pub(super) async fn send_acks(
    member: u64,
    store: Arc<dyn Store>,
    mut applied: mpsc::UnboundedReceiver<Stamp>,
) {
    while let Some(first) = applied.recv().await {
        let mut per_writer: HashMap<u64, Vec<u64>> = HashMap::new();
        per_writer.entry(first.writer).or_default().push(first.seq);
        while let Ok(stamp) = applied.try_recv() {
            per_writer.entry(stamp.writer).or_default().push(stamp.seq);
        }
        for (writer, seqs) in per_writer {
            let acks = crate::store::Notice::Acks(Acks {
                member,
                writer,
                seqs,
            });
            // Lost acknowledgements only make the writer revoke this member and wait out its lease.
            if let Err(error) = store.publish(&acks).await {
                tracing::debug!(%error, "near-cache acknowledgements not sent");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_ends_its_margin_before_the_granted_time() {
        let lease = MemberLease::new();
        assert!(!lease.serving());
        lease.granted(
            Instant::now(),
            Duration::from_secs(60),
            Duration::from_secs(1),
        );
        assert!(lease.serving());
        let long_ago = Instant::now() - Duration::from_millis(10);
        lease.granted(
            long_ago,
            Duration::from_millis(20),
            Duration::from_millis(10),
        );
        assert!(
            !lease.serving(),
            "sent 10 ms ago, 20 ms lease, 10 ms margin"
        );
        lease.granted(Instant::now(), Duration::from_secs(60), Duration::ZERO);
        lease.end();
        assert!(!lease.serving());
    }

    #[tokio::test]
    async fn a_write_waits_for_each_member_or_its_lease() {
        let store: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::new(1 << 20));
        let (writer, quick, silent) = (1, 2, 3);
        let joining = Instant::now();
        for (member, lease) in [(writer, 60_000), (quick, 60_000), (silent, 300)] {
            let lease = Duration::from_millis(lease);
            assert!(store.renew_membership(member, lease, true).await.unwrap());
        }
        let pending = Arc::new(Pending::default());
        let waiting = pending.begin(writer);
        let seq = waiting.stamp().seq;
        pending.acked(&Acks {
            member: quick,
            writer,
            seqs: vec![seq],
        });
        waiting
            .confirmed(store.as_ref(), Duration::from_millis(20))
            .await
            .unwrap();
        // The silent member's lease (300 ms from its join) had to lapse; it was revoked and cannot renew.
        assert!(joining.elapsed() >= Duration::from_millis(300));
        assert_eq!(store.members().await.unwrap().live.len(), 2);
        let renewed = store.renew_membership(silent, Duration::from_millis(300), false);
        assert!(!renewed.await.unwrap());
        assert!(pending.lock().is_empty(), "a settled wait is forgotten");
    }
}
