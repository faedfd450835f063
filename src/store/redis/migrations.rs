//! Slots on the move, as the primaries themselves report them (`CLUSTER NODES`, each primary's own line): which
//! slots each claims, and which it is migrating out (`[slot->-target]`) or importing (`[slot-<-source]`).
//!
//! A cross-group pattern SCANs the primaries one after another. A key whose slot moves from a primary not yet
//! scanned to one already scanned escapes that pass. Reading these claims before and after a pass tells which
//! primaries may have received keys from the primaries the pass scanned (the targets of every move seen in
//! progress, and every slot whose owner changed between the two readings); the invalidation scans those again,
//! until a pass sees no key arrive from a scanned primary (`invalidation`).

use super::nodes::Nodes;
use crate::Result;
use fred::prelude::ClusterInterface;
use fred::types::config::Server;
use std::collections::{BTreeSet, HashMap};

/// The slots' whereabouts at one moment.
#[derive(Default)]
pub(super) struct Whereabouts {
    /// Each slot's owner, as its owner claims it.
    owners: HashMap<u16, Server>,
    /// (source, target) of every slot seen migrating.
    moving: BTreeSet<(Server, Server)>,
    /// Every primary claiming slots.
    pub(super) primaries: BTreeSet<Server>,
}

impl Whereabouts {
    /// Asks every primary of the slot map, and every primary they name, for its own claims. A standalone server
    /// has no slots to move: empty.
    pub(super) async fn read(nodes: &Nodes) -> Result<Whereabouts> {
        let mut seen = Whereabouts::default();
        if !nodes.is_clustered() {
            return Ok(seen);
        }
        let mut asked: BTreeSet<Server> = BTreeSet::new();
        let mut to_ask: Vec<Server> = nodes.primaries().iter().map(|n| n.server.clone()).collect();
        let mut ids: HashMap<String, Server> = HashMap::new();
        // (node, its own line's slot fields), resolved once every listing's ids are known.
        let mut claims: Vec<(Server, Vec<String>)> = Vec::new();
        while let Some(server) = to_ask.pop() {
            if !asked.insert(server.clone()) {
                continue;
            }
            let node = nodes.redirected_to(&server).await?;
            let listing = node.client.cluster_nodes::<String>().await;
            let listing = nodes.observe(&node, listing)?;
            for line in listing.lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 8 {
                    continue;
                }
                let Some(address) = address_of(fields[1], &server) else {
                    continue;
                };
                ids.insert(fields[0].to_owned(), address.clone());
                let master = fields[2].split(',').any(|flag| flag == "master");
                let failed = fields[2].split(',').any(|flag| flag == "fail");
                if fields[2].split(',').any(|flag| flag == "myself") {
                    if master {
                        claims.push((
                            address,
                            fields[8..].iter().map(|f| (*f).to_owned()).collect(),
                        ));
                    }
                } else if master && !failed && fields.len() > 8 {
                    to_ask.push(address);
                }
            }
        }
        for (node, fields) in claims {
            for field in fields {
                seen.claim(&node, &field, &ids);
            }
        }
        Ok(seen)
    }

    /// Records one slot field of `node`'s own line.
    fn claim(&mut self, node: &Server, field: &str, ids: &HashMap<String, Server>) {
        if let Some(marker) = field.strip_prefix('[').and_then(|f| f.strip_suffix(']')) {
            if let Some((_, target)) = marker.split_once("->-") {
                if let Some(target) = ids.get(target) {
                    self.moving.insert((node.clone(), target.clone()));
                }
            } else if let Some((_, source)) = marker.split_once("-<-")
                && let Some(source) = ids.get(source)
            {
                self.moving.insert((source.clone(), node.clone()));
            }
            return;
        }
        let mut bounds = field.split('-').filter_map(|b| b.parse::<u16>().ok());
        if let Some(first) = bounds.next() {
            let last = bounds.next().unwrap_or(first);
            for slot in first..=last {
                self.owners.insert(slot, node.clone());
            }
            self.primaries.insert(node.clone());
        }
    }
}

/// The primaries that may have received keys from `scanned` between `before` and `after`: targets of moves seen
/// in progress in either, and new owners of slots whose owner changed, when the source was scanned.
pub(super) fn receivers(
    before: &Whereabouts,
    after: &Whereabouts,
    scanned: &BTreeSet<Server>,
) -> BTreeSet<Server> {
    let mut moves: BTreeSet<(Server, Server)> =
        before.moving.union(&after.moving).cloned().collect();
    for (slot, old) in &before.owners {
        if let Some(new) = after.owners.get(slot)
            && new != old
        {
            moves.insert((old.clone(), new.clone()));
        }
    }
    moves
        .into_iter()
        .filter(|(source, target)| scanned.contains(source) && source != target)
        .map(|(_, target)| target)
        .collect()
}

/// The client address in a `CLUSTER NODES` line (`ip:port@cport[,hostname]`); an empty ip means `asked`'s host.
fn address_of(field: &str, asked: &Server) -> Option<Server> {
    let address = field.split(['@', ',']).next()?;
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if port == 0 {
        return None;
    }
    let host = if host.is_empty() {
        asked.host.to_string()
    } else {
        host.to_owned()
    };
    Some(Server::new(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(port: u16) -> Server {
        Server::new("127.0.0.1", port)
    }

    #[test]
    fn moves_in_progress_and_finished_name_their_receivers() {
        let ids: HashMap<String, Server> = [("a", 1), ("b", 2), ("c", 3)]
            .map(|(id, port)| (id.to_owned(), server(port)))
            .into();
        let mut before = Whereabouts::default();
        before.claim(&server(1), "0-99", &ids);
        before.claim(&server(2), "100-199", &ids);
        before.claim(&server(2), "[150->-c]", &ids);
        let mut after = Whereabouts::default();
        after.claim(&server(1), "0-49", &ids);
        after.claim(&server(2), "50-199", &ids);
        let all: BTreeSet<Server> = [server(1), server(2), server(3)].into();
        // 1 → 2 finished during the pass; 2 → 3 was in progress at its start.
        assert_eq!(
            receivers(&before, &after, &all),
            [server(2), server(3)].into()
        );
        // A rescan of 3 alone: nothing moved out of 3.
        assert!(receivers(&before, &after, &[server(3)].into()).is_empty());
        let mut importing = Whereabouts::default();
        importing.claim(&server(3), "[7-<-a]", &ids);
        assert_eq!(
            receivers(&importing, &Whereabouts::default(), &all),
            [server(3)].into()
        );
    }

    #[test]
    fn addresses_in_cluster_nodes() {
        assert_eq!(
            address_of("10.0.0.2:7000@17000,redis-2", &server(1)),
            Some(Server::new("10.0.0.2", 7000))
        );
        assert_eq!(address_of(":7001@17001", &server(1)), Some(server(7001)));
        assert_eq!(address_of(":0@0", &server(1)), None);
    }
}
