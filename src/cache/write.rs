//! The write path: Set, BatchSet, Invalidate and InvalidatePattern, and the caller's side of a lease (a Set that
//! fills it, ReleaseLease, RenewLease). Every write is validated in full before the store sees it; the store voids
//! the keys' leases, so no load in flight can write an older value back; and every replica's near-cache is told.
//! A write carrying a lease token is a fill: written only while that lease still holds.

use super::entry::Entry;
use super::lease::Lease;
use super::shared::Core;
use super::types::{BatchSetOutcome, SetCommand};
use crate::keys::{Key, Pattern};
use crate::store::{Filled, Notice, StoreWrite};
use crate::{Error, Result};
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// A validated write: the store write, the TTL the caller is told, and the lease it fills (if any).
struct Prepared {
    write: StoreWrite,
    /// The TTL applied (the store keeps the entry longer, for the policy's stale windows).
    ttl: Duration,
    lease_token: Option<Bytes>,
}

/// How one write ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Written {
    Yes,
    /// A versioned write below the key's version.
    Stale,
    /// A fill whose lease no longer held.
    LeaseLost,
}

/// Writes one key; answers the TTL applied.
pub(super) async fn set(core: &Arc<Core>, command: SetCommand) -> Result<Duration> {
    let version = command.version;
    let prepared = prepare_write(core, command)?;
    let key = prepared.write.key.clone();
    let written = write_all(core, std::slice::from_ref(&prepared)).await?;
    match written.first() {
        Some(Written::Stale) => Err(Error::StaleVersion {
            key: key.to_string(),
            version: version.unwrap_or(0),
        }),
        Some(Written::LeaseLost) => Err(Error::LeaseLost {
            key: key.to_string(),
        }),
        _ => Ok(prepared.ttl),
    }
}

/// Writes many keys. Every entry is validated before anything is written, so a bad entry writes nothing.
pub(super) async fn batch_set(
    core: &Arc<Core>,
    commands: Vec<SetCommand>,
) -> Result<BatchSetOutcome> {
    core.check_batch("entries", commands.len())?;
    let prepared = commands
        .into_iter()
        .map(|command| prepare_write(core, command))
        .collect::<Result<Vec<_>>>()?;
    let written = write_all(core, &prepared).await?;
    let mut outcome = BatchSetOutcome::default();
    for (prepared, written) in prepared.iter().zip(written) {
        let key = prepared.write.key.to_string();
        match written {
            Written::Yes => outcome.written += 1,
            Written::Stale => outcome.stale_keys.push(key),
            Written::LeaseLost => outcome.lease_lost_keys.push(key),
        }
    }
    Ok(outcome)
}

/// Writes `prepared` (plain writes together, fills each under its lease) and tells the near-caches; answers how
/// each write ended, in order.
async fn write_all(core: &Arc<Core>, prepared: &[Prepared]) -> Result<Vec<Written>> {
    let (fills, plain): (Vec<_>, Vec<_>) = prepared
        .iter()
        .enumerate()
        .partition(|(_, p)| p.lease_token.is_some());
    let plain_writes: Vec<StoreWrite> = plain.iter().map(|(_, p)| p.write.clone()).collect();
    let applied = async {
        if plain_writes.is_empty() {
            return Ok(Vec::new());
        }
        core.store.set_many(&plain_writes).await
    };
    let filled = futures::future::join_all(fills.iter().map(|(_, p)| fill(core, p)));
    let (applied, filled) = futures::join!(applied, filled);
    let keys: Vec<Key> = prepared.iter().map(|p| p.write.key.clone()).collect();
    let succeeded = applied.is_ok() && filled.iter().all(Result::is_ok);
    announce(core, &keys, succeeded).await?;
    let mut written = vec![Written::Yes; prepared.len()];
    for ((index, _), applied) in plain.iter().zip(applied?) {
        if !applied {
            written[*index] = Written::Stale;
        }
    }
    for ((index, _), filled) in fills.iter().zip(filled) {
        written[*index] = filled?;
    }
    Ok(written)
}

/// Fills one key under the lease its token names; a token that is not one holds no lease.
async fn fill(core: &Arc<Core>, prepared: &Prepared) -> Result<Written> {
    let token = prepared.lease_token.as_deref().unwrap_or_default();
    let Some(lease) = Lease::claimed(core, &prepared.write.key, token) else {
        return Ok(Written::LeaseLost);
    };
    Ok(match lease.fill_claimed(&prepared.write).await? {
        Filled::Written => Written::Yes,
        Filled::Older => Written::Stale,
        Filled::Voided => Written::LeaseLost,
    })
}

/// Gives back the lease `token` names on `key`; answers whether it still held.
pub(super) async fn release_lease(core: &Arc<Core>, key: &str, token: &[u8]) -> Result<bool> {
    let key = core.parse_key(key)?;
    match Lease::claimed(core, &key, token) {
        Some(lease) => lease.release_claimed().await,
        None => Ok(false),
    }
}

