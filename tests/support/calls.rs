//! The CacheService calls most tests make, spelled once: read-through Get and BatchGet, a cache-only Get, a plain
//! Set.

use cachecoord::proto::cache_service_client::CacheServiceClient;
use cachecoord::proto::{BatchGetRequest, BatchGetResult, GetRequest, GetResponse, SetRequest};
use tonic::transport::Channel;

/// The generated client over a plain channel.
pub type Client = CacheServiceClient<Channel>;

/// A read-through Get of `key` (a miss may load); panics on an error status.
pub async fn get(client: &mut Client, key: &str) -> GetResponse {
    let request = GetRequest {
        key: key.into(),
        cache_only: false,
        lease: false,
    };
    client.get(request).await.unwrap().into_inner()
}

/// A cache-only Get of `key` (a miss never loads); panics on an error status.
pub async fn cached(client: &mut Client, key: &str) -> GetResponse {
    let request = GetRequest {
        key: key.into(),
        cache_only: true,
        lease: false,
    };
    client.get(request).await.unwrap().into_inner()
}

/// A read-through BatchGet of `keys`, its results in request order; panics on an error status.
pub async fn batch_get(client: &mut Client, keys: &[String]) -> Vec<BatchGetResult> {
    let request = BatchGetRequest {
        keys: keys.to_vec(),
        cache_only: false,
        lease: false,
    };
    client
        .batch_get(request)
        .await
        .unwrap()
        .into_inner()
        .results
}

/// The value of a Get's answer, `None` when it was not found.
pub fn found_value(answer: GetResponse) -> Option<Vec<u8>> {
    answer.found.then(|| answer.value.to_vec())
}

/// An unversioned Set of `value` under `key` with the policy's TTL.
pub fn set_request(key: &str, value: &[u8]) -> SetRequest {
    SetRequest {
        key: key.into(),
        value: value.to_vec().into(),
        ttl: None,
        version: None,
        lease_token: Default::default(),
    }
}

/// An unversioned Set of `value` under `key`; panics on an error status.
pub async fn set(client: &mut Client, key: &str, value: &[u8]) {
    client.set(set_request(key, value)).await.unwrap();
}
