//! Arbitrary protobuf bytes through the real CacheService handlers (request conversion, validation, the
//! coordinator and the embedded store): every call answers a status or a response, never a panic, and the server
//! keeps answering. The first byte picks the RPC; the rest is decoded as its request message.
#![no_main]

use cachecoord::api::CacheApi;
use cachecoord::auth::Authenticator;
use cachecoord::cache::Coordinator;
use cachecoord::config::Config;
use cachecoord::loader::Loaders;
use cachecoord::proto::cache_service_server::CacheService;
use cachecoord::proto::{
    BatchGetRequest, BatchSetRequest, GetRequest, InvalidatePatternRequest, InvalidateRequest,
    ReleaseLeaseRequest, RenewLeaseRequest, SetRequest,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::sync::{Arc, OnceLock};
use tonic::Request;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn api() -> &'static CacheApi {
    static API: OnceLock<CacheApi> = OnceLock::new();
    API.get_or_init(|| {
        let mut config = Config::default();
        config.store.memory_max_bytes = 16 * 1024 * 1024;
        // A leased Get of a key whose lease an earlier input took (and never filled) waits this long.
        config.read_through.lease_wait = std::time::Duration::from_millis(1);
        runtime().block_on(async {
            let store = cachecoord::store::open(&config.store).await.unwrap();
            let coordinator = Coordinator::new(store, Loaders::default(), &config).unwrap();
            CacheApi::new(Arc::new(coordinator), Arc::new(Authenticator::disabled()))
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&rpc, body)) = data.split_first() else {
        return;
    };
    let api = api();
    runtime().block_on(async {
        match rpc % 8 {
            0 => {
                if let Ok(m) = GetRequest::decode(body) {
                    let _ = api.get(Request::new(m)).await;
                }
            }
            1 => {
                if let Ok(m) = BatchGetRequest::decode(body) {
                    let _ = api.batch_get(Request::new(m)).await;
                }
            }
            2 => {
                if let Ok(m) = SetRequest::decode(body) {
                    let _ = api.set(Request::new(m)).await;
                }
            }
            3 => {
                if let Ok(m) = BatchSetRequest::decode(body) {
                    let _ = api.batch_set(Request::new(m)).await;
                }
            }
            4 => {
                if let Ok(m) = InvalidateRequest::decode(body) {
                    let _ = api.invalidate(Request::new(m)).await;
                }
            }
            5 => {
                if let Ok(m) = ReleaseLeaseRequest::decode(body) {
                    let _ = api.release_lease(Request::new(m)).await;
                }
            }
            6 => {
                if let Ok(m) = RenewLeaseRequest::decode(body) {
                    let _ = api.renew_lease(Request::new(m)).await;
                }
            }
            _ => {
                if let Ok(m) = InvalidatePatternRequest::decode(body) {
                    let _ = api.invalidate_pattern(Request::new(m)).await;
                }
            }
        }
    });
});
