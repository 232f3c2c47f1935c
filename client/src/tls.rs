//! How a client trusts a node: a pinned certificate fingerprint (self-signed nodes) or a
//! CA bundle (production certificates).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use levee_protocol::Fingerprint;
use levee_protocol::wire::ALPN;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Why a trust configuration could not be loaded or built.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A CA bundle file is missing, unreadable or not PEM certificates.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
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
    pub fn ca_bundle_file(path: &Path) -> Result<Self, TrustError> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TrustError::Pem {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TrustError::Pem {
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
) -> Result<(quinn::crypto::rustls::QuicClientConfig, MismatchFlag), TrustError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
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
        .map_err(|e| TrustError::Config(rustls::Error::General(e.to_string())))?;
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
        if Fingerprint::of(end_entity.as_ref()) == self.fingerprint {
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
