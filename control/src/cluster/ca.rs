//! The cluster's certificate authority and node identities.
//!
//! Like Swarm, every node certificate names the node (CN = node ID), its role (OU and a DNS SAN
//! of `mesh-manager` or `mesh-worker`) and the cluster (O = cluster ID). Clients reach managers
//! under the server name `mesh-manager`, so any manager's certificate is valid for any manager
//! address, and a worker's certificate can never pose as a manager's.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use thiserror::Error;

/// The server name clients use for managers, present in every manager certificate.
pub const MANAGER_NAME: &str = "mesh-manager";
/// The DNS SAN of worker certificates.
pub const WORKER_NAME: &str = "mesh-worker";
/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How long node certificates are valid unless the cluster sets otherwise (`swarm init
/// --cert-expiry`); nodes renew well before (see [`renew_at`]).
pub const NODE_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// The shortest node certificate lifetime a cluster may choose: a node renews at half its
/// lifetime, and a renewal must have time to reach a leader and to be retried.
pub const MIN_NODE_VALIDITY: Duration = Duration::from_secs(60);
/// How far before its issue a certificate is valid from: clocks a little behind the issuer's
/// still accept it.
const BACKDATE: Duration = Duration::from_secs(600);

/// The node certificate lifetime a cluster's setting (seconds, 0 for the default) means.
pub fn node_validity(cert_expiry_secs: u64) -> Duration {
    match cert_expiry_secs {
        0 => NODE_VALIDITY,
        secs => Duration::from_secs(secs),
    }
}

/// Checks a lifetime asked for at init.
pub fn check_node_validity(lifetime: Duration) -> Result<(), String> {
    if lifetime < MIN_NODE_VALIDITY {
        return Err(format!(
            "--cert-expiry {}s is too short: node certificates must live at least {}s (nodes renew them at half their lifetime); give a longer duration, e.g. 2160h (90 days, the default)",
            lifetime.as_secs(),
            MIN_NODE_VALIDITY.as_secs()
        ));
    }
    Ok(())
}

/// When a certificate valid from `not_before` (backdated, see `validity`) to `not_after`
/// should be renewed: at half of its lifetime from issue, so a leader that cannot be reached
/// for a while leaves the other half for retries.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let issued = not_before + BACKDATE;
    let lifetime = not_after.duration_since(issued).unwrap_or_default();
    issued + lifetime / 2
}

/// The validity period of a PEM certificate.
pub fn validity_of(cert_pem: &str) -> Result<(SystemTime, SystemTime), CaError> {
    let der = cert_der_from_pem(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|_| CaError::Pem {
        what: "the node certificate",
    })?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    let validity = cert.validity();
    Ok((at(validity.not_before), at(validity.not_after)))
}

/// A node's role, as its certificate states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertRole {
    /// Raft voter and API server.
    Manager,
    /// Runs tasks only.
    Worker,
}

impl CertRole {
    /// The OU and DNS SAN naming this role.
    pub fn name(self) -> &'static str {
        match self {
            CertRole::Manager => MANAGER_NAME,
            CertRole::Worker => WORKER_NAME,
        }
    }
}

/// Errors from certificate operations.
#[derive(Debug, Error)]
pub enum CaError {
    /// rcgen refused to build or sign.
    #[error("{operation}: {source}")]
    Rcgen {
        operation: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// A stored PEM could not be read.
    #[error("{what} is not valid PEM; the state directory may be damaged")]
    Pem { what: &'static str },
}

fn rcgen_error(operation: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Rcgen { operation, source }
}

/// The CA: its certificate (shared with every node) and key (managers only).
#[derive(Clone)]
pub struct ClusterCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA key, PKCS#8 PEM.
    pub key_pem: String,
}

// The CA key is the cluster's root of trust: never print it.
impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new self-signed CA for cluster `cluster_id` (ECDSA P-256).
    pub fn generate(cluster_id: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(rcgen_error("generating the CA key"))?;
        let params = ca_params(cluster_id)?;
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_error("self-signing the CA"))?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA certificate's DER.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, CaError> {
        cert_der_from_pem(&self.cert_pem)
    }

    /// SHA-256 of the CA certificate's DER: what join tokens carry.
    pub fn digest(&self) -> Result<[u8; 32], CaError> {
        Ok(digest_of(&self.cert_der()?))
    }

    /// Signs a node's CSR: the node's key stays on the node; its identity (ID, role, cluster)
    /// is decided here, not taken from the request.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        node_id: &str,
        role: CertRole,
        cluster_id: &str,
        lifetime: Duration,
    ) -> Result<String, CaError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            csr_der.to_vec(),
        ))
        .map_err(rcgen_error("reading the node's certificate request"))?;
        let key = KeyPair::from_pem(&self.key_pem).map_err(rcgen_error("reading the CA key"))?;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der()?, key)
            .map_err(rcgen_error("reading the CA certificate"))?;
        let params = node_params(node_id, role, cluster_id, lifetime)?;
        let cert = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(rcgen_error("signing the node certificate"))?;
        Ok(cert.pem())
    }
}

