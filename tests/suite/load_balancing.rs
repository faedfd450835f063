//! gRPC load balancing: a maximum connection age makes long-lived client connections come back, so clients
//! spread over replicas that started after they connected; and aging a connection out never fails a call.
//!
//! Real server processes on loopback, and clients of the two stacks users run: tonic, and Python's grpcio (the
//! interpreter is `$CC_TEST_PYTHON`, which scripts/test points at a venv with grpcio, else `python3`). The
//! spreading test runs three servers on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (same port) behind one name served by
//! a DNS server the test controls (`support::dns`), which grpcio's c-ares resolver is pointed at through the
//! target's authority: `dns://127.0.0.1:<dns port>/cachecoord.test:<port>`.

use crate::support::dns::TestDns;
use crate::support::loader::TestLoader;
use crate::support::ports::free_port;
use crate::support::process::{ServerProcess, metric};
use crate::support::unique;
use cachecoord::proto::GetRequest;
use cachecoord::proto::cache_service_client::CacheServiceClient;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a condition the tests wait for may take before the test fails: generous, it only catches "never".
const AT_MOST: Duration = Duration::from_secs(120);

fn config(max_age_secs: u64, grace_secs: u64, extra: &str) -> String {
    format!(
        "[connections]\nmax_age_secs = {max_age_secs}\nmax_age_grace_secs = {grace_secs}\n\n{extra}"
    )
}

/// Gets that `server` answered OK so far.
async fn answered(server: &ServerProcess) -> f64 {
    let text = server.scrape().await;
    metric(
        &text,
        "cachecoord_requests_total",
        &[("rpc", "Get"), ("code", "Ok")],
    )
    .unwrap_or(0.0)
}

/// Connections `server` accepted so far.
async fn accepted(server: &ServerProcess) -> f64 {
    let text = server.scrape().await;
    metric(&text, "cachecoord_grpc_connections_accepted_total", &[]).unwrap_or(0.0)
}

/// Connections `server` closed because calls were still running after the age and its grace.
async fn cut(server: &ServerProcess) -> f64 {
    let text = server.scrape().await;
    metric(&text, "cachecoord_grpc_connections_cut_total", &[]).unwrap_or(0.0)
}

/// Waits until `condition` holds, polling; fails the test if it has not after [`AT_MOST`].
async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + AT_MOST;
    while !condition().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `tests/python/steady_calls.py` calling `target` from `threads` threads, started and calling.
struct PythonCalls(Child);

impl PythonCalls {
    async fn start(target: &str, prefix: &str, threads: usize) -> PythonCalls {
        let python = std::env::var("CC_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/steady_calls.py");
        let mut child = Command::new(&python)
            .args([script, target, prefix, &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {python}: {e} (scripts/test prepares a venv with grpcio)")
            });
        let mut lines = BufReader::new(child.stdout.as_mut().unwrap()).lines();
        let first = lines.next_line().await.unwrap();
        assert_eq!(
            first.as_deref(),
            Some("calling"),
            "the Python client did not start"
        );
        PythonCalls(child)
    }

