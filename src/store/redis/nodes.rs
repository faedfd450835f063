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

use super::errors::{Refusal, backend_error, refusal, unavailable};
use super::fence::Fence;
use super::slot_map::{self, View};
use crate::breaker::Breaker;
use crate::{Error, Result};
use fred::clients::Client;
use fred::prelude::{
    Builder, ClientLike, ClusterInterface, Config as FredConfig, Error as FredError,
    ReconnectPolicy, ServerConfig,
};
use fred::types::Value;
use fred::types::config::Server;
use futures::future;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Timing and breaker settings shared by every node's client.
#[derive(Clone, Debug)]
pub(super) struct NodeSettings {
    /// Per-command timeout.
    pub(super) command_timeout: Duration,
    /// Timeout of the first connection at start-up.
    pub(super) connect_timeout: Duration,
    /// Regular slot-map refresh.
    pub(super) refresh_every: Duration,
    /// Consecutive failures that open a node's breaker, and how long it stays open before one probe.
    pub(super) breaker_failures: u32,
    pub(super) breaker_cooldown: Duration,
}

/// One Redis node: its clients and its breaker.
pub(super) struct Node {
    server: Server,
    /// The node's own client; reads, writes, leases and fills run on it.
    pub(super) client: Client,
    /// A second connection for invalidation fences: `WAIT` blocks its connection until replicas acknowledge.
    pub(super) invalidator: Client,
    /// Shares one fence among the invalidations running at once on this node.
    pub(super) fence: Fence,
    breaker: Breaker,
    /// OOM and BUSY answers seen from this node since start-up (for Stats; the metric counts them too).
    oom_refusals: AtomicU64,
    busy_refusals: AtomicU64,
}

impl Node {
    /// `host:port`, for errors and logs.
    pub(super) fn name(&self) -> String {
        format!("{}:{}", self.server.host, self.server.port)
    }

    /// (OOM, BUSY) answers seen from this node since start-up.
    pub(super) fn refusals(&self) -> (u64, u64) {
        (
            self.oom_refusals.load(Ordering::Relaxed),
            self.busy_refusals.load(Ordering::Relaxed),
        )
    }

    /// Counts an OOM or BUSY answer of this node.
    fn count_refusal(&self, refusal: Refusal) {
        let count = match refusal {
            Refusal::Oom => &self.oom_refusals,
            Refusal::Busy => &self.busy_refusals,
        };
        count.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("cachecoord_redis_refusals_total", "node" => self.name(), "reason" => refusal.label())
            .increment(1);
    }
}

/// Which node serves which slots, and how many replicas each primary has.
struct Topology {
    /// (first slot, last slot, primary, replicas known for it), sorted by slot.
    ranges: Vec<(u16, u16, Arc<Node>, usize)>,
}

/// The nodes of one Redis deployment and the current slot map.
pub(super) struct Nodes {
    clustered: bool,
    template: FredConfig,
    settings: NodeSettings,
    topology: RwLock<Arc<Topology>>,
    /// Every node ever seen, by address: a node that comes back keeps its client.
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
        tokio::spawn(refresh_loop(Arc::downgrade(&nodes)));
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
        // A node that is down when first seen is retried in the background instead of failing the caller.
        config.fail_fast = false;
        let settings = &self.settings;
        let connect = || {
            let client = Builder::from_config(config.clone())
                .with_performance_config(|perf| {
                    perf.default_command_timeout = settings.command_timeout;
                })
                .with_connection_config(|conn| {
                    conn.connection_timeout = settings.connect_timeout.min(Duration::from_secs(1));
                    conn.internal_command_timeout = settings.command_timeout;
                })
                // Forever, and quickly: a node back from a restart or a pause should take traffic at once.
                .set_policy(ReconnectPolicy::new_exponential(0, 20, 500, 2))
                .build()
                .map_err(backend_error)?;
            client.connect();
            Ok::<_, Error>(client)
        };
        let node = Arc::new(Node {
            server: server.clone(),
            client: connect()?,
            invalidator: connect()?,
            fence: Fence::new(),
            breaker: Breaker::new(
                format!("redis {}:{}", server.host, server.port),
                settings.breaker_failures,
                settings.breaker_cooldown,
            ),
            oom_refusals: AtomicU64::new(0),
            busy_refusals: AtomicU64::new(0),
        });
        known.insert(server.clone(), node.clone());
        Ok(node)
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

    /// The primary serving `group`'s slot, as [`Nodes::for_slot`] answers it.
    pub(super) fn for_group(&self, group: &str) -> Result<Arc<Node>> {
        self.for_slot(self.slot_of(group))
    }

