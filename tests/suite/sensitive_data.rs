//! Secrets are never cached: a Set of a key or JSON value that names one is refused with SENSITIVE_DATA (and the
//! server stays healthy); a loader result that names one is served but never written. A value that looks like
//! JSON but is not exactly one JSON document (too deep for a recursive parser, a byte-order mark, trailing data,
//! invalid UTF-8) is refused the same way: a JSON reader may still see the secret in it.

use crate::support::loader::TestLoader;
use crate::support::{Backend, TestServer, assert_error, cached, found_value, set_request, unique};
use cachecoord::proto::{BatchSetRequest, GetRequest, Source};
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
            lease: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        answer.found,
        "the server stays healthy and serves ordinary data"
    );
}

/// Values in which a JSON reader sees a `password` field, but which a strict recursive parser gives up on.
fn disguised_secrets() -> Vec<(&'static str, Vec<u8>)> {
    let nested_pad = format!(
        r#"{{"password":"hunter2","pad":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let deep_field = format!(
        r#"{}{{"password":"hunter2"}}{}"#,
        r#"{"a":"#.repeat(128),
        "}".repeat(128)
    );
    vec![
        ("200 nested arrays after the field", nested_pad.into_bytes()),
        ("the field 129 objects deep", deep_field.into_bytes()),
        (
            "a UTF-8 byte-order mark first",
            b"\xEF\xBB\xBF{\"password\":\"hunter2\"}".to_vec(),
        ),
        (
            "a second document after the first",
            b"{\"password\":\"hunter2\"}\n{\"name\":\"Ada\"}".to_vec(),
        ),
        (
            "invalid UTF-8 in another field",
            b"{\"password\":\"hunter2\",\"bio\":\"\xFF\"}".to_vec(),
        ),
    ]
}

/// Each disguised secret is refused with SENSITIVE_DATA by Set and by BatchSet (which then writes nothing, not
/// even its harmless entry); deeply nested JSON without a secret is still cached.
async fn disguised_secrets_are_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let mut accepted = Vec::new();
    for (case, value) in disguised_secrets() {
        let key = format!("user:{}", unique(""));
        let harmless = format!("user:{}", unique(""));
        match client.set(set_request(&key, &value)).await {
            Ok(_) => accepted.push(format!("Set: {case}")),
            Err(status) => assert_error(&status, Code::InvalidArgument, "SENSITIVE_DATA"),
        }
        let batch = BatchSetRequest {
            entries: vec![set_request(&harmless, b"{}"), set_request(&key, &value)],
        };
        match client.batch_set(batch).await {
            Ok(_) => accepted.push(format!("BatchSet: {case}")),
            Err(status) => assert_error(&status, Code::InvalidArgument, "SENSITIVE_DATA"),
        }
        for written in [&key, &harmless] {
            if found_value(cached(&mut client, written).await).is_some() {
                accepted.push(format!("{written} cached: {case}"));
            }
        }
    }
    assert!(
        accepted.is_empty(),
        "disguised secrets accepted: {accepted:#?}"
    );

    let deep_but_harmless = format!(
        r#"{{"name":"Ada","tags":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let key = format!("user:{}", unique(""));
    client
        .set(set_request(&key, deep_but_harmless.as_bytes()))
        .await
        .unwrap();
    assert_eq!(
        found_value(cached(&mut client, &key).await).as_deref(),
        Some(deep_but_harmless.as_bytes()),
        "no depth limit refuses well-formed JSON"
    );
}

on_both_stores!(secrets_are_refused_on_set, disguised_secrets_are_refused);

/// A loader result holding a `password` field is answered LOADED every time and never cached.
#[tokio::test]
async fn sensitive_loader_results_are_served_but_not_cached() {
    let loader = TestLoader::start().await;
    let mut config = Backend::Cluster.config();
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let key = format!("user:{}", unique(""));
    loader
        .source
        .put(&key, br#"{"name":"Ada","password":"hunter2"}"#);
    for _ in 0..2 {
        let answer = client
            .get(GetRequest {
                key: key.clone(),
                cache_only: false,
                lease: false,
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
            lease: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!cached.found);
}

/// A loader result holding a disguised secret is served, but never cached.
#[tokio::test]
async fn disguised_secrets_from_a_loader_are_not_cached() {
    let loader = TestLoader::start().await;
    let mut config = Backend::Cluster.config();
    loader.route(&mut config, "user:*");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let mut cached_cases = Vec::new();
    for (case, value) in disguised_secrets() {
        let key = format!("user:{}", unique(""));
        loader.source.put(&key, &value);
        let answer = client
            .get(GetRequest {
                key: key.clone(),
                cache_only: false,
                lease: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.source(), Source::Loaded, "{case}");
        assert_eq!(answer.value, value, "{case}: served as loaded");
        if found_value(cached(&mut client, &key).await).is_some() {
            cached_cases.push(case);
        }
    }
    assert!(
        cached_cases.is_empty(),
        "disguised secrets cached: {cached_cases:?}"
    );
}
