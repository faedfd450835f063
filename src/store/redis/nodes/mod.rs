//! Per-node routing for Redis: one fred client per node, and cachecoord's own slot map.
//!
//! Why not fred's cluster client: it serves every node from one router task, and while that task reconnects to a
//! dead primary it takes no new commands at all — measured here as a ~4.4 s stall of every command, keys on the
//! healthy primaries included, until a replica was promoted. A cache in front of a database must not black out
//! like that. So each node gets its own centralized client (its own router task and connection): a dead or
//! paused primary stalls only its own client. Commands for its slots fail fast — its client is not connected, or
//! its circuit breaker is open — and the coordinator falls back to the loader for reads; keys on healthy primaries
//! never notice. The slot map comes from `CLUSTER SLOTS` on the connected nodes (`slot_map` decides whose view
//! wins), every `redis_topology_refresh_ms` and at once (debounced) after any node failure or redirection, so a
//! promoted replica takes traffic within a refresh of its promotion.
//!
//! A standalone server is the one-node case: one client owning every slot.
//!
//! Each node has a second client for invalidation fences (`fence`): `WAIT` blocks its connection until replicas
//! acknowledge, so it must not hold up the node's reads and writes.

mod refresh;

use super::errors::{backend_error, refusal, unavailable};
use super::node::{Node, NodeSettings};
use crate::{Error, Result};
use fred::clients::Client;
use fred::prelude::{ClientLike, Config as FredConfig, Error as FredError, ServerConfig};
use fred::types::config::Server;
use futures::future;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Slots (each with what the caller keeps for it) and the primary serving them (`None`: no node does).
pub(super) type NodeSlots<T> = (Option<Arc<Node>>, Vec<(u16, T)>);

/// Which node serves which slots, and how many replicas each primary has.
struct Topology {
    /// (first slot, last slot, primary, its replicas), sorted by slot.
    ranges: Vec<(u16, u16, Arc<Node>, Vec<Server>)>,
}

impl Topology {
    /// The primary serving `slot`.
    fn owner(&self, slot: u16) -> Option<Arc<Node>> {
        self.ranges
            .iter()
            .find(|(first, last, _, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, node, _)| node.clone())
    }
}

/// The nodes of one Redis deployment and the current slot map.
pub(super) struct Nodes {
    clustered: bool,
    template: FredConfig,
    settings: NodeSettings,
    topology: RwLock<Arc<Topology>>,
    /// The nodes of the installed slot map (its primaries and their replicas), by address, with the seeds until
    /// the first map is installed. A node that leaves the map (emptied and removed, or a pod gone with its IP)
    /// is dropped and its clients closed; if it comes back it gets new ones.
    known: Mutex<HashMap<Server, Arc<Node>>>,
    refresh: Notify,
}

impl Nodes {
    /// Connects to the deployment `template` describes and learns its slot map; fails when no node answers within
    /// the connect timeout. Starts the refresh task, which ends when the returned value is dropped.
    pub(super) async fn connect(
        template: FredConfig,
        settings: NodeSettings,
    ) -> Result<Arc<Nodes>> {
        let clustered = template.server.is_clustered();
        let seeds = match &template.server {
            ServerConfig::Clustered { hosts, .. } => hosts.clone(),
            ServerConfig::Centralized { server } => vec![server.clone()],
            _ => {
                return Err(Error::Backend {
                    source: "only redis://, rediss://, redis-cluster:// and rediss-cluster:// URLs are supported"
                        .into(),
                });
            }
        };
        let nodes = Arc::new(Nodes {
            clustered,
            template,
            settings,
            topology: RwLock::new(Arc::new(Topology { ranges: Vec::new() })),
            known: Mutex::new(HashMap::new()),
            refresh: Notify::new(),
        });
        let deadline = Instant::now() + nodes.settings.connect_timeout;
        let mut last_error = None;
        'seeds: loop {
            for seed in &seeds {
                let node = nodes.node(seed)?;
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, node.client.wait_for_connect()).await {
                    Ok(Ok(())) => match nodes.refresh_from(&node).await {
                        Ok(()) => break 'seeds,
                        Err(error) => last_error = Some(error),
                    },
                    Ok(Err(error)) => last_error = Some(backend_error(error)),
                    Err(_) => {}
                }
            }
            if Instant::now() >= deadline {
                let reason = last_error.map_or("no answer".to_owned(), |e| e.to_string());
                return Err(Error::BackendUnavailable {
                    source: format!(
                        "no Redis node answered within {:?}: {reason}",
                        nodes.settings.connect_timeout
                    )
                    .into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Every primary must answer before the service reports SERVING.
        for primary in nodes.primaries() {
            let left = deadline.saturating_duration_since(Instant::now());
            let connected = tokio::time::timeout(left, primary.client.wait_for_connect()).await;
            if !matches!(connected, Ok(Ok(()))) {
                return Err(Error::BackendUnavailable {
                    source: format!("primary {} did not answer at start-up", primary.name()).into(),
                });
            }
        }
        tokio::spawn(refresh::refresh_loop(Arc::downgrade(&nodes)));
        Ok(nodes)
    }

    /// The node at `server`, with a client connecting (and reconnecting) in the background.
    fn node(&self, server: &Server) -> Result<Arc<Node>> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = known.get(server) {
            return Ok(node.clone());
        }
        let mut config = self.template.clone();
        if self.clustered {
            config.server = ServerConfig::Centralized {
                server: server.clone(),
            };
        }
        let node = Arc::new(Node::connect(server, config, &self.settings)?);
        known.insert(server.clone(), node.clone());
        Ok(node)
    }

    /// Whether this is a Redis Cluster (not a standalone server).
    pub(super) fn is_clustered(&self) -> bool {
        self.clustered
    }

    /// The hash slot of `group`, the hash tag of its keys (0 on a standalone server, where one node owns all).
    pub(super) fn slot_of(&self, group: &str) -> u16 {
        if self.clustered {
            fred::util::redis_keyslot(group.as_bytes())
        } else {
            0
        }
    }

    /// Item indices by the hash slot of their group, so each slot's items can go in one command.
    pub(super) fn by_slot<'g>(
        &self,
        groups: impl Iterator<Item = &'g str>,
    ) -> BTreeMap<u16, Vec<usize>> {
        let mut slots: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (index, group) in groups.enumerate() {
            slots.entry(self.slot_of(group)).or_default().push(index);
        }
        slots
    }

