//! Commands while slots move: following `MOVED` and `ASK`, and waiting out `TRYAGAIN`, as Redis Cluster expects
//! of a client.
//!
//! While a slot migrates (`redis-cli --cluster reshard`, `rebalance`), its keys leave the source primary a few
//! at a time. The source answers a command whose keys it no longer holds with `ASK <slot> <target>`: the command
//! must be sent to the target, right after `ASKING` on the same connection, and only that once. A command whose
//! keys are split between the two (a script, MGET) gets `TRYAGAIN` until the slot's last keys have moved. Once the
//! slot is the target's, every other node answers `MOVED <slot> <target>`: the slot map is out of date.
//!
//! [`in_slot`] runs a command on the primary the slot map names, then follows at most [`MAX_HOPS`] redirections
//! and waits out `TRYAGAIN` with a short backoff (at most [`TRYAGAIN_WAITS`] waits, ~1 s in all). A redirection
//! is an answer, not a failure: the node's breaker counts it as a success, and a `MOVED` asks for a slot-map
//! refresh. Each node has its own connection for asked commands (`Node::asking`), held for `ASKING` and the
//! command together, so no other command can take the `ASKING` flag in between.
//!
//! Every script declares every key it touches in KEYS (scripts.rs), so Redis checks them all before the script
//! runs: a script never runs on a node that holds only part of its keys, and never misses a key that moved.

use super::errors::unavailable;
use super::node::Node;
use super::nodes::Nodes;
use crate::Result;
use fred::clients::Client;
use fred::prelude::Error as FredError;
use fred::types::config::Server;
use std::sync::Arc;
use std::time::Duration;

/// Redirections (`MOVED`, `ASK`) followed per command.
const MAX_HOPS: usize = 5;
/// `TRYAGAIN` answers waited out per command, with backoff from [`FIRST_WAIT`] doubling up to [`LONGEST_WAIT`].
const TRYAGAIN_WAITS: u32 = 14;
const FIRST_WAIT: Duration = Duration::from_millis(5);
const LONGEST_WAIT: Duration = Duration::from_millis(100);

/// What a redirecting answer asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Redirect {
    /// The slot belongs to this node now: send it there, and refresh the slot map.
    Moved(Server),
    /// The key has moved to this node while its slot migrates: send `ASKING`, then the command, there.
    Ask(Server),
    /// The command's keys are split between two nodes while their slot migrates: send it again shortly.
    TryAgain,
}

/// The redirection `error` asks for, if it is one. `reached` is the node that answered (an empty host in a
/// redirection means its host).
pub(super) fn redirect_of(error: &FredError, reached: &Server) -> Option<Redirect> {
    let details = error.details();
    if details.starts_with("TRYAGAIN") {
        return Some(Redirect::TryAgain);
    }
    let mut words = details.split_whitespace();
    let kind = words.next()?;
    if kind != "MOVED" && kind != "ASK" {
        return None;
    }
    let _slot = words.next()?;
    let (host, port) = words.next()?.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = if host.is_empty() {
        reached.host.to_string()
    } else {
        host.to_owned()
    };
    let server = Server::new(host, port);
    Some(if kind == "MOVED" {
        Redirect::Moved(server)
    } else {
        Redirect::Ask(server)
    })
}

/// Runs `command` on the primary serving `slot`, following redirections; answers its outcome (fed to the breaker
/// of the node that answered it) and that node.
pub(super) async fn in_slot<T, F, Fut>(
    nodes: &Nodes,
    slot: u16,
    command: F,
) -> Result<(T, Arc<Node>)>
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = Result<T, FredError>>,
{
    let (mut hops, mut waits) = (0, 0);
    let mut node = nodes.for_slot(slot)?;
    let mut asking = false;
    loop {
        let outcome = if asking {
            node.asking(&command).await
        } else {
            command(node.client.clone()).await
        };
        let redirect = match &outcome {
            Err(error) => redirect_of(error, &node.server),
            Ok(_) => None,
        };
        let Some(redirect) = redirect else {
            let value = nodes.observe(&node, outcome)?;
            return Ok((value, node));
        };
        nodes.answered(&node);
        match redirect {
            Redirect::TryAgain => {
                if waits >= TRYAGAIN_WAITS {
                    return Err(unavailable(format!(
                        "slot {slot} kept migrating (TRYAGAIN from {})",
                        node.name()
                    )));
                }
                tokio::time::sleep((FIRST_WAIT * 2u32.pow(waits.min(5))).min(LONGEST_WAIT)).await;
                waits += 1;
                // The slot may have finished moving meanwhile: start from the slot map again.
                node = nodes.for_slot(slot)?;
                asking = false;
            }
            Redirect::Moved(server) | Redirect::Ask(server) if hops >= MAX_HOPS => {
                return Err(unavailable(format!(
                    "slot {slot}: more than {MAX_HOPS} redirections (last to {server})"
                )));
            }
            Redirect::Moved(server) => {
                hops += 1;
                nodes.refresh_soon();
                node = nodes.redirected_to(&server).await?;
                asking = false;
            }
            Redirect::Ask(server) => {
                hops += 1;
                node = nodes.redirected_to(&server).await?;
                asking = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::prelude::ErrorKind;

    #[test]
    fn redirections_are_read_from_the_answer() {
        let reached = Server::new("10.0.0.1", 7000);
        let answer = |details: &'static str| {
            redirect_of(&FredError::new(ErrorKind::Cluster, details), &reached)
        };
        assert_eq!(
            answer("MOVED 3999 127.0.0.1:6381"),
            Some(Redirect::Moved(Server::new("127.0.0.1", 6381)))
        );
        assert_eq!(
            answer("ASK 3999 :6382"),
            Some(Redirect::Ask(Server::new("10.0.0.1", 6382)))
        );
        assert_eq!(
            answer("TRYAGAIN Multiple keys request during rehashing of slot"),
            Some(Redirect::TryAgain)
        );
        assert_eq!(answer("CLUSTERDOWN The cluster is down"), None);
        assert_eq!(answer("ERR Error running script: ASK"), None);
    }
}
