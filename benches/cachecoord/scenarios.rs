//! The steady scenarios on one server: the floor (a health check) and the alternative (fred straight to Redis),
//! then every cachecoord RPC, concurrency scaling and pattern invalidation in a growing keyspace.

use crate::measure::{Figures, closed_loop, peak_rss_mib, rss_mib};
use crate::support::cluster::RedisCluster;
use crate::support::loader::TestLoader;
use crate::support::process::ServerProcess;
use crate::support::{Client, set_request};
use cachecoord::proto::cache_service_client::CacheServiceClient;
use cachecoord::proto::{BatchGetRequest, BatchSetRequest, GetRequest, InvalidatePatternRequest};
use fred::prelude::{Builder, ClientLike, Config as FredConfig, KeysInterface};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The seeded keys scenarios read.
struct Keys {
    /// In Redis only.
    warm: Vec<String>,
    /// In Redis and in the near-cache entity.
    hot: Vec<String>,
    /// In Redis, of the entity whose hits the staleness sampler checks (1 %), and in its loader's source.
    sampled: Vec<String>,
    /// The same, of an entity of the same shape (a loader route, the same TTL) with sampling off: the reference.
    unsampled: Vec<String>,
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

/// Which seeded keys a Get reads.
#[derive(Clone, Copy)]
enum Seeded {
    Warm,
    Hot,
    Sampled,
    Unsampled,
}

/// A cache-only Get of one of the seeded keys; true when it was found.
async fn get_seeded(mut client: Client, keys: Arc<Keys>, which: Seeded, w: usize, i: u64) -> bool {
    let seeded = match which {
        Seeded::Warm => &keys.warm,
        Seeded::Hot => &keys.hot,
        Seeded::Sampled => &keys.sampled,
        Seeded::Unsampled => &keys.unsampled,
    };
    let key = seeded[((w as u64 * 31 + i) % seeded.len() as u64) as usize].clone();
    let request = GetRequest {
        key,
        cache_only: true,
        lease: false,
    };
    client
        .get(request)
        .await
        .is_ok_and(|r| r.into_inner().found)
}

/// `n` clients of `server`, each on a connection of its own.
pub(crate) async fn clients(server: &ServerProcess, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(CacheServiceClient::connect(server.uri()).await.unwrap());
    }
    clients
}