/// Extends the lease `token` names on `key` by the key's lease TTL; answers the TTL, or LEASE_LOST.
pub(super) async fn renew_lease(core: &Arc<Core>, key: &str, token: &[u8]) -> Result<Duration> {
    let key = core.parse_key(key)?;
    let renewed = match Lease::claimed(core, &key, token) {
        Some(lease) => lease.renew_claimed().await?,
        None => None,
    };
    renewed.ok_or_else(|| Error::LeaseLost {
        key: key.to_string(),
    })
}

/// Deletes `keys`; answers how many existed. Each key is deleted (and counted) once however often it is named.
pub(super) async fn invalidate(core: &Core, keys: &[String]) -> Result<u64> {
    core.check_batch("keys", keys.len())?;
    let mut seen = HashSet::with_capacity(keys.len());
    let distinct = keys
        .iter()
        .filter(|raw| seen.insert(raw.as_str()))
        .map(|raw| core.parse_key(raw))
        .collect::<Result<Vec<_>>>()?;
    let deleted = core.store.delete_many(&distinct).await;
    announce(core, &distinct, deleted.is_ok()).await?;
    deleted
}

/// Deletes every key matching `pattern`; answers how many were deleted.
pub(super) async fn invalidate_pattern(core: &Core, pattern: &str) -> Result<u64> {
    let pattern = Pattern::parse(
        pattern,
        core.limits.max_key_bytes,
        core.invalidation.allow_cross_entity_patterns,
    )?;
    let max = core.limits.max_pattern_wildcards;
    if pattern.wildcards() > max {
        return Err(Error::InvalidPattern {
            pattern: pattern.local().chars().take(80).collect(),
            reason: format!("{} wildcards; the limit is {max}", pattern.wildcards()),
        });
    }
    let deleted = core.pattern_runs.run(&core.store, &pattern).await;
    if let Some(near) = &core.near {
        // Even a failed call may have deleted some keys: tell the near-caches either way.
        near.evict_matching(&pattern);
        let raw = pattern.to_string();
        if core.policies.any_strict() {
            // A pattern may match keys of any policy: it waits as a strict write does.
            let notice = |stamp| Notice::StrictPattern(stamp, raw);
            near.announce_strict(core.store.as_ref(), notice, deleted.is_ok())
                .await?;
        } else {
            let published = core.store.publish(&Notice::Pattern(raw)).await;
            if deleted.is_ok() {
                published?;
            }
        }
    }
    deleted
}

/// Tells every replica's near-cache (this one's at once) that `keys` changed. Without a near-cache, nothing
/// to tell. A notice that cannot be sent fails the call: the write happened, but other replicas may still
/// serve the old value, and the caller should retry (writes and invalidations are idempotent).
/// `succeeded` says whether the store call did: a failed one may still have applied some keys, so it is
/// announced too, but only a successful call's failed announcement is an error of its own.
/// When a key's policy is strict, the call also waits until no member's near-cache can serve the older value.
async fn announce(core: &Core, keys: &[Key], succeeded: bool) -> Result<()> {
    let Some(near) = &core.near else {
        return Ok(());
    };
    near.evict(keys);
    let raw: Vec<String> = keys.iter().map(Key::to_string).collect();
    if keys
        .iter()
        .any(|key| core.policies.for_key(key).near_cache_strict)
    {
        let notice = |stamp| Notice::StrictKeys(stamp, raw);
        return near
            .announce_strict(core.store.as_ref(), notice, succeeded)
            .await;
    }
    let published = core.store.publish(&Notice::Keys(raw)).await;
    if succeeded { published } else { Ok(()) }
}

/// Validates `command` (key, size, sensitive data, TTL) and builds its store write. The store keeps the entry for
/// the policy's stale windows past its TTL, as it keeps a loader's.
fn prepare_write(core: &Core, command: SetCommand) -> Result<Prepared> {
    let key = core.parse_key(&command.key)?;
    if command.value.len() > core.limits.max_value_bytes {
        return Err(Error::ValueTooLarge {
            key: key.to_string(),
            size: command.value.len(),
            max: core.limits.max_value_bytes,
        });
    }
    let violation = core
        .sensitive
        .key_violation(&key)
        .or_else(|| core.sensitive.value_violation(&command.value));
    if let Some(reason) = violation {
        return Err(Error::SensitiveData {
            key: key.to_string(),
            reason,
        });
    }
    let ttl = core.policies.ttl_for(&key, command.ttl)?;
    let mut entry = Entry::fresh_for(Some(command.value), ttl);
    entry.version = command.version.unwrap_or(0);
    let kept_for = ttl + core.policies.for_key(&key).stale_window();
    Ok(Prepared {
        write: StoreWrite {
            value: core.encode(&key, entry),
            key,
            ttl: kept_for,
            version: command.version,
        },
        ttl,
        lease_token: command.lease_token,
    })
}
