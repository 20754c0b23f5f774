//! The envelope around every payload, its chain link and its (batch) signature.
//!
//! Wire form (bincode, see [`crate::codec`]): `format: u8`, origin, seq, hlc, schema, prev,
//! payload bytes (encoded at `schema`), then the signature:
//!
//! - format 2 (written by this build): `Option<[u8; 64]>`, a tag byte (0 = unsigned, 1 =
//!   signed) followed by the 64 signature bytes when signed. Only the last event of each commit
//!   group is signed; the events before it are authenticated by the hash chain up to it.
//! - format 1 (older builds, still read): the 64 signature bytes, no tag: every event signed.
//!
//! The payload stays as the bytes that were signed, so upcasting an old event never changes its
//! hash or breaks its signature.

use std::cmp::Ordering;

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::hlc::Hlc;
use crate::id::{EventId, Hash, NodeId};
use crate::payload::{decode_payload, Payload};

/// The envelope format this build writes: batch signatures (an optional signature per event).
pub const FORMAT: u8 = 2;

/// The first envelope format, still read and accepted from peers: every event signed, the
/// signature stored as 64 bytes without a tag.
pub const FORMAT_V1: u8 = 1;

/// Whether this build reads envelopes of `format`.
pub fn is_known_format(format: u8) -> bool {
    format == FORMAT || format == FORMAT_V1
}

const SIGN_CONTEXT: &str = "bolt 2026-11 event signature v1";

/// One event as stored and sent: header, payload bytes and, on the last event of a run, the
/// signature.
///
/// `sig` is `None` on an event in the middle of a run (format 2 only): such an event is
/// authenticated by the chain of `prev` hashes up to the next signed event of its origin, whose
/// signature covers its own `prev` and hence, transitively, the whole run. A format-1 envelope
/// is always signed (it does not encode without a signature).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Envelope {
    pub format: u8,
    pub origin: NodeId,
    pub seq: u64,
    pub hlc: Hlc,
    pub schema: u16,
    pub prev: Hash,
    pub payload: Vec<u8>,
    pub sig: Option<[u8; 64]>,
}

impl Encode for Envelope {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        self.format.encode(e)?;
        self.origin.encode(e)?;
        self.seq.encode(e)?;
        self.hlc.encode(e)?;
        self.schema.encode(e)?;
        self.prev.encode(e)?;
        self.payload.encode(e)?;
        match (self.format, &self.sig) {
            (FORMAT_V1, Some(sig)) => sig.encode(e),
            (FORMAT_V1, None) => Err(EncodeError::Other("a format-1 envelope must be signed")),
            (_, sig) => sig.encode(e),
        }
    }
}

impl<Ctx> Decode<Ctx> for Envelope {
    fn decode<D: Decoder<Context = Ctx>>(d: &mut D) -> Result<Self, DecodeError> {
        let format = u8::decode(d)?;
        if !is_known_format(format) {
            return Err(DecodeError::Other("unknown envelope format"));
        }
        let origin = NodeId::decode(d)?;
        let seq = u64::decode(d)?;
        let hlc = Hlc::decode(d)?;
        let schema = u16::decode(d)?;
        let prev = Hash::decode(d)?;
        let payload = Vec::<u8>::decode(d)?;
        let sig = if format == FORMAT_V1 {
            Some(<[u8; 64]>::decode(d)?)
        } else {
            Option::<[u8; 64]>::decode(d)?
        };
        Ok(Envelope {
            format,
            origin,
            seq,
            hlc,
            schema,
            prev,
            payload,
            sig,
        })
    }
}

impl<'de, Ctx> BorrowDecode<'de, Ctx> for Envelope {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Ctx>>(d: &mut D) -> Result<Self, DecodeError> {
        Envelope::decode(d)
    }
}

/// Why an envelope's signature does not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("origin {0} is not a valid ed25519 public key")]
    BadOriginKey(String),
    #[error("bad signature on event {origin}#{seq}")]
    Invalid { origin: String, seq: u64 },
    #[error("event {origin}#{seq} carries no signature (it is in the middle of a run)")]
    Unsigned { origin: String, seq: u64 },
}

/// The order every node folds events in: HLC, then origin, then sequence. Any interleaving that
/// keeps each origin's order sorts to the same sequence.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize, Encode, Decode)]
pub struct OrderKey {
    pub hlc: Hlc,
    pub origin: NodeId,
    pub seq: u64,
}

impl Ord for OrderKey {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.hlc, self.origin, self.seq).cmp(&(other.hlc, other.origin, other.seq))
    }
}

