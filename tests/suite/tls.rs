//! TLS everywhere it matters: mutual TLS on the gRPC port (a client without a certificate from the configured CA
//! is refused; one with it works, with a bearer token on top), TLS plus an ACL user towards Redis, and a Redis
//! Cluster that speaks only TLS.

use crate::support::cluster::{RedisCluster, StandaloneRedis};
use crate::support::pki::Pki;
use crate::support::{Backend, Client, TestServer, cached, config_on, set, unique};
use cachecoord::auth::hash_token;
use cachecoord::proto::cache_service_client::CacheServiceClient;
use cachecoord::proto::{GetRequest, InvalidatePatternRequest, InvalidateRequest, SetRequest};
use std::collections::BTreeSet;
use std::time::Duration;
use tonic::Request;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Connects over TLS trusting the test CA, presenting `identity` (`client`, `rogue-client`) when given.
async fn connect(
    server: &TestServer,
    pki: &Pki,
    identity: Option<&str>,
) -> Result<CacheServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.read("ca.pem")))
        .domain_name("localhost");
    if let Some(name) = identity {
        tls = tls.identity(Identity::from_pem(
            pki.read(&format!("{name}.pem")),
            pki.read(&format!("{name}.key")),
        ));
    }
    let channel = Channel::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(CacheServiceClient::new(channel))
}

fn authorized<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = "Bearer tls-test-token".parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

/// Whether a Get over `client` succeeds (a refused handshake may surface at connect or at the first call).
async fn can_call(client: Result<CacheServiceClient<Channel>, tonic::transport::Error>) -> bool {
    let Ok(mut client) = client else {
        return false;
    };
    let request = GetRequest {
        key: "user:1".into(),
        cache_only: true,
        lease: false,
    };
    client.get(authorized(request)).await.is_ok()
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_ca() {
    let pki = Pki::generate();
    let tokens = pki.path("tokens.toml");
    let hash = hash_token("tls-test-token");
    std::fs::write(
        &tokens,
        format!("[[tokens]]\nname = \"tls\"\nnamespace = \"tls\"\nsha256 = \"{hash}\"\nread = [\"*\"]\nwrite = [\"*\"]\n"),
    )
    .unwrap();
    let mut config = Backend::Embedded.config();
    config.tls.cert_file = Some(pki.path("server.pem"));
    config.tls.key_file = Some(pki.path("server.key"));
    config.tls.client_ca_file = Some(pki.path("ca.pem"));
    config.auth.enabled = true;
    config.auth.tokens_file = Some(tokens);
    let server = TestServer::start_with(config).await;

    // With the CA's client certificate (and a token): works.
    let mut client = connect(&server, &pki, Some("client")).await.unwrap();
    let key = format!("user:{}", unique(""));
    let set = SetRequest {
        key: key.clone(),
        value: b"over mTLS".to_vec().into(),
        ttl: None,
        version: None,
        lease_token: Default::default(),
    };
    client.set(authorized(set)).await.unwrap();
    let get = GetRequest {
        key,
        cache_only: true,
        lease: false,
    };
    let answer = client.get(authorized(get)).await.unwrap().into_inner();
    assert_eq!(&answer.value[..], b"over mTLS");

    // No certificate, a certificate from another CA, or no TLS at all: refused.
    assert!(
        !can_call(connect(&server, &pki, None).await).await,
        "no client certificate"
    );
    assert!(
        !can_call(connect(&server, &pki, Some("rogue-client")).await).await,
        "certificate from a rogue CA"
    );
    let plaintext = CacheServiceClient::connect(server.uri()).await;
    assert!(!can_call(plaintext).await, "plaintext");
    // The server is still fine afterwards.
    assert!(can_call(connect(&server, &pki, Some("client")).await).await);
}

#[tokio::test]
async fn redis_over_tls_with_an_acl_user() {
    let pki = Pki::generate();
    let redis = StandaloneRedis::start_secured(&pki, "cachecoord", "acl-pass-1");
    let mut config = Backend::Embedded.config();
    config.store.redis_url = Some(format!("rediss://127.0.0.1:{}", redis.port));
    config.store.redis_username = Some("cachecoord".into());
    config.store.redis_password = Some("acl-pass-1".into());
    config.store.redis_tls_ca_file = Some(pki.path("ca.pem"));
    let server = TestServer::start_with(config.clone()).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique(""));
    let set = SetRequest {
        key: key.clone(),
        value: b"through TLS".to_vec().into(),
        ttl: None,
        version: None,
        lease_token: Default::default(),
    };
    client.set(set).await.unwrap();
    let get = GetRequest {
        key,
        cache_only: true,
        lease: false,
    };
    let answer = client.get(get).await.unwrap().into_inner();
    assert_eq!(&answer.value[..], b"through TLS");
    server.stop().await;

    // A wrong password cannot start a server against it.
    config.store.redis_password = Some("wrong".into());
    config.store.redis_connect_timeout = std::time::Duration::from_millis(1500);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = cachecoord::server::serve(config, listener, std::future::pending()).await;
    assert!(refused.is_err(), "a wrong ACL password must not connect");
}

