//! Background refresh: a hit may reload its key before expiry (XFetch), and a stale serve reloads it behind the
//! answer. One refresh per key per replica (the flights' refresh marks), and across replicas only the lease holder
//! loads, so one refresh runs per key.

use super::entry::Entry;
use super::lease::Lease;
use super::load::entry_for;
use super::shared::Core;
use crate::keys::Key;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// Refreshes `key` in the background unless this replica already is.
pub(super) fn refresh_in_background(core: Arc<Core>, key: Key) {
    let Some(refreshing) = core.flights.begin_refresh(&key) else {
        return;
    };
    let span = tracing::info_span!("refresh", key = %core.shown(&key));
    let refresh = async move {
        let _refreshing = refreshing;
        let Some((_, loader)) = core.loaders.for_key(&key) else {
            return;
        };
        // Someone else holds the lease: they are loading it already.
        let Ok(Some(lease)) = Lease::try_take(&core, &key).await else {
            return;
        };
        let policy = core.policies.for_key(&key);
        let started = Instant::now();
        match loader.load(&key).await {
            Ok(loaded) => match entry_for(&core, &key, policy, loaded, started.elapsed()).0 {
                // Voided or failed, the entry stays as it is until the next miss loads it.
                Some(write) => {
                    lease.fill(&write).await;
                }
                None => lease.release().await,
            },
            Err(error) => {
                tracing::warn!(
                    key = %core.shown(&key),
                    error = %core.shown_error(&error, std::slice::from_ref(&key)),
                    "background refresh failed"
                );
                lease.release().await;
            }
        }
    };
    tokio::spawn(refresh.instrument(span));
}

/// XFetch (Vattani et al., VLDB 2015): refresh early when `now − δ·β·ln(rand) ≥ expiry`, δ being the last load's
/// duration. The closer expiry and the slower the load, the likelier an early refresh.
pub(super) fn xfetch_says_refresh(entry: &Entry, beta: f64) -> bool {
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
    use std::time::Duration;

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
