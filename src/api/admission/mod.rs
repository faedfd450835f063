//! Admission: what a CacheService call must get before tonic reads its body, and keeps until its response has
//! been sent. From the request's headers alone, the layer
//! 1. authenticates the caller (UNAUTHENTICATED before a byte of body is buffered) and hands the [`Caller`] to the
//!    handler in the request's extensions;
//! 2. takes a slot among the calls in flight from the caller's share and the replica's pool (RESOURCE_EXHAUSTED,
//!    reason TOO_MANY_IN_FLIGHT, at once, never queued);
//! 3. charges the request's bytes to the same two budgets as they arrive, and ends a body that takes longer than
//!    `limits.request_body_timeout_ms` (RESOURCE_EXHAUSTED, reasons MEMORY_BUDGET and REQUEST_BODY_TIMEOUT);
//! 4. lets the handler charge its response before encoding it ([`CallBudget`] in the extensions; MEMORY_BUDGET),
//!    and holds the call's slot and bytes until the response body is sent or abandoned;
//! 5. registers the unsent response with its connection, which is closed if the peer leaves it unread for longer
//!    than `limits.response_send_timeout_ms` ([`connection`]).
//!
//! A caller is a token when auth is on and a peer address when it is off ([`budget`]). Only CacheService calls
//! are admitted this way: health probes and reflection must answer when the cache is saturated.

mod bodies;
mod budget;
mod connection;

pub(crate) use budget::CallBudget;
use connection::{Connection, Connections};
pub(crate) use connection::{ConnectionInfo, Guarded};

use super::to_status;
use crate::Error;
use crate::auth::{Authenticator, Caller};
use crate::config::LimitsConfig;
use bodies::{RequestBody, ResponseBody};
use budget::Budget;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tonic::body::Body as GrpcBody;
use tonic::transport::server::TlsConnectInfo;
use tower::{Layer, Service};

/// Bytes of its answer every call holds from admission: answers this small never need more (`CacheApi::handle`
/// charges only the excess).
pub(crate) const RESPONSE_ALLOWANCE: usize = 4096;

/// Paths of the calls that are admitted.
const ADMITTED_PREFIX: &str = "/cachecoord.v1.CacheService/";

/// The admission of CacheService calls; see the module documentation.
#[derive(Clone)]
pub struct AdmissionLayer {
    auth: Arc<Authenticator>,
    budget: Arc<Budget>,
    connections: Arc<Connections>,
    request_body_timeout: Duration,
}

impl AdmissionLayer {
    /// Admits the callers `auth` knows within `limits`.
    pub fn new(auth: Arc<Authenticator>, limits: &LimitsConfig) -> AdmissionLayer {
        AdmissionLayer {
            auth,
            budget: Arc::new(Budget::new(limits)),
            connections: Arc::new(Connections::default()),
            request_body_timeout: limits.request_body_timeout,
        }
    }

    /// The connections this layer's calls arrive on; the server wraps each accepted stream here and runs
    /// [`Connections::sweep`].
    pub(crate) fn connections(&self) -> Arc<Connections> {
        self.connections.clone()
    }

    /// Wraps an accepted stream so its calls can be admitted and the connection cut.
    pub(crate) fn accept(&self, stream: TcpStream) -> Guarded {
        let peer = stream
            .peer_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| addr.ip());
        self.connections
            .accept(stream, self.budget.peer_share(peer))
    }

    /// Request and response bytes held now, for the gauge.
    pub fn held_bytes(&self) -> usize {
        self.budget.held_bytes()
    }

    /// Admits one call from its headers, or says why not.
    fn admit(&self, request: &http::Request<GrpcBody>) -> Result<Admitted, Error> {
        let caller = self.auth.authenticate(request.headers())?;
        let connection = request
            .extensions()
            .get::<ConnectionInfo>()
            .or_else(|| {
                request
                    .extensions()
                    .get::<TlsConnectInfo<ConnectionInfo>>()
                    .map(TlsConnectInfo::get_ref)
            })
            .map(|info| info.connection.clone());
        let share = match (&connection, self.auth.is_enabled()) {
            (Some(connection), false) => connection.share.clone(),
            _ => self.budget.caller_share(&caller.namespace, &caller.name),
        };
        let budget = self.budget.admit(share)?;
        // A small answer's bytes are taken now, so a write is never refused for its answer after it was applied.
        budget.hold(RESPONSE_ALLOWANCE)?;
        let budget = Arc::new(budget);
        Ok(Admitted {
            caller,
            budget,
            connection,
        })
    }
}

/// An admitted call: who it is for, what it may hold, and the connection it arrived on.
struct Admitted {
    caller: Arc<Caller>,
    budget: Arc<CallBudget>,
    connection: Option<Arc<Connection>>,
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AdmissionLayer`] wraps.
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl<S> Service<http::Request<GrpcBody>> for Admission<S>
where
    S: Service<http::Request<GrpcBody>, Response = http::Response<GrpcBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<GrpcBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<GrpcBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<GrpcBody>) -> Self::Future {
        let timeout = self.layer.request_body_timeout;
        if !request.uri().path().starts_with(ADMITTED_PREFIX) {
            // Health and reflection need no token and take no slot, but their bodies end in time too.
            let request = request.map(|body| GrpcBody::new(RequestBody::new(body, None, timeout)));
            return Box::pin(self.inner.call(request));
        }
        let Admitted {
            caller,
            budget,
            connection,
        } = match self.layer.admit(&request) {
            Ok(admitted) => admitted,
            Err(error) => {
                // Counted like every answered call, so a refusal shows in cachecoord_requests_total.
                let rpc = request.uri().path().rsplit('/').next().unwrap_or_default();
                let status = to_status(&error);
                let code = format!("{:?}", status.code());
                metrics::counter!("cachecoord_requests_total", "rpc" => rpc.to_owned(), "code" => code)
                    .increment(1);
                let response = status.into_http::<GrpcBody>();
                return Box::pin(async move { Ok(response) });
            }
        };
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(caller);
        parts.extensions.insert(budget.clone());
        let body = RequestBody::new(body, Some(budget.clone()), timeout);
        let answer = self
            .inner
            .call(http::Request::from_parts(parts, GrpcBody::new(body)));
        Box::pin(async move {
            let response = answer.await?;
            let sending = connection.map(|connection| connection.sending());
            Ok(response.map(|body| GrpcBody::new(ResponseBody::new(body, budget, sending))))
        })
    }
}
