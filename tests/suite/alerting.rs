//! The chart's alert rules (`templates/prometheusrule.yaml`) and Grafana dashboard (`dashboards/cachecoord.json`)
//! query only metrics a live server exports: a rule or panel on a misspelt or missing metric never fires or
//! stays empty, silently. (scripts/helm-check checks the rules with promtool and parses the dashboard.)

use crate::support::cluster::RedisCluster;
use crate::support::loader::TestLoader;
use crate::support::process::ServerProcess;
use crate::support::{get, set, unique};
use cachecoord::proto::cache_service_client::CacheServiceClient;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Every `cachecoord_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("cachecoord_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// A server on the shared cluster with a policy and a loader route, after a Set, a hit and a miss that loads:
/// every metric named by the alert rules and by the dashboard's queries has a sample in /metrics (histograms by
/// their `_bucket` series).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_query_is_exported() {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/cachecoord");
    let rules = std::fs::read_to_string(format!("{chart}/templates/prometheusrule.yaml")).unwrap();
    let dashboard = std::fs::read_to_string(format!("{chart}/dashboards/cachecoord.json")).unwrap();
    let used: BTreeSet<String> = metric_names(&rules)
        .into_iter()
        .chain(metric_names(&dashboard))
        .collect();
    for expected in [
        "cachecoord_lookups_total",
        "cachecoord_redis_evicted_keys_total",
        "cachecoord_breaker_open",
        "cachecoord_request_duration_seconds_bucket",
    ] {
        assert!(used.contains(expected), "{expected} not found in {used:?}");
    }

    let loader = TestLoader::start().await;
    let config = format!(
        r#"
[store]
redis_url = "{}"
redis_health_interval_ms = 100

[[policies]]
name = "user"
pattern = "user:*"
ttl_secs = 3600

{}
"#,
        RedisCluster::shared().url(),
        loader.route_toml("user:*"),
    );
    let server = ServerProcess::start(&config).await;
    let mut client = CacheServiceClient::connect(server.uri()).await.unwrap();
    let (written, loaded) = (
        format!("user:{}", unique("")),
        format!("user:{}", unique("")),
    );
    set(&mut client, &written, b"set").await;
    get(&mut client, &written).await;
    loader.source.put(&loaded, b"loaded");
    get(&mut client, &loaded).await;

    // Replicas' series appear once their clients connected and were polled.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = server.scrape().await;
        let exported: BTreeSet<&str> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split(['{', ' ']).next())
            .collect();
        let missing: Vec<&String> = used
            .iter()
            .filter(|name| !exported.contains(name.as_str()))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "used by the alerts or the dashboard but not exported: {missing:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
