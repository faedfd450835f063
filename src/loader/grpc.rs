//! The caller's own `cachecoord.v1.LoaderService`, reached over gRPC.

use super::{Loaded, Loader, bounded, key_parts};
use crate::config::LoaderConfig;
use crate::keys::Key;
use crate::proto::loader_service_client::LoaderServiceClient;
use crate::proto::{BatchLoadRequest, LoadRequest};
use crate::{Error, Result};
use async_trait::async_trait;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

/// A LoaderService endpoint with its own timeout and concurrency limit.
pub struct GrpcLoader {
    client: LoaderServiceClient<Channel>,
    permits: Semaphore,
    timeout: Duration,
}

impl GrpcLoader {
    /// A loader for `config.endpoint`; the connection is made on first use and re-made after failures. Its
    /// answers are decoded up to `max_answer_bytes` (a BatchLoad's values together); each value is then held to
    /// `limits.max_value_bytes` by the caller.
    pub fn new(config: &LoaderConfig, max_answer_bytes: usize) -> Result<GrpcLoader> {
        let endpoint = config.endpoint.clone().unwrap_or_default();
        let failed = |source: crate::error::BoxError| Error::LoaderFailed {
            key: endpoint.clone(),
            source,
        };
        let mut channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| failed(e.into()))?
            .connect_timeout(config.timeout);
        if endpoint.starts_with("https://") {
            let tls = crate::tls::loader_client(config.tls_ca_file.as_deref())
                .map_err(|e| failed(e.into()))?;
            channel = channel.tls_config(tls).map_err(|e| failed(e.into()))?;
        }
        let channel = channel.connect_lazy();
        Ok(GrpcLoader {
            client: LoaderServiceClient::new(channel).max_decoding_message_size(max_answer_bytes),
            permits: Semaphore::new(config.max_concurrency),
            timeout: config.timeout,
        })
    }
}

fn load_request(key: &Key) -> LoadRequest {
    let (entity, id, field) = key_parts(key);
    LoadRequest {
        key: key.local().into(),
        entity: entity.into(),
        id: id.into(),
        field: field.into(),
        namespace: key.namespace().into(),
    }
}

fn loaded(
    found: bool,
    value: bytes::Bytes,
    ttl: Option<prost_types::Duration>,
    version: Option<u64>,
) -> Loaded {
    Loaded {
        value: found.then_some(value),
        ttl: ttl.and_then(|ttl| Duration::try_from(ttl).ok()),
        version: version.filter(|_| found),
    }
}

/// A LoaderService's refusal, as code and message: a status' Display also dumps its metadata and details, which
/// are the loader's business and only lengthen the log line.
fn failed(key: &Key, status: tonic::Status) -> Error {
    Error::LoaderFailed {
        key: key.to_string(),
        source: format!(
            "LoaderService answered {:?}: {}",
            status.code(),
            status.message()
        )
        .into(),
    }
}

#[async_trait]
impl Loader for GrpcLoader {
    async fn load(&self, key: &Key) -> Result<Loaded> {
        bounded(key, &self.permits, self.timeout, async {
            let mut request = tonic::Request::new(load_request(key));
            request.set_timeout(self.timeout);
            crate::telemetry::propagate_trace(request.metadata_mut());
            let response = self
                .client
                .clone()
                .load(request)
                .await
                .map_err(|status| failed(key, status))?
                .into_inner();
            Ok(loaded(
                response.found,
                response.value,
                response.ttl,
                response.version,
            ))
        })
        .await
    }

    async fn load_many(&self, keys: &[Key]) -> Result<Vec<Loaded>> {
        let Some(first) = keys.first() else {
            return Ok(Vec::new());
        };
        bounded(first, &self.permits, self.timeout, async {
            let requests = keys.iter().map(load_request).collect();
            let mut request = tonic::Request::new(BatchLoadRequest { requests });
            request.set_timeout(self.timeout);
            crate::telemetry::propagate_trace(request.metadata_mut());
            let response = self
                .client
                .clone()
                .batch_load(request)
                .await
                .map_err(|status| failed(first, status))?
                .into_inner();
            let mut by_key: HashMap<String, Loaded> = response
                .results
                .into_iter()
                .map(|r| (r.key, loaded(r.found, r.value, r.ttl, r.version)))
                .collect();
            Ok(keys
                .iter()
                .map(|key| by_key.remove(key.local()).unwrap_or(Loaded::absent()))
                .collect())
        })
        .await
    }
}
