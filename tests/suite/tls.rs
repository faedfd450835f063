//! TLS everywhere it matters: mutual TLS on the gRPC port (a client without a certificate from the configured CA
//! is refused; one with it works, with a bearer token on top), and TLS plus an ACL user towards Redis.

use crate::support::cluster::StandaloneRedis;
use crate::support::pki::Pki;
use crate::support::{Backend, TestServer, unique};
use cachecoord::auth::hash_token;
use cachecoord::proto::cache_service_client::CacheServiceClient;
use cachecoord::proto::{GetRequest, SetRequest};
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
