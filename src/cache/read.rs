//! The read path of Get and BatchGet: near-cache first, then one read of the store for the rest, then a verdict
//! per key (hit, early refresh, stale serve, or load), then the loads, grouped per loader: one key through its
//! flight, several through one batch call. A leased read's misses of keys no loader fills go to `caller_lease`
//! instead (the caller's lease, or a wait for another caller's fill). A store that is down sends the read to the
//! fallback.

use super::batch::load_batch;
use super::caller_lease;
use super::consistency_check::sample_hit;
use super::entry::Entry;
use super::fallback::fallback;
use super::flight::load_one;
use super::refresh::{refresh_in_background, xfetch_says_refresh};
use super::shared::Core;
use super::types::{Lookup, ReadOptions, Source, settle};
use crate::keys::Key;
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// What a cached entry means for a read.
enum Verdict {
    /// Answer with this.
    Answer(Lookup),
    /// Load it; the stale entry (if any) may stand in should the loader fail.
    Load(Option<Entry>),
    /// Serve this stale value, and offer the key's lease to the caller (a leased read with no loader).
    StaleLeased(Lookup),
}

/// Reads one key, loading it on a miss when its entity has a loader.
pub(super) async fn get(core: Arc<Core>, key: &str, options: ReadOptions) -> Result<Lookup> {
    let since = Instant::now();
    let key = core.parse_key(key)?;
    let mut answers = read(core.clone(), vec![key.clone()], options, since).await?;
    let lookup = answers.pop().unwrap_or_else(Lookup::miss);
    core.count(&key, lookup.source);
    Ok(lookup)
}

/// Reads many keys; one answer per requested key, in request order. Duplicates are read once and answered
/// identically.
pub(super) async fn batch_get(
    core: Arc<Core>,
    keys: &[String],
    options: ReadOptions,
) -> Result<Vec<Lookup>> {
    let since = Instant::now();
    core.check_batch("keys", keys.len())?;
    let mut distinct: Vec<Key> = Vec::with_capacity(keys.len());
    let mut index_of: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
    let mut positions = Vec::with_capacity(keys.len());
    for raw in keys {
        let index = match index_of.get(raw.as_str()) {
            Some(&index) => index,
            None => {
                distinct.push(core.parse_key(raw)?);
                index_of.insert(raw, distinct.len() - 1);
                distinct.len() - 1
            }
        };
        positions.push(index);
    }
    let lookups = read(core.clone(), distinct.clone(), options, since).await?;
    for &i in &positions {
        core.count(&distinct[i], lookups[i].source);
    }
    Ok(positions.into_iter().map(|i| lookups[i].clone()).collect())
}

/// Answers `keys` (distinct) for a request that began at `since`, loading misses of entities that have a loader.
async fn read(
    core: Arc<Core>,
    keys: Vec<Key>,
    options: ReadOptions,
    since: Instant,
) -> Result<Vec<Lookup>> {
    let Some(near) = core.near.clone() else {
        return read_from_store(core, keys, options, None, since).await;
    };
    // Near-cache first: its hits answer without a Redis round trip.
    let mut answers: Vec<Option<Lookup>> = vec![None; keys.len()];
    let (mut rest, mut rest_at) = (Vec::new(), Vec::new());
    for (index, key) in keys.into_iter().enumerate() {
        let policy = core.policies.for_key(&key);
        let held = policy
            .near_cache_ttl
            .and_then(|_| near.get(&key, policy.near_cache_strict));
        match held {
            Some(entry) => {
                answers[index] = Some(Lookup::found_or_negative(&entry, Source::NearHit));
                sample_hit(&core, policy, &key, &entry);
            }
            None => {
                rest.push(key);
                rest_at.push(index);
            }
        }
    }
    if !rest.is_empty() {
        let sequence = near.sequence();
        let looked_up = read_from_store(core, rest, options, Some(sequence), since).await?;
        for (index, lookup) in rest_at.into_iter().zip(looked_up) {
            answers[index] = Some(lookup);
        }
    }
    Ok(settle(answers))
}

