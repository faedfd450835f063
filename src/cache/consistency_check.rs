//! The staleness sampler's check of one hit, in the background: the caller's answer is already decided and the
//! check never delays it. The rule (docs/reliability.md, "Measuring staleness in production"):
//!
//! 1. Re-read the source through the entity's loader (skipped while its breaker is open). Same value as served
//!    (both absent counts as the same) → `fresh`.
//! 2. Otherwise wait the grace (`staleness_sampler.grace_ms`), then look again: if the replica would still serve
//!    the very entry it served (same value, freshness and version, from the near-cache or the store) and the
//!    source, read again, still differs from it → `stale`: the cache kept serving a value the source had
//!    left at least a grace earlier. Anything else → `in_flight`: an invalidation or fill landed within the grace,
//!    or the source came back to the served value.
//!
//! A loader's answer carries no change time, so "the source changed more than the grace before the cache caught
//! up" is observed rather than computed: the change happened before step 1, and the cache had not caught up a
//! grace after it. Values are compared, never logged; keys appear as `Core::shown` shows them.

use super::entry::Entry;
use super::policy::Policy;
use super::sampler::Sampler;
use super::shared::Core;
use super::types::CheckResult;
use crate::keys::Key;
use crate::loader::Loader;
use std::sync::Arc;
use tracing::Instrument;

/// Offers a hit that answered `entry` for `key` (governed by `policy`) to the sampler: drawn under the entity's
/// rate, and admitted by the budget, it is checked in a task of its own. Off (rate 0), this is one comparison.
pub(super) fn sample_hit(core: &Arc<Core>, policy: &Policy, key: &Key, entry: &Entry) {
    if !Sampler::draws(policy.staleness_sample_rate) {
        return;
    }
    let entity = policy.name.as_str();
    let Some((_, loader)) = core.loaders.for_key(key) else {
        core.stats.record_check(entity, CheckResult::NoLoader);
        return;
    };
    if !loader.available() {
        core.stats.record_check(entity, CheckResult::BreakerOpen);
        return;
    }
    let Some(slot) = core.sampler.admit() else {
        core.stats.record_check(entity, CheckResult::Dropped);
        return;
    };
    let span = tracing::debug_span!("consistency_check", key = %core.shown(key), result = tracing::field::Empty);
    let (core, key, served, loader) = (core.clone(), key.clone(), entry.clone(), loader.clone());
    let check = async move {
        let result = check(&core, &key, &served, loader.as_ref()).await;
        drop(slot);
        tracing::Span::current().record("result", result.label());
        if result == CheckResult::Stale {
            tracing::warn!(key = %core.shown(&key), "staleness sampler: served a value the source had changed");
        }
        core.stats
            .record_check(&core.policies.for_key(&key).name, result);
    };
    tokio::spawn(check.instrument(span));
}

/// Applies the rule to `served`, the entry a hit answered for `key`.
async fn check(core: &Core, key: &Key, served: &Entry, loader: &dyn Loader) -> CheckResult {
    match source_matches(core, key, served, loader).await {
        Some(true) => return CheckResult::Fresh,
        Some(false) => {}
        None => return CheckResult::LoaderError,
    }
    tokio::time::sleep(core.sampler.grace()).await;
    if serving_now(core, key).await.as_ref() != Some(served) {
        return CheckResult::InFlight;
    }
    if !loader.available() {
        return CheckResult::BreakerOpen;
    }
    match source_matches(core, key, served, loader).await {
        Some(true) => CheckResult::InFlight,
        Some(false) => CheckResult::Stale,
        None => CheckResult::LoaderError,
    }
}

/// Whether the source holds what `served` holds; `None` when the loader failed.
async fn source_matches(
    core: &Core,
    key: &Key,
    served: &Entry,
    loader: &dyn Loader,
) -> Option<bool> {
    match loader.load(key).await {
        // Both absent (a remembered "not found" the source still lacks) is a match too.
        Ok(loaded) => Some(served.value == loaded.value),
        Err(error) => {
            tracing::debug!(
                key = %core.shown(key),
                error = %core.shown_error(&error, std::slice::from_ref(key)),
                "staleness sampler: loader failed"
            );
            None
        }
    }
}

/// The entry a hit on this replica would answer now: the near-cache's, else the store's while fresh.
async fn serving_now(core: &Core, key: &Key) -> Option<Entry> {
    let policy = core.policies.for_key(key);
    let near = core
        .near
        .as_ref()
        .filter(|_| policy.near_cache_ttl.is_some())
        .and_then(|near| near.get(key, policy.near_cache_strict));
    match near {
        Some(entry) => Some(entry),
        None => core.fresh_entry(key).await,
    }
}
