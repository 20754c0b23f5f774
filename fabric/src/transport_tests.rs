//! One suite, run over both transports (`over_quic::*` on 127.0.0.1, `over_memory::*` in
//! process), then what only one of them can show: the memory network's latency, loss,
//! partitions and down nodes (in paused tokio time), QUIC's refusal of oversized frames and its
//! redial after a peer restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use time::{Duration as Span, OffsetDateTime};

use super::*;
use crate::identity::{node_request, ClusterCa};

const IDS: [&str; 4] = ["a1", "b2", "c3", "d4"];

/// Quick dials, so that an unreachable peer shows within the tests' bounds.
fn config() -> TransportConfig {
    TransportConfig {
        dial_timeout: Duration::from_millis(300),
        ..TransportConfig::default()
    }
}

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

/// `n` QUIC nodes of one cluster on 127.0.0.1.
fn quic(n: usize, config: TransportConfig) -> Vec<QuicTransport> {
    let ca = ca();
    IDS[..n]
        .iter()
        .map(|id| QuicTransport::bind(loopback(), &identity(&ca, id), config.clone()).unwrap())
        .collect()
}

/// `n` nodes on a fresh memory network.
fn mem(n: usize, config: TransportConfig) -> Vec<MemTransport> {
    let net = MemNetwork::new(7);
    IDS[..n]
        .iter()
        .map(|id| net.join(id, config.clone()).unwrap())
        .collect()
}

/// Bounded: a test never waits forever.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}

