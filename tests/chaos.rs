//! The chaos test: a steady mixed load (Gets, versioned Sets, Invalidates over 2,000 loader-backed keys) against
//! three cachecoord processes on a 3 + 3 Redis Cluster of its own, while it kills a primary (`kill -9`), kills a
//! cachecoord replica, pauses a primary (SIGSTOP, then SIGCONT), and makes the loader slow, then failing, then
//! healthy again. It prints a summary table per phase and asserts what docs/reliability.md promises:
//!
//! - no stale read, ever: no Get returns a value older than an invalidation already acknowledged to the test;
//! - during the primary kill, no error at all for keys owned by the healthy primaries;
//! - errors only in the phases, and with the codes, the docs allow;
//! - 150 invalidations acknowledged just before their primary is killed never come back after the failover.
//!
//! The load generator behaves as the README tells clients to: a deadline on every call, and one retry on another
//! replica after UNAVAILABLE (or a broken connection) for the idempotent calls — Get, Invalidate, and Set with a
//! version.

mod support;

use cachecoord::proto::cache_service_client::CacheServiceClient;
use cachecoord::proto::{GetRequest, InvalidateRequest, SetRequest};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Client;
use support::cluster::RedisCluster;
use support::loader::TestLoader;
use support::process::ServerProcess;
use tonic::Code;
use tonic::transport::Channel;

const KEYS: usize = 2000;
const WORKERS: usize = 24;
/// Above the longest promised wait: a lease wait (1.5 s) plus one load (1 s loader timeout).
const CALL_DEADLINE: Duration = Duration::from_secs(3);

fn key(i: usize) -> String {
    format!("item:{i}")
}

fn value(version: u64) -> Vec<u8> {
    format!("v{version}").into_bytes()
}

fn version_of(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()?
        .strip_prefix('v')?
        .parse()
        .ok()
}

/// What every worker shares: per-key write locks and versions, the acknowledged-invalidation floor per key, and
/// the phase being recorded.
struct World {
    source: Arc<support::loader::SourceOfTruth>,
    /// Held while a writer bumps the source and tells the cache, so versions reach both in order.
    writers: Vec<tokio::sync::Mutex<u64>>,
    /// The highest version whose Invalidate was acknowledged: a Get must never answer below it.
    floor: Vec<AtomicU64>,
    /// Clients of every replica started, and whether it is still in service (a stopped one is skipped, as a
    /// Kubernetes Service drops an endpoint).
    replicas: Mutex<Vec<(Client, bool)>>,
    record: Mutex<Record>,
    stop: AtomicBool,
}

/// Outcomes of the current phase.
#[derive(Default)]
struct Record {
    requests: u64,
    errors: BTreeMap<String, u64>,
    /// Errors on keys whose primary is not the one being failed (primary kill only).
    healthy_shard_errors: u64,
    latencies_us: Vec<u64>,
    stale: u64,
    /// The first stale reads, described, for the failure message.
    stale_samples: Vec<String>,
    /// Keys owned by the primary being failed in this phase (empty otherwise).
    failing_shard: Option<Vec<bool>>,
}

/// One finished phase, for the table.
struct PhaseReport {
    name: &'static str,
    seconds: f64,
    record: Record,
    loads: usize,
    distinct_loaded: usize,
}

impl World {
    /// The next version of key `index`: counted in `version` (its writer lock, which the caller holds, so
    /// versions reach the source and the cache in order) and put in the source of truth.
    fn next_version(&self, index: usize, version: &mut u64) -> u64 {
        *version += 1;
        self.source.put(&key(index), &value(*version));
        *version
    }

    fn replica_for(&self, attempt: usize, worker: usize) -> Option<Client> {
        let replicas = self.replicas.lock().unwrap();
        let live: Vec<&Client> = replicas
            .iter()
            .filter(|(_, live)| *live)
            .map(|(client, _)| client)
            .collect();
        (!live.is_empty()).then(|| live[(worker + attempt) % live.len()].clone())
    }

