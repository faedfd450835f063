//! Loaders fill misses from the source of truth: the caller's own `LoaderService` over gRPC (`grpc`), or the
//! built-in Postgres loader (`postgres`). Routes are matched against the key in configured order; the first
//! match wins. Each loader bounds its own concurrency and time per load.

mod grpc;
mod postgres;

pub use grpc::GrpcLoader;
pub use postgres::PostgresLoader;

use crate::breaker::Breaker;
use crate::config::{Config, LoaderKind};
use crate::keys::{Key, Pattern};
use crate::{Error, Result, StartupError};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// What a loader found for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The value; `None` when the source has no such key.
    pub value: Option<Bytes>,
    /// A TTL the loader asks for, overriding the entity policy.
    pub ttl: Option<Duration>,
    /// The version of the row the value came from, when the loader reports it: the fill is then versioned.
    pub version: Option<u64>,
}

impl Loaded {
    /// The source has no such key.
    pub fn absent() -> Loaded {
        Loaded {
            value: None,
            ttl: None,
            version: None,
        }
    }

    /// `value`, with no TTL or version of its own.
    pub fn value(value: Bytes) -> Loaded {
        Loaded {
            value: Some(value),
            ttl: None,
            version: None,
        }
    }
}

/// A source of truth that can fill misses.
#[async_trait]
pub trait Loader: Send + Sync {
    /// Loads one key.
    async fn load(&self, key: &Key) -> Result<Loaded>;

    /// Loads several keys (all matched by this loader's route) in one call; one answer per key, in order.
    async fn load_many(&self, keys: &[Key]) -> Result<Vec<Loaded>>;

    /// Whether a call would reach the source now: false while the route's circuit breaker is open. Work that
    /// may be skipped (the staleness sampler) asks first, so it never spends the probe a caller's load needs.
    fn available(&self) -> bool {
        true
    }
}

/// The parts a loader is told about: entity, id, and the field (everything after the id).
pub fn key_parts(key: &Key) -> (&str, &str, &str) {
    let mut parts = key.local().splitn(3, ':');
    let entity = parts.next().unwrap_or_default();
    let id = parts.next().unwrap_or_default();
    let field = parts.next().unwrap_or_default();
    (entity, id, field)
}

/// The loader routes, in configured order.
#[derive(Clone, Default)]
pub struct Loaders {
    routes: Vec<(Pattern, Arc<dyn Loader>)>,
}

impl Loaders {
    /// Builds every configured loader. Connections are made lazily, so a loader that is down at start-up does
    /// not keep cachecoord from serving cached keys.
    pub fn from_config(config: &Config) -> Result<Loaders, StartupError> {
        let mut routes: Vec<(Pattern, Arc<dyn Loader>)> = Vec::new();
        let unusable = |e: Error| StartupError::unusable("loader route", e);
        for route in &config.loaders {
            let pattern = Pattern::parse(&route.pattern, config.limits.max_key_bytes, true)
                .map_err(unusable)?;
            let loader: Arc<dyn Loader> = match route.kind {
                LoaderKind::Grpc => Arc::new(
                    // A loader's answer may be as large as a response the replica would send.
                    GrpcLoader::new(route, config.limits.max_response_bytes).map_err(unusable)?,
                ),
                LoaderKind::Postgres => {
                    Arc::new(PostgresLoader::new(route, &config.postgres).map_err(unusable)?)
                }
            };
            let metered = Metered {
                route: route.pattern.clone(),
                inner: loader,
                breaker: Breaker::new(
                    format!("loader {}", route.pattern),
                    route.breaker_failures,
                    route.breaker_cooldown,
                ),
                max_value_bytes: config.limits.max_value_bytes,
            };
            // Exported at 0 from the start, so a rate() over it (the loader-errors alert) has a series.
            metrics::counter!("cachecoord_loader_errors_total", "route" => metered.route.clone())
                .increment(0);
            routes.push((pattern, Arc::new(metered) as Arc<dyn Loader>));
        }
        Ok(Loaders { routes })
    }

    /// Loaders given directly, for embedding and tests.
    pub fn from_routes(routes: Vec<(Pattern, Arc<dyn Loader>)>) -> Loaders {
        Loaders { routes }
    }

