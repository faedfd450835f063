//! The coordinator's domain types: what a caller asks for (`ReadOptions`, `SetCommand`) and what it gets back
//! (`Lookup` with its `Source`, `BatchSetOutcome`), each with its methods. Every other file of the cache module
//! speaks in these.

use super::entry::Entry;
use crate::Error;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The value was in the cache.
    Hit,
    /// The key was not in the cache and nothing loaded it.
    Miss,
    /// This call loaded the value through the entity's loader.
    Loaded,
    /// This call waited for a load someone else started.
    Coalesced,
    /// A value past its TTL, inside a stale window, was served.
    Stale,
    /// The store was unavailable; the value came straight from the loader.
    Fallback,
    /// The cache remembers that the loader found nothing.
    Negative,
    /// The value came from this replica's near-cache.
    NearHit,
}

impl Source {
    /// Every source, in a fixed order: the index of the per-entity counters.
    pub(super) const ALL: [Source; 8] = [
        Source::Hit,
        Source::NearHit,
        Source::Negative,
        Source::Stale,
        Source::Miss,
        Source::Loaded,
        Source::Coalesced,
        Source::Fallback,
    ];

    /// The label used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Source::Hit => "hit",
            Source::NearHit => "near_hit",
            Source::Negative => "negative",
            Source::Stale => "stale",
            Source::Miss => "miss",
            Source::Loaded => "loaded",
            Source::Coalesced => "coalesced",
            Source::Fallback => "fallback",
        }
    }

    /// Whether the answer came from a cache (Redis, embedded or near) without waiting for a load: what the hit
    /// ratio counts as a hit.
    pub fn is_hit(self) -> bool {
        matches!(
            self,
            Source::Hit | Source::NearHit | Source::Negative | Source::Stale
        )
    }

    /// Position in [`Source::ALL`].
    pub(super) fn index(self) -> usize {
        Source::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }
}

/// What the staleness sampler made of one sampled hit (`cachecoord_consistency_checks_total{result}`). The
/// first three are compared hits; the others are samples skipped before or during the check, and never count
/// towards the staleness ratio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// The source held what was served.
    Fresh,
    /// The source differed, and after the grace the cache still served the same entry while the source still
    /// differed from it.
    Stale,
    /// The source differed, but within the grace the cache's entry changed (an invalidation or fill landed) or
    /// the source came back to what was served.
    InFlight,
    /// Not checked: the sampler's concurrency or rate bound was reached (samples are dropped, never queued).
    Dropped,
    /// Not checked: the entity's loader route had its circuit breaker open.
    BreakerOpen,
    /// The loader failed while re-reading the source.
    LoaderError,
    /// Not checked: no loader route fills the entity's keys.
    NoLoader,
}

impl CheckResult {
    /// Every result, in a fixed order: the index of the per-entity counters.
    pub(super) const ALL: [CheckResult; 7] = [
        CheckResult::Fresh,
        CheckResult::Stale,
        CheckResult::InFlight,
        CheckResult::Dropped,
        CheckResult::BreakerOpen,
        CheckResult::LoaderError,
        CheckResult::NoLoader,
    ];

    /// The label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            CheckResult::Fresh => "fresh",
            CheckResult::Stale => "stale",
            CheckResult::InFlight => "in_flight",
            CheckResult::Dropped => "dropped",
            CheckResult::BreakerOpen => "breaker_open",
            CheckResult::LoaderError => "loader_error",
            CheckResult::NoLoader => "no_loader",
        }
    }

    /// Whether the hit was compared with the source (what the staleness ratio is over).
    pub fn is_compared(self) -> bool {
        matches!(
            self,
            CheckResult::Fresh | CheckResult::Stale | CheckResult::InFlight
        )
    }

    /// Position in [`CheckResult::ALL`].
    pub(super) fn index(self) -> usize {
        CheckResult::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }
}

/// The answer for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// The value, when found.
    pub value: Option<Bytes>,
    /// Where the answer came from.
    pub source: Source,
    /// How long the value stays fresh, when found.
    pub ttl_remaining: Option<Duration>,
    /// The lease handed to this caller (a read with [`ReadOptions::lease`]): it loads the value and Sets it with
    /// this token.
    pub lease_token: Option<Bytes>,
}

impl Lookup {
    pub(super) fn miss() -> Lookup {
        Lookup {
            value: None,
            source: Source::Miss,
            ttl_remaining: None,
            lease_token: None,
        }
    }

    pub(super) fn from_entry(entry: &Entry, source: Source) -> Lookup {
        Lookup {
            value: entry.value.clone(),
            source,
            ttl_remaining: entry.ttl_remaining(),
            lease_token: None,
        }
    }

    /// `entry` answered as `source` when it holds a value, as [`Source::Negative`] when it remembers an absence.
    pub(super) fn found_or_negative(entry: &Entry, source: Source) -> Lookup {
        let source = if entry.value.is_some() {
            source
        } else {
            Source::Negative
        };
        Lookup::from_entry(entry, source)
    }
}

/// One answer per slot, in order; a slot nothing answered is a miss.
pub(super) fn settle(answers: Vec<Option<Lookup>>) -> Vec<Lookup> {
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(Lookup::miss))
        .collect()
}

/// What a load shared by several callers answers; the error is shared with all of them.
pub(super) type SharedResult = Result<Flown, Arc<Error>>;

/// A flight's answer, and the instant its value is good for: it was read (from the source, or from the store)
/// no earlier than `as_of`. A caller whose request began after `as_of` may not take it: an invalidation it saw
/// acknowledged may have come between that read and its request.
#[derive(Clone, Debug)]
pub(super) struct Flown {
    pub(super) lookup: Lookup,
    pub(super) as_of: Instant,
}

impl Flown {
    /// `lookup`, good as of `as_of`.
    pub(super) fn new(lookup: Lookup, as_of: Instant) -> Flown {
        Flown { lookup, as_of }
    }
}

/// How a read may be answered.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadOptions {
    /// Answer from the cache only: never call a loader.
    pub cache_only: bool,
    /// On a miss of a key no loader fills (no loader, or `cache_only`), coordinate the caller's own fill: hand
    /// one caller the key's lease, and let the others wait for its fill.
    pub lease: bool,
    /// When a caller waiting for another's fill must be answered at the latest (its own deadline).
    pub wait_until: Option<Instant>,
}

/// One write as the caller asked for it, before validation.
#[derive(Clone, Debug)]
pub struct SetCommand {
    /// Key to write.
    pub key: String,
    /// Value to store.
    pub value: Bytes,
    /// TTL requested by the caller; `None` lets the entity policy decide.
    pub ttl: Option<Duration>,
    /// Version of the value; a write older than the stored entry's version is refused.
    pub version: Option<u64>,
    /// The lease this write fills (a token a leased read handed out): written only while it holds.
    pub lease_token: Option<Bytes>,
}

/// What a BatchSet did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchSetOutcome {
    /// Entries written.
    pub written: u64,
    /// Keys whose versioned write was refused because a newer version is stored.
    pub stale_keys: Vec<String>,
    /// Keys whose fill was refused because its lease no longer held.
    pub lease_lost_keys: Vec<String>,
}
