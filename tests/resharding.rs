//! The resharding drill: two cachecoord processes on a 3 + 3 Redis Cluster of the test's own, under a mixed load
//! (loader-backed Gets, versioned Sets, Invalidates, leased Gets filled with their token, InvalidatePattern inside
//! one group and across groups), while the cluster grows and shrinks as an operator does it with
//! `redis-cli --cluster`: a primary and its replica join, a third of the slots move to the new primary
//! (`reshard`), then one of the first primaries is emptied (`rebalance --cluster-weight ID=0`), forgotten by the
//! cluster and shut down (`del-node`). It prints a table per phase and asserts what docs/reliability.md promises:
//!
//! - no stale read (the chaos test's definition: no Get answers a version older than an Invalidate or an accepted
//!   versioned Set already acknowledged to the test; the near-cache is off here, so there is no window to except);
//! - every acknowledged InvalidatePattern left no matching value on any node (read straight from every node with
//!   SCAN at the end of each phase; nothing writes a round's keys after its pattern is sent);
//! - no call failed after one retry on the other cachecoord process (the README's retry rule), in any phase;
//! - once forgotten by the cluster, the removed node has no client connection left from cachecoord.

mod support;

use cachecoord::proto::{GetRequest, InvalidatePatternRequest, InvalidateRequest, SetRequest};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Client;
use support::cluster::RedisCluster;
use support::drill::{self, Calls, item, value, version_of};
use support::loader::TestLoader;
use support::process::ServerProcess;
use support::reshard;
use tonic::Code;

const ITEMS: usize = 1000;
const WORKERS: usize = 16;
/// Keys written per pattern round before its InvalidatePattern.
const ROUND_KEYS: usize = 4;
const CALL_DEADLINE: Duration = Duration::from_secs(3);

/// Outcomes of the current phase.
#[derive(Default)]
struct Record {
    calls: Calls,
    /// The first stale reads, described, for the failure message.
    samples: Vec<String>,
    /// Acknowledged pattern rounds: (group rounds, cross-group rounds).
    patterns: (u64, u64),
}

/// Everything the workers share.
struct World {
    source: Arc<support::loader::SourceOfTruth>,
    writers: Vec<tokio::sync::Mutex<u64>>,
    /// Highest acknowledged Invalidate (version) per item: no Get may answer below it.
    floor: Vec<AtomicU64>,
    /// Highest acknowledged versioned Set per item.
    set_floor: Vec<AtomicU64>,
    clients: Vec<Client>,
    record: Mutex<Record>,
    next_round: AtomicU64,
    /// Acknowledged pattern rounds not yet checked on the nodes: (round, cross-group).
    acknowledged: Mutex<Vec<(u64, bool)>>,
    stop: AtomicBool,
}

impl World {
    fn note(&self, started: Instant, outcome: Result<bool, Code>, stale: bool) {
        let mut record = self.record.lock().unwrap();
        record.calls.note(started, outcome, stale);
    }
}

/// Runs `call` on one process, and once more on the other after a retryable failure; answers whether it took the
/// retry.
async fn with_retry<T, F, Fut>(
    world: &World,
    worker: usize,
    mut call: F,
) -> Result<(T, bool), tonic::Status>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut last = None;
    for attempt in 0..2 {
        let client = world.clients[(worker + attempt) % world.clients.len()].clone();
        match call(client).await {
            Ok(answer) => return Ok((answer, attempt > 0)),
            Err(status) if drill::unavailable(&status) && attempt == 0 => last = Some(status),
            Err(status) => {
                if last.is_some() && status.code() != Code::Unavailable {
                    eprintln!("resharding: the retry failed with {status:?}");
                }
                return Err(status);
            }
        }
    }
    Err(last.unwrap())
}

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    drill::with_deadline(message, CALL_DEADLINE)
}

fn set_request(key: String, payload: Vec<u8>, version: Option<u64>, token: Vec<u8>) -> SetRequest {
    SetRequest {
        key,
        value: payload.into(),
        ttl: None,
        version,
        lease_token: token.into(),
    }
}