    /// The route that fills `key`: its index (to group keys per loader) and the loader.
    pub fn for_key(&self, key: &Key) -> Option<(usize, &Arc<dyn Loader>)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, (pattern, _))| pattern.matches(key.local()))
            .map(|(index, (_, loader))| (index, loader))
    }
}

/// A loader decorator: the route's circuit breaker (a failing loader gets one probe per cooldown instead of
/// every miss), a `loader` span per call, and the `cachecoord_loader_*` metrics under the route's pattern.
struct Metered {
    route: String,
    inner: Arc<dyn Loader>,
    breaker: Breaker,
    /// `limits.max_value_bytes`: a loader's value is held to the limit a Set's is.
    max_value_bytes: usize,
}

impl Metered {
    /// Refuses a loaded value over `limits.max_value_bytes`: it would be cached and served past the limit every
    /// Set is held to.
    fn within_limit(&self, key: &Key, loaded: &Loaded) -> Result<()> {
        let size = loaded.value.as_ref().map_or(0, Bytes::len);
        if size > self.max_value_bytes {
            metrics::counter!("cachecoord_loader_errors_total", "route" => self.route.clone())
                .increment(1);
            return Err(Error::LoaderFailed {
                key: key.to_string(),
                source: format!(
                    "the loader returned a {size}-byte value; limits.max_value_bytes is {}",
                    self.max_value_bytes
                )
                .into(),
            });
        }
        Ok(())
    }

    async fn observe<T>(&self, call: impl Future<Output = Result<T>>, keys: usize) -> Result<T> {
        use tracing::Instrument;
        if !self.breaker.allow() {
            metrics::counter!("cachecoord_loader_rejected_total", "route" => self.route.clone())
                .increment(1);
            return Err(Error::LoaderFailed {
                key: self.route.clone(),
                source:
                    "circuit breaker open: the loader kept failing; it gets one probe per cooldown"
                        .into(),
            });
        }
        let started = std::time::Instant::now();
        let span = tracing::info_span!("loader", route = %self.route, keys, outcome = tracing::field::Empty);
        let result = call.instrument(span.clone()).await;
        let route = self.route.clone();
        metrics::histogram!("cachecoord_loader_duration_seconds", "route" => route.clone())
            .record(started.elapsed().as_secs_f64());
        span.record("outcome", if result.is_ok() { "ok" } else { "error" });
        match &result {
            Ok(_) => self.breaker.record_success(),
            Err(_) => {
                self.breaker.record_failure();
                metrics::counter!("cachecoord_loader_errors_total", "route" => route).increment(1);
            }
        }
        result
    }
}

#[async_trait]
impl Loader for Metered {
    async fn load(&self, key: &Key) -> Result<Loaded> {
        let loaded = self.observe(self.inner.load(key), 1).await?;
        self.within_limit(key, &loaded)?;
        Ok(loaded)
    }

    async fn load_many(&self, keys: &[Key]) -> Result<Vec<Loaded>> {
        let loaded = self.observe(self.inner.load_many(keys), keys.len()).await?;
        for (key, one) in keys.iter().zip(&loaded) {
            self.within_limit(key, one)?;
        }
        Ok(loaded)
    }

    fn available(&self) -> bool {
        !self.breaker.is_open()
    }
}

/// Runs one load under the loader's concurrency limit and timeout.
pub(crate) async fn bounded<T>(
    key: &Key,
    permits: &tokio::sync::Semaphore,
    timeout: Duration,
    load: impl Future<Output = Result<T>>,
) -> Result<T> {
    let bounded = async {
        let _permit = permits.acquire().await.map_err(|e| Error::LoaderFailed {
            key: key.to_string(),
            source: e.into(),
        })?;
        load.await
    };
    tokio::time::timeout(timeout, bounded)
        .await
        .map_err(|_| Error::LoaderFailed {
            key: key.to_string(),
            source: format!("no answer within {timeout:?}").into(),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_keys_into_entity_id_and_field() {
        let parts = |raw| {
            let key = Key::parse(raw, 512).unwrap();
            let (e, i, f) = key_parts(&key);
            (e.to_owned(), i.to_owned(), f.to_owned())
        };
        assert_eq!(parts("user:123"), ("user".into(), "123".into(), "".into()));
        assert_eq!(
            parts("user:123:posts"),
            ("user".into(), "123".into(), "posts".into())
        );
        assert_eq!(
            parts("posts:page:1:x"),
            ("posts".into(), "page".into(), "1:x".into())
        );
    }
}
