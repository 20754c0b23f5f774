//! Handshakes between rustls endpoints in memory: what the mesh accepts and refuses.
#![allow(clippy::unwrap_used)]

use rustls::{ClientConnection, ServerConnection};

use super::*;

const DAY: Duration = Duration::days(1);

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A node of `ca` named `id`, its certificate valid from `from` for `ttl`.
fn node(ca: &ClusterCa, id: &str, from: OffsetDateTime, ttl: Duration) -> NodeIdentity {
    let req = node_request(id).unwrap();
    let cert = ca.issue(&req.csr_pem, id, from, ttl).unwrap();
    NodeIdentity::from_pem(ca.cert_pem(), &cert, &req.key_pem).unwrap()
}

/// Runs a handshake of `client` dialing `server_id` against `server`; the peer id the server
/// saw, or the first error either side raised.
fn handshake(
    client: &NodeIdentity,
    server_id: &str,
    server: &NodeIdentity,
) -> Result<String, rustls::Error> {
    let mut c = ClientConnection::new(
        Arc::new(client.client_config().unwrap()),
        server_name(server_id).unwrap(),
    )?;
    let mut s = ServerConnection::new(Arc::new(server.server_config().unwrap()))?;
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets()?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            assert_eq!(s.alpn_protocol(), Some(ALPN));
            let peer = s.peer_certificates().unwrap().first().unwrap().clone();
            return Ok(peer_node_id(&peer).unwrap_or_default());
        }
    }
    panic!("the handshake did not finish");
}

#[test]
fn two_nodes_of_one_cluster_authenticate_each_other_and_the_server_learns_the_peers_id() {
    let ca = ClusterCa::generate("t", now(), 365 * DAY).unwrap();
    let a = node(&ca, "a1", now(), DAY);
    let b = node(&ca, "b2", now(), DAY);
    assert_eq!(handshake(&a, "b2", &b).unwrap(), "a1");
    assert_eq!(a.node_id().as_deref(), Some("a1"));
    assert_eq!(ca.fingerprint().len(), 64);
    assert_eq!(ca.fingerprint(), fingerprint_pem(ca.cert_pem()).unwrap());
}

#[test]
fn a_certificate_from_another_cluster_is_refused_in_both_directions() {
    let ca = ClusterCa::generate("t", now(), 365 * DAY).unwrap();
    let other = ClusterCa::generate("t", now(), 365 * DAY).unwrap();
    assert_ne!(ca.fingerprint(), other.fingerprint());
    let member = node(&ca, "a1", now(), DAY);
    let stranger = node(&other, "a1", now(), DAY);
    // A stranger dialing a member: the member refuses the client certificate.
    assert!(handshake(&stranger, "a1", &member).is_err());
    // A member dialing a stranger: the member refuses the server certificate.
    assert!(handshake(&member, "a1", &stranger).is_err());
}

#[test]
fn an_expired_or_not_yet_valid_certificate_is_refused() {
    let ca = ClusterCa::generate("t", now() - 10 * DAY, 365 * DAY).unwrap();
    let server = node(&ca, "b2", now(), DAY);
    let expired = node(&ca, "a1", now() - 3 * DAY, DAY);
    assert!(handshake(&expired, "b2", &server).is_err());
    let future = node(&ca, "a1", now() + 3 * DAY, DAY);
    assert!(handshake(&future, "b2", &server).is_err());
    let fresh = node(&ca, "a1", now(), DAY);
    assert_eq!(handshake(&fresh, "b2", &server).unwrap(), "a1");
}

#[test]
fn a_client_that_dials_one_node_refuses_another_nodes_certificate() {
    let ca = ClusterCa::generate("t", now(), 365 * DAY).unwrap();
    let a = node(&ca, "a1", now(), DAY);
    let b = node(&ca, "b2", now(), DAY);
    assert!(handshake(&a, "c3", &b).is_err());
}

#[test]
fn the_ca_decides_the_name_not_the_request_and_bad_ids_are_refused() {
    let ca = ClusterCa::generate("t", now(), 365 * DAY).unwrap();
    // A request made for "ff" issued as "a1" names a1 only.
    let req = node_request("ff").unwrap();
    let cert = ca.issue(&req.csr_pem, "a1", now(), DAY).unwrap();
    let id = NodeIdentity::from_pem(ca.cert_pem(), &cert, &req.key_pem).unwrap();
    assert_eq!(id.node_id().as_deref(), Some("a1"));
    for bad in ["", "A1", "a1.evil", "zz", &"a".repeat(65)] {
        assert!(matches!(
            ca.issue(&req.csr_pem, bad, now(), DAY),
            Err(IdentityError::NodeId(_))
        ));
    }
    assert!(matches!(
        ca.issue(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "a1",
            now(),
            DAY
        ),
        Err(IdentityError::BadRequest(_))
    ));
}

#[test]
fn a_stored_ca_signs_like_the_one_that_was_made() {
    let ca = ClusterCa::generate("t", now(), 365 * DAY).unwrap();
    let again = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(again.fingerprint(), ca.fingerprint());
    let a = node(&again, "a1", now(), DAY);
    let b = node(&ca, "b2", now(), DAY);
    assert_eq!(handshake(&a, "b2", &b).unwrap(), "a1");
}
