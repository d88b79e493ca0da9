//! A certificate authority for tests: a CA and the server and client certificates it
//! issues for loopback, as PEM files in a temporary directory (what a collector or a
//! service is configured with in production), and the rustls server configuration that
//! presents one and, if asked, requires a client certificate issued by the CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair};

use crate::error::HarnessError;

/// A CA with its files under a temporary directory (removed on drop).
pub struct TestCa {
    dir: tempfile::TempDir,
    ca: Certificate,
    ca_key: KeyPair,
    ca_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// A certificate the CA issued and its key, as PEM text and files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate's file.
    pub cert_file: PathBuf,
    /// The key's file.
    pub key_file: PathBuf,
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::io("the test CA", std::io::Error::other(format!("{what}: {e}")))
}

impl TestCa {
    /// A new CA; its certificate is written to [`TestCa::ca_file`].
    pub fn new() -> Result<Self, HarnessError> {
        let dir = tempfile::tempdir().map_err(|e| HarnessError::io("a temp dir", e))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_err("CA params", e))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().map_err(|e| tls_err("CA key", e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| tls_err("CA certificate", e))?;
        let ca_pem = cert.pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem)
            .map_err(|e| HarnessError::io("writing ca.pem", e))?;
        Ok(Self {
            dir,
            ca: cert,
            ca_key: key,
            ca_pem,
        })
    }

    /// The CA certificate's PEM file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issues a certificate for `names` (DNS names or IP addresses), written to
    /// `<name>.pem` and `<name>-key.pem`.
    pub fn issue(&self, name: &str, names: &[&str]) -> Result<Issued, HarnessError> {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .map_err(|e| tls_err("params", e))?;
        let key = KeyPair::generate().map_err(|e| tls_err("key", e))?;
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .map_err(|e| tls_err("certificate", e))?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        let write = |file: &Path, text: &str| {
            std::fs::write(file, text).map_err(|e| HarnessError::io("writing a PEM file", e))
        };
        let cert_file = self.dir.path().join(format!("{name}.pem"));
        let key_file = self.dir.path().join(format!("{name}-key.pem"));
        write(&cert_file, &cert_pem)?;
        write(&key_file, &key_pem)?;
        Ok(Issued {
            cert_pem,
            key_pem,
            cert_file,
            key_file,
        })
    }

    /// A rustls server configuration presenting `server`, requiring a client certificate
    /// issued by this CA when `client_auth`.
    pub fn server_config(
        &self,
        server: &Issued,
        client_auth: bool,
    ) -> Result<Arc<rustls::ServerConfig>, HarnessError> {
        server_config(server, client_auth.then_some(self.ca_pem.as_str()))
    }
}

/// A rustls server configuration presenting `server`, requiring a client certificate
/// issued by `client_ca` (PEM) when given.
pub fn server_config(
    server: &Issued,
    client_ca: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>, HarnessError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = vec![
        CertificateDer::from_pem_slice(server.cert_pem.as_bytes())
            .map_err(|e| tls_err("server certificate", e))?,
    ];
    let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes())
        .map_err(|e| tls_err("server key", e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("protocol versions", e))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(
                    CertificateDer::from_pem_slice(ca.as_bytes())
                        .map_err(|e| tls_err("CA certificate", e))?,
                )
                .map_err(|e| tls_err("CA root", e))?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| tls_err("client verifier", e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("server certificate", e))?;
    Ok(Arc::new(config))
}
