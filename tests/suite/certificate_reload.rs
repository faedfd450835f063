//! The gRPC port's certificate, key and client CA are re-read when their files change: a rotated certificate is
//! served without a restart, and a broken file keeps the last good one, with a metric and a log line saying so.
//!
//! The files are replaced the way a Kubernetes Secret volume replaces them (written beside, then renamed in), or
//! overwritten in place to simulate a half-written file.

use crate::support::pki::Pki;
use crate::support::ports::free_port;
use crate::support::process::{ServerProcess, metric};
use cachecoord::proto::GetRequest;
use cachecoord::proto::cache_service_client::CacheServiceClient;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A TLS channel to `server` trusting only `trusted`'s CA, presenting `trusted`'s client certificate.
async fn connect(
    server: &ServerProcess,
    trusted: &Pki,
) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(trusted.read("ca.pem")))
        .identity(Identity::from_pem(
            trusted.read("client.pem"),
            trusted.read("client.key"),
        ))
        .domain_name("localhost");
    Channel::from_shared(format!("https://127.0.0.1:{}", server.port))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// Whether a Get over `channel` is answered.
async fn answers(channel: &Channel) -> bool {
    let request = GetRequest {
        key: "user:1".into(),
        cache_only: true,
        lease: false,
    };
    CacheServiceClient::new(channel.clone())
        .get(request)
        .await
        .is_ok()
}

/// Whether a fresh connection trusting only `trusted`'s CA (and using its client certificate) gets an answer.
async fn fresh_connection_works(server: &ServerProcess, trusted: &Pki) -> bool {
    match connect(server, trusted).await {
        Ok(channel) => answers(&channel).await,
        Err(_) => false,
    }
}

/// Replaces `file` with `contents` the way a Secret volume does: written beside it, then renamed over it.
fn replace(file: &Path, contents: &str) {
    let beside = file.with_extension("new");
    std::fs::write(&beside, contents).unwrap();
    std::fs::rename(&beside, file).unwrap();
}

/// Waits until `condition` holds, polling; fails the test if it never does within two minutes.
async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    while !condition().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server with mutual TLS from one PKI. A half-written certificate, then a new certificate with the old key,
/// are refused: clients of the old PKI still connect, `cachecoord_tls_reload_failures_total{reason}` counts
/// each refusal, `cachecoord_tls_last_reload_success` is 0 and the log says the last good certificate stays.
/// Then the whole set is rotated to a new PKI (certificate, key and client CA): without a restart, a client
/// trusting only the new CA (with a client certificate from it) connects, a client of the old PKI no longer
/// does, and a connection opened before the rotation keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let (old, new) = (Pki::generate(), Pki::generate());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
    );
    replace(&cert, &old.read("server.pem"));
    replace(&key, &old.read("server.key"));
    replace(&ca, &old.read("ca.pem"));
    let health_port = free_port();
    let config = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nreload_interval_ms = 100\n\
         health_listen_addr = \"127.0.0.1:{health_port}\"\n",
        cert.display(),
        key.display(),
        ca.display()
    );
    let server = ServerProcess::start_with_health_port(&config, health_port).await;
    assert!(fresh_connection_works(&server, &old).await);
    assert!(!fresh_connection_works(&server, &new).await);
    let before_rotation = connect(&server, &old).await.unwrap();
    let failures = |reason: &'static str| {
        let server = &server;
        async move {
            let text = server.scrape().await;
            metric(
                &text,
                "cachecoord_tls_reload_failures_total",
                &[("reason", reason)],
            )
            .unwrap_or(0.0)
        }
    };
    let last_success = || async {
        metric(
            &server.scrape().await,
            "cachecoord_tls_last_reload_success",
            &[],
        )
    };
    assert_eq!(last_success().await, Some(1.0));

    // Half a certificate, written in place.
    let new_cert = new.read("server.pem");
    std::fs::write(&cert, &new_cert[..new_cert.len() / 2]).unwrap();
    wait_until("the half-written certificate is refused", || async {
        failures("certificate").await >= 1.0
    })
    .await;
    assert_eq!(last_success().await, Some(0.0));
    assert!(
        fresh_connection_works(&server, &old).await,
        "the last good certificate is still served"
    );
    // The new certificate, but still the old key.
    replace(&cert, &new_cert);
    wait_until(
        "a certificate with a key of another pair is refused",
        || async { failures("key").await >= 1.0 },
    )
    .await;
    assert!(
        fresh_connection_works(&server, &old).await,
        "the last good certificate is still served"
    );
    let refusals = server.log_lines("TLS files refused; the last good certificate stays in force");
    // Two refusals at least (an in-place write can also be seen empty, before its bytes land: refused too).
    assert!(refusals.len() >= 2, "{refusals:?}");

    // The new key and client CA: the new PKI is complete.
    replace(&key, &new.read("server.key"));
    replace(&ca, &new.read("ca.pem"));
    wait_until("a client trusting only the new CA connects", || async {
        fresh_connection_works(&server, &new).await
    })
    .await;
    assert!(
        !fresh_connection_works(&server, &old).await,
        "the old certificate is no longer served"
    );
    assert_eq!(last_success().await, Some(1.0));
    assert!(
        answers(&before_rotation).await,
        "a connection from before the rotation keeps working"
    );
    // One reload, or two if the key and the client CA were seen in different looks.
    assert!(!server.log_lines("TLS certificate reloaded").is_empty());
    println!(
        "refused: certificate {}, key {}; reloads {:?}",
        failures("certificate").await,
        failures("key").await,
        metric(&server.scrape().await, "cachecoord_tls_reloads_total", &[]),
    );
}
