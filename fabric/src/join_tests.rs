//! Join tokens, proofs and the join exchange over real QUIC on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signer, SigningKey};
use time::{Duration as Span, OffsetDateTime};

use super::*;
use crate::identity::{node_request, ClusterCa, NodeIdentity};
use crate::quic::{Incoming, Mesh, QuicError};

fn key(seed: u8) -> (SigningKey, String) {
    let k = SigningKey::from_bytes(&[seed; 32]);
    let id = hex::encode(k.verifying_key().to_bytes());
    (k, id)
}

fn request(token: &Token, seed: u8) -> (JoinRequest, String) {
    let (k, id) = key(seed);
    let req = node_request(&id).unwrap();
    let proof = k.sign(&proof_digest(&token.secret, &id, &req.csr_pem));
    (
        JoinRequest {
            secret: token.secret,
            node_id: id,
            name: "n".into(),
            addr: "127.0.0.1:1".into(),
            csr_pem: req.csr_pem,
            proof: proof.to_bytes().to_vec(),
        },
        req.key_pem,
    )
}

#[test]
fn a_token_round_trips_and_bad_ones_say_why() {
    let mut book = TokenBook::default();
    let t = book.issue(&"ab".repeat(32), SystemTime::now(), Duration::from_secs(60));
    let s = t.to_string();
    assert!(s.starts_with("bolt1-"));
    assert_eq!(s.parse::<Token>().unwrap(), t);
    assert!(
        !format!("{t:?}").contains(&hex::encode(t.secret)),
        "debug leaks the secret"
    );
    for bad in [
        "",
        "bolt1-",
        "bolt2-x-y",
        &s[..s.len() - 1],
        &s.replace('-', "_"),
    ] {
        assert!(
            matches!(bad.parse::<Token>(), Err(JoinError::Token(_))),
            "{bad}"
        );
    }
}

#[test]
fn a_token_is_redeemed_once_and_not_after_it_expires() {
    let mut book = TokenBook::default();
    let now = SystemTime::now();
    let t = book.issue("f", now, Duration::from_secs(60));
    assert_eq!(book.redeem(&t.secret, now), Ok(()));
    assert_eq!(book.redeem(&t.secret, now), Err(JoinError::Unknown));
    let late = book.issue("f", now, Duration::from_secs(60));
    assert_eq!(
        book.redeem(&late.secret, now + Duration::from_secs(61)),
        Err(JoinError::Expired)
    );
    assert_eq!(book.redeem(&[0; 32], now), Err(JoinError::Unknown));
}

#[test]
fn the_proof_binds_the_request_to_the_event_key_of_its_node_id() {
    let token = Token {
        fingerprint: "00".repeat(32),
        secret: [3; 32],
    };
    let (good, _) = request(&token, 1);
    assert_eq!(good.check_proof(), Ok(()));
    let mut other_id = good.clone();
    other_id.node_id = key(2).1;
    assert_eq!(other_id.check_proof(), Err(JoinError::Proof));
    let mut other_csr = good.clone();
    other_csr.csr_pem.push(' ');
    assert_eq!(other_csr.check_proof(), Err(JoinError::Proof));
    let mut short = good.clone();
    short.proof.pop();
    assert_eq!(short.check_proof(), Err(JoinError::Proof));
    let bytes = encode(&good);
    assert_eq!(decode::<JoinRequest>(&bytes).unwrap(), good);
    assert!(decode::<JoinRequest>(&bytes[..bytes.len() - 1]).is_err());
}

fn member(ca: &ClusterCa) -> (Mesh, SocketAddr) {
    let (_, id) = key(9);
    let req = node_request(&id).unwrap();
    let cert = ca
        .issue(&req.csr_pem, &id, OffsetDateTime::now_utc(), Span::days(1))
        .unwrap();
    let identity = NodeIdentity::from_pem(ca.cert_pem(), &cert, &req.key_pem).unwrap();
    let mesh = Mesh::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &identity, true).unwrap();
    let addr = mesh.local_addr().unwrap();
    (mesh, addr)
}

