//! Reads while the store is down (or the breaker of the node serving the key is open): keys with a loader are
//! loaded directly, still coalesced per replica, and answered FALLBACK; a read with any key that has no loader
//! answers UNAVAILABLE.

use super::load::load_fallback;
use super::shared::Core;
use super::types::{Flown, Lookup, ReadOptions, SharedResult, Source};
use crate::keys::Key;
use crate::{Error, Result};
use futures::FutureExt;
use std::sync::Arc;
use std::time::Instant;

/// Answers `keys` (distinct) straight from their loaders, for a request that began at `since`.
pub(super) async fn fallback(
    core: Arc<Core>,
    keys: Vec<Key>,
    options: ReadOptions,
    since: Instant,
) -> Result<Vec<Lookup>> {
    if options.cache_only || keys.iter().any(|key| core.loaders.for_key(key).is_none()) {
        return Err(Error::BackendUnavailable {
            source: "the cache store is unavailable and the key has no loader to fall back to"
                .into(),
        });
    }
    let loads = keys.into_iter().map(|key| {
        let flying = core.clone();
        core.flights.join(key.clone(), since, move || {
            load_direct(flying.clone(), key.clone()).boxed()
        })
    });
    let lookups = futures::future::try_join_all(loads).await?;
    Ok(lookups
        .into_iter()
        .map(|mut lookup| {
            // Coalesced or not, the answer came from the loader, not the cache.
            lookup.source = Source::Fallback;
            lookup
        })
        .collect())
}

/// One key's load in the fallback's flight.
async fn load_direct(core: Arc<Core>, key: Key) -> SharedResult {
    let policy = core.policies.for_key(&key).clone();
    let Some((_, loader)) = core.loaders.for_key(&key) else {
        return Ok(Flown::new(Lookup::miss(), Instant::now()));
    };
    let loader = loader.clone();
    load_fallback(&core, &key, &policy, loader.as_ref()).await
}
