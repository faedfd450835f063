//! The embedded store's near-cache membership: the same rules as the Redis store's (`store/redis/membership.rs`),
//! on one process's clock. In one process the only members are this process's own near-caches.

use crate::store::Members;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Near-cache members and when their lease ends, and the revoked ones until their lease would have ended.
#[derive(Default)]
pub(super) struct Membership(Mutex<Leases>);

#[derive(Default)]
struct Leases {
    live: HashMap<u64, Instant>,
    revoked: HashMap<u64, Instant>,
}

impl Membership {
    /// The leases still running.
    fn now(&self) -> MutexGuard<'_, Leases> {
        let mut leases = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        leases.live.retain(|_, ends| *ends > now);
        leases.revoked.retain(|_, ends| *ends > now);
        leases
    }

    /// Extends `member`'s lease to `lease` from now; a renewal (not `join`) of a member whose lease lapsed or was
    /// revoked is refused.
    pub(super) fn renew(&self, member: u64, lease: Duration, join: bool) -> bool {
        let mut leases = self.now();
        if !join && !leases.live.contains_key(&member) {
            return false;
        }
        leases.live.insert(member, Instant::now() + lease);
        true
    }

    pub(super) fn leave(&self, member: u64) {
        self.now().live.remove(&member);
    }

    /// The live members, and the revoked ones with what their lease still runs.
    pub(super) fn list(&self) -> Members {
        let leases = self.now();
        let now = Instant::now();
        Members {
            live: leases.live.keys().copied().collect(),
            revoked: leases
                .revoked
                .iter()
                .map(|(member, ends)| (*member, ends.saturating_duration_since(now)))
                .collect(),
        }
    }

    /// Ends `member`'s lease early: it can no longer renew, and is kept as revoked until its lease would have
    /// ended. Answers what that lease still ran (zero when it was no member).
    pub(super) fn revoke(&self, member: u64) -> Duration {
        let mut leases = self.now();
        let Some(ends) = leases.live.remove(&member) else {
            return Duration::ZERO;
        };
        let kept = leases.revoked.entry(member).or_insert(ends);
        *kept = (*kept).max(ends);
        ends.saturating_duration_since(Instant::now())
    }
}
