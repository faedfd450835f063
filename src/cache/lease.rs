//! The store lease of one key, as a type: taking it is the only way to get a [`Lease`], and filling or releasing
//! it (each consumes the lease) are the only ways to end it, so no path can forget to give a lease back.
//!
//! A lease makes a load safe across replicas: only its holder loads (`SET NX PX` with a random token), and its fill
//! lands only if the token still holds the lease. Every Set and Invalidate voids the lease, so a load that raced an
//! update loses its right to write and can never put the old value back. A holder that dies leaves a lease that
//! expires after `lease_ttl`; a waiter then takes it.
//!
//! A lease may also be handed out to a caller that fills the key itself (a Get with `lease`, see
//! `caller_lease`): [`Lease::hand_out`] turns it into the opaque token the caller gets, and
//! [`Lease::claimed`] turns a token a caller sends back into a lease again, which the store checks on every use. A
//! token is one format byte and the 64-bit store token; anything else is a token that holds no lease.

use super::shared::Core;
use crate::Result;
use crate::keys::Key;
use crate::store::{Filled, LeaseToken, StoreWrite};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// The first byte of a caller's lease token: its format.
const TOKEN_FORMAT: u8 = 1;

/// This replica's hold on one key's lease, until it fills or releases it.
#[must_use = "a lease is held until it is filled or released"]
pub(super) struct Lease {
    core: Arc<Core>,
    key: Key,
    token: LeaseToken,
}

/// How a fill ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fill {
    /// The value is in the store and the lease is released.
    Written,
    /// A Set or an invalidation voided the lease (or it ran out): nothing was written.
    Voided,
    /// The loader read an older row than a version already written to the key: nothing was written, and the
    /// lease is released.
    Older,
    /// The store could not take the fill: the value is served, just not cached.
    Failed,
}

impl Lease {
    /// Takes `key`'s lease for the configured lease TTL; `None` when someone else holds it.
    pub(super) async fn try_take(core: &Arc<Core>, key: &Key) -> Result<Option<Lease>> {
        let token: LeaseToken = rand::random();
        let ttl = core.policies.for_key(key).lease_ttl;
        let taken = match core.store.try_lease(key, token, ttl).await {
            Ok(taken) => taken,
            Err(error) => {
                // The answer was lost, not necessarily the lease: the script may have run. Give back whatever
                // this token may hold, in the background (the store is failing: the caller must not wait on it).
                let (core, key) = (core.clone(), key.clone());
                tokio::spawn(async move { give_back(&core, &key, token).await });
                return Err(error);
            }
        };
        Ok(taken.then(|| Lease {
            core: core.clone(),
            key: key.clone(),
            token,
        }))
    }

    /// Takes the lease of every key it can, all at once; `None` where someone else holds it or the store failed.
    pub(super) async fn try_take_each(
        core: &Arc<Core>,
        keys: impl Iterator<Item = &Key>,
    ) -> Vec<Option<Lease>> {
        let takes = keys.map(|key| Lease::try_take(core, key));
        futures::future::join_all(takes)
            .await
            .into_iter()
            .map(|taken| taken.ok().flatten())
            .collect()
    }

    /// Writes `write` (for this lease's key) if the lease still holds, which releases it and wakes the waiters.
    pub(super) async fn fill(self, write: &StoreWrite) -> Fill {
        debug_assert_eq!(write.key, self.key, "a lease fills its own key");
        match self.core.store.fill(self.token, write).await {
            Ok(Filled::Written) => Fill::Written,
            Ok(Filled::Voided) => Fill::Voided,
            Ok(Filled::Older) => Fill::Older,
            Err(error) => {
                let core = &self.core;
                tracing::warn!(
                    key = %core.shown(&self.key),
                    error = %core.shown_error(&error, std::slice::from_ref(&self.key)),
                    "loaded value not cached: the fill failed"
                );
                // The fill did not land, but the lease may still stand (a node refusing writes still deletes):
                // give it back, or every other replica waits out its TTL on each miss of this key.
                self.release().await;
                Fill::Failed
            }
        }
    }

