//! How logical keys map onto Redis keys, and the bookkeeping kept beside them: the one place that names a Redis
//! key. Scripts receive every key name, or the prefix a name is built from, from here.
//!
//! A key's first two segments form its group (`user:123` for `user:123`, `user:123:posts`, `user:123:likes`).
//! The group is the Redis Cluster hash tag, so a group's values and its bookkeeping share one slot and one Lua
//! script can change them atomically:
//!
//! | Redis key               | holds                                                              |
//! |-------------------------|--------------------------------------------------------------------|
//! | `{user:123}:posts`      | the record of `user:123:posts` (group epoch, header, payload)      |
//! | `{user:123}#index`      | sorted set of the group's members (`:posts`, ``) by value expiry   |
//! | `{user:123}#epoch`      | 8 random bytes; a record whose prefix differs is not served        |
//! | `{user:123}#lease:posts`| the fill lease of `user:123:posts` (a holder's token)              |
//! | `{user:123}#leases`     | set of members with a lease out, so a pattern can void them        |
//! | `{user:123}#version:posts` | highest version written to `user:123:posts`, kept for the version retention window after the value is gone |
//! | `{f12}#fence`           | written before each `WAIT` of an invalidation (one per node, see `fence_key`) |
//! | `{cachecoord:near}#members` | near-cache members (sorted set: replica id → lease end in that node's ms), see `members_key` |
//! | `{cachecoord:near}#revoked` | members revoked while their lease ran (same scores), until it lapses, see `revoked_key` |
//!
//! Keys never contain braces, and a key's member (its remainder after the group) is empty or starts with `:`, so
//! `#…` bookkeeping names can never collide with a caller's key.

use crate::keys::Pattern;

/// Between a group's tag and a member: where that member's lease lives.
const LEASE_SUFFIX: &str = "#lease";
/// After a group's tag: its index of members. (Named `#keys` and a plain set before the index dropped expired
/// members; a group whose index has the new name missing starts a new epoch, so old records are never served.)
const INDEX_SUFFIX: &str = "#index";
/// After a group's tag: the index as releases before the sorted-set index kept it (a plain set). Kept in step
/// while it exists, and walked by pattern invalidations, so a fleet mid-upgrade (old and new replicas writing the
/// same groups) never misses a member; drop once no older release can be running.
const LEGACY_INDEX_SUFFIX: &str = "#keys";
/// Between a group's tag and a member: where that member's version floor lives.
const VERSION_SUFFIX: &str = "#version";
/// After a fence tag: the key an invalidation writes before its `WAIT`.
const FENCE_SUFFIX: &str = "#fence";
/// After a group's tag: its set of members with a lease out.
const LEASES_SUFFIX: &str = "#leases";
/// After a group's tag: its epoch.
const EPOCH_SUFFIX: &str = "#epoch";

/// The group and the member of `key` (empty or starting with `:`).
pub(super) fn split(key: &str) -> (&str, &str) {
    let first = key.find(':').unwrap_or(key.len());
    let second = key[(first + 1).min(key.len())..]
        .find(':')
        .map_or(key.len(), |i| first + 1 + i);
    (&key[..second], &key[second..])
}

/// The group of `key`.
pub(super) fn group(key: &str) -> &str {
    split(key).0
}

/// The member of `key`: what the group's index and lease set hold for it.
pub(super) fn member(key: &str) -> &str {
    split(key).1
}

/// What a member is appended to for the Redis key of its value: `{group}`, the hash tag.
pub(super) fn value_prefix(group: &str) -> String {
    format!("{{{group}}}")
}

/// What a member is appended to for the Redis key of its fill lease.
pub(super) fn lease_prefix(group: &str) -> String {
    format!("{{{group}}}{LEASE_SUFFIX}")
}

/// Where `key`'s value lives.
pub(super) fn value_key(key: &str) -> String {
    let (group, member) = split(key);
    value_prefix(group) + member
}

/// Where `key`'s fill lease lives.
pub(super) fn lease_key(key: &str) -> String {
    let (group, member) = split(key);
    lease_prefix(group) + member
}

/// Where `key`'s version floor lives.
pub(super) fn version_key(key: &str) -> String {
    let (group, member) = split(key);
    format!("{{{group}}}{VERSION_SUFFIX}{member}")
}

/// A key in hash slot `slot` for an invalidation's fence write: the write gives `WAIT` something to count on
/// every Redis version (from 7.2 `WAIT` counts only commands that wrote), and puts the fence after every write
/// the node made before it in the replication stream.
pub(super) fn fence_key(slot: u16) -> String {
    format!("{{{}}}{FENCE_SUFFIX}", fence_tags()[usize::from(slot)])
}

/// The near-cache membership of strict mode: one sorted set, on one slot, so its scripts see every member.
/// (`#members` is no group's bookkeeping suffix, so the name cannot collide with a caller's group.)
pub(super) fn members_key() -> &'static str {
    "{cachecoord:near}#members"
}

/// Members revoked while their lease still ran, scored by its end: writers wait those out too (the revoked member
/// may serve until then), so a revocation by one writer does not let another acknowledge at once.
pub(super) fn revoked_key() -> &'static str {
    "{cachecoord:near}#revoked"
}

