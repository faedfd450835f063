//! Leases for callers that fill the cache themselves (cache-aside without a loader): a read with
//! [`ReadOptions::lease`] that misses hands exactly one caller, across every replica, the key's lease; the others
//! wait for its fill. The holder loads from its own database and Sets the value with the token (a fill, refused
//! with LEASE_LOST when a write or an invalidation voided the lease meanwhile: `write`), or releases it.
//!
//! - A waiter is woken by the store's lease events (a fill or a release, on any replica) and otherwise polls every
//!   `lease_poll` (one waiter per key on each replica at a time: `fill_watch`); on each wake it reads the key, and
//!   takes the lease if it is free (released, voided by an invalidation, or run out after its holder died). A
//!   lease taken is checked against the store once more, so a fill that landed between the read and the take is
//!   answered instead of handed out to be loaded again.
//! - A waiter is answered by the entity's `lease_wait` or its own deadline, whichever comes first: with the lease
//!   if it is free by then, else found = false and no token (it loads for itself and does not cache).
//! - An expired value inside the entity's `stale_while_revalidate` window is served as STALE; the one caller that
//!   takes the lease gets a token with it, to refresh the key.
//! - A read of several keys holds their leases in key order and waits for one key at a time, so two overlapping
//!   batches cannot wait on each other ([`LeasedKeys::settle`]); a lease is handed out only with the whole answer.
//!
//! [`ReadOptions::lease`]: super::types::ReadOptions::lease

use super::lease::Lease;
use super::shared::Core;
use super::types::{Lookup, Source};
use crate::keys::Key;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// The keys of one leased read that no loader fills: misses, and expired values inside their stale window.
/// [`LeasedKeys::settle`] answers them all.
#[derive(Default)]
pub(super) struct LeasedKeys {
    wanted: BTreeMap<Key, Wanted>,
}

/// One key of a leased read: the places it takes in the answer (a key may repeat, and every index gets the same
/// answer), and the stale value found, if any.
struct Wanted {
    indices: Vec<usize>,
    stale: Option<Lookup>,
}

/// How a key's lease round ended.
enum Settled {
    /// Its lease is this read's, to hand out unless a fill landed meanwhile.
    Leased(Untold),
    /// Its answer without a lease.
    Answered(Lookup),
}

/// A leased read's answers with the leases in them still held. [`LeasedAnswers::hand_out`] turns them into tokens
/// once nothing else in the read can fail; dropped before that (a failed load, the deadline, the caller gone),
/// every lease goes back instead of being stranded until its TTL.
pub(super) struct LeasedAnswers(Vec<(Wanted, Settled)>);

impl LeasedKeys {
    /// A miss of `key` at `index`.
    pub(super) fn miss(&mut self, index: usize, key: Key) {
        self.add(index, key, None);
    }

    /// An expired value of `key` at `index`, answered as `stale` unless a refresh landed meanwhile.
    pub(super) fn stale(&mut self, index: usize, key: Key, stale: Lookup) {
        self.add(index, key, Some(stale));
    }

    fn add(&mut self, index: usize, key: Key, stale: Option<Lookup>) {
        self.wanted
            .entry(key)
            .or_insert(Wanted {
                indices: Vec::new(),
                stale,
            })
            .indices
            .push(index);
    }

    /// Settles every key in a task of its own (a caller that leaves mid-way must not strand leases taken or
    /// being taken); see [`settle`].
    pub(super) async fn settle(
        self,
        core: Arc<Core>,
        wait_until: Option<Instant>,
    ) -> Result<LeasedAnswers> {
        if self.wanted.is_empty() {
            return Ok(LeasedAnswers(Vec::new()));
        }
        let first = self.wanted.keys().next().map(ToString::to_string);
        // Dropped with this future (the read failed or its caller left): the task then stops waiting and gives
        // back what it holds at once, instead of holding leases other callers wait for until its own wait ends.
        let (_reader_here, reader_gone) = tokio::sync::oneshot::channel::<()>();
        let settling = settle(core, self.wanted, wait_until, reader_gone);
        let settling = tokio::spawn(settling.in_current_span());
        settling.await.map_err(|join| Error::Backend {
            source: format!(
                "settling the leases of a read from {} failed: {join}",
                first.unwrap_or_default()
            )
            .into(),
        })?
    }
}