/// A Redis Cluster whose nodes speak only TLS, to clients, on the cluster bus and to their replicas, reached with
/// `rediss-cluster://` and one seed: the other nodes, learned from the slot map, are connected over TLS and
/// verified against the CA; every primary serves its keys; invalidations are fenced (`WAIT`) by replicas that
/// replicate over TLS; a cross-group pattern reaches every primary; and when a primary is killed, its promoted
/// replica, connected over TLS ahead of the failover, takes its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_that_speaks_only_tls() {
    let pki = Pki::generate();
    let cluster = RedisCluster::start_tls(&pki).await;
    assert!(cluster.url().starts_with("rediss-cluster://"));
    let mut config = config_on(&cluster);
    config.store.redis_url = Some(format!("rediss-cluster://127.0.0.1:{}", cluster.ports[0]));
    config.store.redis_tls_ca_file = Some(pki.path("ca.pem"));
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    let group = unique("tls");
    let keys: Vec<String> = (0..30).map(|i| format!("user:{group}x{i}")).collect();
    for key in &keys {
        set(&mut client, key, key.as_bytes()).await;
    }
    let primaries: BTreeSet<u16> = keys
        .iter()
        .map(|key| cluster.primary_of(&format!("{{{key}}}")))
        .collect();
    assert_eq!(primaries.len(), 3, "the keys span every primary");
    for key in &keys {
        assert_eq!(cached(&mut client, key).await.value, key.as_bytes());
    }

    // Fenced invalidation: acknowledged only once a replica (replicating over TLS) holds the deletion.
    client
        .invalidate(InvalidateRequest {
            keys: keys[..3].to_vec(),
        })
        .await
        .expect("an invalidation fenced by replicas over TLS");
    for key in &keys[..3] {
        assert!(!cached(&mut client, key).await.found, "{key} survived");
    }
    // A cross-group pattern scans every primary.
    client
        .invalidate_pattern(InvalidatePatternRequest {
            pattern: format!("user:{group}x*"),
        })
        .await
        .expect("a cross-group pattern over TLS");
    for port in cluster.primaries() {
        let left = cluster.keys_on_node(port, &format!("*{group}*"));
        assert!(left.is_empty(), "left on {port}: {left:?}");
    }

    // A primary killed: its promoted replica takes its keys.
    let victim = cluster.primary_of(&format!("{{{}}}", keys[0]));
    cluster.kill_node(victim);
    cluster.wait_for_failover(victim);
    let written = until_written(&mut client, &keys[0]).await;
    assert_eq!(cached(&mut client, &keys[0]).await.value, written);
    assert_ne!(cluster.primary_of(&format!("{{{}}}", keys[0])), victim);
}

/// Writes `key` until a write succeeds (the slot map follows a failover within a refresh); answers the value.
async fn until_written(client: &mut Client, key: &str) -> Vec<u8> {
    let value = b"after the failover".to_vec();
    for _ in 0..100 {
        match client.set(crate::support::set_request(key, &value)).await {
            Ok(_) => return value,
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{key} was never written after the failover");
}
