//! Strict mode's membership loop: join while hearing notices, renew a third of a lease apart, leave when deaf
//! or draining, and start a new term (flush) at every join.

use super::NearCache;
use crate::store::Store;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::watch;

impl NearCache {
    /// Joins the near-cache membership while hearing notices and keeps renewing it; leaves when deaf (a deaf
    /// replica serves nothing, so no writer should wait for it) and when `stop` turns true (a replica draining).
    pub(super) async fn keep_membership(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(strict) = &self.strict else {
            return;
        };
        let mut ticker = tokio::time::interval(strict.lease_for / 3);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut member = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = strict.deafened.notified() => {}
                _ = stop.changed() => break,
            }
            if !self.hearing() {
                if member {
                    strict.lease.end();
                    member = false;
                    if let Err(error) = store.leave_membership(self.replica).await {
                        tracing::debug!(%error, "near-cache membership not left");
                    }
                }
                continue;
            }
            let sent = Instant::now();
            // A member whose own lease ran out (renewals failed) may have been left out by writers meanwhile:
            // it joins again, flushing, rather than renew (a renewal could still succeed on a store whose clock,
            // after a failover, runs behind the one that stamped the lease).
            let join = !member || !strict.lease.serving();
            match store
                .renew_membership(self.replica, strict.lease_for, join)
                .await
            {
                Ok(true) => {
                    if join {
                        self.start_term();
                        member = true;
                        tracing::info!(member = self.replica, "near-cache member joined");
                    }
                    strict.lease.granted(sent, strict.lease_for, strict.margin);
                }
                Ok(false) => {
                    // Lapsed or revoked: it may have missed notices. Stop now, join again (flushing) at once.
                    strict.lease.end();
                    member = false;
                    tracing::info!("near-cache membership lost: joining again");
                    ticker.reset_immediately();
                }
                // The lease lapses on its own if renewals keep failing.
                Err(error) => tracing::debug!(%error, "near-cache membership not renewed"),
            }
        }
        strict.lease.end();
        if let Err(error) = store.leave_membership(self.replica).await {
            tracing::debug!(%error, "near-cache membership not left");
        }
    }

    /// A new membership term: forget everything held (it may predate notices this replica was not waited for)
    /// and void reads begun before the join, which may have read older values than writers acknowledged since.
    fn start_term(&self) {
        let _ordered = self.ordered();
        self.sequence.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
    }
}