async fn worker(world: Arc<World>, id: usize) {
    let mut next = drill::worker_rng(id);
    while !world.stop.load(Ordering::Relaxed) {
        let index = (next() % ITEMS as u64) as usize;
        let started = Instant::now();
        match next() % 20 {
            // 55 %: a loader-backed Get, checked against the floors taken before it was sent.
            0..=10 => {
                let floor = world.floor[index]
                    .load(Ordering::Acquire)
                    .max(world.set_floor[index].load(Ordering::Acquire));
                let answer = with_retry(&world, id, |mut client| async move {
                    let request = with_deadline(GetRequest {
                        key: item(index),
                        cache_only: false,
                        lease: false,
                    });
                    client.get(request).await.map(tonic::Response::into_inner)
                })
                .await;
                let stale = match &answer {
                    Ok((found, _)) => version_of(&found.value).is_some_and(|v| v < floor),
                    Err(_) => false,
                };
                if stale {
                    let mut record = world.record.lock().unwrap();
                    if record.samples.len() < 5 {
                        let got = answer
                            .as_ref()
                            .map(|(f, _)| f.value.clone())
                            .unwrap_or_default();
                        record.samples.push(format!(
                            "{}: got {:?}, floor v{floor}",
                            item(index),
                            String::from_utf8_lossy(&got)
                        ));
                    }
                }
                world.note(started, answer.map(|(_, r)| r).map_err(|s| s.code()), stale);
            }
            // 10 %: the source changes, then the new value is Set with its version.
            11 | 12 => {
                let mut version = world.writers[index].lock().await;
                let v = drill::next_version(&world.source, index, &mut version);
                let answer = with_retry(&world, id, |mut client| async move {
                    let request =
                        with_deadline(set_request(item(index), value(v), Some(v), Vec::new()));
                    client.set(request).await
                })
                .await;
                let outcome = match answer {
                    Ok((_, retried)) => {
                        world.set_floor[index].fetch_max(v, Ordering::AcqRel);
                        Ok(retried)
                    }
                    Err(status) if status.code() == Code::FailedPrecondition => Ok(false),
                    Err(status) => Err(status.code()),
                };
                world.note(started, outcome, false);
            }
            // 15 %: the source changes, then the item is invalidated.
            13..=15 => {
                let mut version = world.writers[index].lock().await;
                let v = drill::next_version(&world.source, index, &mut version);
                let answer = with_retry(&world, id, |mut client| async move {
                    client
                        .invalidate(with_deadline(InvalidateRequest {
                            keys: vec![item(index)],
                        }))
                        .await
                })
                .await;
                if answer.is_ok() {
                    world.floor[index].fetch_max(v, Ordering::AcqRel);
                }
                world.note(started, answer.map(|(_, r)| r).map_err(|s| s.code()), false);
            }
            // 10 %: a leased Get of a key without a loader; a caller handed the lease fills it with its token.
            16 | 17 => {
                let key = format!("lease:{index}");
                let answer = with_retry(&world, id, |mut client| {
                    let key = key.clone();
                    async move {
                        let request = with_deadline(GetRequest {
                            key,
                            cache_only: false,
                            lease: true,
                        });
                        client.get(request).await.map(tonic::Response::into_inner)
                    }
                })
                .await;
                let outcome = match answer {
                    Ok((got, retried)) if !got.lease_token.is_empty() => {
                        let token = got.lease_token.to_vec();
                        let filled = with_retry(&world, id, |mut client| {
                            let (key, token) = (key.clone(), token.clone());
                            async move {
                                let request = with_deadline(set_request(
                                    key,
                                    b"leased".to_vec(),
                                    None,
                                    token,
                                ));
                                client.set(request).await
                            }
                        })
                        .await;
                        match filled {
                            Ok((_, again)) => Ok(retried || again),
                            // The lease was voided meanwhile: an answer, not a failure.
                            Err(status) if status.code() == Code::FailedPrecondition => Ok(retried),
                            Err(status) => Err(status.code()),
                        }
                    }
                    Ok((_, retried)) => Ok(retried),
                    Err(status) => Err(status.code()),
                };
                world.note(started, outcome, false);
            }
            // 5 % + 5 %: a pattern round: Set a round's keys, then invalidate them by pattern, inside one group
            // (`grp:R:*`) or across groups (`xg:*:rR`, each key in a group of its own).
            n => {
                let cross = n == 19;
                let round = world.next_round.fetch_add(1, Ordering::Relaxed);
                let keys: Vec<String> = (0..ROUND_KEYS)
                    .map(|j| {
                        if cross {
                            format!("xg:{}:r{round}", next() % 100_000)
                        } else {
                            format!("grp:{round}:m{j}")
                        }
                    })
                    .collect();
                let mut outcome = Ok(false);
                for key in &keys {
                    let written = with_retry(&world, id, |mut client| {
                        let key = key.clone();
                        async move {
                            client
                                .set(with_deadline(set_request(
                                    key,
                                    b"p".to_vec(),
                                    None,
                                    Vec::new(),
                                )))
                                .await
                        }
                    })
                    .await;
                    match written {
                        Ok((_, retried)) => outcome = outcome.map(|r| r || retried),
                        Err(status) => outcome = Err(status.code()),
                    }
                }
                let pattern = if cross {
                    format!("xg:*:r{round}")
                } else {
                    format!("grp:{round}:*")
                };
                let answer = with_retry(&world, id, |mut client| {
                    let pattern = pattern.clone();
                    async move {
                        client
                            .invalidate_pattern(with_deadline(InvalidatePatternRequest { pattern }))
                            .await
                    }
                })
                .await;
                match answer {
                    Ok((_, retried)) => {
                        world.acknowledged.lock().unwrap().push((round, cross));
                        let mut record = world.record.lock().unwrap();
                        if cross {
                            record.patterns.1 += 1;
                        } else {
                            record.patterns.0 += 1;
                        }
                        drop(record);
                        outcome = outcome.map(|r| r || retried);
                    }
                    Err(status) => outcome = Err(status.code()),
                }
                world.note(started, outcome, false);
            }
        }
    }
}

