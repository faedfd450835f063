//! The chaos test: a steady mixed load (Gets, versioned Sets, Invalidates over 2,000 loader-backed keys) against
//! three cachecoord processes on a 3 + 3 Redis Cluster of its own, while it kills a primary whose replica lags
//! (twice: a control with `invalidation_replica_acks = 0`, then the real configuration), kills a cachecoord
//! replica, pauses a primary (SIGSTOP, then SIGCONT), and makes the loader slow, then failing, then healthy again.
//! The entity's policy has the near-cache and both stale windows on (a 3 s TTL, so entries expire and are served
//! STALE while they refresh, and STALE from `stale_if_error` while the loader fails) in every phase. It prints a
//! summary table per phase and asserts what docs/reliability.md promises:
//!
//! - no stale read: no Get answers a version older than an Invalidate or an accepted versioned Set already
//!   acknowledged to the test. Two exceptions, both documented: a near-cache hit on a replica other than the one
//!   that acknowledged the write may answer the old value until the notice arrives (counted as "near-cache window",
//!   docs/invalidation.md#near-cache), and an acknowledged Set on the shard being failed over may be lost (Sets are
//!   not waited for), so Sets on that shard do not raise the floor during its phase and are forgotten after it;
//! - near-cache hits and STALE answers both happen (so the windows really are on);
//! - during a primary kill, no error at all for keys owned by the healthy primaries;
//! - errors only in the phases, and with the codes, the docs allow;
//! - the lagging-replica drill: its replica is stopped (SIGSTOP) and 32 MiB are written to its primary, so later
//!   writes sit in the primary's replication output buffer; then 30 keys of that shard are invalidated through
//!   cachecoord, the primary is `kill -9`ed and the stale replica is promoted. The drill fails loudly unless the
//!   primary's output buffer to the replica held data and the replica's offset at promotion was below the
//!   primary's before the invalidations (the lag was real). With `invalidation_replica_acks = 0` (control) it must
//!   see acknowledged invalidations undone (so the check can fail); with the default (1) no acknowledged
//!   invalidation may be undone.
//!
//! The entity's policy samples 5 % of its hits for the staleness sampler too (docs/reliability.md): the table
//! shows, per phase, the checks the live replicas' Stats report, and how many were in flight or stale. The green
//! phases (steady, rolling restart, recovered: no error allowed) must have no stale check. Elsewhere stale checks
//! are real and expected: a drill's old values that came back (120 s TTL) stay behind the source until the test
//! invalidates them again once the cluster is whole (as a client retries an invalidation that answered UNAVAILABLE),
//! and an acknowledged Set can be lost in a failover.
//!
//! The load generator behaves as the README tells clients to: a deadline on every call, and one retry on another
//! replica after UNAVAILABLE (or a broken connection) for the idempotent calls — Get, Invalidate, and Set with a
//! version.

mod support;

use cachecoord::proto::{GetRequest, InvalidateRequest, SetRequest, Source, StatsRequest};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Client;
use support::cluster::{RedisCluster, info_field, redis_cli};
use support::drill::{self, Calls, item, value, version_of};
use support::loader::TestLoader;
use support::process::ServerProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const KEYS: usize = 2000;
const WORKERS: usize = 24;
/// Above the longest promised wait: a lease wait (1.5 s) plus one load (1 s loader timeout).
const CALL_DEADLINE: Duration = Duration::from_secs(3);

/// A floor: the version a Get must not answer below, and the replica (index in `World::replicas`) that
/// acknowledged it, packed as `version << 8 | replica` so one `fetch_max` raises both.
fn floor(version: u64, replica: usize) -> u64 {
    version << 8 | (replica as u64 & 0xff)
}

fn floor_version(packed: u64) -> u64 {
    packed >> 8
}

fn floor_replica(packed: u64) -> usize {
    (packed & 0xff) as usize
}

/// What every worker shares: per-key write locks and versions, the acknowledged floors per key, and the phase
/// being recorded.
struct World {
    source: Arc<support::loader::SourceOfTruth>,
    /// Held while a writer bumps the source and tells the cache, so versions reach both in order.
    writers: Vec<tokio::sync::Mutex<u64>>,
    /// The highest version whose Invalidate was acknowledged (packed with [`floor`]): a Get must never answer below
    /// it.
    floor: Vec<AtomicU64>,
    /// The highest version of an accepted versioned Set acknowledged (packed with [`floor`]): a Get must not answer
    /// below it either, except on a shard that is being failed over (an acknowledged Set is not waited for).
    set_floor: Vec<AtomicU64>,
    /// Clients of every replica started, and whether it is still in service (a stopped one is skipped, as a
    /// Kubernetes Service drops an endpoint).
    replicas: Mutex<Vec<(Client, bool)>>,
    record: Mutex<Record>,
    stop: AtomicBool,
}