    fn note(&self, index: usize, started: Instant, outcome: Result<(), Code>, stale: bool) {
        let mut record = self.record.lock().unwrap();
        record.requests += 1;
        record
            .latencies_us
            .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        if stale {
            record.stale += 1;
        }
        if let Err(code) = outcome {
            *record.errors.entry(format!("{code:?}")).or_default() += 1;
            let on_failing_shard = record
                .failing_shard
                .as_ref()
                .is_some_and(|shard| shard[index]);
            if record.failing_shard.is_some() && !on_failing_shard {
                record.healthy_shard_errors += 1;
            }
        }
    }
}

/// Whether a failed call may be retried on another replica: the server said UNAVAILABLE, or the connection broke
/// — including a call the server never started because its connection was closing: a draining replica's HTTP/2
/// GOAWAY (NO_ERROR) refuses streams opened after it, which tonic reports as INTERNAL.
fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    ) || refused_by_goaway(status)
}

/// A stream the server refused with a graceful GOAWAY: it never reached a handler, so it is safe to send again.
fn refused_by_goaway(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    let mut cause = status.source();
    while let Some(error) = cause {
        let described = format!("{error:?}");
        if described.contains("GoAway(") && described.contains("NO_ERROR") {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Runs `call` on a live replica, retrying once on another after a retryable failure.
async fn with_retry<T, F, Fut>(
    world: &World,
    worker: usize,
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut last = tonic::Status::unavailable("no live replica");
    for attempt in 0..2 {
        let Some(client) = world.replica_for(attempt, worker) else {
            break;
        };
        match call(client).await {
            Ok(answer) => return Ok(answer),
            Err(status) if retryable(&status) => last = status,
            Err(status) => {
                if matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown) {
                    // Never expected: say what it was, so a failing run explains itself.
                    eprintln!("chaos: unexpected answer: {status:?}");
                }
                return Err(status);
            }
        }
    }
    Err(last)
}

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_DEADLINE);
    request
}

async fn worker(world: Arc<World>, id: usize) {
    let mut seed = id as u64 * 7919 + 17;
    let mut next = move || {
        // xorshift: cheap, deterministic per worker.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    while !world.stop.load(Ordering::Relaxed) {
        let index = (next() % KEYS as u64) as usize;
        let k = key(index);
        let started = Instant::now();
        match next() % 10 {
            // 70 %: Get, checked against the acknowledged floor taken before it was sent.
            0..=6 => {
                let floor = world.floor[index].load(Ordering::Acquire);
                let answer = with_retry(&world, id, |mut client| {
                    let k = k.clone();
                    async move {
                        let request = with_deadline(GetRequest {
                            key: k,
                            cache_only: false,
                        });
                        client.get(request).await.map(tonic::Response::into_inner)
                    }
                })
                .await;
                let stale = match &answer {
                    Ok(found) => version_of(&found.value).is_some_and(|v| v < floor),
                    Err(_) => false,
                };
                if let (true, Ok(found)) = (stale, &answer) {
                    let mut record = world.record.lock().unwrap();
                    if record.stale_samples.len() < 5 {
                        record.stale_samples.push(format!(
                            "{k}: got {:?} from {:?}, floor v{floor} (now v{})",
                            String::from_utf8_lossy(&found.value),
                            found.source(),
                            world.floor[index].load(Ordering::Acquire)
                        ));
                    }
                }
                world.note(
                    index,
                    started,
                    answer.map(drop).map_err(|s| s.code()),
                    stale,
                );
            }
            // 10 %: the source changes and the new value is Set, versioned (safe to retry).
            7 => {
                let mut version = world.writers[index].lock().await;
                let v = world.next_version(index, &mut version);
                let answer = with_retry(&world, id, |mut client| {
                    let k = k.clone();
                    async move {
                        let request = with_deadline(SetRequest {
                            key: k,
                            value: value(v).into(),
                            ttl: None,
                            version: Some(v),
                        });
                        client.set(request).await
                    }
                })
                .await;
                // A refused older version is an answer, not an error.
                let outcome = match answer {
                    Ok(_) => Ok(()),
                    Err(status) if status.code() == Code::FailedPrecondition => Ok(()),
                    Err(status) => Err(status.code()),
                };
                world.note(index, started, outcome, false);
            }
            // 20 %: the source changes and the key is invalidated; once acknowledged, older values are stale.
            _ => {
                let mut version = world.writers[index].lock().await;
                let v = world.next_version(index, &mut version);
                let answer = with_retry(&world, id, |mut client| {
                    let k = k.clone();
                    async move {
                        let request = with_deadline(InvalidateRequest { keys: vec![k] });
                        client.invalidate(request).await
                    }
                })
                .await;
                if answer.is_ok() {
                    world.floor[index].fetch_max(v, Ordering::AcqRel);
                }
                world.note(
                    index,
                    started,
                    answer.map(drop).map_err(|s| s.code()),
                    false,
                );
            }
        }
    }
}