/// Values of acknowledged rounds still held by any node: read straight from every node with SCAN.
fn pattern_leftovers(cluster: &RedisCluster, rounds: &[(u64, bool)]) -> Vec<String> {
    let wanted: BTreeSet<(u64, bool)> = rounds.iter().copied().collect();
    let mut left = Vec::new();
    for port in &cluster.ports {
        for key in cluster
            .keys_on_node(*port, "{grp:*")
            .into_iter()
            .chain(cluster.keys_on_node(*port, "{xg:*"))
        {
            let round = if let Some(rest) = key.strip_prefix("{grp:") {
                rest.split('}')
                    .next()
                    .and_then(|r| r.parse().ok())
                    .map(|r| (r, false))
            } else {
                key.rsplit(":r")
                    .next()
                    .and_then(|r| r.parse().ok())
                    .map(|r| (r, true))
            };
            if round.is_some_and(|r| wanted.contains(&r)) {
                left.push(format!("{key} on {port}"));
            }
        }
    }
    left
}

fn server_config(cluster: &RedisCluster, loader: &TestLoader) -> String {
    format!(
        r#"
[store]
redis_url = "{url}"
redis_command_timeout_ms = 500
replica_ack_timeout_ms = 500
redis_topology_refresh_ms = 1000

[shutdown]
drain_delay_ms = 200
grace_period_ms = 2000

[read_through]
lease_ttl_ms = 2000
lease_wait_ms = 1500

[[loaders]]
pattern = "item:*"
kind = "grpc"
endpoint = "http://{loader}"
timeout_ms = 1000
max_concurrency = 64
"#,
        url = cluster.url(),
        loader = loader.addr,
    )
}