/// Answers `keys` from the store (and loaders). `near_sequence` is the near-cache's notice sequence taken
/// before the read, when hits may be copied into it.
async fn read_from_store(
    core: Arc<Core>,
    keys: Vec<Key>,
    options: ReadOptions,
    near_sequence: Option<u64>,
    since: Instant,
) -> Result<Vec<Lookup>> {
    // A store that is down (or whose node serving these keys is: its breaker answers at once) sends the
    // reads to the loaders.
    let stored = match core.store.get_many(&keys).await {
        Ok(stored) => stored,
        Err(Error::BackendUnavailable { .. }) => return fallback(core, keys, options, since).await,
        Err(error) => return Err(error),
    };

    let mut answers: Vec<Option<Lookup>> = vec![None; keys.len()];
    let mut to_load: HashMap<usize, Vec<(usize, Option<Entry>)>> = HashMap::new();
    // Misses the caller fills itself under a lease, and stale values served with a lease offered.
    let (mut to_lease, mut to_offer) = (Vec::new(), Vec::new());
    for (index, (key, bytes)) in keys.iter().zip(stored).enumerate() {
        let entry = bytes.and_then(|b| core.decode(key, b));
        let loader = (!options.cache_only)
            .then(|| core.loaders.for_key(key))
            .flatten();
        let filler = match loader {
            Some(_) => Filler::Loader,
            None if options.lease => Filler::Caller,
            None => Filler::Nobody,
        };
        match judge(&core, key, entry, filler, near_sequence) {
            Verdict::Answer(lookup) => answers[index] = Some(lookup),
            Verdict::StaleLeased(lookup) => to_offer.push((index, lookup)),
            Verdict::Load(stale) => match loader {
                Some((route, _)) => to_load.entry(route).or_default().push((index, stale)),
                None if options.lease => to_lease.push(index),
                None => answers[index] = Some(Lookup::miss()),
            },
        }
    }
    let mut leased = caller_lease::LeasedKeys::default();
    for index in to_lease {
        leased.miss(index, keys[index].clone());
    }
    for (index, stale) in to_offer {
        leased.stale(index, keys[index].clone(), stale);
    }
    let leased = leased.settle(core.clone(), options.wait_until);

    let loading = !to_load.is_empty();
    let loads = to_load.into_values().map(|group| {
        let core = core.clone();
        let keys = &keys;
        async move {
            let picked: Vec<(Key, Option<Entry>)> = group
                .iter()
                .map(|(i, stale)| (keys[*i].clone(), stale.clone()))
                .collect();
            let lookups = load_group(core, picked, since).await?;
            Ok::<_, Error>(
                group
                    .into_iter()
                    .map(|(i, _)| i)
                    .zip(lookups)
                    .collect::<Vec<_>>(),
            )
        }
    });
    let (loaded, mut leased) = futures::try_join!(futures::future::try_join_all(loads), leased)?;
    if loading {
        // Leases kept while the loads ran may have been voided meanwhile.
        leased.drop_lapsed().await;
    }
    // Tokens are made only here, where nothing in the read can fail any more.
    for (index, lookup) in loaded.into_iter().flatten().chain(leased.hand_out()) {
        answers[index] = Some(lookup);
    }
    Ok(settle(answers))
}

/// Who fills a key that misses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Filler {
    /// Its entity's loader.
    Loader,
    /// The caller, under a lease (a leased read of a key no loader fills).
    Caller,
    /// Nobody: a miss is answered as such.
    Nobody,
}

/// Decides what a cached entry means: a hit (maybe refreshing early), a stale serve (refreshing behind it, or
/// offering the caller the lease to refresh it), or a load.
fn judge(
    core: &Arc<Core>,
    key: &Key,
    entry: Option<Entry>,
    filler: Filler,
    near_sequence: Option<u64>,
) -> Verdict {
    let has_loader = filler == Filler::Loader;
    let Some(entry) = entry else {
        return Verdict::Load(None);
    };
    let policy = core.policies.for_key(key);
    match entry.stale_for() {
        None => {
            if has_loader && xfetch_says_refresh(&entry, policy.xfetch_beta) {
                refresh_in_background(core.clone(), key.clone());
            }
            if let (Some(near), Some(sequence), Some(cap)) =
                (&core.near, near_sequence, policy.near_cache_ttl)
            {
                near.insert(key, &entry, cap, sequence, policy.near_cache_strict);
            }
            sample_hit(core, policy, key, &entry);
            Verdict::Answer(Lookup::found_or_negative(&entry, Source::Hit))
        }
        Some(stale)
            if filler != Filler::Nobody
                && entry.value.is_some()
                && stale <= policy.stale_while_revalidate =>
        {
            let lookup = Lookup::from_entry(&entry, Source::Stale);
            if filler == Filler::Caller {
                return Verdict::StaleLeased(lookup);
            }
            refresh_in_background(core.clone(), key.clone());
            Verdict::Answer(lookup)
        }
        Some(_) => Verdict::Load(Some(entry)),
    }
}

/// Loads keys that share one loader: one key through its flight, several through one batch call (which needs
/// leases to be safe).
async fn load_group(
    core: Arc<Core>,
    keys: Vec<(Key, Option<Entry>)>,
    since: Instant,
) -> Result<Vec<Lookup>> {
    if keys.len() == 1 || !core.read_through.leases {
        let flights = keys
            .into_iter()
            .map(|(key, stale)| load_one(core.clone(), key, stale, since));
        return futures::future::try_join_all(flights).await;
    }
    load_batch(core, keys, since).await
}
