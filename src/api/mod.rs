//! The API boundary: gRPC handlers for `cachecoord.v1.CacheService`. Handlers only convert proto messages to
//! domain calls on the [`Coordinator`] and back ([`convert`]); errors become statuses in [`status`].
//!
//! Every call goes through one wrapper ([`call`]): it runs in an `rpc` span with fields for the key (redacted for
//! sensitive entities), entity, source and status code, and is counted in `cachecoord_requests_total{rpc, code}`
//! and timed in `cachecoord_request_duration_seconds{rpc}`. Values are never logged.

mod admission;
mod call;
mod convert;
mod deadline;
mod handlers;
mod status;

pub use admission::AdmissionLayer;
pub(crate) use admission::{ConnectionInfo, Guarded};
pub use status::{ERROR_DOMAIN, explain_transport_refusal, to_status};

use crate::cache::Coordinator;
use std::sync::Arc;

/// The CacheService implementation handed to tonic, behind an [`AdmissionLayer`].
#[derive(Clone)]
pub struct CacheApi {
    coordinator: Arc<Coordinator>,
    /// The RPCs' metric series, found once each.
    metrics: Arc<call::RpcMetrics>,
}

impl CacheApi {
    /// Serves `coordinator` over gRPC to the callers the [`AdmissionLayer`] admits.
    pub fn new(coordinator: Arc<Coordinator>) -> CacheApi {
        CacheApi {
            coordinator,
            metrics: Arc::default(),
        }
    }
}