    /// The primary serving `slot` (0 on a standalone server), if it can take a command now: connected, and its
    /// breaker closed (or this call is the breaker's probe). Otherwise UNAVAILABLE at once, and a slot-map refresh
    /// is asked for (the slot may have moved to a promoted replica).
    pub(super) fn for_slot(&self, slot: u16) -> Result<Arc<Node>> {
        let topology = self
            .topology
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let node = topology
            .ranges
            .iter()
            .find(|(first, last, _, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, node, _)| node.clone());
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

    /// The current primaries (each once), for commands every primary must run (SCAN, WAIT after a pattern).
    pub(super) fn primaries(&self) -> Vec<Arc<Node>> {
        let topology = self
            .topology
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut primaries: Vec<Arc<Node>> = Vec::new();
        for (_, _, node, _) in &topology.ranges {
            if !primaries.iter().any(|p| Arc::ptr_eq(p, node)) {
                primaries.push(node.clone());
            }
        }
        primaries
    }

    /// Replicas the slot map lists for `node` (0 for an unknown node): for messages only, since a young or
    /// degraded cluster lists fewer replicas than it has.
    pub(super) fn replicas_of(&self, node: &Node) -> usize {
        let topology = self
            .topology
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        topology
            .ranges
            .iter()
            .find(|(_, _, primary, _)| primary.server == node.server)
            .map_or(0, |(_, _, _, replicas)| *replicas)
    }

    /// The address of the only primary of a one-node cluster (None for a standalone server or a larger cluster).
    pub(super) fn sole_cluster_primary(&self) -> Option<Server> {
        let primaries = self.primaries();
        match primaries.as_slice() {
            [only] if self.clustered => Some(only.server.clone()),
            _ => None,
        }
    }

    /// Asks for a slot-map refresh soon (debounced): something answered as if the map had moved.
    pub(super) fn refresh_soon(&self) {
        self.refresh.notify_one();
    }

    /// Any connected primary: for PUBLISH (which a cluster broadcasts from any node) and PING.
    pub(super) fn any(&self) -> Result<Arc<Node>> {
        self.primaries()
            .into_iter()
            .find(|node| node.client.is_connected() && !node.breaker.is_open())
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

    /// The slot map as `node` sees it. Replicas it lists are connected ahead of a failover, so a promoted one
    /// takes traffic at once.
    async fn view_of(&self, node: &Arc<Node>) -> Result<View> {
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
            return Ok(slot_map::standalone(node.server.clone(), &role));
        }
        let slots = tokio::time::timeout(within, node.client.cluster_slots::<Value>())
            .await
            .map_err(|_| unavailable(format!("CLUSTER SLOTS timed out on {}", node.name())))?
            .map_err(backend_error)?;
        let (view, replicas) = slot_map::from_cluster_slots(slots, &node.server)?;
        for replica in &replicas {
            self.node(replica)?;
        }
        Ok(view)
    }

    /// Makes `view` the slot map.
    fn install(&self, view: View) -> Result<()> {
        let mut ranges = Vec::with_capacity(view.len());
        for (first, last, primary, replicas) in view {
            ranges.push((first, last, self.node(&primary)?, replicas));
        }
        *self.topology.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Topology { ranges });
        Ok(())
    }

    /// Re-reads the slot map through `node` alone (at start-up).
    async fn refresh_from(&self, node: &Arc<Node>) -> Result<()> {
        let view = self.view_of(node).await?;
        self.install(view)
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

    /// Asks every connected node for the slot map and installs the view most of them hold.
    async fn refresh(&self) {
        let nodes = self.connected();
        let views = future::join_all(nodes.iter().map(|node| self.view_of(node))).await;
        let Some(view) = slot_map::majority(views.into_iter().flatten()) else {
            tracing::warn!("no Redis node could report the slot map");
            return;
        };
        if let Err(error) = self.install(view) {
            tracing::warn!(%error, "slot map not installed");
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let clients: Vec<Client> = self
            .known
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|node| [node.client.clone(), node.invalidator.clone()])
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

/// Refreshes the slot map every `refresh_every`, and soon after any failure asks for it (at most every 100 ms),
/// until the nodes are dropped.
async fn refresh_loop(nodes: Weak<Nodes>) {
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

/// Runs every per-node call to completion, then answers the first error, if any. Never `try_join_all`: dropping
/// the other calls at the first error would cancel a breaker's probe in flight, and its outcome would be lost.
pub(super) async fn all<T>(
    calls: impl IntoIterator<Item = impl Future<Output = Result<T>>>,
) -> Result<Vec<T>> {
    future::join_all(calls).await.into_iter().collect()
}