/// Serves joins the way the agent does: redeem, check the proof, issue.
async fn serve(mesh: &Mesh, ca: &ClusterCa, book: &std::sync::Mutex<TokenBook>) {
    let Some(Ok(Incoming::Join(conn))) = mesh.accept().await else {
        return;
    };
    let _ = conn
        .serve(|req| {
            let outcome = req.and_then(|req| {
                book.lock()
                    .unwrap()
                    .redeem(&req.secret, SystemTime::now())?;
                req.check_proof()?;
                Ok(req)
            });
            match outcome {
                Ok(req) => JoinResponse::Accepted {
                    member_id: key(9).1,
                    ca_pem: ca.cert_pem().to_owned(),
                    cert_pem: ca
                        .issue(
                            &req.csr_pem,
                            &req.node_id,
                            OffsetDateTime::now_utc(),
                            Span::days(1),
                        )
                        .unwrap(),
                },
                Err(e) => JoinResponse::Refused {
                    reason: e.to_string(),
                },
            }
        })
        .await;
}

#[tokio::test]
async fn a_node_with_a_token_joins_and_its_certificate_works_on_the_mesh() {
    let ca = ClusterCa::generate("t", OffsetDateTime::now_utc(), Span::days(30)).unwrap();
    let (mesh, addr) = member(&ca);
    let book = std::sync::Mutex::new(TokenBook::default());
    let token = book.lock().unwrap().issue(
        &ca.fingerprint(),
        SystemTime::now(),
        Duration::from_secs(60),
    );
    let (req, key_pem) = request(&token, 1);
    let (answer, ()) = tokio::join!(
        Mesh::request_join(addr, &token, &req),
        serve(&mesh, &ca, &book)
    );
    let JoinResponse::Accepted {
        ca_pem, cert_pem, ..
    } = answer.unwrap()
    else {
        panic!("refused");
    };
    let identity = NodeIdentity::from_pem(&ca_pem, &cert_pem, &key_pem).unwrap();
    assert_eq!(identity.node_id(), Some(req.node_id.clone()));

    // The same token a second time is refused.
    let (again, _) = request(&token, 2);
    let (answer, ()) = tokio::join!(
        Mesh::request_join(addr, &token, &again),
        serve(&mesh, &ca, &book)
    );
    assert!(
        matches!(answer.unwrap(), JoinResponse::Refused { reason } if reason.contains("already used"))
    );
}

#[tokio::test]
async fn a_member_of_another_cluster_is_not_trusted_by_the_token() {
    let ca = ClusterCa::generate("t", OffsetDateTime::now_utc(), Span::days(30)).unwrap();
    let (mesh, addr) = member(&ca);
    let other = ClusterCa::generate("o", OffsetDateTime::now_utc(), Span::days(30)).unwrap();
    let token = Token {
        fingerprint: other.fingerprint(),
        secret: [1; 32],
    };
    let (req, _) = request(&token, 1);
    let (answer, _) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(10),
            Mesh::request_join(addr, &token, &req)
        ),
        tokio::time::timeout(Duration::from_secs(2), mesh.accept())
    );
    assert!(matches!(answer.unwrap(), Err(QuicError::Connection(_))));
}

#[tokio::test]
async fn a_client_without_a_certificate_gets_nothing_but_the_join_exchange() {
    let ca = ClusterCa::generate("t", OffsetDateTime::now_utc(), Span::days(30)).unwrap();
    let (mesh, addr) = member(&ca);
    // A cert-less client that asks for the member protocol is closed after the handshake.
    let token = Token {
        fingerprint: ca.fingerprint(),
        secret: [1; 32],
    };
    let mut tls = join_client_config(&token).unwrap();
    tls.alpn_protocols = vec![crate::identity::ALPN.to_vec()];
    let tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(tls)));
    let dial = async {
        let conn = endpoint.connect(addr, "x.bolt").unwrap().await?;
        conn.accept_uni().await.map(|_| ())
    };
    let (dialed, accepted) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(10), dial),
        mesh.accept()
    );
    assert!(matches!(accepted, Some(Err(QuicError::NoPeerId))));
    assert!(dialed.unwrap().is_err());
}
