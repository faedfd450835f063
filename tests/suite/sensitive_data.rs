//! Secrets are never cached: a Set of a key or JSON value that names one is refused with SENSITIVE_DATA (and the
//! server stays healthy); a loader result that names one is served but never written.

use crate::support::loader::TestLoader;
use crate::support::{Backend, TestServer, assert_error, set_request, unique};
use cachecoord::proto::{GetRequest, Source};
use tonic::Code;

/// `user:1:password`, `session:…` and a JSON value with a `password` field are refused; ordinary data is not.
async fn secrets_are_refused_on_set(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let id = unique("");
    for (key, value) in [
        (format!("user:{id}:password"), &b"hunter2"[..]),
        (format!("session:{id}"), b"opaque"),
        (
            format!("user:{id}"),
            br#"{"name":"Ada","password":"hunter2"}"#,
        ),
        (format!("user:{id}"), br#"{"profile":{"apiToken":"abc"}}"#),
    ] {
        let status = client.set(set_request(&key, value)).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, "SENSITIVE_DATA");
    }
    let fine = format!("user:{id}");
    client
        .set(set_request(&fine, br#"{"name":"Ada"}"#))
        .await
        .unwrap();
    let answer = client
        .get(GetRequest {
            key: fine,
            cache_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        answer.found,
        "the server stays healthy and serves ordinary data"
    );
}

on_both_stores!(secrets_are_refused_on_set);

/// A loader result holding a `password` field is answered LOADED every time and never cached.
#[tokio::test]
async fn sensitive_loader_results_are_served_but_not_cached() {
    let loader = TestLoader::start().await;
    let mut config = Backend::Cluster.config();
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique("secret"));
    loader
        .source
        .put(&key, br#"{"name":"Ada","password":"hunter2"}"#);
    for _ in 0..2 {
        let answer = client
            .get(GetRequest {
                key: key.clone(),
                cache_only: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.source(), Source::Loaded);
        assert!(answer.found);
    }
    assert_eq!(
        loader.source.loads_of(&key),
        2,
        "the value must not have been cached"
    );
    let cached = client
        .get(GetRequest {
            key,
            cache_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!cached.found);
}
