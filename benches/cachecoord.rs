//! The benchmark: cachecoord side by side with its floor (a gRPC health check against the same server) and its
//! alternative (fred straight to the same Redis Cluster), measured in one run on one machine, reported as
//! figures and as ratios against those baselines.
//!
//!     cargo bench --bench cachecoord              # full run (a few minutes)
//!     cargo bench --bench cachecoord -- --quick   # CI smoke, well under 2 minutes
//!
//! It starts what it needs on loopback — a 3 + 3 Redis Cluster, the release `cachecoord` binary as separate
//! server processes (so their peak RSS is their own), a LoaderService with configurable latency — using the
//! integration tests' support code. Closed loop, fixed concurrency per scenario. Writes a markdown table to
//! stdout and `bench/results/latest.md`, JSON to `bench/results/latest.json`, and an SVG chart to
//! `bench/results/latest.svg`.

#[path = "../tests/support/mod.rs"]
mod support;

use cachecoord::proto::cache_service_client::CacheServiceClient;
use cachecoord::proto::{
    BatchGetRequest, BatchSetRequest, GetRequest, InvalidatePatternRequest, SetRequest,
};
use fred::prelude::{Builder, ClientLike, Config as FredConfig, KeysInterface};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::cluster::RedisCluster;
use support::loader::TestLoader;
use support::process::ServerProcess;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

type Client = CacheServiceClient<Channel>;

/// One scenario's outcome.
struct Figures {
    name: String,
    concurrency: usize,
    requests: u64,
    errors: u64,
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    note: String,
}

/// Runs `call` from `concurrency` workers for `duration`, each worker waiting for its previous call.
async fn closed_loop<F, Fut>(name: &str, concurrency: usize, duration: Duration, call: F) -> Figures
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let call = call.clone();
            tokio::spawn(async move {
                let (mut latencies, mut errors, mut i) = (Vec::new(), 0u64, 0u64);
                while started.elapsed() < duration {
                    let t = Instant::now();
                    if !call(worker, i).await {
                        errors += 1;
                    }
                    latencies.push(t.elapsed().as_nanos() as u64);
                    i += 1;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (latencies, worker_errors) = worker.await.unwrap();
        all.extend(latencies);
        errors += worker_errors;
    }
    figures(
        name,
        concurrency,
        all,
        errors,
        started.elapsed(),
        String::new(),
    )
}

/// Sorts the latencies (ns), takes percentiles and throughput, and prints one line.
fn figures(
    name: &str,
    concurrency: usize,
    mut latencies: Vec<u64>,
    errors: u64,
    elapsed: Duration,
    note: String,
) -> Figures {
    latencies.sort_unstable();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(index).copied().unwrap_or(0) as f64 / 1e3
    };
    let figures = Figures {
        name: name.to_owned(),
        concurrency,
        requests: latencies.len() as u64,
        errors,
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_us: at(0.5),
        p99_us: at(0.99),
        p999_us: at(0.999),
        note,
    };
    eprintln!(
        "{:<40} c={:<4} {:>10.0}/s p50 {:>8.0}µs p99 {:>8.0}µs p99.9 {:>8.0}µs errors {} {}",
        figures.name,
        concurrency,
        figures.per_second,
        figures.p50_us,
        figures.p99_us,
        figures.p999_us,
        errors,
        figures.note
    );
    figures
}

/// The seeded keys scenarios read.
struct Keys {
    /// In Redis only.
    warm: Vec<String>,
    /// In Redis and in the near-cache entity.
    hot: Vec<String>,
}

/// A closed-loop scenario over the client pool: worker `w` uses client `w % pool size`.
async fn scenario<F, Fut>(
    name: &str,
    concurrency: usize,
    duration: Duration,
    pool: &Arc<Vec<Client>>,
    keys: &Arc<Keys>,
    call: F,
) -> Figures
where
    F: Fn(Client, Arc<Keys>, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let (pool, keys) = (pool.clone(), keys.clone());
    closed_loop(name, concurrency, duration, move |w, i| {
        call(pool[w % pool.len()].clone(), keys.clone(), w, i)
    })
    .await
}

/// A cache-only Get of one of the seeded keys (`hot`: the near-cached ones); true when it was found.
async fn get_seeded(mut client: Client, keys: Arc<Keys>, hot: bool, w: usize, i: u64) -> bool {
    let seeded = if hot { &keys.hot } else { &keys.warm };
    let key = seeded[((w as u64 * 31 + i) % seeded.len() as u64) as usize].clone();
    let request = GetRequest {
        key,
        cache_only: true,
    };
    client
        .get(request)
        .await
        .is_ok_and(|r| r.into_inner().found)
}

