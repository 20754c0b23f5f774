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
}

/// A node's QUIC endpoint: listens on one UDP socket and dials from it.
#[derive(Debug)]
pub struct Mesh {
    endpoint: quinn::Endpoint,
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
    pub fn bind(addr: SocketAddr, identity: &NodeIdentity) -> Result<Self, QuicError> {
        let crypto = |e: &dyn std::fmt::Display| QuicError::Crypto(e.to_string());
        let server_tls =
            quinn::crypto::rustls::QuicServerConfig::try_from(identity.server_config()?)
                .map_err(|e| crypto(&e))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server.transport_config(transport());
        let client_tls =
            quinn::crypto::rustls::QuicClientConfig::try_from(identity.client_config()?)
                .map_err(|e| crypto(&e))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
        client.transport_config(transport());
        let mut endpoint = quinn::Endpoint::server(server, addr)
            .map_err(|source| QuicError::Bind { addr, source })?;
        endpoint.set_default_client_config(client);
        Ok(Self { endpoint })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Dials node `node_id` at `addr`; the handshake fails unless the server's certificate is
    /// the cluster CA's and names that node.
    pub async fn connect(&self, addr: SocketAddr, node_id: &str) -> Result<Peer, QuicError> {
        let conn = self
            .endpoint
            .connect(addr, &node_dns_name(node_id))
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

    /// The next peer that completed a handshake (its certificate is the cluster CA's); `None`
    /// once the endpoint is closed. A failed handshake is an `Err` and the loop goes on.
    pub async fn accept(&self) -> Option<Result<Peer, QuicError>> {
        let incoming = self.endpoint.accept().await?;
        Some(async { Peer::new(incoming.await?) }.await)
    }

    /// Closes every connection and stops listening.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
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

    /// The next message the peer sent; a stream over [`MAX_MESSAGE`] is an error (and is
    /// reset), without buffering more than the limit.
    pub async fn recv(&self) -> Result<Vec<u8>, QuicError> {
        let mut stream = self.conn.accept_uni().await?;
        Ok(stream.read_to_end(MAX_MESSAGE).await?)
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}

#[cfg(test)]
#[path = "quic_tests.rs"]
mod tests;
