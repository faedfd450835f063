//! Leases for callers without a loader (the cache-aside loop: Get with `lease`, load from the caller's own
//! database, Set with the token): one load per key across replicas and processes, no stale value after a racing
//! invalidation, hand-over to a waiter when the holder releases or dies, and refusals (scope, forged or foreign
//! tokens). The database is a counting in-memory map with a configurable read delay.

use crate::support::cluster::RedisCluster;
use crate::support::loader::{TestLoader, grpc_loader};
use crate::support::process::ServerProcess;
use crate::support::raw_http2::{RawCaller, grpc_frame};
use crate::support::{Backend, Client, TestServer, assert_error, cached, set_request, unique};
use cachecoord::auth::hash_token;
use cachecoord::config::{Config, PolicyConfig};
use cachecoord::proto::{
    BatchGetRequest, BatchGetResult, BatchSetRequest, GetRequest, GetResponse,
    InvalidatePatternRequest, InvalidateRequest, ReleaseLeaseRequest, RenewLeaseRequest,
    SetRequest, Source,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Code, Request};

/// The caller's own database: rows by key, each read counted and delayed.
#[derive(Clone, Default)]
struct Database {
    rows: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    reads: Arc<AtomicUsize>,
    delay: Duration,
}

impl Database {
    fn with_delay(delay: Duration) -> Database {
        Database {
            delay,
            ..Database::default()
        }
    }

    fn put(&self, key: &str, value: &[u8]) {
        self.rows.lock().unwrap().insert(key.into(), value.to_vec());
    }

    fn row(&self, key: &str) -> Vec<u8> {
        self.rows
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// A slow query: counted, reads the row, then takes `delay` to return it.
    async fn load(&self, key: &str) -> Vec<u8> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let row = self.row(key);
        tokio::time::sleep(self.delay).await;
        row
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

fn leased_get(key: &str) -> GetRequest {
    GetRequest {
        key: key.into(),
        cache_only: false,
        lease: true,
    }
}

async fn get_leased(client: &mut Client, key: &str) -> GetResponse {
    client.get(leased_get(key)).await.unwrap().into_inner()
}

fn fill(key: &str, value: &[u8], token: &[u8]) -> SetRequest {
    SetRequest {
        lease_token: token.to_vec().into(),
        ..set_request(key, value)
    }
}

/// How a cache-aside call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Answered from the cache (HIT, COALESCED, STALE…).
    Cached,
    /// Held the lease: loaded and filled.
    Filled,
    /// Held the lease, loaded, and the fill was refused (LEASE_LOST).
    LeaseLost,
    /// The wait ran out without the lease: loaded, not cached.
    LoadedUncached,
    /// Without leases: missed, loaded and Set.
    Set,
}

/// The cache-aside loop with leases, as the examples write it; answers the value and how the call went.
async fn cache_aside_leased(client: &mut Client, db: &Database, key: &str) -> (Vec<u8>, Outcome) {
    let answer = get_leased(client, key).await;
    if answer.found {
        return (answer.value.to_vec(), Outcome::Cached);
    }
    let value = db.load(key).await;
    if answer.lease_token.is_empty() {
        return (value, Outcome::LoadedUncached);
    }
    match client.set(fill(key, &value, &answer.lease_token)).await {
        Ok(_) => (value, Outcome::Filled),
        Err(status) => {
            assert_error(&status, Code::FailedPrecondition, "LEASE_LOST");
            (value, Outcome::LeaseLost)
        }
    }
}

/// The same loop without leases (the stampede and the stale set it allows).
async fn cache_aside_plain(client: &mut Client, db: &Database, key: &str) -> (Vec<u8>, Outcome) {
    let answer = crate::support::get(client, key).await;
    if answer.found {
        return (answer.value.to_vec(), Outcome::Cached);
    }
    let value = db.load(key).await;
    client.set(set_request(key, &value)).await.unwrap();
    (value, Outcome::Set)
}

/// Three cachecoord processes on the shared cluster.
async fn three_processes(extra_toml: &str) -> Vec<ServerProcess> {
    let config = format!(
        "log_level = \"warn\"\n[store]\nredis_url = \"{}\"\n{extra_toml}",
        RedisCluster::shared().url()
    );
    let mut processes = Vec::new();
    for _ in 0..3 {
        processes.push(ServerProcess::start(&config).await);
    }
    processes
}

async fn clients_of(processes: &[ServerProcess]) -> Vec<Client> {
    let mut clients = Vec::new();
    for process in processes {
        clients.push(Client::connect(process.uri()).await.unwrap());
    }
    clients
}

/// 300 callers over three processes run the cache-aside loop on one cold key with a 200 ms database: `leased`
/// or not. Answers the database reads and the outcomes.
async fn stampede(clients: &[Client], leased: bool) -> (usize, BTreeMap<Outcome, usize>) {
    let db = Database::with_delay(Duration::from_millis(200));
    let key = format!("product:{}", unique("stampede"));
    db.put(&key, b"{\"price\":42}");
    let started = Instant::now();
    let callers = (0..300).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        let (db, key) = (db.clone(), key.clone());
        tokio::spawn(async move {
            if leased {
                cache_aside_leased(&mut client, &db, &key).await
            } else {
                cache_aside_plain(&mut client, &db, &key).await
            }
        })
    });
    let mut outcomes = BTreeMap::new();
    for answer in futures::future::join_all(callers).await {
        let (value, outcome) = answer.unwrap();
        assert_eq!(value, b"{\"price\":42}", "every caller returns the value");
        *outcomes.entry(outcome).or_insert(0) += 1;
    }
    let mode = if leased {
        "with leases"
    } else {
        "without leases (control)"
    };
    println!(
        "stampede {mode}: 300 callers over 3 processes, 200 ms database: {} database calls, outcomes {outcomes:?}, \
         all answered in {:?}",
        db.reads(),
        started.elapsed()
    );
    (db.reads(), outcomes)
}

