//! Every TLS connection cachecoord serves or makes, from PEM files: the gRPC port (optionally mutual TLS), and
//! its clients of Redis, Postgres and LoaderServices.
//!
//! Every rustls configuration names its crypto provider (ring) explicitly, so no process-wide default has to be
//! installed; tonic builds its own from the PEM bytes for the LoaderService client. The gRPC port's certificate,
//! key and client CA are re-read when the files change (`server`); the client-side files are read at start-up.
//!
//! - `server`: [`ServerTls`], the gRPC port's configuration in force and its reloads.

mod server;

pub use server::{Refusal, ServerTls};

use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;
use tonic::transport::{Certificate, ClientTlsConfig};

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
