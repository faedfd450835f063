//! Waiting for a caller's fill, once per key on each replica. Every waiter of a key held by another caller
//! would otherwise wake on each lease event and each safety poll to read the key: a stampede of a few thousand
//! waiting callers then costs the store more reads than it can answer, the fill itself queues behind them, and
//! the waits run out. Here the waiters of one key line up: one at a time watches the store (its lease events, the
//! poll, one read per wake), and a fresh value it reads is passed to every other waiter of the key at once.
//!
//! A value passed on is taken only by waiters that began waiting before its read began, so it is never older than
//! a write or an invalidation acknowledged before such a waiter's own read: the same guarantee as reading it
//! itself.

use super::entry::Entry;
use crate::keys::Key;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// The waiters of each key on this replica.
#[derive(Default)]
pub(super) struct FillWatches {
    keys: Mutex<HashMap<Key, Weak<FillWatch>>>,
}

/// One key's waiters.
struct FillWatch {
    /// Held by the waiter watching the store.
    watching: tokio::sync::Mutex<()>,
    /// The last fresh value a watcher read, with when its read began.
    seen: watch::Sender<Option<(Instant, Entry)>>,
}

impl FillWatches {
    /// Waits until `key` is filled (its fresh value, read after this wait began), or until a lease event for it, the
    /// safety poll or `until` ends this waiter's turn at watching (`None`: the caller looks at the lease again).
    /// `events` is the caller's subscription to lease events, taken before its first look at the lease; the safety
    /// poll comes every `poll`; `read` reads the key's fresh value (`None` when there is none).
    pub(super) async fn wait<Read>(
        &self,
        key: &Key,
        events: &mut broadcast::Receiver<Arc<str>>,
        until: Instant,
        poll: Duration,
        read: impl FnOnce() -> Read,
    ) -> Option<Entry>
    where
        Read: Future<Output = Option<Entry>>,
    {
        let joined = Joined::new(self, key);
        let began = Instant::now();
        let mut seen = joined.watch().seen.subscribe();
        let watched = async {
            let _watching = joined.watch().watching.lock().await;
            // What was announced while this waiter stood in line, earlier watchers have looked at; a later fill
            // is caught by the next event or the poll. Without this, each waiter in line would wake at once on
            // the same old event and read and retake the key in turn.
            while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = events.try_recv() {}
            wait_for_event(key, events, (Instant::now() + poll).min(until)).await;
            let read_from = Instant::now();
            let entry = read().await?;
            joined
                .watch()
                .seen
                .send_replace(Some((read_from, entry.clone())));
            Some(entry)
        };
        tokio::select! {
            entry = seen_since(&mut seen, began) => Some(entry),
            entry = watched => entry,
            () = tokio::time::sleep_until(until.into()) => None,
        }
    }
}

/// A waiter's place among its key's waiters; the key's entry goes when its last waiter does.
struct Joined<'a> {
    watches: &'a FillWatches,
    key: &'a Key,
    /// Taken only when leaving.
    watch: Option<Arc<FillWatch>>,
}

impl<'a> Joined<'a> {
    fn new(watches: &'a FillWatches, key: &'a Key) -> Joined<'a> {
        let mut keys = watches.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let watch = match keys.get(key).and_then(Weak::upgrade) {
            Some(watch) => watch,
            None => {
                let watch = Arc::new(FillWatch {
                    watching: tokio::sync::Mutex::new(()),
                    seen: watch::Sender::new(None),
                });
                keys.insert(key.clone(), Arc::downgrade(&watch));
                watch
            }
        };
        Joined {
            watches,
            key,
            watch: Some(watch),
        }
    }

    fn watch(&self) -> &FillWatch {
        self.watch.as_deref().expect("held until the waiter leaves")
    }
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        let mut keys = self
            .watches
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Let go of ours under the map's lock (which every new waiter takes first): whoever sees no strong
        // reference left removes the entry, so two waiters leaving together cannot both leave it behind.
        drop(self.watch.take());
        if keys
            .get(self.key)
            .is_some_and(|watch| watch.strong_count() == 0)
        {
            keys.remove(self.key);
        }
    }
}

/// The first value another waiter passes on whose read began at or after `began`.
async fn seen_since(seen: &mut watch::Receiver<Option<(Instant, Entry)>>, began: Instant) -> Entry {
    loop {
        if seen.changed().await.is_err() {
            // The sender lives as long as the key's watch, which this waiter holds: not reached.
            std::future::pending::<()>().await;
        }
        if let Some((read_from, entry)) = &*seen.borrow_and_update()
            && *read_from >= began
        {
            return entry.clone();
        }
    }
}

/// Waits until a fill or release of `key` is announced, or `wake` comes (the safety poll, or the end of the wait).
async fn wait_for_event(key: &Key, events: &mut broadcast::Receiver<Arc<str>>, wake: Instant) {
    metrics::counter!("cachecoord_lease_waits_total").increment(1);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(announced) if &*announced != key.as_str() => continue,
                // No more events: the poll alone wakes us.
                Err(broadcast::error::RecvError::Closed) => {
                    tokio::time::sleep_until(wake.into()).await;
                    return;
                }
                // Ours, or events were lost (lagged): look now.
                _ => return,
            },
            () = tokio::time::sleep_until(wake.into()) => return,
        }
    }
}
