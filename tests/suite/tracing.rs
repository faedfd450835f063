//! A caller's trace continues through cachecoord into the loader: spans for the RPC, the store and the loader
//! call reach an OTLP collector under the caller's trace id, and the LoaderService call carries it on.

use crate::support::loader::TestLoader;
use crate::support::process::ServerProcess;
use cachecoord::proto::GetRequest;
use cachecoord::proto::cache_service_client::CacheServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// A fake OTLP collector: keeps (trace id as hex, span name) of every span exported to it.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<(String, String)>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let trace_id: String =
                        span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    spans.push((trace_id, span.name));
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A Get that loads through a LoaderService, sent with a W3C traceparent: the collector receives the RPC, store
/// and loader spans under the caller's trace id, and the loader is called with that trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_continues_into_the_loader() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let loader = TestLoader::start().await;
    loader.source.put("user:42", b"{\"id\":42}");
    let config = format!(
        r#"
[telemetry]
otlp_endpoint = "http://{collector_addr}"
trace_sampling_ratio = 1.0

{}
"#,
        loader.route_toml("user:*")
    );
    let mut server = ServerProcess::start(&config).await;
    let mut client = CacheServiceClient::connect(server.uri()).await.unwrap();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(GetRequest {
        key: "user:42".into(),
        cache_only: false,
        lease: false,
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let answer = client.get(request).await.unwrap().into_inner();
    assert_eq!(&answer.value[..], b"{\"id\":42}");
    let traceparents = loader.source.traceparents();
    assert_eq!(traceparents.len(), 1);
    assert!(
        traceparents[0].contains(trace_id),
        "loader got {traceparents:?}"
    );

    // Shutting down flushes the exporter.
    server.terminate();
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let spans = collector.0.lock().unwrap().clone();
    let names: Vec<&str> = spans
        .iter()
        .filter(|(t, _)| t == trace_id)
        .map(|(_, n)| n.as_str())
        .collect();
    for expected in ["rpc", "store", "loader"] {
        assert!(
            names.contains(&expected),
            "no {expected} span in the caller's trace: {names:?} (all: {spans:?})"
        );
    }
}
