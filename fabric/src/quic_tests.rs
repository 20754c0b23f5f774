//! Real QUIC between endpoints on 127.0.0.1: what the mesh carries, and what it refuses.
#![allow(clippy::unwrap_used)]

use time::{Duration as Span, OffsetDateTime};

use super::*;
use crate::identity::{node_request, ClusterCa};

fn ca() -> ClusterCa {
    ClusterCa::generate("t", OffsetDateTime::now_utc(), Span::days(30)).unwrap()
}

fn identity(ca: &ClusterCa, id: &str) -> NodeIdentity {
    let req = node_request(id).unwrap();
    let now = OffsetDateTime::now_utc();
    let cert = ca.issue(&req.csr_pem, id, now, Span::days(1)).unwrap();
    NodeIdentity::from_pem(ca.cert_pem(), &cert, &req.key_pem).unwrap()
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Bounded: a test never waits forever on the network.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(10), f)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn two_members_exchange_messages_and_know_each_other_by_certificate() {
    let ca = ca();
    let a = Mesh::bind(loopback(), &identity(&ca, "a1"), false).unwrap();
    let b = Mesh::bind(loopback(), &identity(&ca, "b2"), false).unwrap();
    let b_addr = b.local_addr().unwrap();
    let (dialed, accepted) =
        within(async { tokio::join!(a.connect(b_addr, "b2"), b.accept()) }).await;
    let dialed = dialed.unwrap();
    let Incoming::Member(accepted) = accepted.unwrap().unwrap() else {
        panic!("not a member")
    };
    assert_eq!(dialed.node_id(), "b2");
    assert_eq!(accepted.node_id(), "a1");

    dialed.send(b"hello").await.unwrap();
    assert_eq!(within(accepted.recv()).await.unwrap(), b"hello");
    // A message larger than the flow-control window: sent while the other side reads.
    let big = vec![7u8; MAX_MESSAGE];
    let (sent, got) = within(async { tokio::join!(accepted.send(&big), dialed.recv()) }).await;
    sent.unwrap();
    assert_eq!(got.unwrap().len(), MAX_MESSAGE);
    a.close();
    b.close();
}

#[tokio::test]
async fn a_node_of_another_cluster_cannot_connect() {
    let member = Mesh::bind(loopback(), &identity(&ca(), "b2"), false).unwrap();
    let stranger = Mesh::bind(loopback(), &identity(&ca(), "a1"), false).unwrap();
    let addr = member.local_addr().unwrap();
    let (dialed, accepted) =
        within(async { tokio::join!(stranger.connect(addr, "b2"), member.accept()) }).await;
    assert!(dialed.is_err(), "the stranger's dial succeeded");
    assert!(
        accepted.is_some_and(|r| r.is_err()),
        "the member accepted a stranger"
    );
}

#[tokio::test]
async fn dialing_a_node_that_answers_with_another_id_fails() {
    let ca = ca();
    let a = Mesh::bind(loopback(), &identity(&ca, "a1"), false).unwrap();
    let b = Mesh::bind(loopback(), &identity(&ca, "b2"), false).unwrap();
    let addr = b.local_addr().unwrap();
    let (dialed, _) = within(async { tokio::join!(a.connect(addr, "c3"), b.accept()) }).await;
    assert!(dialed.is_err());
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused_by_both_ends() {
    let ca = ca();
    let a = Mesh::bind(loopback(), &identity(&ca, "a1"), false).unwrap();
    let b = Mesh::bind(loopback(), &identity(&ca, "b2"), false).unwrap();
    let addr = b.local_addr().unwrap();
    let (dialed, accepted) =
        within(async { tokio::join!(a.connect(addr, "b2"), b.accept()) }).await;
    let dialed = dialed.unwrap();
    let Incoming::Member(accepted) = accepted.unwrap().unwrap() else {
        panic!("not a member")
    };
    let over = vec![1u8; MAX_MESSAGE + 1];
    assert!(matches!(
        dialed.send(&over).await,
        Err(QuicError::TooLarge(n)) if n == MAX_MESSAGE + 1
    ));
    // A hostile sender that skips the check: the receiver stops at the limit.
    let raw = dialed.conn.clone();
    let sender = tokio::spawn(async move {
        let mut s = raw.open_uni().await.unwrap();
        let _ = s.write_all(&over).await;
        let _ = s.finish();
    });
    assert!(matches!(
        within(accepted.recv()).await,
        Err(QuicError::Read(quinn::ReadToEndError::TooLong))
    ));
    // The connection stays usable after the refused message.
    within(dialed.send(b"still here")).await.unwrap();
    assert_eq!(within(accepted.recv()).await.unwrap(), b"still here");
    sender.abort();
}