/// Answers every key: with its lease, a fill that landed while waiting, the stale value (without a lease when
/// another caller refreshes it), or, when a miss's wait ran out with its lease held elsewhere, a plain miss.
///
/// Holding some leases while waiting for others is how two overlapping batches deadlock: each takes part of the
/// keys, then waits for the rest, which the other holds. So leases are held in key order (ordered locking): a
/// round tries every key still open at once; it keeps the leases below the first miss held elsewhere that is
/// still worth waiting for, gives back those above it, and waits for that one key alone (retaking only it after
/// each wake) until it is filled, taken or past its wait; then the next round. A waiting read holds only keys
/// below the one it waits for, so no cycle of waits can form. Stale keys are never waited for (their stale value
/// is the answer), and a miss past its wait is answered at once: so near the deadline one last round takes every
/// free lease without waiting. Waits end early, by three times what the first round took or a tenth of the wait
/// (whichever is longer), to leave room for that round within the caller's deadline.
async fn settle(
    core: Arc<Core>,
    wanted: BTreeMap<Key, Wanted>,
    wait_until: Option<Instant>,
    mut reader_gone: tokio::sync::oneshot::Receiver<()>,
) -> Result<LeasedAnswers> {
    let arrived = Instant::now();
    let deadline_of = |key: &Key| {
        let policy_wait = arrived + core.policies.for_key(key).lease_wait;
        wait_until.map_or(policy_wait, |until| until.min(policy_wait))
    };
    // Subscribe before the first look at any lease, so a fill between the two cannot be missed.
    let mut events = core.store.lease_events();
    let (mut open, mut settled) = (wanted, Vec::new());
    // Settled entries before this index were kept across a wait.
    let (mut first_round, mut kept_across_waits) = (None, 0);
    while !open.is_empty() {
        let round = Instant::now();
        let taken = take_each(&core, &open).await?;
        let first_round = *first_round.get_or_insert(round.elapsed());
        // How long before a key's deadline its wait ends, to leave room for the last round.
        let wait_end = |key: &Key| {
            let deadline = deadline_of(key);
            let reserve = (first_round * 3).max((deadline - arrived) / 10);
            deadline.checked_sub(reserve)
        };
        let now = Instant::now();
        let worth_waiting = |key: &Key, wanted: &Wanted| {
            wanted.stale.is_none() && wait_end(key).is_some_and(|until| until > now)
        };
        let waits_for = open
            .iter()
            .zip(&taken)
            .position(|((key, wanted), lease)| lease.is_none() && worth_waiting(key, wanted));
        let (mut next, mut returned) = (BTreeMap::new(), Vec::new());
        for (position, ((key, wanted), lease)) in open.into_iter().zip(taken).enumerate() {
            let below = waits_for.is_none_or(|first| position < first);
            match lease {
                Some(lease) if below => settled.push((wanted, Settled::Leased(lease))),
                Some(lease) => returned.push((key, wanted, lease)),
                None if below => {
                    let answer = held_elsewhere(&wanted);
                    settled.push((wanted, Settled::Answered(answer)));
                }
                None => {
                    next.insert(key, wanted);
                }
            }
        }
        let give_backs = returned.iter_mut().map(|(_, _, lease)| lease.give_back());
        let given = futures::future::join_all(give_backs).await;
        for ((key, wanted, lease), given) in returned.into_iter().zip(given) {
            if given {
                next.insert(key, wanted);
            } else {
                // The store did not take it back: waiting for it would be waiting on ourselves. The caller gets
                // it (out of order, but the store is failing, and every wait is bounded).
                settled.push((wanted, Settled::Leased(lease)));
            }
        }
        open = next;
        // The lowest open key is the one to wait for: every key below it is settled.
        let Some(first) = open.keys().next().cloned() else {
            break;
        };
        kept_across_waits = settled.len();
        let until = wait_end(&first).unwrap_or(now);
        let wait = wait_for(&core, &first, &mut events, until)
            .instrument(tracing::info_span!("lease_wait"));
        let outcome = tokio::select! {
            outcome = wait => outcome?,
            // Every lease held goes back as `settled` drops.
            _ = &mut reader_gone => return Err(Error::DeadlineExceeded { budget: arrived.elapsed() }),
        };
        if let Some(outcome) = outcome
            && let Some(wanted) = open.remove(&first)
        {
            settled.push((wanted, outcome));
        }
    }
    answer_fills(&core, &mut settled).await;
    drop_lapsed(&mut settled[..kept_across_waits]).await;
    Ok(LeasedAnswers(settled))
}

/// Waits for `key` alone, retaking only its lease after each wake, until it is filled (its answer), taken (its
/// lease), or `until` comes (`None`: the next round answers it).
async fn wait_for(
    core: &Arc<Core>,
    key: &Key,
    events: &mut tokio::sync::broadcast::Receiver<Arc<str>>,
    until: Instant,
) -> Result<Option<Settled>> {
    loop {
        let poll = core.read_through.lease_poll;
        let read = || core.fresh_entry(key);
        if let Some(filled) = core.fill_watches.wait(key, events, until, poll, read).await {
            let answer = Lookup::found_or_negative(&filled, Source::Coalesced);
            return Ok(Some(Settled::Answered(answer)));
        }
        if Instant::now() >= until {
            return Ok(None);
        }
        if let Some(lease) = Lease::try_take(core, key).await? {
            return Ok(Some(Settled::Leased(Untold(Some(lease)))));
        }
    }
}

