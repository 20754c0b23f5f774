//! Cluster identity: the cluster CA (rcgen, ECDSA P-256 signed with ring), node certificates
//! issued from certificate signing requests, the CA fingerprint a join token pins, and the
//! rustls configurations of the mesh: TLS 1.3 only, ALPN `bolt/1`, and a certificate from the
//! cluster CA demanded in both directions. A peer's node id is read from its certificate
//! ([`peer_node_id`]), never from anything it says.
//!
//! Pure apart from key generation: time is passed in (`now`), nothing is read or written.
//! Never imports the agent, `bolt-state`, `bolt-capsule` or `bolt-dns`.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// The mesh's ALPN protocol id.
pub const ALPN: &[u8] = b"bolt/1";

/// The DNS name a node's certificate carries: `<node id>.node.bolt`, the id cut in labels of
/// at most 32 digits (a DNS label holds 63 characters; a full node id has 64). A client dialing
/// a node checks the server's certificate against it.
pub fn node_dns_name(node_id: &str) -> String {
    let mut name = String::with_capacity(node_id.len() + 12);
    for (i, chunk) in node_id.as_bytes().chunks(32).enumerate() {
        if i > 0 {
            name.push('.');
        }
        name.push_str(std::str::from_utf8(chunk).unwrap_or_default());
    }
    name.push_str(".node.bolt");
    name
}

/// One step of making or using the cluster identity that failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("bad node id {0:?}: use 1 to 64 lowercase hex digits")]
    NodeId(String),
    #[error("generate a key: {0}")]
    Key(rcgen::Error),
    #[error("make the cluster certificate: {0}")]
    Ca(rcgen::Error),
    #[error("read the cluster CA: {0}")]
    CaPem(rcgen::Error),
    #[error("make a certificate request: {0}")]
    Request(rcgen::Error),
    #[error("refused certificate request: {0}")]
    BadRequest(rcgen::Error),
    #[error("issue the node certificate: {0}")]
    Issue(rcgen::Error),
    #[error("read {what}: {source}")]
    Pem {
        what: &'static str,
        source: rustls::pki_types::pem::Error,
    },
    #[error("build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("build the peer verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Node ids are the hex of the node's event key id: short, safe in a DNS label.
fn check_node_id(id: &str) -> Result<(), IdentityError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::NodeId(id.to_owned()))
    }
}

