//! Read-through loading: how a miss becomes exactly one load, and why that load can never write back stale data.
//!
//! 1. **Singleflight.** Concurrent misses for a key inside one replica join one in-flight load (`Flights`). The
//!    load runs in its own task, so a caller that gives up (deadline) does not cancel it for the others.
//! 2. **Lease.** The flight takes the key's lease in the store (`SET NX PX` with a random token). Only the holder
//!    loads; other replicas wait for the fill, woken by the store's lease events (pub/sub on Redis) with a short
//!    safety poll. A holder that dies leaves a lease that expires after `lease_ttl_ms`; a waiter then takes it.
//!    A waiter that has waited `lease_wait_ms` loads for itself and serves the value without caching it
//!    (availability over strictness, and the holder still owns the fill).
//! 3. **Fill.** The value is written only if the holder's token still holds the lease. Every Set and Invalidate
//!    voids the lease, so a load that raced an update loses its right to write; the flight then loads again (up to
//!    `max_voided_retries`), so its waiters get a value at least as new as the invalidation.
//! 4. **Early refresh and stale windows.** A hit may trigger one background refresh before expiry (XFetch: with
//!    probability rising as expiry nears, scaled by the recorded load time and β). Past expiry, an entry inside
//!    `stale_while_revalidate` is served as STALE while a refresh runs; inside `stale_if_error` it stands in when
//!    the loader fails.
//! 5. **Fallback.** When the store fails (or the breaker of the node serving the key is open), keys with a loader are loaded directly, still
//!    coalesced per replica, and answered FALLBACK; keys without one answer UNAVAILABLE.

use super::{Core, Entry, Lookup, Policy, ReadOptions, Source};
use crate::keys::Key;
use crate::loader::{Loaded, Loader};
use crate::store::{LeaseToken, StoreWrite};
use crate::{Error, Result};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tracing::Instrument;

type FlightResult = Result<Lookup, Arc<Error>>;
type Flight = Shared<BoxFuture<'static, FlightResult>>;

/// Loads in flight in this replica, one per key, plus keys being refreshed in the background.
#[derive(Default)]
pub(super) struct Flights {
    running: Mutex<HashMap<Key, Flight>>,
    refreshing: Mutex<HashSet<Key>>,
}

/// What a cached entry means for a read.
enum Verdict {
    /// Answer with this.
    Answer(Lookup),
    /// Load it; the stale entry (if any) may stand in should the loader fail.
    Load(Option<Entry>),
}

/// How waiting for another replica's load ended.
enum Waited {
    Filled(Lookup),
    Retry,
    TimedOut,
}

impl Core {
    /// Answers `keys` (distinct), loading misses of entities that have a loader.
    pub(super) async fn read(
        self: Arc<Self>,
        keys: Vec<Key>,
        options: ReadOptions,
    ) -> Result<Vec<Lookup>> {
        let Some(near) = self.near.clone() else {
            return self.read_from_store(keys, options, None).await;
        };
        // Near-cache first: its hits answer without a Redis round trip.
        let mut answers: Vec<Option<Lookup>> = vec![None; keys.len()];
        let (mut rest, mut rest_at) = (Vec::new(), Vec::new());
        for (index, key) in keys.into_iter().enumerate() {
            let held = self
                .policies
                .for_key(&key)
                .near_cache_ttl
                .and_then(|_| near.get(&key));
            match held {
                Some(entry) => {
                    let source = if entry.value.is_some() {
                        Source::NearHit
                    } else {
                        Source::Negative
                    };
                    answers[index] = Some(Lookup::from_entry(&entry, source));
                }
                None => {
                    rest.push(key);
                    rest_at.push(index);
                }
            }
        }
        if !rest.is_empty() {
            let sequence = near.sequence();
            let looked_up = self.read_from_store(rest, options, Some(sequence)).await?;
            for (index, lookup) in rest_at.into_iter().zip(looked_up) {
                answers[index] = Some(lookup);
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or_else(Lookup::miss))
            .collect())
    }

