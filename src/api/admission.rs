//! A slot among the calls in flight, held for the whole life of a CacheService call: from the request's headers
//! until its response body has been sent (or the stream is reset). A slot released when the handler returns
//! would let a caller that never reads its responses hold any number of them in memory.
//!
//! Excess calls are refused at once with RESOURCE_EXHAUSTED (reason TOO_MANY_IN_FLIGHT), never queued. Only
//! CacheService calls count: health probes and reflection must still answer when the cache is saturated.
//!
//! The slots taken are exported as the gauge `cachecoord_requests_in_flight`: the load signal the chart's
//! autoscaler scales on (a replica's calls in flight, whatever they cost in CPU).
//!
//! Limit: the slot is taken from the headers, before authentication, and nothing bounds how long a caller may
//! take to send its body or read its answer; a caller opening `max_in_flight` streams that never finish holds
//! every slot (docs/security.md).

use super::to_status;
use crate::Error;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body as GrpcBody;
use tower::{Layer, Service};

/// Paths of the calls that take a slot.
const COUNTED_PREFIX: &str = "/cachecoord.v1.CacheService/";

/// The gauge of slots taken.
const IN_FLIGHT_GAUGE: &str = "cachecoord_requests_in_flight";

/// Admits at most `max` CacheService calls at once, each until its response body is done.
#[derive(Clone)]
pub struct InFlightLayer {
    slots: Arc<Semaphore>,
    max: usize,
}

impl InFlightLayer {
    /// A layer admitting at most `max` calls at once.
    pub fn new(max: usize) -> InFlightLayer {
        // Exported from the start, not from the first call: an autoscaler reads a pod without the series as
        // one it cannot judge.
        metrics::gauge!(IN_FLIGHT_GAUGE).increment(0.0);
        InFlightLayer {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

impl<S> Layer<S> for InFlightLayer {
    type Service = InFlight<S>;

    fn layer(&self, inner: S) -> InFlight<S> {
        InFlight {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`InFlightLayer`] wraps.
#[derive(Clone)]
pub struct InFlight<S> {
    inner: S,
    layer: InFlightLayer,
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for InFlight<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<GrpcBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<GrpcBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<GrpcBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if !request.uri().path().starts_with(COUNTED_PREFIX) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(slot) = self.layer.slots.clone().try_acquire_owned() else {
            // Counted like every answered call, so an overload shows in cachecoord_requests_total.
            let rpc = request
                .uri()
                .path()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            metrics::counter!("cachecoord_requests_total", "rpc" => rpc, "code" => "ResourceExhausted")
                .increment(1);
            let refused = to_status(&Error::Overloaded {
                max: self.layer.max,
            });
            let response = refused.into_http::<GrpcBody>();
            return Box::pin(async move { Ok(response) });
        };
        let slot = Slot::taken(slot);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| GrpcBody::new(HoldingBody { body, _slot: slot })))
        })
    }
}

/// One call's slot, counted in the in-flight gauge from the moment it is taken until it is dropped (with the
/// response body, or with the call when it never produced one).
struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn taken(permit: OwnedSemaphorePermit) -> Slot {
        metrics::gauge!(IN_FLIGHT_GAUGE).increment(1.0);
        Slot { _permit: permit }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!(IN_FLIGHT_GAUGE).decrement(1.0);
    }
}

/// A response body that keeps its call's slot until it is dropped: sent in full, or abandoned.
struct HoldingBody {
    body: GrpcBody,
    _slot: Slot,
}

impl Body for HoldingBody {
    type Data = <GrpcBody as Body>::Data;
    type Error = <GrpcBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
