//! grpc.health.v1 and server reflection (v1 and v1alpha) are served, so generic tools and any language can find the
//! API; the README's first call from a shell works as written.

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

/// Reflection v1alpha (what grpcurl 1.8 speaks) lists the same services as v1.
#[tokio::test]
async fn reflection_v1alpha_lists_the_services() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let server = TestServer::start(Backend::Embedded).await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in ["cachecoord.v1.CacheService", "grpc.health.v1.Health"] {
        assert!(names.contains(&service.to_string()), "{names:?}");
    }
}

/// The README's "from a shell" block (`buf curl` through `npx`), run as written by `sh` against the real binary
/// with its default configuration (only the port differs from `cargo run`'s 50051), answers what the README shows
/// (every line of its JSON but the TTLs, which count down).
#[tokio::test]
async fn the_readme_shell_call_works() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (_, after) = readme
        .split_once("runs this block against a real server")
        .expect("the README marks its shell block");
    let (script, rest) = code_block("```sh\n", after);
    let (expected, _) = code_block("```json\n", rest);
    assert!(script.contains("127.0.0.1:50051"), "{script}");

    let server = crate::support::process::ServerProcess::start("").await;
    let script = script.replace("127.0.0.1:50051", &format!("127.0.0.1:{}", server.port));
    let output = tokio::process::Command::new("sh")
        .args(["-ec", &script])
        .output()
        .await
        .expect("sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the README's shell call failed (scripts/test installs node and npm):\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answered: Vec<&str> = stdout.lines().map(str::trim).collect();
    for line in expected.lines().map(str::trim) {
        let counts_down = line.starts_with("\"ttl");
        assert!(
            counts_down || answered.contains(&line),
            "{line:?} missing from:\n{stdout}"
        );
    }
    assert_eq!(answered.len(), expected.lines().count(), "{stdout}");
}

/// The body of the first code block fenced with `fence` in `text`, and the text after it.
fn code_block<'t>(fence: &str, text: &'t str) -> (&'t str, &'t str) {
    let (_, rest) = text.split_once(fence).expect(fence);
    rest.split_once("\n```").unwrap()
}
