//! Singleflight inside one replica: concurrent misses for a key join one in-flight load, and a key is refreshed
//! in the background by at most one task at a time.
//!
//! A load runs in its own task, so a caller that gives up (deadline) does not cancel it for the others. What the
//! load does (lease, load, fill) is the caller's business: this file only keeps the registry.
//!
//! A caller joins only a flight that started after its own request began. An older flight may have read the
//! source before an invalidation this caller saw acknowledged (a load that waited out a lease and reads for
//! itself, a voided load out of retries, a stale stand-in, a fallback load): its value is too old to answer
//! with. Such a caller starts a new flight, which takes the key's place in the registry; the older flight still
//! answers its own callers. The new flight is no extra load across replicas: it meets the older flight's lease
//! and waits for its fill, which the store has already checked against every invalidation.

use super::types::{Lookup, SharedResult, Source};
use crate::Error;
use crate::keys::Key;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tracing::Instrument;

type Flight = Shared<BoxFuture<'static, SharedResult>>;

/// The newest flight of a key.
struct Running {
    /// Tells this flight from a newer one of the same key, so an ending flight removes only itself.
    id: u64,
    /// When the flight started: every source read it makes comes after this.
    started: Instant,
    flight: Flight,
}

/// Loads in flight in this replica, the newest per key, plus keys being refreshed in the background.
#[derive(Default)]
pub(super) struct Flights {
    /// Shared with the flights' tasks, which remove themselves when they end.
    running: Arc<Mutex<HashMap<Key, Running>>>,
    next_id: AtomicU64,
    /// Shared with the refresh tasks, which remove their key when they end.
    refreshing: Arc<Mutex<HashSet<Key>>>,
}

impl Flights {
    /// Joins the key's flight in this replica if it started at or after `since` (when the caller's request
    /// began), or starts one as the future `start` makes. A caller that joined someone else's load answers
    /// [`Source::Coalesced`] where the leader answers [`Source::Loaded`].
    pub(super) async fn join(
        &self,
        key: Key,
        since: Instant,
        start: impl FnOnce() -> BoxFuture<'static, SharedResult> + Send + 'static,
    ) -> crate::Result<Lookup> {
        let (flight, leader) = {
            let mut running = lock(&self.running);
            match running.get(&key) {
                Some(newest) if newest.started >= since => (newest.flight.clone(), false),
                _ => {
                    let registry = self.running.clone();
                    let flight_key = key.clone();
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    // The flight runs in the span of the call that started it, so its store and loader
                    // calls show up in that caller's trace.
                    let flight = async move {
                        // Removed however the flight ends (done, panicked, aborted): a dead flight must not
                        // answer for its key forever. A newer flight of the key stays.
                        let _landing = OnDrop(|| {
                            let mut running = lock(&registry);
                            if running.get(&flight_key).is_some_and(|r| r.id == id) {
                                running.remove(&flight_key);
                            }
                        });
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
                    let started = Instant::now();
                    running.insert(
                        key,
                        Running {
                            id,
                            started,
                            flight: flight.clone(),
                        },
                    );
                    (flight, true)
                }
            }
        };
        let mut lookup = flight.await.map_err(Error::Shared)?;
        if !leader && lookup.source == Source::Loaded {
            lookup.source = Source::Coalesced;
        }
        Ok(lookup)
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