/// The configuration of the scenario servers: near-caching `hot:*`, a LoaderService for `load:*`, `storm:*` and
/// `sampled:*`, whose hits the staleness sampler checks at 1 %, and `unsampled:*`, the same entity with sampling off.
pub(crate) fn server_config(cluster: &RedisCluster, loader: &TestLoader, leases: bool) -> String {
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
[[policies]]
name = "sampled"
pattern = "sampled:*"
ttl_secs = 3600
staleness_sample_rate = 0.01
[[policies]]
name = "unsampled"
pattern = "unsampled:*"
ttl_secs = 3600
[[loaders]]
pattern = "sampled:*"
kind = "grpc"
endpoint = "http://{addr}"
[[loaders]]
pattern = "unsampled:*"
kind = "grpc"
endpoint = "http://{addr}"
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

/// What the steady scenarios leave: their figures, and the server they ran against.
pub(crate) struct SteadyRun {
    pub(crate) results: Vec<Figures>,
    /// The server's peak RSS after every steady scenario.
    pub(crate) server_peak_rss_mib: f64,
    /// The server's RSS right after start-up, before any call.
    pub(crate) server_idle_rss_mib: f64,
    /// Kept running (idle) while the herd scenarios run on servers of their own.
    pub(crate) server: ServerProcess,
}

/// Runs the steady scenarios in order against one server on `cluster`, each for 2 s in quick mode, 8 s otherwise.
pub(crate) async fn steady(cluster: &RedisCluster, quick: bool) -> SteadyRun {
    let duration = Duration::from_secs(if quick { 2 } else { 8 });
    let concurrency = 32;
    let loader = TestLoader::start().await;
    let server = ServerProcess::start(&server_config(cluster, &loader, true)).await;
    crate::measure::measure_cpu_of(server.child.id().unwrap_or(0));
    let server_idle_rss_mib = rss_mib(server.child.id().unwrap_or(0));
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
    let sampled: Vec<String> = (0..1000).map(|i| format!("sampled:b{i}")).collect();
    let unsampled: Vec<String> = (0..1000).map(|i| format!("unsampled:b{i}")).collect();
    let value = vec![b'x'; 256];
    let mut seed = pool[0].clone();
    for key in sampled.iter().chain(&unsampled) {
        loader.source.put(key, &value);
    }
    for keys in [&warm, &hot, &sampled, &unsampled] {
        let entries = keys.iter().map(|k| set_request(k, &value)).collect();
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
    let keys = Arc::new(Keys {
        warm,
        hot,
        sampled,
        unsampled,
    });

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
            |c, keys, w, i| get_seeded(c, keys, Seeded::Warm, w, i),
        )
        .await,
    );
    // The sampler's overhead: an entity sampled at 1 % between two runs of an entity of the same shape with
    // sampling off, so drift on a shared machine shows instead of passing for overhead.
    for (name, seeded) in [
        ("Get hit (Redis), sampling off", Seeded::Unsampled),
        ("Get hit (Redis), staleness sampling 1 %", Seeded::Sampled),
        ("Get hit (Redis), sampling off, again", Seeded::Unsampled),
    ] {
        results.push(
            scenario(
                name,
                concurrency,
                duration,
                &pool,
                &keys,
                move |c, keys, w, i| get_seeded(c, keys, seeded, w, i),
            )
            .await,
        );
    }
    results.push(
        scenario(
            "Get hit (near-cache)",
            concurrency,
            duration,
            &pool,
            &keys,
            |c, keys, w, i| get_seeded(c, keys, Seeded::Hot, w, i),
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
                c.set(set_request(
                    &format!("user:s{w}x{}", i % 1000),
                    b"0123456789abcdef",
                ))
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
                        lease: false,
                    })
                    .await
                    .is_ok()
                },
            )
            .await,
        );
    }
    let pipelined = Arc::new(Pipelined::connect(&redis).await);
    for batch in [100usize, 1000] {
        let pipelined = pipelined.clone();
        let name = format!("direct pipelined GETs of {batch} (fred, per primary)");
        results.push(
            closed_loop(&name, 8, duration, move |w, i| {
                let pipelined = pipelined.clone();
                async move {
                    let start = (w as u64 * 131 + i * 17) % 1000;
                    pipelined.get(start, batch).await
                }
            })
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
                lease: false,
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
                |c, keys, w, i| get_seeded(c, keys, Seeded::Warm, w, i),
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
            let entries = keys.iter().map(|k| set_request(k, b"v")).collect();
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
            cpu_us_per_request: None,
            note: String::new(),
        });
    }

    SteadyRun {
        results,
        server_peak_rss_mib: peak_rss_mib(server.child.id().unwrap_or(0)),
        server_idle_rss_mib,
        server,
    }
}

/// The best a caller could do for a batch without cachecoord: one fred client per primary, and a batch's GETs
/// grouped by the primary owning their slot and sent as one pipeline per primary, all primaries at once.
struct Pipelined {
    /// One centralized client per primary.
    primaries: Vec<fred::clients::Client>,
    /// For `direct:{i}`, the index in `primaries` of the node owning its slot.
    owner: Vec<usize>,
}

impl Pipelined {
    /// Splits `cluster` into per-primary clients and learns which one owns each of the 1,000 `direct:` keys.
    async fn connect(cluster: &fred::clients::Client) -> Pipelined {
        use fred::prelude::ClusterInterface;
        let routing = cluster.cached_cluster_state().unwrap();
        let primaries = cluster.split_cluster().unwrap();
        for client in &primaries {
            client.init().await.unwrap();
        }
        let owner = (0..1000)
            .map(|i| {
                let slot = fred::util::redis_keyslot(format!("direct:{i}").as_bytes());
                let server = routing.get_server(slot).unwrap();
                primaries
                    .iter()
                    .position(|client| client.client_config().server.hosts().contains(server))
                    .unwrap()
            })
            .collect();
        Pipelined { primaries, owner }
    }

    /// GETs `count` consecutive `direct:` keys from `start` (wrapping at 1,000); true when every key answered.
    async fn get(&self, start: u64, count: usize) -> bool {
        let mut per_primary: Vec<Vec<String>> = vec![Vec::new(); self.primaries.len()];
        for k in 0..count as u64 {
            let i = ((start + k) % 1000) as usize;
            per_primary[self.owner[i]].push(format!("direct:{i}"));
        }
        let pipelines = per_primary
            .into_iter()
            .zip(&self.primaries)
            .filter(|(keys, _)| !keys.is_empty())
            .map(|(keys, client)| async move {
                let pipeline = client.pipeline();
                for key in keys {
                    let _: () = pipeline.get(key).await?;
                }
                pipeline.all::<Vec<Option<Vec<u8>>>>().await
            });
        futures::future::join_all(pipelines)
            .await
            .iter()
            .all(|answer| {
                answer
                    .as_ref()
                    .is_ok_and(|values| values.iter().all(Option::is_some))
            })
    }
}
