//! A throwaway PKI for TLS tests: a CA, a server certificate for localhost/127.0.0.1, a client certificate the CA
//! signed, a Redis Cluster node's certificate (server and client), and a client certificate from a rogue CA — all
//! PEM files in a temporary directory.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// The PKI's files.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Generates every file.
    pub fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("cachecoord-pki-")
            .tempdir()
            .unwrap();
        let ca = new_ca("cachecoord test CA");
        let rogue = new_ca("rogue CA");
        std::fs::write(dir.path().join("ca.pem"), ca.0.pem()).unwrap();
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        leaf(dir.path(), "server", &ca.1, &[ServerAuth]);
        leaf(dir.path(), "client", &ca.1, &[ClientAuth]);
        // A Redis Cluster node's: its cluster bus authenticates both ends with it.
        leaf(dir.path(), "node", &ca.1, &[ServerAuth, ClientAuth]);
        leaf(dir.path(), "rogue-client", &rogue.1, &[ClientAuth]);
        Pki { dir }
    }

    /// `name.pem` (certificate), `name.key` (private key) or `ca.pem`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The contents of one of the files.
    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file)).unwrap()
    }
}

fn new_ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

fn leaf(
    dir: &Path,
    name: &str,
    issuer: &Issuer<'static, KeyPair>,
    usages: &[ExtendedKeyUsagePurpose],
) {
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = usages.to_vec();
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}