/// The sharded pub/sub channel carrying near-cache notices for the slot range starting at `first_slot`: hash-tagged
/// into that slot, so it lives on the range's primary and a notice never crosses the cluster bus.
pub(super) fn notice_channel(first_slot: u16) -> String {
    format!(
        "{{{}}}cachecoord:notices",
        fence_tags()[usize::from(first_slot)]
    )
}

/// The sharded pub/sub channel carrying the acknowledgements addressed to strict writer `writer`: hash-tagged by
/// the writer, so it lives on one primary, and only that writer subscribes to it (a member's acknowledgement costs
/// one message to one replica, not one to every replica).
pub(super) fn ack_channel(writer: u64) -> String {
    format!("{{cachecoord:acks:{writer}}}")
}

/// For each of the 16384 hash slots, a short hash tag landing in it: found once by trying `f0`, `f1`, ….
fn fence_tags() -> &'static [String] {
    static TAGS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        let mut tags = vec![String::new(); 16384];
        let mut missing = tags.len();
        let mut n = 0u64;
        while missing > 0 {
            let tag = format!("f{n}");
            let slot = usize::from(fred::util::redis_keyslot(tag.as_bytes()));
            if tags[slot].is_empty() {
                tags[slot] = tag;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    &TAGS
}

/// The group's index of members.
pub(super) fn index_key(group: &str) -> String {
    format!("{{{group}}}{INDEX_SUFFIX}")
}

/// The group's index as older releases keep it (see `LEGACY_INDEX_SUFFIX`).
pub(super) fn legacy_index_key(group: &str) -> String {
    format!("{{{group}}}{LEGACY_INDEX_SUFFIX}")
}

/// The group's set of members with a lease out.
pub(super) fn leases_key(group: &str) -> String {
    format!("{{{group}}}{LEASES_SUFFIX}")
}

/// The group's epoch.
pub(super) fn epoch_key(group: &str) -> String {
    format!("{{{group}}}{EPOCH_SUFFIX}")
}

/// A SCAN `MATCH` pattern covering every Redis key that may hold a key matching `pattern`, or its lease: the
/// keys of the pattern's entity when that is literal, every key of ours otherwise.
pub(super) fn scan_pattern(pattern: &Pattern) -> String {
    let pattern = pattern.as_str();
    let entity = pattern.split(':').next().unwrap_or_default();
    if entity.contains(['*', '?']) || !pattern.contains(':') {
        "{*".to_owned()
    } else {
        format!("{{{entity}:*")
    }
}

/// What a Redis key found by SCAN is, in logical terms.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// The value of this key.
    Value(String),
    /// The lease of this key.
    Lease(String),
    /// Bookkeeping (index, epoch, lease set, version floor, fence) or something not ours.
    Other,
}

/// Classifies a Redis key.
pub(super) fn classify(redis_key: &str) -> Found {
    let Some(inner) = redis_key.strip_prefix('{') else {
        return Found::Other;
    };
    let Some(close) = inner.find('}') else {
        return Found::Other;
    };
    let (group, after) = (&inner[..close], &inner[close + 1..]);
    if after.is_empty() || after.starts_with(':') {
        Found::Value(format!("{group}{after}"))
    } else if let Some(member) = after.strip_prefix(LEASE_SUFFIX)
        && (member.is_empty() || member.starts_with(':'))
    {
        Found::Lease(format!("{group}{member}"))
    } else {
        Found::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_the_first_two_segments() {
        assert_eq!(split("user:123"), ("user:123", ""));
        assert_eq!(split("user:123:posts"), ("user:123", ":posts"));
        assert_eq!(split("posts:page:1:x"), ("posts:page", ":1:x"));
        assert_eq!(value_key("user:123:posts"), "{user:123}:posts");
        assert_eq!(value_key("user:123"), "{user:123}");
        assert_eq!(lease_key("user:123:posts"), "{user:123}#lease:posts");
        assert_eq!(version_key("user:123:posts"), "{user:123}#version:posts");
    }

    #[test]
    fn every_slot_has_a_fence_key() {
        for slot in [0, 1, 5461, 16383] {
            let key = fence_key(slot);
            assert_eq!(fred::util::redis_keyslot(key.as_bytes()), slot, "{key}");
        }
    }

    #[test]
    fn scan_patterns_cover_the_entity_or_everything() {
        let scan = |raw: &str| scan_pattern(&Pattern::parse(raw, 512, true).unwrap());
        assert_eq!(scan("user:*:posts"), "{user:*");
        assert_eq!(scan("*:1:posts"), "{*");
    }

    #[test]
    fn scan_results_map_back_to_keys() {
        assert_eq!(
            classify("{user:123}:posts"),
            Found::Value("user:123:posts".into())
        );
        assert_eq!(classify("{user:123}"), Found::Value("user:123".into()));
        assert_eq!(
            classify("{user:123}#lease:posts"),
            Found::Lease("user:123:posts".into())
        );
        assert_eq!(
            classify("{user:123}#lease"),
            Found::Lease("user:123".into())
        );
        for other in [
            "{user:123}#index",
            "{user:123}#keys",
            "{user:123}#version:posts",
            "{f1}#fence",
            "{user:123}#epoch",
            "{user:123}#leases",
            "plain",
            "{open",
        ] {
            assert_eq!(classify(other), Found::Other, "{other}");
        }
    }
}