/// Three server processes; 300 concurrent callers spread over them run the leased cache-aside loop on one cold
/// key with a 200 ms database: exactly one database call, and every caller returns the value. The same run without
/// `lease` (the control) calls the database many times.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leased_stampede_over_three_processes_calls_the_database_once() {
    let processes = three_processes("").await;
    let clients = clients_of(&processes).await;
    let (reads, outcomes) = stampede(&clients, true).await;
    assert_eq!(reads, 1, "one database call for 300 callers: {outcomes:?}");
    assert_eq!(outcomes.get(&Outcome::Filled), Some(&1));
    let (control, _) = stampede(&clients, false).await;
    assert!(
        control > 1,
        "without leases the stampede must show ({control} database calls)"
    );
}

/// Answers how many of `rounds` races left a stale value cached, and how many fills were refused. Each round, on
/// one of 50 keys: a reader runs the cache-aside loop (leased, or ignoring the token with a plain Set when
/// `honour_lease` is false) through one replica; once its query has read the old row, a writer updates the row
/// and Invalidates the key through the other replica, and only then does the query answer. After both finish,
/// the cache must hold nothing but the new row.
async fn race(backend: Backend, honour_lease: bool, rounds: usize) -> (usize, usize) {
    race_by(backend, honour_lease, rounds, Invalidation::Key).await
}

/// How the racing writer invalidates.
#[derive(Clone, Copy, Debug)]
enum Invalidation {
    /// Invalidate of the key.
    Key,
    /// InvalidatePattern of the key's `{entity}:{id}` group (one script on one primary).
    GroupPattern,
    /// InvalidatePattern spanning groups (SCAN on every primary).
    ScanPattern,
}

/// [`race`] with the writer invalidating `how`.
async fn race_by(
    backend: Backend,
    honour_lease: bool,
    rounds: usize,
    how: Invalidation,
) -> (usize, usize) {
    let replicas = Replicas::start(backend.config()).await;
    let (reader, writer) = (replicas.client(0).await, replicas.client(1).await);
    race_on(reader, writer, honour_lease, rounds, how).await
}

/// Readers run the leased loop with a slow database read while writers update the row and Invalidate (on another
/// replica): over 1,000 rounds on the cluster, no stale value is left cached (every racing fill is LEASE_LOST).
/// The control, ignoring the token (a plain Set), leaves stale values.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_invalidations_never_leave_a_leased_fill_stale() {
    let (stale, lost) = race(Backend::Cluster, true, 1000).await;
    let (control, _) = race(Backend::Cluster, false, 200).await;
    println!(
        "cluster, leased loop: {stale} stale values in 1000 rounds ({lost} fills refused LEASE_LOST); \
         control ignoring the token: {control} stale values in 200 rounds"
    );
    assert_eq!(stale, 0);
    assert!(control > 0, "the race must be observable without the lease");
}

/// The same race against InvalidatePattern, of the key's group and spanning groups (SCAN), on the cluster: no
/// stale value; the control ignoring the token leaves stale values.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_pattern_invalidations_never_leave_a_leased_fill_stale() {
    let (group, group_lost) =
        race_by(Backend::Cluster, true, 300, Invalidation::GroupPattern).await;
    let (scan, scan_lost) = race_by(Backend::Cluster, true, 200, Invalidation::ScanPattern).await;
    let (control, _) = race_by(Backend::Cluster, false, 100, Invalidation::ScanPattern).await;
    println!(
        "cluster, leased loop: {group} stale in 300 group-pattern rounds ({group_lost} refused), {scan} stale in \
         200 scan-pattern rounds ({scan_lost} refused); control ignoring the token: {control} stale in 100 \
         scan-pattern rounds"
    );
    assert_eq!((group, scan), (0, 0));
    assert!(
        control > 0,
        "the pattern race must be observable without the lease"
    );
}

/// The same race on the embedded store (reader and writer on one server: its store is per process).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_invalidations_never_leave_a_leased_fill_stale_on_the_embedded_store() {
    let (stale, lost) = race(Backend::Embedded, true, 1000).await;
    let (control, _) = race(Backend::Embedded, false, 200).await;
    println!(
        "embedded, leased loop: {stale} stale values in 1000 rounds ({lost} fills refused LEASE_LOST); control \
         ignoring the token: {control} stale values in 200 rounds"
    );
    assert_eq!(stale, 0);
    assert!(control > 0, "the race must be observable without the lease");
}