/// Keys (by index) whose slot `port` owns now.
fn owned_by(cluster: &RedisCluster, port: u16) -> Vec<bool> {
    let owners = cluster.slot_owners();
    (0..KEYS)
        .map(|i| {
            let slot = fred::util::redis_keyslot(key(i).as_bytes());
            owners
                .iter()
                .any(|(first, last, owner)| *owner == port && (*first..=*last).contains(&slot))
        })
        .collect()
}

fn p99_ms(latencies: &mut [u64]) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort_unstable();
    let at = (latencies.len() * 99 / 100).min(latencies.len() - 1);
    latencies[at] as f64 / 1000.0
}

fn server_config(cluster: &RedisCluster, loader: &TestLoader) -> String {
    format!(
        r#"
[store]
redis_url = "{url}"
redis_command_timeout_ms = 500
replica_ack_timeout_ms = 500

[shutdown]
drain_delay_ms = 1000
grace_period_ms = 5000

[read_through]
lease_ttl_ms = 2000
lease_wait_ms = 1500
breaker_failures = 3
breaker_cooldown_ms = 500

[[loaders]]
pattern = "item:*"
kind = "grpc"
endpoint = "http://{loader}"
timeout_ms = 1000
max_concurrency = 64
breaker_failures = 5
breaker_cooldown_ms = 500

[[policies]]
name = "item"
pattern = "item:*"
ttl_secs = 300
"#,
        url = cluster.url(),
        loader = loader.addr,
    )
}

