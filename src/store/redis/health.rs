//! What an operator needs to know about each Redis node, read from `INFO` every `store.redis_health_interval_ms`:
//! used memory, maxmemory, the eviction policy, evicted keys and, for replicas, how far behind their primary they
//! are. Each poll is exported as `cachecoord_redis_*` metrics and kept for the Stats RPC. A node that does not
//! evict (maxmemory unset, or `noeviction`) is logged as a warning when first seen so and flagged by
//! `cachecoord_redis_eviction_disabled`: cachecoord is a cache and expects Redis to make room by evicting.

use super::node::Node;
use super::nodes::Nodes;
use crate::store::NodeHealth;
use fred::prelude::ClientLike;
use futures::future;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The last poll of every node that answered it, shared by the polling task and the store.
pub(super) type Snapshot = Arc<Mutex<Vec<NodeHealth>>>;

/// Polls once now (so a node that does not evict is reported at start-up), then every `every` until the nodes
/// are dropped.
pub(super) async fn start(nodes: &Arc<Nodes>, every: Duration) -> Snapshot {
    let snapshot: Snapshot = Arc::default();
    let first = poll(nodes, &[]).await;
    *snapshot.lock().unwrap_or_else(|e| e.into_inner()) = first;
    tokio::spawn(poll_loop(Arc::downgrade(nodes), every, snapshot.clone()));
    snapshot
}

async fn poll_loop(nodes: Weak<Nodes>, every: Duration, snapshot: Snapshot) {
    loop {
        tokio::time::sleep(every).await;
        let Some(nodes) = nodes.upgrade() else {
            return;
        };
        let previous = snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let current = poll(&nodes, &previous).await;
        *snapshot.lock().unwrap_or_else(|e| e.into_inner()) = current;
    }
}

/// Reads `INFO` from every connected node, exports what it says and answers it. `previous` is the last poll:
/// a node's policy series that changed is zeroed, and the warning is logged only when a node starts not evicting.
async fn poll(nodes: &Nodes, previous: &[NodeHealth]) -> Vec<NodeHealth> {
    let connected = nodes.connected();
    let answers = future::join_all(connected.iter().map(|node| info_of(node))).await;
    let infos: Vec<(&Arc<Node>, Info)> = connected
        .iter()
        .zip(answers)
        .filter_map(|(node, info)| Some((node, info?)))
        .collect();
    // A replica's lag is what its primary has sent minus what the replica acknowledged, as the primary sees it.
    let mut lag_of: HashMap<String, u64> = HashMap::new();
    for (_, info) in &infos {
        lag_of.extend(info.replica_lags());
    }
    let mut all: Vec<NodeHealth> = infos
        .iter()
        .map(|(node, info)| {
            let name = node.name();
            let role = info.role();
            let (oom_refusals, busy_refusals) = node.refusals();
            let replication_lag_bytes = match role {
                "replica" => lag_of.get(&name).copied(),
                _ => None,
            };
            NodeHealth {
                replication_lag_bytes,
                node: name,
                role: role.to_owned(),
                used_memory_bytes: info.number("used_memory"),
                maxmemory_bytes: info.number("maxmemory"),
                maxmemory_policy: info.text("maxmemory_policy").to_owned(),
                evicted_keys: info.number("evicted_keys"),
                oom_refusals,
                busy_refusals,
            }
        })
        .collect();
    all.sort_by(|a, b| a.node.cmp(&b.node));
    for health in &all {
        let before = previous.iter().find(|p| p.node == health.node);
        export(health, before);
    }
    all
}

/// `INFO` (default sections) of `node`; None when it does not answer (its last values stay exported).
async fn info_of(node: &Node) -> Option<Info> {
    let answer = node
        .client
        .custom::<String, String>(fred::cmd!("INFO"), vec![])
        .await;
    match answer {
        Ok(text) => Some(Info::parse(&text)),
        Err(error) => {
            tracing::debug!(node = %node.name(), %error, "INFO failed; its health metrics are not updated");
            None
        }
    }
}

