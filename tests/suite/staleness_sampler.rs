//! The production staleness sampler (docs/reliability.md, "Measuring staleness in production"): sampled hits are
//! re-read through the entity's loader in the background and compared with what was served. A green run reports
//! no stale entry; a source changed behind the cache's back is reported, at its true fraction; an open breaker
//! keeps every sample from the loader; a burst of hits never puts more checks at the loader than the bound, and
//! the hits are answered while the loader answers nothing.

use crate::support::cluster::RedisCluster;
use crate::support::loader::TestLoader;
use crate::support::process::{ServerProcess, metric};
use crate::support::{Backend, Client, TestServer, get, set, unique};
use cachecoord::config::{Config, PolicyConfig, StalenessSamplerConfig};
use cachecoord::proto::cache_service_client::CacheServiceClient;
use cachecoord::proto::{ConsistencyChecks, InvalidateRequest, Source, StatsRequest};
use std::time::{Duration, Instant};

on_both_stores!(
    a_green_run_reports_no_stale_entry,
    a_source_changed_without_invalidation_is_reported_at_its_fraction,
    no_sample_reaches_a_loader_whose_breaker_is_open,
    a_burst_of_hits_puts_no_more_checks_at_the_loader_than_the_bound,
);

/// `probe:*` sampled at 100 %, through `loader`, with a 300 ms grace and bounds no test reaches unless it means to.
fn sampled(backend: Backend, loader: &TestLoader) -> Config {
    let mut config = backend.config();
    let probe = PolicyConfig {
        staleness_sample_rate: Some(1.0),
        xfetch_beta: Some(0.0),
        ..PolicyConfig::new("probe", "probe:*", Duration::from_secs(300))
    };
    config.policies.insert(0, probe);
    loader.route(&mut config, "probe:*");
    config.staleness_sampler = StalenessSamplerConfig {
        max_in_flight: 64,
        max_checks_per_sec: 100_000,
        grace: Duration::from_millis(300),
    };
    config
}

fn keys(prefix: &str, count: usize) -> Vec<String> {
    let id = unique(prefix);
    (0..count).map(|i| format!("probe:{id}n{i}")).collect()
}

/// A hit the sampler is offered: from the store or the near-cache, a value or a remembered absence.
fn is_hit(source: Source) -> bool {
    matches!(source, Source::Hit | Source::NearHit | Source::Negative)
}

/// The `probe` entity's checks and staleness ratio, as Stats reports them.
async fn checks(client: &mut Client) -> (ConsistencyChecks, f64) {
    let stats = client.stats(StatsRequest {}).await.unwrap().into_inner();
    let probe = stats
        .entities
        .into_iter()
        .find(|e| e.entity == "probe")
        .expect("Stats lists the probe entity");
    (probe.consistency_checks.unwrap(), probe.staleness_ratio)
}

fn total(checks: &ConsistencyChecks) -> u64 {
    let ConsistencyChecks {
        fresh,
        stale,
        in_flight,
        dropped,
        breaker_open,
        loader_error,
        no_loader,
    } = *checks;
    fresh + stale + in_flight + dropped + breaker_open + loader_error + no_loader
}

