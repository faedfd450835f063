//! What one tenant can make a replica hold, measured on the real binary (its resident set, from /proc) with a raw
//! HTTP/2 client doing what no gRPC library would: never reading its answers, never ending its requests, or
//! calling without a token. Each attack must leave the replica's memory near its configured budget, answer
//! RESOURCE_EXHAUSTED (or UNAUTHENTICATED) or close the connection, and leave another tenant served throughout.

use crate::support::process::{ServerProcess, metric};
use crate::support::raw_http2::{OpenCall, PendingCall, RawCaller, grpc_frame, resident_bytes};
use crate::support::{set_request, unique};
use cachecoord::auth::hash_token;
use cachecoord::proto::cache_service_client::CacheServiceClient;
use cachecoord::proto::{BatchGetRequest, BatchSetRequest, GetRequest};
use std::time::{Duration, Instant};
use tonic::Request;
use tonic::transport::Channel;

const MIB: u64 = 1024 * 1024;
/// The replica's budget for held request and response bytes in these tests, and one caller's share of it.
const BUDGET: u64 = 64 * MIB;
const CALLER_SHARE: u64 = 32 * MIB;

/// A replica with two tenants, `hostile` and `bystander`, and tight time limits.
struct Tenants {
    server: ServerProcess,
    _dir: tempfile::TempDir,
}

