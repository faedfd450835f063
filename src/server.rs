//! Wires the pieces into a running gRPC server: store → coordinator → CacheService, plus grpc.health.v1 and
//! server reflection (v1, and v1alpha for older tools such as grpcurl 1.8) so grpcurl-style tools and any language
//! can discover the API.

use crate::api::{AdmissionLayer, CacheApi};
use crate::auth::Authenticator;
use crate::cache::Coordinator;
use crate::config::Config;
use crate::loader::Loaders;
use crate::outbox;
use crate::proto::cache_service_server::CacheServiceServer;
use crate::tls::ServerTls;
use crate::{StartupError, connections, proto, store};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_stream::StreamExt;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

/// Largest request the health and reflection services decode.
const SMALL_REQUEST_BYTES: usize = 64 * 1024;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting, a file or a backend could not be used at start-up.
    #[error("cannot start: {0}")]
    Startup(#[from] StartupError),
    /// The reflection service could not be built from the embedded descriptors.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
}

/// Serves on `listener` until `shutdown` resolves, then lets in-flight calls finish.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let store = store::open(&config.store).await?;
    let loaders = Loaders::from_config(&config)?;
    let coordinator = Arc::new(Coordinator::new(store, loaders, &config)?);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CacheServiceServer<CacheApi>>().await;
    // Neither needs more than a small request: a caller without a token must not make them buffer megabytes.
    let health_service = health_service.max_decoding_message_size(SMALL_REQUEST_BYTES);
    let reflection = reflection_builder()
        .build_v1()
        .map_err(ServerError::Reflection)?
        .max_decoding_message_size(SMALL_REQUEST_BYTES);
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(ServerError::Reflection)?
        .max_decoding_message_size(SMALL_REQUEST_BYTES);

    let auth = Arc::new(match (&config.auth.enabled, &config.auth.tokens_file) {
        (true, Some(file)) => Authenticator::from_file(file)
            .map_err(|e| StartupError::unusable("the tokens file", e))?,
        _ => Authenticator::disabled(),
    });
    let cache_service = CacheServiceServer::new(CacheApi::new(coordinator.clone()))
        // tonic refuses larger requests before buffering them.
        .max_decoding_message_size(config.limits.max_request_bytes);
    // The token, the call's slot and its bytes are settled from the headers, before tonic reads the body (scopes
    // are checked in the handler, which sees the keys).
    let admission = AdmissionLayer::new(auth.clone(), &config.limits);

    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        %addr,
        store = if config.store.redis_url.is_some() { "redis" } else { "embedded" },
        "cachecoord serving"
    );
    // Background work stops when serving does.
    let (stop, stopped) = watch::channel(false);
    let stopped_health = stopped.clone();
    let mut background = Vec::new();
    if config.outbox.enabled {
        let listener = outbox::run(config.clone(), coordinator.clone(), stopped.clone());
        background.push(tokio::spawn(listener));
    }
    if let Some(near_cache) = coordinator.background(stopped.clone()) {
        background.push(tokio::spawn(near_cache));
    }
    let reload_every = config.auth.reload_interval;
    background.push(tokio::spawn(auth.watch(reload_every, stopped.clone())));
    background.push(tokio::spawn(
        admission
            .connections()
            .sweep(config.limits.response_send_timeout, stopped.clone()),
    ));
    background.push(tokio::spawn(report_admission(
        admission.clone(),
        stopped.clone(),
    )));
    // Drain: on the signal, report NOT_SERVING while still accepting calls for drain_delay_ms (load balancers
    // move away), then stop accepting and let in-flight calls finish, for at most grace_period_ms.
    let drained = Arc::new(Notify::new());
    let drain = {
        let (health, drained) = (health.clone(), drained.clone());
        let delay = config.shutdown.drain_delay;
        async move {
            shutdown.await;
            health
                .set_not_serving::<CacheServiceServer<CacheApi>>()
                .await;
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            tracing::info!(?delay, "draining: health NOT_SERVING");
            tokio::time::sleep(delay).await;
            drained.notify_one();
        }
    };
    let grace = config.shutdown.grace_period;
    // TCP_NODELAY: a response's header and body frames go out at once instead of waiting out the peer's
    // delayed ACK (measured: 44 ms per small Get without it). Keepalive finds dead peers.
    let accepting = admission.clone();
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
        .map(move |accepted| accepted.map(|stream| accepting.accept(stream)));
    // grpc.health.v1 alone, in plaintext, for probes that cannot speak TLS (Kubernetes' gRPC probes). It reports
    // exactly what the main port reports, NOT_SERVING while draining included, and stops with the server.
    if let Some(addr) = config.tls.health_listen_addr {
        let mut stop = stopped_health;
        let probes = tonic::transport::Server::builder()
            .add_service(health_service.clone())
            .serve_with_shutdown(addr, async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            });
        background.push(tokio::spawn(async move {
            if let Err(error) = probes.await {
                tracing::error!(%error, %addr, "health listener failed");
            }
        }));
    }
    let tls =
        ServerTls::open(&config.tls).map_err(|e| StartupError::unusable("the TLS files", e))?;
    if let Some(tls) = &tls {
        let every = config.tls.reload_interval;
        background.push(tokio::spawn(tls.clone().watch(every, stopped.clone())));
    }
    let age_limit = config.connections.age_limit();
    let incoming = connections::accept(incoming, tls, age_limit);
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(config.limits.max_concurrent_streams)
        // Finds peers that stopped answering (a half-dead connection holding streams) within ~40 s.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(admission)
        .layer(tower::util::MapResponseLayer::new(
            crate::api::explain_transport_refusal::<tonic::body::Body>,
        ));
    let routes = Routes::new(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(cache_service)
        .prepare();
    // Each connection gets a server of its own, so that it can have its own maximum age (GOAWAY then; the grace
    // is enforced by `connections`, as tonic's own grace skips the GOAWAY).
    let serving = connections::serve(incoming, drain, |connection, stop| {
        let mut server = server.clone();
        if let Some(age) = connection.max_age() {
            server = server.max_connection_age(age);
        }
        let once = tokio_stream::once(Ok::<_, std::io::Error>(connection));
        server
            .add_routes(routes.clone())
            .serve_with_incoming_shutdown(once.chain(tokio_stream::pending()), stop)
    });
    tokio::select! {
        () = serving => {}
        () = async { drained.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "grace period over; in-flight calls are cut off");
        }
    }
    let _ = stop.send(true);
    for task in background {
        let _ = task.await;
    }
    Ok(())
}

/// Publishes the request and response bytes admission holds (`cachecoord_held_bytes`) every second until `stop`:
/// how close the replica is to its memory budget. (Calls in flight are counted as they come and go.)
async fn report_admission(admission: AdmissionLayer, mut stop: watch::Receiver<bool>) {
    loop {
        let held = admission.held_bytes();
        metrics::gauge!("cachecoord_held_bytes").set(held as f64);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// Reflection over the cachecoord and health descriptors; built once per protocol version served.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
