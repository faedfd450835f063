//! The cache-aside examples with leases, in each language users write, run against the real server on the
//! cluster: examples/python/cache_aside.py (grpcio), examples/go/cache_aside.go (grpc-go) and
//! examples/node/cache_aside.js (@grpc/grpc-js). Each checks itself (one database call for 50 concurrent callers;
//! a fill racing an update refused LEASE_LOST, nothing old cached) and exits non-zero otherwise.
//!
//! scripts/test installs what they need: a Python venv with grpcio (`$CC_TEST_PYTHON`), Debian's Go and gRPC
//! packages, and `npm install` in examples/node.

use crate::support::{Backend, TestServer, unique};
use std::path::Path;
use tokio::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `command` (an example, given the server's address and a fresh key) and checks it succeeded.
async fn run_example(mut command: Command, what: &str) {
    let server = TestServer::start(Backend::Cluster).await;
    let output = command
        .arg(server.addr.to_string())
        .arg(format!("product:{}", unique("example")))
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot run the {what} example: {e} (scripts/test installs it)")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{what} example:\n{stdout}");
    assert!(
        output.status.success(),
        "the {what} example failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("1 database call(s)") && stdout.ends_with("ok\n"));
}

/// The Python example (grpcio) runs its stampede and race checks.
#[tokio::test]
async fn the_python_cache_aside_example_runs() {
    let python = std::env::var("CC_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut command = Command::new(python);
    command.arg(format!("{REPO}/examples/python/cache_aside.py"));
    run_example(command, "Python").await;
}

/// The Go example (grpc-go, built from Debian's packages by examples/go/build) runs its checks.
#[tokio::test]
async fn the_go_cache_aside_example_runs() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("cache_aside");
    let built = Command::new(format!("{REPO}/examples/go/build"))
        .arg(&binary)
        .output()
        .await
        .expect("run examples/go/build");
    assert!(
        built.status.success(),
        "examples/go/build failed (scripts/test installs Go and the gRPC packages):\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    run_example(Command::new(&binary), "Go").await;
}

/// The Node example (@grpc/grpc-js, proto-loader reading proto/) runs its checks.
#[tokio::test]
async fn the_node_cache_aside_example_runs() {
    let modules = format!("{REPO}/examples/node/node_modules/@grpc/grpc-js");
    assert!(
        Path::new(&modules).exists(),
        "examples/node has no node_modules: run `npm install --prefix examples/node` (scripts/test does)"
    );
    let mut command = Command::new("node");
    command.arg(format!("{REPO}/examples/node/cache_aside.js"));
    run_example(command, "Node").await;
}