/// A node's new key and a CSR for it (PKCS#8 PEM, DER).
pub fn new_node_key_and_csr(node_id: &str) -> Result<(String, Vec<u8>), CaError> {
    let key = KeyPair::generate().map_err(rcgen_error("generating the node key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, node_id);
    let csr = params
        .serialize_request(&key)
        .map_err(rcgen_error("creating the certificate request"))?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// SHA-256 of a certificate's DER.
pub fn digest_of(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The first certificate of a PEM text, as DER.
pub fn cert_der_from_pem(pem: &str) -> Result<CertificateDer<'static>, CaError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| CaError::Pem {
        what: "a certificate",
    })
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // Tolerate clocks a little behind the issuer's.
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

fn ca_params(cluster_id: &str) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("mesh-ca-{cluster_id}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, cluster_id);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_VALIDITY);
    Ok(params)
}

fn node_params(
    node_id: &str,
    role: CertRole,
    cluster_id: &str,
    lifetime: Duration,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::new(vec![role.name().to_string(), node_id.to_string()])
        .map_err(rcgen_error("naming the node certificate"))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node_id);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.name());
    params
        .distinguished_name
        .push(DnType::OrganizationName, cluster_id);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, lifetime);
    Ok(params)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::RootCertStore;

    use super::*;

    fn verifier(ca: &ClusterCa) -> Arc<WebPkiServerVerifier> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap()
    }

    fn issue(ca: &ClusterCa, role: CertRole) -> CertificateDer<'static> {
        let (_key, csr) = new_node_key_and_csr("ignored-by-the-ca").unwrap();
        cert_der_from_pem(
            &ca.sign_csr(&csr, "n1a2b3", role, "cluster-x", NODE_VALIDITY)
                .unwrap(),
        )
        .unwrap()
    }

    fn valid_as(ca: &ClusterCa, cert: &CertificateDer<'static>, name: &'static str) -> bool {
        verifier(ca)
            .verify_server_cert(
                cert,
                &[],
                &ServerName::try_from(name).unwrap(),
                &[],
                UnixTime::now(),
            )
            .is_ok()
    }

    #[test]
    fn renewal_falls_at_half_the_lifetime_from_issue() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let not_before = issued - BACKDATE;
        let at = |lifetime: u64| renew_at(not_before, issued + Duration::from_secs(lifetime));
        assert_eq!(at(120), issued + Duration::from_secs(60));
        assert_eq!(
            at(90 * 24 * 3600),
            issued + Duration::from_secs(45 * 24 * 3600)
        );
        // Always before expiry, even for the shortest lifetime allowed.
        let shortest = MIN_NODE_VALIDITY.as_secs();
        assert!(at(shortest) < issued + MIN_NODE_VALIDITY);
        // A certificate already past its end (a clock jump): renew at once.
        assert!(renew_at(not_before, issued - Duration::from_secs(5)) <= issued);
    }

    #[test]
    fn the_lifetime_signed_is_the_clusters_and_is_read_back() {
        let ca = ClusterCa::generate("cluster-x").unwrap();
        let (_key, csr) = new_node_key_and_csr("n1").unwrap();
        let pem = ca
            .sign_csr(
                &csr,
                "n1",
                CertRole::Worker,
                "cluster-x",
                Duration::from_secs(120),
            )
            .unwrap();
        let (not_before, not_after) = validity_of(&pem).unwrap();
        let lifetime = not_after.duration_since(not_before).unwrap();
        assert_eq!(lifetime, BACKDATE + Duration::from_secs(120));
        let due = renew_at(not_before, not_after);
        assert_eq!(
            not_after.duration_since(due).unwrap(),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn lifetimes_are_checked_and_zero_means_the_default() {
        assert_eq!(node_validity(0), NODE_VALIDITY);
        assert_eq!(node_validity(120), Duration::from_secs(120));
        assert!(check_node_validity(MIN_NODE_VALIDITY).is_ok());
        let err = check_node_validity(Duration::from_secs(59)).unwrap_err();
        assert!(err.contains("at least 60s"), "{err}");
    }

    #[test]
    fn a_manager_certificate_is_valid_for_the_manager_name_and_its_node_id() {
        let ca = ClusterCa::generate("cluster-x").unwrap();
        let cert = issue(&ca, CertRole::Manager);
        assert!(valid_as(&ca, &cert, MANAGER_NAME));
        assert!(valid_as(&ca, &cert, "n1a2b3"));
        assert!(!valid_as(&ca, &cert, WORKER_NAME));
    }

    #[test]
    fn a_worker_certificate_cannot_pose_as_a_manager() {
        let ca = ClusterCa::generate("cluster-x").unwrap();
        let cert = issue(&ca, CertRole::Worker);
        assert!(!valid_as(&ca, &cert, MANAGER_NAME));
        assert!(valid_as(&ca, &cert, WORKER_NAME));
    }

    #[test]
    fn another_clusters_ca_does_not_vouch_for_our_nodes() {
        let ours = ClusterCa::generate("ours").unwrap();
        let theirs = ClusterCa::generate("theirs").unwrap();
        let cert = issue(&ours, CertRole::Manager);
        assert!(!valid_as(&theirs, &cert, MANAGER_NAME));
        assert_ne!(ours.digest().unwrap(), theirs.digest().unwrap());
    }

    #[test]
    fn the_digest_is_the_sha256_of_the_ca_certificate() {
        let ca = ClusterCa::generate("c").unwrap();
        let der = ca.cert_der().unwrap();
        assert_eq!(ca.digest().unwrap(), digest_of(&der));
        assert_eq!(ca.digest().unwrap(), ca.clone().digest().unwrap());
    }

    #[test]
    fn garbage_requests_and_pem_are_refused() {
        let ca = ClusterCa::generate("c").unwrap();
        assert!(ca
            .sign_csr(b"not a csr", "n1", CertRole::Worker, "c", NODE_VALIDITY)
            .is_err());
        assert!(cert_der_from_pem("-----BEGIN NOTHING-----").is_err());
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }
}
