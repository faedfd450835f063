//! The staleness sampler's budget: which hits get checked against the source. An entity opts in with
//! `staleness_sample_rate`; a hit drawn under that rate is checked only if a slot is free (at most
//! `staleness_sampler.max_in_flight` checks at once) and the token bucket has a token (at most
//! `max_checks_per_sec` started per second). Otherwise the sample is dropped, never queued: sampling must cost the
//! loaders a known bound and the callers nothing. The check itself is in `consistency_check`.

use crate::config::StalenessSamplerConfig;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The replica's sampling budget, shared by every entity.
pub(crate) struct Sampler {
    /// One permit per check running, held until its verdict (the grace wait included).
    slots: Arc<Semaphore>,
    bucket: Mutex<Bucket>,
    /// How long a mismatch may last before it counts as stale.
    grace: Duration,
}

/// Tokens for starting checks: refilled at `per_sec`, holding at most one second's worth.
struct Bucket {
    tokens: f64,
    per_sec: f64,
    refilled_at: Instant,
}

impl Sampler {
    pub(crate) fn new(config: &StalenessSamplerConfig) -> Sampler {
        let per_sec = f64::from(config.max_checks_per_sec.max(1));
        Sampler {
            slots: Arc::new(Semaphore::new(config.max_in_flight.max(1) as usize)),
            bucket: Mutex::new(Bucket {
                tokens: per_sec,
                per_sec,
                refilled_at: Instant::now(),
            }),
            grace: config.grace,
        }
    }

    /// Whether a hit under `rate` is drawn for a check (before any bound is asked).
    pub(crate) fn draws(rate: f64) -> bool {
        rate >= 1.0 || (rate > 0.0 && rand::random::<f64>() < rate)
    }

    /// A slot for one check, or `None` when the concurrency or rate bound says drop it.
    pub(crate) fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(bucket.refilled_at).as_secs_f64() * bucket.per_sec;
        bucket.tokens = (bucket.tokens + refill).min(bucket.per_sec);
        bucket.refilled_at = now;
        if bucket.tokens < 1.0 {
            return None;
        }
        bucket.tokens -= 1.0;
        Some(slot)
    }

    /// How long a mismatch may last before it counts as stale (`staleness_sampler.grace_ms`).
    pub(crate) fn grace(&self) -> Duration {
        self.grace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(max_in_flight: u32, max_checks_per_sec: u32) -> Sampler {
        Sampler::new(&StalenessSamplerConfig {
            max_in_flight,
            max_checks_per_sec,
            grace: Duration::from_millis(10),
        })
    }

    #[test]
    fn never_more_checks_at_once_than_the_slots() {
        let sampler = sampler(2, 1000);
        let first = sampler.admit().unwrap();
        let _second = sampler.admit().unwrap();
        assert!(sampler.admit().is_none(), "a third is dropped, not queued");
        drop(first);
        assert!(sampler.admit().is_some(), "a finished check frees its slot");
    }

    #[test]
    fn never_more_checks_started_than_the_rate() {
        let sampler = sampler(1000, 5);
        let started: Vec<_> = (0..20).map_while(|_| sampler.admit()).collect();
        assert_eq!(started.len(), 5, "one second's worth of tokens, then none");
    }

    #[test]
    fn draws_follow_the_rate() {
        assert!(!Sampler::draws(0.0));
        assert!((0..100).all(|_| Sampler::draws(1.0)));
        let drawn = (0..10_000).filter(|_| Sampler::draws(0.1)).count();
        assert!((500..1500).contains(&drawn), "{drawn} of 10000 at 0.1");
    }
}