/// Polls Stats until `count` checks have a result (a hang guard of 60 s, not a latency bound).
async fn until_checked(client: &mut Client, count: u64) -> (ConsistencyChecks, f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (checks, ratio) = self::checks(client).await;
        if total(&checks) >= count {
            assert_eq!(
                total(&checks),
                count,
                "more checks than sampled hits: {checks:?}"
            );
            return (checks, ratio);
        }
        assert!(
            Instant::now() < deadline,
            "only {checks:?} of {count} checks ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads every key once; answers how many reads were hits (each one sampled at 100 %).
async fn read_all(client: &mut Client, keys: &[String]) -> u64 {
    let mut hits = 0;
    for key in keys {
        if is_hit(get(client, key).await.source()) {
            hits += 1;
        }
    }
    hits
}

/// Writes as a well-behaved service does: the source first, then a Set of the same value (10 keys) or an
/// Invalidate (10 keys); 2 keys the source lacks are remembered absent. Every hit, read twice, checks fresh.
async fn a_green_run_reports_no_stale_entry(backend: Backend) {
    let loader = TestLoader::start().await;
    let server = TestServer::start_with(sampled(backend, &loader)).await;
    let mut client = server.client().await;
    let keys = keys("green", 40);
    for key in &keys[..38] {
        loader.source.put(key, b"v1");
    }
    assert_eq!(
        read_all(&mut client, &keys).await,
        0,
        "the first reads load"
    );
    for key in &keys[..10] {
        loader.source.put(key, b"v2");
        set(&mut client, key, b"v2").await;
    }
    for key in &keys[10..20] {
        loader.source.put(key, b"v3");
        let invalidate = InvalidateRequest {
            keys: vec![key.clone()],
        };
        client.invalidate(invalidate).await.unwrap();
    }

    let hits = read_all(&mut client, &keys).await + read_all(&mut client, &keys).await;

    let (checks, ratio) = until_checked(&mut client, hits).await;
    println!("green run ({backend:?}): {hits} hits sampled, {checks:?}");
    assert_eq!(hits, 70, "30 keys hit twice, the 10 invalidated once");
    assert_eq!((checks.fresh, checks.stale, checks.in_flight), (hits, 0, 0));
    assert_eq!(ratio, 0.0);
}

/// The control: 15 of 50 cached keys change in the source and nobody invalidates them. One read of each reports
/// exactly those 15 stale (a grace later the cache still serves them), the other 35 fresh: ratio 0.3.
async fn a_source_changed_without_invalidation_is_reported_at_its_fraction(backend: Backend) {
    let loader = TestLoader::start().await;
    let server = TestServer::start_with(sampled(backend, &loader)).await;
    let mut client = server.client().await;
    let keys = keys("control", 50);
    for key in &keys {
        loader.source.put(key, b"v1");
    }
    read_all(&mut client, &keys).await;
    for key in keys
        .iter()
        .step_by(10)
        .chain(keys.iter().skip(3).step_by(5))
    {
        loader.source.put(key, b"changed behind the cache");
    }

    let hits = read_all(&mut client, &keys).await;

    let (checks, ratio) = until_checked(&mut client, hits).await;
    println!("control ({backend:?}): {hits} hits sampled, {checks:?}, staleness ratio {ratio}");
    assert_eq!(hits, 50);
    assert_eq!((checks.fresh, checks.stale, checks.in_flight), (35, 15, 0));
    assert!((ratio - 0.3).abs() < 1e-9, "staleness ratio {ratio}");
}

/// The loader fails until its breaker opens; then hits of cached keys are sampled, and every sample is skipped as
/// `breaker_open`: the loader receives no call at all (not even the breaker's probe).
async fn no_sample_reaches_a_loader_whose_breaker_is_open(backend: Backend) {
    let loader = TestLoader::start().await;
    let mut config = sampled(backend, &loader);
    let route = config.loaders.last_mut().unwrap();
    route.breaker_failures = 2;
    route.breaker_cooldown = Duration::from_secs(600);
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let keys = keys("breaker", 10);
    for key in &keys {
        loader.source.put(key, b"v1");
    }
    read_all(&mut client, &keys).await;
    loader.source.set_failing(true);
    for missing in self::keys("breaker_miss", 2) {
        let load = client.get(cachecoord::proto::GetRequest {
            key: missing,
            cache_only: false,
            lease: false,
        });
        assert!(load.await.is_err(), "the failing loader fails the miss");
    }
    let calls_before = loader
        .source
        .loads
        .load(std::sync::atomic::Ordering::Relaxed);

    let hits = read_all(&mut client, &keys).await;

    let (checks, _) = until_checked(&mut client, hits).await;
    assert_eq!(hits, 10);
    assert_eq!(checks.breaker_open, 10, "{checks:?}");
    assert_eq!(
        loader
            .source
            .loads
            .load(std::sync::atomic::Ordering::Relaxed),
        calls_before,
        "a sample reached the loader while its breaker was open"
    );
}

/// At most 2 checks at once: with the loader holding every call, 30 hits at once are all answered; 2 checks
/// reach the loader and the other 28 samples are dropped, not queued. Once the loader answers, the 2 end fresh.
async fn a_burst_of_hits_puts_no_more_checks_at_the_loader_than_the_bound(backend: Backend) {
    let loader = TestLoader::start().await;
    let mut config = sampled(backend, &loader);
    config.staleness_sampler.max_in_flight = 2;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let keys = keys("burst", 30);
    for key in &keys {
        loader.source.put(key, b"v1");
    }
    read_all(&mut client, &keys).await;
    loader.source.close_gate();
    loader.source.reset_most_in_flight();

    let burst = keys.iter().map(|key| {
        let mut client = client.clone();
        async move { get(&mut client, key).await.source() }
    });
    let sources = futures::future::join_all(burst).await;

    assert!(sources.iter().all(|s| *s == Source::Hit), "{sources:?}");
    let (held, _) = until_checked(&mut client, 28).await;
    assert_eq!(held.dropped, 28, "{held:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while loader.source.in_flight() < 2 {
        assert!(
            Instant::now() < deadline,
            "the 2 admitted checks never reached the loader"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    loader.source.open_gate();
    let (checks, _) = until_checked(&mut client, 30).await;
    println!(
        "burst ({backend:?}): {checks:?}, most at the loader at once {}",
        loader.source.most_in_flight()
    );
    assert_eq!((checks.fresh, checks.dropped), (2, 28));
    assert_eq!(loader.source.most_in_flight(), 2);
}

/// The control on a server process on the cluster, with the near-cache on for the sampled entity: near-cache hits are checked too, and /metrics agrees with Stats:
/// `cachecoord_consistency_checks_total{entity,result}` and `cachecoord_staleness_ratio{entity}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_cache_hits_are_checked_and_metrics_agree_with_stats() {
    let loader = TestLoader::start().await;
    let config = format!(
        r#"
[store]
redis_url = "{}"

[near_cache]
max_bytes = 16777216

[staleness_sampler]
grace_ms = 300
max_in_flight = 4096
max_checks_per_sec = 100000

[[policies]]
name = "probe"
pattern = "probe:*"
ttl_secs = 300
xfetch_beta = 0.0
near_cache_ttl_secs = 60
staleness_sample_rate = 1.0

{}
"#,
        RedisCluster::shared().url(),
        loader.route_toml("probe:*"),
    );
    let server = ServerProcess::start(&config).await;
    let mut client = CacheServiceClient::connect(server.uri()).await.unwrap();
    let keys = keys("near", 20);
    for key in &keys {
        loader.source.put(key, b"v1");
    }
    read_all(&mut client, &keys).await;
    let stale_keys: Vec<&String> = keys.iter().step_by(4).collect();
    for key in &stale_keys {
        loader.source.put(key, b"changed behind the cache");
    }

    // Each key is read until the near-cache answers it; every hit on the way is sampled. How many hits that takes
    // depends on how soon the near-cache hears its first heartbeat (on a loaded machine, over a hundred), and each
    // stale check holds its place for the grace: room for every check, so none is dropped.
    let (mut hits, mut stale_hits, mut near_hits) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    for key in &keys {
        loop {
            assert!(
                Instant::now() < deadline,
                "{key} never became a near-cache hit"
            );
            let source = get(&mut client, key).await.source();
            if is_hit(source) {
                hits += 1;
                stale_hits += u64::from(stale_keys.contains(&key));
            }
            if source == Source::NearHit {
                near_hits += 1;
                break;
            }
        }
    }

    let (checks, ratio) = until_checked(&mut client, hits).await;
    println!(
        "near-cache control: {hits} hits ({near_hits} near), {checks:?}, staleness ratio {ratio}"
    );
    assert_eq!(near_hits, 20);
    assert_eq!(checks.dropped, 0, "{checks:?}");
    assert_eq!(
        (checks.stale, checks.fresh + checks.in_flight),
        (stale_hits, hits - stale_hits)
    );
    assert_eq!(checks.in_flight, 0);
    let text = server.scrape().await;
    let series = |result: &str| {
        metric(
            &text,
            "cachecoord_consistency_checks_total",
            &[("entity", "probe"), ("result", result)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        [series("fresh"), series("stale")],
        [checks.fresh as f64, checks.stale as f64],
        "{text}"
    );
    let gauge = metric(&text, "cachecoord_staleness_ratio", &[("entity", "probe")]).unwrap();
    assert!(
        (gauge - ratio).abs() < 1e-9 && ratio > 0.0,
        "gauge {gauge}, Stats {ratio}"
    );
}
