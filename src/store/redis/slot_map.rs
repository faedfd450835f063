//! The slot map as one node reports it, and which of several reports to trust. Pure: nodes.rs asks the nodes
//! (`ROLE`, `CLUSTER SLOTS`) and installs what this module makes of their answers.

use super::errors::{backend_error, unavailable};
use crate::Result;
use fred::types::Value;
use fred::types::cluster::ClusterRouting;
use fred::types::config::Server;

/// One node's view of the slot map: (first slot, last slot, primary, replicas known for it), sorted by slot.
pub(super) type View = Vec<(u16, u16, Server, usize)>;

/// The ownership part of a view, compared between nodes.
type Owners = Vec<(u16, u16, Server)>;

/// A standalone server's view: it owns every slot; its replicas are those `ROLE` lists.
pub(super) fn standalone(server: Server, role: &Value) -> View {
    vec![(0, u16::MAX, server, replicas_in_role(role))]
}

/// The view of `node` from its `CLUSTER SLOTS` answer (an empty host there means `node` itself), and every
/// replica it lists, so they can be connected ahead of a failover.
pub(super) fn from_cluster_slots(slots: Value, node: &Server) -> Result<(View, Vec<Server>)> {
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
                range.replicas.len(),
            )
        })
        .collect();
    if view.is_empty() {
        return Err(unavailable(format!(
            "{}:{} reports no slots",
            node.host, node.port
        )));
    }
    let replicas = routing
        .slots()
        .iter()
        .flat_map(|range| range.replicas.iter().map(reached))
        .collect();
    Ok((view, replicas))
}

/// The view most nodes hold. A primary that was paused and has just woken up still believes it owns its slots
/// until the cluster tells it otherwise; trusting the majority keeps its outdated view (and its outdated data)
/// out of the map.
pub(super) fn majority(views: impl IntoIterator<Item = View>) -> Option<View> {
    // (who owns what, how many nodes say so, one such view)
    let mut tally: Vec<(Owners, usize, View)> = Vec::new();
    for view in views {
        let owners: Owners = view
            .iter()
            .map(|(first, last, primary, _)| (*first, *last, primary.clone()))
            .collect();
        match tally.iter_mut().find(|(seen, _, _)| *seen == owners) {
            Some((_, votes, _)) => *votes += 1,
            None => tally.push((owners, 1, view)),
        }
    }
    tally
        .into_iter()
        .max_by_key(|(_, votes, _)| *votes)
        .map(|(_, _, view)| view)
}

/// Replicas listed by `ROLE` on a primary: `["master", offset, [[host, port, offset], ...]]`.
fn replicas_in_role(role: &Value) -> usize {
    match role {
        Value::Array(parts) => match parts.get(2) {
            Some(Value::Array(replicas)) => replicas.len(),
            _ => 0,
        },
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(owner: u16) -> View {
        vec![(0, u16::MAX, Server::new("127.0.0.1", owner), 1)]
    }

    #[test]
    fn the_view_most_nodes_hold_wins() {
        let chosen = majority([view(1), view(2), view(2)]).unwrap();
        assert_eq!(chosen, view(2));
        assert_eq!(majority(Vec::<View>::new()), None);
    }

    #[test]
    fn role_lists_a_primarys_replicas() {
        let replica = Value::Array(vec!["127.0.0.1".into(), 7001.into(), 0.into()]);
        let role = Value::Array(vec!["master".into(), 0.into(), Value::Array(vec![replica])]);
        assert_eq!(standalone(Server::new("127.0.0.1", 7000), &role)[0].3, 1);
        assert_eq!(replicas_in_role(&Value::Null), 0);
    }
}
