//! One pattern invalidation at a time per pattern on this replica, and retries folded into the next run.
//!
//! A caller whose InvalidatePattern timed out retries it (the documented advice on UNAVAILABLE) while the first
//! run may still be deleting; each retry starting its own run multiplied the work on the Redis primaries by the
//! number of retries. Here a run of a pattern waits for the run before it, and a caller whose request arrived
//! before the latest run *started* takes that run's answer instead of starting another: that run read the group
//! after the caller asked, so it deleted everything the caller's own run would have. A run is its caller's own
//! work, inside that caller's admission slot: a caller that gives up ends its run (after the script in flight),
//! and the next waiter runs instead, so no caller can leave runs going after its calls have ended.
//!
//! The count a joiner answers is the joined run's: keys this replica's run deleted, not keys deleted for this
//! call alone.

use crate::keys::Pattern;
use crate::store::Store;
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Slots kept before those no one uses are pruned.
const PRUNE_AT: usize = 1024;

/// The pattern invalidations running on this replica.
#[derive(Default)]
pub(super) struct PatternRuns {
    /// Orders requests and run starts: a run covers the requests numbered below its start.
    clock: AtomicU64,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<LastRun>>>>>,
}

/// The latest finished run of one pattern.
struct LastRun {
    started: u64,
    deleted: Result<u64, Arc<Error>>,
}

impl PatternRuns {
    /// Deletes every key matching `pattern` in `store`, or answers with a run that started after this call.
    pub(super) async fn run(&self, store: &Arc<dyn Store>, pattern: &Pattern) -> Result<u64> {
        let arrived = self.clock.fetch_add(1, Ordering::AcqRel);
        let name = pattern.to_string();
        let slot = {
            let mut slots = self.lock();
            // Slots left by callers that went away mid-run: pruned in bulk, rarely.
            if slots.len() >= PRUNE_AT {
                slots.retain(|_, slot| Arc::strong_count(slot) > 1);
            }
            slots.entry(name.clone()).or_default().clone()
        };
        let answer = {
            let mut last = slot.lock().await;
            match last.as_ref() {
                Some(run) if run.started > arrived => {
                    metrics::counter!("cachecoord_pattern_runs_total", "outcome" => "joined")
                        .increment(1);
                    run.deleted.clone().map_err(Error::Shared)
                }
                _ => {
                    metrics::counter!("cachecoord_pattern_runs_total", "outcome" => "ran")
                        .increment(1);
                    let started = self.clock.fetch_add(1, Ordering::AcqRel);
                    let deleted = store.delete_matching(pattern).await.map_err(Arc::new);
                    *last = Some(LastRun {
                        started,
                        deleted: deleted.clone(),
                    });
                    deleted.map_err(Error::Shared)
                }
            }
        };
        // The last user of a pattern's slot removes it, so the map holds only patterns in use.
        drop(slot);
        let mut slots = self.lock();
        if slots.get(&name).is_some_and(|s| Arc::strong_count(s) == 1) {
            slots.remove(&name);
        }
        answer
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<Option<LastRun>>>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}