fn set(key: String, value: &[u8]) -> SetRequest {
    SetRequest {
        key,
        value: value.to_vec().into(),
        ttl: None,
        version: None,
    }
}

/// Peak resident set size of a process, from /proc (kB → MiB).
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .map(|v| v.trim().trim_end_matches(" kB").trim().to_owned())
            })
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn clients(server: &ServerProcess, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(CacheServiceClient::connect(server.uri()).await.unwrap());
    }
    clients
}

fn server_config(cluster: &RedisCluster, loader: &TestLoader, leases: bool) -> String {
    format!(
        r#"
log_level = "warn"
[store]
redis_url = "{}"
[near_cache]
max_bytes = 67108864
[read_through]
leases = {leases}
[[policies]]
name = "hot"
pattern = "hot:*"
ttl_secs = 3600
near_cache_ttl_secs = 60
[[loaders]]
pattern = "load:*"
kind = "grpc"
endpoint = "http://{addr}"
max_concurrency = 1024
[[loaders]]
pattern = "storm:*"
kind = "grpc"
endpoint = "http://{addr}"
max_concurrency = 1024
"#,
        cluster.url(),
        addr = loader.addr
    )
}

/// The expiry storm: `keys` hot keys loaded together (20 ms loader, 2 s TTL, no jitter) expire together under
/// steady load. On: XFetch (β = 1) refreshes hits early in the background and stale-while-revalidate (5 s)
/// serves an expired value while one refresh runs; off: every expiry is a miss that waits for a load. Runs `duration` (several expiries) and answers the figures of the whole run.
async fn expiry_storm(
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
    let pool = Arc::new(clients(&server, 4).await);
    let tag = format!("{}{}", if xfetch { "x" } else { "p" }, std::process::id());
    let names: Arc<Vec<String>> = Arc::new((0..keys).map(|k| format!("storm:{tag}k{k}")).collect());
    for name in names.iter() {
        loader.source.put(name, b"row");
    }
    // Load every key at once (in batches of the 1,000-key limit), so they all expire together.
    for chunk in names.chunks(1000) {
        let batch = BatchGetRequest {
            keys: chunk.to_vec(),
            cache_only: false,
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
                })
                .await
                .is_ok()
        }
    })
    .await;
    let loads: usize = (0..keys)
        .map(|k| loader.source.loads_of(&format!("storm:{tag}k{k}")))
        .sum();
    figures.note = format!("{keys} keys, 2 s TTL, {loads} loads in {duration:?}");
    figures
}

