//! The replica-churn drill: cachecoord scaled 1 → 4 → 2 → 3 processes under load, as an HPA does it (new
//! processes join once SERVING; leaving ones leave the endpoint list as they get SIGTERM, then drain and
//! exit), on a 3 + 3 Redis Cluster of the test's own. A steady mix runs throughout (loader-backed Gets,
//! versioned Sets, Invalidates); at every step 30 cold keys are stampeded (8 callers each, spread over the
//! processes, loads taking 300 ms), and at the scale-down the SIGTERMs land while that stampede's loads (and
//! their leases) are in flight on the leaving processes. Asserts: no call failed after one retry on another live
//! process, no stale read (the chaos test's definition; the near-cache is off), and exactly one load per cold
//! key — nothing a leaving process held was lost or loaded twice.

mod support;

use cachecoord::proto::{GetRequest, InvalidateRequest, SetRequest};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Client;
use support::cluster::RedisCluster;
use support::drill::{self, Calls, item, value, version_of};
use support::loader::TestLoader;
use support::process::ServerProcess;
use tonic::Code;

const ITEMS: usize = 1000;
const WORKERS: usize = 12;
const COLD_KEYS: usize = 30;
const CALLERS_PER_COLD_KEY: usize = 8;
const CALL_DEADLINE: Duration = Duration::from_secs(4);

struct World {
    source: Arc<support::loader::SourceOfTruth>,
    writers: Vec<tokio::sync::Mutex<u64>>,
    floor: Vec<AtomicU64>,
    /// Every process started and whether it is in the endpoint list.
    endpoints: Mutex<Vec<(Client, bool)>>,
    record: Mutex<Calls>,
    stop: AtomicBool,
}

impl World {
    fn note(&self, started: Instant, outcome: Result<bool, Code>, stale: bool) {
        let mut record = self.record.lock().unwrap();
        record.note(started, outcome, stale);
    }

    /// A live process, chosen by `pick`, other than `avoid` when another is live: its place in the list and a
    /// client for it.
    fn endpoint(&self, pick: usize, avoid: Option<usize>) -> (usize, Client) {
        let endpoints = self.endpoints.lock().unwrap();
        let live: Vec<usize> = (0..endpoints.len()).filter(|&at| endpoints[at].1).collect();
        let others: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&at| Some(at) != avoid)
            .collect();
        let choices = if others.is_empty() { &live } else { &others };
        let at = choices[pick % choices.len()];
        (at, endpoints[at].0.clone())
    }

    /// Takes process `at` out of the endpoint list, as Kubernetes does when its pod starts terminating: no new
    /// call (first try or retry) goes to it; calls already sent finish or fail there.
    fn remove_endpoint(&self, at: usize) {
        self.endpoints.lock().unwrap()[at].1 = false;
    }

    /// Puts `process` (started, so SERVING) into the endpoint list, as Kubernetes does once its pod is ready.
    fn add_endpoint(&self, process: &ServerProcess) {
        self.endpoints
            .lock()
            .unwrap()
            .push((drill::connect(process), true));
    }
}

async fn with_retry<T, F, Fut>(
    world: &World,
    pick: usize,
    mut call: F,
) -> Result<(T, bool), tonic::Status>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let (first, client) = world.endpoint(pick, None);
    match call(client).await {
        Ok(answer) => return Ok((answer, false)),
        Err(status) if drill::retryable(&status) => {}
        Err(status) => return Err(status),
    }
    // The one retry goes to another live process: the first may be leaving.
    let (_, client) = world.endpoint(pick, Some(first));
    match call(client).await {
        Ok(answer) => Ok((answer, true)),
        Err(status) => {
            eprintln!("replica churn: failed after retry: {status:?}");
            Err(status)
        }
    }
}

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    drill::with_deadline(message, CALL_DEADLINE)
}

fn get_request(key: String) -> GetRequest {
    GetRequest {
        key,
        cache_only: false,
        lease: false,
    }
}

