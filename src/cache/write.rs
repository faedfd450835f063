//! The write path: Set, BatchSet, Invalidate and InvalidatePattern. Every write is validated in full before the
//! store sees it; the store voids the keys' leases, so no load in flight can write an older value back; and every
//! replica's near-cache is told.

use super::entry::Entry;
use super::shared::Core;
use super::types::{BatchSetOutcome, SetCommand};
use crate::keys::{Key, Pattern};
use crate::store::{Notice, StoreWrite};
use crate::{Error, Result};
use std::collections::HashSet;
use std::time::Duration;

/// Writes one key; answers the TTL applied.
pub(super) async fn set(core: &Core, command: SetCommand) -> Result<Duration> {
    let version = command.version;
    let write = prepare_write(core, command)?;
    let applied = core.store.set_many(std::slice::from_ref(&write)).await;
    let keys = std::slice::from_ref(&write.key);
    announce(core, keys, applied.is_ok()).await?;
    let applied = applied?;
    if applied.first() == Some(&false) {
        return Err(Error::StaleVersion {
            key: write.key.to_string(),
            version: version.unwrap_or(0),
        });
    }
    Ok(write.ttl)
}

/// Writes many keys. Every entry is validated before anything is written, so a bad entry writes nothing.
pub(super) async fn batch_set(core: &Core, commands: Vec<SetCommand>) -> Result<BatchSetOutcome> {
    core.check_batch("entries", commands.len())?;
    let writes = commands
        .into_iter()
        .map(|command| prepare_write(core, command))
        .collect::<Result<Vec<_>>>()?;
    let applied = core.store.set_many(&writes).await;
    let keys: Vec<Key> = writes.iter().map(|w| w.key.clone()).collect();
    announce(core, &keys, applied.is_ok()).await?;
    let applied = applied?;
    let mut outcome = BatchSetOutcome::default();
    for (write, applied) in writes.iter().zip(applied) {
        if applied {
            outcome.written += 1;
        } else {
            outcome.stale_keys.push(write.key.to_string());
        }
    }
    Ok(outcome)
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
        let notice = Notice::Pattern(pattern.to_string());
        let published = core.store.publish(&notice).await;
        if deleted.is_ok() {
            published?;
        }
    }
    deleted
}

/// Tells every replica's near-cache (this one's at once) that `keys` changed. Without a near-cache, nothing
/// to tell. A notice that cannot be sent fails the call: the write happened, but other replicas may still
/// serve the old value, and the caller should retry (writes and invalidations are idempotent).
/// `succeeded` says whether the store call did: a failed one may still have applied some keys, so it is
/// announced too, but only a successful call's failed announcement is an error of its own.
async fn announce(core: &Core, keys: &[Key], succeeded: bool) -> Result<()> {
    let Some(near) = &core.near else {
        return Ok(());
    };
    near.evict(keys);
    let notice = Notice::Keys(keys.iter().map(Key::to_string).collect());
    let published = core.store.publish(&notice).await;
    if succeeded { published } else { Ok(()) }
}

/// Validates `command` (key, size, sensitive data, TTL) and builds its store write.
fn prepare_write(core: &Core, command: SetCommand) -> Result<StoreWrite> {
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
    Ok(StoreWrite {
        value: core.encode(&key, entry),
        key,
        ttl,
        version: command.version,
    })
}
