//! Every TLS connection cachecoord serves or makes, from PEM files: the gRPC port (optionally mutual TLS), and
//! its clients of Redis, Postgres and LoaderServices.
//!
//! The Redis and Postgres clients use rustls configurations with one crypto provider (ring) named explicitly, so
//! no process-wide default has to be installed; tonic builds its own from the PEM bytes for the gRPC server and
//! the LoaderService client. Files are read at start-up: roll new certificates with a rolling restart.

use crate::config::TlsConfig;
use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// TLS for the gRPC port when `tls.cert_file` and `tls.key_file` are set; mutual TLS when `tls.client_ca_file`
/// is too. `None`: the port is plaintext.
pub fn grpc_server(tls: &TlsConfig) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    let read = |file: &Path| {
        std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))
    };
    let mut server = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &tls.client_ca_file {
        server = server.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(server))
}

/// TLS to a LoaderService (`https://` endpoints), verified against `ca_file`, or the system roots.
pub fn loader_client(ca_file: Option<&Path>) -> std::io::Result<ClientTlsConfig> {
    Ok(match ca_file {
        Some(file) => {
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(file)?))
        }
        None => ClientTlsConfig::new().with_native_roots(),
    })
}

/// The certificates in a PEM file.
fn certificates(file: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read PEM certificates from {}", file.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", file.display());
    Ok(certs)
}

/// A rustls client configuration (Redis's `rediss://`, and Postgres through [`postgres_connector`]) that trusts
/// `ca_file`, or the system's roots when it is `None`.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(file) => {
            for cert in certificates(file)? {
                roots.add(cert).context("CA certificate not usable")?;
            }
        }
        None => {
            let native = rustls_native_roots();
            roots.add_parsable_certificates(native);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The operating system's trusted roots (empty when none can be read).
fn rustls_native_roots() -> Vec<CertificateDer<'static>> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "could not read a system CA certificate");
    }
    found.certs
}

/// The connector every Postgres connection uses. Whether TLS is used follows `sslmode` in the connection string
/// (tokio-postgres defaults to `prefer`; `require` insists, `disable` never tries); the server's certificate is
/// verified against `ca_file`, or the system roots.
pub fn postgres_connector(
    ca_file: Option<&Path>,
) -> anyhow::Result<tokio_postgres_rustls::MakeRustlsConnect> {
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(
        client_config(ca_file)?,
    ))
}
