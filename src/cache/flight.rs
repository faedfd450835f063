//! One key's load, coalesced in this replica and leased across replicas: take the lease (or wait for its
//! holder's fill), load, fill; load again when an invalidation voids the fill.
//!
//! - Only the lease holder loads; other replicas wait for the fill, woken by the store's lease events (pub/sub on
//!   Redis) with a short safety poll. A waiter that has waited `lease_wait` loads for itself and serves the
//!   value without caching it (availability over strictness, and the holder still owns the fill).
//! - A voided fill means a Set or an invalidation came after the load started. A Set's value is newer: it is
//!   served. Otherwise the flight loads again (up to `max_voided_retries`), so its waiters get a value at least
//!   as new as the invalidation.
//! - When the store fails while taking the lease, the key is loaded straight from the loader (FALLBACK).

use super::entry::Entry;
use super::lease::{Fill, Lease};
use super::load::{LoadedEntry, load_entry, load_fallback};
use super::policy::Policy;
use super::shared::Core;
use super::types::{Flown, Lookup, SharedResult, Source};
use crate::keys::Key;
use crate::loader::Loader;
use crate::{Error, Result};
use futures::FutureExt;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::broadcast;
use tracing::Instrument;

/// Joins (or starts) the single-key flight of `key` for a request that began at `since`; `stale` (the expired
/// entry the miss found) lets the flight look for a stand-in should the loader fail.
pub(super) async fn load_one(
    core: Arc<Core>,
    key: Key,
    stale: Option<Entry>,
    since: Instant,
) -> Result<Lookup> {
    let flying = core.clone();
    core.flights
        .join(key.clone(), since, move || {
            fly(flying.clone(), key.clone(), stale.clone()).boxed()
        })
        .await
}

/// The body of a flight: the key's load, by whichever protocol the configuration asks for.
async fn fly(core: Arc<Core>, key: Key, stale: Option<Entry>) -> SharedResult {
    let policy = core.policies.for_key(&key).clone();
    let Some((_, loader)) = core.loaders.for_key(&key) else {
        return Ok(Flown::new(Lookup::miss(), Instant::now()));
    };
    let flight = KeyFlight {
        loader: loader.clone(),
        core,
        key,
        policy,
    };
    if flight.core.read_through.leases {
        flight.leased(stale).await
    } else {
        flight.unleased(stale).await
    }
}

/// What one key's flight loads, and with which loader.
struct KeyFlight {
    core: Arc<Core>,
    key: Key,
    policy: Policy,
    loader: Arc<dyn Loader>,
}

/// How holding the lease ended.
enum Held {
    /// Answer with this.
    Settled(Flown),
    /// The fill was voided and no newer value is stored: load again (or serve this when out of retries).
    Voided(Flown),
}

/// How waiting for another replica's load ended.
enum Waited {
    Filled(Flown),
    Retry,
    TimedOut,
}

impl KeyFlight {
    /// Without leases: load and write, best effort (the value is served whether or not the write lands).
    async fn unleased(&self, stale: Option<Entry>) -> SharedResult {
        let loaded = self.load(stale).await?;
        if let Some(write) = &loaded.write {
            let _ = self.core.store.set_many(std::slice::from_ref(write)).await;
        }
        Ok(Flown::new(loaded.lookup, loaded.as_of))
    }

    /// Takes the lease and loads, or waits for whoever holds it; loads again when a fill is voided.
    async fn leased(&self, stale: Option<Entry>) -> SharedResult {
        let core = &self.core;
        let deadline = Instant::now() + self.policy.lease_wait;
        // Subscribe before the first look at the lease, so a fill between the two cannot be missed.
        let mut events = core.store.lease_events();
        let mut voided = 0;
        loop {
            match Lease::try_take(core, &self.key).await {
                Err(Error::BackendUnavailable { .. }) => {
                    return load_fallback(core, &self.key, &self.policy, self.loader.as_ref())
                        .await;
                }
                Err(error) => return Err(Arc::new(error)),
                Ok(Some(lease)) => match self.hold(lease, stale.clone()).await? {
                    Held::Settled(flown) => return Ok(flown),
                    Held::Voided(flown) => {
                        if voided == core.read_through.max_voided_retries {
                            return Ok(flown);
                        }
                        voided += 1;
                        tracing::debug!(key = %core.shown(&self.key), voided, "load voided by an invalidation; loading again");
                    }
                },
                Ok(None) => match self
                    .wait_for_fill(&mut events, deadline)
                    .instrument(tracing::info_span!("lease_wait"))
                    .await
                {
                    Waited::Filled(flown) => return Ok(flown),
                    Waited::Retry => {}
                    Waited::TimedOut => {
                        metrics::counter!("cachecoord_lease_wait_timeouts_total").increment(1);
                        tracing::warn!(key = %core.shown(&self.key), "lease wait timed out; loading without caching");
                        let loaded = self.load(stale).await?;
                        return Ok(Flown::new(loaded.lookup, loaded.as_of));
                    }
                },
            }
        }
    }

