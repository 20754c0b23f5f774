//! The mesh's QUIC transport (quinn, rustls with ring): one endpoint per node that listens and
//! dials, mutual TLS against the cluster CA ([`crate::identity`]), the peer's node id taken from
//! its verified certificate, and messages as one unidirectional stream each, read with a size
//! cap (a peer cannot make us buffer more than [`MAX_MESSAGE`] per message).
//!
//! The thin async driver around it (who to dial, what to send when) comes with membership and
//! replication; this module only moves authenticated bytes. Never imports the agent,
//! `bolt-state`, `bolt-capsule` or `bolt-dns`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::identity::{node_dns_name, peer_node_id, IdentityError, NodeIdentity};
use crate::join::{
    self, join_client_config, JoinError, JoinRequest, JoinResponse, Token, JOIN_ALPN,
    MAX_JOIN_FRAME,
};

/// The largest message a peer may send; a longer stream is refused and reset.
pub const MAX_MESSAGE: usize = 4 << 20;
/// A connection with no traffic for this long is closed (keepalives keep live ones open).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keepalive interval, well below the idle timeout.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// One step of the transport that failed.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("configure QUIC TLS: {0}")]
    Crypto(String),
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("dial {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("peer presented no usable node certificate")]
    NoPeerId,
    #[error("dialed node {wanted} but reached {got}")]
    WrongPeer { wanted: String, got: String },
    #[error("message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("send: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("send: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("receive: {0}")]
    Read(#[from] quinn::ReadToEndError),
    #[error("join: {0}")]
    Join(JoinError),
    #[error("datagram: {0}")]
    Datagram(String),
}

/// A node's QUIC endpoint: listens on one UDP socket and dials from it.
#[derive(Debug)]
pub struct Mesh {
    endpoint: quinn::Endpoint,
    /// The dialing side (replaced on renewal: [`Mesh::set_identity`]).
    client: std::sync::Mutex<quinn::ClientConfig>,
}

/// The endpoint's server and client configurations for `identity`.
fn quinn_configs(
    identity: &NodeIdentity,
    accept_joins: bool,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), QuicError> {
    let crypto = |e: &dyn std::fmt::Display| QuicError::Crypto(e.to_string());
    let server = if accept_joins {
        identity.server_config_accepting_joins()?
    } else {
        identity.server_config()?
    };
    let server_tls =
        quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| crypto(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    server.transport_config(transport());
    let client_tls = quinn::crypto::rustls::QuicClientConfig::try_from(identity.client_config()?)
        .map_err(|e| crypto(&e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
    client.transport_config(transport());
    Ok((server, client))
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEPALIVE));
    // 30 s always fits the VarInt range.
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

impl Mesh {
    /// Binds `addr` (port 0: any) with this node's identity. Needs a tokio runtime.
    ///
    /// With `accept_joins`, a client without a certificate may make the join exchange (and
    /// nothing else): [`Mesh::accept`] hands it over as [`Incoming::Join`].
    pub fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
        accept_joins: bool,
    ) -> Result<Self, QuicError> {
        let (server, client) = quinn_configs(identity, accept_joins)?;
        let endpoint = quinn::Endpoint::server(server, addr)
            .map_err(|source| QuicError::Bind { addr, source })?;
        Ok(Self {
            endpoint,
            client: std::sync::Mutex::new(client),
        })
    }

    /// Handshakes so far: accepted, refused and ignored (quinn drops junk datagrams before any
    /// handshake state exists; they show here only when they parse as an Initial).
    pub fn handshakes(&self) -> (u64, u64, u64) {
        let s = self.endpoint.stats();
        (
            s.accepted_handshakes,
            s.refused_handshakes,
            s.ignored_handshakes,
        )
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Dials node `node_id` at `addr`; the handshake fails unless the server's certificate is
    /// the cluster CA's and names that node.
    pub async fn connect(&self, addr: SocketAddr, node_id: &str) -> Result<Peer, QuicError> {
        let client = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let connecting = self
            .endpoint
            .connect_with(client, addr, &node_dns_name(node_id));
        let conn = connecting
            .map_err(|source| QuicError::Connect { addr, source })?
            .await?;
        let peer = Peer::new(conn)?;
        if peer.node_id != node_id {
            return Err(QuicError::WrongPeer {
                wanted: node_id.to_owned(),
                got: peer.node_id,
            });
        }
        Ok(peer)
    }

    /// The next connection that completed a handshake: a member (its certificate is the
    /// cluster CA's) or a node asking to join (ALPN `bolt-join/1`, no certificate); `None`
    /// once the endpoint is closed. A failed handshake, or a client without a certificate
    /// that asks for anything but a join, is an `Err` and the loop goes on.
    pub async fn accept(&self) -> Option<Result<Incoming, QuicError>> {
        let incoming = self.endpoint.accept().await?;
        Some(
            async {
                let conn = incoming.await?;
                let alpn = conn
                    .handshake_data()
                    .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                    .and_then(|d| d.protocol);
                if alpn.as_deref() == Some(JOIN_ALPN) {
                    if conn.peer_identity().is_none() {
                        return Ok(Incoming::Join(JoinConn { conn }));
                    }
                    // A member asking for a new certificate: the exchange of a join, the
                    // requester authenticated by its current certificate.
                    let peer = Peer::new(conn.clone())?;
                    return Ok(Incoming::Renew(JoinConn { conn }, peer.node_id));
                }
                match Peer::new(conn.clone()) {
                    Ok(peer) => Ok(Incoming::Member(peer)),
                    Err(e) => {
                        conn.close(1u32.into(), b"certificate required");
                        Err(e)
                    }
                }
            }
            .await,
        )
    }

    /// Replaces this node's certificate for the connections made from now on (renewal without
    /// a restart); the open ones go on.
    pub fn set_identity(
        &self,
        identity: &NodeIdentity,
        accept_joins: bool,
    ) -> Result<(), QuicError> {
        let (server, client) = quinn_configs(identity, accept_joins)?;
        self.endpoint.set_server_config(Some(server));
        *self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = client;
        Ok(())
    }

    /// Asks the member at `addr` for a new certificate for this node (the join exchange over a
    /// connection authenticated by the current certificate).
    pub async fn request_renewal(
        addr: SocketAddr,
        identity: &NodeIdentity,
        request: &JoinRequest,
    ) -> Result<JoinResponse, QuicError> {
        let crypto = |e: &dyn std::fmt::Display| QuicError::Crypto(e.to_string());
        let tls = identity.renew_client_config()?;
        let tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| crypto(&e))?;
        Self::exchange(addr, quinn::ClientConfig::new(Arc::new(tls)), request).await
    }

    /// Dials a member at `addr` as a node without a certificate and makes the join exchange:
    /// the member is checked against the token's pinned CA; the answer is its certificate or
    /// a refusal.
    pub async fn request_join(
        addr: SocketAddr,
        token: &Token,
        request: &JoinRequest,
    ) -> Result<JoinResponse, QuicError> {
        let crypto = |e: &dyn std::fmt::Display| QuicError::Crypto(e.to_string());
        let tls = join_client_config(token).map_err(|e| crypto(&e))?;
        let tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| crypto(&e))?;
        Self::exchange(addr, quinn::ClientConfig::new(Arc::new(tls)), request).await
    }

    /// One join-protocol exchange from a throwaway client endpoint.
    async fn exchange(
        addr: SocketAddr,
        mut client: quinn::ClientConfig,
        request: &JoinRequest,
    ) -> Result<JoinResponse, QuicError> {
        client.transport_config(transport());
        let local = if addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let mut endpoint = quinn::Endpoint::client(local).map_err(|source| QuicError::Bind {
            addr: local,
            source,
        })?;
        endpoint.set_default_client_config(client);
        // The name is not checked (the pin is); any valid one will do.
        let conn = endpoint
            .connect(addr, "join.bolt")
            .map_err(|source| QuicError::Connect { addr, source })?
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&join::encode(request)).await?;
        send.finish()?;
        let bytes = recv.read_to_end(MAX_JOIN_FRAME).await?;
        conn.close(0u32.into(), b"joined");
        endpoint.wait_idle().await;
        join::decode(&bytes).map_err(QuicError::Join)
    }

    /// Closes every connection and stops listening.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
    }
}