impl Tenants {
    async fn start() -> Tenants {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens.toml");
        let mut text = String::new();
        for name in ["hostile", "bystander"] {
            text += &format!(
                "[[tokens]]\nname = {name:?}\nnamespace = {name:?}\nsha256 = {:?}\nread = [\"*\"]\nwrite = [\"*\"]\ninvalidate = [\"*\"]\n\n",
                hash_token(&format!("secret-{name}"))
            );
        }
        std::fs::write(&tokens, text).unwrap();
        let config = format!(
            "[auth]\nenabled = true\ntokens_file = {:?}\n\n[limits]\nmax_response_bytes = {}\n\
             memory_budget_bytes = {BUDGET}\ncaller_memory_bytes = {CALLER_SHARE}\n\
             request_body_timeout_ms = 2000\nresponse_send_timeout_ms = 3000\n",
            tokens.display().to_string(),
            16 * MIB,
        );
        Tenants {
            server: ServerProcess::start(&config).await,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.server.child.id().unwrap()
    }

    async fn client(&self) -> CacheServiceClient<Channel> {
        CacheServiceClient::connect(self.server.uri())
            .await
            .unwrap()
    }

    async fn raw(&self, token: Option<&str>) -> RawCaller {
        RawCaller::connect(self.server.port, token).await
    }

    /// Sets and reads back a key of the bystander's: panics unless both are answered.
    async fn bystander_is_served(&self) {
        let mut client = self.client().await;
        let key = format!("user:{}", unique("bystander"));
        client
            .set(as_caller("bystander", set_request(&key, b"still here")))
            .await
            .expect("the bystander's Set is answered");
        let got = client
            .get(as_caller(
                "bystander",
                GetRequest {
                    key,
                    cache_only: true,
                    lease: false,
                },
            ))
            .await
            .expect("the bystander's Get is answered")
            .into_inner();
        assert_eq!(&got.value[..], b"still here");
    }

    async fn metric(&self, name: &str) -> f64 {
        metric(&self.server.scrape().await, name, &[]).unwrap_or(0.0)
    }

    /// Waits (at most a minute) until `name` reads `wanted` on /metrics.
    async fn until_metric(&self, name: &str, wanted: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !wanted(self.metric(name).await) {
            assert!(Instant::now() < deadline, "{name} never got there");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn as_caller<T>(name: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer secret-{name}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

/// Answers of `pending`, all awaited together (each may take until the request body timeout).
async fn answers(pending: Vec<PendingCall>) -> Vec<Option<OpenCall>> {
    futures::future::join_all(pending.into_iter().map(PendingCall::answer)).await
}

/// Counts answers by their refusal's ErrorInfo reason ("" for calls that were not refused).
fn tally(answers: &[Option<OpenCall>]) -> std::collections::BTreeMap<String, usize> {
    let mut tally = std::collections::BTreeMap::new();
    for answer in answers {
        let reason = match answer {
            None => "stream reset".to_owned(),
            Some(OpenCall { refusal: None, .. }) => "answered".to_owned(),
            Some(OpenCall {
                refusal: Some(status),
                ..
            }) => {
                use tonic_types::StatusExt;
                let reason = status
                    .get_error_details()
                    .error_info()
                    .map(|info| info.reason.clone())
                    .unwrap_or_default();
                format!("{:?} {reason}", status.code())
            }
        };
        *tally.entry(reason).or_default() += 1;
    }
    tally
}

/// 40 BatchGets of 15 × a 1 MiB value (15 MiB answers, each under the per-call cap) on a connection that never
/// reads: the replica holds at most the caller's share of them and refuses the rest with MEMORY_BUDGET; the
/// bystander is served while they are held; after `response_send_timeout_ms` the connection is closed and every
/// byte comes back. (Before: all 40 answers, 600 MiB, held until the client disconnected.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_never_reads_holds_at_most_its_share() {
    let tenants = Tenants::start().await;
    let mut hostile = tenants
        .client()
        .await
        .max_decoding_message_size(16 * MIB as usize);
    let big = format!("user:{}", unique("big"));
    hostile
        .set(as_caller(
            "hostile",
            set_request(&big, &vec![7u8; MIB as usize]),
        ))
        .await
        .unwrap();
    let (before, _) = resident_bytes(tenants.pid());

    let mut stalled = tenants.raw(Some("secret-hostile")).await;
    let amplifying = grpc_frame(&BatchGetRequest {
        keys: vec![big.clone(); 15],
        cache_only: true,
        lease: false,
    });
    let mut pending = Vec::new();
    for _ in 0..40 {
        pending.push(
            stalled
                .start("BatchGet", amplifying.clone(), true)
                .await
                .unwrap(),
        );
    }
    let held = answers(pending).await;
    let (now, peak) = resident_bytes(tenants.pid());
    let tally = tally(&held);
    println!(
        "never-reading caller: {tally:?}; server RSS {} MiB before, {} MiB holding, {} MiB peak \
         (budget {} MiB, caller share {} MiB)",
        before / MIB,
        now / MIB,
        peak / MIB,
        BUDGET / MIB,
        CALLER_SHARE / MIB
    );
    let answered = tally.get("answered").copied().unwrap_or(0);
    assert!(
        answered <= (CALLER_SHARE / (15 * MIB)) as usize,
        "{answered} answers held"
    );
    assert_eq!(
        tally.get("ResourceExhausted MEMORY_BUDGET").copied(),
        Some(40 - answered)
    );
    assert!(
        peak.saturating_sub(before) < BUDGET,
        "the server grew by {} MiB",
        (peak - before) / MIB
    );
    tenants.bystander_is_served().await;
    tenants
        .until_metric("cachecoord_held_bytes", |held| held > 0.0)
        .await;

    // Left unread past response_send_timeout_ms, the connection is closed and everything it held given back.
    tenants
        .until_metric("cachecoord_connections_cut_total", |cut| cut >= 1.0)
        .await;
    tenants
        .until_metric("cachecoord_held_bytes", |held| held == 0.0)
        .await;
    let again = hostile
        .batch_get(as_caller(
            "hostile",
            BatchGetRequest {
                keys: vec![big; 15],
                cache_only: true,
                lease: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.results.len(), 15);
}

/// 200 streams, each a ~7 MiB BatchSet body that never ends, from a caller with no token: every one is refused
/// UNAUTHENTICATED from its headers, and the replica buffers none of the bodies. (Before the token was checked
/// from the headers, 200 such streams held 1.6 GB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_streams_hold_nothing() {
    let tenants = Tenants::start().await;
    let (before, _) = resident_bytes(tenants.pid());
    let mut anonymous = tenants.raw(None).await;
    let body = never_ending_batch_set();
    let mut pending = Vec::new();
    for _ in 0..200 {
        pending.push(
            anonymous
                .start("BatchSet", body.clone(), false)
                .await
                .unwrap(),
        );
    }
    let refused = answers(pending).await;
    tenants.bystander_is_served().await;
    let (now, peak) = resident_bytes(tenants.pid());
    let tally = tally(&refused);
    println!(
        "200 unauthenticated never-ending streams: {tally:?}; server RSS {} MiB before, {} MiB after, {} MiB peak",
        before / MIB,
        now / MIB,
        peak / MIB
    );
    assert_eq!(tally.get("Unauthenticated UNAUTHENTICATED"), Some(&200));
    assert!(
        peak.saturating_sub(before) < BUDGET,
        "the server grew by {} MiB",
        (peak - before) / MIB
    );
}

/// The same 200 never-ending ~7 MiB bodies from a caller with a token: the replica holds at most the caller's
/// share of them (MEMORY_BUDGET for the streams that would exceed it) and ends the rest after
/// `request_body_timeout_ms` (REQUEST_BODY_TIMEOUT); the bystander is served meanwhile. (Before: every body
/// buffered whole, ~1.4 GB, and held until the client disconnected.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_ending_requests_hold_at_most_the_callers_share() {
    let tenants = Tenants::start().await;
    let (before, _) = resident_bytes(tenants.pid());
    let mut hostile = tenants.raw(Some("secret-hostile")).await;
    let body = never_ending_batch_set();
    let mut pending = Vec::new();
    for _ in 0..200 {
        pending.push(
            hostile
                .start("BatchSet", body.clone(), false)
                .await
                .unwrap(),
        );
    }
    let bystander = tenants.bystander_is_served();
    let (refused, ()) = tokio::join!(answers(pending), bystander);
    let (now, peak) = resident_bytes(tenants.pid());
    let tally = tally(&refused);
    println!(
        "200 never-ending streams with a token: {tally:?}; server RSS {} MiB before, {} MiB after, {} MiB peak \
         (budget {} MiB, caller share {} MiB)",
        before / MIB,
        now / MIB,
        peak / MIB,
        BUDGET / MIB,
        CALLER_SHARE / MIB
    );
    let by_budget = tally
        .get("ResourceExhausted MEMORY_BUDGET")
        .copied()
        .unwrap_or(0);
    let by_time = tally
        .get("ResourceExhausted REQUEST_BODY_TIMEOUT")
        .copied()
        .unwrap_or(0);
    assert_eq!(by_budget + by_time, 200, "{tally:?}");
    assert!(
        peak.saturating_sub(before) < BUDGET,
        "the server grew by {} MiB",
        (peak - before) / MIB
    );
    tenants
        .until_metric("cachecoord_held_bytes", |held| held == 0.0)
        .await;
}

/// A BatchSet of seven 1 MiB values, one gRPC frame (just under the 8 MiB request limit).
fn never_ending_batch_set() -> bytes::Bytes {
    grpc_frame(&BatchSetRequest {
        entries: (0..7)
            .map(|i| set_request(&format!("user:flood-{i}"), &vec![1u8; MIB as usize]))
            .collect(),
    })
}
