//! Joining a cluster: the join token, the one request a node without a certificate may make,
//! and the TLS configuration that lets it make it safely.
//!
//! A member prints a token (`bolt cluster token`): `bolt1-<CA fingerprint>-<secret>`. The new
//! node dials a member with ALPN `bolt-join/1` and no client certificate; it accepts the
//! member's certificate only if the chain it presents holds the CA the token pins
//! ([`PinnedCa`]) and the certificate verifies against that CA. It sends a [`JoinRequest`]: the
//! token's secret, its node id, a certificate request and a proof that it holds the event key
//! its node id names (an ed25519 signature by that key). The member redeems the secret once
//! ([`TokenBook`]), checks the proof and answers with the CA certificate and the node's new
//! certificate, or a refusal. Nothing else is served to a peer without a certificate.
//!
//! Pure but for the TLS verifier's callbacks; time is passed in. Never imports the agent,
//! `bolt-state`, `bolt-capsule` or `bolt-dns`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use bincode::{Decode, Encode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::identity::{node_dns_name, peer_node_id};

/// The ALPN of the join exchange.
pub const JOIN_ALPN: &[u8] = b"bolt-join/1";
/// The largest join request or answer.
pub const MAX_JOIN_FRAME: usize = 64 << 10;
/// The context of the proof signature (blake3 key derivation).
pub const PROOF_CONTEXT: &str = "bolt 2026-12 join proof v1";

type Config = Configuration<LittleEndian, Varint, Limit<MAX_JOIN_FRAME>>;

fn config() -> Config {
    config::standard().with_limit::<MAX_JOIN_FRAME>()
}

/// One step of joining that failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    #[error("bad join token: {0}")]
    Token(&'static str),
    #[error("malformed join frame: {0}")]
    Frame(String),
    #[error("join token is unknown or already used")]
    Unknown,
    #[error("join token expired")]
    Expired,
    #[error("the node id is not an ed25519 key: {0}")]
    NodeId(String),
    #[error("the proof of the node key does not verify")]
    Proof,
}

impl JoinError {
    /// Short reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            JoinError::Token(_) => "bad token",
            JoinError::Frame(_) => "malformed",
            JoinError::Unknown => "unknown or used token",
            JoinError::Expired => "expired token",
            JoinError::NodeId(_) => "bad node id",
            JoinError::Proof => "bad proof",
        }
    }
}

/// A join token: the CA fingerprint to pin and a one-time secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub fingerprint: String,
    pub secret: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bolt1-{}-{}", self.fingerprint, hex::encode(self.secret))
    }
}

impl std::str::FromStr for Token {
    type Err = JoinError;
    fn from_str(s: &str) -> Result<Token, JoinError> {
        let rest = s
            .trim()
            .strip_prefix("bolt1-")
            .ok_or(JoinError::Token("it does not start with bolt1-"))?;
        let (fp, secret) = rest
            .split_once('-')
            .ok_or(JoinError::Token("no secret after the fingerprint"))?;
        let is_hex = |v: &str| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex(fp) || !is_hex(secret) {
            return Err(JoinError::Token(
                "fingerprint and secret are 64 hex digits each",
            ));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(secret, &mut bytes)
            .map_err(|_| JoinError::Token("secret is not hex"))?;
        Ok(Token {
            fingerprint: fp.to_ascii_lowercase(),
            secret: bytes,
        })
    }
}

/// The tokens a member has issued: by the SHA-256 of the secret, with their expiry. A token is
/// redeemed once; expired ones are dropped.
#[derive(Debug, Default)]
pub struct TokenBook {
    open: BTreeMap<[u8; 32], SystemTime>,
}

impl TokenBook {
    /// Records a new token for `fingerprint`, valid until `now + ttl`.
    pub fn issue(&mut self, fingerprint: &str, now: SystemTime, ttl: Duration) -> Token {
        self.open.retain(|_, until| *until > now);
        let mut secret = [0u8; 32];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut secret);
        self.open.insert(Sha256::digest(secret).into(), now + ttl);
        Token {
            fingerprint: fingerprint.to_owned(),
            secret,
        }
    }

