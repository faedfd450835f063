//! One call to a loader and what its answer becomes: the entry to fill (TTL from the loader or the policy,
//! negative TTL for "not found", the stale window on top, nothing at all for sensitive data) and the caller's
//! answer. A failed load may be stood in for by an expired entry inside `stale_if_error`.

use super::entry::Entry;
use super::policy::Policy;
use super::shared::Core;
use super::types::{Flown, Lookup, SharedResult, Source};
use crate::Error;
use crate::keys::Key;
use crate::loader::{Loaded, Loader};
use crate::store::StoreWrite;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A loader's answer: the entry to fill (if any), the caller's answer, and the instant the answer is good for.
pub(super) struct LoadedEntry {
    pub(super) write: Option<StoreWrite>,
    pub(super) lookup: Lookup,
    pub(super) as_of: Instant,
}

/// Calls the loader and builds the entry to fill; the answer is good as of the call's start. On loader failure,
/// when the miss found an expired entry (`stale`), the store is read again: what it holds now (a newer fill, or
/// the expired entry inside `stale_if_error`) is served instead, with nothing to fill, good as of that read. The
/// entry the miss found is not served itself: it was read before the flight, and the flight's answer reaches
/// callers that came later.
pub(super) async fn load_entry(
    core: &Core,
    key: &Key,
    policy: &Policy,
    loader: &dyn Loader,
    stale: Option<Entry>,
) -> Result<LoadedEntry, Arc<Error>> {
    let started = Instant::now();
    match loader.load(key).await {
        Ok(loaded) => {
            let (write, lookup) = entry_for(core, key, policy, loaded, started.elapsed());
            Ok(LoadedEntry {
                write,
                lookup,
                as_of: started,
            })
        }
        Err(error) => {
            tracing::warn!(
                key = %core.shown(key),
                error = %core.shown_error(&error, std::slice::from_ref(key)),
                "loader failed"
            );
            let as_of = Instant::now();
            let stored = match stale {
                Some(_) => core.stored_entry(key).await,
                None => None,
            };
            let source = match &stored {
                Some(entry) if entry.stale_for().is_none() => Source::Coalesced,
                Some(entry) if stale_if_error_allows(entry, policy) => Source::Stale,
                _ => return Err(Arc::new(error)),
            };
            let lookup =
                stored.map_or_else(Lookup::miss, |entry| Lookup::from_entry(&entry, source));
            Ok(LoadedEntry {
                write: None,
                lookup,
                as_of,
            })
        }
    }
}

/// Loads straight from the loader, bypassing the unavailable store.
pub(super) async fn load_fallback(
    core: &Core,
    key: &Key,
    policy: &Policy,
    loader: &dyn Loader,
) -> SharedResult {
    let started = Instant::now();
    let loaded = loader.load(key).await.map_err(|error| {
        // The caller is told only LOADER_FAILED: the cause is for the operator.
        tracing::warn!(
            key = %core.shown(key),
            error = %core.shown_error(&error, std::slice::from_ref(key)),
            "loader failed (store unavailable: loading directly)"
        );
        Arc::new(error)
    })?;
    let (_, mut lookup) = entry_for(core, key, policy, loaded, Duration::ZERO);
    lookup.source = Source::Fallback;
    Ok(Flown::new(lookup, started))
}

/// Builds the store write and the answer for what a loader returned in `took`.
pub(super) fn entry_for(
    core: &Core,
    key: &Key,
    policy: &Policy,
    loaded: Loaded,
    took: Duration,
) -> (Option<StoreWrite>, Lookup) {
    let found = loaded.value.is_some();
    let version = loaded.version;
    let ttl = match (found, loaded.ttl) {
        (false, _) => policy.negative_ttl,
        (true, Some(ttl)) => ttl.clamp(core.limits.min_ttl, core.limits.max_ttl),
        (true, None) => core.policies.jittered(policy.ttl),
    };
    let mut entry = Entry::fresh_for(loaded.value, ttl);
    entry.version = version.unwrap_or(0);
    entry.load_ms = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
    let physical_ttl = if found {
        ttl + policy.stale_window()
    } else {
        ttl
    };
    let lookup = Lookup::from_entry(&entry, Source::Loaded);
    // What must never be cached is served to this caller but not written.
    let violation = core.sensitive.key_violation(key).or_else(|| {
        let value = entry.value.as_deref().unwrap_or_default();
        core.sensitive.value_violation(value)
    });
    if let Some(reason) = violation {
        tracing::warn!(entity = %policy.name, %reason, "loader result not cached: sensitive data");
        metrics::counter!("cachecoord_sensitive_not_cached_total", "entity" => policy.name.clone())
            .increment(1);
        return (None, lookup);
    }
    let write = StoreWrite {
        key: key.clone(),
        value: core.encode(key, entry),
        ttl: physical_ttl,
        version,
    };
    (Some(write), lookup)
}

/// Whether an expired entry may stand in for a failed load.
pub(super) fn stale_if_error_allows(entry: &Entry, policy: &Policy) -> bool {
    entry.value.is_some()
        && entry
            .stale_for()
            .is_some_and(|s| s <= policy.stale_if_error)
}
