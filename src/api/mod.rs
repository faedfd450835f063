//! The API boundary: gRPC handlers for `cachecoord.v1.CacheService`. Handlers only convert proto messages to
//! domain calls on the [`Coordinator`] and back; errors become statuses in [`status`].
//!
//! Every handler runs in an `rpc` span with fields for the key (redacted for sensitive entities), entity, source
//! and status code, and is counted in `cachecoord_requests_total{rpc, code}` and timed in
//! `cachecoord_request_duration_seconds{rpc}`. Values are never logged.

mod deadline;
mod status;

pub use status::{ERROR_DOMAIN, to_status};

use crate::auth::{Action, Authenticator, Caller};
use crate::cache::{Coordinator, Lookup, ReadOptions, SetCommand, Source};
use crate::proto::cache_service_server::CacheService;
use crate::proto::{
    self, BatchGetRequest, BatchGetResponse, BatchGetResult, BatchSetRequest, BatchSetResponse,
    EntityStats, GetRequest, GetResponse, InvalidatePatternRequest, InvalidatePatternResponse,
    InvalidateRequest, InvalidateResponse, SetRequest, SetResponse, StatsRequest, StatsResponse,
};
use crate::{Error, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span, field::Empty};

/// The CacheService implementation handed to tonic.
#[derive(Clone)]
pub struct CacheApi {
    coordinator: Arc<Coordinator>,
    auth: Arc<Authenticator>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

impl CacheApi {
    /// Serves `coordinator` over gRPC to the callers `auth` admits, at most `max_in_flight` calls at once.
    pub fn new(
        coordinator: Arc<Coordinator>,
        auth: Arc<Authenticator>,
        max_in_flight: usize,
    ) -> CacheApi {
        CacheApi {
            coordinator,
            auth,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        }
    }

    /// Who is calling, and a slot among the calls in flight: UNAUTHENTICATED without a valid token, and
    /// RESOURCE_EXHAUSTED at once (never a queue) when every slot is taken.
    fn admit(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Admitted> {
        let caller = self.auth.authenticate(metadata)?;
        let permit = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Overloaded {
                max: self.max_in_flight,
            })?;
        Ok(Admitted {
            caller,
            _permit: permit,
        })
    }

    /// Records the key and entity on the current span; keys of sensitive entities are redacted.
    fn describe_key(&self, raw: &str) {
        let policy = self.coordinator.policies().for_raw(raw);
        let span = Span::current();
        span.record("entity", policy.name.as_str());
        if policy.sensitive {
            span.record("key", "<redacted>");
        } else {
            span.record("key", raw);
        }
    }
}

/// An admitted call: its caller, and its slot among the calls in flight. The slot is freed when this is dropped,
/// so handlers bind it (`let admitted = admitted?;`) for the whole call.
struct Admitted {
    caller: Arc<Caller>,
    _permit: OwnedSemaphorePermit,
}

/// The span of one RPC, continuing the caller's trace when its metadata carries W3C trace context.
fn rpc_span(rpc: &'static str, metadata: &tonic::metadata::MetadataMap) -> Span {
    let span = tracing::info_span!(
        "rpc",
        rpc,
        key = Empty,
        entity = Empty,
        source = Empty,
        code = Empty
    );
    crate::telemetry::continue_trace(&span, metadata);
    span
}

/// Ends a handler: counts and times the call, records its status code, converts the result.
fn finish<T>(
    rpc: &'static str,
    started: Instant,
    result: Result<T>,
) -> Result<Response<T>, Status> {
    let result = result.map(Response::new).map_err(|e| to_status(&e));
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    let code_name = format!("{code:?}");
    Span::current().record("code", code_name.as_str());
    metrics::counter!("cachecoord_requests_total", "rpc" => rpc, "code" => code_name).increment(1);
    metrics::histogram!("cachecoord_request_duration_seconds", "rpc" => rpc)
        .record(started.elapsed().as_secs_f64());
    result
}

#[tonic::async_trait]
impl CacheService for CacheApi {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let span = rpc_span("Get", request.metadata());
        async move {
            let started = Instant::now();
            let budget = deadline::budget(request.metadata());
            let admitted = self.admit(request.metadata());
            let request = request.into_inner();
            self.describe_key(&request.key);
            let response = async {
                let admitted = admitted?;
                let key = admitted.caller.key(Action::Read, &request.key)?;
                let options = ReadOptions {
                    cache_only: request.cache_only,
                };
                let lookup = deadline::within(budget, self.coordinator.get(&key, options)).await?;
                Span::current().record("source", lookup.source.label());
                let (found, value, source, ttl_remaining) = lookup_fields(lookup);
                Ok(GetResponse {
                    found,
                    value,
                    source,
                    ttl_remaining,
                })
            };
            finish("Get", started, response.await)
        }
        .instrument(span)
        .await
    }

    async fn batch_get(
        &self,
        request: Request<BatchGetRequest>,
    ) -> Result<Response<BatchGetResponse>, Status> {
        let span = rpc_span("BatchGet", request.metadata());
        async move {
            let started = Instant::now();
            let budget = deadline::budget(request.metadata());
            let admitted = self.admit(request.metadata());
            let BatchGetRequest { keys, cache_only } = request.into_inner();
            let response = async {
                let admitted = admitted?;
                let qualified = admitted.caller.keys(Action::Read, &keys)?;
                let options = ReadOptions { cache_only };
                let lookups =
                    deadline::within(budget, self.coordinator.batch_get(&qualified, options))
                        .await?;
                let results = keys
                    .into_iter()
                    .zip(lookups)
                    .map(|(key, lookup)| {
                        let (found, value, source, ttl_remaining) = lookup_fields(lookup);
                        BatchGetResult {
                            key,
                            found,
                            value,
                            source,
                            ttl_remaining,
                        }
                    })
                    .collect();
                Ok(BatchGetResponse { results })
            };
            finish("BatchGet", started, response.await)
        }
        .instrument(span)
        .await
    }