    /// Stops the calls; returns the client's summary line, failing the test if any call failed.
    async fn finish(mut self) -> String {
        drop(self.0.stdin.take());
        let output = self.0.wait_with_output().await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(
            output.status.success(),
            "the Python client saw failed calls: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }
}

/// Whether `status` is tonic's answer to a call it routed onto a connection the server had just sent GOAWAY on:
/// CANCELLED made by the client's transport ("operation was canceled", hyper's "connection closed"), for a
/// request that never left the client. grpc-go, grpc-java and grpcio retry such calls by themselves
/// (transparent retry); tonic 0.14 does not, so its callers retry this one error (docs/load-balancing.md).
fn never_left_the_client(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Cancelled && std::error::Error::source(status).is_some()
}

/// A server ages its connections out every second (grace 5 s) while four tonic tasks on one channel keep Gets
/// in flight back to back, each taking 400 ms in the loader: at every GOAWAY, calls are in flight on the old
/// connection. Through three age-outs: every call in flight at a GOAWAY finishes, no connection had to be cut,
/// and the only failures tonic shows are calls it routed onto the closing connection, which never reached the
/// server (CANCELLED from its transport; the server answered exactly the calls the client saw answered), and
/// which one retry turns into answers. Never INTERNAL or UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aging_out_a_connection_fails_no_call_of_a_tonic_client_that_retries_unsent_calls() {
    let loader = TestLoader::start().await;
    loader.source.set_delay(Duration::from_millis(400));
    let server = ServerProcess::start(&config(1, 5, &loader.route_toml("user:*"))).await;
    let before = accepted(&server).await;
    let channel = tonic::transport::Channel::from_shared(server.uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let prefix = unique("user:");
    let mut tasks = Vec::new();
    for task in 0..4 {
        let (mut client, stop, prefix) = (
            CacheServiceClient::new(channel.clone()),
            stop.clone(),
            prefix.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut answers, mut unsent, mut failures) = (0u32, 0u32, Vec::new());
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let request = GetRequest {
                    key: format!("{prefix}:{task}:{n}"),
                    cache_only: false,
                    lease: false,
                };
                let mut outcome = client.get(request.clone()).await;
                if let Err(status) = &outcome
                    && never_left_the_client(status)
                {
                    unsent += 1;
                    outcome = client.get(request).await;
                }
                match outcome {
                    Ok(_) => answers += 1,
                    Err(status) => failures.push(status),
                }
            }
            (answers, unsent, failures)
        }));
    }
    // The client's first connection, then three more: three age-outs with calls in flight.
    wait_until("the client's connection aged out three times", || async {
        accepted(&server).await >= before + 4.0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (mut answers, mut unsent, mut failures) = (0, 0, Vec::new());
    for task in tasks {
        let (task_answers, task_unsent, task_failures) = task.await.unwrap();
        answers += task_answers;
        unsent += task_unsent;
        failures.extend(task_failures);
    }
    let connections = accepted(&server).await - before;
    let text = server.scrape().await;
    let served: f64 = ["Ok", "Cancelled", "Unavailable", "Internal", "Unknown"]
        .iter()
        .filter_map(|code| {
            metric(
                &text,
                "cachecoord_requests_total",
                &[("rpc", "Get"), ("code", code)],
            )
        })
        .sum();
    println!(
        "tonic client: {answers} calls answered over {connections} connections; {unsent} routed onto a closing \
         connection and retried; {} failed; the server answered {served} Gets",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "calls failed while connections aged out: {failures:?}"
    );
    assert_eq!(
        served,
        f64::from(answers),
        "a call the client saw fail reached the server"
    );
    assert_eq!(cut(&server).await, 0.0, "a connection had to be cut");
}

/// The same with Python's grpcio: four threads on one channel keep 400 ms Gets in flight through three
/// age-outs; every call succeeds and no connection is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aging_out_a_connection_fails_no_call_of_a_grpcio_client() {
    let loader = TestLoader::start().await;
    loader.source.set_delay(Duration::from_millis(400));
    let server = ServerProcess::start(&config(1, 5, &loader.route_toml("user:*"))).await;
    let before = accepted(&server).await;
    let target = format!("127.0.0.1:{}", server.port);
    let python = PythonCalls::start(&target, &unique("user:"), 4).await;
    wait_until("the client's connection aged out three times", || async {
        accepted(&server).await >= before + 4.0
    })
    .await;
    let summary = python.finish().await;
    let connections = accepted(&server).await - before;
    println!("grpcio client: {summary} over {connections} connections");
    assert_eq!(cut(&server).await, 0.0, "a connection had to be cut");
}