/// A fill may have landed between the caller's read and the take: then the fill is the answer, and the lease
/// goes back. One batched read for every lease kept.
async fn answer_fills(core: &Core, settled: &mut [(Wanted, Settled)]) {
    let leased: Vec<Key> = settled
        .iter()
        .filter_map(|(_, settled)| match settled {
            Settled::Leased(lease) => lease.key().cloned(),
            Settled::Answered(_) => None,
        })
        .collect();
    let mut fresh = core.fresh_entries(&leased).await.into_iter();
    let give_backs = settled.iter_mut().filter_map(|(wanted, settled)| {
        let Settled::Leased(_) = settled else {
            return None;
        };
        let filled = fresh.next().flatten()?;
        let source = match wanted.stale {
            Some(_) => Source::Hit,
            None => Source::Coalesced,
        };
        let answer = Settled::Answered(Lookup::found_or_negative(&filled, source));
        let mut lease = std::mem::replace(settled, answer);
        Some(async move {
            if let Settled::Leased(lease) = &mut lease {
                lease.give_back().await;
            }
        })
    });
    futures::future::join_all(give_backs).await;
}

/// A lease kept while the read waited for another key may have been voided by a write or an invalidation, or run
/// out, meanwhile: each is renewed for its full TTL, and one that no longer holds is answered without a token
/// (as a wait that ran out) instead of handing out a token whose fill would only be refused.
async fn drop_lapsed(settled: &mut [(Wanted, Settled)]) {
    if !settled
        .iter()
        .any(|(_, settled)| matches!(settled, Settled::Leased(_)))
    {
        return;
    }
    let renewals = settled.iter_mut().map(|(wanted, settled)| async move {
        let Settled::Leased(lease) = settled else {
            return;
        };
        if !lease.renew().await {
            *settled = Settled::Answered(held_elsewhere(wanted));
        }
    });
    futures::future::join_all(renewals).await;
}

impl LeasedAnswers {
    /// Renews every lease still held, answering without a token those voided or run out meanwhile: for a read
    /// that also waited for loads after its leases were settled.
    pub(super) async fn drop_lapsed(&mut self) {
        drop_lapsed(&mut self.0).await;
    }

    /// The answers, each index with its lookup; the leases kept become the tokens the caller fills with.
    pub(super) fn hand_out(self) -> impl Iterator<Item = (usize, Lookup)> {
        self.0.into_iter().flat_map(|(wanted, settled)| {
            let lookup = match settled {
                Settled::Answered(lookup) => lookup,
                Settled::Leased(mut lease) => {
                    let lease_token = lease.hand_out();
                    match wanted.stale {
                        Some(stale) => Lookup {
                            lease_token,
                            ..stale
                        },
                        None => {
                            metrics::counter!("cachecoord_caller_leases_total").increment(1);
                            Lookup {
                                lease_token,
                                ..Lookup::miss()
                            }
                        }
                    }
                }
            };
            wanted.indices.into_iter().map(move |i| (i, lookup.clone()))
        })
    }
}

/// Tries every open key's lease at once, and lets every try finish (a dropped try may have taken its lease with
/// nobody left to give it back). A stale key whose lease the store could not say stands as held elsewhere (its
/// stale value is still the answer); a miss's failure fails the read, and every lease taken goes back.
async fn take_each(core: &Arc<Core>, open: &BTreeMap<Key, Wanted>) -> Result<Vec<Option<Untold>>> {
    let takes = open.iter().map(|(key, wanted)| async move {
        match Lease::try_take(core, key).await {
            Ok(lease) => Ok(lease.map(|lease| Untold(Some(lease)))),
            Err(_) if wanted.stale.is_some() => Ok(None),
            Err(error) => Err(error),
        }
    });
    futures::future::join_all(takes).await.into_iter().collect()
}

/// The answer for a key whose lease another caller holds, when it is not waited for: its stale value, or (its
/// wait ran out) a miss without a lease, which the caller loads for itself and does not cache.
fn held_elsewhere(wanted: &Wanted) -> Lookup {
    match &wanted.stale {
        Some(stale) => stale.clone(),
        None => {
            metrics::counter!("cachecoord_lease_wait_timeouts_total").increment(1);
            Lookup::miss()
        }
    }
}

/// A lease taken for a caller and not yet handed out. If the call ends before it is (the caller's deadline or
/// disconnect drops the read mid-way), the lease is given back at once, in the background, instead of leaving
/// every other caller to wait out its TTL.
struct Untold(Option<Lease>);

impl Untold {
    fn key(&self) -> Option<&Key> {
        self.0.as_ref().map(Lease::key)
    }

    /// Extends the lease to its full TTL; false when it no longer holds (voided or run out). A store that cannot
    /// say leaves it as it is.
    async fn renew(&mut self) -> bool {
        match &self.0 {
            Some(lease) => lease.renew().await,
            None => false,
        }
    }

    fn hand_out(&mut self) -> Option<bytes::Bytes> {
        self.0.take().map(Lease::hand_out)
    }

    /// Gives the lease back; false (and the lease is still held) when the store did not take it.
    async fn give_back(&mut self) -> bool {
        if let Some(lease) = self.0.take() {
            self.0 = lease.release_or_keep().await;
        }
        self.0.is_none()
    }
}

impl Drop for Untold {
    fn drop(&mut self) {
        if let Some(lease) = self.0.take() {
            tokio::spawn(lease.release());
        }
    }
}
