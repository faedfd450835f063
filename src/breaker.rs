//! Circuit breakers: after enough consecutive failures of a dependency (a Redis shard, a loader route) the
//! breaker opens and calls skip the dependency at once — Gets fall back or serve stale, writes fail fast —
//! instead of piling onto something that is down. After the cooldown exactly one call is let through as a
//! probe; its success closes the breaker, its failure re-opens it for another cooldown. So a dead dependency sees
//! one call per cooldown, not a thundering herd at every cooldown's end.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Consecutive-failure breaker with a single probe; lock-free, shared by every request.
pub struct Breaker {
    name: String,
    threshold: u32,
    cooldown_ms: u64,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
}

impl Breaker {
    /// A breaker reported as `name` (metric label `breaker`), opening after `threshold` consecutive failures
    /// for `cooldown` at a time.
    pub fn new(name: impl Into<String>, threshold: u32, cooldown: Duration) -> Breaker {
        let name = name.into();
        // Exported closed from the start, so alerts and dashboards see every breaker before it first opens.
        metrics::gauge!("cachecoord_breaker_open", "breaker" => name.clone()).set(0.0);
        Breaker {
            name,
            threshold: threshold.max(1),
            cooldown_ms: u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
        }
    }

    /// Whether a call may use the dependency now: always while closed; while open, only the one caller that
    /// claims the probe after each cooldown.
    pub fn allow(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        let now = now_ms();
        if now < until {
            return false;
        }
        if self.failures.load(Ordering::Acquire) < self.threshold {
            return true;
        }
        // Open and cooled down: the caller that moves the deadline forward is the probe.
        self.open_until_ms
            .compare_exchange(
                until,
                now.saturating_add(self.cooldown_ms),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Whether the breaker is open (without claiming a probe).
    pub fn is_open(&self) -> bool {
        self.failures.load(Ordering::Acquire) >= self.threshold
    }

    /// A call succeeded: close.
    pub fn record_success(&self) {
        if self.failures.swap(0, Ordering::AcqRel) != 0 {
            let was_open = self.open_until_ms.swap(0, Ordering::AcqRel) != 0;
            if was_open {
                metrics::gauge!("cachecoord_breaker_open", "breaker" => self.name.clone()).set(0.0);
                tracing::info!(breaker = %self.name, "dependency answers again: circuit breaker closed");
            }
        }
    }

    /// A call failed for lack of the dependency: count, and (re-)open once the threshold is reached.
    pub fn record_failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold {
            self.open_until_ms
                .store(now_ms().saturating_add(self.cooldown_ms), Ordering::Release);
            if failures == self.threshold {
                metrics::gauge!("cachecoord_breaker_open", "breaker" => self.name.clone()).set(1.0);
                tracing::warn!(breaker = %self.name, failures, "dependency failing: circuit breaker open");
            }
        }
    }
}

/// Milliseconds on a monotonic clock (from the first call, plus one so that 0 can mean "never opened"): a wall
/// clock stepped back by NTP would keep a breaker open for the size of the step.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_closes_on_success() {
        let breaker = Breaker::new("t", 3, Duration::from_secs(60));
        breaker.record_failure();
        breaker.record_failure();
        assert!(breaker.allow());
        breaker.record_failure();
        assert!(!breaker.allow());
        assert!(breaker.is_open());
        breaker.record_success();
        assert!(breaker.allow());
        assert!(!breaker.is_open());
    }

    #[test]
    fn lets_exactly_one_probe_through_after_the_cooldown() {
        let breaker = Breaker::new("t", 1, Duration::from_millis(30));
        breaker.record_failure();
        assert!(!breaker.allow());
        std::thread::sleep(Duration::from_millis(40));
        let probes = (0..10).filter(|_| breaker.allow()).count();
        assert_eq!(probes, 1, "one probe per cooldown");
        breaker.record_failure();
        assert!(!breaker.allow(), "a failed probe re-opens");
        std::thread::sleep(Duration::from_millis(40));
        assert!(breaker.allow());
        breaker.record_success();
        assert_eq!((0..10).filter(|_| breaker.allow()).count(), 10, "closed");
    }
}
