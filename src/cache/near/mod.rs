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
//! read from the store is inserted only if no notice arrived while it was being read (checked and inserted under
//! the same lock that applying a notice takes, so once a notice is applied no older read can slip in).
//!
//! Keys of `near_cache = "strict"` policies are served only while this replica holds its near-cache membership
//! lease (`strict`); the membership is kept here, beside the heartbeats, and every strict notice applied here is
//! acknowledged to its writer.

use super::entry::{Entry, now_ms};
mod membership;

use super::strict::{MemberLease, Pending, send_acks};
use crate::Result;
use crate::config::NearCacheConfig;
use crate::keys::{Key, Pattern};
use crate::store::{Heard, Notice, Stamp, Store};
use moka::Expiry;
use moka::sync::Cache;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};

/// Bytes charged per entry beyond key and value.
const ENTRY_OVERHEAD_BYTES: usize = 128;
/// Notice delays kept for the percentiles Stats reports.
const DELAYS_KEPT: usize = 1024;

/// How long notices took from their sender to this replica, over the last `DELAYS_KEPT` that said when they were
/// sent (heartbeats included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoticeDelays {
    /// Notices measured since start-up.
    pub measured: u64,
    /// Median of the kept delays.
    pub p50: Duration,
    /// 99th percentile of the kept delays.
    pub p99: Duration,
}

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
    /// The last notice delays, and how many were measured.
    delays: Mutex<(VecDeque<Duration>, u64)>,
    /// Orders inserts against applied notices and flushes (see the module docs).
    order: Mutex<()>,
    /// Strict mode, when some policy asks for it.
    strict: Option<Strict>,
}

/// What strict mode keeps: this replica's membership lease, its own strict notices waiting for members, and the
/// acknowledgements it owes other writers.
struct Strict {
    lease: MemberLease,
    pending: Arc<Pending>,
    /// Stamps of strict notices applied here, for `send_acks`.
    applied: mpsc::UnboundedSender<Stamp>,
    /// Taken by `run`, which starts `send_acks`.
    to_ack: Mutex<Option<mpsc::UnboundedReceiver<Stamp>>>,
    lease_for: Duration,
    margin: Duration,
    ack_timeout: Duration,
    /// Wakes the membership loop when this replica turns deaf, so it leaves at once: a writer then finds it gone
    /// instead of waiting out its lease for a notice it may never have heard.
    deafened: tokio::sync::Notify,
}