/// The grace is a bound: a call still running when a connection's age (1 s) and grace (1 s) are over is cut
/// with its connection, counted in `cachecoord_grpc_connections_cut_total`, so a client that never finishes
/// cannot keep a connection (and its replica) forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_outlasting_the_grace_is_cut_with_its_connection() {
    let loader = TestLoader::start().await;
    loader.source.set_delay(Duration::from_secs(30));
    // The load may take 8 s (under the 10 s lease), far past the cut at about 2 s (age 0.9-1.1 s plus 1 s of
    // grace): with the default 2 s loader timeout the call could end with LOADER_FAILED before its cut.
    let route = format!("{}timeout_ms = 8000\n", loader.route_toml("user:*"));
    let server = ServerProcess::start(&config(1, 1, &route)).await;
    let mut client = CacheServiceClient::connect(server.uri()).await.unwrap();
    let request = GetRequest {
        key: format!("{}:slow", unique("user:")),
        cache_only: false,
        lease: false,
    };
    let status = client.get(request).await.unwrap_err();
    println!("a 30 s call on a connection with max age 1 s, grace 1 s: {status:?}");
    assert!(
        status.details().is_empty(),
        "the server answered the call before its connection was cut: {status:?}"
    );
    assert_eq!(cut(&server).await, 1.0);
}

/// A grpcio client resolving `cachecoord.test` (one A record: the only replica, 127.0.0.1) with round_robin and
/// health checking starts calling. Two more replicas start (127.0.0.2, 127.0.0.3, same port) and the name now
/// lists all three, as a headless Service does when pods become ready. The client's connection ages out (max
/// age 2 s), it re-resolves, and its calls spread over all three replicas (each answers 50 more, and each has
/// a share of the next 300), without a failed call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_spreads_over_replicas_started_after_it_connected() {
    let hosts = [1, 2, 3].map(|last| Ipv4Addr::new(127, 0, 0, last));
    let port = free_port();
    let dns = TestDns::start("cachecoord.test", &hosts[..1]).await;
    let settings = config(2, 5, "");
    let first = ServerProcess::start_on(&settings, SocketAddr::from((hosts[0], port))).await;
    let target = format!("dns://{}/cachecoord.test:{port}", dns.addr);
    let python = PythonCalls::start(&target, &unique("user:"), 2).await;
    wait_until("the first replica answers the client", || async {
        answered(&first).await > 0.0
    })
    .await;

    let mut replicas = vec![first];
    for host in &hosts[1..] {
        replicas.push(ServerProcess::start_on(&settings, SocketAddr::from((*host, port))).await);
    }
    let started = Instant::now();
    let mut before = Vec::new();
    for replica in &replicas {
        before.push(answered(replica).await);
    }
    dns.set(&hosts);
    wait_until("every replica answers 50 more calls", || async {
        for (replica, before) in replicas.iter().zip(&before) {
            if answered(replica).await < before + 50.0 {
                return false;
            }
        }
        true
    })
    .await;
    let spread_after = started.elapsed();
    // Then, how the next 300 calls fall: round robin gives each replica its turn.
    let mut window = Vec::new();
    for replica in &replicas {
        window.push(answered(replica).await);
    }
    let deadline = Instant::now() + AT_MOST;
    let shares = loop {
        let mut shares = Vec::new();
        for (replica, start) in replicas.iter().zip(&window) {
            shares.push(answered(replica).await - start);
        }
        if shares.iter().sum::<f64>() >= 300.0 {
            break shares;
        }
        assert!(
            Instant::now() < deadline,
            "never happened: 300 more calls answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(shares.iter().all(|&share| share > 0.0), "{shares:?}");
    let summary = python.finish().await;
    let (mut counts, mut cuts) = (Vec::new(), 0.0);
    for (replica, before) in replicas.iter().zip(&before) {
        counts.push(format!(
            "{}: {}",
            replica.host,
            answered(replica).await - before
        ));
        cuts += cut(replica).await;
    }
    println!(
        "after the name listed three replicas: Gets answered per replica {}; all three past 50 after {:.1} s \
         (max connection age 2 s); the next calls fell {shares:?}; {} A queries answered; {cuts} connections cut; \
         client: {summary}",
        counts.join(", "),
        spread_after.as_secs_f64(),
        dns.queries(),
    );
}
