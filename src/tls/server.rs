//! The gRPC port's TLS configuration in force, and its reloads. The certificate chain, the private key and the
//! client CA bundle (mutual TLS) are re-read every interval and compared by content (a SHA-256 over the three
//! files), like the tokens file: a certificate renewed by cert-manager or a rolled Secret is served to new
//! connections without a restart. Connections already open keep the certificate they were accepted with.
//!
//! A reload never leaves the port without a usable certificate. Files that cannot be read, do not parse, or
//! whose key does not match the certificate (a half-written file, a key and a certificate from two different
//! renewals) are refused: the last good configuration stays in force, the refusal is logged at ERROR and counted
//! in `cachecoord_tls_reload_failures_total{reason}`, and `cachecoord_tls_last_reload_success` drops to 0 until
//! good files are read. The same files are refused at start-up.

use crate::config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// The gRPC server's rustls configuration in force and the files it comes from.
pub struct ServerTls {
    config: RwLock<Arc<rustls::ServerConfig>>,
    files: Files,
    /// The SHA-256 of the files in force.
    loaded: [u8; 32],
}

/// Where the certificate, its key and the optional client CA bundle live.
#[derive(Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// Why files were not taken: `reason` is the metric label.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// `unreadable`, `certificate`, `key` or `client_ca`.
    pub reason: &'static str,
    message: String,
}

impl Refusal {
    fn new(reason: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

/// What one read of the files found, so one change is judged (and logged, and counted) once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    Unreadable,
    Contents([u8; 32]),
}

/// The three files' bytes.
struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl ServerTls {
    /// The TLS configuration of `tls`; `None` when the port is plaintext (no certificate configured).
    pub fn open(tls: &TlsConfig) -> Result<Option<Arc<ServerTls>>, Refusal> {
        let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
            return Ok(None);
        };
        let files = Files {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: tls.client_ca_file.clone(),
        };
        let pem = files.read()?;
        let config = build(&pem)?;
        metrics::gauge!("cachecoord_tls_last_reload_success").set(1.0);
        Ok(Some(Arc::new(ServerTls {
            config: RwLock::new(Arc::new(config)),
            files,
            loaded: pem.digest(),
        })))
    }

    /// The configuration a new connection's handshake uses.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the files every `every` until `stop`, taking each good change and refusing each bad one.
    pub async fn watch(self: Arc<Self>, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut in_force = self.loaded;
        let mut seen = Seen::Contents(in_force);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(every) => {}
            }
            let read = self.files.read();
            let now = match &read {
                Ok(pem) => Seen::Contents(pem.digest()),
                Err(_) => Seen::Unreadable,
            };
            if now == seen {
                continue;
            }
            seen = now;
            let outcome = match read {
                Err(refusal) => Err(refusal),
                // Back to the files in force (restored after a refusal): nothing to load.
                Ok(_) if now == Seen::Contents(in_force) => {
                    metrics::gauge!("cachecoord_tls_last_reload_success").set(1.0);
                    tracing::info!(cert = %self.files.cert.display(), "TLS files match the certificate in force again");
                    continue;
                }
                Ok(pem) => build(&pem),
            };
            match outcome {
                Ok(config) => {
                    if let Seen::Contents(digest) = now {
                        in_force = digest;
                    }
                    *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                    metrics::gauge!("cachecoord_tls_last_reload_success").set(1.0);
                    metrics::counter!("cachecoord_tls_reloads_total").increment(1);
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded: new connections get it");
                }
                Err(refusal) => {
                    metrics::counter!("cachecoord_tls_reload_failures_total", "reason" => refusal.reason)
                        .increment(1);
                    metrics::gauge!("cachecoord_tls_last_reload_success").set(0.0);
                    tracing::error!(
                        reason = refusal.reason,
                        error = %refusal,
                        cert = %self.files.cert.display(),
                        "TLS files refused; the last good certificate stays in force"
                    );
                }
            }
        }
    }
}

