//! A circuit breaker for the store: after enough consecutive failures it opens, keeping Gets away from a dead
//! Redis (they go to the loader instead) and failing writes fast; after a cooldown it lets traffic probe again,
//! and the first success closes it.

use super::entry::now_ms;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Consecutive-failure breaker; lock-free, shared by every request.
pub(crate) struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures, for `cooldown` at a time.
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold,
            cooldown_ms: u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
        }
    }

    /// Whether calls should skip the store right now.
    pub(crate) fn is_open(&self) -> bool {
        now_ms() < self.open_until_ms.load(Ordering::Relaxed)
    }

    /// A store call succeeded: close.
    pub(crate) fn record_success(&self) {
        if self.failures.swap(0, Ordering::Relaxed) != 0 {
            self.open_until_ms.store(0, Ordering::Relaxed);
            metrics::gauge!("cachecoord_breaker_open").set(0.0);
            tracing::info!("store reachable again: circuit breaker closed");
        }
    }

    /// A store call failed for lack of the store: count, and open once the threshold is reached.
    pub(crate) fn record_failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.threshold {
            self.open_until_ms
                .store(now_ms().saturating_add(self.cooldown_ms), Ordering::Relaxed);
            if failures == self.threshold {
                metrics::gauge!("cachecoord_breaker_open").set(1.0);
                tracing::warn!(failures, "store unreachable: circuit breaker open");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_closes_on_success() {
        let breaker = Breaker::new(3, Duration::from_secs(60));
        breaker.record_failure();
        breaker.record_failure();
        assert!(!breaker.is_open());
        breaker.record_failure();
        assert!(breaker.is_open());
        breaker.record_success();
        assert!(!breaker.is_open());
    }

    #[test]
    fn lets_a_probe_through_after_the_cooldown() {
        let breaker = Breaker::new(1, Duration::ZERO);
        breaker.record_failure();
        assert!(!breaker.is_open());
    }
}
