//! Strict near-cache membership on Redis: one sorted set (`layout::members_key`) of replica ids scored by when
//! their lease ends, in the milliseconds of the node that holds it. Every step is a script reading that node's
//! `TIME`, so no replica's clock is compared with another's: a member counts its lease from when it *sent* the
//! renewal, which is before the node stamped it, so the member always stops first.
//!
//! A join, renewal or revocation counts only once the node's replicas hold it (the invalidation fence, `WAIT`):
//! the store fences the node each of them ran on. Otherwise a failover of the set's primary could lose a
//! revocation (the revoked member, deaf to a write it was never told of, renews on the promoted replica and serves
//! the older value) or a renewal (the member serves past the end the promoted replica shows writers, and a writer
//! that reads it lapsed acknowledges without waiting for it).

use super::node::Node;
use super::nodes::Nodes;
use super::{redirect, scripts};
use crate::Result;
use crate::store::Members;
use fred::clients::Client;
use fred::prelude::Error as FredError;
use fred::prelude::SortedSetsInterface;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The hash-tag group the members set lives under (its slot's primary runs every membership script).
const GROUP: &str = "cachecoord:near";

/// Joins or renews; answers false when a renewal finds the member gone, and the node that ran it.
pub(super) async fn renew(
    nodes: &Nodes,
    member: u64,
    lease: Duration,
    join: bool,
) -> Result<(bool, Arc<Node>)> {
    let script = scripts::renew_membership(member, lease, join);
    let script = &script;
    let (renewed, node) =
        in_members_slot(
            nodes,
            |client| async move { script.run::<i64>(&client).await },
        )
        .await?;
    Ok((renewed == 1, node))
}

/// Removes `member` (it is leaving).
pub(super) async fn leave(nodes: &Nodes, member: u64) -> Result<()> {
    in_members_slot(nodes, |client| async move {
        client
            .zrem::<i64, _, _>(super::layout::members_key(), member.to_string())
            .await
    })
    .await
    .map(drop)
}

/// The members whose lease has not lapsed, and the revoked ones whose lease still runs.
pub(super) async fn members(nodes: &Nodes) -> Result<Members> {
    let script = scripts::members();
    let script = &script;
    let (listed, _) = in_members_slot(nodes, |client| async move {
        script.run::<Vec<Vec<String>>>(&client).await
    })
    .await?;
    let mut listed = listed.into_iter();
    let live = listed.next().unwrap_or_default();
    let revoked = listed.next().unwrap_or_default();
    Ok(Members {
        live: live.iter().filter_map(|id| id.parse().ok()).collect(),
        revoked: revoked
            .chunks_exact(2)
            .filter_map(|pair| {
                let left = pair[1].parse::<u64>().ok()?;
                Some((pair[0].parse().ok()?, Duration::from_millis(left)))
            })
            .collect(),
    })
}

/// Removes `member` so it cannot renew; answers how long its lease still ran, and the node that ran it.
pub(super) async fn revoke(nodes: &Nodes, member: u64) -> Result<(Duration, Arc<Node>)> {
    let script = scripts::revoke_member(member);
    let script = &script;
    let (left, node) = in_members_slot(
        nodes,
        |client| async move { script.run::<i64>(&client).await },
    )
    .await?;
    let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
    Ok((left, node))
}

/// The slot of the members set, where its fence is written.
pub(super) fn slot(nodes: &Nodes) -> u16 {
    nodes.slot_of(GROUP)
}

/// Runs `command` on the primary serving the members set's slot, following redirections while that slot moves.
async fn in_members_slot<T, F, Fut>(nodes: &Nodes, command: F) -> Result<(T, Arc<Node>)>
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = Result<T, FredError>>,
{
    redirect::in_slot(nodes, slot(nodes), command).await
}