    /// Gives the lease back without writing (the load failed, was not cacheable, or was not needed), so waiters
    /// retry at once. If the store cannot take it, the lease runs out after its TTL instead.
    pub(super) async fn release(self) {
        give_back(&self.core, &self.key, self.token).await;
    }

    /// Gives the lease back like [`Lease::release`], but answers the lease again when the store did not take it
    /// (it may still hold), for a holder that must not go on to wait for it.
    pub(super) async fn release_or_keep(self) -> Option<Lease> {
        match self.core.store.release_lease(&self.key, self.token).await {
            Ok(_) => None,
            Err(error) => {
                tracing::debug!(
                    key = %self.core.shown(&self.key),
                    error = %self.core.shown_error(&error, std::slice::from_ref(&self.key)),
                    "lease not released; kept"
                );
                Some(self)
            }
        }
    }

    /// The key this lease is for.
    pub(super) fn key(&self) -> &Key {
        &self.key
    }

    /// Extends the lease by its key's lease TTL while it is still held; false when it no longer holds. A store
    /// that cannot say counts as holding (the fill will tell).
    pub(super) async fn renew(&self) -> bool {
        !matches!(self.extend().await, Ok(None))
    }

    /// Extends the lease by its key's lease TTL; answers the TTL, or `None` when it no longer holds.
    async fn extend(&self) -> Result<Option<Duration>> {
        let ttl = self.core.policies.for_key(&self.key).lease_ttl;
        let renewed = (self.core.store)
            .renew_lease(&self.key, self.token, ttl)
            .await?;
        Ok(renewed.then_some(ttl))
    }

    /// Hands the lease to the caller, who now fills or releases it (or lets it run out): the token it sends back.
    pub(super) fn hand_out(self) -> Bytes {
        let mut token = Vec::with_capacity(9);
        token.push(TOKEN_FORMAT);
        token.extend_from_slice(&self.token.to_be_bytes());
        Bytes::from(token)
    }

    /// The lease a caller names with `token` (from [`Lease::hand_out`]), for `key`; `None` for bytes that are not
    /// a token at all. Whether it still holds is the store's to say, on every use.
    pub(super) fn claimed(core: &Arc<Core>, key: &Key, token: &[u8]) -> Option<Lease> {
        let (&format, rest) = token.split_first()?;
        let token = LeaseToken::from_be_bytes(rest.try_into().ok()?);
        (format == TOKEN_FORMAT).then(|| Lease {
            core: core.clone(),
            key: key.clone(),
            token,
        })
    }

    /// Writes a caller's fill if the lease still holds, which releases it and wakes the waiters. Unlike
    /// [`Lease::fill`], a failure is the caller's to see (and retry): the lease is left as it is.
    pub(super) async fn fill_claimed(self, write: &StoreWrite) -> Result<Filled> {
        debug_assert_eq!(write.key, self.key, "a lease fills its own key");
        self.core.store.fill(self.token, write).await
    }

    /// Gives a caller's lease back; answers whether it still held.
    pub(super) async fn release_claimed(self) -> Result<bool> {
        self.core.store.release_lease(&self.key, self.token).await
    }

    /// Extends a caller's lease like [`Lease::renew`], but a failure is the caller's to see: answers the TTL, or
    /// `None` when it no longer holds.
    pub(super) async fn renew_claimed(self) -> Result<Option<Duration>> {
        self.extend().await
    }
}

/// Releases `key`'s lease if `token` holds it; a failure only means the lease runs out after its TTL.
async fn give_back(core: &Core, key: &Key, token: LeaseToken) {
    if let Err(error) = core.store.release_lease(key, token).await {
        tracing::debug!(
            key = %core.shown(key),
            error = %core.shown_error(&error, std::slice::from_ref(key)),
            "lease not released; it runs out after its TTL"
        );
    }
}
