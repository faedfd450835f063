//! What every RPC goes through, whatever it does: its span, the caller admission found, the caller's deadline,
//! its response's bytes charged to its budget, and its metrics. [`CacheApi::handle`] owns all of them, so a
//! handler only converts its request and calls the coordinator. (Admission itself — the token, the call's slot,
//! its request bytes — happens from the headers, before tonic reads the body: `admission`.)

use super::admission::{CallBudget, RESPONSE_ALLOWANCE};
use super::{CacheApi, deadline, to_status};
use crate::auth::Caller;
use crate::cache::Lookup;
use crate::{Error, Result};
use bytes::Bytes;
use metrics::{Counter, Histogram};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span, field::Empty};

/// What the wrapper needs to know about an RPC, implemented by its request message.
pub(super) trait Rpc {
    /// The RPC's name in spans and metrics, e.g. `Get`.
    const NAME: &'static str;
    /// Whether the call answers DEADLINE_EXCEEDED itself when the caller's `grpc-timeout` runs out.
    const DEADLINE: Deadline;

    /// The key or pattern recorded on the span, for requests that name exactly one.
    fn key(&self) -> Option<&str> {
        None
    }
}

tokio::task_local! {
    /// When the running call must be answered at the latest, for calls that answer their deadline themselves.
    static ANSWER_BY: Option<Instant>;
    /// The leases the running call's answer hands out (key as the read named it, token): if the call fails after
    /// all (its answer refused as too large, or by the memory budget once built), nobody will fill or release them,
    /// so they are given back at once rather than stranded until their TTL.
    static HANDED_OUT: RefCell<Vec<(String, Bytes)>>;
}

/// Records that the running call's answer hands out `lookup`'s lease on `key` (qualified as the read named it),
/// when it carries one.
pub(super) fn handing_out(key: &str, lookup: &Lookup) {
    if let Some(token) = &lookup.lease_token {
        let _ =
            HANDED_OUT.try_with(|leases| leases.borrow_mut().push((key.to_owned(), token.clone())));
    }
}

/// Part of a call's budget kept for answering once a wait inside it gives up: about a store round trip.
const ANSWER_MARGIN: Duration = Duration::from_millis(20);

/// When the running call should stop waiting (on another caller's fill) so that it still answers within the
/// caller's deadline; `None` without a deadline (or outside a call).
pub(super) fn answer_by() -> Option<Instant> {
    ANSWER_BY.try_with(|by| *by).ok().flatten()
}

/// Who enforces the caller's `grpc-timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Deadline {
    /// The call, a little before tonic would: the caller gets DEADLINE_EXCEEDED with an ErrorInfo. Reads, which
    /// may wait on a load.
    Answered,
    /// tonic alone (CANCELLED, no details).
    LeftToTonic,
}

impl CacheApi {
    /// Runs one RPC: `body` gets the admitted caller and the request message, and returns the response message.
    /// The call runs in an `rpc` span; a rejected caller never reaches `body`.
    pub(super) async fn handle<Req, Resp, Body>(
        &self,
        request: Request<Req>,
        body: impl FnOnce(Arc<Caller>, Req) -> Body,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Rpc,
        Resp: prost::Message,
        Body: Future<Output = Result<Resp>>,
    {
        let span = rpc_span(Req::NAME, request.metadata());
        async move {
            let started = Instant::now();
            let budget = match Req::DEADLINE {
                Deadline::Answered => deadline::budget(request.metadata()),
                Deadline::LeftToTonic => None,
            };
            // Admission put both there before the body was read; a call cannot arrive here without them.
            let admitted = request
                .extensions()
                .get::<Arc<Caller>>()
                .cloned()
                .zip(request.extensions().get::<Arc<CallBudget>>().cloned())
                .ok_or(Error::Unauthenticated {
                    reason: "the call was not admitted",
                });
            let request = request.into_inner();
            // A span nobody records (its level filtered out, no trace export) is not worth describing.
            if let Some(key) = request.key().filter(|_| !Span::current().is_disabled()) {
                self.describe_key(key);
            }
            let answer_by = budget
                .map(|budget| started + budget.saturating_sub(ANSWER_MARGIN.min(budget / 10)));
            let result = match admitted {
                Ok((caller, call_budget)) => {
                    let call = deadline::within(budget, body(caller, request));
                    let answered = async {
                        let result = ANSWER_BY
                            .scope(answer_by, call)
                            .await
                            // The encoded answer is held until sent: it counts against the call's budget
                            // (beyond the allowance taken at admission).
                            .and_then(|response| {
                                call_budget.hold(
                                    response.encoded_len().saturating_sub(RESPONSE_ALLOWANCE),
                                )?;
                                Ok(response)
                            });
                        if result.is_err() {
                            self.coordinator
                                .give_back_leases(HANDED_OUT.with(RefCell::take));
                        }
                        result
                    };
                    HANDED_OUT.scope(RefCell::new(Vec::new()), answered).await
                }
                Err(error) => Err(error),
            };
            self.metrics.finish(Req::NAME, started, result)
        }
        .instrument(span)
        .await
    }

    /// Records the key and entity on the current span; keys of sensitive entities as a keyed hash.
    fn describe_key(&self, raw: &str) {
        let (entity, shown) = self.coordinator.describe_key(raw);
        let span = Span::current();
        span.record("entity", entity);
        span.record("key", shown.as_str());
    }
}

/// The span of one RPC, continuing the caller's trace when its metadata carries W3C trace context.
fn rpc_span(rpc: &'static str, metadata: &MetadataMap) -> Span {
    let span = tracing::info_span!(
        "rpc",
        rpc,
        key = Empty,
        entity = Empty,
        source = Empty,
        code = Empty
    );
    if !span.is_disabled() {
        crate::telemetry::continue_trace(&span, metadata);
    }
    span
}

/// The series of `cachecoord_requests_total{rpc, code}` and `cachecoord_request_duration_seconds{rpc}`, each
/// looked up in the metrics registry the first time an RPC ends with a code and kept: a call does not build
/// the label set and search the registry again.
#[derive(Default)]
pub(super) struct RpcMetrics {
    series: RwLock<HashMap<(&'static str, tonic::Code), Series>>,
}

/// The request counter of one RPC and status code, and the RPC's duration histogram.
type Series = (Counter, Histogram);

impl RpcMetrics {
    /// Ends a call: counts and times it, records its status code, converts the result.
    fn finish<T>(
        &self,
        rpc: &'static str,
        started: Instant,
        result: Result<T>,
    ) -> Result<Response<T>, Status> {
        let result = result.map(Response::new).map_err(|e| to_status(&e));
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        let span = Span::current();
        if !span.is_disabled() {
            span.record("code", format!("{code:?}").as_str());
        }
        let (counter, histogram) = self.series(rpc, code);
        counter.increment(1);
        histogram.record(started.elapsed().as_secs_f64());
        result
    }

    /// The series of `rpc` ending with `code`.
    fn series(&self, rpc: &'static str, code: tonic::Code) -> Series {
        let known = self.series.read().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = known.get(&(rpc, code)) {
            return series.clone();
        }
        drop(known);
        let mut known = self.series.write().unwrap_or_else(|e| e.into_inner());
        known
            .entry((rpc, code))
            .or_insert_with(|| {
                (
                    metrics::counter!("cachecoord_requests_total", "rpc" => rpc, "code" => format!("{code:?}")),
                    metrics::histogram!("cachecoord_request_duration_seconds", "rpc" => rpc),
                )
            })
            .clone()
    }
}
