//! The near-cache: a bounded in-process copy of hot keys of opted-in entities, so they answer without a Redis
//! round trip, kept coherent across replicas by notices.
//!
//! Every invalidation (Invalidate, InvalidatePattern, Set, outbox-driven) is published as a notice that every
//! replica applies to its near-cache, so after an invalidation returns, other replicas stop serving the old value
//! within the pub/sub delay (measured in `tests/near_cache.rs`). A replica that may have missed notices serves
//! nothing from its near-cache: when the store says the subscription was lost, or when its own heartbeat has not
//! come back within `deaf_after`, it turns deaf; it hears again only after flushing and receiving a heartbeat
//! sent after the flush.
//!
//! A read that raced a notice must not put the old value back: each notice bumps a sequence number, and a value
//! read from the store is inserted only if no notice arrived while it was being read.

use super::entry::{Entry, now_ms};
use crate::config::NearCacheConfig;
use crate::keys::{Key, Pattern};
use crate::store::{Heard, Notice, Store};
use moka::Expiry;
use moka::sync::Cache;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// Bytes charged per entry beyond key and value.
const ENTRY_OVERHEAD_BYTES: usize = 128;

#[derive(Clone)]
struct Held {
    entry: Entry,
    hold_for: Duration,
}

struct HoldFor;

impl Expiry<Key, Held> for HoldFor {
    fn expire_after_create(&self, _: &Key, held: &Held, _: Instant) -> Option<Duration> {
        Some(held.hold_for)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        held: &Held,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(held.hold_for)
    }
}

/// One replica's near-cache and its hearing.
pub(crate) struct NearCache {
    cache: Cache<Key, Held>,
    /// Random id telling this replica's heartbeats from the others'.
    replica: u64,
    /// Bumped by every notice; see the module docs.
    sequence: AtomicU64,
    /// Set when notices may have been missed; cleared by the first own heartbeat sent after the flush.
    deaf: AtomicBool,
    /// The heartbeat sequence number at the last flush: only a later heartbeat proves we hear again.
    flushed_at_beat: AtomicU64,
    /// When (Unix ms) this replica last heard its own heartbeat.
    heard_at_ms: AtomicU64,
    /// Next heartbeat sequence number.
    beat: AtomicU64,
    deaf_after: Duration,
    heartbeat: Duration,
}