impl Files {
    fn read(&self) -> Result<Pem, Refusal> {
        let read = |file: &Path| {
            std::fs::read(file).map_err(|e| {
                Refusal::new("unreadable", format!("cannot read {}: {e}", file.display()))
            })
        };
        Ok(Pem {
            cert: read(&self.cert)?,
            key: read(&self.key)?,
            client_ca: self.client_ca.as_deref().map(read).transpose()?,
        })
    }
}

impl Pem {
    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            match part {
                Some(bytes) => {
                    hash.update((bytes.len() as u64 + 1).to_le_bytes());
                    hash.update(bytes);
                }
                None => hash.update(0u64.to_le_bytes()),
            }
        }
        hash.finalize().into()
    }
}

/// The rustls server configuration from the files: HTTP/2 by ALPN, client certificates required when a client
/// CA is given, ring as the crypto provider.
fn build(pem: &Pem) -> Result<rustls::ServerConfig, Refusal> {
    let chain = certificates(&pem.cert).map_err(|e| Refusal::new("certificate", e))?;
    let key = PrivateKeyDer::from_pem_slice(&pem.key)
        .map_err(|e| Refusal::new("key", format!("no usable private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Refusal::new("certificate", e.to_string()))?;
    let builder = match &pem.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca).map_err(|e| Refusal::new("client_ca", e))? {
                roots.add(cert).map_err(|e| {
                    Refusal::new("client_ca", format!("CA certificate not usable: {e}"))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Refusal::new("client_ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        Refusal::new(
            "key",
            format!("the key does not go with the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The certificates of a PEM bundle: at least one, every block whole.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn pair() -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn pem(cert: &str, key: &str, client_ca: Option<&str>) -> Pem {
        Pem {
            cert: cert.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
            client_ca: client_ca.map(|ca| ca.as_bytes().to_vec()),
        }
    }

    fn reason(pem: &Pem) -> &'static str {
        build(pem)
            .map(|_| "taken")
            .unwrap_or_else(|refusal| refusal.reason)
    }

    #[test]
    fn a_usable_set_is_taken_and_every_broken_one_refused_with_its_reason() {
        let (cert, key) = pair();
        let (other_cert, other_key) = pair();
        assert_eq!(reason(&pem(&cert, &key, None)), "taken");
        assert_eq!(reason(&pem(&cert, &key, Some(&other_cert))), "taken");
        let taken = build(&pem(&cert, &key, None)).unwrap();
        assert_eq!(taken.alpn_protocols, vec![b"h2".to_vec()]);

        assert_eq!(
            reason(&pem(&cert[..cert.len() / 2], &key, None)),
            "certificate"
        );
        assert_eq!(reason(&pem("", &key, None)), "certificate");
        assert_eq!(reason(&pem(&cert, &key[..key.len() / 2], None)), "key");
        assert_eq!(reason(&pem(&cert, "", None)), "key");
        assert_eq!(reason(&pem(&cert, &other_key, None)), "key");
        assert_eq!(reason(&pem(&other_cert, &key, None)), "key");
        assert_eq!(reason(&pem(&cert, &key, Some(""))), "client_ca");
        let half_ca = &other_cert[..other_cert.len() / 2];
        assert_eq!(reason(&pem(&cert, &key, Some(half_ca))), "client_ca");
    }

    #[test]
    fn the_digest_tells_which_file_changed_and_whether_a_client_ca_is_set() {
        let (cert, key) = pair();
        let base = pem(&cert, &key, None).digest();
        assert_eq!(base, pem(&cert, &key, None).digest());
        assert_ne!(base, pem(&cert, &key, Some("")).digest());
        // The same bytes moved from one file to the next are a different set.
        let joined = format!("{cert}{key}");
        assert_ne!(
            pem(&joined, "", None).digest(),
            pem("", &joined, None).digest()
        );
    }
}