async fn worker(world: Arc<World>, id: usize) {
    let mut next = drill::worker_rng(id);
    while !world.stop.load(Ordering::Relaxed) {
        let index = (next() % ITEMS as u64) as usize;
        let pick = next() as usize;
        let started = Instant::now();
        match next() % 10 {
            0..=6 => {
                let floor = world.floor[index].load(Ordering::Acquire);
                let answer = with_retry(&world, pick, |mut client| async move {
                    client
                        .get(with_deadline(get_request(item(index))))
                        .await
                        .map(tonic::Response::into_inner)
                })
                .await;
                let stale = matches!(&answer, Ok((got, _)) if version_of(&got.value).is_some_and(|v| v < floor));
                world.note(started, answer.map(|(_, r)| r).map_err(|s| s.code()), stale);
            }
            7 => {
                let mut version = world.writers[index].lock().await;
                let v = drill::next_version(&world.source, index, &mut version);
                let answer = with_retry(&world, pick, |mut client| async move {
                    client
                        .set(with_deadline(SetRequest {
                            key: item(index),
                            value: value(v).into(),
                            ttl: None,
                            version: Some(v),
                            lease_token: Default::default(),
                        }))
                        .await
                })
                .await;
                let outcome = match answer {
                    Ok((_, retried)) => {
                        world.floor[index].fetch_max(v, Ordering::AcqRel);
                        Ok(retried)
                    }
                    Err(status) if status.code() == Code::FailedPrecondition => Ok(false),
                    Err(status) => Err(status.code()),
                };
                world.note(started, outcome, false);
            }
            _ => {
                let mut version = world.writers[index].lock().await;
                let v = drill::next_version(&world.source, index, &mut version);
                let answer = with_retry(&world, pick, |mut client| async move {
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
        }
    }
}

/// Starts the stampede of step `step`'s cold keys: `CALLERS_PER_COLD_KEY` Gets of each, spread over the live
/// processes.
fn stampede(world: &Arc<World>, step: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let mut calls = Vec::new();
    for j in 0..COLD_KEYS {
        for caller in 0..CALLERS_PER_COLD_KEY {
            let world = world.clone();
            calls.push(tokio::spawn(async move {
                let key = format!("cold:{step}:{j}");
                let started = Instant::now();
                let answer = with_retry(&world, j + caller, |mut client| {
                    let key = key.clone();
                    async move { client.get(with_deadline(get_request(key))).await }
                })
                .await;
                world.note(started, answer.map(|(_, r)| r).map_err(|s| s.code()), false);
            }));
        }
    }
    calls
}

fn server_config(cluster: &RedisCluster, items: &TestLoader, cold: &TestLoader) -> String {
    format!(
        r#"
[store]
redis_url = "{url}"
redis_command_timeout_ms = 500
replica_ack_timeout_ms = 500

[shutdown]
drain_delay_ms = 500
grace_period_ms = 5000

[read_through]
lease_ttl_ms = 3000
lease_wait_ms = 2000

[[loaders]]
pattern = "item:*"
kind = "grpc"
endpoint = "http://{items}"
timeout_ms = 1000
max_concurrency = 64

[[loaders]]
pattern = "cold:*"
kind = "grpc"
endpoint = "http://{cold}"
timeout_ms = 1500
max_concurrency = 64
"#,
        url = cluster.url(),
        items = items.addr,
        cold = cold.addr,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_churn() {
    let cluster = RedisCluster::start_async(&[]).await;
    let (items, cold) = (TestLoader::start().await, TestLoader::start().await);
    for i in 0..ITEMS {
        items.source.put(&item(i), &value(0));
    }
    for step in 0..4 {
        for j in 0..COLD_KEYS {
            cold.source.put(&format!("cold:{step}:{j}"), b"cold");
        }
    }
    cold.source.set_delay(Duration::from_millis(300));
    let config = server_config(&cluster, &items, &cold);
    let mut processes = vec![ServerProcess::start(&config).await];
    let world = Arc::new(World {
        source: items.source.clone(),
        writers: (0..ITEMS).map(|_| tokio::sync::Mutex::new(0)).collect(),
        floor: (0..ITEMS).map(|_| AtomicU64::new(0)).collect(),
        endpoints: Mutex::new(vec![(drill::connect(&processes[0]), true)]),
        record: Mutex::new(Calls::default()),
        stop: AtomicBool::new(false),
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| tokio::spawn(worker(world.clone(), id)))
        .collect();

    let mut phases: Vec<(String, f64, Calls)> = Vec::new();
    let mut started = Instant::now();
    let mut end_phase = |name: &str, started: &mut Instant| {
        let record = std::mem::take(&mut *world.record.lock().unwrap());
        phases.push((name.to_owned(), started.elapsed().as_secs_f64(), record));
        *started = Instant::now();
    };
    let join = async |calls: Vec<tokio::task::JoinHandle<()>>| {
        for call in calls {
            call.await.unwrap();
        }
    };

    // 1 process.
    join(stampede(&world, 0)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    end_phase("1 process", &mut started);

    // 1 → 4: new processes join the endpoint list once SERVING.
    for _ in 0..3 {
        let process = ServerProcess::start(&config).await;
        world.add_endpoint(&process);
        processes.push(process);
    }
    join(stampede(&world, 1)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    end_phase("1 → 4", &mut started);

    // 4 → 2, while the stampede's loads are in flight (the leaving processes hold some of their leases).
    let calls = stampede(&world, 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for leaving in [0, 1] {
        world.remove_endpoint(leaving);
        processes[leaving].terminate();
    }
    for leaving in [0, 1] {
        let status = processes[leaving].child.wait().await.unwrap();
        assert!(status.success(), "a drained process exits 0");
    }
    join(calls).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    end_phase("4 → 2 (SIGTERM during a stampede)", &mut started);

    // 2 → 3.
    let process = ServerProcess::start(&config).await;
    world.add_endpoint(&process);
    processes.push(process);
    join(stampede(&world, 3)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    end_phase("2 → 3", &mut started);

    world.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let loads: Vec<Vec<usize>> = (0..4)
        .map(|step| {
            (0..COLD_KEYS)
                .map(|j| cold.source.loads_of(&format!("cold:{step}:{j}")))
                .collect()
        })
        .collect();
    println!(
        "\nreplica churn (cachecoord 1 → 4 → 2 → 3 processes, 3+3 Redis Cluster, {ITEMS} items, {WORKERS} callers, {COLD_KEYS} cold keys × {CALLERS_PER_COLD_KEY} callers per step)\n"
    );
    drill::print_header(&[
        "phase",
        "s",
        "requests",
        "retried once, then OK",
        "errors after retry",
        "p99 ms",
        "stale reads",
        "cold-key loads (min / max per key)",
    ]);
    for (step, (name, seconds, record)) in phases.iter_mut().enumerate() {
        let errors = if record.errors.is_empty() {
            "0".to_owned()
        } else {
            format!("{:?}", record.errors)
        };
        drill::print_row(&[
            name.clone(),
            format!("{seconds:.1}"),
            record.requests.to_string(),
            record.retried.to_string(),
            errors,
            format!("{:.1}", record.p99_ms()),
            record.stale.to_string(),
            format!(
                "{} / {}",
                loads[step].iter().min().unwrap(),
                loads[step].iter().max().unwrap()
            ),
        ]);
    }
    for (name, _, record) in &phases {
        assert!(
            record.errors.is_empty(),
            "{name}: calls failed after their retry: {:?}",
            record.errors
        );
        assert_eq!(record.stale, 0, "{name}: stale reads");
    }
    for (step, per_key) in loads.iter().enumerate() {
        assert!(
            per_key.iter().all(|n| *n == 1),
            "step {step}: loads per cold key {per_key:?}, not exactly one each"
        );
    }
}