    /// Answers `keys` from the store (and loaders). `near_sequence` is the near-cache's notice sequence taken
    /// before the read, when hits may be copied into it.
    async fn read_from_store(
        self: Arc<Self>,
        keys: Vec<Key>,
        options: ReadOptions,
        near_sequence: Option<u64>,
    ) -> Result<Vec<Lookup>> {
        // A store that is down (or whose node serving these keys is: its breaker answers at once) sends the
        // reads to the loaders.
        let stored = match self.store.get_many(&keys).await {
            Ok(stored) => Some(stored),
            Err(Error::BackendUnavailable { .. }) => None,
            Err(error) => return Err(error),
        };
        let Some(stored) = stored else {
            return self.fallback(keys, options).await;
        };

        let mut answers: Vec<Option<Lookup>> = vec![None; keys.len()];
        let mut to_load: HashMap<usize, Vec<(usize, Option<Entry>)>> = HashMap::new();
        for (index, (key, bytes)) in keys.iter().zip(stored).enumerate() {
            let entry = bytes.and_then(|b| self.decode(key, b));
            let loader = (!options.cache_only)
                .then(|| self.loaders.for_key(key))
                .flatten();
            match self
                .clone()
                .judge(key, entry, loader.is_some(), near_sequence)
            {
                Verdict::Answer(lookup) => answers[index] = Some(lookup),
                Verdict::Load(stale) => match loader {
                    Some((route, _)) => to_load.entry(route).or_default().push((index, stale)),
                    None => answers[index] = Some(Lookup::miss()),
                },
            }
        }

        let loads = to_load.into_values().map(|group| {
            let core = self.clone();
            let keys = &keys;
            async move {
                let picked: Vec<(Key, Option<Entry>)> = group
                    .iter()
                    .map(|(i, stale)| (keys[*i].clone(), stale.clone()))
                    .collect();
                let lookups = core.load_group(picked).await?;
                Ok::<_, Error>(
                    group
                        .into_iter()
                        .map(|(i, _)| i)
                        .zip(lookups)
                        .collect::<Vec<_>>(),
                )
            }
        });
        for loaded in futures::future::try_join_all(loads).await? {
            for (index, lookup) in loaded {
                answers[index] = Some(lookup);
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or_else(Lookup::miss))
            .collect())
    }

    /// Decides what a cached entry means: a hit (maybe refreshing early), a stale serve, or a load.
    fn judge(
        self: Arc<Self>,
        key: &Key,
        entry: Option<Entry>,
        has_loader: bool,
        near_sequence: Option<u64>,
    ) -> Verdict {
        let Some(entry) = entry else {
            return Verdict::Load(None);
        };
        let policy = self.policies.for_key(key);
        match entry.stale_for() {
            None => {
                if has_loader && xfetch_says_refresh(&entry, policy.xfetch_beta) {
                    self.clone().refresh_in_background(key.clone());
                }
                if let (Some(near), Some(sequence), Some(cap)) =
                    (&self.near, near_sequence, policy.near_cache_ttl)
                {
                    near.insert(key, &entry, cap, sequence);
                }
                let source = if entry.value.is_some() {
                    Source::Hit
                } else {
                    Source::Negative
                };
                Verdict::Answer(Lookup::from_entry(&entry, source))
            }
            Some(stale)
                if has_loader
                    && entry.value.is_some()
                    && stale <= policy.stale_while_revalidate =>
            {
                self.clone().refresh_in_background(key.clone());
                Verdict::Answer(Lookup::from_entry(&entry, Source::Stale))
            }
            Some(_) => Verdict::Load(Some(entry)),
        }
    }

