//! The Lua scripts (the `.lua` files under `scripts/`), loaded once, and the KEYS and ARGV each takes, built
//! from the key layout and the record header: the only place that knows a script's calling convention.
//!
//! `scripts/helpers.lua` is prepended to the scripts that use it, so a helper is written once.

use super::layout;
use super::record;
use crate::keys::Key;
use crate::store::contract::{LeaseToken, StoreWrite};
use fred::clients::Client;
use fred::prelude::Error as FredError;
use fred::types::scripts::Script;
use fred::types::{FromValue, Value};
use std::sync::LazyLock;
use std::time::Duration;

/// Lua shared by the write scripts.
const HELPERS: &str = include_str!("scripts/helpers.lua");

static SET: LazyLock<Script> = LazyLock::new(|| with_helpers(include_str!("scripts/set.lua")));
static FILL: LazyLock<Script> = LazyLock::new(|| with_helpers(include_str!("scripts/fill.lua")));
static LEASE: LazyLock<Script> = LazyLock::new(|| with_helpers(include_str!("scripts/lease.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| with_helpers(include_str!("scripts/renew.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("scripts/release.lua")));
static DELETE: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("scripts/delete.lua")));
static GROUP_MEMBERS: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("scripts/group_members.lua")));
static UNINDEXED_GROUP: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("scripts/unindexed_group.lua")));

static MEMBER_RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("scripts/member_renew.lua")));
static MEMBERS: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("scripts/members.lua")));
static MEMBER_REVOKE: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("scripts/member_revoke.lua")));

/// An invalidation's fence write; run with EVAL on the fence connection (see `invalidation`).
pub(super) const FENCE: &str = include_str!("scripts/fence.lua");

fn with_helpers(body: &str) -> Script {
    Script::from_lua([HELPERS, body].concat())
}

/// One script with its KEYS and ARGV, ready to run on a node's client.
pub(super) struct Call {
    script: &'static Script,
    keys: Vec<String>,
    args: Vec<Value>,
}

impl Call {
    /// Runs the script on `client` (loading it first if the node does not know it yet). Takes `&self`: a
    /// redirected script is sent again (`redirect`).
    pub(super) async fn run<R: FromValue>(&self, client: &Client) -> Result<R, FredError> {
        self.script
            .evalsha_with_reload(client, self.keys.clone(), self.args.clone())
            .await
    }
}

/// A Set: refused (answers 0) when versioned and the key's version floor or stored record is higher. A
/// versioned Set raises the floor and keeps it for `retention`.
pub(super) fn set(write: &StoreWrite, retention: Duration) -> Call {
    let args = vec![
        write.value.clone().into(),
        ttl_ms(write.ttl).into(),
        versioned(write),
        record::header(write.version).into(),
        member(&write.key),
        record::fresh_epoch().into(),
        ttl_ms(retention).into(),
    ];
    Call {
        script: &SET,
        keys: write_keys(&write.key),
        args,
    }
}

/// A fill: written (answers 1) only while `token` holds the key's lease, which it then releases. A versioned
/// fill below the key's version floor is refused (and releases the lease); otherwise it raises the floor.
pub(super) fn fill(token: LeaseToken, write: &StoreWrite, retention: Duration) -> Call {
    let args = vec![
        token.to_string().into(),
        write.value.clone().into(),
        ttl_ms(write.ttl).into(),
        member(&write.key),
        record::fresh_epoch().into(),
        record::header(write.version).into(),
        versioned(write),
        ttl_ms(retention).into(),
    ];
    Call {
        script: &FILL,
        keys: write_keys(&write.key),
        args,
    }
}

/// Takes `key`'s lease for `ttl` unless it is held (answers 1 when taken).
pub(super) fn take_lease(key: &Key, token: LeaseToken, ttl: Duration) -> Call {
    Call {
        script: &LEASE,
        keys: lease_keys(key),
        args: vec![token.to_string().into(), ttl_ms(ttl).into(), member(key)],
    }
}

/// Releases `key`'s lease if `token` still holds it (answers 1 when released).
pub(super) fn release_lease(key: &Key, token: LeaseToken) -> Call {
    Call {
        script: &RELEASE,
        keys: lease_keys(key),
        args: vec![token.to_string().into(), member(key)],
    }
}

/// Extends `key`'s lease to `ttl` from now if `token` still holds it (answers 1 when extended).
pub(super) fn renew_lease(key: &Key, token: LeaseToken, ttl: Duration) -> Call {
    Call {
        script: &RENEW,
        keys: lease_keys(key),
        args: vec![token.to_string().into(), ttl_ms(ttl).into()],
    }
}