    /// The primary serving `slot` (0 on a standalone server), if it can take a command now: connected, and its
    /// breaker closed (or this call is the breaker's probe). Otherwise UNAVAILABLE at once, and a slot-map refresh
    /// is asked for (the slot may have moved to a promoted replica).
    pub(super) fn for_slot(&self, slot: u16) -> Result<Arc<Node>> {
        let node = self.topology().owner(slot);
        self.admit(node, slot)
    }

    /// `slots` (each with what the caller keeps for it) grouped by the primary serving them, from one look at
    /// the slot map, so each primary's slots can go in one pipeline. Each group's node is admitted (or refused)
    /// by [`Nodes::admit`] when its commands are about to be sent.
    pub(super) fn by_node<T>(
        &self,
        slots: impl IntoIterator<Item = (u16, T)>,
    ) -> Vec<NodeSlots<T>> {
        let topology = self.topology();
        let mut groups: Vec<NodeSlots<T>> = Vec::new();
        for (slot, item) in slots {
            let node = topology.owner(slot);
            let same = |(held, _): &&mut (Option<Arc<Node>>, _)| match (held, &node) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            match groups.iter_mut().find(same) {
                Some((_, items)) => items.push((slot, item)),
                None => groups.push((node, vec![(slot, item)])),
            }
        }
        groups
    }

    /// `node` (the owner of `slot`, as [`Nodes::by_node`] found it) if it can take a command now: connected, and
    /// its breaker closed (or this call is the breaker's probe). Otherwise UNAVAILABLE at once, and a slot-map
    /// refresh is asked for (the slot may have moved to a promoted replica).
    pub(super) fn admit(&self, node: Option<Arc<Node>>, slot: u16) -> Result<Arc<Node>> {
        let Some(node) = node else {
            self.refresh.notify_one();
            return Err(unavailable(format!("no node serves slot {slot}")));
        };
        if !node.client.is_connected() {
            self.refresh.notify_one();
            return Err(unavailable(format!("{} is not connected", node.name())));
        }
        if !node.breaker.allow() {
            // A node out of service may have been failed over: look again soon.
            self.refresh.notify_one();
            return Err(unavailable(format!(
                "{} keeps failing: its circuit breaker is open",
                node.name()
            )));
        }
        Ok(node)
    }