    async fn set(&self, request: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        let span = rpc_span("Set", request.metadata());
        async move {
            let started = Instant::now();
            let admitted = self.admit(request.metadata());
            let request = request.into_inner();
            self.describe_key(&request.key);
            let result = async {
                let admitted = admitted?;
                let command = set_command(&admitted.caller, request)?;
                let ttl = self.coordinator.set(command).await?;
                Ok(SetResponse {
                    ttl: Some(to_proto_duration(ttl)),
                })
            };
            finish("Set", started, result.await)
        }
        .instrument(span)
        .await
    }

    async fn batch_set(
        &self,
        request: Request<BatchSetRequest>,
    ) -> Result<Response<BatchSetResponse>, Status> {
        let span = rpc_span("BatchSet", request.metadata());
        async move {
            let started = Instant::now();
            let admitted = self.admit(request.metadata());
            let result = async {
                let admitted = admitted?;
                let caller = &admitted.caller;
                let commands = request
                    .into_inner()
                    .entries
                    .into_iter()
                    .map(|entry| set_command(caller, entry))
                    .collect::<Result<Vec<_>>>()?;
                let outcome = self.coordinator.batch_set(commands).await?;
                let stale_keys = outcome
                    .stale_keys
                    .iter()
                    .map(|key| caller.unqualify(key).to_owned())
                    .collect();
                Ok(BatchSetResponse {
                    written: outcome.written,
                    stale_keys,
                })
            };
            finish("BatchSet", started, result.await)
        }
        .instrument(span)
        .await
    }

    async fn invalidate(
        &self,
        request: Request<InvalidateRequest>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        let span = rpc_span("Invalidate", request.metadata());
        async move {
            let started = Instant::now();
            let admitted = self.admit(request.metadata());
            let keys = request.into_inner().keys;
            let result = async {
                let admitted = admitted?;
                let keys = admitted.caller.keys(Action::Invalidate, &keys)?;
                let deleted = self.coordinator.invalidate(&keys).await?;
                Ok(InvalidateResponse { deleted })
            };
            finish("Invalidate", started, result.await)
        }
        .instrument(span)
        .await
    }

    async fn invalidate_pattern(
        &self,
        request: Request<InvalidatePatternRequest>,
    ) -> Result<Response<InvalidatePatternResponse>, Status> {
        let span = rpc_span("InvalidatePattern", request.metadata());
        async move {
            let started = Instant::now();
            let admitted = self.admit(request.metadata());
            let pattern = request.into_inner().pattern;
            self.describe_key(&pattern);
            let result = async {
                let admitted = admitted?;
                let pattern = admitted.caller.pattern(&pattern)?;
                let deleted = self.coordinator.invalidate_pattern(&pattern).await?;
                Ok(InvalidatePatternResponse { deleted })
            };
            finish("InvalidatePattern", started, result.await)
        }
        .instrument(span)
        .await
    }

    async fn stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        let span = rpc_span("Stats", request.metadata());
        async move {
            let started = Instant::now();
            if let Err(error) = self.admit(request.metadata()) {
                return finish("Stats", started, Err(error));
            }
            let entities = self
                .coordinator
                .stats()
                .into_iter()
                .map(|stats| EntityStats {
                    hits: stats.count(Source::Hit),
                    near_hits: stats.count(Source::NearHit),
                    negative_hits: stats.count(Source::Negative),
                    stale: stats.count(Source::Stale),
                    misses: stats.count(Source::Miss),
                    loads: stats.count(Source::Loaded),
                    coalesced: stats.count(Source::Coalesced),
                    fallbacks: stats.count(Source::Fallback),
                    hit_ratio: stats.hit_ratio(),
                    entity: stats.entity,
                })
                .collect();
            finish("Stats", started, Ok(StatsResponse { entities }))
        }
        .instrument(span)
        .await
    }
}

/// The fields GetResponse and BatchGetResult share.
fn lookup_fields(lookup: Lookup) -> (bool, bytes::Bytes, i32, Option<prost_types::Duration>) {
    let source = match lookup.source {
        Source::Hit => proto::Source::Hit,
        Source::Miss => proto::Source::Miss,
        Source::Loaded => proto::Source::Loaded,
        Source::Coalesced => proto::Source::Coalesced,
        Source::Stale => proto::Source::Stale,
        Source::Fallback => proto::Source::Fallback,
        Source::Negative => proto::Source::Negative,
        Source::NearHit => proto::Source::NearHit,
    };
    (
        lookup.value.is_some(),
        lookup.value.unwrap_or_default(),
        source as i32,
        lookup.ttl_remaining.map(to_proto_duration),
    )
}

fn set_command(caller: &Caller, request: SetRequest) -> Result<SetCommand> {
    let ttl = request
        .ttl
        .map(|ttl| from_proto_duration(&request.key, ttl))
        .transpose()?;
    Ok(SetCommand {
        key: caller.key(Action::Write, &request.key)?,
        value: request.value,
        ttl,
        version: request.version,
    })
}

fn from_proto_duration(key: &str, ttl: prost_types::Duration) -> Result<Duration> {
    Duration::try_from(ttl).map_err(|e| Error::InvalidTtl {
        key: key.to_owned(),
        reason: format!("{e} (it must be a non-negative google.protobuf.Duration)"),
    })
}

fn to_proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(duration).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}