fn export(health: &NodeHealth, before: Option<&NodeHealth>) {
    let node = health.node.clone();
    let role = health.role.clone();
    let labels = [("node", node.clone()), ("role", role.clone())];
    metrics::gauge!("cachecoord_redis_used_memory_bytes", &labels)
        .set(health.used_memory_bytes as f64);
    metrics::gauge!("cachecoord_redis_maxmemory_bytes", &labels).set(health.maxmemory_bytes as f64);
    metrics::counter!("cachecoord_redis_evicted_keys_total", &labels).absolute(health.evicted_keys);
    if let Some(lag) = health.replication_lag_bytes {
        metrics::gauge!("cachecoord_redis_replication_lag_bytes", &labels).set(lag as f64);
    }
    if let Some(before) = before
        && (before.maxmemory_policy != health.maxmemory_policy || before.role != health.role)
    {
        metrics::gauge!("cachecoord_redis_maxmemory_policy", "node" => node.clone(), "role" => before.role.clone(), "policy" => before.maxmemory_policy.clone())
            .set(0.0);
    }
    metrics::gauge!("cachecoord_redis_maxmemory_policy", "node" => node.clone(), "role" => role.clone(), "policy" => health.maxmemory_policy.clone())
        .set(1.0);
    let disabled = !health.evicts();
    metrics::gauge!("cachecoord_redis_eviction_disabled", &labels)
        .set(f64::from(u8::from(disabled)));
    if disabled && before.is_none_or(NodeHealth::evicts) {
        tracing::warn!(
            %node,
            %role,
            maxmemory = health.maxmemory_bytes,
            policy = %health.maxmemory_policy,
            "Redis node does not evict (maxmemory unset or maxmemory-policy noeviction): when full it refuses Sets \
             with OOM, or grows until the host runs out of memory; set maxmemory and maxmemory-policy allkeys-lru"
        );
    }
}

/// One `INFO` answer, as `field → value`.
struct Info(HashMap<String, String>);

impl Info {
    fn parse(text: &str) -> Info {
        Info(
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| line.trim_end().split_once(':'))
                .map(|(field, value)| (field.to_owned(), value.to_owned()))
                .collect(),
        )
    }

    fn text(&self, field: &str) -> &str {
        self.0.get(field).map_or("", String::as_str)
    }

    fn number(&self, field: &str) -> u64 {
        self.text(field).parse().unwrap_or(0)
    }

    /// `primary` or `replica`.
    fn role(&self) -> &'static str {
        if self.text("role") == "slave" {
            "replica"
        } else {
            "primary"
        }
    }

    /// On a primary: `host:port` of each replica it lists, with the bytes it has not acknowledged yet.
    fn replica_lags(&self) -> Vec<(String, u64)> {
        let sent = self.number("master_repl_offset");
        self.0
            .iter()
            .filter(|(field, _)| {
                field
                    .strip_prefix("slave")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .filter_map(|(_, value)| {
                let fields: HashMap<&str, &str> = value
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .collect();
                let acked: u64 = fields.get("offset")?.parse().ok()?;
                let addr = format!("{}:{}", fields.get("ip")?, fields.get("port")?);
                Some((addr, sent.saturating_sub(acked)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIMARY: &str = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\n\
        slave0:ip=127.0.0.1,port=7004,state=online,offset=900,lag=0\r\nmaster_repl_offset:1000\r\n\
        # Memory\r\nused_memory:1048576\r\nmaxmemory:8388608\r\nmaxmemory_policy:allkeys-lru\r\n\
        # Stats\r\nevicted_keys:42\r\n";

    #[test]
    fn reads_memory_policy_evictions_and_replica_lag() {
        let info = Info::parse(PRIMARY);
        assert_eq!(info.role(), "primary");
        assert_eq!(info.number("used_memory"), 1_048_576);
        assert_eq!(info.number("maxmemory"), 8_388_608);
        assert_eq!(info.text("maxmemory_policy"), "allkeys-lru");
        assert_eq!(info.number("evicted_keys"), 42);
        assert_eq!(info.replica_lags(), [("127.0.0.1:7004".to_owned(), 100)]);
        let replica = Info::parse("role:slave\r\nmaster_repl_offset:950\r\n");
        assert_eq!(replica.role(), "replica");
        assert!(replica.replica_lags().is_empty());
    }
}