    /// Takes the token out of the book if it is open and not expired.
    pub fn redeem(&mut self, secret: &[u8; 32], now: SystemTime) -> Result<(), JoinError> {
        let key: [u8; 32] = Sha256::digest(secret).into();
        let until = self.open.remove(&key).ok_or(JoinError::Unknown)?;
        if until <= now {
            return Err(JoinError::Expired);
        }
        Ok(())
    }

    /// Tokens still open.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// True when no token is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// What a joining node sends.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
pub struct JoinRequest {
    pub secret: [u8; 32],
    /// Hex of the node's ed25519 event key.
    pub node_id: String,
    pub name: String,
    /// The mesh address the node will listen at (peers dial it).
    pub addr: String,
    pub csr_pem: String,
    /// ed25519 signature by the event key over [`proof_digest`].
    pub proof: Vec<u8>,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("node_id", &self.node_id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What the member answers.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum JoinResponse {
    Accepted {
        ca_pem: String,
        cert_pem: String,
        /// The admitting member's node id: the new node's first peer.
        member_id: String,
    },
    Refused {
        reason: String,
    },
}

/// The digest the joining node signs with its event key: the token's secret and its request.
pub fn proof_digest(secret: &[u8; 32], node_id: &str, csr_pem: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(PROOF_CONTEXT);
    h.update(secret);
    h.update(&(node_id.len() as u64).to_le_bytes());
    h.update(node_id.as_bytes());
    h.update(csr_pem.as_bytes());
    *h.finalize().as_bytes()
}

impl JoinRequest {
    /// Checks that the proof was made by the key the node id names.
    pub fn check_proof(&self) -> Result<(), JoinError> {
        let mut id = [0u8; 32];
        hex::decode_to_slice(&self.node_id, &mut id)
            .map_err(|_| JoinError::NodeId(self.node_id.clone()))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&id)
            .map_err(|_| JoinError::NodeId(self.node_id.clone()))?;
        let sig: [u8; 64] = self
            .proof
            .as_slice()
            .try_into()
            .map_err(|_| JoinError::Proof)?;
        key.verify_strict(
            &proof_digest(&self.secret, &self.node_id, &self.csr_pem),
            &ed25519_dalek::Signature::from_bytes(&sig),
        )
        .map_err(|_| JoinError::Proof)
    }
}

/// Encodes a join frame.
pub fn encode<T: Encode>(v: &T) -> Vec<u8> {
    bincode::encode_to_vec(v, config()).unwrap_or_default()
}

/// Decodes a join frame; never panics, never allocates past [`MAX_JOIN_FRAME`].
pub fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, JoinError> {
    if bytes.len() > MAX_JOIN_FRAME {
        return Err(JoinError::Frame(format!("{} bytes", bytes.len())));
    }
    let (v, used) = bincode::decode_from_slice::<T, _>(bytes, config())
        .map_err(|e| JoinError::Frame(e.to_string()))?;
    if used != bytes.len() {
        return Err(JoinError::Frame(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(v)
}

/// Verifies a member's certificate for a node that has no CA yet: the chain must hold a
/// certificate whose SHA-256 is the pinned fingerprint, and the member's certificate must
/// verify against it as a cluster CA (for the node name the certificate itself carries).
#[derive(Debug)]
pub struct PinnedCa {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedCa {
    pub fn new(fingerprint: &str) -> PinnedCa {
        PinnedCa {
            fingerprint: fingerprint.to_ascii_lowercase(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| hex::encode(Sha256::digest(c.as_ref())) == self.fingerprint)
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let node = peer_node_id(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName,
        ))?;
        let name = ServerName::try_from(node_dns_name(&node))
            .map_err(|_| rustls::Error::General("bad node name".into()))?;
        inner.verify_server_cert(end_entity, &[], &name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The join client speaks TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
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

/// The TLS configuration of a node joining with `token`: TLS 1.3, ALPN `bolt-join/1`, no client
/// certificate, the member checked by [`PinnedCa`].
pub fn join_client_config(token: &Token) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa::new(&token.fingerprint)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    Ok(cfg)
}

#[cfg(test)]
#[path = "join_tests.rs"]
mod tests;