/// Outcomes of the current phase.
#[derive(Default)]
struct Record {
    /// Every call (none is counted as retried: a retry that succeeds is simply OK here).
    calls: Calls,
    /// Errors on keys whose primary is not the one being failed (primary kill only).
    healthy_shard_errors: u64,
    /// The first stale reads, described, for the failure message.
    stale_samples: Vec<String>,
    /// Gets answered from the near-cache (SOURCE_NEAR_HIT).
    near_hits: u64,
    /// Gets answered past their TTL from a stale window (SOURCE_STALE).
    stale_served: u64,
    /// Near-cache hits below the floor on a replica other than the one that acknowledged the floor's write: the
    /// documented window until its notice arrives.
    near_window: u64,
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
    checks: Checks,
}

/// The staleness sampler's counts for the entity, as Stats reports them.
#[derive(Clone, Copy, Default)]
struct Checks {
    /// Hits compared with the source: fresh, in flight or stale.
    compared: u64,
    in_flight: u64,
    stale: u64,
}

/// The sampler's counts per phase, from the live replicas' Stats: each replica's counts since its last
/// snapshot (a replica killed mid-phase takes its last counts with it).
#[derive(Default)]
struct SamplerTally {
    seen: HashMap<usize, Checks>,
}

impl SamplerTally {
    /// The checks counted since the last call, summed over the replicas that answer.
    async fn since_last(&mut self, world: &World) -> Checks {
        let live: Vec<(usize, Client)> = world
            .replicas
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, (_, live))| *live)
            .map(|(i, (client, _))| (i, client.clone()))
            .collect();
        let mut phase = Checks::default();
        for (i, mut client) in live {
            let Ok(stats) = client.stats(with_deadline(StatsRequest {})).await else {
                continue;
            };
            let Some(item) = stats
                .into_inner()
                .entities
                .into_iter()
                .find(|e| e.entity == "item")
            else {
                continue;
            };
            let c = item.consistency_checks.unwrap_or_default();
            let now = Checks {
                compared: c.fresh + c.in_flight + c.stale,
                in_flight: c.in_flight,
                stale: c.stale,
            };
            let before = self.seen.insert(i, now).unwrap_or_default();
            phase.compared += now.compared - before.compared;
            phase.in_flight += now.in_flight - before.in_flight;
            phase.stale += now.stale - before.stale;
        }
        phase
    }
}

impl World {
    /// A live replica's index and client, chosen by worker and attempt.
    fn replica_for(&self, attempt: usize, worker: usize) -> Option<(usize, Client)> {
        let replicas = self.replicas.lock().unwrap();
        let live: Vec<(usize, &Client)> = replicas
            .iter()
            .enumerate()
            .filter(|(_, (_, live))| *live)
            .map(|(index, (client, _))| (index, client))
            .collect();
        (!live.is_empty()).then(|| {
            let (index, client) = live[(worker + attempt) % live.len()];
            (index, client.clone())
        })
    }

    /// Whether key `index` is owned by the primary being failed in the current phase.
    fn on_failing_shard(&self, index: usize) -> bool {
        self.record
            .lock()
            .unwrap()
            .failing_shard
            .as_ref()
            .is_some_and(|shard| shard[index])
    }

    /// After a failover of the shard `shard`, acknowledged Sets on it may have been lost: forget their floors.
    fn forget_set_floors(&self, shard: &[bool]) {
        for (index, on_shard) in shard.iter().enumerate() {
            if *on_shard {
                self.set_floor[index].store(0, Ordering::Release);
            }
        }
    }

