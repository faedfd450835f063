//! The slot map as one node reports it, and which of several reports to trust. Pure: nodes/refresh.rs asks the nodes
//! (`ROLE`, `CLUSTER SLOTS`, `CLUSTER INFO`) and installs what this module makes of their answers.
//!
//! Only primaries vote, and only for a view in which they own slots themselves: a replica, an emptied primary
//! (Redis 7.0 demotes a primary that lost its last slot) and a node the cluster forgot repeat what they last
//! heard, which may be old. The view most voters hold wins; a tie goes to the view whose voters have seen the
//! highest cluster epoch (`cluster_current_epoch`: every failover and every slot handed over raises it), and a
//! tie there to the smallest view in address order, so every cachecoord replica picks the same one.

use super::errors::{backend_error, unavailable};
use crate::Result;
use fred::types::Value;
use fred::types::cluster::ClusterRouting;
use fred::types::config::Server;

/// One node's view of the slot map: (first slot, last slot, primary, its replicas), sorted by slot.
pub(super) type View = Vec<(u16, u16, Server, Vec<Server>)>;

/// What one node said: its view, whether it may vote, and the highest cluster epoch it has seen.
pub(super) struct Report {
    pub(super) view: View,
    pub(super) voter: bool,
    pub(super) epoch: u64,
}

impl Report {
    /// The report of `node`: a voter when it owns slots in its own view.
    pub(super) fn of(node: &Server, view: View, epoch: u64) -> Report {
        let voter = view.iter().any(|(_, _, primary, _)| primary == node);
        Report { view, voter, epoch }
    }
}

/// The ownership part of a view, compared between nodes.
type Owners = Vec<(u16, u16, Server)>;

/// A standalone server's view: it owns every slot; its replicas are those `ROLE` lists.
pub(super) fn standalone(server: Server, role: &Value) -> View {
    vec![(0, u16::MAX, server, replicas_in_role(role))]
}

/// `cluster_current_epoch` from a `CLUSTER INFO` answer (0 when absent).
pub(super) fn current_epoch(info: &str) -> u64 {
    info.lines()
        .find_map(|line| line.strip_prefix("cluster_current_epoch:"))
        .and_then(|epoch| epoch.trim().parse().ok())
        .unwrap_or(0)
}

/// The view of `node` from its `CLUSTER SLOTS` answer (an empty host there means `node` itself).
pub(super) fn from_cluster_slots(slots: Value, node: &Server) -> Result<View> {
    let routing =
        ClusterRouting::from_cluster_slots(slots, node.host.clone()).map_err(backend_error)?;
    // An empty host means "the address you sent this to": a node without `cluster-announce-ip` (a one-node
    // development cluster) reports itself so.
    let reached = |server: &Server| {
        if server.host.is_empty() {
            Server {
                host: node.host.clone(),
                ..server.clone()
            }
        } else {
            server.clone()
        }
    };
    let view: View = routing
        .slots()
        .iter()
        .map(|range| {
            (
                range.start,
                range.end,
                reached(&range.primary),
                range.replicas.iter().map(reached).collect(),
            )
        })
        .collect();
    if view.is_empty() {
        return Err(unavailable(format!(
            "{}:{} reports no slots",
            node.host, node.port
        )));
    }
    Ok(view)
}

/// The view most voting primaries hold (see the module's rule for ties). A primary that was paused and has just
/// woken up still believes it owns its slots until the cluster tells it otherwise; trusting the majority keeps
/// its outdated view (and its outdated data) out of the map.
pub(super) fn majority(reports: impl IntoIterator<Item = Report>) -> Option<View> {
    // (who owns what, how many voters say so, the highest epoch among them, one such view)
    let mut tally: Vec<(Owners, usize, u64, View)> = Vec::new();
    for Report { view, voter, epoch } in reports {
        if !voter {
            continue;
        }
        let owners: Owners = view
            .iter()
            .map(|(first, last, primary, _)| (*first, *last, primary.clone()))
            .collect();
        match tally.iter_mut().find(|(seen, ..)| *seen == owners) {
            Some((_, votes, highest, _)) => {
                *votes += 1;
                *highest = (*highest).max(epoch);
            }
            None => tally.push((owners, 1, epoch, view)),
        }
    }
    tally
        .into_iter()
        .max_by(|(a, a_votes, a_epoch, _), (b, b_votes, b_epoch, _)| {
            (a_votes, a_epoch)
                .cmp(&(b_votes, b_epoch))
                .then_with(|| b.cmp(a))
        })
        .map(|(_, _, _, view)| view)
}