/// One finished phase.
struct Phase {
    name: String,
    seconds: f64,
    record: Record,
    leftovers: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding() {
    let mut cluster = RedisCluster::start_async(&["--cluster-require-full-coverage", "no"]).await;
    let loader = TestLoader::start().await;
    for i in 0..ITEMS {
        loader.source.put(&item(i), &value(0));
    }
    let config = server_config(&cluster, &loader);
    let servers = [
        ServerProcess::start(&config).await,
        ServerProcess::start(&config).await,
    ];
    let clients = servers.iter().map(drill::connect).collect();
    let world = Arc::new(World {
        source: loader.source.clone(),
        writers: (0..ITEMS).map(|_| tokio::sync::Mutex::new(0)).collect(),
        floor: (0..ITEMS).map(|_| AtomicU64::new(0)).collect(),
        set_floor: (0..ITEMS).map(|_| AtomicU64::new(0)).collect(),
        clients,
        record: Mutex::new(Record::default()),
        next_round: AtomicU64::new(0),
        acknowledged: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| tokio::spawn(worker(world.clone(), id)))
        .collect();

    let mut phases: Vec<Phase> = Vec::new();
    let mut started = Instant::now();
    // Ends a phase: takes its record, and checks its acknowledged pattern rounds on every node.
    macro_rules! phase {
        ($name:expr) => {{
            let record = std::mem::take(&mut *world.record.lock().unwrap());
            let rounds = std::mem::take(&mut *world.acknowledged.lock().unwrap());
            let seconds = started.elapsed().as_secs_f64();
            let leftovers = {
                let cluster = &cluster;
                tokio::task::block_in_place(|| pattern_leftovers(cluster, &rounds))
            };
            phases.push(Phase {
                name: $name.to_string(),
                seconds,
                record,
                leftovers,
            });
            started = Instant::now();
        }};
    }
    let blocking = |f: &mut dyn FnMut()| tokio::task::block_in_place(f);

    tokio::time::sleep(Duration::from_secs(4)).await;
    phase!("steady");

    let mut new_primary = 0;
    blocking(&mut || {
        new_primary = reshard::add_primary(&mut cluster);
        reshard::add_replica(&mut cluster, new_primary);
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    phase!("add a primary and a replica");

    blocking(&mut || reshard::move_slots_to(&cluster, new_primary, 16384 / 3));
    phase!(format!("reshard: {} slots to the new primary", 16384 / 3));

    // One of the first primaries is emptied, then removed.
    let removed = cluster
        .primaries()
        .into_iter()
        .find(|port| *port != new_primary)
        .unwrap();
    blocking(&mut || reshard::empty_primary(&cluster, removed));
    phase!("rebalance: empty a primary");

    blocking(&mut || reshard::forget(&mut cluster, removed));
    // Two slot-map refreshes for cachecoord to notice.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let left_connected = reshard::normal_clients(removed);
    reshard::shutdown(removed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    phase!("del-node");

    tokio::time::sleep(Duration::from_secs(4)).await;
    phase!("after");
    let _ = started;

    world.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    println!(
        "\nresharding drill (2 cachecoord processes, Redis Cluster 3+3 → 4+4 → 3+4, {ITEMS} items, {WORKERS} callers)\n"
    );
    drill::print_header(&[
        "phase",
        "s",
        "requests",
        "retried once, then OK",
        "errors after retry",
        "p99 ms",
        "patterns acknowledged (group / cross)",
        "keys left by acknowledged patterns",
        "stale reads",
    ]);
    for phase in &mut phases {
        let record = &mut phase.record;
        drill::print_row(&[
            phase.name.clone(),
            format!("{:.1}", phase.seconds),
            record.calls.requests.to_string(),
            record.calls.retried.to_string(),
            record.calls.errors_cell(),
            format!("{:.1}", record.calls.p99_ms()),
            format!("{} / {}", record.patterns.0, record.patterns.1),
            phase.leftovers.len().to_string(),
            record.calls.stale.to_string(),
        ]);
    }
    println!(
        "\nclient connections left on the removed primary {removed} once the cluster forgot it: {}",
        left_connected.len()
    );
    for line in &left_connected {
        println!("  {line}");
    }
    for server in &servers {
        for line in server.log_lines("ERROR").iter().take(5) {
            println!("server error log: {line}");
        }
    }
    for phase in &phases {
        for sample in &phase.record.samples {
            println!("stale read in {}: {sample}", phase.name);
        }
        for left in phase.leftovers.iter().take(5) {
            println!("left by an acknowledged pattern in {}: {left}", phase.name);
        }
    }
    let mut failures = Vec::new();
    for phase in &phases {
        if phase.record.calls.stale > 0 {
            failures.push(format!(
                "{}: {} stale reads",
                phase.name, phase.record.calls.stale
            ));
        }
        if !phase.leftovers.is_empty() {
            failures.push(format!(
                "{}: acknowledged patterns left {} keys",
                phase.name,
                phase.leftovers.len()
            ));
        }
        if !phase.record.calls.errors.is_empty() {
            failures.push(format!(
                "{}: calls failed after their retry: {:?}",
                phase.name, phase.record.calls.errors
            ));
        }
        if phase.record.calls.requests == 0 {
            failures.push(format!("{}: no requests ran", phase.name));
        }
    }
    if !left_connected.is_empty() {
        failures.push(format!(
            "{} client connections left on the removed node",
            left_connected.len()
        ));
    }
    assert!(
        failures.is_empty(),
        "resharding drill failed:\n{}",
        failures.join("\n")
    );
}
