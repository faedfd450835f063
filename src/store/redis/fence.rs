//! One node's invalidation fence, shared by the invalidations running at once (a group commit).
//!
//! An invalidation is acknowledged once enough replicas have it: after its deletes, a fence writes a key on the
//! node and `WAIT`s for that write. The write puts the fence behind every write the node made before it in the
//! replication stream, so a replica holding the fence holds the deletes too — on every Redis version (from 7.2,
//! `WAIT` after a command that wrote nothing answers at once) and whichever connection the deletes used.
//!
//! `WAIT` blocks its connection until it answers, and takes its full timeout while a replica lags. So fences run
//! one at a time per node, and each invalidation shares the outcome of the first fence that started after its
//! deletes finished: fifty concurrent invalidations against a lagging replica cost two waits, not fifty queued
//! ones, and none holds up the node's reads and writes (they use another connection).

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Mutex;

/// A node's fence: how many fences have started, and how the last one finished.
pub(super) struct Fence {
    started: AtomicU64,
    /// (sequence number, outcome) of the last fence to finish; held while a fence runs.
    last: Mutex<Option<(u64, Result<(), String>)>>,
}

impl Fence {
    pub(super) fn new() -> Fence {
        Fence {
            started: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// Fences every write the caller finished before calling: answers the outcome of a fence that started after
    /// this call began (one already finished, or `run` now). `Err` carries why the fence failed.
    pub(super) async fn after_writes<F, Fut>(&self, run: F) -> Result<(), String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        // A fence numbered `needed` or later starts after this point, so after the caller's writes.
        let needed = self.started.load(Ordering::SeqCst) + 1;
        let mut last = self.last.lock().await;
        if let Some((sequence, outcome)) = last.as_ref()
            && *sequence >= needed
        {
            return outcome.clone();
        }
        let sequence = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let outcome = run().await;
        *last = Some((sequence, outcome.clone()));
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Notify;

    #[tokio::test]
    async fn callers_arriving_during_a_fence_share_the_next_one() {
        let fence = Arc::new(Fence::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (started, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let first = {
            let (fence, runs, started, gate) =
                (fence.clone(), runs.clone(), started.clone(), gate.clone());
            tokio::spawn(async move {
                fence
                    .after_writes(|| async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        started.notify_one();
                        gate.notified().await;
                        Err::<(), _>("lagging".to_owned())
                    })
                    .await
            })
        };
        started.notified().await;
        let later: Vec<_> = (0..20)
            .map(|_| {
                let (fence, runs) = (fence.clone(), runs.clone());
                tokio::spawn(async move {
                    fence
                        .after_writes(|| async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            Err::<(), _>("still lagging".to_owned())
                        })
                        .await
                })
            })
            .collect();
        // The test runtime has one thread: yielding lets every later caller reach the fence's lock.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert_eq!(first.await.unwrap(), Err("lagging".to_owned()));
        for call in later {
            assert_eq!(call.await.unwrap(), Err("still lagging".to_owned()));
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "one fence for the first caller, one shared by the twenty that arrived during it"
        );
    }

    #[tokio::test]
    async fn a_fence_that_started_before_the_call_does_not_cover_it() {
        let fence = Fence::new();
        fence.after_writes(|| async { Ok(()) }).await.unwrap();
        let mut ran = false;
        fence
            .after_writes(|| async {
                ran = true;
                Ok(())
            })
            .await
            .unwrap();
        assert!(ran);
    }
}