impl NearCache {
    /// A near-cache bounded by `config.max_bytes`; starts deaf until its first heartbeat comes back. With
    /// `strict`, this replica is a near-cache member (see `strict`).
    pub(crate) fn new(config: &NearCacheConfig, strict: bool) -> NearCache {
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
            delays: Mutex::new((VecDeque::with_capacity(DELAYS_KEPT), 0)),
            order: Mutex::new(()),
            strict: strict.then(|| {
                let (applied, to_ack) = mpsc::unbounded_channel();
                Strict {
                    lease: MemberLease::new(),
                    pending: Arc::default(),
                    applied,
                    to_ack: Mutex::new(Some(to_ack)),
                    lease_for: config.member_lease,
                    margin: config.member_lease_margin,
                    ack_timeout: config.strict_ack_timeout,
                    deafened: tokio::sync::Notify::new(),
                }
            }),
        }
    }

    fn ordered(&self) -> std::sync::MutexGuard<'_, ()> {
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a strict key may be served from here now: this replica holds its membership lease.
    fn serving_strict(&self) -> bool {
        self.strict.as_ref().is_some_and(|s| s.lease.serving())
    }

    /// Whether the near-cache may answer: not deaf, and our own heartbeat came back recently.
    pub(crate) fn hearing(&self) -> bool {
        !self.deaf.load(Ordering::Acquire)
            && Duration::from_millis(
                now_ms().saturating_sub(self.heard_at_ms.load(Ordering::Acquire)),
            ) < self.deaf_after
    }

    /// The entry held for `key`, if the near-cache may answer (for a `strict` key: while the membership lease
    /// runs) and it is still fresh.
    pub(crate) fn get(&self, key: &Key, strict: bool) -> Option<Entry> {
        if !self.hearing() || (strict && !self.serving_strict()) {
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
    /// taken, the replica is deaf, or (for a `strict` key) it holds no membership lease.
    pub(crate) fn insert(
        &self,
        key: &Key,
        entry: &Entry,
        cap: Duration,
        sequence: u64,
        strict: bool,
    ) {
        let Some(left) = entry.ttl_remaining() else {
            return;
        };
        let _ordered = self.ordered();
        if !self.hearing() || self.sequence() != sequence || (strict && !self.serving_strict()) {
            return;
        }
        let held = Held {
            entry: entry.clone(),
            hold_for: left.min(cap),
        };
        self.cache.insert(key.clone(), held);
    }

    /// Evicts `keys` here at once (the notice reaches other replicas through the store).
    pub(crate) fn evict(&self, keys: &[Key]) {
        let _ordered = self.ordered();
        self.sequence.fetch_add(1, Ordering::AcqRel);
        for key in keys {
            self.cache.invalidate(key);
        }
    }

    /// Evicts every key matching `pattern` here at once.
    pub(crate) fn evict_matching(&self, pattern: &Pattern) {
        let _ordered = self.ordered();
        self.sequence.fetch_add(1, Ordering::AcqRel);
        self.evict_pattern(pattern);
    }

    /// Sends a strict write's notice (built from its stamp) and waits until no other member can serve the older
    /// value: each acknowledged it, or was revoked and its lease ran out. `succeeded` says whether the store call
    /// did; a failed call is not acknowledged anyway, so it only sends the notice.
    pub(crate) async fn announce_strict(
        &self,
        store: &dyn Store,
        notice: impl FnOnce(Stamp) -> Notice,
        succeeded: bool,
    ) -> Result<()> {
        let Some(strict) = &self.strict else {
            // Not a member (no strict policy here): a plain notice is all there is to send.
            let published = store
                .publish(&notice(Stamp {
                    writer: self.replica,
                    seq: 0,
                }))
                .await;
            return if succeeded { published } else { Ok(()) };
        };
        let waiting = strict.pending.begin(self.replica);
        let published = store.publish(&notice(waiting.stamp())).await;
        if !succeeded {
            return Ok(());
        }
        published?;
        waiting.confirmed(store, strict.ack_timeout).await
    }

    fn evict_pattern(&self, pattern: &Pattern) {
        for (key, _) in self.cache.iter() {
            if pattern.matches(key.as_str()) {
                self.cache.invalidate(key.as_ref());
            }
        }
    }

    /// The notice delays measured here.
    pub(crate) fn notice_delays(&self) -> NoticeDelays {
        let delays = self.delays.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept: Vec<Duration> = delays.0.iter().copied().collect();
        kept.sort();
        let at = |q: f64| {
            kept.get(((kept.len() as f64 * q) as usize).min(kept.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        NoticeDelays {
            measured: delays.1,
            p50: at(0.5),
            p99: at(0.99),
        }
    }

    fn record_delay(&self, delay: Duration) {
        metrics::histogram!("cachecoord_near_notice_delay_seconds").record(delay.as_secs_f64());
        let mut delays = self.delays.lock().unwrap_or_else(|e| e.into_inner());
        if delays.0.len() == DELAYS_KEPT {
            delays.0.pop_front();
        }
        delays.0.push_back(delay);
        delays.1 += 1;
    }

    fn apply(&self, heard: Heard) {
        match heard {
            Heard::Delay(delay) => return self.record_delay(delay),
            Heard::Notice(Notice::Acks(acks)) => {
                if let Some(strict) = &self.strict
                    && acks.writer == self.replica
                {
                    strict.pending.acked(&acks);
                }
                return;
            }
            _ => {}
        }
        let _ordered = self.ordered();
        self.sequence.fetch_add(1, Ordering::AcqRel);
        let mut stamp = None;
        match heard {
            Heard::Notice(Notice::Keys(keys)) => self.evict_raw(keys),
            Heard::Notice(Notice::StrictKeys(stamped, keys)) => {
                self.evict_raw(keys);
                stamp = Some(stamped);
            }
            Heard::Notice(Notice::Pattern(pattern)) => self.evict_raw_pattern(&pattern),
            Heard::Notice(Notice::StrictPattern(stamped, pattern)) => {
                self.evict_raw_pattern(&pattern);
                stamp = Some(stamped);
            }
            Heard::Notice(Notice::Heartbeat(replica, beat)) => {
                // Silent too long, and the tick has not noticed yet: flush before hearing again. (Already deaf
                // means already flushed, with `flushed_at_beat` set then.)
                if replica == self.replica && !self.deaf.load(Ordering::Acquire) && !self.hearing()
                {
                    self.flush_deaf();
                }
                if replica == self.replica && beat >= self.flushed_at_beat.load(Ordering::Acquire) {
                    self.heard_at_ms.store(now_ms(), Ordering::Release);
                    self.deaf.store(false, Ordering::Release);
                }
            }
            Heard::Lost => self.flush_deaf(),
            Heard::Delay(_) | Heard::Notice(Notice::Acks(_)) => {}
        }
        // Applied: tell the writer (its own notices it applied before sending them).
        if let (Some(strict), Some(stamp)) = (&self.strict, stamp)
            && stamp.writer != self.replica
        {
            let _ = strict.applied.send(stamp);
        }
    }

    fn evict_raw(&self, keys: Vec<String>) {
        for raw in keys {
            if let Ok(key) = Key::parse(&raw, usize::MAX) {
                self.cache.invalidate(&key);
            }
        }
    }

    fn evict_raw_pattern(&self, pattern: &str) {
        match Pattern::parse(pattern, usize::MAX, true) {
            Ok(pattern) => self.evict_pattern(&pattern),
            Err(_) => self.cache.invalidate_all(),
        }
    }

    /// Stops answering and forgets everything: notices may have been missed.
    fn turn_deaf(&self) {
        let _ordered = self.ordered();
        self.flush_deaf();
    }

    /// `turn_deaf`, with the order lock already held.
    fn flush_deaf(&self) {
        // Voids inserts racing this flush (see `insert`).
        self.sequence.fetch_add(1, Ordering::AcqRel);
        if !self.deaf.swap(true, Ordering::AcqRel) {
            tracing::warn!("near-cache lost its notices: serving from Redis until it hears again");
        }
        self.flushed_at_beat
            .store(self.beat.load(Ordering::Acquire), Ordering::Release);
        self.cache.invalidate_all();
        if let Some(strict) = &self.strict {
            strict.deafened.notify_one();
        }
    }

    /// Applies notices and sends heartbeats until `stop` turns true.
    pub(crate) async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        mut stop: watch::Receiver<bool>,
    ) {
        if self.strict.is_some() {
            // Acknowledgements of this replica's strict writes come on a channel of its own.
            store.hear_acks(self.replica);
        }
        let mut notices = store.notices();
        let mut ticker = tokio::time::interval(self.heartbeat);
        let to_ack = self.strict.as_ref().and_then(|strict| {
            strict
                .to_ack
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
        });
        let mut membership = None;
        if let Some(to_ack) = to_ack {
            tokio::spawn(send_acks(self.replica, store.clone(), to_ack));
            let keeping = self.clone().keep_membership(store.clone(), stop.clone());
            membership = Some(tokio::spawn(keeping));
        }
        // Leaving the membership is part of stopping: waited for, so a draining replica is gone before it exits.
        let left = async move {
            if let Some(membership) = membership {
                let _ = membership.await;
            }
        };
        loop {
            tokio::select! {
                heard = notices.recv() => match heard {
                    Ok(heard) => self.apply(heard),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.turn_deaf(),
                    Err(broadcast::error::RecvError::Closed) => break,
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
                _ = stop.changed() => break,
            }
        }
        left.await;
    }
}
