//! The byte format of membership packets: a [`foca::Codec`] for [`Member`] identities, written
//! by hand so that every read is bounds-checked (malformed bytes are an error, never a panic)
//! and nothing a peer sends makes us allocate more than the packet's own size.
//!
//! An identity is its node id as 32 raw bytes (the 64 hex digits decoded), its address (family
//! byte 4 or 6, the IP, the port big-endian) and its bump (u32 big-endian): 43 bytes for IPv4,
//! 55 for IPv6. A header is `src, src incarnation (u16), dst, message`; a cluster update is
//! `identity, incarnation (u16), state (u8)`.
//!
//! The state byte has a fourth value foca does not have, *left*: a graceful leave travels as
//! foca's `Down` plus a mark in [`Known::left`], so that every node, including those that learn
//! of it second hand, tells a leave from a failure. Updates about a node in [`Known::removed`]
//! (revoked) are read as `Down` whatever they say.
//!
//! Never imports the agent, `bolt-state`, `bolt-capsule` or `bolt-dns`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Buf, BufMut};
use foca::{Header, Message, State};

use crate::membership::Member;

/// Bytes of a node id on the wire (the 64 hex digits, decoded).
const NODE_ID_BYTES: usize = 32;

/// One step of encoding or decoding a membership packet that failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("packet ends inside a field")]
    Truncated,
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("unknown message kind {0}")]
    Message(u8),
    #[error("unknown member state {0}")]
    State(u8),
    #[error("bad node id {0:?}: use 64 lowercase hex digits")]
    NodeId(String),
    #[error("no room left in the packet")]
    Full,
}

/// What every copy of the codec (foca's and the wrapper's) shares: identities that left
/// gracefully, and node ids removed from the cluster.
#[derive(Debug, Default)]
pub(crate) struct Known {
    /// `(node id, bump)` of identities that announced their own leave.
    pub(crate) left: BTreeSet<(String, u32)>,
    /// Node ids revoked on this node: their packets are refused, updates about them read as down.
    pub(crate) removed: BTreeSet<String>,
}

/// The codec foca uses; cheap to clone, all clones share one [`Known`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Codec {
    known: Arc<Mutex<Known>>,
}

impl Codec {
    pub(crate) fn known(&self) -> MutexGuard<'_, Known> {
        // Nothing panics while holding the lock; a poisoned lock still holds consistent sets.
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decodes one header from the start of `bytes` (the wrapper checks the sender with it).
    pub(crate) fn read_header(bytes: &[u8]) -> Result<Header<Member>, WireError> {
        Reader { bytes, pos: 0 }.header()
    }
}

/// Whether `id` is a node id: 64 lowercase hex digits.
pub(crate) fn valid_node_id(id: &str) -> bool {
    id.len() == 2 * NODE_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn identity_len(id: &Member) -> usize {
    let ip = match id.addr {
        SocketAddr::V4(_) => 4,
        SocketAddr::V6(_) => 16,
    };
    NODE_ID_BYTES + 1 + ip + 2 + 4
}

fn message_len(message: &Message<Member>) -> usize {
    1 + match message {
        Message::Ping(_) | Message::Ack(_) => 1,
        Message::PingReq { target: id, .. }
        | Message::IndirectPing { origin: id, .. }
        | Message::IndirectAck { target: id, .. }
        | Message::ForwardedAck { origin: id, .. } => identity_len(id) + 1,
        Message::Announce
        | Message::Feed
        | Message::Gossip
        | Message::Broadcast
        | Message::TurnUndead => 0,
    }
}

/// Appends to a plain vector; the length is checked against the `BufMut` once per item, so an
/// item that does not fit leaves the buffer untouched (foca's rule).
fn put_identity(out: &mut Vec<u8>, id: &Member) -> Result<(), WireError> {
    if !valid_node_id(&id.node_id) {
        return Err(WireError::NodeId(id.node_id.clone()));
    }
    let raw = hex::decode(&id.node_id).map_err(|_| WireError::NodeId(id.node_id.clone()))?;
    out.extend_from_slice(&raw);
    match id.addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&id.addr.port().to_be_bytes());
    out.extend_from_slice(&id.bump.to_be_bytes());
    Ok(())
}

fn put_message(out: &mut Vec<u8>, message: &Message<Member>) -> Result<(), WireError> {
    let (tag, body) = match message {
        Message::Ping(n) => (0, Some((None, *n))),
        Message::Ack(n) => (1, Some((None, *n))),
        Message::PingReq {
            target,
            probe_number,
        } => (2, Some((Some(target), *probe_number))),
        Message::IndirectPing {
            origin,
            probe_number,
        } => (3, Some((Some(origin), *probe_number))),
        Message::IndirectAck {
            target,
            probe_number,
        } => (4, Some((Some(target), *probe_number))),
        Message::ForwardedAck {
            origin,
            probe_number,
        } => (5, Some((Some(origin), *probe_number))),
        Message::Announce => (6, None),
        Message::Feed => (7, None),
        Message::Gossip => (8, None),
        Message::Broadcast => (9, None),
        Message::TurnUndead => (10, None),
    };
    out.push(tag);
    if let Some((id, n)) = body {
        if let Some(id) = id {
            put_identity(out, id)?;
        }
        out.push(n);
    }
    Ok(())
}