    /// Loads keys that share one loader: one key through its flight, several through one batch call.
    async fn load_group(self: Arc<Self>, keys: Vec<(Key, Option<Entry>)>) -> Result<Vec<Lookup>> {
        if keys.len() == 1 || !self.read_through.leases {
            let flights = keys
                .into_iter()
                .map(|(key, stale)| self.clone().load_one(key, stale));
            return futures::future::try_join_all(flights).await;
        }
        self.load_batch(keys).await
    }

    /// Joins the key's flight in this replica, or starts it with `start`.
    async fn join_flight(
        self: Arc<Self>,
        key: Key,
        start: impl FnOnce(Arc<Core>) -> BoxFuture<'static, FlightResult> + Send + 'static,
    ) -> Result<Lookup> {
        let (flight, leader) = {
            let mut running = lock(&self.flights.running);
            match running.get(&key) {
                Some(flight) => (flight.clone(), false),
                None => {
                    let core = self.clone();
                    let flight_key = key.clone();
                    // The flight runs in the span of the call that started it, so its store and loader
                    // calls show up in that caller's trace.
                    let flight = async move {
                        // Removed however the flight ends (done, panicked, aborted): a dead flight must not
                        // answer for its key forever.
                        let _landing = OnDrop(|| {
                            lock(&core.flights.running).remove(&flight_key);
                        });
                        start(core.clone()).await
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
                    running.insert(key, flight.clone());
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

    /// One key's load: take the lease (or wait for its holder), load, fill; retried when an invalidation voids it.
    async fn fly(self: Arc<Self>, key: Key, stale: Option<Entry>) -> FlightResult {
        let policy = self.policies.for_key(&key).clone();
        let Some((_, loader)) = self.loaders.for_key(&key) else {
            return Ok(Lookup::miss());
        };
        let loader = loader.clone();
        if !self.read_through.leases {
            let (write, lookup) = self
                .load_entry(&key, &policy, loader.as_ref(), stale)
                .await?;
            if let Some(write) = write {
                let _ = self.store.set_many(std::slice::from_ref(&write)).await;
            }
            return Ok(lookup);
        }

        let lease_ttl = Duration::from_millis(self.read_through.lease_ttl_ms);
        let deadline = Instant::now() + Duration::from_millis(self.read_through.lease_wait_ms);
        // Subscribe before the first look at the lease, so a fill between the two cannot be missed.
        let mut events = self.store.lease_events();
        let mut voided = 0;
        loop {
            let token: LeaseToken = rand::random();
            let leased = self.store.try_lease(&key, token, lease_ttl).await;
            match leased {
                Err(Error::BackendUnavailable { .. }) => {
                    return self.load_fallback(&key, &policy, loader.as_ref()).await;
                }
                Err(error) => return Err(Arc::new(error)),
                Ok(true) => {
                    // Someone may have filled the key between our miss and our lease (their lease was released
                    // by the fill): look again before loading, or a key can be loaded twice.
                    if let Some(filled) = self.fresh_entry(&key).await {
                        let _ = self.store.release_lease(&key, token).await;
                        let source = if filled.value.is_some() {
                            Source::Coalesced
                        } else {
                            Source::Negative
                        };
                        return Ok(Lookup::from_entry(&filled, source));
                    }
                    let loaded = self
                        .load_entry(&key, &policy, loader.as_ref(), stale.clone())
                        .await;
                    let (write, lookup) = match loaded {
                        Ok(loaded) => loaded,
                        Err(error) => {
                            let _ = self.store.release_lease(&key, token).await;
                            return Err(error);
                        }
                    };
                    let Some(write) = write else {
                        // Served stale on loader failure: nothing to fill.
                        let _ = self.store.release_lease(&key, token).await;
                        return Ok(lookup);
                    };
                    match self.store.fill(token, &write).await {
                        Ok(false) => {
                            // Voided by a Set or an invalidation (or the lease ran out). A Set's value is newer
                            // than ours: serve it. Otherwise load again, after the invalidation.
                            if let Some(fresh) = self.fresh_entry(&key).await {
                                return Ok(Lookup::from_entry(&fresh, Source::Coalesced));
                            }
                            if voided == self.read_through.max_voided_retries {
                                return Ok(lookup);
                            }
                            voided += 1;
                            tracing::debug!(key = %key, voided, "load voided by an invalidation; loading again");
                        }
                        Ok(true) => return Ok(lookup),
                        Err(error) => {
                            // Served, just not cached: the store could not take the fill.
                            tracing::warn!(key = %key, %error, "loaded value not cached: the fill failed");
                            return Ok(lookup);
                        }
                    }
                }
                Ok(false) => match self
                    .wait_for_fill(&key, &mut events, deadline)
                    .instrument(tracing::info_span!("lease_wait"))
                    .await
                {
                    Waited::Filled(lookup) => return Ok(lookup),
                    Waited::Retry => {}
                    Waited::TimedOut => {
                        metrics::counter!("cachecoord_lease_wait_timeouts_total").increment(1);
                        tracing::warn!(key = %key, "lease wait timed out; loading without caching");
                        let (_, lookup) = self
                            .load_entry(&key, &policy, loader.as_ref(), stale)
                            .await?;
                        return Ok(lookup);
                    }
                },
            }
        }
    }

    /// Waits until another replica's fill of `key` is announced (or the safety poll fires) and looks again.
    async fn wait_for_fill(
        &self,
        key: &Key,
        events: &mut broadcast::Receiver<Arc<str>>,
        deadline: Instant,
    ) -> Waited {
        metrics::counter!("cachecoord_lease_waits_total").increment(1);
        let poll = Duration::from_millis(self.read_through.lease_poll_ms);
        let wake = Instant::now() + poll;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(announced) if &*announced != key.as_str() => continue,
                    _ => {}
                },
                () = tokio::time::sleep_until(wake.min(deadline).into()) => {}
            }
            break;
        }
        if let Some(entry) = self.fresh_entry(key).await {
            let source = if entry.value.is_some() {
                Source::Coalesced
            } else {
                Source::Negative
            };
            return Waited::Filled(Lookup::from_entry(&entry, source));
        }
        if Instant::now() >= deadline {
            Waited::TimedOut
        } else {
            Waited::Retry
        }
    }

    /// The key's entry if the store holds a fresh one (errors count as none).
    async fn fresh_entry(&self, key: &Key) -> Option<Entry> {
        let mut stored = self.store.get_many(std::slice::from_ref(key)).await.ok()?;
        stored
            .pop()
            .flatten()
            .and_then(|b| self.decode(key, b))
            .filter(|entry| entry.stale_for().is_none())
    }

    /// Calls the loader and builds the entry to fill. On loader failure, a stale entry inside `stale_if_error`
    /// is served instead (with nothing to fill).
    async fn load_entry(
        &self,
        key: &Key,
        policy: &Policy,
        loader: &dyn Loader,
        stale: Option<Entry>,
    ) -> Result<(Option<StoreWrite>, Lookup), Arc<Error>> {
        let started = Instant::now();
        match loader.load(key).await {
            Ok(loaded) => Ok(self.entry_for(key, policy, loaded, started.elapsed())),
            Err(error) => {
                tracing::warn!(key = %key, %error, "loader failed");
                match stale.filter(|e| stale_if_error_allows(e, policy)) {
                    Some(entry) => Ok((None, Lookup::from_entry(&entry, Source::Stale))),
                    None => Err(Arc::new(error)),
                }
            }
        }
    }

    /// Loads straight from the loader, bypassing the unavailable store.
    async fn load_fallback(&self, key: &Key, policy: &Policy, loader: &dyn Loader) -> FlightResult {
        let loaded = loader.load(key).await.map_err(Arc::new)?;
        let (_, mut lookup) = self.entry_for(key, policy, loaded, Duration::ZERO);
        lookup.source = Source::Fallback;
        Ok(lookup)
    }

    /// Answers a read while the store is unavailable: loader-backed keys are loaded directly (coalesced per
    /// replica); any other key makes the read UNAVAILABLE.
    async fn fallback(
        self: Arc<Self>,
        keys: Vec<Key>,
        options: ReadOptions,
    ) -> Result<Vec<Lookup>> {
        let unavailable = || Error::BackendUnavailable {
            source: "the cache store is unavailable and the key has no loader to fall back to"
                .into(),
        };
        if options.cache_only || keys.iter().any(|key| self.loaders.for_key(key).is_none()) {
            return Err(unavailable());
        }
        let loads = keys.into_iter().map(|key| {
            let core = self.clone();
            async move {
                core.join_flight(key.clone(), move |core| {
                    async move {
                        let policy = core.policies.for_key(&key).clone();
                        let Some((_, loader)) = core.loaders.for_key(&key) else {
                            return Ok(Lookup::miss());
                        };
                        let loader = loader.clone();
                        core.load_fallback(&key, &policy, loader.as_ref()).await
                    }
                    .boxed()
                })
                .await
                .map(|mut lookup| {
                    lookup.source = Source::Fallback;
                    lookup
                })
            }
        });
        futures::future::try_join_all(loads).await
    }

    /// Several misses of one loader: lease what can be leased, load those in one batch call and fill them;
    /// keys whose lease someone else holds (or whose fill was voided) go through their single-key flight.
    async fn load_batch(self: Arc<Self>, keys: Vec<(Key, Option<Entry>)>) -> Result<Vec<Lookup>> {
        // The leased part runs in its own task: a caller that leaves must not strand leases that other callers,
        // on every replica, are waiting on.
        let batch = tokio::spawn(self.clone().load_leased(keys.clone()).in_current_span());
        let mut answers = batch.await.map_err(|join| Error::LoaderFailed {
            key: keys.first().map(|(k, _)| k.to_string()).unwrap_or_default(),
            source: join.into(),
        })??;
        let rest: Vec<usize> = (0..keys.len()).filter(|&i| answers[i].is_none()).collect();
        let singles = rest.iter().map(|&i| {
            let (key, stale) = keys[i].clone();
            self.clone().load_one(key, stale)
        });
        for (&i, lookup) in rest
            .iter()
            .zip(futures::future::try_join_all(singles).await?)
        {
            answers[i] = Some(lookup);
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or_else(Lookup::miss))
            .collect())
    }

    /// Leases what it can of `keys`, loads those in one call and fills them. Answers per key: `Some` when
    /// settled here, `None` when the key's own flight must settle it (leased elsewhere, or the fill was voided).
    async fn load_leased(
        self: Arc<Self>,
        keys: Vec<(Key, Option<Entry>)>,
    ) -> Result<Vec<Option<Lookup>>> {
        let mut answers: Vec<Option<Lookup>> = vec![None; keys.len()];
        let Some((_, loader)) = keys.first().and_then(|(key, _)| self.loaders.for_key(key)) else {
            return Ok(answers);
        };
        let lease_ttl = Duration::from_millis(self.read_through.lease_ttl_ms);
        let tokens: Vec<LeaseToken> = keys.iter().map(|_| rand::random()).collect();
        let leases = futures::future::join_all(
            keys.iter()
                .zip(&tokens)
                .map(|((key, _), token)| self.store.try_lease(key, *token, lease_ttl)),
        )
        .await;
        let mut leased = Vec::new();
        for (i, lease) in leases.iter().enumerate() {
            if matches!(lease, Ok(true)) {
                leased.push(i);
            }
        }
        // As in `fly`: keys filled between our miss and our lease are answered, not loaded again.
        let leased_keys: Vec<Key> = leased.iter().map(|&i| keys[i].0.clone()).collect();
        if let Ok(stored) = self.store.get_many(&leased_keys).await {
            let mut still_missing = Vec::with_capacity(leased.len());
            for (&i, bytes) in leased.iter().zip(stored) {
                match bytes
                    .and_then(|b| self.decode(&keys[i].0, b))
                    .filter(|e| e.stale_for().is_none())
                {
                    Some(filled) => {
                        let _ = self.store.release_lease(&keys[i].0, tokens[i]).await;
                        answers[i] = Some(Lookup::from_entry(&filled, Source::Coalesced));
                    }
                    None => still_missing.push(i),
                }
            }
            leased = still_missing;
        }
        if leased.is_empty() {
            return Ok(answers);
        }

        let batch: Vec<Key> = leased.iter().map(|&i| keys[i].0.clone()).collect();
        let started = Instant::now();
        let loaded = match loader.load_many(&batch).await {
            Ok(loaded) if loaded.len() == batch.len() => loaded,
            outcome => {
                let error = match outcome {
                    Err(error) => error,
                    Ok(loaded) => Error::LoaderFailed {
                        key: batch[0].to_string(),
                        source: format!("{} answers for {} keys", loaded.len(), batch.len()).into(),
                    },
                };
                tracing::warn!(%error, keys = batch.len(), "batch loader failed");
                for &i in &leased {
                    let _ = self.store.release_lease(&keys[i].0, tokens[i]).await;
                }
                // Serve what stale_if_error allows; without it, the whole read fails: no per-key retries
                // against a loader that just failed.
                for &i in &leased {
                    let policy = self.policies.for_key(&keys[i].0);
                    match keys[i]
                        .1
                        .as_ref()
                        .filter(|e| stale_if_error_allows(e, policy))
                    {
                        Some(entry) => answers[i] = Some(Lookup::from_entry(entry, Source::Stale)),
                        None => return Err(error),
                    }
                }
                return Ok(answers);
            }
        };
        let elapsed = started.elapsed();
        let fills = leased.iter().zip(loaded).map(|(&i, loaded)| {
            let key = &keys[i].0;
            let policy = self.policies.for_key(key);
            let (write, lookup) = self.entry_for(key, policy, loaded, elapsed);
            let token = tokens[i];
            let store = &self.store;
            async move {
                let filled = match &write {
                    Some(write) => store.fill(token, write).await,
                    // Not cacheable: give the lease back, and serve the value.
                    None => store.release_lease(key, token).await.map(|()| true),
                };
                (i, filled, lookup)
            }
        });
        for (i, filled, lookup) in futures::future::join_all(fills).await {
            // A voided fill is settled by the key's own flight (which serves a newer Set or loads again).
            if !matches!(filled, Ok(false)) {
                answers[i] = Some(lookup);
            }
        }
        Ok(answers)
    }

    /// Joins (or starts) the single-key flight of `key`.
    async fn load_one(self: Arc<Self>, key: Key, stale: Option<Entry>) -> Result<Lookup> {
        self.join_flight(key.clone(), |core| core.fly(key, stale).boxed())
            .await
    }

    /// Builds the store write and the answer for what a loader returned.
    fn entry_for(
        &self,
        key: &Key,
        policy: &Policy,
        loaded: Loaded,
        took: Duration,
    ) -> (Option<StoreWrite>, Lookup) {
        let found = loaded.value.is_some();
        let ttl = match (found, loaded.ttl) {
            (false, _) => policy.negative_ttl,
            (true, Some(ttl)) => ttl.clamp(
                Duration::from_millis(self.limits.min_ttl_ms),
                Duration::from_secs(self.limits.max_ttl_secs),
            ),
            (true, None) => self.policies.jittered(policy.ttl),
        };
        let mut entry = Entry::fresh_for(loaded.value, ttl);
        entry.load_ms = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
        let physical_ttl = if found {
            ttl + policy.stale_window()
        } else {
            ttl
        };
        let lookup = Lookup::from_entry(&entry, Source::Loaded);
        // What must never be cached is served to this caller but not written.
        let violation = self.sensitive.key_violation(key).or_else(|| {
            let value = entry.value.as_deref().unwrap_or_default();
            self.sensitive.value_violation(value)
        });
        if let Some(reason) = violation {
            tracing::warn!(entity = %policy.name, %reason, "loader result not cached: sensitive data");
            metrics::counter!("cachecoord_sensitive_not_cached_total", "entity" => policy.name.clone())
                .increment(1);
            return (None, lookup);
        }
        let write = StoreWrite {
            key: key.clone(),
            value: self.encode(key, entry),
            ttl: physical_ttl,
            version: None,
        };
        (Some(write), lookup)
    }

    /// Refreshes `key` in the background unless this replica already is; only the lease holder loads, so across
    /// replicas one refresh runs per key.
    fn refresh_in_background(self: Arc<Self>, key: Key) {
        if !lock(&self.flights.refreshing).insert(key.clone()) {
            return;
        }
        let span = tracing::info_span!("refresh", key = %key);
        let refresh = async move {
            let _landing = OnDrop(|| {
                lock(&self.flights.refreshing).remove(&key);
            });
            let Some((_, loader)) = self.loaders.for_key(&key) else {
                return;
            };
            let token: LeaseToken = rand::random();
            let lease_ttl = Duration::from_millis(self.read_through.lease_ttl_ms);
            // Someone else holds the lease: they are loading it already.
            if !matches!(self.store.try_lease(&key, token, lease_ttl).await, Ok(true)) {
                return;
            }
            let policy = self.policies.for_key(&key);
            let started = Instant::now();
            match loader.load(&key).await {
                Ok(loaded) => match self.entry_for(&key, policy, loaded, started.elapsed()).0 {
                    Some(write) => drop(self.store.fill(token, &write).await),
                    None => drop(self.store.release_lease(&key, token).await),
                },
                Err(error) => {
                    tracing::warn!(key = %key, %error, "background refresh failed");
                    let _ = self.store.release_lease(&key, token).await;
                }
            }
        };
        tokio::spawn(refresh.instrument(span));
    }
}

/// Whether an expired entry may stand in for a failed load.
fn stale_if_error_allows(entry: &Entry, policy: &Policy) -> bool {
    entry.value.is_some()
        && entry
            .stale_for()
            .is_some_and(|s| s <= policy.stale_if_error)
}

/// Locks a flight map; a panic elsewhere cannot leave it inconsistent (each step is one insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

/// XFetch (Vattani et al., VLDB 2015): refresh early when `now − δ·β·ln(rand) ≥ expiry`, δ being the last load's
/// duration. The closer expiry and the slower the load, the likelier an early refresh.
fn xfetch_says_refresh(entry: &Entry, beta: f64) -> bool {
    if beta <= 0.0 || entry.load_ms == 0 {
        return false;
    }
    let draw: f64 = rand::random_range(f64::MIN_POSITIVE..=1.0);
    let early_ms = f64::from(entry.load_ms) * beta * -draw.ln();
    let remaining_ms = entry.ttl_remaining().map_or(0.0, |d| d.as_millis() as f64);
    early_ms >= remaining_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn xfetch_refreshes_near_expiry_only() {
        let entry = |ttl_ms, load_ms| Entry {
            load_ms,
            ..Entry::fresh_for(Some(Bytes::new()), Duration::from_millis(ttl_ms))
        };
        let refreshes = |e: &Entry| (0..1000).filter(|_| xfetch_says_refresh(e, 1.0)).count();
        assert_eq!(
            refreshes(&entry(3_600_000, 100)),
            0,
            "an hour from expiry, a 100 ms load never refreshes"
        );
        assert!(
            refreshes(&entry(50, 100)) > 500,
            "50 ms from expiry, a 100 ms load usually refreshes"
        );
        assert_eq!(
            refreshes(&entry(50, 0)),
            0,
            "no recorded load time, no early refresh"
        );
    }
}
