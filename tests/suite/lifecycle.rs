//! SIGTERM drains: health flips to NOT_SERVING, in-flight calls complete, new calls are refused, exit code 0.

use crate::support::loader::TestLoader;
use crate::support::process::ServerProcess;
use cachecoord::proto::GetRequest;
use cachecoord::proto::cache_service_client::CacheServiceClient;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;

/// Five slow Gets are in flight when SIGTERM arrives: they all complete with their values; health says
/// NOT_SERVING during the drain; once it ends new connections are refused; the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_calls_and_exits_cleanly() {
    let loader = TestLoader::start().await;
    loader.source.set_delay(Duration::from_millis(1500));
    let config = format!(
        r#"
[shutdown]
drain_delay_ms = 500
grace_period_ms = 10000

{}
"#,
        loader.route_toml("user:*")
    );
    let mut server = ServerProcess::start(&config).await;
    let client = CacheServiceClient::connect(server.uri()).await.unwrap();
    let mut reads = loader.source.subscribe_reads();
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let key = format!("user:slow{i}");
            loader.source.put(&key, key.as_bytes());
            let mut client = client.clone();
            tokio::spawn(async move {
                let request = GetRequest {
                    key: key.clone(),
                    cache_only: false,
                    lease: false,
                };
                (key, client.get(request).await)
            })
        })
        .collect();
    for _ in 0..5 {
        reads.recv().await.unwrap();
    }

    server.terminate();
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.health().await != Some(ServingStatus::NotServing) {
        assert!(Instant::now() < deadline, "health never said NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for call in calls {
        let (key, answer) = call.await.unwrap();
        let answer = answer
            .expect("an in-flight call failed during the drain")
            .into_inner();
        assert_eq!(answer.value, key.as_bytes());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while CacheServiceClient::connect(server.uri()).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "new connections were still accepted after the drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = tokio::time::timeout(Duration::from_secs(15), server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

/// Kubernetes injects `CACHECOORD_SERVICE_HOST`, `CACHECOORD_PORT`, … into every pod of a namespace with a
/// Service named `cachecoord`: the server starts anyway, reading only the variables that name a setting. A
/// secret that looks like a number stays text, and a number given as text still fills a numeric setting.
#[tokio::test]
async fn service_link_variables_do_not_stop_start_up() {
    let server = crate::support::process::ServerProcess::start_with_env(
        "",
        &[
            ("CACHECOORD_SERVICE_HOST", "10.0.0.1"),
            ("CACHECOORD_SERVICE_PORT", "50051"),
            ("CACHECOORD_PORT", "tcp://10.0.0.1:50051"),
            ("CACHECOORD_PORT_50051_TCP_PROTO", "tcp"),
            ("CACHECOORD_STORE__REDIS_PASSWORD", "123456"),
            ("CACHECOORD_STORE__REDIS_USERNAME", "true"),
            ("CACHECOORD_LIMITS__MAX_IN_FLIGHT", "7"),
        ],
    )
    .await;
    assert_eq!(
        server.health().await,
        Some(tonic_health::pb::health_check_response::ServingStatus::Serving)
    );
}

/// Only names shaped like Kubernetes service links are skipped: a misspelt setting (one underscore where two
/// belong) still stops start-up, instead of being silently ignored (a replica quietly on its embedded store).
#[test]
fn a_misspelt_setting_in_the_environment_is_refused() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cachecoord"))
        .arg("check-config")
        .env("CACHECOORD_STORE_REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "accepted: {stderr}");
    assert!(stderr.contains("store_redis_url"), "{stderr}");
}