/// A connection that completed its handshake.
#[derive(Debug)]
pub enum Incoming {
    /// A member of the cluster.
    Member(Peer),
    /// A node without a certificate asking to join.
    Join(JoinConn),
    /// A member (its certificate verified, its node id given) asking for a new certificate.
    Renew(JoinConn, String),
}

/// A node asking to join: one request, one answer.
#[derive(Debug)]
pub struct JoinConn {
    conn: quinn::Connection,
}

impl JoinConn {
    /// Where it dials from.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Reads its request (at most [`MAX_JOIN_FRAME`] bytes), then calls `answer` and sends
    /// what it returns.
    pub async fn serve(
        self,
        answer: impl FnOnce(Result<JoinRequest, JoinError>) -> JoinResponse,
    ) -> Result<(), QuicError> {
        let (mut send, mut recv) = self.conn.accept_bi().await?;
        let request = match recv.read_to_end(MAX_JOIN_FRAME).await {
            Ok(bytes) => join::decode::<JoinRequest>(&bytes),
            Err(e) => Err(JoinError::Frame(e.to_string())),
        };
        let response = answer(request);
        send.write_all(&join::encode(&response)).await?;
        send.finish()?;
        // Let the answer reach the node before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.conn.closed()).await;
        Ok(())
    }
}