/// Replicas listed by `ROLE` on a primary: `["master", offset, [[host, port, offset], ...]]`.
fn replicas_in_role(role: &Value) -> Vec<Server> {
    let Value::Array(parts) = role else {
        return Vec::new();
    };
    let Some(Value::Array(replicas)) = parts.get(2) else {
        return Vec::new();
    };
    replicas
        .iter()
        .filter_map(|replica| match replica {
            Value::Array(fields) => {
                let host = fields.first()?.as_string()?;
                let port = u16::try_from(fields.get(1)?.as_i64()?).ok()?;
                Some(Server::new(host, port))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(owner: u16) -> View {
        vec![(0, u16::MAX, Server::new("127.0.0.1", owner), Vec::new())]
    }

    /// What the node on `reporter` says: that `owner` owns every slot, having seen `epoch`.
    fn report(reporter: u16, owner: u16, epoch: u64) -> Report {
        Report::of(&Server::new("127.0.0.1", reporter), view(owner), epoch)
    }

    /// A two-owner view: `a` owns the low half, `b` the high half.
    fn split(a: u16, b: u16) -> View {
        vec![
            (0, 8191, Server::new("127.0.0.1", a), Vec::new()),
            (8192, 16383, Server::new("127.0.0.1", b), Vec::new()),
        ]
    }

    #[test]
    fn the_view_most_primaries_hold_wins() {
        let chosen = majority([report(1, 1, 5), report(2, 2, 5), report(2, 2, 5)]).unwrap();
        assert_eq!(chosen, view(2));
        assert_eq!(majority(Vec::<Report>::new()), None);
    }

    #[test]
    fn replicas_and_nodes_owning_nothing_do_not_vote() {
        // Three nodes that own nothing in their own (old) view outvote nobody: the one primary wins.
        let chosen = majority([
            report(7, 1, 9),
            report(8, 1, 9),
            report(9, 1, 9),
            report(2, 2, 3),
        ])
        .unwrap();
        assert_eq!(chosen, view(2));
        assert_eq!(majority([report(7, 1, 9)]), None);
    }

    #[test]
    fn a_tie_goes_to_the_newest_epoch_then_to_address_order() {
        let server = |port| Server::new("127.0.0.1", port);
        let old = Report::of(&server(1), split(1, 2), 4);
        let new = Report::of(&server(3), split(3, 2), 6);
        assert_eq!(majority([old, new]).unwrap(), split(3, 2));
        let a = Report::of(&server(1), split(1, 2), 6);
        let b = Report::of(&server(3), split(3, 2), 6);
        let (a2, b2) = (
            Report::of(&server(1), split(1, 2), 6),
            Report::of(&server(3), split(3, 2), 6),
        );
        assert_eq!(
            majority([a, b]),
            majority([b2, a2]),
            "the order of answers does not matter"
        );
    }

    #[test]
    fn cluster_info_gives_the_current_epoch() {
        assert_eq!(
            current_epoch("cluster_state:ok\r\ncluster_current_epoch:12\r\n"),
            12
        );
        assert_eq!(current_epoch(""), 0);
    }

    #[test]
    fn role_lists_a_primarys_replicas() {
        let replica = Value::Array(vec!["127.0.0.1".into(), 7001.into(), 0.into()]);
        let role = Value::Array(vec!["master".into(), 0.into(), Value::Array(vec![replica])]);
        assert_eq!(
            standalone(Server::new("127.0.0.1", 7000), &role)[0].3,
            [Server::new("127.0.0.1", 7001)]
        );
        assert!(replicas_in_role(&Value::Null).is_empty());
    }
}
