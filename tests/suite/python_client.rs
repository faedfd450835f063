//! A non-Rust client: Python stubs generated from proto/ with grpcio-tools call every data RPC, on both stores.
//!
//! The interpreter is `$CC_TEST_PYTHON` (scripts/test points it at a venv with grpcio and grpcio-tools),
//! else `python3`.

use crate::support::{Backend, TestServer, unique};

async fn python_client_round_trip(backend: Backend) {
    let server = TestServer::start(backend).await;
    let python = std::env::var("CC_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client_smoke.py");
    let output = tokio::process::Command::new(&python)
        .arg(script)
        .arg(server.addr.to_string())
        .arg(unique("py"))
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot run {python}: {e} (scripts/test prepares a venv with grpcio)")
        });
    assert!(
        output.status.success(),
        "python client failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The Python client works against the embedded store.
#[tokio::test]
async fn python_client_on_embedded_store() {
    python_client_round_trip(Backend::Embedded).await;
}

/// The Python client works against the Redis Cluster.
#[tokio::test]
async fn python_client_on_cluster() {
    python_client_round_trip(Backend::Cluster).await;
}
