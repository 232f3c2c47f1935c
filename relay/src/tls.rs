//! Certificates and trust.
//!
//! A node either reads a production certificate chain from files, or on first start
//! generates a self-signed certificate in its data directory and prints its SHA-256
//! fingerprint. Clients either pin that fingerprint or verify against a CA bundle.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ring::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::wire::ALPN;

/// Why TLS material could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A file is not PEM of the expected kind.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Generating the self-signed certificate failed.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A SHA-256 certificate fingerprint, shown as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, cert.as_ref()).as_ref());
        Self(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    /// Accepts 64 hex characters, optionally separated by colons (as `openssl x509
    /// -fingerprint` prints them).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let cleaned: String = s.trim().chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&cleaned, &mut out)
            .map_err(|_| "a fingerprint is 64 hex characters (a SHA-256 digest)".to_owned())?;
        Ok(Self(out))
    }
}

/// A node's certificate chain and private key.
pub struct ServerCert {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ServerCert {
    /// The leaf certificate's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        // A ServerCert is only built with a non-empty chain.
        Fingerprint::of(&self.chain[0])
    }

    /// Reads a PEM certificate chain and PEM private key (production certificates).
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pem = |path: &Path, reason: String| TlsError::Pem {
            path: path.to_owned(),
            reason,
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem(cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(pem(cert, "no certificate in file".into()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
        Ok(Self { chain, key })
    }

    /// Loads `dir/cert.pem` and `dir/key.pem`, generating a self-signed pair for
    /// `localhost` and `127.0.0.1` first if they do not exist. Returns whether it generated.
    pub fn load_or_generate(dir: &Path) -> Result<(Self, bool), TlsError> {
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        if cert_path.exists() && key_path.exists() {
            return Ok((Self::from_files(&cert_path, &key_path)?, false));
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
        write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())
            .map_err(io(&key_path))?;
        std::fs::write(&cert_path, generated.cert.pem()).map_err(io(&cert_path))?;
        Ok((Self::from_files(&cert_path, &key_path)?, true))
    }

    /// The QUIC server crypto configuration for this certificate, speaking ALPN `levee/1`.
    pub fn quic_server_config(&self) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        // 0-RTT data could be replayed; Levee requests are not all idempotent.
        config.max_early_data_size = 0;
        quinn::crypto::rustls::QuicServerConfig::try_from(config)
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How a client decides to trust a node.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Accept exactly the certificate with this SHA-256 fingerprint (self-signed nodes).
    Fingerprint(Fingerprint),
    /// Verify the chain and host name against these CA certificates (production).
    CaBundle(Vec<CertificateDer<'static>>),
}

impl Trust {
    /// Reads a PEM CA bundle.
    pub fn ca_bundle_file(path: &Path) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Pem {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::Pem {
                path: path.to_owned(),
                reason: "no certificate in file".into(),
            });
        }
        Ok(Trust::CaBundle(certs))
    }
}

/// Set by the pinning verifier when it saw a certificate that did not match, so the client
/// can report "wrong fingerprint" instead of a generic handshake failure.
#[derive(Clone, Debug, Default)]
pub struct MismatchFlag(Arc<AtomicBool>);

impl MismatchFlag {
    /// Whether a mismatching certificate was seen.
    pub fn seen(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The QUIC client crypto configuration for `trust`, speaking ALPN `levee/1`.
pub fn quic_client_config(
    trust: &Trust,
) -> Result<(quinn::crypto::rustls::QuicClientConfig, MismatchFlag), TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let flag = MismatchFlag::default();
    let mut config = match trust {
        Trust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert {
                fingerprint: *fp,
                provider,
                flag: flag.clone(),
            }))
            .with_no_client_auth(),
        Trust::CaBundle(cas) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in cas {
                roots.add(ca.clone())?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(config)
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    Ok((quic, flag))
}

/// Trusts one certificate by fingerprint. Still verifies the handshake signature with the
/// certificate's key, so the peer must hold the private key, not merely a copy of the cert.
#[derive(Debug)]
struct PinnedCert {
    fingerprint: Fingerprint,
    provider: Arc<CryptoProvider>,
    flag: MismatchFlag,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Fingerprint::of(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            self.flag.0.store(true, Ordering::Relaxed);
            Err(rustls::Error::General(
                "server certificate does not match the pinned fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
