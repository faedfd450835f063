//! The herd scenarios, each on servers and a loader of its own: a stampede of callers on cold keys (through a
//! LoaderService, and through the callers' own cache-aside loop with and without leases), and an expiry storm of
//! hot keys that all expire together.

use crate::measure::{Figures, closed_loop, figures};
use crate::scenarios::{clients, server_config};
use crate::support::cluster::RedisCluster;
use crate::support::loader::TestLoader;
use crate::support::process::ServerProcess;
use cachecoord::proto::{BatchGetRequest, GetRequest, SetRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The expiry storm: `keys` hot keys loaded together (20 ms loader, 2 s TTL, no jitter) expire together under
/// steady load. On: XFetch (β = 1) refreshes hits early in the background and stale-while-revalidate (5 s)
/// serves an expired value while one refresh runs; off: every expiry is a miss that waits for a load. Runs `duration` (several expiries) and answers the figures of the whole run.
pub(crate) async fn expiry_storm(
    cluster: &RedisCluster,
    xfetch: bool,
    keys: usize,
    duration: Duration,
) -> Figures {
    let loader = TestLoader::start().await;
    loader.source.set_delay(Duration::from_millis(20));
    let config = format!(
        r#"
log_level = "warn"
[store]
redis_url = "{}"
[policy_defaults]
jitter_ratio = 0.0
[[policies]]
name = "storm"
pattern = "storm:*"
ttl_secs = 2
xfetch_beta = {}
stale_while_revalidate_secs = {}
[[loaders]]
pattern = "storm:*"
kind = "grpc"
endpoint = "http://{}"
max_concurrency = 1024
"#,
        cluster.url(),
        if xfetch { "1.0" } else { "0.0" },
        if xfetch { 5 } else { 0 },
        loader.addr
    );
    let server = ServerProcess::start(&config).await;
    crate::measure::measure_cpu_of(server.child.id().unwrap_or(0));
    let pool = Arc::new(clients(&server, 4).await);
    let tag = format!("{}{}", if xfetch { "x" } else { "p" }, std::process::id());
    let names: Arc<Vec<String>> = Arc::new((0..keys).map(|k| format!("storm:{tag}k{k}")).collect());
    for name in names.iter() {
        loader.source.put(name, b"row");
    }
    // Load every key at once (in batches of the 1,000-key limit), so they all expire together.
    let first_fill = Instant::now();
    for chunk in names.chunks(1000) {
        let batch = BatchGetRequest {
            keys: chunk.to_vec(),
            cache_only: false,
            lease: false,
        };
        pool[0].clone().batch_get(batch).await.unwrap();
    }
    let state = if xfetch { "on" } else { "off" };
    let name = format!("expiry storm, XFetch + stale-while-revalidate {state}");
    let mut figures = closed_loop(&name, 32, duration, move |w, i| {
        let mut client = pool[w % pool.len()].clone();
        let key = names[((w as u64 * 97 + i) % names.len() as u64) as usize].clone();
        async move {
            client
                .get(GetRequest {
                    key,
                    cache_only: false,
                    lease: false,
                })
                .await
                .is_ok()
        }
    })
    .await;
    let loads: usize = (0..keys)
        .map(|k| loader.source.loads_of(&format!("storm:{tag}k{k}")))
        .sum();
    // TTL windows from the first fill (counted among the loads) to the end of the run, the last one partly.
    let windows = (first_fill.elapsed().as_secs_f64() / 2.0).ceil();
    let per_window = loads as f64 / keys as f64 / windows;
    figures.note = format!(
        "{keys} keys, 2 s TTL, {loads} loads in {duration:?} ({windows} TTL windows from the first fill): \
         {per_window:.2} loads per key per TTL window"
    );
    figures
}

/// The stampede: `replicas` servers × `callers` concurrent Gets on each of `keys` cold keys, 100 ms loader.
pub(crate) async fn stampede(
    cluster: &RedisCluster,
    leases: bool,
    replicas: usize,
    callers: usize,
    keys: usize,
) -> Figures {
    let loader = TestLoader::start().await;
    loader.source.set_delay(Duration::from_millis(100));
    let mut servers = Vec::new();
    for _ in 0..replicas {
        servers.push(ServerProcess::start(&server_config(cluster, &loader, leases)).await);
    }
    let mut pool = Vec::new();
    for server in &servers {
        pool.extend(clients(server, 2).await);
    }
    let tag = format!("{}{}", if leases { "l" } else { "n" }, std::process::id());
    let names: Vec<String> = (0..keys).map(|k| format!("storm:{tag}x{k}")).collect();
    for name in &names {
        loader.source.put(name, b"row");
    }
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..replicas * callers * keys {
        let mut client = pool[i % pool.len()].clone();
        let key = names[i % keys].clone();
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = client
                .get(GetRequest {
                    key,
                    cache_only: false,
                    lease: false,
                })
                .await
                .is_ok();
            (t.elapsed(), ok)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for call in calls {
        let (latency, ok) = call.await.unwrap();
        latencies.push(latency.as_nanos() as u64);
        errors += u64::from(!ok);
    }
    let total_loads: usize = names.iter().map(|k| loader.source.loads_of(k)).sum();
    let note = format!(
        "{replicas} replicas × {callers} callers × {keys} keys: {:.2} loader calls per key",
        total_loads as f64 / keys as f64
    );
    let name = format!("stampede, leases {}", if leases { "on" } else { "off" });
    figures(
        &name,
        replicas * callers,
        latencies,
        errors,
        started.elapsed(),
        note,
    )
}

/// The cache-aside stampede without a loader: `replicas` servers × `callers` concurrent callers on each of `keys`
/// cold keys, each running the caller's own loop (Get; on a miss, a 100 ms database read, then Set) with leases
/// (`Get` with `lease`, Set with the token; a caller whose wait ran out loads without caching) or without. Counts
/// the database reads per key.
pub(crate) async fn cache_aside_stampede(
    cluster: &RedisCluster,
    leases: bool,
    replicas: usize,
    callers: usize,
    keys: usize,
) -> Figures {
    let loader = TestLoader::start().await;
    let mut servers = Vec::new();
    for _ in 0..replicas {
        servers.push(ServerProcess::start(&server_config(cluster, &loader, true)).await);
    }
    let mut pool = Vec::new();
    let mut fill_pool = Vec::new();
    for server in &servers {
        pool.extend(clients(server, 2).await);
        fill_pool.extend(clients(server, 2).await);
    }
    let tag = format!("{}{}", if leases { "l" } else { "n" }, std::process::id());
    let names: Vec<String> = (0..keys).map(|k| format!("aside:{tag}x{k}")).collect();
    let db_reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..replicas * callers * keys {
        let mut client = pool[i % pool.len()].clone();
        let mut fill_client = fill_pool[i % fill_pool.len()].clone();
        let key = names[i % keys].clone();
        let db_reads = db_reads.clone();
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let answer = client
                .get(GetRequest {
                    key: key.clone(),
                    cache_only: false,
                    lease: leases,
                })
                .await;
            let ok = match answer.map(tonic::Response::into_inner) {
                Ok(answer) if answer.found => true,
                Ok(answer) => {
                    // The caller's own database.
                    db_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if leases && answer.lease_token.is_empty() {
                        true
                    } else {
                        let fill = SetRequest {
                            key,
                            value: b"row".to_vec().into(),
                            ttl: None,
                            version: None,
                            lease_token: answer.lease_token,
                        };
                        fill_client.set(fill).await.is_ok()
                    }
                }
                Err(_) => false,
            };
            (t.elapsed(), ok)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for call in calls {
        let (latency, ok) = call.await.unwrap();
        latencies.push(latency.as_nanos() as u64);
        errors += u64::from(!ok);
    }
    let reads = db_reads.load(std::sync::atomic::Ordering::Relaxed);
    let note = format!(
        "{replicas} replicas × {callers} callers × {keys} keys: {:.2} database calls per key",
        reads as f64 / keys as f64
    );
    let name = format!(
        "cache-aside stampede (no loader), leases {}",
        if leases { "on" } else { "off" }
    );
    figures(
        &name,
        replicas * callers,
        latencies,
        errors,
        started.elapsed(),
        note,
    )
}
