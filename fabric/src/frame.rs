//! The replication messages the mesh carries between nodes, and their one encoding.
//!
//! Every message is one frame: bincode 2 (standard configuration: little endian, varint
//! integers) with a size limit, so hostile bytes cannot make the decoder allocate without bound
//! and anything over [`MAX_FRAME`] is refused before it is read. Events travel as the bytes their
//! origin signed; each is decoded and checked by [`Envelope::from_bytes`] (canonical form, size)
//! and later by the log's remote append (sequence, chain, signature).
//!
//! Pure: no I/O. Never imports the agent, `bolt-state`, `bolt-capsule` or `bolt-dns`.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use bincode::{Decode, Encode};
use bolt_events::{Envelope, NodeId, VersionVector};

/// The largest frame a peer may send (the transport refuses longer streams before decoding).
pub const MAX_FRAME: usize = 4 << 20;
/// The most version-vector entries one digest may carry.
pub const MAX_DIGEST_ORIGINS: usize = 65_536;
/// The most events one frame may carry.
pub const MAX_FRAME_EVENTS: usize = 65_536;

type Config = Configuration<LittleEndian, Varint, Limit<MAX_FRAME>>;

fn config() -> Config {
    config::standard().with_limit::<MAX_FRAME>()
}

/// One replication message.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Message {
    /// Events new to the sender (its own or relayed), pushed as they arrive (rumour).
    Push { events: Vec<Vec<u8>> },
    /// The sender's version vector: the receiver answers with the events the sender lacks and,
    /// when it lacks some itself and `reply` is set, with a digest of its own. `state_hash`,
    /// when set, is the sender's state hash with exactly these events folded: a receiver
    /// holding the same events and another hash has diverged (a free alarm).
    Digest {
        vv: Vec<(NodeId, u64)>,
        reply: bool,
        state_hash: Option<[u8; 32]>,
    },
    /// Events answering a digest; `more` when the budget cut the answer short.
    Events { events: Vec<Vec<u8>>, more: bool },
}

/// Why bytes are not a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the frame")]
    Trailing(usize),
    #[error("frame carries {got} {what}, over the limit of {max}")]
    TooMany {
        what: &'static str,
        got: usize,
        max: usize,
    },
}

impl Message {
    /// A digest of a version vector.
    pub fn digest(vv: &VersionVector, reply: bool) -> Message {
        Message::Digest {
            vv: vv.iter().map(|(o, s)| (*o, *s)).collect(),
            reply,
            state_hash: None,
        }
    }

    /// Events as pushed or answered.
    pub fn encode_events<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> Vec<Vec<u8>> {
        events.into_iter().map(Envelope::to_bytes).collect()
    }

    /// The frame's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Encoding into a Vec fails only past the limit; an empty frame then fails to decode.
        bincode::encode_to_vec(self, config()).unwrap_or_default()
    }

    /// Reads one frame; never panics, never allocates past [`MAX_FRAME`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Message, FrameError> {
        if bytes.len() > MAX_FRAME {
            return Err(FrameError::TooLarge(bytes.len()));
        }
        let (msg, used) = bincode::decode_from_slice::<Message, _>(bytes, config())
            .map_err(|e| FrameError::Malformed(e.to_string()))?;
        if used != bytes.len() {
            return Err(FrameError::Trailing(bytes.len() - used));
        }
        let (what, got, max) = match &msg {
            Message::Push { events } | Message::Events { events, .. } => {
                ("events", events.len(), MAX_FRAME_EVENTS)
            }
            Message::Digest { vv, .. } => ("digest entries", vv.len(), MAX_DIGEST_ORIGINS),
        };
        if got > max {
            return Err(FrameError::TooMany { what, got, max });
        }
        Ok(msg)
    }

    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Push { .. } => "push",
            Message::Digest { .. } => "digest",
            Message::Events { .. } => "events",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_message_round_trips_and_damage_is_an_error() {
        let msgs = [
            Message::Push {
                events: vec![vec![1, 2, 3], vec![]],
            },
            Message::Digest {
                vv: vec![(NodeId([7; 32]), 42)],
                reply: true,
                state_hash: Some([3; 32]),
            },
            Message::Events {
                events: vec![vec![9; 300]],
                more: false,
            },
        ];
        for m in msgs {
            let bytes = m.to_bytes();
            assert_eq!(Message::from_bytes(&bytes).unwrap(), m);
            let mut extra = bytes.clone();
            extra.push(0);
            assert_eq!(Message::from_bytes(&extra), Err(FrameError::Trailing(1)));
            for cut in 0..bytes.len() {
                assert!(Message::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        assert!(matches!(
            Message::from_bytes(&[9]),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn a_frame_claiming_a_huge_length_is_refused_without_allocating_it() {
        // Variant 0 (push), then a vec length of u64::MAX as a varint.
        let mut bytes = vec![0u8, 253];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Message::from_bytes(&bytes),
            Err(FrameError::Malformed(_))
        ));
        let big = vec![0u8; MAX_FRAME + 1];
        assert_eq!(
            Message::from_bytes(&big),
            Err(FrameError::TooLarge(MAX_FRAME + 1))
        );
    }
}
