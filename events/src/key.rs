//! The node key: an ed25519 signing key generated at first start and kept under the agent root
//! with mode 0600, owned by the agent's user. Its public half is the node's id.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use rustix::fs::OFlags;
use rustix::io::Errno;
use rustix::process::geteuid;

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
    #[error("node key {path} has mode {mode:o}; it must be 0600 or narrower (chmod 600)")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("node key {path} belongs to uid {owner}, not to this agent's user (uid {user})")]
    Owner {
        path: PathBuf,
        owner: u32,
        user: u32,
    },
    #[error("node key {path} is a symbolic link; it must be a regular file")]
    Symlink { path: PathBuf },
    #[error("node key {path} is not a regular file")]
    NotAFile { path: PathBuf },
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
    ///
    /// A key that is there must be a regular file (not followed through a symbolic link),
    /// owned by this process's effective user and of mode 0600 or narrower: a key planted by
    /// someone else would sign this node's events. A new key is written to `node.tmp` (created
    /// exclusively, never through a link; a stale one is removed first) and renamed into place.
    pub fn load_or_create(path: &Path) -> Result<NodeKey, KeyError> {
        let nofollow = OFlags::NOFOLLOW.bits() as i32;
        match OpenOptions::new()
            .read(true)
            .custom_flags(nofollow)
            .open(path)
        {
            Ok(file) => NodeKey::read_checked(path, file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => NodeKey::create(path, nofollow),
            Err(e) if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
                Err(KeyError::Symlink { path: path.into() })
            }
            Err(source) => Err(KeyError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    fn read_checked(path: &Path, file: fs::File) -> Result<NodeKey, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.into(),
            source,
        };
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(KeyError::NotAFile { path: path.into() });
        }
        let me = geteuid().as_raw();
        if meta.uid() != me {
            return Err(KeyError::Owner {
                path: path.into(),
                owner: meta.uid(),
                user: me,
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & !0o600 != 0 {
            return Err(KeyError::Permissions {
                path: path.into(),
                mode,
            });
        }
        // One byte more than a key: enough to tell a wrong length without reading a huge file.
        let mut bytes = Vec::with_capacity(33);
        file.take(33).read_to_end(&mut bytes).map_err(read_err)?;
        let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
            path: path.into(),
            len: bytes.len(),
        })?;
        Ok(NodeKey::from_seed(seed))
    }

    fn create(path: &Path, nofollow: i32) -> Result<NodeKey, KeyError> {
        let key = NodeKey::generate()?;
        let write_err = |source| KeyError::Write {
            path: path.into(),
            source,
        };
        let tmp = path.with_extension("tmp");
        // A leftover of a start that died mid-write (or a planted link): unlinked, not followed.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(e)),
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nofollow)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        f.write_all(&key.signing.to_bytes()).map_err(write_err)?;
        f.sync_all().map_err(write_err)?;
        fs::rename(&tmp, path).map_err(write_err)?;
        Ok(key)
    }

    pub fn id(&self) -> NodeId {
        NodeId(self.signing.verifying_key().to_bytes())
    }

    /// A secret for one purpose, derived from this key (blake3's key derivation with `context`
    /// naming the purpose): only the holder of the node key can compute it.
    pub fn derive_secret(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.signing.to_bytes())
    }

    /// Signs a 32-byte digest made for one purpose outside the log (a join proof): callers
    /// derive it with a context of their own, so it can never be mistaken for an event's.
    pub fn sign_digest(&self, digest: &[u8; 32]) -> [u8; 64] {
        self.signing.sign(digest).to_bytes()
    }

    /// Build and sign the envelope of this node's event number `seq` (format 2): the end of a
    /// run.
    pub fn seal(&self, seq: u64, hlc: Hlc, prev: Hash, payload: &Payload) -> Envelope {
        self.seal_bytes(seq, hlc, prev, CURRENT_SCHEMA, codec::encode(payload))
    }

    /// Build the envelope of this node's event number `seq` without a signature (format 2): an
    /// event in the middle of a run, authenticated by the chain up to the next signed event.
    pub fn seal_unsigned(&self, seq: u64, hlc: Hlc, prev: Hash, payload: &Payload) -> Envelope {
        self.envelope(seq, hlc, prev, CURRENT_SCHEMA, codec::encode(payload))
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
        let mut env = self.envelope(seq, hlc, prev, schema, payload);
        self.sign(&mut env);
        env
    }

    /// The unsigned format-2 envelope of already-encoded payload bytes.
    pub(crate) fn envelope(
        &self,
        seq: u64,
        hlc: Hlc,
        prev: Hash,
        schema: u16,
        payload: Vec<u8>,
    ) -> Envelope {
        Envelope {
            format: FORMAT,
            origin: self.id(),
            seq,
            hlc,
            schema,
            prev,
            payload,
            sig: None,
        }
    }

    /// Sign `env` as it stands (its signing digest covers every field but `sig`, including
    /// `format` and `prev`). Also makes format-1 envelopes for golden files and tests.
    pub fn sign(&self, env: &mut Envelope) {
        env.sig = Some(self.signing.sign(&env.signing_digest()).to_bytes());
    }
}

/// Encode a schema-1 payload (for golden files and upcasting tests).
pub fn encode_v1(p: &crate::payload::v1::PayloadV1) -> Vec<u8> {
    codec::encode(p)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_planted_tmp_link_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("node.tmp")).unwrap();
        let path = dir.path().join("node.key");
        let key = NodeKey::load_or_create(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file(), "node.key is a file, not the planted link");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(NodeKey::load_or_create(&path).unwrap().id(), key.id());
    }

    #[test]
    fn a_symlinked_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("elsewhere");
        NodeKey::load_or_create(&real).unwrap();
        let path = dir.path().join("node.key");
        std::os::unix::fs::symlink(&real, &path).unwrap();
        assert!(matches!(
            NodeKey::load_or_create(&path),
            Err(KeyError::Symlink { .. })
        ));
    }

    #[test]
    fn a_key_wider_than_0600_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        NodeKey::load_or_create(&path).unwrap();
        for mode in [0o700, 0o640, 0o604, 0o4600] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(
                matches!(
                    NodeKey::load_or_create(&path),
                    Err(KeyError::Permissions { mode: m, .. }) if m == mode
                ),
                "mode {mode:o}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        NodeKey::load_or_create(&path).unwrap();
    }

    #[test]
    fn a_key_that_is_not_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(NodeKey::load_or_create(&path).is_err());
    }
}
