//! Growing and shrinking a test's own Redis Cluster the way operators do, with `redis-cli --cluster`: add a
//! primary and a replica, move slots to the new primary (`reshard`), empty a primary (`rebalance` with weight 0)
//! and remove it. Every step waits until the cluster agrees on the outcome, and is bounded (`--cluster-yes`, a
//! pipeline for `MIGRATE`). Only for a cluster of the test's own (`RedisCluster::start_with`): never the shared one.

use super::cluster::RedisCluster;
use std::process::Command;
use std::time::{Duration, Instant};

/// Keys moved per `MIGRATE` while slots move.
const PIPELINE: &str = "100";

/// `host:port` of the node on `port`.
fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Runs `redis-cli --cluster <args>`; panics with its output when it fails.
fn cluster_cli(args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .arg("--cluster")
        .args(args)
        .output()
        .expect("redis-cli must be installed");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "redis-cli --cluster {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The cluster node id of the node on `port`.
pub fn node_id(cluster: &RedisCluster, port: u16) -> String {
    cluster.cli(port, &["cluster", "myid"]).trim().to_owned()
}

/// Starts a node and joins it as a primary without slots; waits until every node knows it.
pub fn add_primary(cluster: &mut RedisCluster) -> u16 {
    let port = cluster.start_node();
    cluster_cli(&["add-node", &addr(port), &addr(cluster.ports[0])]);
    wait_until_agreed(cluster);
    port
}

/// Starts a node and joins it as a replica of the primary on `primary`; waits until it is in sync.
pub fn add_replica(cluster: &mut RedisCluster, primary: u16) -> u16 {
    let port = cluster.start_node();
    let primary_id = node_id(cluster, primary);
    cluster_cli(&[
        "add-node",
        &addr(port),
        &addr(primary),
        "--cluster-slave",
        "--cluster-master-id",
        &primary_id,
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster
        .cli(port, &["info", "replication"])
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < deadline, "replica {port} never synced");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_until_agreed(cluster);
    port
}

/// Moves `slots` slots, taken from every primary, to the primary on `to` (`redis-cli --cluster reshard`).
pub fn move_slots_to(cluster: &RedisCluster, to: u16, slots: u32) {
    let to_id = node_id(cluster, to);
    cluster_cli(&[
        "reshard",
        &addr(to),
        "--cluster-from",
        "all",
        "--cluster-to",
        &to_id,
        "--cluster-slots",
        &slots.to_string(),
        "--cluster-yes",
        "--cluster-pipeline",
        PIPELINE,
    ]);
    wait_until_agreed(cluster);
}

/// Moves every slot of the primary on `port` to the others (`rebalance` with its weight 0).
pub fn empty_primary(cluster: &RedisCluster, port: u16) {
    let id = node_id(cluster, port);
    let any = cluster.ports.iter().find(|p| **p != port).copied().unwrap();
    cluster_cli(&[
        "rebalance",
        &addr(any),
        "--cluster-weight",
        &format!("{id}=0"),
        "--cluster-use-empty-masters",
        "--cluster-yes",
        "--cluster-pipeline",
        PIPELINE,
    ]);
    wait_until_agreed(cluster);
    let owned = cluster
        .slot_owners()
        .iter()
        .filter(|(_, _, owner)| *owner == port)
        .count();
    assert_eq!(owned, 0, "the primary on {port} still owns slots");
}

/// The first half of `redis-cli --cluster del-node`: every other node forgets the node on `port` (which must own
/// no slot). The node keeps running, so a test can look at who is still connected to it before [`shutdown`].
pub fn forget(cluster: &mut RedisCluster, port: u16) {
    let id = node_id(cluster, port);
    let others: Vec<u16> = cluster
        .ports
        .iter()
        .copied()
        .filter(|p| *p != port)
        .collect();
    for other in &others {
        let answer = cluster.cli(*other, &["cluster", "forget", &id]);
        assert!(answer.contains("OK"), "CLUSTER FORGET on {other}: {answer}");
    }
    // The process watchdog still stops it if the test ends before `shutdown`.
    cluster.ports.retain(|p| *p != port);
    wait_until_agreed(cluster);
}

/// The second half of `del-node`: `SHUTDOWN NOSAVE` of the forgotten node on `port`.
pub fn shutdown(port: u16) {
    let _ = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "shutdown", "nosave"])
        .output();
}

/// Client connections to the node on `port` that are neither replication links nor the asking connection.
pub fn normal_clients(port: u16) -> Vec<String> {
    super::cluster::redis_cli(port, &["client", "list"])
        .lines()
        .filter(|line| line.contains(" flags=N ") && !line.contains("cmd=client|list"))
        .map(str::to_owned)
        .collect()
}

/// Waits until every node reports `cluster_state:ok` and the same slot owners, with no slot importing or
/// migrating, and no node flagged failed.
pub fn wait_until_agreed(cluster: &RedisCluster) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let views: Vec<String> = cluster
            .ports
            .iter()
            .map(|port| {
                let mut owners: Vec<String> = cluster
                    .cli(*port, &["cluster", "nodes"])
                    .lines()
                    .filter(|line| line.contains("master"))
                    .map(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        format!("{} {}", fields[0], fields.get(8..).unwrap_or(&[]).join(" "))
                    })
                    .collect();
                owners.sort();
                owners.join("\n")
            })
            .collect();
        let settled = views.windows(2).all(|pair| pair[0] == pair[1])
            && !views[0].contains("->-")
            && !views[0].contains("-<-")
            && cluster.ports.iter().all(|port| {
                cluster
                    .cli(*port, &["cluster", "info"])
                    .contains("cluster_state:ok")
            });
        if settled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not agree on its slots"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
