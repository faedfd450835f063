//! Several misses of one loader, loaded in one batch call: lease what can be leased, load those together and fill
//! them; keys whose lease someone else holds (or whose fill was voided) go through their single-key flight, which
//! waits for the holder or loads again.

use super::entry::Entry;
use super::flight::load_one;
use super::lease::{Fill, Lease};
use super::load::{entry_for, stale_if_error_allows};
use super::shared::Core;
use super::types::{Lookup, Source, settle};
use crate::keys::Key;
use crate::{Error, Result};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// Loads `keys` (misses of one loader, each with the stale entry that may stand in should the loader fail) for
/// a request that began at `since`.
pub(super) async fn load_batch(
    core: Arc<Core>,
    keys: Vec<(Key, Option<Entry>)>,
    since: Instant,
) -> Result<Vec<Lookup>> {
    // The leased part runs in its own task: a caller that leaves must not strand leases that other callers,
    // on every replica, are waiting on.
    let batch = tokio::spawn(load_leased(core.clone(), keys.clone()).in_current_span());
    let mut answers = batch.await.map_err(|join| Error::LoaderFailed {
        key: keys.first().map(|(k, _)| k.to_string()).unwrap_or_default(),
        source: join.into(),
    })??;
    let rest: Vec<usize> = (0..keys.len()).filter(|&i| answers[i].is_none()).collect();
    let singles = rest.iter().map(|&i| {
        let (key, stale) = keys[i].clone();
        load_one(core.clone(), key, stale, since)
    });
    for (&i, lookup) in rest
        .iter()
        .zip(futures::future::try_join_all(singles).await?)
    {
        answers[i] = Some(lookup);
    }
    Ok(settle(answers))
}

/// Leases what it can of `keys`, loads those in one call and fills them. Answers per key: `Some` when settled
/// here, `None` when the key's own flight must settle it (leased elsewhere, or the fill was voided).
async fn load_leased(
    core: Arc<Core>,
    keys: Vec<(Key, Option<Entry>)>,
) -> Result<Vec<Option<Lookup>>> {
    let mut answers: Vec<Option<Lookup>> = vec![None; keys.len()];
    let Some((_, loader)) = keys.first().and_then(|(key, _)| core.loaders.for_key(key)) else {
        return Ok(answers);
    };
    let leases = Lease::try_take_each(&core, keys.iter().map(|(key, _)| key)).await;
    let mut leased: Vec<(usize, Lease)> = leases
        .into_iter()
        .enumerate()
        .filter_map(|(i, lease)| Some((i, lease?)))
        .collect();
    // As in a single-key flight: keys filled between our miss and our lease are answered, not loaded again.
    let leased_keys: Vec<Key> = leased.iter().map(|(i, _)| keys[*i].0.clone()).collect();
    if let Ok(stored) = core.store.get_many(&leased_keys).await {
        let mut still_missing = Vec::with_capacity(leased.len());
        for ((i, lease), bytes) in leased.into_iter().zip(stored) {
            match core.fresh(&keys[i].0, bytes) {
                Some(filled) => {
                    lease.release().await;
                    answers[i] = Some(Lookup::from_entry(&filled, Source::Coalesced));
                }
                None => still_missing.push((i, lease)),
            }
        }
        leased = still_missing;
    }
    if leased.is_empty() {
        return Ok(answers);
    }

    let batch: Vec<Key> = leased.iter().map(|(i, _)| keys[*i].0.clone()).collect();
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
            tracing::warn!(
                error = %core.shown_error(&error, &batch),
                keys = batch.len(),
                "batch loader failed"
            );
            let failed: Vec<usize> = leased.iter().map(|(i, _)| *i).collect();
            for (_, lease) in leased {
                lease.release().await;
            }
            // Serve what stale_if_error allows; without it, the whole read fails: no per-key retries
            // against a loader that just failed.
            for i in failed {
                let policy = core.policies.for_key(&keys[i].0);
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
    let fills = leased.into_iter().zip(loaded).map(|((i, lease), loaded)| {
        let key = &keys[i].0;
        let (write, lookup) = entry_for(&core, key, core.policies.for_key(key), loaded, elapsed);
        async move {
            let settled = match &write {
                Some(write) => matches!(lease.fill(write).await, Fill::Written | Fill::Failed),
                // Not cacheable: give the lease back, and serve the value.
                None => {
                    lease.release().await;
                    true
                }
            };
            (i, settled, lookup)
        }
    });
    for (i, settled, lookup) in futures::future::join_all(fills).await {
        // A voided fill is settled by the key's own flight (which serves a newer Set or loads again), and so is a
        // fill older than a written version (the flight answers the error).
        if settled {
            answers[i] = Some(lookup);
        }
    }
    Ok(answers)
}