impl PartialOrd for OrderKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl OrderKey {
    /// The key below every real event.
    pub const MIN: OrderKey = OrderKey {
        hlc: Hlc(0),
        origin: NodeId([0; 32]),
        seq: 0,
    };
}

impl Envelope {
    /// The digest the signature covers: every field but the signature, domain-separated.
    pub fn signing_digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(SIGN_CONTEXT);
        h.update(&[self.format]);
        h.update(&self.origin.0);
        h.update(&self.seq.to_le_bytes());
        h.update(&self.hlc.0.to_le_bytes());
        h.update(&self.schema.to_le_bytes());
        h.update(&self.prev.0);
        h.update(&(self.payload.len() as u64).to_le_bytes());
        h.update(&self.payload);
        *h.finalize().as_bytes()
    }

    /// Whether this event carries a signature (the last event of a run, or any format-1 event).
    pub fn is_signed(&self) -> bool {
        self.sig.is_some()
    }

    /// Check the signature against the origin's key (one `verify_strict`: weak keys and
    /// non-canonical signatures are refused). An unsigned event is
    /// [`SignatureError::Unsigned`]: it is authenticated only through the chain up to the next
    /// signed event of its origin, which this check alone cannot see.
    pub fn verify_signature(&self) -> Result<(), SignatureError> {
        let Some(sig) = &self.sig else {
            return Err(SignatureError::Unsigned {
                origin: self.origin.short(),
                seq: self.seq,
            });
        };
        let key = VerifyingKey::from_bytes(&self.origin.0)
            .map_err(|_| SignatureError::BadOriginKey(self.origin.short()))?;
        key.verify_strict(&self.signing_digest(), &Signature::from_bytes(sig))
            .map_err(|_| SignatureError::Invalid {
                origin: self.origin.short(),
                seq: self.seq,
            })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decode an envelope from untrusted bytes. Checks the format byte (1 or 2), that the bytes
    /// are the canonical encoding (so [`Envelope::hash`] is the hash of exactly these bytes) and
    /// the schema version (an event from a newer build is refused, never misread); does not
    /// check the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, CodecError> {
        match bytes.first() {
            None => return Err(CodecError::Malformed("empty input".into())),
            Some(&f) if !is_known_format(f) => return Err(CodecError::UnknownFormat(f)),
            Some(_) => {}
        }
        let env: Envelope = codec::decode(bytes)?;
        // bincode also reads over-long varints; accept only the one canonical form, so every
        // envelope has exactly one byte string and one hash.
        if codec::encode(&env) != bytes {
            return Err(CodecError::Malformed("non-canonical encoding".into()));
        }
        if env.schema > crate::payload::CURRENT_SCHEMA || env.schema == 0 {
            return Err(CodecError::UnknownSchema {
                found: env.schema,
                newest: crate::payload::CURRENT_SCHEMA,
            });
        }
        Ok(env)
    }

    /// The chain link: the blake3 hash of the whole encoded envelope, signature (or its
    /// absence) included. The next event of the same origin carries it as `prev`.
    pub fn hash(&self) -> Hash {
        Hash(*blake3::hash(&self.to_bytes()).as_bytes())
    }

    pub fn id(&self) -> EventId {
        EventId {
            origin: self.origin,
            seq: self.seq,
        }
    }

    pub fn order_key(&self) -> OrderKey {
        OrderKey {
            hlc: self.hlc,
            origin: self.origin,
            seq: self.seq,
        }
    }

    /// Decode (and upcast) the payload.
    pub fn decode_payload(&self) -> Result<Payload, CodecError> {
        decode_payload(self.schema, &self.payload)
    }
}

/// An envelope with its payload decoded and its hash computed: what the fold consumes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Event {
    pub envelope: Envelope,
    pub payload: Payload,
    pub hash: Hash,
}

impl Event {
    /// Decode an event from its stored bytes (no signature check: see [`Envelope::verify_signature`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Event, CodecError> {
        let envelope = Envelope::from_bytes(bytes)?;
        let payload = envelope.decode_payload()?;
        let hash = Hash(*blake3::hash(bytes).as_bytes());
        Ok(Event {
            envelope,
            payload,
            hash,
        })
    }

    pub fn id(&self) -> EventId {
        self.envelope.id()
    }

    pub fn order_key(&self) -> OrderKey {
        self.envelope.order_key()
    }

    pub fn origin(&self) -> NodeId {
        self.envelope.origin
    }

    pub fn seq(&self) -> u64 {
        self.envelope.seq
    }

    pub fn hlc(&self) -> Hlc {
        self.envelope.hlc
    }
}
