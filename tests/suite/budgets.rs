//! Budgets one caller cannot exceed at everyone else's expense: the bytes of one answer, and the size of a
//! loader's value.

use crate::support::loader::TestLoader;
use crate::support::{Backend, TestServer, assert_error, cached, set_request, unique};
use cachecoord::proto::{BatchGetRequest, GetRequest, Source};
use tonic::Code;

/// A BatchGet naming one large value many times (a 10 KB request for a 50 MiB answer) is refused before the
/// answer is built: RESOURCE_EXHAUSTED, reason RESPONSE_TOO_LARGE. Other calls go on.
#[tokio::test]
async fn an_amplifying_batch_get_is_refused() {
    let mut config = Backend::Embedded.config();
    config.limits.max_response_bytes = 4 * 1024 * 1024;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("big"));
    client
        .set(set_request(&key, &vec![7u8; 512 * 1024]))
        .await
        .unwrap();

    let amplified = client
        .batch_get(BatchGetRequest {
            keys: vec![key.clone(); 100],
            cache_only: true,
        })
        .await;

    assert_error(
        &amplified.unwrap_err(),
        Code::ResourceExhausted,
        "RESPONSE_TOO_LARGE",
    );
    let within = client
        .batch_get(BatchGetRequest {
            keys: vec![key.clone(); 4],
            cache_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(within.results.len(), 4);
}

/// A loader's value is held to `limits.max_value_bytes` like a Set's: refused (UNAVAILABLE, LOADER_FAILED),
/// neither cached nor served.
#[tokio::test]
async fn a_loader_value_over_the_limit_is_neither_cached_nor_served() {
    let loader = TestLoader::start().await;
    let mut config = Backend::Embedded.config();
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("huge-row"));
    loader.source.put(&key, &vec![1u8; 2 * 1024 * 1024]);

    let answer = client
        .get(GetRequest {
            key: key.clone(),
            cache_only: false,
        })
        .await;

    assert_error(&answer.unwrap_err(), Code::Unavailable, "LOADER_FAILED");
    assert_eq!(cached(&mut client, &key).await.source(), Source::Miss);
}