/// An authenticated connection to one node.
#[derive(Debug, Clone)]
pub struct Peer {
    conn: quinn::Connection,
    node_id: String,
}

impl Peer {
    fn new(conn: quinn::Connection) -> Result<Self, QuicError> {
        let node_id = conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|certs| certs.first().and_then(peer_node_id))
            .ok_or(QuicError::NoPeerId)?;
        Ok(Self { conn, node_id })
    }

    /// The peer's node id, from its certificate.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Sends one message on a stream of its own.
    pub async fn send(&self, msg: &[u8]) -> Result<(), QuicError> {
        if msg.len() > MAX_MESSAGE {
            return Err(QuicError::TooLarge(msg.len()));
        }
        let mut stream = self.conn.open_uni().await?;
        stream.write_all(msg).await?;
        stream.finish()?;
        Ok(())
    }

    /// Sends without the size check: a hostile peer, for tests of the receiving end.
    #[cfg(test)]
    pub(crate) async fn send_unchecked(&self, msg: &[u8]) -> Result<(), QuicError> {
        let mut stream = self.conn.open_uni().await?;
        stream.write_all(msg).await?;
        stream.finish()?;
        Ok(())
    }

    /// The next message the peer sent; a stream over [`MAX_MESSAGE`] is an error (and is
    /// reset), without buffering more than the limit.
    pub async fn recv(&self) -> Result<Vec<u8>, QuicError> {
        let mut stream = self.conn.accept_uni().await?;
        Ok(stream.read_to_end(MAX_MESSAGE).await?)
    }

    /// Sends one unreliable datagram (membership packets); it may be lost or dropped when the
    /// peer's datagram buffer is full.
    pub fn send_datagram(&self, bytes: Vec<u8>) -> Result<(), QuicError> {
        self.conn
            .send_datagram(bytes.into())
            .map_err(|e| QuicError::Datagram(e.to_string()))
    }

    /// The next datagram the peer sent.
    pub async fn recv_datagram(&self) -> Result<Vec<u8>, QuicError> {
        Ok(self.conn.read_datagram().await?.to_vec())
    }

    /// Whether the connection is still up.
    pub fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}

#[cfg(test)]
#[path = "quic_tests.rs"]
mod tests;
