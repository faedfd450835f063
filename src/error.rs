//! The domain error: every way a cachecoord operation can fail, with no knowledge of gRPC. `api::status` turns
//! it into a `tonic::Status` in one exhaustive match.

use std::time::Duration;

/// The boxed cause of a backend failure, kept as the error's `source()` chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in cachecoord.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key does not follow the key grammar.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key as received (truncated for display).
        key: String,
        /// What is wrong with it, phrased so a person can fix it.
        reason: String,
    },

    /// A pattern does not follow the pattern grammar.
    #[error("invalid pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern as received (truncated for display).
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A pattern could match keys of every entity and the server does not allow that.
    #[error(
        "pattern {pattern:?} is too broad: its first segment must be a literal entity followed by ':', \
         e.g. user:123:* (set invalidation.allow_cross_entity_patterns to allow it)"
    )]
    PatternTooBroad {
        /// The pattern as received (truncated for display).
        pattern: String,
    },

    /// The key or value names a secret, and secrets are never cached.
    #[error(
        "{key:?} is not cacheable: {reason} (secrets are never cached; see sensitive_data.deny)"
    )]
    SensitiveData {
        /// The key written.
        key: String,
        /// What matched the deny-list.
        reason: String,
    },

    /// A value exceeds the configured maximum size.
    #[error("value for {key:?} is {size} bytes; the limit is {max} bytes")]
    ValueTooLarge {
        /// The key the value was meant for.
        key: String,
        /// The value's size in bytes.
        size: usize,
        /// The configured limit in bytes.
        max: usize,
    },

    /// A requested TTL lies outside the configured bounds.
    #[error("ttl {ttl:?} for {key:?} is outside the allowed range {min:?}..={max:?}")]
    TtlOutOfBounds {
        /// The key the TTL was meant for.
        key: String,
        /// The requested TTL.
        ttl: Duration,
        /// The smallest TTL allowed.
        min: Duration,
        /// The largest TTL allowed.
        max: Duration,
    },

    /// A TTL could not be understood at all (negative, or out of range).
    #[error("ttl for {key:?} is invalid: {reason}")]
    InvalidTtl {
        /// The key the TTL was meant for.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A request that needs at least one key or entry has none.
    #[error("the request has no {what}; send at least one")]
    EmptyRequest {
        /// What was missing: "keys" or "entries".
        what: &'static str,
    },

    /// A batch holds more items than the configured limit.
    #[error("the request has {count} {what}; the limit is {max} per call, split it")]
    BatchTooLarge {
        /// What was counted: "keys" or "entries".
        what: &'static str,
        /// How many the request held.
        count: usize,
        /// The configured limit.
        max: usize,
    },

    /// A versioned Set carried a version lower than the stored entry's.
    #[error("{key:?} holds a newer version than {version}; the write was refused")]
    StaleVersion {
        /// The key written.
        key: String,
        /// The version the request carried.
        version: u64,
    },

    /// A fill under a lease found the lease gone: an invalidation or a write voided it, it ran out, or the token
    /// was never this key's. Nothing was written.
    #[error(
        "the lease on {key:?} no longer holds (a write or an invalidation voided it, it ran out, or the token is \
         not this key's); nothing was written: use the value you loaded without caching it"
    )]
    LeaseLost {
        /// The key written.
        key: String,
    },

    /// The loader failed or timed out, and no stale value could stand in.
    #[error("loading {key:?} failed: {source}")]
    LoaderFailed {
        /// The key being loaded (or the loader route, for configuration errors).
        key: String,
        /// The loader's own error.
        #[source]
        source: BoxError,
    },

    /// The caller's deadline ran out before the answer was ready.
    #[error(
        "the call's deadline ({budget:?} after arrival) ran out; any load started keeps filling the cache"
    )]
    DeadlineExceeded {
        /// The time the call had.
        budget: Duration,
    },

    /// An error shared by every caller that waited on the same load.
    #[error("{0}")]
    Shared(#[source] std::sync::Arc<Error>),

    /// The call carried no bearer token, or one the server does not know.
    #[error("{reason}; send `authorization: Bearer <token>` with a token issued for this service")]
    Unauthenticated {
        /// What was wrong with the credentials.
        reason: &'static str,
    },

    /// The caller's token does not allow this action on this key or pattern.
    #[error("token {token:?} may not {action} {target:?}: outside its {action} scopes")]
    PermissionDenied {
        /// The token's name (never the token itself).
        token: String,
        /// `read`, `write` or `invalidate`.
        action: &'static str,
        /// The key or pattern refused.
        target: String,
    },

    /// A call's answer would exceed the configured response size.
    #[error(
        "the answer would be {size} bytes; the limit is {max} bytes: ask for fewer keys per call"
    )]
    ResponseTooLarge {
        /// The answer's value bytes.
        size: usize,
        /// The configured limit in bytes.
        max: usize,
    },

    /// The replica, or the caller's share of it, is at its limit of calls in flight; the caller should back
    /// off and retry.
    #[error("the {whose} has {max} calls in flight, its limit; retry with backoff")]
    Overloaded {
        /// The configured limit.
        max: usize,
        /// `replica` or `caller`.
        whose: &'static str,
    },

    /// The replica, or the caller's share of it, holds as many request and response bytes as it may.
    #[error(
        "the {whose} holds its limit of {max} bytes of requests and responses; retry with backoff, \
         and read answers promptly"
    )]
    MemoryBudget {
        /// The configured limit in bytes.
        max: usize,
        /// `replica` or `caller`.
        whose: &'static str,
    },

    /// The request's body did not arrive in full within the limit.
    #[error("the request body did not arrive in full within {timeout:?}")]
    RequestBodyTimeout {
        /// The configured limit.
        timeout: std::time::Duration,
    },

    /// The cache backend (Redis) could not be reached or did not answer in time.
    #[error("cache backend unavailable: {source}")]
    BackendUnavailable {
        /// The backend's own error.
        #[source]
        source: BoxError,
    },

    /// The cache backend answered, but with something cachecoord cannot use.
    #[error("cache backend failed: {source}")]
    Backend {
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A configuration that cannot be used, with the reason (built by `config`, which checks every section).
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub(crate) String);

impl ConfigError {
    /// Refuses a configuration for `reason`.
    pub(crate) fn fail<T>(reason: impl Into<String>) -> std::result::Result<T, ConfigError> {
        Err(ConfigError(reason.into()))
    }
}

/// Why cachecoord cannot start: a setting or file it cannot use, or a backend it cannot reach at start-up.
/// Distinct from [`Error`], which is what a running call can meet and what callers see as a status: a start-up
/// failure is an operator's problem, reported once, and never reaches a caller.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A file or setting the configuration names cannot be used (TLS files, encryption keys, the tokens file,
    /// a loader route).
    #[error("cannot use {what}: {source}")]
    Unusable {
        /// What was being set up, e.g. "encryption keys".
        what: &'static str,
        /// Why it cannot be used.
        #[source]
        source: BoxError,
    },

    /// A backend did not answer at start-up.
    #[error("cannot reach {what} at start-up: {source}")]
    Unreachable {
        /// The backend, e.g. "Redis".
        what: &'static str,
        /// The backend's own error.
        #[source]
        source: Error,
    },
}

impl StartupError {
    /// A [`StartupError::Unusable`] for `what`, from any error.
    pub fn unusable(what: &'static str, source: impl Into<BoxError>) -> StartupError {
        StartupError::Unusable {
            what,
            source: source.into(),
        }
    }
}
