//! Redis health for operators: per node used memory, maxmemory, evicted keys, the eviction policy and replica lag
//! on /metrics and in Stats, compared with what each node's own `INFO` says; a node that does not evict is
//! warned about at start-up and flagged by a metric; OOM refusals are counted per node.

use crate::support::cluster::{RedisCluster, redis_cli};
use crate::support::process::{ServerProcess, metric};
use crate::support::set_request;
use cachecoord::proto::StatsRequest;
use cachecoord::proto::cache_service_client::CacheServiceClient;
use std::time::{Duration, Instant};

const MAXMEMORY: u64 = 8 * 1024 * 1024;
const VALUE: usize = 64 * 1024;

/// A server on `cluster` polling Redis health every 100 ms.
async fn server_on(cluster: &RedisCluster) -> ServerProcess {
    let config = format!(
        "[store]\nredis_url = \"{}\"\nredis_health_interval_ms = 100\n",
        cluster.url()
    );
    ServerProcess::start(&config).await
}

/// `field` of the `INFO` of the node on `port`.
fn info(port: u16, field: &str) -> String {
    redis_cli(port, &["INFO"])
        .lines()
        .find_map(|line| {
            line.trim_end()
                .strip_prefix(&format!("{field}:"))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no {field} in INFO of {port}"))
}

/// The server's warnings that a node does not evict, without the log's colour codes.
fn eviction_warnings(server: &ServerProcess) -> Vec<String> {
    server
        .log_lines("does not evict")
        .iter()
        .map(|line| {
            let mut plain = String::new();
            let mut rest = line.as_str();
            while let Some(at) = rest.find('\u{1b}') {
                plain.push_str(&rest[..at]);
                rest = rest[at..].split_once('m').map_or("", |(_, after)| after);
            }
            plain + rest
        })
        .collect()
}

fn info_number(port: u16, field: &str) -> u64 {
    info(port, field).parse().unwrap()
}

/// Scrapes until `check` finds nothing wrong (it answers what is still wrong), for at most 30 s.
async fn until_metrics(
    server: &ServerProcess,
    mut check: impl FnMut(&str) -> Option<String>,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = server.scrape().await;
        match check(&text) {
            None => return text,
            Some(wrong) if Instant::now() >= deadline => panic!("{wrong}\n{text}"),
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A 3 + 3 cluster with maxmemory 8 MiB and allkeys-lru, filled with 64 KiB values until every primary evicted:
/// /metrics shows, for each of the six nodes (`node="127.0.0.1:<port>"`, with its role), the maxmemory and policy
/// it runs with, the evicted keys its INFO reports, its used memory (within 10 % of INFO's, which moves) and, for
/// replicas, a replication lag that settles at 0; eviction is not flagged as disabled and nothing is warned.
/// Stats reports the same nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_evictions_and_policy_per_node() {
    let cluster =
        RedisCluster::start_async(&["--maxmemory", "8mb", "--maxmemory-policy", "allkeys-lru"])
            .await;
    let server = server_on(&cluster).await;
    let mut client = CacheServiceClient::connect(server.uri()).await.unwrap();
    let primaries = cluster.primaries();
    let mut written = 0;
    while !primaries
        .iter()
        .all(|port| info_number(*port, "evicted_keys") > 0)
    {
        for _ in 0..32 {
            let key = format!("fill:{written}");
            client.set(set_request(&key, &[b'x'; VALUE])).await.unwrap();
            written += 1;
        }
        assert!(
            written < 5_000,
            "no eviction on every primary after {written} Sets of 64 KiB"
        );
    }

    let text = until_metrics(&server, |text| {
        for port in &cluster.ports {
            let node = format!("127.0.0.1:{port}");
            let role = if primaries.contains(port) {
                "primary"
            } else {
                "replica"
            };
            let labels = [("node", node.as_str()), ("role", role)];
            let value = |name: &str| metric(text, name, &labels);
            let policy = metric(
                text,
                "cachecoord_redis_maxmemory_policy",
                &[("node", &node), ("role", role), ("policy", "allkeys-lru")],
            );
            if policy != Some(1.0) {
                return Some(format!("{node}: policy {policy:?}"));
            }
            if value("cachecoord_redis_maxmemory_bytes") != Some(MAXMEMORY as f64) {
                return Some(format!("{node}: maxmemory"));
            }
            let evicted = info_number(*port, "evicted_keys") as f64;
            if value("cachecoord_redis_evicted_keys_total") != Some(evicted) {
                return Some(format!("{node}: evicted keys, INFO says {evicted}"));
            }
            let used = info_number(*port, "used_memory") as f64;
            let exported = value("cachecoord_redis_used_memory_bytes").unwrap_or(0.0);
            if (exported - used).abs() > used / 10.0 {
                return Some(format!("{node}: used memory {exported}, INFO says {used}"));
            }
            if value("cachecoord_redis_eviction_disabled") != Some(0.0) {
                return Some(format!("{node}: eviction flagged as disabled"));
            }
            if role == "replica" && value("cachecoord_redis_replication_lag_bytes") != Some(0.0) {
                return Some(format!("{node}: replication lag"));
            }
        }
        None
    })
    .await;
    for port in &primaries {
        let evicted = metric(
            &text,
            "cachecoord_redis_evicted_keys_total",
            &[("node", &format!("127.0.0.1:{port}"))],
        );
        assert!(evicted.unwrap() > 0.0, "primary {port} evicted nothing");
    }
    assert!(eviction_warnings(&server).is_empty());

    let nodes = client
        .stats(StatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .redis_nodes;
    let mut listed: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
    listed.sort_unstable();
    let mut expected: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
    for node in &nodes {
        let port: u16 = node.node.rsplit(':').next().unwrap().parse().unwrap();
        let primary = primaries.contains(&port);
        assert_eq!(node.role, if primary { "primary" } else { "replica" });
        assert_eq!(node.maxmemory_bytes, MAXMEMORY);
        assert_eq!(node.maxmemory_policy, "allkeys-lru");
        assert!(node.used_memory_bytes > 0);
        assert_eq!(node.replication_lag_bytes.is_some(), !primary, "{node:?}");
        if primary {
            assert!(node.evicted_keys > 0, "{node:?}");
        }
    }
}

/// A cluster under `noeviction` (maxmemory 8 MiB): start-up logs the warning for every primary and
/// `cachecoord_redis_eviction_disabled` is 1 on every node. Filled until a Set fails, the Set answers UNAVAILABLE
/// and the node's OOM refusals are counted, on /metrics and in Stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noeviction_is_warned_flagged_and_its_oom_refusals_counted() {
    let cluster =
        RedisCluster::start_async(&["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"])
            .await;
    let server = server_on(&cluster).await;
    let warnings = eviction_warnings(&server);
    for port in cluster.primaries() {
        let node = format!("127.0.0.1:{port}");
        assert!(
            warnings
                .iter()
                .any(|line| line.contains(&format!("node={node} "))
                    && line.contains("policy=noeviction")),
            "no start-up warning for {node}: {warnings:?}"
        );
    }
    until_metrics(&server, |text| {
        cluster.ports.iter().find_map(|port| {
            let node = format!("127.0.0.1:{port}");
            let flagged = metric(
                text,
                "cachecoord_redis_eviction_disabled",
                &[("node", &node)],
            );
            (flagged != Some(1.0)).then(|| format!("{node}: eviction_disabled {flagged:?}"))
        })
    })
    .await;

    let mut client = CacheServiceClient::connect(server.uri()).await.unwrap();
    let mut written = 0;
    let refused = loop {
        let key = format!("fill:{written}");
        match client.set(set_request(&key, &[b'x'; VALUE])).await {
            Ok(_) => written += 1,
            Err(status) => break status,
        }
        assert!(
            written < 5_000,
            "no Set refused after {written} Sets of 64 KiB"
        );
    };
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let text = server.scrape().await;
    let oom = metric(
        &text,
        "cachecoord_redis_refusals_total",
        &[("reason", "oom")],
    );
    assert!(oom.unwrap_or(0.0) >= 1.0, "{text}");
    let counted = until_stats(&mut client, |nodes| {
        nodes.iter().map(|n| n.oom_refusals).sum::<u64>() >= 1
    })
    .await;
    assert!(counted.iter().all(|n| n.busy_refusals == 0));
}

/// Stats' Redis nodes once `ready` holds (they are refreshed by the health poll), for at most 30 s.
async fn until_stats(
    client: &mut CacheServiceClient<tonic::transport::Channel>,
    ready: impl Fn(&[cachecoord::proto::RedisNode]) -> bool,
) -> Vec<cachecoord::proto::RedisNode> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = client
            .stats(StatsRequest {})
            .await
            .unwrap()
            .into_inner()
            .redis_nodes;
        if ready(&nodes) {
            return nodes;
        }
        assert!(Instant::now() < deadline, "{nodes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cluster evicting with allkeys-lru but without maxmemory never evicts: it is warned about at start-up and
/// flagged like `noeviction`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unset_maxmemory_is_warned_and_flagged() {
    let cluster = RedisCluster::start_async(&["--maxmemory-policy", "allkeys-lru"]).await;
    let server = server_on(&cluster).await;
    let warnings = eviction_warnings(&server);
    for port in cluster.primaries() {
        let node = format!("127.0.0.1:{port}");
        assert!(
            warnings
                .iter()
                .any(|line| line.contains(&format!("node={node} ")) && line.contains("maxmemory=0")),
            "no start-up warning for {node}: {warnings:?}"
        );
    }
    let text = server.scrape().await;
    for port in cluster.primaries() {
        let node = format!("127.0.0.1:{port}");
        let labels = [("node", node.as_str())];
        assert_eq!(
            metric(&text, "cachecoord_redis_eviction_disabled", &labels),
            Some(1.0)
        );
        assert_eq!(
            metric(&text, "cachecoord_redis_maxmemory_bytes", &labels),
            Some(0.0)
        );
    }
}