fn state_byte(state: State, left: bool) -> u8 {
    match state {
        State::Alive => 0,
        State::Suspect => 1,
        State::Down if left => 3,
        State::Down => 2,
    }
}

fn flush(out: &[u8], mut buf: impl BufMut) -> Result<(), WireError> {
    if buf.remaining_mut() < out.len() {
        return Err(WireError::Full);
    }
    buf.put_slice(out);
    Ok(())
}

impl foca::Codec<Member> for Codec {
    type Error = WireError;

    fn encode_header(
        &mut self,
        header: &Header<Member>,
        buf: impl BufMut,
    ) -> Result<(), WireError> {
        let len = identity_len(&header.src) + 2 + identity_len(&header.dst);
        let mut out = Vec::with_capacity(len + message_len(&header.message));
        put_identity(&mut out, &header.src)?;
        out.extend_from_slice(&header.src_incarnation.to_be_bytes());
        put_identity(&mut out, &header.dst)?;
        put_message(&mut out, &header.message)?;
        flush(&out, buf)
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<Member>, WireError> {
        let mut reader = Reader {
            bytes: buf.chunk(),
            pos: 0,
        };
        let header = reader.header()?;
        let used = reader.pos;
        buf.advance(used);
        Ok(header)
    }

    fn encode_member(
        &mut self,
        member: &foca::Member<Member>,
        buf: impl BufMut,
    ) -> Result<(), WireError> {
        let id = member.id();
        let left = member.state() == State::Down
            && self.known().left.contains(&(id.node_id.clone(), id.bump));
        let mut out = Vec::with_capacity(identity_len(id) + 3);
        put_identity(&mut out, id)?;
        out.extend_from_slice(&member.incarnation().to_be_bytes());
        out.push(state_byte(member.state(), left));
        flush(&out, buf)
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<foca::Member<Member>, WireError> {
        let mut reader = Reader {
            bytes: buf.chunk(),
            pos: 0,
        };
        let id = reader.identity()?;
        let incarnation = reader.u16()?;
        let byte = reader.u8()?;
        let used = reader.pos;
        let mut state = match byte {
            0 => State::Alive,
            1 => State::Suspect,
            2 | 3 => State::Down,
            other => return Err(WireError::State(other)),
        };
        {
            let mut known = self.known();
            if known.removed.contains(&id.node_id) {
                state = State::Down;
            } else if byte == 3 {
                known.left.insert((id.node_id.clone(), id.bump));
            }
        }
        buf.advance(used);
        Ok(foca::Member::new(id, incarnation, state))
    }
}

/// A bounds-checked cursor over a packet.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let out = self.bytes.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        self.take(N)?.try_into().map_err(|_| WireError::Truncated)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn identity(&mut self) -> Result<Member, WireError> {
        let node_id = hex::encode(self.take(NODE_ID_BYTES)?);
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            other => return Err(WireError::Family(other)),
        };
        let port = self.u16()?;
        let bump = self.u32()?;
        Ok(Member {
            node_id,
            addr: SocketAddr::new(ip, port),
            bump,
        })
    }

    fn message(&mut self) -> Result<Message<Member>, WireError> {
        let tag = self.u8()?;
        let message = match tag {
            0 => Message::Ping(self.u8()?),
            1 => Message::Ack(self.u8()?),
            2..=5 => {
                let id = self.identity()?;
                let probe_number = self.u8()?;
                match tag {
                    2 => Message::PingReq {
                        target: id,
                        probe_number,
                    },
                    3 => Message::IndirectPing {
                        origin: id,
                        probe_number,
                    },
                    4 => Message::IndirectAck {
                        target: id,
                        probe_number,
                    },
                    _ => Message::ForwardedAck {
                        origin: id,
                        probe_number,
                    },
                }
            }
            6 => Message::Announce,
            7 => Message::Feed,
            8 => Message::Gossip,
            9 => Message::Broadcast,
            10 => Message::TurnUndead,
            other => return Err(WireError::Message(other)),
        };
        Ok(message)
    }

    fn header(&mut self) -> Result<Header<Member>, WireError> {
        let src = self.identity()?;
        let src_incarnation = self.u16()?;
        let dst = self.identity()?;
        let message = self.message()?;
        Ok(Header {
            src,
            src_incarnation,
            dst,
            message,
        })
    }
}