impl NearCache {
    /// A near-cache bounded by `config.max_bytes`; starts deaf until its first heartbeat comes back.
    pub(crate) fn new(config: &NearCacheConfig) -> NearCache {
        let cache = Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|key: &Key, held: &Held| {
                let value = held.entry.value.as_ref().map_or(0, |v| v.len());
                u32::try_from(key.as_str().len() + value + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX)
            })
            .expire_after(HoldFor)
            .build();
        NearCache {
            cache,
            replica: rand::random(),
            sequence: AtomicU64::new(0),
            deaf: AtomicBool::new(true),
            flushed_at_beat: AtomicU64::new(0),
            heard_at_ms: AtomicU64::new(0),
            beat: AtomicU64::new(1),
            deaf_after: config.deaf_after,
            heartbeat: config.heartbeat,
        }
    }

    /// Whether the near-cache may answer: not deaf, and our own heartbeat came back recently.
    pub(crate) fn hearing(&self) -> bool {
        !self.deaf.load(Ordering::Acquire)
            && Duration::from_millis(
                now_ms().saturating_sub(self.heard_at_ms.load(Ordering::Acquire)),
            ) < self.deaf_after
    }

    /// The entry held for `key`, if the near-cache may answer and it is still fresh.
    pub(crate) fn get(&self, key: &Key) -> Option<Entry> {
        if !self.hearing() {
            return None;
        }
        self.cache
            .get(key)
            .map(|held| held.entry)
            .filter(|entry| entry.stale_for().is_none())
    }

    /// The notice sequence number, taken before reading the store.
    pub(crate) fn sequence(&self) -> u64 {
        self.sequence.load(Ordering::Acquire)
    }

    /// Holds `entry` for at most `cap` (never past its freshness), unless a notice arrived since `sequence` was
    /// taken or the replica is deaf.
    pub(crate) fn insert(&self, key: &Key, entry: &Entry, cap: Duration, sequence: u64) {
        let Some(left) = entry.ttl_remaining() else {
            return;
        };
        if !self.hearing() || self.sequence() != sequence {
            return;
        }
        let held = Held {
            entry: entry.clone(),
            hold_for: left.min(cap),
        };
        self.cache.insert(key.clone(), held);
        // A notice (or a flush) that slipped in between the check and the insert may name this key: drop it.
        if self.sequence() != sequence || !self.hearing() {
            self.cache.invalidate(key);
        }
    }

    /// Evicts `keys` here at once (the notice reaches other replicas through the store).
    pub(crate) fn evict(&self, keys: &[Key]) {
        self.sequence.fetch_add(1, Ordering::AcqRel);
        for key in keys {
            self.cache.invalidate(key);
        }
    }

    /// Evicts every key matching `pattern` here at once.
    pub(crate) fn evict_matching(&self, pattern: &Pattern) {
        self.sequence.fetch_add(1, Ordering::AcqRel);
        self.evict_pattern(pattern);
    }

    fn evict_pattern(&self, pattern: &Pattern) {
        for (key, _) in self.cache.iter() {
            if pattern.matches(key.as_str()) {
                self.cache.invalidate(key.as_ref());
            }
        }
    }

    fn apply(&self, heard: Heard) {
        self.sequence.fetch_add(1, Ordering::AcqRel);
        match heard {
            Heard::Notice(Notice::Keys(keys)) => {
                for raw in keys {
                    if let Ok(key) = Key::parse(&raw, usize::MAX) {
                        self.cache.invalidate(&key);
                    }
                }
            }
            Heard::Notice(Notice::Pattern(pattern)) => {
                match Pattern::parse(&pattern, usize::MAX, true) {
                    Ok(pattern) => self.evict_pattern(&pattern),
                    Err(_) => self.cache.invalidate_all(),
                }
            }
            Heard::Notice(Notice::Heartbeat(replica, beat)) => {
                // Silent too long, and the tick has not noticed yet: flush before hearing again. (Already deaf
                // means already flushed, with `flushed_at_beat` set then.)
                if replica == self.replica && !self.deaf.load(Ordering::Acquire) && !self.hearing()
                {
                    self.turn_deaf();
                }
                if replica == self.replica && beat >= self.flushed_at_beat.load(Ordering::Acquire) {
                    self.heard_at_ms.store(now_ms(), Ordering::Release);
                    self.deaf.store(false, Ordering::Release);
                }
            }
            Heard::Lost => self.turn_deaf(),
        }
    }

    /// Stops answering and forgets everything: notices may have been missed.
    fn turn_deaf(&self) {
        // Voids inserts racing this flush (see `insert`).
        self.sequence.fetch_add(1, Ordering::AcqRel);
        if !self.deaf.swap(true, Ordering::AcqRel) {
            tracing::warn!("near-cache lost its notices: serving from Redis until it hears again");
        }
        self.flushed_at_beat
            .store(self.beat.load(Ordering::Acquire), Ordering::Release);
        self.cache.invalidate_all();
    }

    /// Applies notices and sends heartbeats until `stop` turns true.
    pub(crate) async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut notices = store.notices();
        let mut ticker = tokio::time::interval(self.heartbeat);
        loop {
            tokio::select! {
                heard = notices.recv() => match heard {
                    Ok(heard) => self.apply(heard),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.turn_deaf(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick() => {
                    // Missing our own heartbeats means missing everyone's notices.
                    if !self.hearing() && !self.deaf.load(Ordering::Acquire) {
                        self.turn_deaf();
                    }
                    // Sent from its own task so a slow publish never delays applying notices.
                    let notice = Notice::Heartbeat(self.replica, self.beat.fetch_add(1, Ordering::AcqRel));
                    let store = store.clone();
                    tokio::spawn(async move {
                        if let Err(error) = store.publish(&notice).await {
                            tracing::debug!(%error, "near-cache heartbeat not sent");
                        }
                    });
                }
                _ = stop.changed() => return,
            }
        }
    }
}