/// The cluster's certificate authority: its certificate and its key (to be stored 0600).
pub struct ClusterCa {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA for the cluster `name`, valid from `now` for `ttl`.
    pub fn generate(name: &str, now: OffsetDateTime, ttl: Duration) -> Result<Self, IdentityError> {
        let key = KeyPair::generate().map_err(IdentityError::Key)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("bolt cluster {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + ttl;
        let cert = params.self_signed(&key).map_err(IdentityError::Ca)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A CA from its stored certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::from_pem(key_pem).map_err(IdentityError::CaPem)?;
        // Checks that the certificate parses; the key is the CA's own.
        Issuer::from_ca_cert_pem(cert_pem, &key).map_err(IdentityError::CaPem)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM (a secret: store it 0600).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the CA certificate's DER, hex: what a join token pins.
    pub fn fingerprint(&self) -> String {
        fingerprint_pem(&self.cert_pem).unwrap_or_default()
    }

    /// Issues a node certificate for `node_id` from a PEM certificate request, valid from
    /// `now` for `ttl`. Only the request's public key is used (its signature is checked): the
    /// names, usages and validity are the CA's, so a request cannot ask for more.
    pub fn issue(
        &self,
        csr_pem: &str,
        node_id: &str,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<String, IdentityError> {
        check_node_id(node_id)?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(IdentityError::BadRequest)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, node_id);
        params.subject_alt_names = vec![SanType::DnsName(
            node_dns_name(node_id)
                .try_into()
                .map_err(IdentityError::Issue)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + ttl;
        let issuer =
            Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(IdentityError::CaPem)?;
        let cert = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(IdentityError::Issue)?;
        Ok(cert.pem())
    }
}

/// SHA-256 of the first certificate in `pem`, hex.
pub fn fingerprint_pem(pem: &str) -> Result<String, IdentityError> {
    let der =
        CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|source| IdentityError::Pem {
            what: "certificate",
            source,
        })?;
    Ok(hex::encode(Sha256::digest(der.as_ref())))
}

/// A joining node's fresh key and its certificate request.
pub struct NodeRequest {
    /// The node's TLS private key, PEM (a secret: store it 0600).
    pub key_pem: String,
    /// The request to send to a member, PEM.
    pub csr_pem: String,
}

impl std::fmt::Debug for NodeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRequest").finish_non_exhaustive()
    }
}

/// A new TLS key for `node_id` and a certificate request for it.
pub fn node_request(node_id: &str) -> Result<NodeRequest, IdentityError> {
    check_node_id(node_id)?;
    let key = KeyPair::generate().map_err(IdentityError::Key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, node_id);
    let csr = params
        .serialize_request(&key)
        .map_err(IdentityError::Request)?;
    Ok(NodeRequest {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem().map_err(IdentityError::Request)?,
    })
}

/// What a node presents and trusts on the mesh: the cluster CA's certificate, its own
/// certificate and its key.
#[derive(Clone)]
pub struct NodeIdentity {
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key_pem: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node", &peer_node_id(&self.cert))
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl NodeIdentity {
    /// From PEM: the CA certificate, the node's certificate and its key.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let der = |what, pem: &str| {
            CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|source| IdentityError::Pem { what, source })
        };
        // The key must parse now, not at the first connection.
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| IdentityError::Pem {
            what: "node key",
            source,
        })?;
        Ok(Self {
            ca: der("cluster CA", ca_pem)?,
            cert: der("node certificate", cert_pem)?,
            key_pem: key_pem.to_owned(),
        })
    }

    /// This node's id, from its own certificate.
    pub fn node_id(&self) -> Option<String> {
        peer_node_id(&self.cert)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, IdentityError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|source| {
            IdentityError::Pem {
                what: "node key",
                source,
            }
        })
    }

    fn roots(&self) -> Result<rustls::RootCertStore, IdentityError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(roots)
    }

    /// The listening side: TLS 1.3, ALPN `bolt/1`, a client certificate from the cluster CA
    /// required.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, IdentityError> {
        self.server_config_with(false)
    }

    /// The listening side of a member that also takes joins: as [`Self::server_config`], but a
    /// client may come without a certificate, and ALPN `bolt-join/1` is offered too. The mesh
    /// serves such a client the join exchange alone ([`crate::quic::Mesh::accept`]); a client
    /// that presents a certificate must still present one from the cluster CA.
    pub fn server_config_accepting_joins(&self) -> Result<rustls::ServerConfig, IdentityError> {
        self.server_config_with(true)
    }

    fn server_config_with(&self, joins: bool) -> Result<rustls::ServerConfig, IdentityError> {
        let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider(),
        );
        let verifier = if joins {
            builder.allow_unauthenticated().build()?
        } else {
            builder.build()?
        };
        // The CA goes with the chain so a joining node can check it against its token's pin.
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone(), self.ca.clone()], self.key()?)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        if joins {
            cfg.alpn_protocols.push(crate::join::JOIN_ALPN.to_vec());
        }
        Ok(cfg)
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        pem_cert(&self.ca)
    }

    /// The CA's fingerprint (SHA-256 of its DER, hex).
    pub fn ca_fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.ca.as_ref()))
    }

    /// When this node's certificate became valid, in seconds since the epoch.
    pub fn not_before(&self) -> Option<i64> {
        let (_, parsed) = x509_parser::parse_x509_certificate(self.cert.as_ref()).ok()?;
        Some(parsed.validity().not_before.timestamp())
    }

    /// When this node's certificate stops being valid, in seconds since the epoch.
    pub fn not_after(&self) -> Option<i64> {
        let (_, parsed) = x509_parser::parse_x509_certificate(self.cert.as_ref()).ok()?;
        Some(parsed.validity().not_after.timestamp())
    }

    /// The dialing side: TLS 1.3, ALPN `bolt/1`, the server checked against the cluster CA
    /// (and, by the caller, against the node it meant: [`server_name`]), this node's
    /// certificate presented.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, IdentityError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![self.cert.clone()], self.key()?)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// The dialing side of a certificate renewal: ALPN `bolt-join/1`, this node's (still valid)
    /// certificate presented, any member of this node's cluster accepted as the server (the CA
    /// pinned, the server's name not known in advance).
    pub fn renew_client_config(&self) -> Result<rustls::ClientConfig, IdentityError> {
        let pin = crate::join::PinnedCa::new(&self.ca_fingerprint());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(pin))
            .with_client_auth_cert(vec![self.cert.clone()], self.key()?)?;
        cfg.alpn_protocols = vec![crate::join::JOIN_ALPN.to_vec()];
        Ok(cfg)
    }
}

fn pem_cert(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The name a client checks the server's certificate against when it dials `node_id`.
pub fn server_name(node_id: &str) -> Result<ServerName<'static>, IdentityError> {
    check_node_id(node_id)?;
    ServerName::try_from(node_dns_name(node_id)).map_err(|_| IdentityError::NodeId(node_id.into()))
}

/// The node id a (verified) peer certificate names: its `<id>.node.bolt` DNS name.
pub fn peer_node_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => d
            .strip_suffix(".node.bolt")
            .map(|labels| labels.replace('.', ""))
            .filter(|id| check_node_id(id).is_ok() && node_dns_name(id) == **d),
        _ => None,
    })
}

#[cfg(test)]
#[path = "identity_tests.rs"]
mod tests;