    /// Loads under `lease` and fills; the lease is filled or released on every path.
    async fn hold(&self, lease: Lease, stale: Option<Entry>) -> Result<Held, Arc<Error>> {
        // Someone may have filled the key between our miss and our lease (their lease was released by the fill):
        // look again before loading, or a key can be loaded twice.
        if let Some(filled) = self.fresh_entry().await {
            lease.release().await;
            return Ok(Held::Settled(filled.map_lookup(|entry| {
                Lookup::found_or_negative(entry, Source::Coalesced)
            })));
        }
        let loaded = match self.load(stale).await {
            Ok(loaded) => loaded,
            Err(error) => {
                lease.release().await;
                return Err(error);
            }
        };
        let answer = Flown::new(loaded.lookup, loaded.as_of);
        let Some(write) = loaded.write else {
            // Served stale on loader failure, or not cacheable: nothing to fill.
            lease.release().await;
            return Ok(Held::Settled(answer));
        };
        match lease.fill(&write).await {
            // Voided by a Set or an invalidation (or the lease ran out). A Set's value is newer than ours: serve
            // it. Otherwise load again, after the invalidation.
            Fill::Voided => match self.fresh_entry().await {
                Some(fresh) => {
                    Ok(Held::Settled(fresh.map_lookup(|entry| {
                        Lookup::from_entry(entry, Source::Coalesced)
                    })))
                }
                None => Ok(Held::Voided(answer)),
            },
            // A failed fill is served, just not cached.
            Fill::Written | Fill::Failed => Ok(Held::Settled(answer)),
            // The source answered an older row than a version already written (a lagging database replica, or
            // a writer that Set a version it did not commit): serving it would go back in time, and loading
            // again at once would only ask the same lagging source. The caller retries.
            Fill::Older => {
                tracing::warn!(
                    key = %self.core.shown(&self.key),
                    "loaded value refused: older than a version already written to the key"
                );
                Err(Arc::new(Error::LoaderFailed {
                    key: self.key.to_string(),
                    source: "the loader returned an older version than one already written to this key; retry"
                        .into(),
                }))
            }
        }
    }

    /// Waits until another replica's fill of the key is announced (or the safety poll fires) and looks again.
    async fn wait_for_fill(
        &self,
        events: &mut broadcast::Receiver<Arc<str>>,
        deadline: Instant,
    ) -> Waited {
        metrics::counter!("cachecoord_lease_waits_total").increment(1);
        let poll = self.core.read_through.lease_poll;
        let wake = Instant::now() + poll;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(announced) if &*announced != self.key.as_str() => continue,
                    _ => {}
                },
                () = tokio::time::sleep_until(wake.min(deadline).into()) => {}
            }
            break;
        }
        if let Some(filled) = self.fresh_entry().await {
            return Waited::Filled(
                filled.map_lookup(|entry| Lookup::found_or_negative(entry, Source::Coalesced)),
            );
        }
        if Instant::now() >= deadline {
            Waited::TimedOut
        } else {
            Waited::Retry
        }
    }

    /// The key's fresh entry in the store, good as of the moment the read was sent.
    async fn fresh_entry(&self) -> Option<Stored> {
        let as_of = Instant::now();
        let entry = self.core.fresh_entry(&self.key).await?;
        Some(Stored { entry, as_of })
    }

    /// Calls the loader; see [`load_entry`].
    async fn load(&self, stale: Option<Entry>) -> Result<LoadedEntry, Arc<Error>> {
        load_entry(
            &self.core,
            &self.key,
            &self.policy,
            self.loader.as_ref(),
            stale,
        )
        .await
    }
}

/// An entry read from the store, and when the read was sent.
struct Stored {
    entry: Entry,
    as_of: Instant,
}

impl Stored {
    /// The answer `to_lookup` makes of the entry, good as of the read.
    fn map_lookup(self, to_lookup: impl FnOnce(&Entry) -> Lookup) -> Flown {
        Flown::new(to_lookup(&self.entry), self.as_of)
    }
}
