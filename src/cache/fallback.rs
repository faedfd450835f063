//! Reads while the store is down (or the breaker of the node serving the key is open): keys with a loader are
//! loaded directly, still coalesced per replica, and answered FALLBACK; a read with any key that has no loader
//! answers UNAVAILABLE.

use super::load::load_fallback;
use super::shared::Core;
use super::types::{Lookup, ReadOptions, Source};
use crate::keys::Key;
use crate::{Error, Result};
use futures::FutureExt;
use std::sync::Arc;

/// Answers `keys` (distinct) straight from their loaders.
pub(super) async fn fallback(
    core: Arc<Core>,
    keys: Vec<Key>,
    options: ReadOptions,
) -> Result<Vec<Lookup>> {
    let unavailable = || Error::BackendUnavailable {
        source: "the cache store is unavailable and the key has no loader to fall back to".into(),
    };
    if options.cache_only || keys.iter().any(|key| core.loaders.for_key(key).is_none()) {
        return Err(unavailable());
    }
    let loads = keys.into_iter().map(|key| {
        let loading = core.clone();
        async move {
            let flying = loading.clone();
            loading
                .flights
                .join(key.clone(), move || {
                    async move {
                        let policy = flying.policies.for_key(&key).clone();
                        let Some((_, loader)) = flying.loaders.for_key(&key) else {
                            return Ok(Lookup::miss());
                        };
                        let loader = loader.clone();
                        load_fallback(&flying, &key, &policy, loader.as_ref()).await
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
