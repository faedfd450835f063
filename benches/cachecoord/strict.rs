//! What strict near-cache mode costs a write: Set latency on one replica while 1, 3 and 10 cachecoord processes
//! (the writer included, each a real near-cache member) hold membership, next to the same writes with the
//! near-cache in its default, bounded mode over 3 replicas. Every replica is a separate release process on loopback.

use crate::measure::{Figures, closed_loop, measure_cpu_of};
use crate::scenarios::clients;
use crate::support::cluster::RedisCluster;
use crate::support::process::ServerProcess;
use crate::support::set_request;
use crate::support::strict::{MEMBERS, store_now_ms};
use cachecoord::proto::StatsRequest;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Strict writes at 1, 3 and 10 members, after a bounded-mode baseline and the bounded mode's notice delay; 2 s
/// each in quick mode, 6 s otherwise.
pub(crate) async fn strict_writes(cluster: &RedisCluster, quick: bool) -> Vec<Figures> {
    let duration = Duration::from_secs(if quick { 2 } else { 6 });
    let mut results = vec![
        notice_delays(cluster, duration).await,
        writes(cluster, false, 3, duration).await,
    ];
    for members in [1, 3, 10] {
        results.push(writes(cluster, true, members, duration).await);
    }
    results
}

fn config(cluster: &RedisCluster, strict: bool) -> String {
    format!(
        "log_level = \"warn\"\n[store]\nredis_url = \"{}\"\n[shutdown]\ndrain_delay_ms = 0\n\
         [near_cache]\nmax_bytes = 16777216\n\
         [[policies]]\nname = \"strict\"\npattern = \"strict:*\"\nttl_secs = 3600\nnear_cache_ttl_secs = 60\n{}",
        cluster.url(),
        if strict {
            "near_cache = \"strict\"\n"
        } else {
            ""
        }
    )
}

/// Members whose lease runs now, by the store's clock.
fn live_members(cluster: &RedisCluster) -> usize {
    let port = cluster.primaries()[0];
    let now_ms = store_now_ms(cluster);
    let out = std::process::Command::new("redis-cli")
        .args(["-c", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["ZCOUNT", MEMBERS, &format!("({now_ms}"), "+inf"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Waits until exactly `n` members hold a lease (earlier runs' members left or lapsed, this run's joined).
async fn until_members(cluster: &RedisCluster, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while live_members(cluster) != n {
        assert!(Instant::now() < deadline, "never {n} near-cache members");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The default (bounded) mode's window: one writer's Sets, one at a time, on the first of three replicas; the
/// other two report (Stats) how long each notice took from the writer's send to them: p50 and p99 over their last
/// 1,024 notices, in the note.
async fn notice_delays(cluster: &RedisCluster, duration: Duration) -> Figures {
    let mut processes = start(&config(cluster, false), 3).await;
    let writer = clients(&processes[0], 1).await;
    let mut figures = set_loop(
        "notice delay: Sets one at a time, bounded near-cache (3 replicas)",
        writer,
        1,
        duration,
    )
    .await;
    let mut delays = Vec::new();
    for (name, process) in ["B", "C"].iter().zip(&processes[1..]) {
        let mut client = clients(process, 1).await.remove(0);
        let stats = client.stats(StatsRequest {}).await.unwrap().into_inner();
        let near = stats.near_cache.unwrap_or_default();
        let micros = |d: Option<prost_types::Duration>| {
            d.map_or(0, |d| d.seconds * 1_000_000 + i64::from(d.nanos) / 1_000)
        };
        delays.push(format!(
            "{name} p50 {} µs, p99 {} µs",
            micros(near.notice_delay_p50),
            micros(near.notice_delay_p99)
        ));
    }
    figures.note = format!(
        "notice delay from the writer to the other replicas (last 1,024 notices): {}",
        delays.join("; ")
    );
    stop_all(&mut processes).await;
    figures
}

/// A closed loop of Sets on the first of `replicas` processes.
async fn writes(
    cluster: &RedisCluster,
    strict: bool,
    replicas: usize,
    duration: Duration,
) -> Figures {
    let mut processes = start(&config(cluster, strict), replicas).await;
    until_members(cluster, if strict { replicas } else { 0 }).await;
    measure_cpu_of(processes[0].child.id().unwrap_or(0));
    let pool = clients(&processes[0], 4).await;
    let name = if strict {
        let members = if replicas == 1 { "member" } else { "members" };
        format!("Set, strict near-cache ({replicas} {members})")
    } else {
        format!("Set, bounded near-cache ({replicas} replicas)")
    };
    let figures = set_loop(&name, pool, 8, duration).await;
    stop_all(&mut processes).await;
    figures
}

/// `n` cachecoord processes with `config`.
async fn start(config: &str, n: usize) -> Vec<ServerProcess> {
    let mut processes = Vec::new();
    for _ in 0..n {
        processes.push(ServerProcess::start(config).await);
    }
    processes
}

/// A closed loop of 16-byte Sets by `workers` over `pool`, each worker on its own 100 keys.
async fn set_loop(
    name: &str,
    pool: Vec<crate::support::Client>,
    workers: usize,
    duration: Duration,
) -> Figures {
    let pool = Arc::new(pool);
    closed_loop(name, workers, duration, move |w, i| {
        let mut client = pool[w % pool.len()].clone();
        async move {
            let key = format!("strict:w{w}:{}", i % 100);
            client
                .set(set_request(&key, b"0123456789abcdef"))
                .await
                .is_ok()
        }
    })
    .await
}

/// Leaves gracefully (SIGTERM drains and leaves the membership), so the next run starts with its own members.
async fn stop_all(processes: &mut [ServerProcess]) {
    for process in processes {
        process.terminate();
        let _ = tokio::time::timeout(Duration::from_secs(10), process.child.wait()).await;
    }
}
