//! Proto messages ↔ domain types. Every conversion destructures the message or value it reads, so a field added
//! to the contract (or to the domain) breaks the build here instead of being dropped silently.
//!
//! Keys cross this boundary as the caller spelled them: putting them in (and taking them out of) the caller's
//! namespace is the handlers' job, because it depends on who is calling.

use crate::cache::{
    CheckResult, EntityStats, Lookup, NodeHealth, NoticeDelays, SetCommand, Source,
};
use crate::proto::{self, BatchGetResult, GetResponse, SetRequest, SetResponse};
use crate::{Error, Result};
use std::time::Duration;

impl From<Source> for proto::Source {
    fn from(source: Source) -> proto::Source {
        match source {
            Source::Hit => proto::Source::Hit,
            Source::Miss => proto::Source::Miss,
            Source::Loaded => proto::Source::Loaded,
            Source::Coalesced => proto::Source::Coalesced,
            Source::Stale => proto::Source::Stale,
            Source::Fallback => proto::Source::Fallback,
            Source::Negative => proto::Source::Negative,
            Source::NearHit => proto::Source::NearHit,
        }
    }
}

impl From<Lookup> for GetResponse {
    fn from(lookup: Lookup) -> GetResponse {
        let Lookup {
            value,
            source,
            ttl_remaining,
            lease_token,
        } = lookup;
        GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
            source: proto::Source::from(source) as i32,
            ttl_remaining: ttl_remaining.map(to_proto_duration),
            lease_token: lease_token.unwrap_or_default(),
        }
    }
}

/// One key's answer in a BatchGet: the key as the caller spelled it, and its lookup.
impl From<(String, Lookup)> for BatchGetResult {
    fn from((key, lookup): (String, Lookup)) -> BatchGetResult {
        // A field added to GetResponse must be added here too.
        let GetResponse {
            found,
            value,
            source,
            ttl_remaining,
            lease_token,
        } = lookup.into();
        BatchGetResult {
            key,
            found,
            value,
            source,
            ttl_remaining,
            lease_token,
        }
    }
}

/// A write as the caller asked for it; its key is still the caller's own (not yet in its namespace).
impl TryFrom<SetRequest> for SetCommand {
    type Error = Error;

    fn try_from(request: SetRequest) -> Result<SetCommand> {
        let SetRequest {
            key,
            value,
            ttl,
            version,
            lease_token,
        } = request;
        let ttl = ttl.map(|ttl| from_proto_duration(&key, ttl)).transpose()?;
        Ok(SetCommand {
            key,
            value,
            ttl,
            version,
            // An empty token is no token: a plain Set.
            lease_token: (!lease_token.is_empty()).then_some(lease_token),
        })
    }
}

/// The TTL a write was stored with.
impl From<Duration> for SetResponse {
    fn from(ttl: Duration) -> SetResponse {
        SetResponse {
            ttl: Some(to_proto_duration(ttl)),
        }
    }
}

impl From<NoticeDelays> for proto::NearCacheStats {
    fn from(delays: NoticeDelays) -> proto::NearCacheStats {
        let NoticeDelays { measured, p50, p99 } = delays;
        let duration = |d: Duration| Some(to_proto_duration(d));
        proto::NearCacheStats {
            notices_measured: measured,
            notice_delay_p50: duration(p50),
            notice_delay_p99: duration(p99),
        }
    }
}

impl From<EntityStats> for proto::EntityStats {
    fn from(stats: EntityStats) -> proto::EntityStats {
        let mut message = proto::EntityStats {
            entity: String::new(),
            hits: 0,
            near_hits: 0,
            negative_hits: 0,
            stale: 0,
            misses: 0,
            loads: 0,
            coalesced: 0,
            fallbacks: 0,
            hit_ratio: stats.hit_ratio(),
            consistency_checks: None,
            staleness_ratio: stats.staleness_ratio(),
        };
        // Exhaustive, so a new source fails the build until it has a field.
        for (source, count) in stats.by_source() {
            let field = match source {
                Source::Hit => &mut message.hits,
                Source::NearHit => &mut message.near_hits,
                Source::Negative => &mut message.negative_hits,
                Source::Stale => &mut message.stale,
                Source::Miss => &mut message.misses,
                Source::Loaded => &mut message.loads,
                Source::Coalesced => &mut message.coalesced,
                Source::Fallback => &mut message.fallbacks,
            };
            *field = count;
        }
        let mut checks = proto::ConsistencyChecks::default();
        // Exhaustive too: a new result needs its field.
        for (result, count) in stats.checks_by_result() {
            let field = match result {
                CheckResult::Fresh => &mut checks.fresh,
                CheckResult::Stale => &mut checks.stale,
                CheckResult::InFlight => &mut checks.in_flight,
                CheckResult::Dropped => &mut checks.dropped,
                CheckResult::BreakerOpen => &mut checks.breaker_open,
                CheckResult::LoaderError => &mut checks.loader_error,
                CheckResult::NoLoader => &mut checks.no_loader,
            };
            *field = count;
        }
        message.consistency_checks = Some(checks);
        // The counts and checks were read above, one per source and result.
        let EntityStats {
            entity,
            counts: _,
            checks: _,
        } = stats;
        message.entity = entity;
        message
    }
}

impl From<NodeHealth> for proto::RedisNode {
    fn from(health: NodeHealth) -> proto::RedisNode {
        let NodeHealth {
            node,
            role,
            used_memory_bytes,
            maxmemory_bytes,
            maxmemory_policy,
            evicted_keys,
            replication_lag_bytes,
            oom_refusals,
            busy_refusals,
        } = health;
        proto::RedisNode {
            node,
            role,
            used_memory_bytes,
            maxmemory_bytes,
            maxmemory_policy,
            evicted_keys,
            replication_lag_bytes,
            oom_refusals,
            busy_refusals,
        }
    }
}

fn from_proto_duration(key: &str, ttl: prost_types::Duration) -> Result<Duration> {
    Duration::try_from(ttl).map_err(|e| Error::InvalidTtl {
        key: key.to_owned(),
        reason: format!("{e} (it must be a non-negative google.protobuf.Duration)"),
    })
}

/// Durations too long for the proto type are sent as its maximum.
fn to_proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(duration).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}