    fn note(&self, index: usize, started: Instant, outcome: Result<(), Code>, stale: bool) {
        let mut record = self.record.lock().unwrap();
        record.calls.note(started, outcome.map(|()| false), stale);
        if outcome.is_err() {
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

/// Runs `call` on a live replica, retrying once on another after a retryable failure; answers which replica
/// (index in `World::replicas`) answered.
async fn with_retry<T, F, Fut>(
    world: &World,
    worker: usize,
    mut call: F,
) -> Result<(T, usize), tonic::Status>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut last = tonic::Status::unavailable("no live replica");
    for attempt in 0..2 {
        let Some((replica, client)) = world.replica_for(attempt, worker) else {
            break;
        };
        match call(client).await {
            Ok(answer) => return Ok((answer, replica)),
            Err(status) if drill::retryable(&status) => last = status,
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
    drill::with_deadline(message, CALL_DEADLINE)
}

async fn worker(world: Arc<World>, id: usize) {
    let mut next = drill::worker_rng(id);
    while !world.stop.load(Ordering::Relaxed) {
        let index = (next() % KEYS as u64) as usize;
        let k = item(index);
        let started = Instant::now();
        match next() % 10 {
            // 70 %: Get, checked against the acknowledged floors taken before it was sent.
            0..=6 => {
                let invalidated = world.floor[index].load(Ordering::Acquire);
                let set = if world.on_failing_shard(index) {
                    0
                } else {
                    world.set_floor[index].load(Ordering::Acquire)
                };
                let floor = if floor_version(set) > floor_version(invalidated) {
                    set
                } else {
                    invalidated
                };
                let answer = with_retry(&world, id, |mut client| {
                    let k = k.clone();
                    async move {
                        let request = with_deadline(GetRequest {
                            key: k,
                            cache_only: false,
                            lease: false,
                        });
                        client.get(request).await.map(tonic::Response::into_inner)
                    }
                })
                .await;
                let below = match &answer {
                    Ok((found, _)) => {
                        version_of(&found.value).is_some_and(|v| v < floor_version(floor))
                    }
                    Err(_) => false,
                };
                let mut stale = below;
                if let Ok((found, replica)) = &answer {
                    let mut record = world.record.lock().unwrap();
                    match found.source() {
                        Source::NearHit => record.near_hits += 1,
                        Source::Stale => record.stale_served += 1,
                        _ => {}
                    }
                    // The near-cache's documented window: another replica's near-cache may answer the old value
                    // until the acknowledging replica's notice arrives.
                    if below
                        && found.source() == Source::NearHit
                        && *replica != floor_replica(floor)
                    {
                        record.near_window += 1;
                        stale = false;
                    }
                    if stale && record.stale_samples.len() < 5 {
                        record.stale_samples.push(format!(
                            "{k}: got {:?} from {:?} on replica {replica}, floor v{} acknowledged by replica {} \
                             (invalidation floor now v{}, Set floor v{})",
                            String::from_utf8_lossy(&found.value),
                            found.source(),
                            floor_version(floor),
                            floor_replica(floor),
                            floor_version(world.floor[index].load(Ordering::Acquire)),
                            floor_version(world.set_floor[index].load(Ordering::Acquire)),
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
                let v = drill::next_version(&world.source, index, &mut version);
                let answer = with_retry(&world, id, |mut client| {
                    let k = k.clone();
                    async move {
                        let request = with_deadline(SetRequest {
                            key: k,
                            value: value(v).into(),
                            ttl: None,
                            version: Some(v),
                            lease_token: Default::default(),
                        });
                        client.set(request).await
                    }
                })
                .await;
                // A refused older version is an answer, not an error. An accepted one raises the floor, unless
                // its shard is being failed over (an acknowledged Set may be lost in a failover).
                let outcome = match answer {
                    Ok((_, replica)) => {
                        if !world.on_failing_shard(index) {
                            world.set_floor[index].fetch_max(floor(v, replica), Ordering::AcqRel);
                        }
                        Ok(())
                    }
                    Err(status) if status.code() == Code::FailedPrecondition => Ok(()),
                    Err(status) => Err(status.code()),
                };
                world.note(index, started, outcome, false);
            }
            // 20 %: the source changes and the key is invalidated; once acknowledged, older values are stale.
            _ => {
                let mut version = world.writers[index].lock().await;
                let v = drill::next_version(&world.source, index, &mut version);
                let answer = with_retry(&world, id, |mut client| {
                    let k = k.clone();
                    async move {
                        let request = with_deadline(InvalidateRequest { keys: vec![k] });
                        client.invalidate(request).await
                    }
                })
                .await;
                if let Ok((_, replica)) = &answer {
                    world.floor[index].fetch_max(floor(v, *replica), Ordering::AcqRel);
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
            let slot = fred::util::redis_keyslot(item(i).as_bytes());
            owners
                .iter()
                .any(|(first, last, owner)| *owner == port && (*first..=*last).contains(&slot))
        })
        .collect()
}

/// The servers' configuration; `replica_acks` is `store.invalidation_replica_acks` (1, the default, except for
/// the control). The entity's policy has a short TTL, both stale windows and the near-cache.
fn server_config(cluster: &RedisCluster, loader: &TestLoader, replica_acks: u32) -> String {
    format!(
        r#"
[store]
redis_url = "{url}"
redis_command_timeout_ms = 500
replica_ack_timeout_ms = 500
invalidation_replica_acks = {replica_acks}

[near_cache]
max_bytes = 16777216

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
ttl_secs = 3
stale_while_revalidate_secs = 2
stale_if_error_secs = 30
near_cache_ttl_secs = 2
staleness_sample_rate = 0.05
"#,
        url = cluster.url(),
        loader = loader.addr,
    )
}

/// Keys of the lagging-replica drill.
const DRILL_KEYS: usize = 30;
/// Bulk written to the drill's primary while its replica is stopped: more than the kernel's socket buffers between
/// them hold (a few MiB on loopback), so what follows stays in the primary's replication output buffer.
const JUNK_MIB: usize = 32;

/// Who sends the drill's invalidations.
enum Via<'a> {
    /// The load's replicas (the default `invalidation_replica_acks = 1`), with the load's retry rule; an
    /// acknowledged invalidation raises the load's floor.
    Load,
    /// The control replica (`invalidation_replica_acks = 0`): its acknowledgements are expected to be undone, so
    /// they raise no floor of the load.
    Control(&'a Client),
}

/// What the lagging-replica drill saw.
struct Drill {
    label: &'static str,
    /// Invalidations answered OK.
    acknowledged: usize,
    /// Invalidations that failed (UNAVAILABLE, or out of deadline after the retry): not acknowledged.
    refused: usize,
    /// Acknowledged invalidations whose old value came back after the failover.
    resurrected: usize,
    /// Unacknowledged invalidations whose old value came back (allowed; shows the replica really missed them).
    refused_came_back: usize,
    /// Bytes of replication stream the primary had and the promoted replica never got.
    lost_bytes: i64,
    /// The primary's replication output buffer to the stopped replica, after the bulk write and at the kill.
    buffered: (i64, i64),
    promoted_after: Duration,
    /// The drill's keys: their old values came back with a 120 s TTL, behind the source.
    keys: Vec<usize>,
}

/// Invalidates the drill's keys until acknowledged, as a client retries an invalidation that answered
/// UNAVAILABLE: the old values the drill brought back (120 s TTL) would otherwise stay behind the source, and
/// the staleness sampler would rightly report them in later phases.
async fn heal(world: &World, keys: &[usize]) {
    for &i in keys {
        let mut attempts = 0;
        while with_retry(world, i, |mut client| async move {
            let request = with_deadline(InvalidateRequest {
                keys: vec![item(i)],
            });
            client.invalidate(request).await
        })
        .await
        .is_err()
        {
            attempts += 1;
            assert!(
                attempts < 100,
                "item:{i} could not be invalidated after the drill"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `CLIENT LIST TYPE replica` on `port`: the output buffer (omem) to its replica, in bytes.
fn replica_output_buffer(port: u16) -> i64 {
    redis_cli(port, &["client", "list", "type", "replica"])
        .split_whitespace()
        .find_map(|field| field.strip_prefix("omem=")?.parse().ok())
        .unwrap_or_else(|| panic!("no replica client on {port}"))
}

/// A hash tag for keys outside cachecoord's layout that the primary on `port` owns.
fn junk_tag(cluster: &RedisCluster, port: u16) -> String {
    let owners = cluster.slot_owners();
    (0..)
        .map(|n| format!("chaos-junk-{n}"))
        .find(|tag| {
            let slot = fred::util::redis_keyslot(tag.as_bytes());
            owners
                .iter()
                .any(|(first, last, owner)| *owner == port && (*first..=*last).contains(&slot))
        })
        .unwrap()
}

/// Writes `JUNK_MIB` MiB of 1 MiB values to the primary on `port`, under keys tagged `tag`.
async fn write_junk(port: u16, tag: &str) {
    let mut connection = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let junk = vec![b'x'; 1 << 20];
    for i in 0..JUNK_MIB {
        let key = format!("chaos-junk:{{{tag}}}:{i}");
        let mut command = format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
            key.len(),
            junk.len()
        )
        .into_bytes();
        command.extend_from_slice(&junk);
        command.extend_from_slice(b"\r\n");
        connection.write_all(&command).await.unwrap();
        let mut reply = Vec::new();
        while !reply.ends_with(b"\r\n") {
            let mut byte = [0u8; 64];
            let n = connection.read(&mut byte).await.unwrap();
            assert!(n > 0, "the primary on {port} closed the junk connection");
            reply.extend_from_slice(&byte[..n]);
        }
        assert!(reply.starts_with(b"+OK"), "junk SET on {port}: {reply:?}");
    }
}

/// A Get that is retried until the shard answers again (after a failover the slot map takes a moment).
async fn get_after_failover(world: &World, i: usize) -> Option<u64> {
    for _ in 0..100 {
        let answer = with_retry(world, i, |mut client| {
            let k = item(i);
            async move {
                client
                    .get(with_deadline(GetRequest {
                        key: k,
                        cache_only: false,
                        lease: false,
                    }))
                    .await
            }
        })
        .await;
        if let Ok((answer, _)) = answer {
            return version_of(&answer.into_inner().value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("item:{i} unreadable long after the failover");
}

/// The lagging-replica drill: cache 30 keys of `victim`'s shard, stop its replica, write enough to `victim` that
/// its replication stream backs up into its output buffer, invalidate the 30 keys (through `via`), `kill -9`
/// `victim`, wake the replica and let it be promoted, then read the 30 keys. Panics if the setup did not create lag.
async fn lagging_failover(
    world: &World,
    cluster: &RedisCluster,
    victim: u16,
    via: Via<'_>,
    label: &'static str,
) -> Drill {
    let shard = owned_by(cluster, victim);
    let chosen: Vec<usize> = (0..KEYS).filter(|&i| shard[i]).take(DRILL_KEYS).collect();
    assert_eq!(
        chosen.len(),
        DRILL_KEYS,
        "enough keys on the victim's shard"
    );
    let replica = cluster.replica_of(victim);
    // Hold the chosen keys' writer locks throughout: the load changes none of them meanwhile.
    let mut guards = Vec::new();
    for &i in &chosen {
        guards.push(world.writers[i].lock().await);
    }
    // Cache a new value of each, with a TTL that outlasts the drill (the policy's 3 s would let the old values
    // expire before they could come back), and let the replica catch up with all of it.
    for (&i, version) in chosen.iter().zip(guards.iter_mut()) {
        let v = drill::next_version(&world.source, i, version);
        let (_, replica) = with_retry(world, i, |mut client| async move {
            client
                .set(with_deadline(SetRequest {
                    key: item(i),
                    value: value(v).into(),
                    ttl: Some(prost_types::Duration {
                        seconds: 120,
                        nanos: 0,
                    }),
                    version: Some(v),
                    lease_token: Default::default(),
                }))
                .await
        })
        .await
        .expect("the drill's Set before the lag is acknowledged");
        world.set_floor[i].fetch_max(floor(v, replica), Ordering::AcqRel);
    }
    let written = info_field(victim, "replication", "master_repl_offset").unwrap();
    let caught_up = Instant::now();
    while info_field(replica, "replication", "slave_repl_offset").unwrap_or(0) < written {
        assert!(
            caught_up.elapsed() < Duration::from_secs(30),
            "{label}: replica {replica} never caught up with {victim}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Stop the replica, and back its replication stream up into the primary's output buffer. (Nothing may ask
    // the stopped replica anything from here until it is woken: redis-cli would wait for it forever.)
    let tag = junk_tag(cluster, victim);
    cluster.pause(replica);
    write_junk(victim, &tag).await;
    let behind_from = info_field(victim, "replication", "master_repl_offset").unwrap();
    let buffered_after_junk = replica_output_buffer(victim);
    assert!(
        buffered_after_junk > 0,
        "{label}: setup failed to create lag: the output buffer of {victim} to its stopped replica {replica} is \
         empty after {JUNK_MIB} MiB; this drill would prove nothing"
    );
    // The replica is flagged as failed before the invalidations, as a replica that lags for longer than
    // cluster-node-timeout is: still connected to its primary and promotable, but no longer listed as a replica.
    let stopped = Instant::now();
    while !cluster.flagged_failed(replica) {
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "{label}: the stopped replica {replica} was never flagged failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Change the source and invalidate the 30 keys, all at once.
    let mut floors = Vec::new();
    for (&i, version) in chosen.iter().zip(guards.iter_mut()) {
        floors.push(drill::next_version(&world.source, i, version));
    }
    let answers = futures::future::join_all(chosen.iter().map(|&i| {
        let via = &via;
        async move {
            let request = || {
                with_deadline(InvalidateRequest {
                    keys: vec![item(i)],
                })
            };
            match via {
                Via::Load => with_retry(world, i, |mut client| async move {
                    client.invalidate(request()).await
                })
                .await
                .map(|(_, replica)| Some(replica)),
                Via::Control(client) => {
                    let mut client = (*client).clone();
                    client.invalidate(request()).await.map(|_| None)
                }
            }
        }
    }))
    .await;
    let mut acknowledged = vec![false; chosen.len()];
    for (n, answer) in answers.iter().enumerate() {
        match answer {
            Ok(acked_by) => {
                acknowledged[n] = true;
                if let Some(replica) = acked_by {
                    let i = chosen[n];
                    world.floor[i].fetch_max(floor(floors[n], *replica), Ordering::AcqRel);
                }
            }
            Err(status) => assert!(
                matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
                "{label}: an invalidation failed with {status:?}"
            ),
        }
    }
    // At once: kill the primary, wake the replica, wait for its promotion.
    let buffered_at_kill = replica_output_buffer(victim);
    let primary_had = info_field(victim, "replication", "master_repl_offset").unwrap();
    let killed = Instant::now();
    cluster.kill_node(victim);
    cluster.resume(replica);
    cluster.wait_for_failover(victim);
    let promoted_after = killed.elapsed();
    // The replica's offset when it was promoted (it starts a new history one byte later).
    let replica_had = info_field(replica, "replication", "second_repl_offset").unwrap() - 1;
    assert!(
        replica_had < behind_from,
        "{label}: setup failed to create lag: the promoted replica had offset {replica_had}, not below \
         {behind_from} (the primary's offset before the invalidations); this drill would prove nothing"
    );
    // Read them back.
    let (mut resurrected, mut refused_came_back) = (0, 0);
    for (n, &i) in chosen.iter().enumerate() {
        let old = get_after_failover(world, i)
            .await
            .is_none_or(|v| v < floors[n]);
        match (old, acknowledged[n]) {
            (true, true) => resurrected += 1,
            (true, false) => refused_came_back += 1,
            _ => {}
        }
    }
    drop(guards);
    let acknowledged = acknowledged.iter().filter(|a| **a).count();
    Drill {
        label,
        acknowledged,
        refused: chosen.len() - acknowledged,
        resurrected,
        refused_came_back,
        lost_bytes: primary_had - replica_had,
        buffered: (buffered_after_junk, buffered_at_kill),
        promoted_after,
        keys: chosen,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    // Healthy primaries must keep answering while a shard has no primary (Redis's default refuses every key then).
    // The lagging-replica drill stops a replica while its primary writes on: the primary must keep the stopped
    // replica's output buffer however large it grows (instead of dropping the replica), and the replica, however
    // far behind, must still be promoted.
    let cluster = RedisCluster::start_with(&[
        "--cluster-require-full-coverage",
        "no",
        "--client-output-buffer-limit",
        "replica 0 0 0",
        "--cluster-replica-validity-factor",
        "0",
    ]);
    let redis_version = redis_cli(cluster.ports[0], &["info", "server"])
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:").map(str::to_owned))
        .unwrap_or_default();
    println!("chaos: Redis {redis_version}");
    let loader = TestLoader::start().await;
    for i in 0..KEYS {
        loader.source.put(&item(i), &value(0));
    }
    let config = server_config(&cluster, &loader, 1);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(ServerProcess::start(&config).await);
    }
    // The control: one more replica, outside the load's endpoint list, that acknowledges invalidations unfenced.
    let control = ServerProcess::start(&server_config(&cluster, &loader, 0)).await;
    let clients: Vec<(Client, bool)> = replicas.iter().map(|r| (drill::connect(r), true)).collect();
    let control_client = drill::connect(&control);
    let world = Arc::new(World {
        source: loader.source.clone(),
        writers: (0..KEYS).map(|_| tokio::sync::Mutex::new(0)).collect(),
        floor: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
        set_floor: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
        replicas: Mutex::new(clients),
        record: Mutex::new(Record::default()),
        stop: AtomicBool::new(false),
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| tokio::spawn(worker(world.clone(), id)))
        .collect();

    let mut reports = Vec::new();
    let mut tally = SamplerTally::default();
    let mut phase =
        |name: &'static str, started: Instant, before: HashMap<String, usize>, checks: Checks| {
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
                checks,
            });
            (Instant::now(), loader.source.load_counts())
        };
    let (mut started, mut before) = (Instant::now(), loader.source.load_counts());

    // 1. Steady state.
    tokio::time::sleep(Duration::from_secs(6)).await;
    (started, before) = phase("steady", started, before, tally.since_last(&world).await);

    // 2. kill -9 of a primary whose replica lags, right after invalidations on its shard; wait for the promotion,
    //    then bring the old node back (it rejoins as a replica). First the control (invalidations acknowledged
    //    unfenced), then the real configuration.
    let mut drills = Vec::new();
    for (via, label) in [
        (
            Via::Control(&control_client),
            "primary kill -9, lagging replica, control (acks 0)",
        ),
        (Via::Load, "primary kill -9, lagging replica"),
    ] {
        let victim = cluster.primaries()[0];
        let shard = owned_by(&cluster, victim);
        world.record.lock().unwrap().failing_shard = Some(shard.clone());
        drills.push(lagging_failover(&world, &cluster, victim, via, label).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.restart_node(victim);
        cluster.wait_until_whole();
        heal(&world, &drills.last().unwrap().keys).await;
        world.forget_set_floors(&shard);
        (started, before) = phase(label, started, before, tally.since_last(&world).await);
    }

    // 3. kill -9 of a cachecoord replica mid-load.
    replicas[2].child.start_kill().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    world.replicas.lock().unwrap()[2].1 = false;
    tokio::time::sleep(Duration::from_secs(5)).await;
    (started, before) = phase(
        "cachecoord kill -9",
        started,
        before,
        tally.since_last(&world).await,
    );

    // 4. A rolling restart, as Kubernetes does it: a new replica starts and is added, then an old one gets
    //    SIGTERM, drains (NOT_SERVING, still answering for drain_delay_ms) and exits; it leaves the endpoint list
    //    only once it has exited. Nothing may fail.
    for old in [0, 1] {
        let fresh = ServerProcess::start(&config).await;
        world
            .replicas
            .lock()
            .unwrap()
            .push((drill::connect(&fresh), true));
        replicas.push(fresh);
        replicas[old].terminate();
        let status = replicas[old].child.wait().await.unwrap();
        assert!(status.success(), "a drained replica exits 0");
        world.replicas.lock().unwrap()[old].1 = false;
    }
    (started, before) = phase(
        "rolling restart",
        started,
        before,
        tally.since_last(&world).await,
    );

    // 5. SIGSTOP a primary for 4 s (beyond cluster-node-timeout: it is failed over), then SIGCONT.
    let paused = cluster.primaries()[0];
    let shard = owned_by(&cluster, paused);
    world.record.lock().unwrap().failing_shard = Some(shard.clone());
    cluster.pause(paused);
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.resume(paused);
    cluster.wait_until_whole();
    tokio::time::sleep(Duration::from_secs(2)).await;
    world.forget_set_floors(&shard);
    (started, before) = phase(
        "primary SIGSTOP 4 s",
        started,
        before,
        tally.since_last(&world).await,
    );

    // 6–8. The loader slows past its timeout, then fails, then recovers.
    loader.source.set_delay(Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_secs(5)).await;
    (started, before) = phase(
        "loader slow (1.5 s > 1 s timeout)",
        started,
        before,
        tally.since_last(&world).await,
    );
    loader.source.set_delay(Duration::ZERO);
    loader.source.set_failing(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    (started, before) = phase(
        "loader failing",
        started,
        before,
        tally.since_last(&world).await,
    );
    loader.source.set_failing(false);
    // One breaker cooldown for the loader's probe to close it, then the recovered phase is measured.
    tokio::time::sleep(Duration::from_secs(1)).await;
    (started, before) = phase(
        "loader recovering (1 s)",
        started,
        before,
        tally.since_last(&world).await,
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _ = phase("recovered", started, before, tally.since_last(&world).await);

    world.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    println!(
        "\nchaos summary (3 cachecoord replicas, 3+3 Redis Cluster, {KEYS} keys, {WORKERS} callers)\n"
    );
    drill::print_header(&[
        "phase",
        "s",
        "requests",
        "errors by code",
        "healthy-shard errors",
        "p99 ms",
        "loader calls",
        "distinct keys loaded",
        "near hits",
        "STALE served",
        "near-cache window",
        "stale reads",
        "sampler checks",
        "sampler in flight",
        "sampler stale",
    ]);
    for report in &mut reports {
        let healthy = if report.record.failing_shard.is_some() {
            report.record.healthy_shard_errors.to_string()
        } else {
            "–".to_owned()
        };
        let record = &mut report.record;
        drill::print_row(&[
            report.name.to_owned(),
            format!("{:.1}", report.seconds),
            record.calls.requests.to_string(),
            record.calls.errors_cell(),
            healthy,
            format!("{:.1}", record.calls.p99_ms()),
            report.loads.to_string(),
            report.distinct_loaded.to_string(),
            record.near_hits.to_string(),
            record.stale_served.to_string(),
            record.near_window.to_string(),
            record.calls.stale.to_string(),
            report.checks.compared.to_string(),
            report.checks.in_flight.to_string(),
            report.checks.stale.to_string(),
        ]);
    }
    println!(
        "\nkill -9 of a primary whose replica lags ({DRILL_KEYS} keys invalidated after {JUNK_MIB} MiB written past the \
         stopped replica):\n"
    );
    drill::print_header(&[
        "run",
        "acknowledged",
        "not acknowledged",
        "acknowledged, old value back",
        "not acknowledged, old value back",
        "output buffer after bulk / at kill",
        "stream lost",
        "promoted after",
    ]);
    for run in &drills {
        drill::print_row(&[
            run.label.to_owned(),
            run.acknowledged.to_string(),
            run.refused.to_string(),
            run.resurrected.to_string(),
            run.refused_came_back.to_string(),
            format!(
                "{:.1} / {:.1} MiB",
                run.buffered.0 as f64 / 1048576.0,
                run.buffered.1 as f64 / 1048576.0
            ),
            format!("{:.1} MiB", run.lost_bytes as f64 / 1048576.0),
            format!("{:.1} s", run.promoted_after.as_secs_f64()),
        ]);
    }

    for replica in replicas.iter().chain([&control]) {
        for line in replica.log_lines("ERROR").iter().take(5) {
            println!("server error log: {line}");
        }
    }
    for report in &reports {
        for sample in &report.record.stale_samples {
            println!("stale read in {}: {sample}", report.name);
        }
    }
    let (control_drill, real_drill) = (&drills[0], &drills[1]);
    assert!(
        control_drill.resurrected > 0,
        "the control (invalidation_replica_acks = 0) undid no acknowledged invalidation: the drill has no teeth"
    );
    assert_eq!(
        real_drill.resurrected, 0,
        "acknowledged invalidations came undone by the failover of their lagging replica"
    );
    let near_hits: u64 = reports.iter().map(|r| r.record.near_hits).sum();
    let stale_served: u64 = reports.iter().map(|r| r.record.stale_served).sum();
    assert!(near_hits > 0, "no Get was answered from the near-cache");
    assert!(
        reports[0].checks.compared > 0,
        "the staleness sampler compared no hit in the steady phase"
    );
    assert!(stale_served > 0, "no Get was answered from a stale window");
    for report in &reports {
        assert_eq!(
            report.record.calls.stale, 0,
            "stale reads in phase {}: {:?}",
            report.name, report.record.stale_samples
        );
        assert!(
            report.record.calls.requests > 0,
            "phase {} ran no requests",
            report.name
        );
        if matches!(report.name, "steady" | "rolling restart" | "recovered") {
            assert_eq!(
                report.checks.stale, 0,
                "the staleness sampler found stale entries in the green phase {}",
                report.name
            );
        }
        let allowed: &[&str] = match report.name {
            "steady" | "rolling restart" | "recovered" => &[],
            "cachecoord kill -9" => &["Unavailable", "Unknown", "Cancelled"],
            _ => &["Unavailable", "DeadlineExceeded"],
        };
        for code in report.record.calls.errors.keys() {
            assert!(
                allowed.contains(&code.as_str()),
                "phase {}: {code} errors are not allowed there",
                report.name
            );
        }
    }
    for primary_kill in reports
        .iter()
        .filter(|r| r.name.starts_with("primary kill -9"))
    {
        assert_eq!(
            primary_kill.record.healthy_shard_errors, 0,
            "{}: keys on healthy primaries must not fail while another primary is killed",
            primary_kill.name
        );
    }
}