/// The 150 keys test: invalidations acknowledged right before their primary dies stay invalidated.
async fn invalidate_then_kill_primary(
    world: &World,
    cluster: &RedisCluster,
    victim: u16,
) -> (usize, usize, Duration, Duration) {
    let shard = owned_by(cluster, victim);
    let chosen: Vec<usize> = (0..KEYS).filter(|&i| shard[i]).take(150).collect();
    assert_eq!(chosen.len(), 150, "enough keys on the victim's shard");
    let mut client = world.replica_for(0, 0).expect("a live replica");
    // Cache the old value of each, then change the source and invalidate; all acknowledged.
    let mut guards = Vec::new();
    for &i in &chosen {
        let mut version = world.writers[i].lock().await;
        let k = key(i);
        let _ = client
            .get(with_deadline(GetRequest {
                key: k.clone(),
                cache_only: false,
            }))
            .await
            .unwrap();
        world.next_version(i, &mut version);
        client
            .invalidate(with_deadline(InvalidateRequest { keys: vec![k] }))
            .await
            .expect("invalidation acknowledged before the kill");
        world.floor[i].fetch_max(*version, Ordering::AcqRel);
        guards.push(version);
    }
    // At once, before anything else can happen: kill the primary that acknowledged them.
    let killed = Instant::now();
    cluster.kill_node(victim);
    drop(guards);
    cluster.wait_for_failover(victim);
    let promoted_after = killed.elapsed();
    // How soon after the promotion is visible do writes to the shard succeed again?
    let promoted = Instant::now();
    let probe = chosen[0];
    loop {
        let mut version = world.writers[probe].lock().await;
        let v = world.next_version(probe, &mut version);
        let request = SetRequest {
            key: key(probe),
            value: value(v).into(),
            ttl: None,
            version: Some(v),
        };
        if client.set(with_deadline(request)).await.is_ok() {
            break;
        }
        drop(version);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let writes_resumed_after = promoted.elapsed();
    // Every one of them now reads the new value (loaded), never the old one from the promoted replica.
    let mut resurrected = 0;
    for &i in &chosen {
        let floor = world.floor[i].load(Ordering::Acquire);
        let answer = with_retry(world, 0, |mut client| {
            let k = key(i);
            async move {
                client
                    .get(with_deadline(GetRequest {
                        key: k,
                        cache_only: false,
                    }))
                    .await
            }
        })
        .await
        .expect("readable after the failover")
        .into_inner();
        if version_of(&answer.value).is_none_or(|v| v < floor) {
            resurrected += 1;
        }
    }
    (
        chosen.len(),
        resurrected,
        promoted_after,
        writes_resumed_after,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    // Healthy primaries must keep answering while a shard has no primary (Redis's default refuses every key then).
    let cluster = RedisCluster::start_with(&["--cluster-require-full-coverage", "no"]);
    let loader = TestLoader::start().await;
    for i in 0..KEYS {
        loader.source.put(&key(i), &value(0));
    }
    let config = server_config(&cluster, &loader);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(ServerProcess::start(&config).await);
    }
    let connect = |replica: &ServerProcess| {
        let channel = Channel::from_shared(replica.uri())
            .unwrap()
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        CacheServiceClient::new(channel)
    };
    let clients: Vec<(Client, bool)> = replicas.iter().map(|r| (connect(r), true)).collect();
    let world = Arc::new(World {
        source: loader.source.clone(),
        writers: (0..KEYS).map(|_| tokio::sync::Mutex::new(0)).collect(),
        floor: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
        replicas: Mutex::new(clients),
        record: Mutex::new(Record::default()),
        stop: AtomicBool::new(false),
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| tokio::spawn(worker(world.clone(), id)))
        .collect();

    let mut reports = Vec::new();
    let mut phase = |name: &'static str, started: Instant, before: HashMap<String, usize>| {
        let record = std::mem::take(&mut *world.record.lock().unwrap());
        let after = loader.source.load_counts();
        let loads: usize = after.values().sum::<usize>() - before.values().sum::<usize>();
        let distinct_loaded = after
            .iter()
            .filter(|(k, n)| before.get(*k).copied().unwrap_or(0) < **n)
            .count();
        reports.push(PhaseReport {
            name,
            seconds: started.elapsed().as_secs_f64(),
            record,
            loads,
            distinct_loaded,
        });
        (Instant::now(), loader.source.load_counts())
    };
    let (mut started, mut before) = (Instant::now(), loader.source.load_counts());

    // 1. Steady state.
    tokio::time::sleep(Duration::from_secs(6)).await;
    (started, before) = phase("steady", started, before);

    // 2. kill -9 of a primary, right after 150 acknowledged invalidations on its shard; wait for the promotion,
    //    then bring the old node back (it rejoins as a replica).
    let victim = cluster.primaries()[0];
    world.record.lock().unwrap().failing_shard = Some(owned_by(&cluster, victim));
    let (checked, resurrected, promoted_after, writes_resumed_after) =
        invalidate_then_kill_primary(&world, &cluster, victim).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart_node(victim);
    cluster.wait_until_whole();
    (started, before) = phase("primary kill -9", started, before);

    // 3. kill -9 of a cachecoord replica mid-load.
    replicas[2].child.start_kill().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    world.replicas.lock().unwrap()[2].1 = false;
    tokio::time::sleep(Duration::from_secs(5)).await;
    (started, before) = phase("cachecoord kill -9", started, before);

    // 4. A rolling restart, as Kubernetes does it: a new replica starts and is added, then an old one gets
    //    SIGTERM, drains (NOT_SERVING, still answering for drain_delay_ms) and exits; it leaves the endpoint list
    //    only once it has exited. Nothing may fail.
    for old in [0, 1] {
        let fresh = ServerProcess::start(&config).await;
        world.replicas.lock().unwrap().push((connect(&fresh), true));
        replicas.push(fresh);
        replicas[old].terminate();
        let status = replicas[old].child.wait().await.unwrap();
        assert!(status.success(), "a drained replica exits 0");
        world.replicas.lock().unwrap()[old].1 = false;
    }
    (started, before) = phase("rolling restart", started, before);

    // 5. SIGSTOP a primary for 4 s (beyond cluster-node-timeout: it is failed over), then SIGCONT.
    let paused = cluster.primaries()[0];
    world.record.lock().unwrap().failing_shard = Some(owned_by(&cluster, paused));
    cluster.pause(paused);
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.resume(paused);
    cluster.wait_until_whole();
    tokio::time::sleep(Duration::from_secs(2)).await;
    (started, before) = phase("primary SIGSTOP 4 s", started, before);

    // 6–8. The loader slows past its timeout, then fails, then recovers.
    loader.source.set_delay(Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_secs(5)).await;
    (started, before) = phase("loader slow (1.5 s > 1 s timeout)", started, before);
    loader.source.set_delay(Duration::ZERO);
    loader.source.set_failing(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    (started, before) = phase("loader failing", started, before);
    loader.source.set_failing(false);
    // One breaker cooldown for the loader's probe to close it, then the recovered phase is measured.
    tokio::time::sleep(Duration::from_secs(1)).await;
    (started, before) = phase("loader recovering (1 s)", started, before);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _ = phase("recovered", started, before);

    world.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    println!(
        "\nchaos summary (3 cachecoord replicas, 3+3 Redis Cluster, {KEYS} keys, {WORKERS} callers)\n"
    );
    println!(
        "| phase | s | requests | errors by code | healthy-shard errors | p99 ms | loader calls | distinct keys loaded | stale reads |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for report in &mut reports {
        let errors = if report.record.errors.is_empty() {
            "0".to_owned()
        } else {
            report
                .record
                .errors
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let healthy = if report.record.failing_shard.is_some() {
            report.record.healthy_shard_errors.to_string()
        } else {
            "–".to_owned()
        };
        println!(
            "| {} | {:.1} | {} | {} | {} | {:.1} | {} | {} | {} |",
            report.name,
            report.seconds,
            report.record.requests,
            errors,
            healthy,
            p99_ms(&mut report.record.latencies_us),
            report.loads,
            report.distinct_loaded,
            report.record.stale
        );
    }
    println!(
        "\nacknowledged invalidations followed by kill -9 of their primary: {checked} keys, {resurrected} old values back; \
         replica promoted {:.1} s after the kill; writes to its shard succeeded again {} ms after the \
         promotion was visible",
        promoted_after.as_secs_f64(),
        writes_resumed_after.as_millis()
    );

    for replica in &replicas {
        for line in replica.log_lines("ERROR").iter().take(5) {
            println!("server error log: {line}");
        }
    }
    assert_eq!(
        resurrected, 0,
        "an acknowledged invalidation came undone by the failover"
    );
    for report in &reports {
        assert_eq!(
            report.record.stale, 0,
            "stale reads in phase {}: {:?}",
            report.name, report.record.stale_samples
        );
        assert!(
            report.record.requests > 0,
            "phase {} ran no requests",
            report.name
        );
        let allowed: &[&str] = match report.name {
            "steady" | "rolling restart" | "recovered" => &[],
            "cachecoord kill -9" => &["Unavailable", "Unknown", "Cancelled"],
            _ => &["Unavailable", "DeadlineExceeded"],
        };
        for code in report.record.errors.keys() {
            assert!(
                allowed.contains(&code.as_str()),
                "phase {}: {code} errors are not allowed there",
                report.name
            );
        }
    }
    let primary_kill = reports
        .iter()
        .find(|r| r.name == "primary kill -9")
        .unwrap();
    assert_eq!(
        primary_kill.record.healthy_shard_errors, 0,
        "keys on healthy primaries must not fail while another primary is killed"
    );
}
