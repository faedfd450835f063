//! Near-cache coherence over three replicas, measured: replica A writes (Invalidate, Set, InvalidatePattern) while
//! B and C hold the older value in their near-caches. After A's acknowledgement, B and C are read at once and then
//! polled until they answer the new state. A round is stale when either served the older value after the
//! acknowledgement; the window is how long that lasted. The test prints the stale rounds and the window's
//! percentiles per operation; it asserts only that every window ends (no wall-clock thresholds). In strict mode
//! (`near_cache = "strict"`) it asserts that no round is stale, and prints what the writes cost.
//!
//! A read or write answered UNAVAILABLE (a Redis command past its timeout, or CLUSTERDOWN while a cluster that
//! took a starved node for failed recovers) is retried after 10 ms, as a client would: such an answer serves no
//! value, older or newer, so it neither makes a round stale nor ends a window. How many there were is printed. The
//! two tests take turns: each alone keeps both cores busy.

use crate::support::cluster::RedisCluster;
use crate::support::{Client, TestServer, config_on, set_request, unique};
use cachecoord::config::{Config, NearCacheMode};
use cachecoord::proto::{
    GetRequest, GetResponse, InvalidatePatternRequest, InvalidateRequest, Source, StatsRequest,
};
use std::time::{Duration, Instant};
use tonic::{Code, Status};

/// Held by the test running: they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Rounds per operation.
const ROUNDS: usize = 1_000;

/// Near-caching `user:*` for a minute, on `cluster`.
fn near_cached_config(cluster: &RedisCluster) -> Config {
    let mut config = config_on(cluster);
    config.near_cache.max_bytes = 16 * 1024 * 1024;
    let user = config
        .policies
        .iter_mut()
        .find(|p| p.name == "user")
        .unwrap();
    user.near_cache_ttl = Some(Duration::from_secs(60));
    config
}

/// [`near_cached_config`] with `user` in strict mode.
fn strict_config(cluster: &RedisCluster) -> Config {
    let mut config = near_cached_config(cluster);
    for policy in &mut config.policies {
        if policy.name == "user" {
            policy.near_cache = NearCacheMode::Strict;
        }
    }
    config
}

/// The write a round makes on A after B and C hold `old`.
#[derive(Clone, Copy, Debug)]
enum Write {
    Invalidate,
    Set,
    InvalidatePattern,
}

/// One operation's tally over its rounds.
struct Tally {
    write: Write,
    rounds: usize,
    /// Rounds in which B or C answered the older value after A's acknowledgement.
    stale_rounds: usize,
    /// Per replica and round: from the acknowledgement to the first answer of the new state (zero when the first
    /// read after the acknowledgement was already new).
    windows: Vec<Duration>,
    /// How long each round's write took to be acknowledged.
    writes: Vec<Duration>,
    /// Reads and writes answered UNAVAILABLE, and retried.
    unavailable: usize,
}