    /// A snapshot of the slot map now (every reader of the map takes one, so it sees one map throughout).
    fn topology(&self) -> Arc<Topology> {
        self.topology
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current primaries (each once), for commands every primary must run (SCAN, WAIT after a pattern).
    pub(super) fn primaries(&self) -> Vec<Arc<Node>> {
        let topology = self.topology();
        let mut primaries: Vec<Arc<Node>> = Vec::new();
        for (_, _, node, _) in &topology.ranges {
            if !primaries.iter().any(|p| Arc::ptr_eq(p, node)) {
                primaries.push(node.clone());
            }
        }
        primaries
    }

    /// The slot map's ranges as (first slot, last slot, primary's address): near-cache notices have one sharded
    /// channel per range (`notices`).
    pub(super) fn shards(&self) -> Vec<(u16, u16, Server)> {
        let topology = self.topology();
        topology
            .ranges
            .iter()
            .map(|(first, last, node, _)| (*first, *last, node.server.clone()))
            .collect()
    }

    /// The client configuration for a connection of our own to `server` (a subscriber), as its node's clients
    /// are configured: credentials, TLS, one server.
    pub(super) fn config_for(&self, server: &Server) -> FredConfig {
        let mut config = self.template.clone();
        if self.clustered {
            config.server = ServerConfig::Centralized {
                server: server.clone(),
            };
        }
        config
    }

    /// Replicas the slot map lists for `node` (0 for an unknown node): for messages only, since a young or
    /// degraded cluster lists fewer replicas than it has.
    pub(super) fn replicas_of(&self, node: &Node) -> usize {
        let topology = self.topology();
        topology
            .ranges
            .iter()
            .find(|(_, _, primary, _)| primary.server == node.server)
            .map_or(0, |(_, _, _, replicas)| replicas.len())
    }

    /// The first slot of each range the slot map gives `node` (for a fence write in a slot it serves).
    pub(super) fn slots_of(&self, node: &Node) -> Vec<u16> {
        let topology = self.topology();
        topology
            .ranges
            .iter()
            .filter(|(_, _, primary, _)| primary.server == node.server)
            .map(|(first, _, _, _)| *first)
            .collect()
    }

    /// A redirection from `node` is an answer: its breaker counts a success.
    pub(super) fn answered(&self, node: &Node) {
        node.breaker.record_success();
    }

    /// The node a `MOVED` or `ASK` names, once connected (within the command timeout) and its breaker allowing:
    /// a primary that just joined may not have a connected client yet.
    pub(super) async fn redirected_to(&self, server: &Server) -> Result<Arc<Node>> {
        let node = self.node(server)?;
        if !node.client.is_connected() {
            let within = self.settings.command_timeout;
            let connected = tokio::time::timeout(within, node.client.wait_for_connect()).await;
            if !matches!(connected, Ok(Ok(()))) {
                self.refresh.notify_one();
                return Err(unavailable(format!("{} is not connected", node.name())));
            }
        }
        if !node.breaker.allow() {
            return Err(unavailable(format!(
                "{} keeps failing: its circuit breaker is open",
                node.name()
            )));
        }
        Ok(node)
    }

    /// Asks for a slot-map refresh soon (debounced): something answered as if the map had moved.
    pub(super) fn refresh_soon(&self) {
        self.refresh.notify_one();
    }

    /// Any connected primary, the first in slot order: for PUBLISH (which a cluster broadcasts from any node) and
    /// PING.
    pub(super) fn any(&self) -> Result<Arc<Node>> {
        self.topology()
            .ranges
            .iter()
            .map(|(_, _, node, _)| node)
            .find(|node| node.client.is_connected() && !node.breaker.is_open())
            .cloned()
            .ok_or_else(|| unavailable("no Redis primary is connected"))
    }

    /// Feeds a command's outcome on `node` to its breaker; failures also ask for a slot-map refresh.
    pub(super) fn observe<T>(&self, node: &Node, result: Result<T, FredError>) -> Result<T> {
        match result {
            Ok(value) => {
                node.breaker.record_success();
                Ok(value)
            }
            Err(error) => {
                if let Some(refusal) = refusal(&error) {
                    node.count_refusal(refusal);
                }
                let error = backend_error(error);
                if let Error::BackendUnavailable { .. } = error {
                    node.breaker.record_failure();
                    self.refresh.notify_one();
                } else {
                    // Any other error is an answer: the node is up.
                    node.breaker.record_success();
                }
                Err(error)
            }
        }
    }

    /// Every node seen so far (primaries and replicas) whose client is connected now.
    pub(super) fn connected(&self) -> Vec<Arc<Node>> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known
            .values()
            .filter(|node| node.client.is_connected())
            .cloned()
            .collect()
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let clients: Vec<Client> = self
            .known
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|node| node.clients())
            .collect();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for client in clients {
                    let _ = client.quit().await;
                }
            });
        }
    }
}

/// Runs every per-node call to completion, then answers the first error, if any. Never `try_join_all`: dropping
/// the other calls at the first error would cancel a breaker's probe in flight, and its outcome would be lost.
pub(super) async fn all<T>(
    calls: impl IntoIterator<Item = impl Future<Output = Result<T>>>,
) -> Result<Vec<T>> {
    future::join_all(calls).await.into_iter().collect()
}
