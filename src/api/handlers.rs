//! The nine CacheService handlers. Each takes its request message apart, puts keys in the caller's namespace,
//! calls the coordinator and converts the answer; [`CacheApi::handle`] does everything else.

use super::CacheApi;
use super::call::{Deadline, Rpc, answer_by, handing_out};
use crate::Result;
use crate::auth::{Action, Caller};
use crate::cache::{BatchSetOutcome, ReadOptions, SetCommand};
use crate::proto::cache_service_server::CacheService;
use crate::proto::{
    BatchGetRequest, BatchGetResponse, BatchSetRequest, BatchSetResponse, GetRequest, GetResponse,
    InvalidatePatternRequest, InvalidatePatternResponse, InvalidateRequest, InvalidateResponse,
    ReleaseLeaseRequest, ReleaseLeaseResponse, RenewLeaseRequest, RenewLeaseResponse, SetRequest,
    SetResponse, StatsRequest, StatsResponse,
};
use tonic::{Request, Response, Status};
use tracing::Span;

#[tonic::async_trait]
impl CacheService for CacheApi {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.handle(
            request,
            |caller,
             GetRequest {
                 key,
                 cache_only,
                 lease,
             }| async move {
                // Taking a lease is the right to fill the key: it needs the write scope too.
                if lease {
                    caller.key(Action::Write, &key)?;
                }
                let key = caller.key(Action::Read, &key)?;
                let options = ReadOptions {
                    cache_only,
                    lease,
                    wait_until: answer_by(),
                };
                let lookup = self.coordinator.get(&key, options).await?;
                handing_out(&key, &lookup);
                Span::current().record("source", lookup.source.label());
                Ok(lookup.into())
            },
        )
        .await
    }

    async fn batch_get(
        &self,
        request: Request<BatchGetRequest>,
    ) -> Result<Response<BatchGetResponse>, Status> {
        self.handle(
            request,
            |caller,
             BatchGetRequest {
                 keys,
                 cache_only,
                 lease,
             }| async move {
                if lease {
                    caller.keys(Action::Write, &keys)?;
                }
                let qualified = caller.keys(Action::Read, &keys)?;
                let options = ReadOptions {
                    cache_only,
                    lease,
                    wait_until: answer_by(),
                };
                let lookups = self.coordinator.batch_get(&qualified, options).await?;
                for (key, lookup) in qualified.iter().zip(&lookups) {
                    handing_out(key, lookup);
                }
                let sizes = lookups
                    .iter()
                    .map(|lookup| lookup.value.as_ref().map_or(0, |v| v.len()));
                self.coordinator.check_response_size(sizes)?;
                let results = keys.into_iter().zip(lookups).map(Into::into).collect();
                Ok(BatchGetResponse { results })
            },
        )
        .await
    }

    async fn set(&self, request: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        self.handle(request, |caller, request| async move {
            let ttl = self.coordinator.set(self.write(&caller, request)?).await?;
            Ok(ttl.into())
        })
        .await
    }

    async fn batch_set(
        &self,
        request: Request<BatchSetRequest>,
    ) -> Result<Response<BatchSetResponse>, Status> {
        self.handle(request, |caller, BatchSetRequest { entries }| async move {
            let commands = entries
                .into_iter()
                .map(|entry| self.write(&caller, entry))
                .collect::<Result<Vec<_>>>()?;
            let BatchSetOutcome {
                written,
                stale_keys,
                lease_lost_keys,
            } = self.coordinator.batch_set(commands).await?;
            let unqualified = |keys: Vec<String>| {
                keys.iter()
                    .map(|key| caller.unqualify(key).to_owned())
                    .collect()
            };
            Ok(BatchSetResponse {
                written,
                stale_keys: unqualified(stale_keys),
                lease_lost_keys: unqualified(lease_lost_keys),
            })
        })
        .await
    }

    async fn invalidate(
        &self,
        request: Request<InvalidateRequest>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        self.handle(request, |caller, InvalidateRequest { keys }| async move {
            let keys = caller.keys(Action::Invalidate, &keys)?;
            let deleted = self.coordinator.invalidate(&keys).await?;
            Ok(InvalidateResponse { deleted })
        })
        .await
    }

    async fn invalidate_pattern(
        &self,
        request: Request<InvalidatePatternRequest>,
    ) -> Result<Response<InvalidatePatternResponse>, Status> {
        self.handle(
            request,
            |caller, InvalidatePatternRequest { pattern }| async move {
                let pattern = caller.pattern(&pattern)?;
                let deleted = self.coordinator.invalidate_pattern(&pattern).await?;
                Ok(InvalidatePatternResponse { deleted })
            },
        )
        .await
    }

    async fn release_lease(
        &self,
        request: Request<ReleaseLeaseRequest>,
    ) -> Result<Response<ReleaseLeaseResponse>, Status> {
        self.handle(
            request,
            |caller, ReleaseLeaseRequest { key, lease_token }| async move {
                let key = caller.key(Action::Write, &key)?;
                let released = self.coordinator.release_lease(&key, &lease_token).await?;
                Ok(ReleaseLeaseResponse { released })
            },
        )
        .await
    }

    async fn renew_lease(
        &self,
        request: Request<RenewLeaseRequest>,
    ) -> Result<Response<RenewLeaseResponse>, Status> {
        self.handle(
            request,
            |caller, RenewLeaseRequest { key, lease_token }| async move {
                let key = caller.key(Action::Write, &key)?;
                let ttl = self.coordinator.renew_lease(&key, &lease_token).await?;
                Ok(RenewLeaseResponse {
                    ttl: Some(SetResponse::from(ttl).ttl.unwrap_or_default()),
                })
            },
        )
        .await
    }

    async fn stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        self.handle(request, |_caller, StatsRequest {}| async move {
            let entities = self
                .coordinator
                .stats()
                .into_iter()
                .map(Into::into)
                .collect();
            let redis_nodes = self
                .coordinator
                .store_health()
                .into_iter()
                .map(Into::into)
                .collect();
            let near_cache = self.coordinator.notice_delays().map(Into::into);
            Ok(StatsResponse {
                entities,
                redis_nodes,
                near_cache,
            })
        })
        .await
    }
}