/// The stampede: `replicas` servers × `callers` concurrent Gets on each of `keys` cold keys, 100 ms loader.
async fn stampede(
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let duration = Duration::from_secs(if quick { 2 } else { 8 });
    let concurrency = 32;
    eprintln!(
        "cachecoord benchmark ({} mode): starting a 3 + 3 Redis Cluster",
        if quick { "quick" } else { "full" }
    );
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let loader = TestLoader::start().await;
    let server = ServerProcess::start(&server_config(&cluster, &loader, true)).await;
    let pool = Arc::new(clients(&server, 4).await);
    let health_channel = Channel::from_shared(server.uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let redis = Builder::from_config(FredConfig::from_url(&cluster.url()).unwrap())
        .build()
        .unwrap();
    redis.init().await.unwrap();
    let redis = Arc::new(redis);
    let mut results = Vec::new();

    // Seed: hot keys in Redis and in the near-cache entity, spread over every primary.
    let warm: Vec<String> = (0..1000).map(|i| format!("user:b{i}")).collect();
    let hot: Vec<String> = (0..1000).map(|i| format!("hot:b{i}")).collect();
    let value = vec![b'x'; 256];
    let mut seed = pool[0].clone();
    for keys in [&warm, &hot] {
        let entries = keys.iter().map(|k| set(k.clone(), &value)).collect();
        seed.batch_set(BatchSetRequest { entries }).await.unwrap();
    }
    for i in 0..1000 {
        let _: () = redis
            .set(format!("direct:{i}"), value.clone(), None, None, false)
            .await
            .unwrap();
    }
    let tagged: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| (format!("{{mg}}:{i}"), value.clone()))
        .collect();
    let _: () = redis.mset(tagged).await.unwrap();
    let keys = Arc::new(Keys { warm, hot });

    // Floor and alternative.
    let floor = {
        let channel = health_channel.clone();
        closed_loop(
            "floor: grpc.health.v1 Check",
            concurrency,
            duration,
            move |_, _| {
                let mut health = HealthClient::new(channel.clone());
                async move {
                    health
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .is_ok()
                }
            },
        )
        .await
    };
    results.push(floor);
    let direct = {
        let redis = redis.clone();
        closed_loop(
            "direct Redis GET (fred)",
            concurrency,
            duration,
            move |w, i| {
                let redis = redis.clone();
                async move {
                    redis
                        .get::<Option<Vec<u8>>, _>(format!("direct:{}", (w as u64 * 31 + i) % 1000))
                        .await
                        .is_ok()
                }
            },
        )
        .await
    };
    results.push(direct);
    let direct_set = {
        let redis = redis.clone();
        closed_loop(
            "direct Redis SET (fred)",
            concurrency,
            duration,
            move |w, i| {
                let redis = redis.clone();
                async move {
                    let key = format!("direct:s{w}x{}", i % 1000);
                    let set = redis.set::<(), _, _>(key, "0123456789abcdef", None, None, false);
                    set.await.is_ok()
                }
            },
        )
        .await
    };
    results.push(direct_set);
    let direct_mget = {
        let redis = redis.clone();
        closed_loop(
            "direct Redis MGET of 10 (one slot)",
            8,
            duration,
            move |_, i| {
                let redis = redis.clone();
                async move {
                    // A hash tag keeps the 10 keys in one slot: plain MGET on a cluster allows nothing else.
                    let keys: Vec<String> = (0..10)
                        .map(|k| format!("{{mg}}:{}", (i + k) % 100))
                        .collect();
                    redis.mget::<Vec<Option<Vec<u8>>>, _>(keys).await.is_ok()
                }
            },
        )
        .await
    };
    results.push(direct_mget);

    results.push(
        scenario(
            "Get hit (Redis)",
            concurrency,
            duration,
            &pool,
            &keys,
            |c, keys, w, i| get_seeded(c, keys, false, w, i),
        )
        .await,
    );
    results.push(
        scenario(
            "Get hit (near-cache)",
            concurrency,
            duration,
            &pool,
            &keys,
            |c, keys, w, i| get_seeded(c, keys, true, w, i),
        )
        .await,
    );
    results.push(
        scenario(
            "Set",
            concurrency,
            duration,
            &pool,
            &keys,
            |mut c, _, w, i| async move {
                c.set(set(format!("user:s{w}x{}", i % 1000), b"0123456789abcdef"))
                    .await
                    .is_ok()
            },
        )
        .await,
    );
    for batch in [10usize, 100, 1000] {
        let name = format!("BatchGet of {batch} (all primaries)");
        results.push(
            scenario(
                &name,
                8,
                duration,
                &pool,
                &keys,
                move |mut c, keys, w, i| async move {
                    let start = ((w as u64 * 131 + i * 17) % 1000) as usize;
                    let keys = (0..batch)
                        .map(|k| keys.warm[(start + k) % 1000].clone())
                        .collect();
                    c.batch_get(BatchGetRequest {
                        keys,
                        cache_only: true,
                    })
                    .await
                    .is_ok()
                },
            )
            .await,
        );
    }
    for (delay_ms, tag) in [(1u64, 'a'), (50, 'b')] {
        loader.source.set_delay(Duration::from_millis(delay_ms));
        let name = format!("Get miss → load (loader {delay_ms} ms)");
        let miss = move |mut c: Client, _, w, i| async move {
            let key = format!("load:{tag}{w}x{i}");
            c.get(GetRequest {
                key,
                cache_only: false,
            })
            .await
            .is_ok()
        };
        results.push(scenario(&name, concurrency, duration, &pool, &keys, miss).await);
    }
    results.push(
        scenario(
            "Invalidate",
            concurrency,
            duration,
            &pool,
            &keys,
            |mut c, _, w, i| async move {
                let key = format!("user:s{w}x{}", i % 1000);
                c.invalidate(cachecoord::proto::InvalidateRequest { keys: vec![key] })
                    .await
                    .is_ok()
            },
        )
        .await,
    );
    for concurrency in [1usize, 8, 64, 256] {
        let name = format!("scaling: Get hit (Redis) c={concurrency}");
        results.push(
            scenario(
                &name,
                concurrency,
                duration,
                &pool,
                &keys,
                |c, keys, w, i| get_seeded(c, keys, false, w, i),
            )
            .await,
        );
    }

    // Pattern invalidation of 1,000 keys of one group, in a 10k keyspace (and 1M in full mode).
    let mut client = pool[0].clone();
    let sizes: &[u64] = if quick {
        &[10_000]
    } else {
        &[10_000, 1_000_000]
    };
    let mut filled = 0;
    for &size in sizes {
        for chunk in (filled / 1000)..(size / 1000) {
            let pairs: Vec<(String, &str)> = (0..1000)
                .map(|i| (format!("{{filler:{chunk}}}:{i}"), "x"))
                .collect();
            let _: () = redis.mset(pairs).await.unwrap();
        }
        filled = size;
        let mut times = Vec::new();
        for round in 0..5 {
            let keys: Vec<String> = (0..1000)
                .map(|i| format!("user:p{size}r{round}:f{i}"))
                .collect();
            let entries = keys.iter().map(|k| set(k.clone(), b"v")).collect();
            client.batch_set(BatchSetRequest { entries }).await.unwrap();
            let t = Instant::now();
            let pattern = format!("user:p{size}r{round}:*");
            client
                .invalidate_pattern(InvalidatePatternRequest { pattern })
                .await
                .unwrap();
            times.push(t.elapsed().as_nanos() as u64);
        }
        times.sort_unstable();
        let median = times[2] as f64 / 1e3;
        eprintln!("InvalidatePattern of 1,000 keys in {size} keys: median {median:.0}µs");
        results.push(Figures {
            name: format!("InvalidatePattern 1,000 keys, keyspace {size}"),
            concurrency: 1,
            requests: 5,
            errors: 0,
            per_second: 0.0,
            p50_us: median,
            p99_us: times[4] as f64 / 1e3,
            p999_us: times[4] as f64 / 1e3,
            note: String::new(),
        });
    }

    let rss = peak_rss_mib(server.child.id().unwrap_or(0));
    let (replicas, callers, keys) = if quick { (2, 20, 5) } else { (3, 100, 20) };
    results.push(stampede(&cluster, true, replicas, callers, keys).await);
    results.push(stampede(&cluster, false, replicas, callers, keys).await);
    let storm_for = Duration::from_secs(if quick { 5 } else { 12 });
    results.push(expiry_storm(&cluster, true, 2000, storm_for).await);
    results.push(expiry_storm(&cluster, false, 2000, storm_for).await);

    report(&results, rss, quick);
}