/// Waits (at most 10 s) until `done` holds.
async fn until(mut done: impl FnMut() -> bool) {
    within(async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn send_to<T: Transport>(from: &T, to: &T, msg: &[u8]) {
    from.send(to.node_id(), to.local_addr(), msg.to_vec())
        .await
        .unwrap();
}

// --- the suite ----------------------------------------------------------------------------

async fn delivers_both_ways_and_names_the_sender<T: Transport>(
    make: impl Fn(usize, TransportConfig) -> Vec<T>,
) {
    let nodes = make(3, config());
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    send_to(a, b, b"ping").await;
    assert_eq!(
        within(b.recv()).await,
        Some(("a1".into(), b"ping".to_vec()))
    );
    send_to(b, a, b"pong").await;
    assert_eq!(
        within(a.recv()).await,
        Some(("b2".into(), b"pong".to_vec()))
    );
    send_to(c, b, b"hi").await;
    assert_eq!(within(b.recv()).await, Some(("c3".into(), b"hi".to_vec())));
    assert_eq!(a.stats().sent, 1);
    assert_eq!(b.stats().received, 2);
}

async fn a_message_of_max_size_arrives_whole<T: Transport>(
    make: impl Fn(usize, TransportConfig) -> Vec<T>,
) {
    let nodes = make(2, config());
    let (a, b) = (&nodes[0], &nodes[1]);
    let big: Vec<u8> = (0..MAX_MESSAGE).map(|i| (i % 251) as u8).collect();
    send_to(a, b, &big).await;
    let (from, got) = within(b.recv()).await.unwrap();
    assert_eq!(from, "a1");
    assert!(got == big, "the message arrived changed");
    let over = a
        .send(b.node_id(), b.local_addr(), vec![0; MAX_MESSAGE + 1])
        .await;
    assert!(matches!(over, Err(TransportError::TooLarge(n)) if n == MAX_MESSAGE + 1));
}

async fn many_messages_all_arrive<T: Transport>(make: impl Fn(usize, TransportConfig) -> Vec<T>) {
    let nodes = make(2, config());
    let (a, b) = (&nodes[0], &nodes[1]);
    for i in 0..500u32 {
        send_to(a, b, &i.to_be_bytes()).await;
    }
    let mut seen = BTreeSet::new();
    for _ in 0..500 {
        let (from, msg) = within(b.recv()).await.unwrap();
        assert_eq!(from, "a1");
        seen.insert(u32::from_be_bytes(msg.try_into().unwrap()));
    }
    assert_eq!(seen, (0..500).collect());
    assert_eq!(a.stats().sent, 500);
    assert_eq!(b.stats().received, 500);
}

async fn an_unreachable_peer_never_blocks_the_sender_and_its_drops_are_counted<T: Transport>(
    make: impl Fn(usize, TransportConfig) -> Vec<T>,
) {
    let nodes = make(
        2,
        TransportConfig {
            queue: 16,
            ..config()
        },
    );
    let (a, b) = (&nodes[0], &nodes[1]);
    // A socket that never answers: a dial to it can only time out.
    let hole = std::net::UdpSocket::bind(loopback()).unwrap();
    let nowhere = hole.local_addr().unwrap();
    let started = std::time::Instant::now();
    let mut full = 0;
    for i in 0..40u8 {
        match a.send("e5", nowhere, vec![i]).await {
            Ok(()) => {}
            Err(TransportError::Full(to)) => {
                assert_eq!(to, "e5");
                full += 1;
            }
            Err(e) => panic!("send: {e}"),
        }
    }
    // Nothing awaited in between, so the link task has not run yet: its queue took 16.
    assert_eq!(full, 24);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "40 sends took {:?}",
        started.elapsed()
    );
    until(|| {
        let s = a.stats();
        s.dropped_full + s.dropped_unreachable == 40
    })
    .await;
    assert_eq!(a.stats().dropped_full, full);
    assert_eq!(a.stats().sent, 0);
    // The other peers are not held up by it.
    send_to(a, b, b"still here").await;
    assert_eq!(
        within(b.recv()).await,
        Some(("a1".into(), b"still here".to_vec()))
    );
}

async fn a_full_inbox_drops_and_counts<T: Transport>(
    make: impl Fn(usize, TransportConfig) -> Vec<T>,
) {
    let nodes = make(
        2,
        TransportConfig {
            inbox: 8,
            ..config()
        },
    );
    let (a, b) = (&nodes[0], &nodes[1]);
    for i in 0..50u8 {
        send_to(a, b, &[i]).await;
    }
    until(|| {
        let s = b.stats();
        s.received + s.dropped_inbox == 50
    })
    .await;
    assert_eq!(b.stats().received, 8);
    assert_eq!(b.stats().dropped_inbox, 42);
    for _ in 0..8 {
        assert_eq!(within(b.recv()).await.unwrap().0, "a1");
    }
}

async fn close_ends_recv_with_none<T: Transport>(make: impl Fn(usize, TransportConfig) -> Vec<T>) {
    let mut nodes = make(2, config());
    let b = Arc::new(nodes.pop().unwrap());
    let a = nodes.pop().unwrap();
    let waiting = tokio::spawn({
        let b = Arc::clone(&b);
        async move { b.recv().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.close();
    assert_eq!(within(waiting).await.unwrap(), None);
    assert_eq!(within(b.recv()).await, None);
    assert!(matches!(
        b.send(a.node_id(), a.local_addr(), b"x".to_vec()).await,
        Err(TransportError::Closed)
    ));
}

/// Each case, once per transport.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod over_quic {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::quic).await;
                }
            )*
        }
        mod over_memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::mem).await;
                }
            )*
        }
    };
}

suite!(
    delivers_both_ways_and_names_the_sender,
    a_message_of_max_size_arrives_whole,
    many_messages_all_arrive,
    an_unreachable_peer_never_blocks_the_sender_and_its_drops_are_counted,
    a_full_inbox_drops_and_counts,
    close_ends_recv_with_none,
);

