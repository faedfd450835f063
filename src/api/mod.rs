//! The API boundary: gRPC handlers for `cachecoord.v1.CacheService`. Handlers only convert proto messages to
//! domain calls on the [`Coordinator`] and back; errors become statuses in [`status`].

mod deadline;
mod status;

pub use status::{ERROR_DOMAIN, to_status};

use crate::cache::{Coordinator, Lookup, ReadOptions, SetCommand, Source};
use crate::proto::cache_service_server::CacheService;
use crate::proto::{
    self, BatchGetRequest, BatchGetResponse, BatchGetResult, BatchSetRequest, BatchSetResponse,
    GetRequest, GetResponse, InvalidatePatternRequest, InvalidatePatternResponse,
    InvalidateRequest, InvalidateResponse, SetRequest, SetResponse,
};
use crate::{Error, Result};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};
use tracing::instrument;

/// The CacheService implementation handed to tonic.
#[derive(Clone)]
pub struct CacheApi {
    coordinator: Arc<Coordinator>,
}

impl CacheApi {
    /// Serves `coordinator` over gRPC.
    pub fn new(coordinator: Arc<Coordinator>) -> CacheApi {
        CacheApi { coordinator }
    }
}

fn respond<T>(result: Result<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|e| to_status(&e))
}

#[tonic::async_trait]
impl CacheService for CacheApi {
    #[instrument(skip_all, fields(key = %request.get_ref().key))]
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let budget = deadline::budget(request.metadata());
        let request = request.into_inner();
        let options = ReadOptions {
            cache_only: request.cache_only,
        };
        let lookup = deadline::within(budget, self.coordinator.get(&request.key, options)).await;
        respond(lookup.map(|lookup| {
            let (found, value, source, ttl_remaining) = lookup_fields(lookup);
            GetResponse {
                found,
                value,
                source,
                ttl_remaining,
            }
        }))
    }

    #[instrument(skip_all, fields(keys = request.get_ref().keys.len()))]
    async fn batch_get(
        &self,
        request: Request<BatchGetRequest>,
    ) -> Result<Response<BatchGetResponse>, Status> {
        let budget = deadline::budget(request.metadata());
        let BatchGetRequest { keys, cache_only } = request.into_inner();
        let options = ReadOptions { cache_only };
        let lookups = deadline::within(budget, self.coordinator.batch_get(&keys, options)).await;
        respond(lookups.map(|lookups| {
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
            BatchGetResponse { results }
        }))
    }

    #[instrument(skip_all, fields(key = %request.get_ref().key))]
    async fn set(&self, request: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        let result = async {
            let command = set_command(request.into_inner())?;
            let ttl = self.coordinator.set(command).await?;
            Ok(SetResponse {
                ttl: Some(to_proto_duration(ttl)),
            })
        };
        respond(result.await)
    }

    #[instrument(skip_all, fields(entries = request.get_ref().entries.len()))]
    async fn batch_set(
        &self,
        request: Request<BatchSetRequest>,
    ) -> Result<Response<BatchSetResponse>, Status> {
        let result = async {
            let commands = request
                .into_inner()
                .entries
                .into_iter()
                .map(set_command)
                .collect::<Result<Vec<_>>>()?;
            let outcome = self.coordinator.batch_set(commands).await?;
            Ok(BatchSetResponse {
                written: outcome.written,
                stale_keys: outcome.stale_keys,
            })
        };
        respond(result.await)
    }

    #[instrument(skip_all, fields(keys = request.get_ref().keys.len()))]
    async fn invalidate(
        &self,
        request: Request<InvalidateRequest>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        let keys = request.into_inner().keys;
        respond(
            self.coordinator
                .invalidate(&keys)
                .await
                .map(|deleted| InvalidateResponse { deleted }),
        )
    }

    #[instrument(skip_all, fields(pattern = %request.get_ref().pattern))]
    async fn invalidate_pattern(
        &self,
        request: Request<InvalidatePatternRequest>,
    ) -> Result<Response<InvalidatePatternResponse>, Status> {
        let pattern = request.into_inner().pattern;
        respond(
            self.coordinator
                .invalidate_pattern(&pattern)
                .await
                .map(|deleted| InvalidatePatternResponse { deleted }),
        )
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

fn set_command(request: SetRequest) -> Result<SetCommand> {
    let ttl = request
        .ttl
        .map(|ttl| from_proto_duration(&request.key, ttl))
        .transpose()?;
    Ok(SetCommand {
        key: request.key,
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