impl CacheApi {
    /// A write with its key in the caller's namespace. The key is checked first: an oversized or malformed key is
    /// the error to report, whatever else is wrong with the request.
    fn write(&self, caller: &Caller, request: SetRequest) -> Result<SetCommand> {
        let key = caller.key(Action::Write, &request.key)?;
        self.coordinator.check_key(&key)?;
        let mut command = SetCommand::try_from(request)?;
        command.key = key;
        Ok(command)
    }
}

impl Rpc for GetRequest {
    const NAME: &'static str = "Get";
    const DEADLINE: Deadline = Deadline::Answered;

    fn key(&self) -> Option<&str> {
        Some(&self.key)
    }
}

impl Rpc for BatchGetRequest {
    const NAME: &'static str = "BatchGet";
    const DEADLINE: Deadline = Deadline::Answered;
}

impl Rpc for SetRequest {
    const NAME: &'static str = "Set";
    const DEADLINE: Deadline = Deadline::LeftToTonic;

    fn key(&self) -> Option<&str> {
        Some(&self.key)
    }
}

impl Rpc for BatchSetRequest {
    const NAME: &'static str = "BatchSet";
    const DEADLINE: Deadline = Deadline::LeftToTonic;
}

impl Rpc for InvalidateRequest {
    const NAME: &'static str = "Invalidate";
    const DEADLINE: Deadline = Deadline::LeftToTonic;
}

impl Rpc for InvalidatePatternRequest {
    const NAME: &'static str = "InvalidatePattern";
    const DEADLINE: Deadline = Deadline::LeftToTonic;

    fn key(&self) -> Option<&str> {
        Some(&self.pattern)
    }
}

impl Rpc for ReleaseLeaseRequest {
    const NAME: &'static str = "ReleaseLease";
    const DEADLINE: Deadline = Deadline::LeftToTonic;

    fn key(&self) -> Option<&str> {
        Some(&self.key)
    }
}

impl Rpc for RenewLeaseRequest {
    const NAME: &'static str = "RenewLease";
    const DEADLINE: Deadline = Deadline::LeftToTonic;

    fn key(&self) -> Option<&str> {
        Some(&self.key)
    }
}

impl Rpc for StatsRequest {
    const NAME: &'static str = "Stats";
    const DEADLINE: Deadline = Deadline::LeftToTonic;
}
