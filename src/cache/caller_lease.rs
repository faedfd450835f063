//! Leases for callers that fill the cache themselves (cache-aside without a loader): a read with
//! [`ReadOptions::lease`] that misses hands exactly one caller, across every replica, the key's lease; the others
//! wait for its fill. The holder loads from its own database and Sets the value with the token (a fill, refused
//! with LEASE_LOST when a write or an invalidation voided the lease meanwhile: `write`), or releases it.
//!
//! - A waiter is woken by the store's lease events (a fill or a release, on any replica) and otherwise polls every
//!   `lease_poll`; on each wake it reads the key, and takes the lease if it is free (released, voided by an
//!   invalidation, or run out after its holder died). A lease taken is checked against the store once more, so a
//!   fill that landed between the read and the take is answered instead of handed out to be loaded again.
//! - A waiter is answered by the entity's `lease_wait` or its own deadline, whichever comes first: with the lease
//!   if it is free by then, else found = false and no token (it loads for itself and does not cache).
//! - An expired value inside the entity's `stale_while_revalidate` window is served as STALE; the one caller that
//!   takes the lease gets a token with it, to refresh the key.
//!
//! [`ReadOptions::lease`]: super::types::ReadOptions::lease

use super::lease::Lease;
use super::shared::Core;
use super::types::{Lookup, Source};
use crate::Result;
use crate::keys::Key;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::broadcast;
use tracing::Instrument;

/// Answers a leased read that missed `key`: the key's lease, a fill that landed while waiting, or (the wait ran
/// out with the lease held elsewhere) a plain miss.
pub(super) async fn on_miss(
    core: Arc<Core>,
    key: Key,
    wait_until: Option<Instant>,
) -> Result<Lookup> {
    let policy_wait = Instant::now() + core.policies.for_key(&key).lease_wait;
    let deadline = wait_until.map_or(policy_wait, |until| until.min(policy_wait));
    // Subscribe before the first look at the lease, so a fill between the two cannot be missed.
    let mut events = core.store.lease_events();
    loop {
        if let Some(lease) = Lease::try_take(&core, &key).await? {
            return Ok(hand_out_unless_filled(&core, &key, Untold(Some(lease))).await);
        }
        if Instant::now() >= deadline {
            metrics::counter!("cachecoord_lease_wait_timeouts_total").increment(1);
            tracing::debug!(key = %core.shown(&key), "lease wait ran out; answering a miss without a lease");
            return Ok(Lookup::miss());
        }
        wait_for_event(&core, &key, &mut events, deadline)
            .instrument(tracing::info_span!("lease_wait"))
            .await;
        if let Some(filled) = core.fresh_entry(&key).await {
            return Ok(Lookup::found_or_negative(&filled, Source::Coalesced));
        }
    }
}

/// Answers a leased read that found `key` expired inside its stale-while-revalidate window: the stale value for
/// everyone, and the lease too for the one caller that takes it.
pub(super) async fn on_stale(core: Arc<Core>, key: Key, stale: Lookup) -> Lookup {
    match Lease::try_take(&core, &key).await {
        Ok(Some(lease)) => {
            let mut lease = Untold(Some(lease));
            match core.fresh_entry(&key).await {
                // Refreshed since the read: nothing to refresh.
                Some(fresh) => {
                    lease.give_back().await;
                    Lookup::found_or_negative(&fresh, Source::Hit)
                }
                None => Lookup {
                    lease_token: lease.hand_out(),
                    ..stale
                },
            }
        }
        // Someone is refreshing it already; or the store failed to say, and the stale value still stands.
        Ok(None) | Err(_) => stale,
    }
}

/// Hands `lease` out as a miss, unless the key was filled between the caller's read and the take: then the fill
/// is the answer and the lease goes back.
async fn hand_out_unless_filled(core: &Arc<Core>, key: &Key, mut lease: Untold) -> Lookup {
    if let Some(filled) = core.fresh_entry(key).await {
        lease.give_back().await;
        return Lookup::found_or_negative(&filled, Source::Coalesced);
    }
    metrics::counter!("cachecoord_caller_leases_total").increment(1);
    Lookup {
        lease_token: lease.hand_out(),
        ..Lookup::miss()
    }
}

/// A lease taken for a caller and not yet handed out. If the call ends before it is (the caller's deadline or
/// disconnect drops the read mid-way), the lease is given back at once, in the background, instead of leaving
/// every other caller to wait out its TTL.
struct Untold(Option<Lease>);

impl Untold {
    fn hand_out(&mut self) -> Option<bytes::Bytes> {
        self.0.take().map(Lease::hand_out)
    }

    async fn give_back(&mut self) {
        if let Some(lease) = self.0.take() {
            lease.release().await;
        }
    }
}

impl Drop for Untold {
    fn drop(&mut self) {
        if let Some(lease) = self.0.take() {
            tokio::spawn(lease.release());
        }
    }
}

/// Waits until a fill or release of `key` is announced, the safety poll fires, or `deadline` comes.
async fn wait_for_event(
    core: &Core,
    key: &Key,
    events: &mut broadcast::Receiver<Arc<str>>,
    deadline: Instant,
) {
    metrics::counter!("cachecoord_lease_waits_total").increment(1);
    let wake = (Instant::now() + core.read_through.lease_poll).min(deadline);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(announced) if &*announced != key.as_str() => continue,
                // No more events: the poll alone wakes us.
                Err(broadcast::error::RecvError::Closed) => {
                    tokio::time::sleep_until(wake.into()).await;
                    return;
                }
                // Ours, or events were lost (lagged): look now.
                _ => return,
            },
            () = tokio::time::sleep_until(wake.into()) => return,
        }
    }
}
