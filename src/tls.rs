//! PEM files → rustls configurations, for every TLS connection cachecoord makes (Redis, Postgres) or serves.
//! One crypto provider (ring) is named explicitly, so no process-wide default has to be installed.

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The certificates in a PEM file.
pub fn certificates(file: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read PEM certificates from {}", file.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", file.display());
    Ok(certs)
}

/// The private key in a PEM file.
pub fn private_key(file: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(file)
        .with_context(|| format!("cannot read a PEM private key from {}", file.display()))
}

/// A client configuration that trusts `ca_file`, or the system's roots when it is `None`.
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