/// Voids the leases of, and deletes, `keys` (all in one hash slot); answers how many values existed.
pub(super) fn delete<'k>(keys: impl ExactSizeIterator<Item = &'k str>) -> Call {
    let mut script_keys = Vec::with_capacity(keys.len() * 5);
    let mut members = Vec::with_capacity(keys.len());
    for key in keys {
        let (group, member) = layout::split(key);
        script_keys.extend([
            layout::value_key(key),
            layout::lease_key(key),
            layout::index_key(group),
            layout::leases_key(group),
            layout::legacy_index_key(group),
        ]);
        members.push(member.into());
    }
    Call {
        script: &DELETE,
        keys: script_keys,
        args: members,
    }
}

/// The members of `group` a pattern must consider, in one atomic read: its index, the legacy index of older
/// releases, and its keys with a lease out (a load in flight for a key not stored yet).
pub(super) fn group_members(group: &str) -> Call {
    Call {
        script: &GROUP_MEMBERS,
        keys: vec![
            layout::index_key(group),
            layout::legacy_index_key(group),
            layout::leases_key(group),
        ],
        args: Vec::new(),
    }
}

/// After a group pattern's deletes: starts a new epoch for `group` if its index is gone while its epoch lives
/// (values no index names are then dropped); answers 1 when it did.
pub(super) fn renew_unindexed_epoch(group: &str) -> Call {
    Call {
        script: &UNINDEXED_GROUP,
        keys: vec![
            layout::index_key(group),
            layout::legacy_index_key(group),
            layout::epoch_key(group),
        ],
        args: vec![record::fresh_epoch().into()],
    }
}

/// Joins (`join`) or renews near-cache membership for `lease`; answers 1, or 0 for a renewal of a member that is
/// gone.
pub(super) fn renew_membership(member: u64, lease: Duration, join: bool) -> Call {
    Call {
        script: &MEMBER_RENEW,
        keys: vec![layout::members_key().to_owned()],
        args: vec![
            member.to_string().into(),
            ttl_ms(lease).into(),
            if join { "1" } else { "0" }.into(),
        ],
    }
}

/// The near-cache members whose lease has not lapsed, and the revoked ones whose lease still runs with the
/// milliseconds it runs (two arrays of strings).
pub(super) fn members() -> Call {
    Call {
        script: &MEMBERS,
        keys: membership_keys(),
        args: Vec::new(),
    }
}

/// Removes `member`, keeping it as revoked until its lease ends; answers the milliseconds its lease still ran.
pub(super) fn revoke_member(member: u64) -> Call {
    Call {
        script: &MEMBER_REVOKE,
        keys: membership_keys(),
        args: vec![member.to_string().into()],
    }
}

fn membership_keys() -> Vec<String> {
    vec![
        layout::members_key().to_owned(),
        layout::revoked_key().to_owned(),
    ]
}

/// The seven keys of a write (SET and FILL): value, lease, index, lease set, epoch, version floor, legacy index.
fn write_keys(key: &Key) -> Vec<String> {
    let key = key.as_str();
    let group = layout::group(key);
    vec![
        layout::value_key(key),
        layout::lease_key(key),
        layout::index_key(group),
        layout::leases_key(group),
        layout::epoch_key(group),
        layout::version_key(key),
        layout::legacy_index_key(group),
    ]
}

/// "1" for a versioned write, "0" otherwise.
fn versioned(write: &StoreWrite) -> Value {
    if write.version.is_some() { "1" } else { "0" }.into()
}

/// The two keys of a lease script: the lease and its group's lease set.
fn lease_keys(key: &Key) -> Vec<String> {
    let key = key.as_str();
    vec![
        layout::lease_key(key),
        layout::leases_key(layout::group(key)),
    ]
}

fn member(key: &Key) -> Value {
    layout::member(key.as_str()).into()
}

/// Milliseconds for `PX`: at least 1, since Redis refuses 0.
fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn every_script_gets_the_keys_and_args_its_lua_reads() {
        let write = StoreWrite {
            key: Key::parse("user:1:posts", 512).unwrap(),
            value: Bytes::from_static(b"v"),
            ttl: Duration::ZERO,
            version: Some(2),
        };
        let retention = Duration::from_secs(60);
        let set = set(&write, retention);
        assert_eq!(
            set.keys,
            [
                "{user:1}:posts",
                "{user:1}#lease:posts",
                "{user:1}#index",
                "{user:1}#leases",
                "{user:1}#epoch",
                "{user:1}#version:posts",
                "{user:1}#keys"
            ]
        );
        assert_eq!(set.args.len(), 7);
        assert_eq!(set.args[1], Value::Integer(1), "a zero TTL becomes 1 ms");
        assert_eq!(fill(1, &write, retention).args.len(), 8);
        assert_eq!(renew_unindexed_epoch("user:1").keys.len(), 3);
        let deleted = delete(["user:1", "user:1:posts"].into_iter());
        assert_eq!((deleted.keys.len(), deleted.args.len()), (10, 2));
    }
}
