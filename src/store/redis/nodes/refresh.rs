//! Learning the slot map: every node's view (`ROLE` or `CLUSTER SLOTS` and `CLUSTER INFO`), put to the vote
//! (`slot_map`), installed with clients for every node it names; nodes it no longer names are dropped.

use super::{Nodes, Topology};
use crate::Result;
use crate::store::redis::errors::{backend_error, unavailable};
use crate::store::redis::node::Node;
use crate::store::redis::slot_map::{self, Report, View};
use fred::prelude::{ClientLike, ClusterInterface, Error as FredError};
use fred::types::Value;
use fred::types::config::Server;
use futures::future;
use std::sync::{Arc, Weak};
use std::time::Duration;

impl Nodes {
    /// The slot map as `node` sees it, and whether `node` votes (`slot_map`).
    async fn view_of(&self, node: &Arc<Node>) -> Result<Report> {
        let within = self.settings.command_timeout;
        if !self.clustered {
            let role = tokio::time::timeout(
                within,
                node.client
                    .custom::<Value, Value>(fred::cmd!("ROLE"), vec![]),
            )
            .await
            .map_err(|_| unavailable(format!("ROLE timed out on {}", node.name())))?
            .map_err(backend_error)?;
            let view = slot_map::standalone(node.server.clone(), &role);
            return Ok(Report::of(&node.server, view, 0));
        }
        let (slots, info) = tokio::time::timeout(within, async {
            let slots = node.client.cluster_slots::<Value>().await?;
            let info = node.client.cluster_info::<String>().await?;
            Ok::<_, FredError>((slots, info))
        })
        .await
        .map_err(|_| unavailable(format!("CLUSTER SLOTS timed out on {}", node.name())))?
        .map_err(backend_error)?;
        let view = slot_map::from_cluster_slots(slots, &node.server)?;
        Ok(Report::of(
            &node.server,
            view,
            slot_map::current_epoch(&info),
        ))
    }

    /// Makes `view` the slot map. Its replicas are connected ahead of a failover, so a promoted one takes traffic
    /// at once; nodes it no longer names are dropped and their clients closed.
    fn install(&self, view: View) -> Result<()> {
        let mut ranges = Vec::with_capacity(view.len());
        let mut members = Vec::new();
        for (first, last, primary, replicas) in view {
            // A standalone server's replicas (from ROLE) are never routed to: no clients for them.
            for replica in replicas.iter().filter(|_| self.clustered) {
                self.node(replica)?;
                members.push(replica.clone());
            }
            members.push(primary.clone());
            ranges.push((first, last, self.node(&primary)?, replicas));
        }
        *self.topology.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Topology { ranges });
        let departed: Vec<Arc<Node>> = {
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<Server> = known
                .keys()
                .filter(|server| !members.contains(server))
                .cloned()
                .collect();
            gone.iter()
                .filter_map(|server| known.remove(server))
                .collect()
        };
        for node in departed {
            tracing::info!(node = %node.name(), "Redis node left the cluster map; closing its clients");
            let clients = node.clients();
            tokio::spawn(async move {
                for client in clients {
                    let _ = client.quit().await;
                }
            });
        }
        Ok(())
    }

    /// Re-reads the slot map through `node` alone (at start-up): its view, whether it votes or not, since it is
    /// the only one heard yet; the first refresh puts it to the vote.
    pub(super) async fn refresh_from(&self, node: &Arc<Node>) -> Result<()> {
        let report = self.view_of(node).await?;
        self.install(report.view)
    }

    /// Asks every connected node for the slot map and installs the view most voting primaries hold.
    async fn refresh(&self) {
        let nodes = self.connected();
        let reports = future::join_all(nodes.iter().map(|node| self.view_of(node))).await;
        let Some(view) = slot_map::majority(reports.into_iter().flatten()) else {
            tracing::warn!("no Redis primary could report the slot map");
            return;
        };
        if let Err(error) = self.install(view) {
            tracing::warn!(%error, "slot map not installed");
        }
    }
}

/// Refreshes the slot map every `refresh_every`, and soon after any failure asks for it (at most every 100 ms),
/// until the nodes are dropped.
pub(super) async fn refresh_loop(nodes: Weak<Nodes>) {
    const MIN_GAP: Duration = Duration::from_millis(100);
    loop {
        let Some(strong) = nodes.upgrade() else {
            return;
        };
        let every = strong.settings.refresh_every;
        let asked = async {
            strong.refresh.notified().await;
            tokio::time::sleep(MIN_GAP).await;
        };
        tokio::select! {
            () = asked => {}
            () = tokio::time::sleep(every) => {}
        }
        strong.refresh().await;
    }
}
