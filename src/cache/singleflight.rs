//! Singleflight inside one replica: concurrent misses for a key join one in-flight load, and a key is refreshed
//! in the background by at most one task at a time.
//!
//! A load runs in its own task, so a caller that gives up (deadline) does not cancel it for the others. What the
//! load does (lease, load, fill) is the caller's business: this file only keeps the registry.
//!
//! A caller may take a flight's answer only if the answer was read (from the source or the store) after the
//! caller's own request began. An older answer (a load that waited out a lease and read for itself, a voided load
//! out of retries, a stale stand-in, a fallback load, a fill read before the caller arrived) may predate an
//! invalidation the caller saw acknowledged: the caller then joins the key's next flight instead. Callers that
//! arrive while a flight loads still share it when it fills: a fill lands only if no invalidation came after its
//! lease was taken, and the next flight finds that fill in the store rather than loading again.

use super::types::{Flown, Lookup, SharedResult, Source};
use crate::Error;
use crate::keys::Key;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tracing::Instrument;

type Flight = Shared<BoxFuture<'static, SharedResult>>;

/// Loads in flight in this replica, one per key, plus keys being refreshed in the background.
#[derive(Default)]
pub(super) struct Flights {
    /// Shared with the flights' tasks, which remove themselves when they end.
    running: Arc<Mutex<HashMap<Key, Flight>>>,
    /// Shared with the refresh tasks, which remove their key when they end.
    refreshing: Arc<Mutex<HashSet<Key>>>,
}

impl Flights {
    /// Answers from the key's flight in this replica (joined, or started as the future `start` makes), for a
    /// request that began at `since`: a joined flight whose answer is older than `since` is not taken, and the
    /// key's next flight is joined instead. A caller that joined someone else's load answers
    /// [`Source::Coalesced`] where the leader answers [`Source::Loaded`].
    pub(super) async fn join(
        &self,
        key: Key,
        since: Instant,
        start: impl Fn() -> BoxFuture<'static, SharedResult> + Send + Sync + 'static,
    ) -> crate::Result<Lookup> {
        let start = Arc::new(start);
        loop {
            let (flight, leader) = self.flight(&key, &start);
            let Flown { mut lookup, as_of } = flight.await.map_err(Error::Shared)?;
            if leader || as_of >= since {
                if !leader && lookup.source == Source::Loaded {
                    lookup.source = Source::Coalesced;
                }
                return Ok(lookup);
            }
            // Too old for this caller. The flight has ended and left the registry (it leaves before its answer
            // is out), so the next round joins a newer flight or starts one.
        }
    }

    /// The key's running flight, or a new one started by `start` (then `true`: this caller leads it).
    fn flight(
        &self,
        key: &Key,
        start: &Arc<impl Fn() -> BoxFuture<'static, SharedResult> + Send + Sync + 'static>,
    ) -> (Flight, bool) {
        let mut running = lock(&self.running);
        if let Some(flight) = running.get(key) {
            return (flight.clone(), false);
        }
        let registry = self.running.clone();
        let flight_key = key.clone();
        let start = start.clone();
        // Removed however the flight ends (done, panicked, aborted, or dropped before it ever ran): a dead flight
        // must not answer for its key forever.
        let landing = OnDrop(move || {
            lock(&registry).remove(&flight_key);
        });
        // The flight runs in the span of the call that started it, so its store and loader calls show up in
        // that caller's trace.
        let flight = async move {
            let _landing = landing;
            start().await
        };
        let task = tokio::spawn(flight.in_current_span());
        let failed_key = key.to_string();
        let flight = async move {
            task.await.unwrap_or_else(|join| {
                Err(Arc::new(Error::LoaderFailed {
                    key: failed_key,
                    source: join.into(),
                }))
            })
        }
        .boxed()
        .shared();
        running.insert(key.clone(), flight.clone());
        (flight, true)
    }

    /// Marks `key` as refreshing in the background, unless it already is; the mark lasts as long as the
    /// returned guard.
    pub(super) fn begin_refresh(&self, key: &Key) -> Option<Refreshing> {
        if !lock(&self.refreshing).insert(key.clone()) {
            return None;
        }
        Some(Refreshing {
            registry: self.refreshing.clone(),
            key: key.clone(),
        })
    }
}

/// One background refresh of one key; dropping it (however the refresh ends) lets the key be refreshed again.
pub(super) struct Refreshing {
    registry: Arc<Mutex<HashSet<Key>>>,
    key: Key,
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        lock(&self.registry).remove(&self.key);
    }
}

/// Locks a flight map; a panic elsewhere cannot leave it inconsistent (each step is one insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs its closure when dropped: cleanup that must happen however a task ends.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