/// Prints the table and the target checks, and writes the JSON and SVG files.
fn report(results: &[Figures], rss_mib: f64, quick: bool) {
    let find = |name: &str| results.iter().find(|f| f.name.starts_with(name)).unwrap();
    let floor = find("floor");
    let direct = find("direct Redis GET");
    let mut md = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "Run: {} mode, {} CPUs ({cpu}), loopback 3 + 3 Redis Cluster, release build.\n",
        if quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        md,
        "| scenario | concurrency | req/s | p50 µs | p99 µs | p99.9 µs | req/s ÷ floor | errors | note |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for f in results {
        let ratio = if f.per_second > 0.0 {
            format!("{:.2}", f.per_second / floor.per_second)
        } else {
            "—".into()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
            f.name,
            f.concurrency,
            f.per_second,
            f.p50_us,
            f.p99_us,
            f.p999_us,
            ratio,
            f.errors,
            f.note
        );
    }
    let get_hit = find("Get hit (Redis)");
    let near = find("Get hit (near-cache)");
    let batch100 = find("BatchGet of 100");
    let check = |ok: bool| if ok { "met" } else { "MISSED" };
    let _ = writeln!(md, "\nTargets (figures from this run):\n");
    let near_ratio = near.per_second / floor.per_second;
    let _ = writeln!(
        md,
        "- near-cache Get hit throughput ≥ 0.9 × floor: {near_ratio:.2} × — {}",
        check(near_ratio >= 0.9)
    );
    let redis_ratio = get_hit.per_second / floor.per_second;
    let _ = writeln!(
        md,
        "- Redis Get hit throughput ≥ 0.6 × floor: {redis_ratio:.2} × — {}",
        check(redis_ratio >= 0.6)
    );
    let bound = direct.p50_us + floor.p50_us + 100.0;
    let _ = writeln!(
        md,
        "- Get hit p50 ≤ direct GET p50 + floor p50 + 100 µs: {:.0} µs vs {bound:.0} µs — {}",
        get_hit.p50_us,
        check(get_hit.p50_us <= bound)
    );
    let _ = writeln!(
        md,
        "- BatchGet of 100 ≤ 3 × one Get (p50): {:.0} µs vs {:.0} µs — {}",
        batch100.p50_us,
        3.0 * get_hit.p50_us,
        check(batch100.p50_us <= 3.0 * get_hit.p50_us)
    );
    let steady = find("Get hit (Redis)");
    for storm in results
        .iter()
        .filter(|f| f.name.starts_with("expiry storm"))
    {
        let ratio = storm.p99_us / steady.p99_us;
        let _ = writeln!(
            md,
            "- {} p99 ≤ 1.5 × steady Get-hit p99: {:.0} µs vs {:.0} µs ({ratio:.2} ×) — {}",
            storm.name,
            storm.p99_us,
            steady.p99_us,
            check(ratio <= 1.5)
        );
    }
    let storm = find("stampede, leases on");
    let _ = writeln!(
        md,
        "- stampede with leases: {} — {}",
        storm.note,
        check(storm.note.contains(": 1.00 loader"))
    );
    if let (Some(small), Some(large)) = (
        results.iter().find(|f| f.name.ends_with("keyspace 10000")),
        results
            .iter()
            .find(|f| f.name.ends_with("keyspace 1000000")),
    ) {
        let ratio = large.p50_us / small.p50_us;
        let _ = writeln!(
            md,
            "- InvalidatePattern 1M ÷ 10k ≤ 1.5: {ratio:.2} — {}",
            check(ratio <= 1.5)
        );
    }
    let _ = writeln!(
        md,
        "- server peak RSS ≤ 64 MiB + near-cache budget (64 MiB): {rss_mib:.1} MiB — {}",
        check(rss_mib <= 128.0)
    );
    println!("{md}");

    std::fs::create_dir_all("bench/results").unwrap();
    std::fs::write("bench/results/latest.md", &md).unwrap();
    let json: Vec<String> = results
        .iter()
        .map(|f| {
            format!(
                r#"{{"scenario":{:?},"concurrency":{},"requests":{},"errors":{},"per_second":{:.1},"p50_us":{:.1},"p99_us":{:.1},"p999_us":{:.1},"note":{:?}}}"#,
                f.name, f.concurrency, f.requests, f.errors, f.per_second, f.p50_us, f.p99_us, f.p999_us, f.note
            )
        })
        .collect();
    let json = format!(
        "{{\"quick\":{quick},\"server_peak_rss_mib\":{rss_mib:.1},\"results\":[\n{}\n]}}\n",
        json.join(",\n")
    );
    std::fs::write("bench/results/latest.json", json).unwrap();
    std::fs::write("bench/results/latest.svg", chart(results)).unwrap();
    eprintln!("wrote bench/results/latest.{{md,json,svg}}");
}