async fn race_on(
    reader: Client,
    writer: Client,
    honour_lease: bool,
    rounds: usize,
    how: Invalidation,
) -> (usize, usize) {
    let stale = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicUsize::new(0));
    let id = unique("race");
    const PARALLEL_KEYS: usize = 50;
    let workers = (0..PARALLEL_KEYS).map(|k| {
        let (reader, mut writer) = (reader.clone(), writer.clone());
        let (stale, lost) = (stale.clone(), lost.clone());
        let key = format!("product:{id}x{k}:price");
        let pattern = match how {
            Invalidation::Key => None,
            Invalidation::GroupPattern => Some(format!("product:{id}x{k}:*")),
            // A wildcard in the id sends the pattern down the cross-group SCAN path.
            Invalidation::ScanPattern => Some(format!("product:?{}x{k}:pr*", &id[1..])),
        };
        tokio::spawn(async move {
            for round in 0..rounds.div_ceil(PARALLEL_KEYS) {
                let (old, new) = (format!("v{}", 2 * round), format!("v{}", 2 * round + 1));
                let db = Database::default();
                db.put(&key, old.as_bytes());
                let (read_taken, row_read) = tokio::sync::oneshot::channel();
                // The query answers only once the invalidation is acknowledged: the race, every round.
                let (acknowledged, invalidated) = tokio::sync::oneshot::channel::<()>();
                let read = {
                    let (db, key) = (db.clone(), key.clone());
                    let mut reader = reader.clone();
                    tokio::spawn(async move {
                        let answer = get_leased(&mut reader, &key).await;
                        assert!(
                            !answer.lease_token.is_empty(),
                            "a lone reader gets the lease"
                        );
                        let value = db.row(&key);
                        let _ = read_taken.send(());
                        let _ = invalidated.await;
                        let token = if honour_lease {
                            answer.lease_token.to_vec()
                        } else {
                            Vec::new()
                        };
                        reader.set(fill(&key, &value, &token)).await
                    })
                };
                row_read.await.unwrap();
                db.put(&key, new.as_bytes());
                match &pattern {
                    None => {
                        let keys = vec![key.clone()];
                        writer.invalidate(InvalidateRequest { keys }).await.unwrap();
                    }
                    Some(pattern) => {
                        let pattern = pattern.clone();
                        let request = InvalidatePatternRequest { pattern };
                        writer.invalidate_pattern(request).await.unwrap();
                    }
                }
                let _ = acknowledged.send(());
                if let Err(status) = read.await.unwrap() {
                    assert_error(&status, Code::FailedPrecondition, "LEASE_LOST");
                    lost.fetch_add(1, Ordering::Relaxed);
                }
                let after = cached(&mut writer, &key).await;
                if after.found && after.value != db.row(&key) {
                    stale.fetch_add(1, Ordering::Relaxed);
                }
                let keys = vec![key.clone()];
                writer.invalidate(InvalidateRequest { keys }).await.unwrap();
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker.unwrap();
    }
    (stale.load(Ordering::Relaxed), lost.load(Ordering::Relaxed))
}

/// A config on `backend` whose `held:*` keys have a 1 s lease and a 600 ms wait, and `long:*` keys a 60 s lease
/// and a 300 ms wait.
fn short_leases(backend: Backend) -> Config {
    let mut config = backend.config();
    for (name, ttl_ms, wait_ms) in [("held", 1000, 600), ("long", 60_000, 300)] {
        config.policies.insert(
            0,
            PolicyConfig {
                lease_ttl: Some(Duration::from_millis(ttl_ms)),
                lease_wait: Some(Duration::from_millis(wait_ms)),
                ..PolicyConfig::new(name, &format!("{name}:*"), Duration::from_secs(3600))
            },
        );
    }
    config
}

/// A holder that never comes back (never Sets, never releases): a waiter whose wait runs out while the lease
/// still holds is answered found = false with no token (it loads for itself and does not cache); its next leased
/// Get takes the lease once the lease has run out. So the next waiter gets the lease within the lease TTL plus
/// one wait.
async fn a_dead_holder_is_replaced_after_the_lease_ttl(backend: Backend) {
    let replicas = Replicas::start(short_leases(backend)).await;
    let (mut holder, mut waiter) = (replicas.client(0).await, replicas.client(1).await);
    // The wait (300 ms) runs out long before the lease (60 s): found = false, no token, nothing to fill.
    let long = format!("long:{}", unique("dead"));
    assert!(!get_leased(&mut holder, &long).await.lease_token.is_empty());
    let started = Instant::now();
    let timed_out = get_leased(&mut waiter, &long).await;
    println!(
        "{backend:?}: a 300 ms lease wait ran out after {:?}",
        started.elapsed()
    );
    assert!(!timed_out.found && timed_out.lease_token.is_empty());
    assert_eq!(timed_out.source(), Source::Miss);

    // Lease 1 s, wait 600 ms: the second wait at the latest takes the lease.
    let key = format!("held:{}", unique("dead"));
    let held = get_leased(&mut holder, &key).await;
    assert!(!held.lease_token.is_empty());
    let leased_at = Instant::now();
    let mut attempts = Vec::new();
    let token = loop {
        let answer = get_leased(&mut waiter, &key).await;
        attempts.push((leased_at.elapsed(), answer.lease_token.is_empty()));
        assert!(!answer.found, "nobody filled the key");
        if !answer.lease_token.is_empty() {
            break answer.lease_token;
        }
        assert!(
            attempts.len() < 10,
            "the dead holder's lease never ran out: {attempts:?}"
        );
    };
    println!(
        "{backend:?}: dead holder (lease TTL 1 s, wait 600 ms): the waiter took over after {:?}; its Gets \
         (elapsed, came back without a token): {attempts:?}",
        leased_at.elapsed()
    );
    assert!(
        attempts.len() <= 2,
        "within the lease TTL plus one wait: {attempts:?}"
    );
    // The dead holder's late fill is refused; the new holder's lands.
    let late = holder.set(fill(&key, b"late", &held.lease_token)).await;
    assert_error(&late.unwrap_err(), Code::FailedPrecondition, "LEASE_LOST");
    waiter.set(fill(&key, b"fresh", &token)).await.unwrap();
    assert_eq!(&cached(&mut holder, &key).await.value[..], b"fresh");
}

/// The servers a scenario spreads its callers over: on the cluster, two replicas; on the embedded store, one
/// server (its store is per process, so a second server would be a second cache).
struct Replicas {
    servers: Vec<TestServer>,
}

impl Replicas {
    async fn start(config: Config) -> Replicas {
        let count = if config.store.redis_url.is_some() {
            2
        } else {
            1
        };
        let mut servers = Vec::new();
        for _ in 0..count {
            servers.push(TestServer::start_with(config.clone()).await);
        }
        Replicas { servers }
    }

    /// A client of replica `i` (modulo their number).
    async fn client(&self, i: usize) -> Client {
        self.servers[i % self.servers.len()].client().await
    }
}

/// A holder whose database call failed releases the lease: a waiter on another replica (default lease TTL 10 s,
/// wait 5 s) takes it at once instead of at expiry. The hand-over time is printed.
async fn release_hands_the_lease_to_a_waiter(backend: Backend) {
    let replicas = Replicas::start(backend.config()).await;
    let (mut holder, waiter) = (replicas.client(0).await, replicas.client(1).await);
    let key = format!("product:{}", unique("release"));
    let held = get_leased(&mut holder, &key).await;
    assert!(!held.lease_token.is_empty());
    let waiting = {
        let (mut waiter, key) = (waiter.clone(), key.clone());
        tokio::spawn(async move {
            let answer = get_leased(&mut waiter, &key).await;
            (answer, Instant::now())
        })
    };
    // Let the waiter start waiting (if it has not, it simply finds the lease free: the assertions still hold).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released_at = Instant::now();
    let released = holder
        .release_lease(ReleaseLeaseRequest {
            key: key.clone(),
            lease_token: held.lease_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(released.released);
    let (answer, answered_at) = waiting.await.unwrap();
    println!(
        "{backend:?}: ReleaseLease handed the lease to a waiting caller (on the cluster, on another replica) in {:?}",
        answered_at.saturating_duration_since(released_at)
    );
    assert!(!answer.found);
    assert!(
        !answer.lease_token.is_empty(),
        "the waiter takes the released lease (a 5 s wait could not outlast a 10 s lease otherwise)"
    );
    // Releasing again holds nothing.
    let again = holder
        .release_lease(ReleaseLeaseRequest {
            key,
            lease_token: held.lease_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.released);
}

/// Waiters get the holder's fill (COALESCED). When an invalidation voids the lease instead, one waiter gets a
/// fresh lease, the others wait for its fill, and the voided holder's late fill is refused.
async fn waiters_get_the_fill_and_a_voided_lease_passes_on(backend: Backend) {
    let replicas = Replicas::start(backend.config()).await;
    let (mut holder, waiter) = (replicas.client(0).await, replicas.client(1).await);
    let key = format!("product:{}", unique("waiters"));

    let held = get_leased(&mut holder, &key).await;
    assert!(!held.lease_token.is_empty());
    let spawn_waiters = |n: usize| {
        let waiters = futures::stream::FuturesUnordered::new();
        for _ in 0..n {
            let (mut waiter, key) = (waiter.clone(), key.clone());
            waiters.push(tokio::spawn(
                async move { get_leased(&mut waiter, &key).await },
            ));
        }
        waiters
    };
    let waiters = spawn_waiters(5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    holder
        .set(fill(&key, b"one", &held.lease_token))
        .await
        .unwrap();
    for answer in futures::future::join_all(waiters).await {
        let answer = answer.unwrap();
        assert!(answer.found);
        assert_eq!(&answer.value[..], b"one");
        assert!(answer.lease_token.is_empty());
        assert!(matches!(answer.source(), Source::Coalesced | Source::Hit));
    }

    // Voided: the lease passes to one waiter.
    let keys = vec![key.clone()];
    holder.invalidate(InvalidateRequest { keys }).await.unwrap();
    let held = get_leased(&mut holder, &key).await;
    assert!(!held.lease_token.is_empty());
    let mut waiters = spawn_waiters(5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let keys = vec![key.clone()];
    holder.invalidate(InvalidateRequest { keys }).await.unwrap();
    use futures::StreamExt;
    let first = waiters.next().await.unwrap().unwrap();
    assert!(
        !first.found,
        "nobody filled: the voided holder's value is never handed out"
    );
    assert!(
        !first.lease_token.is_empty(),
        "the first waiter answered takes the voided lease's place"
    );
    let late = holder.set(fill(&key, b"old", &held.lease_token)).await;
    assert_error(&late.unwrap_err(), Code::FailedPrecondition, "LEASE_LOST");
    holder
        .set(fill(&key, b"two", &first.lease_token))
        .await
        .unwrap();
    while let Some(answer) = waiters.next().await {
        let answer = answer.unwrap();
        assert_eq!(&answer.value[..], b"two");
        assert!(answer.lease_token.is_empty());
    }
}

/// Every way a lease is voided before its fill: Invalidate, InvalidatePattern, a plain Set. Each fill is then
/// LEASE_LOST and writes nothing (a plain Set's value stays).
async fn writes_and_invalidations_void_leases(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let id = unique("void");
    for how in ["invalidate", "pattern", "set"] {
        let key = format!("product:{id}{how}:price");
        let held = get_leased(&mut client, &key).await;
        assert!(!held.lease_token.is_empty(), "{how}");
        match how {
            "invalidate" => {
                let keys = vec![key.clone()];
                client.invalidate(InvalidateRequest { keys }).await.unwrap();
            }
            "pattern" => {
                let pattern = format!("product:{id}{how}:*");
                let request = InvalidatePatternRequest { pattern };
                client.invalidate_pattern(request).await.unwrap();
            }
            _ => {
                client.set(set_request(&key, b"newer")).await.unwrap();
            }
        }
        let refused = client.set(fill(&key, b"older", &held.lease_token)).await;
        assert_error(
            &refused.unwrap_err(),
            Code::FailedPrecondition,
            "LEASE_LOST",
        );
        let after = cached(&mut client, &key).await;
        let expected: Option<&[u8]> = (how == "set").then_some(b"newer");
        assert_eq!(after.found.then_some(&after.value[..]), expected, "{how}");
    }
}

/// A forged token, a token of another key and a token that was never one are LEASE_LOST and never write; the
/// real token still fills afterwards. ReleaseLease and RenewLease with them hold nothing.
async fn forged_and_foreign_tokens_are_lease_lost(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let id = unique("forged");
    let (key, other) = (format!("product:{id}a"), format!("product:{id}b"));
    let held = get_leased(&mut client, &key).await;
    let held_other = get_leased(&mut client, &other).await;
    assert!(!held.lease_token.is_empty() && !held_other.lease_token.is_empty());
    assert_ne!(held.lease_token, held_other.lease_token);
    let mut flipped = held.lease_token.to_vec();
    *flipped.last_mut().unwrap() ^= 1;
    let forged: [Vec<u8>; 5] = [
        flipped,
        held_other.lease_token.to_vec(),
        b"x".to_vec(),
        vec![0; 9],
        vec![7; 64],
    ];
    for token in &forged {
        let refused = client.set(fill(&key, b"forged", token)).await;
        assert_error(
            &refused.unwrap_err(),
            Code::FailedPrecondition,
            "LEASE_LOST",
        );
        assert!(
            !cached(&mut client, &key).await.found,
            "a refused fill writes nothing"
        );
        let renew = client
            .renew_lease(RenewLeaseRequest {
                key: key.clone(),
                lease_token: token.clone().into(),
            })
            .await;
        assert_error(&renew.unwrap_err(), Code::FailedPrecondition, "LEASE_LOST");
        let release = client
            .release_lease(ReleaseLeaseRequest {
                key: key.clone(),
                lease_token: token.clone().into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!release.released);
    }
    let renewed = client
        .renew_lease(RenewLeaseRequest {
            key: key.clone(),
            lease_token: held.lease_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.ttl.is_some_and(|ttl| ttl.seconds > 0));
    client
        .set(fill(&key, b"real", &held.lease_token))
        .await
        .unwrap();
    assert_eq!(&cached(&mut client, &key).await.value[..], b"real");
    client
        .set(fill(&other, b"other", &held_other.lease_token))
        .await
        .unwrap();
}

/// With stale_while_revalidate, an expired value is served STALE to every leased caller, and exactly one of them
/// also gets a lease to refresh it; its fill is then a HIT.
async fn a_stale_value_is_served_with_one_refresh_lease(backend: Backend) {
    let mut config = backend.config();
    config.policies.insert(
        0,
        PolicyConfig {
            stale_while_revalidate: Some(Duration::from_secs(60)),
            ..PolicyConfig::new("brief", "brief:*", Duration::from_secs(1))
        },
    );
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("brief:{}", unique("swr"));
    let held = get_leased(&mut client, &key).await;
    client
        .set(fill(&key, b"old", &held.lease_token))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // A plain cache-only Get takes no lease; without a loader, an expired value is a MISS to it.
    while cached(&mut client, &key).await.source() == Source::Hit {
        assert!(Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answers = futures::future::join_all((0..6).map(|_| {
        let (mut client, key) = (client.clone(), key.clone());
        async move { get_leased(&mut client, &key).await }
    }))
    .await;
    let mut tokens: Vec<_> = answers
        .iter()
        .filter(|a| !a.lease_token.is_empty())
        .map(|a| a.lease_token.clone())
        .collect();
    for answer in &answers {
        assert!(answer.found);
        assert_eq!(&answer.value[..], b"old");
        assert_eq!(answer.source(), Source::Stale);
    }
    assert_eq!(tokens.len(), 1, "exactly one refresh lease");
    let token = tokens.pop().unwrap();
    client.set(fill(&key, b"new", &token)).await.unwrap();
    let after = get_leased(&mut client, &key).await;
    assert_eq!(
        (&after.value[..], after.source()),
        (&b"new"[..], Source::Hit)
    );
}

/// BatchGet with `lease` hands a lease per missing key and answers the others; BatchSet fills with their tokens
/// and reports the keys whose lease an invalidation voided in lease_lost_keys.
async fn batches_lease_per_key(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let id = unique("batch");
    let keys: Vec<String> = (0..4).map(|k| format!("product:{id}x{k}")).collect();
    client.set(set_request(&keys[1], b"one")).await.unwrap();
    let results = client
        .batch_get(BatchGetRequest {
            keys: keys.clone(),
            cache_only: false,
            lease: true,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let leased: Vec<bool> = results.iter().map(|r| !r.lease_token.is_empty()).collect();
    assert_eq!(leased, [true, false, true, true]);
    assert!(results[1].found && results[1].source() == Source::Hit);
    let keys_to_void = vec![keys[3].clone()];
    client
        .invalidate(InvalidateRequest { keys: keys_to_void })
        .await
        .unwrap();
    let entries = [0, 2, 3]
        .iter()
        .map(|&i| {
            fill(
                &keys[i],
                format!("v{i}").as_bytes(),
                &results[i].lease_token,
            )
        })
        .collect();
    let outcome = client
        .batch_set(BatchSetRequest { entries })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome.written, 2);
    assert_eq!(outcome.lease_lost_keys, [keys[3].clone()]);
    assert_eq!(&cached(&mut client, &keys[2]).await.value[..], b"v2");
    assert!(!cached(&mut client, &keys[3]).await.found);
}

/// Two leased BatchGets over the same cold keys, sent together (one in reverse order) on two replicas, never wait
/// on each other: each caller fills what it leased, and every key of both answers is either a value or a lease.
/// A key answered with neither is a lease wait that ran out (5 s here) because each batch held some of the keys
/// and waited for the rest, which the other held: a deadlock only `lease_wait` broke.
async fn overlapping_leased_batches_never_wait_on_each_other(backend: Backend) {
    let replicas = Replicas::start(backend.config()).await;
    let clients = [replicas.client(0).await, replicas.client(1).await];
    let (rounds, mut stuck) = (30, 0);
    for _ in 0..rounds {
        let id = unique("overlap");
        let keys: Vec<String> = (0..8).map(|k| format!("product:{id}x{k}")).collect();
        let callers = clients.iter().enumerate().map(|(c, client)| {
            let (mut client, mut keys) = (client.clone(), keys.clone());
            if c == 1 {
                keys.reverse();
            }
            async move {
                let request = BatchGetRequest {
                    keys,
                    cache_only: false,
                    lease: true,
                };
                let results = client
                    .batch_get(request)
                    .await
                    .unwrap()
                    .into_inner()
                    .results;
                let entries: Vec<SetRequest> = results
                    .iter()
                    .filter(|r| !r.lease_token.is_empty())
                    .map(|r| fill(&r.key, r.key.as_bytes(), &r.lease_token))
                    .collect();
                if !entries.is_empty() {
                    client.batch_set(BatchSetRequest { entries }).await.unwrap();
                }
                results
                    .iter()
                    .filter(|r| !r.found && r.lease_token.is_empty())
                    .count()
            }
        });
        stuck += futures::future::join_all(callers)
            .await
            .into_iter()
            .sum::<usize>();
    }
    println!(
        "{backend:?}: {rounds} rounds of two overlapping leased batches of 8 keys: {stuck} keys answered after a lease wait ran out"
    );
    assert_eq!(stuck, 0, "overlapping leased batches waited on each other");
}

/// A leased BatchGet of 1,000 cold keys whose lowest key another caller holds, with a 2 s deadline (the
/// entity waits up to 5 s): the read waits for that key until shortly before its deadline, then takes every
/// other key's lease in one last round. It answers (not DEADLINE_EXCEEDED), with a lease on each of the 999 free
/// keys, and every one of those tokens fills.
async fn a_big_leased_batch_behind_a_held_key_answers_within_its_deadline(backend: Backend) {
    let mut config = backend.config();
    config.policies.insert(
        0,
        PolicyConfig {
            lease_ttl: Some(Duration::from_secs(60)),
            lease_wait: Some(Duration::from_secs(5)),
            ..PolicyConfig::new("patient", "patient:*", Duration::from_secs(3600))
        },
    );
    let replicas = Replicas::start(config).await;
    let (mut holder, mut reader) = (replicas.client(0).await, replicas.client(1).await);
    let id = unique("big");
    let keys: Vec<String> = (0..1000).map(|k| format!("patient:{id}a{k:03}")).collect();
    assert!(
        !get_leased(&mut holder, &keys[0])
            .await
            .lease_token
            .is_empty()
    );
    let mut request = Request::new(BatchGetRequest {
        keys: keys.clone(),
        cache_only: false,
        lease: true,
    });
    request.set_timeout(Duration::from_secs(2));
    let results = reader
        .batch_get(request)
        .await
        .expect("a leased batch answers within its deadline")
        .into_inner()
        .results;
    let leased: Vec<&BatchGetResult> = results
        .iter()
        .filter(|r| !r.lease_token.is_empty())
        .collect();
    println!(
        "{backend:?}: a leased batch of 1000 behind a held key: {} leases handed out",
        leased.len()
    );
    assert!(!results[0].found && results[0].lease_token.is_empty());
    assert_eq!(leased.len(), 999, "every free key's lease is handed out");
    let entries = leased
        .iter()
        .map(|r| fill(&r.key, b"filled", &r.lease_token))
        .collect();
    let outcome = reader
        .batch_set(BatchSetRequest { entries })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        outcome.written, 999,
        "every token handed out holds its lease"
    );
}

/// A batch keeps a lease while it waits for another key; an invalidation voids the kept lease meanwhile, and a
/// third caller takes the key's lease anew. When the batch answers, it hands out no token for the voided lease:
/// two callers holding tokens for one key would both load it.
async fn a_lease_voided_while_the_batch_waits_is_not_handed_out(backend: Backend) {
    let replicas = Replicas::start(lapse_and_patient(backend)).await;
    let (mut holder, mut third) = (replicas.client(0).await, replicas.client(0).await);
    let id = unique("void");
    let (kept, waited) = (format!("lapse:{id}y"), format!("patient:{id}x"));
    let held = get_leased(&mut holder, &waited).await;
    assert!(!held.lease_token.is_empty());
    let mut reader = replicas.client(1).await;
    let keys = vec![kept.clone(), waited.clone()];
    let batch = tokio::spawn(async move {
        let request = BatchGetRequest {
            keys,
            cache_only: false,
            lease: true,
        };
        reader
            .batch_get(request)
            .await
            .unwrap()
            .into_inner()
            .results
    });
    // Sequencing only: the batch takes `kept` and starts waiting for `waited`.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        get_leased(&mut third, &kept).await.lease_token.is_empty(),
        "the waiting batch holds the lower key"
    );
    third
        .invalidate(InvalidateRequest {
            keys: vec![kept.clone()],
        })
        .await
        .unwrap();
    let anew = get_leased(&mut third, &kept).await;
    assert!(
        !anew.lease_token.is_empty(),
        "the voided lease is free again"
    );
    holder
        .release_lease(ReleaseLeaseRequest {
            key: waited.clone(),
            lease_token: held.lease_token,
        })
        .await
        .unwrap();
    let results = batch.await.unwrap();
    println!(
        "{backend:?}: the batch's token for the voided key: {} bytes; for the released key: {} bytes",
        results[0].lease_token.len(),
        results[1].lease_token.len()
    );
    assert!(
        results[0].lease_token.is_empty(),
        "a voided lease was handed out while another caller holds the key's lease"
    );
    assert!(!results[1].lease_token.is_empty());
}

/// A leased BatchGet whose loader-filled key is slow runs out of its deadline after the caller-filled key's lease
/// was taken: the lease goes back with the failed call, so the next caller gets it at once instead of waiting out
/// its TTL.
async fn a_read_that_fails_after_taking_a_lease_gives_it_back(backend: Backend) {
    let loader = TestLoader::start().await;
    loader.source.set_delay(Duration::from_secs(3));
    let mut config = short_leases(backend);
    config
        .loaders
        .push(grpc_loader("user:*", &format!("http://{}", loader.addr)));
    let replicas = Replicas::start(config).await;
    let (mut reader, mut next) = (replicas.client(0).await, replicas.client(1).await);
    let id = unique("fails");
    let leased = format!("long:{id}");
    let mut request = Request::new(BatchGetRequest {
        keys: vec![format!("user:{id}"), leased.clone()],
        cache_only: false,
        lease: true,
    });
    request.set_timeout(Duration::from_millis(500));
    // DEADLINE_EXCEEDED from the server, or CANCELLED when the client's own timer fires first.
    let failed = reader.batch_get(request).await.unwrap_err();
    println!(
        "{backend:?}: the read ran out of its deadline: {:?}",
        failed.code()
    );
    // The give-back runs in the background of the failed call: the next leased Get gets the lease within the
    // lease TTL (60 s) only if it went back; its own wait (300 ms) may see the release land.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if !get_leased(&mut next, &leased).await.lease_token.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lease taken by the failed read was stranded"
        );
    }
}

/// Policies `lapse:*` (lease wait 300 ms) and `patient:*` (5 s), both with 60 s leases, on `backend`.
fn lapse_and_patient(backend: Backend) -> Config {
    let mut config = backend.config();
    for (name, wait_ms) in [("lapse", 300), ("patient", 5000)] {
        config.policies.insert(
            0,
            PolicyConfig {
                lease_ttl: Some(Duration::from_secs(60)),
                lease_wait: Some(Duration::from_millis(wait_ms)),
                ..PolicyConfig::new(name, &format!("{name}:*"), Duration::from_secs(3600))
            },
        );
    }
    config
}

/// A leased BatchGet whose answer is refused as too large gives back the lease it took: the next caller's leased
/// Get (which waits 300 ms) takes it, instead of waiting out a 60 s lease nobody will fill.
async fn a_refused_answer_gives_its_leases_back(backend: Backend) {
    let mut config = lapse_and_patient(backend);
    config.limits.max_response_bytes = 4096;
    config.limits.max_value_bytes = 4096;
    let replicas = Replicas::start(config).await;
    let (mut reader, mut next) = (replicas.client(0).await, replicas.client(1).await);
    let id = unique("refused");
    let big: Vec<String> = (0..2).map(|i| format!("product:{id}big{i}")).collect();
    for key in &big {
        reader.set(set_request(key, &[7; 3000])).await.unwrap();
    }
    let leased = format!("lapse:{id}");
    let request = BatchGetRequest {
        keys: vec![big[0].clone(), big[1].clone(), leased.clone()],
        cache_only: false,
        lease: true,
    };
    let refused = reader.batch_get(request).await.unwrap_err();
    assert_error(&refused, Code::ResourceExhausted, "RESPONSE_TOO_LARGE");
    let answer = get_leased(&mut next, &leased).await;
    assert!(
        !answer.lease_token.is_empty(),
        "the refused answer's lease was stranded"
    );
}

/// A leased BatchGet whose answer, once built, the replica's memory budget refuses (other calls hold the rest of
/// it) gives back the lease it took: the next caller's leased Get (which waits 300 ms) takes it, instead of
/// waiting out a 60 s lease nobody will fill. Three never-ending requests hold most of a 208 KiB budget.
async fn an_answer_the_memory_budget_refuses_gives_its_leases_back(backend: Backend) {
    const KIB: usize = 1024;
    let mut config = lapse_and_patient(backend);
    config.limits.max_value_bytes = 64 * KIB;
    config.limits.max_request_bytes = 80 * KIB;
    config.limits.max_response_bytes = 128 * KIB;
    config.limits.caller_memory_bytes = 208 * KIB;
    config.limits.memory_budget_bytes = 208 * KIB;
    config.limits.request_body_timeout = Duration::from_secs(60);
    let replicas = Replicas::start(config).await;
    let (mut reader, mut next) = (replicas.client(0).await, replicas.client(1).await);
    let id = unique("budget");
    let big = format!("product:{id}big");
    reader.set(set_request(&big, &[7; 60 * KIB])).await.unwrap();

    // Never-ending Sets: each holds the 55 KiB of its body that arrived.
    let mut holder = RawCaller::connect(replicas.servers[0].addr.port(), None).await;
    let frame = grpc_frame(&set_request(&format!("product:{id}held"), &[1; 56 * KIB]));
    let partial = frame.slice(..55 * KIB);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(holder.start("Set", partial.clone(), false).await.unwrap());
    }

    // Until the held bytes leave no room for the answer (a read that still fits gives its lease back itself).
    let mut attempt = 0;
    let leased = loop {
        attempt += 1;
        assert!(attempt < 500, "the memory budget never refused the answer");
        let leased = format!("lapse:{id}x{attempt}");
        let request = BatchGetRequest {
            keys: vec![big.clone(), leased.clone()],
            cache_only: false,
            lease: true,
        };
        match reader.batch_get(request).await {
            Ok(answer) => {
                let token = answer.into_inner().results[1].lease_token.clone();
                let release = ReleaseLeaseRequest {
                    key: leased,
                    lease_token: token,
                };
                reader.release_lease(release).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(refused) => {
                assert_error(&refused, Code::ResourceExhausted, "MEMORY_BUDGET");
                break leased;
            }
        }
    };
    let answer = get_leased(&mut next, &leased).await;
    assert!(
        !answer.lease_token.is_empty(),
        "the lease in the answer the memory budget refused was stranded"
    );
    drop(held);
}

/// A leased BatchGet holds a lower key's lease while it waits (up to 5 s) for a key another caller holds; its
/// loader-filled key fails at once, and so does the read. The task settling its leases stops waiting with it and
/// gives the lower key back: the next caller's leased Get (which waits 300 ms) takes it.
async fn a_failed_read_stops_waiting_and_gives_its_leases_back(backend: Backend) {
    let loader = TestLoader::start().await;
    loader.source.set_failing(true);
    let mut config = lapse_and_patient(backend);
    config
        .loaders
        .push(grpc_loader("user:*", &format!("http://{}", loader.addr)));
    let replicas = Replicas::start(config).await;
    let (mut holder, mut reader, mut next) = (
        replicas.client(0).await,
        replicas.client(1).await,
        replicas.client(0).await,
    );
    let id = unique("gone");
    let (lower, held) = (format!("lapse:{id}"), format!("patient:{id}"));
    assert!(!get_leased(&mut holder, &held).await.lease_token.is_empty());
    let request = BatchGetRequest {
        keys: vec![format!("user:{id}"), lower.clone(), held.clone()],
        cache_only: false,
        lease: true,
    };
    let failed = reader.batch_get(request).await.unwrap_err();
    println!("{backend:?}: the read failed: {:?}", failed.code());
    let answer = get_leased(&mut next, &lower).await;
    assert!(
        !answer.lease_token.is_empty(),
        "the failed read's settling task kept the lower key's lease while it waited"
    );
}

on_both_stores!(
    a_refused_answer_gives_its_leases_back,
    an_answer_the_memory_budget_refuses_gives_its_leases_back,
    a_failed_read_stops_waiting_and_gives_its_leases_back,
    a_lease_voided_while_the_batch_waits_is_not_handed_out,
    a_read_that_fails_after_taking_a_lease_gives_it_back,
    a_big_leased_batch_behind_a_held_key_answers_within_its_deadline,
    overlapping_leased_batches_never_wait_on_each_other,
    a_dead_holder_is_replaced_after_the_lease_ttl,
    release_hands_the_lease_to_a_waiter,
    waiters_get_the_fill_and_a_voided_lease_passes_on,
    writes_and_invalidations_void_leases,
    forged_and_foreign_tokens_are_lease_lost,
    a_stale_value_is_served_with_one_refresh_lease,
    batches_lease_per_key,
);

/// Taking a lease needs the write scope: a read-only token's leased Get, ReleaseLease and RenewLease are
/// refused OUT_OF_SCOPE (its plain Get is fine); a token's lease works only inside its write scopes; and another
/// namespace's caller cannot fill with it (LEASE_LOST, nothing written).
#[tokio::test]
async fn a_lease_outside_the_callers_write_scope_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let token = |secret: &str, name: &str, namespace: &str, write: &str| {
        format!(
            "[[tokens]]\nname = {name:?}\nnamespace = {namespace:?}\nsha256 = {:?}\nread = [\"*\"]\n\
             write = [{write}]\ninvalidate = []\n\n",
            hash_token(secret)
        )
    };
    let text = token("secret-ro", "ro", "shop", "")
        + &token("secret-products", "products", "shop", "\"product:*\"")
        + &token("secret-other", "other", "other", "\"product:*\"");
    std::fs::write(&file, text).unwrap();
    let mut config = Backend::Embedded.config();
    config.auth.enabled = true;
    config.auth.tokens_file = Some(file);
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let as_caller = |secret: &str, request: GetRequest| {
        let mut request = Request::new(request);
        let value = format!("Bearer {secret}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
        request
    };
    let key = format!("product:{}", unique("scope"));
    let refused = client.get(as_caller("secret-ro", leased_get(&key))).await;
    assert_error(
        &refused.unwrap_err(),
        Code::PermissionDenied,
        "OUT_OF_SCOPE",
    );
    let plain = GetRequest {
        lease: false,
        ..leased_get(&key)
    };
    let answer = client.get(as_caller("secret-ro", plain)).await.unwrap();
    assert!(answer.into_inner().lease_token.is_empty());
    let outside = client
        .get(as_caller("secret-products", leased_get("user:1")))
        .await;
    assert_error(
        &outside.unwrap_err(),
        Code::PermissionDenied,
        "OUT_OF_SCOPE",
    );
    let held = client
        .get(as_caller("secret-products", leased_get(&key)))
        .await
        .unwrap()
        .into_inner();
    assert!(!held.lease_token.is_empty());
    let mut release = Request::new(ReleaseLeaseRequest {
        key: key.clone(),
        lease_token: held.lease_token.clone(),
    });
    let value = "Bearer secret-ro".parse().unwrap();
    release.metadata_mut().insert("authorization", value);
    let refused = client.release_lease(release).await;
    assert_error(
        &refused.unwrap_err(),
        Code::PermissionDenied,
        "OUT_OF_SCOPE",
    );
    let mut renew = Request::new(RenewLeaseRequest {
        key: key.clone(),
        lease_token: held.lease_token.clone(),
    });
    let value = "Bearer secret-ro".parse().unwrap();
    renew.metadata_mut().insert("authorization", value);
    let refused = client.renew_lease(renew).await;
    assert_error(
        &refused.unwrap_err(),
        Code::PermissionDenied,
        "OUT_OF_SCOPE",
    );
    // Another tenant, with write scope on the same key name in its own namespace, cannot fill with this token.
    let mut foreign = Request::new(fill(&key, b"foreign", &held.lease_token));
    let value = "Bearer secret-other".parse().unwrap();
    foreign.metadata_mut().insert("authorization", value);
    let refused = client.set(foreign).await;
    assert_error(
        &refused.unwrap_err(),
        Code::FailedPrecondition,
        "LEASE_LOST",
    );
    let unfilled = GetRequest {
        lease: false,
        cache_only: true,
        ..leased_get(&key)
    };
    for secret in ["secret-other", "secret-products"] {
        let answer = client.get(as_caller(secret, unfilled.clone())).await;
        assert!(!answer.unwrap().into_inner().found, "nothing written");
    }
}

/// The failover interleaving: a holder takes the lease and reads the old row; the writer updates the row and
/// Invalidates (acknowledged only once a replica holds it); then the key's primary dies and its replica takes
/// over; the holder's late fill reaches the new primary. It is refused LEASE_LOST (the promoted replica had the
/// invalidation, which voided the lease), and the cache holds nothing old.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_fill_after_a_failover_is_still_refused() {
    let cluster = Arc::new(RedisCluster::start_async(&[]).await);
    let server = TestServer::start_with(crate::support::config_on(&cluster)).await;
    let mut client = server.client().await;
    let key = format!("product:{}", unique("failover"));
    let held = get_leased(&mut client, &key).await;
    assert!(!held.lease_token.is_empty());
    // The holder's slow query read "old"; the writer updates the row and invalidates.
    let keys = vec![key.clone()];
    client.invalidate(InvalidateRequest { keys }).await.unwrap();
    let primary = cluster.primary_of(&format!("{{{key}}}"));
    let failing = cluster.clone();
    tokio::task::spawn_blocking(move || {
        failing.kill_node(primary);
        failing.wait_for_failover(primary);
    })
    .await
    .unwrap();

    let started = Instant::now();
    let late = loop {
        // Until the server's slot map has followed the failover, the key's node is unavailable.
        match client.set(fill(&key, b"old", &held.lease_token)).await {
            Err(status) if status.code() == Code::Unavailable => {
                assert!(started.elapsed() < Duration::from_secs(30), "{status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other,
        }
    };
    println!(
        "the late fill reached the promoted primary after {:?}",
        started.elapsed()
    );
    assert_error(&late.unwrap_err(), Code::FailedPrecondition, "LEASE_LOST");
    assert!(
        !cached(&mut client, &key).await.found,
        "nothing old is cached"
    );
    // The next leased read takes a fresh lease on the new primary and fills.
    let again = get_leased(&mut client, &key).await;
    assert!(!again.found && !again.lease_token.is_empty());
    client
        .set(fill(&key, b"new", &again.lease_token))
        .await
        .unwrap();
    assert_eq!(&cached(&mut client, &key).await.value[..], b"new");
}