impl Tally {
    fn print(&self, mode: &str) {
        let mut windows = self.windows.clone();
        windows.sort();
        let at = |q: f64| windows[((windows.len() as f64 * q) as usize).min(windows.len() - 1)];
        let mut stale: Vec<Duration> = windows.iter().copied().filter(|w| !w.is_zero()).collect();
        stale.sort();
        let stale_at = |q: f64| {
            stale
                .get(((stale.len() as f64 * q) as usize).min(stale.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        println!(
            "near-cache coherence [{mode}] {:?}: {} of {} rounds stale after the ack; window over all \
             replica-rounds p50 {:?} p99 {:?} max {:?}; over stale ones p50 {:?} p99 {:?}",
            self.write,
            self.stale_rounds,
            self.rounds,
            at(0.5),
            at(0.99),
            windows[windows.len() - 1],
            stale_at(0.5),
            stale_at(0.99),
        );
        let mut writes = self.writes.clone();
        writes.sort();
        let write_at = |q: f64| writes[((writes.len() as f64 * q) as usize).min(writes.len() - 1)];
        println!(
            "  ({mode} {:?}: acknowledgement p50 {:?} p99 {:?} max {:?}; {} answers UNAVAILABLE, retried)",
            self.write,
            write_at(0.5),
            write_at(0.99),
            writes[writes.len() - 1],
            self.unavailable
        );
    }
}

/// A cache-only read of `key`; `None` when it was answered UNAVAILABLE (counted in `unavailable`).
async fn read(client: &mut Client, key: &str, unavailable: &mut usize) -> Option<GetResponse> {
    let request = GetRequest {
        key: key.into(),
        cache_only: true,
        lease: false,
    };
    answered(client.get(request).await, unavailable)
        .await
        .map(tonic::Response::into_inner)
}

/// `Some` answer, or `None` (counted in `unavailable`, after a 10 ms pause before the retry) for UNAVAILABLE; any
/// other error fails the test.
async fn answered<T>(result: Result<T, Status>, unavailable: &mut usize) -> Option<T> {
    match result {
        Ok(answer) => Some(answer),
        Err(status) => {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            *unavailable += 1;
            // 30 s of retries: a cluster that took a starved node for failed is whole again well before.
            assert!(
                *unavailable < 3_000,
                "UNAVAILABLE {unavailable} times: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            None
        }
    }
}

/// Reads `key` on `client` until it is a near-cache hit of `value`.
async fn until_near_hit(client: &mut Client, key: &str, value: &[u8], unavailable: &mut usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = read(client, key, unavailable).await;
        if let Some(answer) = answer
            && answer.source() == Source::NearHit
            && answer.value == value
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never became a near-cache hit"
        );
    }
}

/// Polls `key` on `client` from the acknowledgement on until it no longer answers `old`; answers how long that
/// took (zero when the first answer was already new).
async fn window(
    client: &mut Client,
    key: &str,
    old: &[u8],
    acknowledged: Instant,
    unavailable: &mut usize,
) -> Duration {
    let mut first = true;
    loop {
        let Some(answer) = read(client, key, unavailable).await else {
            continue;
        };
        if !(answer.found && answer.value == old) {
            return if first {
                Duration::ZERO
            } else {
                acknowledged.elapsed()
            };
        }
        first = false;
        assert!(
            acknowledged.elapsed() < Duration::from_secs(10),
            "{key}: the older value was served for 10 s"
        );
    }
}

/// Runs `ROUNDS` rounds of `write` over A, B and C.
async fn rounds(write: Write, clients: &mut [Client; 3]) -> Tally {
    let [on_a, on_b, on_c] = clients;
    let group = unique("coh");
    let key = format!("user:{group}:k");
    let mut tally = Tally {
        write,
        rounds: ROUNDS,
        stale_rounds: 0,
        windows: Vec::with_capacity(2 * ROUNDS),
        writes: Vec::with_capacity(ROUNDS),
        unavailable: 0,
    };
    let (mut on_b_unavailable, mut on_c_unavailable) = (0, 0);
    for round in 0..ROUNDS {
        let old = format!("old{round}");
        while answered(
            on_a.set(set_request(&key, old.as_bytes())).await,
            &mut tally.unavailable,
        )
        .await
        .is_none()
        {}
        futures::join!(
            until_near_hit(on_b, &key, old.as_bytes(), &mut on_b_unavailable),
            until_near_hit(on_c, &key, old.as_bytes(), &mut on_c_unavailable)
        );
        let writing = Instant::now();
        while answered(
            apply(write, on_a, &key, &group, round).await,
            &mut tally.unavailable,
        )
        .await
        .is_none()
        {}
        let acknowledged = Instant::now();
        tally.writes.push(acknowledged - writing);
        let (on_b_window, on_c_window) = futures::join!(
            window(
                on_b,
                &key,
                old.as_bytes(),
                acknowledged,
                &mut on_b_unavailable
            ),
            window(
                on_c,
                &key,
                old.as_bytes(),
                acknowledged,
                &mut on_c_unavailable
            )
        );
        if !on_b_window.is_zero() || !on_c_window.is_zero() {
            tally.stale_rounds += 1;
        }
        tally.windows.extend([on_b_window, on_c_window]);
    }
    tally.unavailable += on_b_unavailable + on_c_unavailable;
    tally
}

/// One round's write on A.
async fn apply(
    write: Write,
    on_a: &mut Client,
    key: &str,
    group: &str,
    round: usize,
) -> Result<(), Status> {
    match write {
        Write::Invalidate => {
            let request = InvalidateRequest {
                keys: vec![key.to_owned()],
            };
            on_a.invalidate(request).await.map(drop)
        }
        Write::Set => {
            let request = set_request(key, format!("new{round}").as_bytes());
            on_a.set(request).await.map(drop)
        }
        Write::InvalidatePattern => {
            let request = InvalidatePatternRequest {
                pattern: format!("user:{group}:*"),
            };
            on_a.invalidate_pattern(request).await.map(drop)
        }
    }
}

/// Three replicas with the near-cache on for `user`, in the default mode: every window ends, and the stale rounds
/// and windows are printed (the bound is documented in docs/near-cache.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn default_mode_windows_are_measured_over_three_replicas() {
    every_write_over_three_replicas("default", near_cached_config).await;
}

/// Three replicas with `user` in strict mode: no round of any operation is stale (B and C never answer the older
/// value once A's write is acknowledged); the writes' acknowledgement times are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_mode_serves_no_older_value_after_the_ack_over_three_replicas() {
    for tally in every_write_over_three_replicas("strict", strict_config).await {
        assert_eq!(
            tally.stale_rounds, 0,
            "strict mode: {:?} left the older value served after the acknowledgement",
            tally.write
        );
    }
}

/// The rounds of every write over three replicas on a cluster of their own, each with `config`; prints each
/// write's tally and, at the end, the replicas' notice delays. Answers the tallies.
async fn every_write_over_three_replicas(
    mode: &str,
    config: fn(&RedisCluster) -> Config,
) -> Vec<Tally> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start_async(&[]).await;
    let servers = [
        TestServer::start_with(config(&cluster)).await,
        TestServer::start_with(config(&cluster)).await,
        TestServer::start_with(config(&cluster)).await,
    ];
    let mut clients = [
        servers[0].client().await,
        servers[1].client().await,
        servers[2].client().await,
    ];
    let mut tallies = Vec::new();
    for write in [Write::Invalidate, Write::Set, Write::InvalidatePattern] {
        let started = Instant::now();
        let tally = rounds(write, &mut clients).await;
        tally.print(mode);
        println!(
            "  ({write:?}: {} rounds in {:?})",
            ROUNDS,
            started.elapsed()
        );
        tallies.push(tally);
    }
    print_notice_delays(mode, &mut clients).await;
    tallies
}

/// Prints each replica's notice delays as its Stats reports them (from the send time each notice carries).
async fn print_notice_delays(mode: &str, clients: &mut [Client; 3]) {
    for (name, client) in ["A", "B", "C"].iter().zip(clients.iter_mut()) {
        let stats = client.stats(StatsRequest {}).await.unwrap().into_inner();
        let near = stats.near_cache.expect("the near-cache is on");
        let micros = |d: Option<prost_types::Duration>| {
            d.map_or(0, |d| d.seconds * 1_000_000 + i64::from(d.nanos) / 1_000)
        };
        println!(
            "notice delay [{mode}] on {name}: p50 {} µs, p99 {} µs (last 1024 of {} notices)",
            micros(near.notice_delay_p50),
            micros(near.notice_delay_p99),
            near.notices_measured
        );
    }
}