/// A horizontal bar chart of p50 and p99 latency per scenario (log scale), with throughput printed beside it.
fn chart(results: &[Figures]) -> String {
    let rows: Vec<&Figures> = results.iter().filter(|f| f.p50_us > 0.0).collect();
    let (left, width, row) = (330.0, 520.0, 22.0);
    let height = 60.0 + row * rows.len() as f64;
    let max = rows
        .iter()
        .map(|f| f.p99_us)
        .fold(1.0, f64::max)
        .log10()
        .ceil();
    let x = |us: f64| left + width * (us.max(1.0).log10() / max);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="11">"#,
        left + width + 150.0
    );
    svg.push_str(r#"<text x="10" y="18" font-size="13">cachecoord benchmark: p50 (dark) and p99 (light) latency, log scale; req/s on the right</text>"#);
    for decade in 0..=max as i32 {
        let us = 10f64.powi(decade);
        let label = if us >= 1000.0 {
            format!("{} ms", us / 1000.0)
        } else {
            format!("{us} µs")
        };
        let _ = write!(
            svg,
            r##"<line x1="{0}" x2="{0}" y1="30" y2="{1}" stroke="#ddd"/><text x="{0}" y="{2}" text-anchor="middle">{label}</text>"##,
            x(us),
            height - 20.0,
            height - 6.0
        );
    }
    for (i, f) in rows.iter().enumerate() {
        let y = 36.0 + row * i as f64;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{left}" y="{y}" width="{}" height="14" fill="#9ecae1"/><rect x="{left}" y="{y}" width="{}" height="14" fill="#3182bd"/><text x="{}" y="{}">{}</text>"##,
            left - 6.0,
            y + 11.0,
            f.name.replace('&', "&amp;").replace('<', "&lt;"),
            x(f.p99_us) - left,
            x(f.p50_us) - left,
            left + width + 8.0,
            y + 11.0,
            if f.per_second > 0.0 {
                format!("{:.0}/s", f.per_second)
            } else {
                String::new()
            }
        );
    }
    svg.push_str("</svg>\n");
    svg
}