// --- memory only --------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn latency_delays_delivery_in_virtual_time() {
    let nodes = mem(2, config());
    let (a, b) = (&nodes[0], &nodes[1]);
    let net = a.network();
    net.set_latency("a1", "b2", Duration::from_millis(200));
    let t0 = Instant::now();
    for i in 0..3u8 {
        send_to(a, b, &[i]).await;
    }
    let early = tokio::time::timeout(Duration::from_millis(199), b.recv()).await;
    assert!(early.is_err(), "arrived before its latency");
    for i in 0..3u8 {
        assert_eq!(b.recv().await, Some(("a1".into(), vec![i])));
    }
    // Pipelined: all three at 200 ms, not 600.
    assert_eq!(t0.elapsed(), Duration::from_millis(200));
    // The other direction has the default latency (none).
    send_to(b, a, b"back").await;
    assert_eq!(a.recv().await, Some(("b2".into(), b"back".to_vec())));
    assert_eq!(t0.elapsed(), Duration::from_millis(200));
    net.set_default_latency(Duration::from_millis(50));
    send_to(b, a, b"slow").await;
    assert_eq!(a.recv().await, Some(("b2".into(), b"slow".to_vec())));
    assert_eq!(t0.elapsed(), Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn partitioned_messages_never_arrive_and_do_after_unblock() {
    let nodes = mem(3, config());
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let net = a.network();
    net.set_default_latency(Duration::from_millis(10));
    // In flight when the link is cut: lost with it.
    send_to(a, b, b"in flight").await;
    net.block("b2", "a1");
    for i in 0..5u8 {
        send_to(a, b, &[i]).await;
        send_to(b, a, &[i]).await;
    }
    send_to(a, c, b"around").await;
    assert_eq!(c.recv().await, Some(("a1".into(), b"around".to_vec())));
    let wait = Duration::from_secs(3600);
    assert!(tokio::time::timeout(wait, b.recv()).await.is_err());
    assert!(tokio::time::timeout(wait, a.recv()).await.is_err());
    assert_eq!(a.stats().dropped_unreachable, 6);
    assert_eq!(b.stats().dropped_unreachable, 5);
    net.unblock("a1", "b2");
    send_to(a, b, b"healed").await;
    assert_eq!(b.recv().await, Some(("a1".into(), b"healed".to_vec())));
    send_to(b, a, b"healed").await;
    assert_eq!(a.recv().await, Some(("b2".into(), b"healed".to_vec())));
}

#[tokio::test(start_paused = true)]
async fn a_down_node_sends_and_receives_nothing_until_it_is_back() {
    let nodes = mem(2, config());
    let (a, b) = (&nodes[0], &nodes[1]);
    let net = a.network();
    net.set_down("b2", true);
    send_to(a, b, b"lost").await;
    send_to(b, a, b"lost").await;
    let wait = Duration::from_secs(60);
    assert!(tokio::time::timeout(wait, b.recv()).await.is_err());
    assert!(tokio::time::timeout(wait, a.recv()).await.is_err());
    assert_eq!(a.stats().dropped_unreachable, 1);
    assert_eq!(b.stats().dropped_unreachable, 1);
    net.set_down("b2", false);
    send_to(a, b, b"back").await;
    assert_eq!(b.recv().await, Some(("a1".into(), b"back".to_vec())));
}

/// How many of 1000 messages arrive over a link losing 30%, on a network of seed `seed`.
async fn arrivals_at_30_percent_loss(seed: u64) -> u64 {
    let net = MemNetwork::new(seed);
    let a = net.join("a1", config()).unwrap();
    let b = net.join("b2", config()).unwrap();
    net.set_loss(0.3);
    for i in 0..1000u32 {
        send_to(&a, &b, &i.to_be_bytes()).await;
    }
    until(|| a.stats().sent == 1000).await;
    let received = b.stats().received;
    assert_eq!(received + net.lost(), 1000);
    for _ in 0..received {
        assert!(b.recv().await.is_some());
    }
    received
}

#[tokio::test(start_paused = true)]
async fn loss_drops_a_seeded_share_of_messages() {
    let got = arrivals_at_30_percent_loss(11).await;
    assert!((620..=780).contains(&got), "{got} of 1000 arrived");
    assert_eq!(
        arrivals_at_30_percent_loss(11).await,
        got,
        "not reproducible"
    );
}

#[tokio::test]
async fn a_node_id_joins_a_network_once() {
    let net = MemNetwork::new(1);
    let a = net.join("a1", config()).unwrap();
    assert!(matches!(
        net.join("a1", config()),
        Err(TransportError::Taken(_))
    ));
    let b = net.join("b2", config()).unwrap();
    assert_ne!(a.local_addr(), b.local_addr());
    // A message for one id at another's address does not reach either.
    a.send("c3", b.local_addr(), b"x".to_vec()).await.unwrap();
    until(|| a.stats().dropped_unreachable == 1).await;
    assert_eq!(b.stats().received, 0);
}

// --- QUIC only ----------------------------------------------------------------------------

#[tokio::test]
async fn an_oversized_frame_is_refused_and_counted_and_the_connection_goes_on() {
    let ca = ca();
    let b = QuicTransport::bind(loopback(), &identity(&ca, "b2"), config()).unwrap();
    let hostile = Mesh::bind(loopback(), &identity(&ca, "c3"), false).unwrap();
    let peer = within(hostile.connect(b.local_addr(), "b2")).await.unwrap();
    let sender = tokio::spawn({
        let peer = peer.clone();
        async move {
            let _ = peer.send_unchecked(&vec![1u8; MAX_MESSAGE + 1]).await;
        }
    });
    until(|| b.stats().refused_frames == 1).await;
    within(peer.send(b"fine")).await.unwrap();
    assert_eq!(
        within(b.recv()).await,
        Some(("c3".into(), b"fine".to_vec()))
    );
    assert_eq!(b.stats().received, 1);
    sender.abort();
    hostile.close();
}

#[tokio::test]
async fn a_link_redials_a_peer_that_restarted() {
    let ca = ca();
    let a = QuicTransport::bind(loopback(), &identity(&ca, "a1"), config()).unwrap();
    let b = QuicTransport::bind(loopback(), &identity(&ca, "b2"), config()).unwrap();
    let addr = b.local_addr();
    a.send("b2", addr, b"one".to_vec()).await.unwrap();
    assert_eq!(within(b.recv()).await, Some(("a1".into(), b"one".to_vec())));
    drop(b);
    // The same node back on the same port.
    let b = within(async {
        loop {
            match QuicTransport::bind(addr, &identity(&ca, "b2"), config()) {
                Ok(b) => break b,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    // What went out on the dead connection may be lost; the link redials and goes on.
    let got = within(async {
        loop {
            a.send("b2", addr, b"two".to_vec()).await.unwrap();
            if let Ok(got) = tokio::time::timeout(Duration::from_millis(200), b.recv()).await {
                break got;
            }
        }
    })
    .await;
    assert_eq!(got, Some(("a1".into(), b"two".to_vec())));
}

#[tokio::test]
async fn a_peer_that_comes_up_late_is_reached_after_backoff() {
    let ca = ca();
    let a = QuicTransport::bind(loopback(), &identity(&ca, "a1"), config()).unwrap();
    // A port nobody listens on yet.
    let addr = std::net::UdpSocket::bind(loopback())
        .unwrap()
        .local_addr()
        .unwrap();
    a.send("b2", addr, b"early".to_vec()).await.unwrap();
    until(|| a.stats().dropped_unreachable >= 1).await;
    let b = QuicTransport::bind(addr, &identity(&ca, "b2"), config()).unwrap();
    let got = within(async {
        loop {
            let _ = a.send("b2", addr, b"late".to_vec()).await;
            if let Ok(got) = tokio::time::timeout(Duration::from_millis(100), b.recv()).await {
                break got;
            }
        }
    })
    .await;
    assert_eq!(got, Some(("a1".into(), b"late".to_vec())));
}

#[test]
fn backoff_waits_are_drawn_from_the_upper_half() {
    for ms in [100u64, 800, 5000] {
        let backoff = Duration::from_millis(ms);
        for _ in 0..100 {
            let wait = jittered(backoff);
            assert!(
                wait >= backoff / 2 && wait <= backoff,
                "{wait:?} for {backoff:?}"
            );
        }
    }
}
