//! TLS for everything between nodes: mutual TLS with the cluster CA once a node has its
//! certificate, and, for a node that is joining, a verifier that trusts a manager only if its
//! chain carries a CA whose SHA-256 matches the digest in the join token.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use thiserror::Error;

use super::ca::{cert_der_from_pem, digest_of, CertRole, MANAGER_NAME, WORKER_NAME};
use super::token::hex;

/// A node's TLS identity: the CA it trusts, its certificate and its key (PEM).
#[derive(Clone)]
pub struct NodeCredentials {
    /// The cluster CA certificate.
    pub ca_pem: String,
    /// This node's certificate, signed by the CA.
    pub cert_pem: String,
    /// This node's private key.
    pub key_pem: String,
    /// The certificate and key handshakes present, shared by every configuration built from
    /// these credentials and their clones, so a renewal reaches them all at once.
    live: Arc<LiveKey>,
}

/// The node's certificate as handshakes use it, replaced in place on renewal.
#[derive(Debug, Default)]
struct LiveKey(std::sync::RwLock<Option<Arc<CertifiedKey>>>);

impl LiveKey {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().expect("certificate lock").clone()
    }
}

impl ResolvesServerCert for LiveKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for LiveKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl std::fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCredentials").finish_non_exhaustive()
    }
}

/// Errors building TLS configurations.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM could not be parsed.
    #[error("reading {what}: not valid PEM; the state directory may be damaged")]
    Pem { what: &'static str },
    /// rustls refused the configuration.
    #[error("building the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("building the client certificate verifier: {0}")]
    Verifier(String),
}

/// Who is on the other end of a mutually authenticated connection, from its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The node ID (certificate CN).
    pub node_id: String,
    /// Manager or worker (certificate OU).
    pub role: CertRole,
    /// The cluster ID (certificate O).
    pub cluster_id: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl NodeCredentials {
    /// Credentials from their PEMs.
    pub fn new(ca_pem: String, cert_pem: String, key_pem: String) -> Self {
        NodeCredentials {
            ca_pem,
            cert_pem,
            key_pem,
            live: Arc::default(),
        }
    }

    /// Replaces the certificate and key (same CA) in every configuration built from these
    /// credentials or their clones: connections made from now on show the new certificate.
    pub fn renew(&mut self, cert_pem: String, key_pem: String) -> Result<(), TlsError> {
        let renewed = NodeCredentials::new(self.ca_pem.clone(), cert_pem, key_pem);
        let certified = renewed.certified_key()?;
        *self.live.0.write().expect("certificate lock") = Some(certified);
        self.cert_pem = renewed.cert_pem;
        self.key_pem = renewed.key_pem;
        Ok(())
    }

    fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let key = provider().key_provider.load_private_key(self.key()?)?;
        Ok(Arc::new(CertifiedKey::new(self.chain()?, key)))
    }

    /// The shared certificate, installed from the PEMs on first use.
    fn live_key(&self) -> Result<Arc<LiveKey>, TlsError> {
        let mut slot = self.live.0.write().expect("certificate lock");
        if slot.is_none() {
            *slot = Some(self.certified_key()?);
        }
        Ok(Arc::clone(&self.live))
    }

    fn ca_der(&self) -> Result<CertificateDer<'static>, TlsError> {
        cert_der_from_pem(&self.ca_pem).map_err(|_| TlsError::Pem {
            what: "the CA certificate",
        })
    }

    /// The node's chain as sent in handshakes: its certificate, then the CA's, so a joining
    /// node can check the CA against its token.
    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let node = cert_der_from_pem(&self.cert_pem).map_err(|_| TlsError::Pem {
            what: "the node certificate",
        })?;
        Ok(vec![node, self.ca_der()?])
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|_| TlsError::Pem {
            what: "the node key",
        })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()?)?;
        Ok(Arc::new(roots))
    }

    /// The server side of the cluster port. Client certificates are verified against the CA
    /// when presented, but not required: a joining node has none yet, and the request handler
    /// refuses everything but Join from a peer without one.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.live_key()?);
        Ok(Arc::new(config))
    }

    /// The client side, toward managers: the server must prove it is a manager of this cluster
    /// (server name `mesh-manager` under our CA); we present our own certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots()?)
            .with_client_cert_resolver(self.live_key()?);
        Ok(Arc::new(config))
    }
}

/// The server name under which clients verify managers.
pub fn manager_server_name() -> ServerName<'static> {
    ServerName::try_from(MANAGER_NAME).expect("a valid DNS name")
}

/// The client side for a joining node: no certificate of its own yet, and trust in the manager
/// only through the CA digest its join token carries.
pub fn join_client_config(ca_digest: [u8; 32]) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = PinnedCaVerifier {
        ca_digest,
        algorithms: provider.signature_verification_algorithms,
        provider: Arc::clone(&provider),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts a server only if its chain includes a CA whose digest is the pinned one and its
/// certificate verifies under that CA as a manager.
#[derive(Debug)]
struct PinnedCaVerifier {
    ca_digest: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| digest_of(c) == self.ca_digest)
        else {
            return Err(rustls::Error::General(format!(
                "the manager's CA is not the one the join token names (sha256 {}): the token belongs to another cluster, or something is intercepting the connection",
                hex(&self.ca_digest)
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Reads the identity from a verified peer certificate (CN, OU, O).
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let first = |iter: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        iter.next()
            .and_then(|attr| attr.as_str().ok())
            .map(str::to_string)
    };
    let node_id = first(&mut subject.iter_common_name())?;
    let role = match first(&mut subject.iter_organizational_unit())?.as_str() {
        MANAGER_NAME => CertRole::Manager,
        WORKER_NAME => CertRole::Worker,
        _ => return None,
    };
    let cluster_id = first(&mut subject.iter_organization())?;
    Some(PeerIdentity {
        node_id,
        role,
        cluster_id,
    })
}
