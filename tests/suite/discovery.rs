//! grpc.health.v1 and server reflection v1 are served, so generic tools and any language can find the API.

use crate::support::{Backend, TestServer};
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// The health service answers SERVING for the server as a whole and for cachecoord.v1.CacheService.
#[tokio::test]
async fn health_reports_serving() {
    let server = TestServer::start(Backend::Embedded).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "cachecoord.v1.CacheService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "service {service:?}");
    }
}

/// Reflection lists CacheService and health, and serves the descriptor of the cachecoord proto file.
#[tokio::test]
async fn reflection_lists_the_services() {
    let server = TestServer::start(Backend::Embedded).await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let requests = tokio_stream::iter([
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("cachecoord.v1.CacheService".into()),
    ])
    .map(|message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    });
    let mut responses = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"cachecoord.v1.CacheService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a file descriptor");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

/// A one-node Redis Cluster without `cluster-announce-ip` (common in development) reports an empty host in
/// `CLUSTER SLOTS`, meaning "the address you asked": cachecoord starts on it and serves.
#[tokio::test]
async fn a_one_node_cluster_without_announced_address_serves() {
    use crate::support::cluster::{redis_cli, redis_server};
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::ports::free_port_with_offset(10_000);
    let mut redis = tokio::process::Command::new(redis_server())
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--cluster-enabled",
            "yes",
            "--appendonly",
            "no",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    while redis_cli(port, &["PING"]).trim() != "PONG" {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    redis_cli(port, &["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
    while !redis_cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut config = Backend::Embedded.config();
    config.store.redis_url = Some(format!("redis-cluster://127.0.0.1:{port}"));
    config.store.invalidation_replica_acks = 0;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    crate::support::set(&mut client, "user:one-node", b"served").await;

    let answer = crate::support::cached(&mut client, "user:one-node").await;
    assert_eq!(&answer.value[..], b"served");
    redis.kill().await.unwrap();
}
