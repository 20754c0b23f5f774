//! The node key: an ed25519 signing key generated at first start and kept under the agent root
//! with mode 0600. Its public half is the node's id.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};

use crate::codec;
use crate::envelope::{Envelope, FORMAT};
use crate::hlc::Hlc;
use crate::id::{Hash, NodeId};
use crate::payload::{Payload, CURRENT_SCHEMA};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("read node key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write node key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node key {path} must be 32 bytes, found {len}")]
    Length { path: PathBuf, len: usize },
    #[error(
        "node key {path} has mode {mode:o}; it must not be readable by group or others (chmod 600)"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("no system randomness: {0}")]
    Random(String),
}

/// A node's signing key.
pub struct NodeKey {
    signing: SigningKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.id().short())
    }
}

impl NodeKey {
    /// A fresh random key.
    pub fn generate() -> Result<NodeKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(NodeKey::from_seed(seed))
    }

    /// A key from a fixed seed (tests, golden files and benchmarks).
    pub fn from_seed(seed: [u8; 32]) -> NodeKey {
        NodeKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// Load the key at `path`, or create it (mode 0600) if it does not exist yet.
    pub fn load_or_create(path: &Path) -> Result<NodeKey, KeyError> {
        match fs::read(path) {
            Ok(bytes) => {
                let mode = fs::metadata(path)
                    .map_err(|source| KeyError::Read {
                        path: path.into(),
                        source,
                    })?
                    .permissions()
                    .mode()
                    & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::Permissions {
                        path: path.into(),
                        mode,
                    });
                }
                let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
                    path: path.into(),
                    len: bytes.len(),
                })?;
                Ok(NodeKey::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = NodeKey::generate()?;
                let write_err = |source| KeyError::Write {
                    path: path.into(),
                    source,
                };
                let tmp = path.with_extension("tmp");
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(write_err)?;
                f.write_all(&key.signing.to_bytes()).map_err(write_err)?;
                f.sync_all().map_err(write_err)?;
                fs::rename(&tmp, path).map_err(write_err)?;
                Ok(key)
            }
            Err(source) => Err(KeyError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    pub fn id(&self) -> NodeId {
        NodeId(self.signing.verifying_key().to_bytes())
    }

    /// A secret for one purpose, derived from this key (blake3's key derivation with `context`
    /// naming the purpose): only the holder of the node key can compute it.
    pub fn derive_secret(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.signing.to_bytes())
    }

    /// Build and sign the envelope of this node's event number `seq`.
    pub fn seal(&self, seq: u64, hlc: Hlc, prev: Hash, payload: &Payload) -> Envelope {
        self.seal_bytes(seq, hlc, prev, CURRENT_SCHEMA, codec::encode(payload))
    }

    /// Sign already-encoded payload bytes at a given schema (golden files of old schemas use it).
    pub fn seal_bytes(
        &self,
        seq: u64,
        hlc: Hlc,
        prev: Hash,
        schema: u16,
        payload: Vec<u8>,
    ) -> Envelope {
        let mut env = Envelope {
            format: FORMAT,
            origin: self.id(),
            seq,
            hlc,
            schema,
            prev,
            payload,
            sig: [0; 64],
        };
        env.sig = self.signing.sign(&env.signing_digest()).to_bytes();
        env
    }
}

/// Encode a schema-1 payload (for golden files and upcasting tests).
pub fn encode_v1(p: &crate::payload::v1::PayloadV1) -> Vec<u8> {
    codec::encode(p)
}
