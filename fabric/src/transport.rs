//! A [`Transport`] moves authenticated messages between nodes, by node id, so that what runs
//! on top of it (replication, membership) is written once and tested over both a real network
//! and a simulated one:
//!
//! - [`QuicTransport`] wraps a [`Mesh`]: an accept loop with a receive task per connection, one
//!   send task per peer that reuses its connection and redials with jittered exponential
//!   backoff ([`TransportConfig::backoff_min`] .. [`TransportConfig::backoff_max`]).
//! - [`MemNetwork`] / [`MemTransport`]: an in-process network with injectable per-link latency
//!   (in tokio time, so `tokio::time::pause()` makes it deterministic), loss (seeded),
//!   partitions and nodes that are down. A message's sender is the sending transport's own id.
//!
//! Both have the same bounded-queue semantics: [`Transport::send`] never waits on a peer; it
//! puts the message on that peer's queue of [`TransportConfig::queue`] messages, and a full
//! queue refuses it with [`TransportError::Full`] (and counts it in
//! [`TransportStats::dropped_full`]). A message queued for a peer that cannot be reached is
//! dropped and counted in [`TransportStats::dropped_unreachable`]. Received messages go to one
//! inbox of [`TransportConfig::inbox`] messages; when it is full a message is dropped and
//! counted in [`TransportStats::dropped_inbox`]. Delivery is at most once: whoever needs more
//! (replication does) resends.
//!
//! Never imports the agent, `bolt-state`, `bolt-capsule` or `bolt-dns`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::identity::NodeIdentity;
use crate::quic::{Incoming, Mesh, Peer, QuicError, MAX_MESSAGE};

/// A message as it comes out of a transport: the sender's authenticated node id and the bytes.
pub type Received = (String, Vec<u8>);

/// Moves authenticated messages between nodes, by node id.
pub trait Transport: Send + Sync + 'static {
    /// This node's id (lowercase hex), as its peers see it.
    fn node_id(&self) -> &str;

    /// Queues one message for node `to` (dialing it at `addr` if needed) and returns at once.
    ///
    /// `Ok` means queued, not delivered. A full queue for that peer drops the message, counts
    /// it in [`TransportStats::dropped_full`] and returns [`TransportError::Full`]; a message
    /// over [`MAX_MESSAGE`] is [`TransportError::TooLarge`]; after [`Transport::close`],
    /// [`TransportError::Closed`].
    fn send(
        &self,
        to: &str,
        addr: SocketAddr,
        msg: Vec<u8>,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// The next message from any peer, with the sender's authenticated node id; `None` once
    /// closed.
    fn recv(&self) -> impl Future<Output = Option<Received>> + Send;

    /// The address peers reach this node at.
    fn local_addr(&self) -> SocketAddr;

    /// What it counted so far.
    fn stats(&self) -> TransportStats;

    /// Stops sending and receiving: pending and later [`Transport::recv`]s return `None`.
    fn close(&self);
}

/// One thing a transport refused.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("queue to {0} is full: message dropped")]
    Full(String),
    #[error("message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("transport is closed")]
    Closed,
    #[error("node id {0:?} is already on the network")]
    Taken(String),
    #[error("the identity's certificate names no node")]
    NoNodeId,
    #[error(transparent)]
    Quic(#[from] QuicError),
    #[error("local address: {0}")]
    Io(#[from] std::io::Error),
}

/// Queue sizes and timings, the same for both transports (the memory one has no dialing and
/// ignores the timeouts and backoff).
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Messages queued per peer before [`Transport::send`] refuses.
    pub queue: usize,
    /// Messages received and not yet taken by [`Transport::recv`] before arrivals are dropped.
    pub inbox: usize,
    /// How long a dial may take before the peer counts as unreachable.
    pub dial_timeout: Duration,
    /// How long one message may take to go out before the connection counts as broken.
    pub send_timeout: Duration,
    /// The first wait after a failed dial; it doubles per failure, up to `backoff_max`, and
    /// each wait is drawn from its upper half.
    pub backoff_min: Duration,
    /// The longest wait between dials.
    pub backoff_max: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            queue: 1024,
            inbox: 4096,
            dial_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// What a transport counted since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Messages handed to the network (for QUIC: written to a stream).
    pub sent: u64,
    /// Messages put in the inbox.
    pub received: u64,
    /// Messages refused by [`Transport::send`] because the peer's queue was full.
    pub dropped_full: u64,
    /// Messages that arrived while the inbox was full.
    pub dropped_inbox: u64,
    /// Queued messages dropped because the peer could not be reached.
    pub dropped_unreachable: u64,
    /// Incoming messages refused as over [`MAX_MESSAGE`].
    pub refused_frames: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    dropped_full: AtomicU64,
    dropped_inbox: AtomicU64,
    dropped_unreachable: AtomicU64,
    refused_frames: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            sent: get(&self.sent),
            received: get(&self.received),
            dropped_full: get(&self.dropped_full),
            dropped_inbox: get(&self.dropped_inbox),
            dropped_unreachable: get(&self.dropped_unreachable),
            refused_frames: get(&self.refused_frames),
        }
    }

    /// Puts an arrival in the inbox, or counts it dropped.
    fn arrive(&self, inbox: &mpsc::Sender<Received>, from: String, msg: Vec<u8>) {
        match inbox.try_send((from, msg)) {
            Ok(()) => add(&self.received, 1),
            Err(_) => add(&self.dropped_inbox, 1),
        }
    }
}

/// A lock that survives a panic elsewhere: the data behind it stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The receiving end both transports share: one bounded inbox and a closed flag.
#[derive(Debug)]
struct Inbox {
    rx: tokio::sync::Mutex<mpsc::Receiver<Received>>,
    closed: watch::Sender<bool>,
}

impl Inbox {
    fn new(size: usize) -> (mpsc::Sender<Received>, Inbox) {
        let (tx, rx) = mpsc::channel(size.max(1));
        let (closed, _) = watch::channel(false);
        let inbox = Inbox {
            rx: tokio::sync::Mutex::new(rx),
            closed,
        };
        (tx, inbox)
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    fn close(&self) {
        self.closed.send_replace(true);
    }

    async fn recv(&self) -> Option<Received> {
        let mut closed = self.closed.subscribe();
        if *closed.borrow_and_update() {
            return None;
        }
        tokio::select! {
            got = async { self.rx.lock().await.recv().await } => got,
            _ = closed.wait_for(|c| *c) => None,
        }
    }
}

/// The wait before the next dial: a random point in the upper half of `backoff`.
fn jittered(backoff: Duration) -> Duration {
    let half = backoff / 2;
    let extra = rand::thread_rng().gen_range(0..=half.as_millis().max(1) as u64);
    half + Duration::from_millis(extra)
}

// --- QUIC ---------------------------------------------------------------------------------

/// A [`Transport`] over the mTLS QUIC [`Mesh`]. Join requests reaching it are refused (the
/// join service has its own endpoint handling).
#[derive(Debug)]
pub struct QuicTransport {
    id: String,
    addr: SocketAddr,
    mesh: Arc<Mesh>,
    config: TransportConfig,
    shared: Arc<QuicShared>,
    inbox: Inbox,
    links: Mutex<HashMap<String, QuicLink>>,
}

/// What the transport's tasks share.
#[derive(Debug)]
struct QuicShared {
    stats: Counters,
    inbox: mpsc::Sender<Received>,
    /// The accept loop and the receive tasks, aborted on close.
    tasks: Mutex<Vec<AbortHandle>>,
}

#[derive(Debug)]
struct QuicLink {
    queue: mpsc::Sender<Vec<u8>>,
    addr: Arc<Mutex<SocketAddr>>,
    task: AbortHandle,
}

impl QuicShared {
    fn keep(&self, task: AbortHandle) {
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Reads `peer`'s messages into the inbox until its connection ends.
    fn spawn_receiver(self: &Arc<Self>, peer: Peer) {
        let shared = Arc::clone(self);
        let task = tokio::spawn(async move {
            loop {
                match peer.recv().await {
                    Ok(msg) => shared
                        .stats
                        .arrive(&shared.inbox, peer.node_id().to_owned(), msg),
                    Err(QuicError::Read(quinn::ReadToEndError::TooLong)) => {
                        add(&shared.stats.refused_frames, 1);
                    }
                    // One stream reset: the connection goes on.
                    Err(QuicError::Read(quinn::ReadToEndError::Read(
                        quinn::ReadError::Reset(_) | quinn::ReadError::ClosedStream,
                    ))) => {}
                    Err(_) => break,
                }
            }
        });
        self.keep(task.abort_handle());
    }
}

impl QuicTransport {
    /// Binds `addr` (port 0: any) with this node's identity and starts accepting. Needs a
    /// tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
        config: TransportConfig,
    ) -> Result<QuicTransport, TransportError> {
        let id = identity.node_id().ok_or(TransportError::NoNodeId)?;
        let mesh = Arc::new(Mesh::bind(addr, identity, false)?);
        let addr = mesh.local_addr()?;
        let (tx, inbox) = Inbox::new(config.inbox);
        let shared = Arc::new(QuicShared {
            stats: Counters::default(),
            inbox: tx,
            tasks: Mutex::new(Vec::new()),
        });
        let accept = {
            let (mesh, shared) = (Arc::clone(&mesh), Arc::clone(&shared));
            tokio::spawn(async move {
                while let Some(incoming) = mesh.accept().await {
                    match incoming {
                        Ok(Incoming::Member(peer)) => shared.spawn_receiver(peer),
                        // Dropping it closes the connection.
                        Ok(Incoming::Join(_) | Incoming::Renew(..)) | Err(_) => {}
                    }
                }
            })
        };
        shared.keep(accept.abort_handle());
        Ok(QuicTransport {
            id,
            addr,
            mesh,
            config,
            shared,
            inbox,
            links: Mutex::new(HashMap::new()),
        })
    }

    fn link(&self, to: &str, addr: SocketAddr) -> mpsc::Sender<Vec<u8>> {
        let mut links = lock(&self.links);
        if let Some(link) = links.get(to).filter(|l| !l.task.is_finished()) {
            *lock(&link.addr) = addr;
            return link.queue.clone();
        }
        let (queue, rx) = mpsc::channel(self.config.queue.max(1));
        let addr = Arc::new(Mutex::new(addr));
        let task = tokio::spawn(run_quic_link(
            Arc::clone(&self.mesh),
            to.to_owned(),
            Arc::clone(&addr),
            rx,
            Arc::clone(&self.shared),
            self.config.clone(),
        ));
        links.insert(
            to.to_owned(),
            QuicLink {
                queue: queue.clone(),
                addr,
                task: task.abort_handle(),
            },
        );
        queue
    }
}

/// One peer's send task: takes its queue in order, dials when it has no connection, redials
/// with backoff, and drops what it cannot send.
async fn run_quic_link(
    mesh: Arc<Mesh>,
    to: String,
    addr: Arc<Mutex<SocketAddr>>,
    mut queue: mpsc::Receiver<Vec<u8>>,
    shared: Arc<QuicShared>,
    config: TransportConfig,
) {
    let mut peer: Option<Peer> = None;
    let mut backoff = config.backoff_min;
    while let Some(msg) = queue.recv().await {
        // A connection that broke while idle gets one fresh dial for the same message.
        let mut redialed = false;
        loop {
            let (conn, reused) = match &peer {
                Some(p) => (p.clone(), true),
                None => {
                    let at = *lock(&addr);
                    match tokio::time::timeout(config.dial_timeout, mesh.connect(at, &to)).await {
                        Ok(Ok(p)) => {
                            backoff = config.backoff_min;
                            shared.spawn_receiver(p.clone());
                            peer = Some(p.clone());
                            (p, false)
                        }
                        _ => {
                            // Unreachable: this message and all that waited with it go.
                            let mut dropped = 1;
                            while queue.try_recv().is_ok() {
                                dropped += 1;
                            }
                            add(&shared.stats.dropped_unreachable, dropped);
                            tokio::time::sleep(jittered(backoff)).await;
                            backoff = (backoff * 2).min(config.backoff_max);
                            break;
                        }
                    }
                }
            };
            match tokio::time::timeout(config.send_timeout, conn.send(&msg)).await {
                Ok(Ok(())) => {
                    add(&shared.stats.sent, 1);
                    break;
                }
                _ => {
                    conn.close();
                    peer = None;
                    if reused && !redialed {
                        redialed = true;
                        continue;
                    }
                    add(&shared.stats.dropped_unreachable, 1);
                    break;
                }
            }
        }
    }
    if let Some(p) = peer {
        p.close();
    }
}

impl Transport for QuicTransport {
    fn node_id(&self) -> &str {
        &self.id
    }

    async fn send(&self, to: &str, addr: SocketAddr, msg: Vec<u8>) -> Result<(), TransportError> {
        if self.inbox.is_closed() {
            return Err(TransportError::Closed);
        }
        if msg.len() > MAX_MESSAGE {
            return Err(TransportError::TooLarge(msg.len()));
        }
        self.link(to, addr).try_send(msg).map_err(|_| {
            add(&self.shared.stats.dropped_full, 1);
            TransportError::Full(to.to_owned())
        })
    }

    async fn recv(&self) -> Option<Received> {
        self.inbox.recv().await
    }

    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn stats(&self) -> TransportStats {
        self.shared.stats.snapshot()
    }

    fn close(&self) {
        self.inbox.close();
        for (_, link) in lock(&self.links).drain() {
            link.task.abort();
        }
        for task in lock(&self.shared.tasks).drain(..) {
            task.abort();
        }
        self.mesh.close();
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.close();
    }
}

// --- memory -------------------------------------------------------------------------------

/// An in-process network of [`MemTransport`]s, with latency, loss, partitions and nodes that
/// are down. Cheap to clone: clones share the network.
#[derive(Debug, Clone)]
pub struct MemNetwork {
    hub: Arc<Mutex<Hub>>,
}

#[derive(Debug)]
struct Hub {
    nodes: HashMap<SocketAddr, MemNode>,
    next: u32,
    default_latency: Duration,
    latency: HashMap<(String, String), Duration>,
    loss: f64,
    rng: StdRng,
    lost: u64,
    /// Blocked links, each as its (lower, higher) node ids.
    blocked: HashSet<(String, String)>,
    down: HashSet<String>,
}

#[derive(Debug)]
struct MemNode {
    id: String,
    inbox: mpsc::Sender<Received>,
    stats: Arc<Counters>,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl MemNetwork {
    /// An empty network without latency or loss; `seed` drives the loss draws.
    pub fn new(seed: u64) -> MemNetwork {
        MemNetwork {
            hub: Arc::new(Mutex::new(Hub {
                nodes: HashMap::new(),
                next: 0,
                default_latency: Duration::ZERO,
                latency: HashMap::new(),
                loss: 0.0,
                rng: StdRng::seed_from_u64(seed),
                lost: 0,
                blocked: HashSet::new(),
                down: HashSet::new(),
            })),
        }
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        lock(&self.hub)
    }

    /// Adds node `node_id` at an address of its own (10.x.y.z:7000).
    pub fn join(
        &self,
        node_id: &str,
        config: TransportConfig,
    ) -> Result<MemTransport, TransportError> {
        let (tx, inbox) = Inbox::new(config.inbox);
        let stats = Arc::new(Counters::default());
        let mut hub = self.hub();
        if hub.nodes.values().any(|n| n.id == node_id) {
            return Err(TransportError::Taken(node_id.to_owned()));
        }
        hub.next += 1;
        let [_, b, c, d] = hub.next.to_be_bytes();
        let addr = SocketAddr::from(([10, b, c, d], 7000));
        hub.nodes.insert(
            addr,
            MemNode {
                id: node_id.to_owned(),
                inbox: tx,
                stats: Arc::clone(&stats),
            },
        );
        Ok(MemTransport {
            id: node_id.to_owned(),
            addr,
            net: self.clone(),
            config,
            stats,
            inbox,
            links: Mutex::new(HashMap::new()),
        })
    }

    /// The one-way latency of every link without one of its own.
    pub fn set_default_latency(&self, latency: Duration) {
        self.hub().default_latency = latency;
    }

    /// The one-way latency from `from` to `to`.
    pub fn set_latency(&self, from: &str, to: &str, latency: Duration) {
        self.hub()
            .latency
            .insert((from.to_owned(), to.to_owned()), latency);
    }

    /// The probability (0..=1) that a message is lost, on every link.
    pub fn set_loss(&self, loss: f64) {
        self.hub().loss = loss.clamp(0.0, 1.0);
    }

    /// How many messages the network lost so far.
    pub fn lost(&self) -> u64 {
        self.hub().lost
    }

    /// Cuts the link between `a` and `b`, both ways: what is in flight or sent later is dropped
    /// (and counted unreachable by its sender).
    pub fn block(&self, a: &str, b: &str) {
        self.hub().blocked.insert(pair(a, b));
    }

    /// Restores the link between `a` and `b`.
    pub fn unblock(&self, a: &str, b: &str) {
        self.hub().blocked.remove(&pair(a, b));
    }

    /// Takes node `id` off the network (`true`) or back on: a down node sends and receives
    /// nothing.
    pub fn set_down(&self, id: &str, down: bool) {
        let mut hub = self.hub();
        if down {
            hub.down.insert(id.to_owned());
        } else {
            hub.down.remove(id);
        }
    }

    fn latency(&self, from: &str, to: &str) -> Duration {
        let hub = self.hub();
        hub.latency
            .get(&(from.to_owned(), to.to_owned()))
            .copied()
            .unwrap_or(hub.default_latency)
    }

    /// Hands one message from `from` to node `to` at `addr`; false when it cannot get there.
    fn deliver(&self, from: &str, to: &str, addr: SocketAddr, msg: Vec<u8>) -> bool {
        let mut hub = self.hub();
        let reachable = hub.nodes.get(&addr).is_some_and(|n| n.id == to)
            && !hub.down.contains(from)
            && !hub.down.contains(to)
            && !hub.blocked.contains(&pair(from, to));
        if !reachable {
            return false;
        }
        let loss = hub.loss;
        if loss > 0.0 && hub.rng.gen::<f64>() < loss {
            hub.lost += 1;
            return true;
        }
        if let Some(node) = hub.nodes.get(&addr) {
            node.stats.arrive(&node.inbox, from.to_owned(), msg);
        }
        true
    }
}

/// One node on a [`MemNetwork`].
#[derive(Debug)]
pub struct MemTransport {
    id: String,
    addr: SocketAddr,
    net: MemNetwork,
    config: TransportConfig,
    stats: Arc<Counters>,
    inbox: Inbox,
    links: Mutex<HashMap<String, MemLink>>,
}

#[derive(Debug)]
struct MemLink {
    queue: mpsc::Sender<(Instant, SocketAddr, Vec<u8>)>,
    task: AbortHandle,
}

impl MemTransport {
    /// The network it is on.
    pub fn network(&self) -> &MemNetwork {
        &self.net
    }

    fn link(&self, to: &str) -> mpsc::Sender<(Instant, SocketAddr, Vec<u8>)> {
        let mut links = lock(&self.links);
        if let Some(link) = links.get(to).filter(|l| !l.task.is_finished()) {
            return link.queue.clone();
        }
        let (queue, mut rx) =
            mpsc::channel::<(Instant, SocketAddr, Vec<u8>)>(self.config.queue.max(1));
        let (net, from, to_id) = (self.net.clone(), self.id.clone(), to.to_owned());
        let stats = Arc::clone(&self.stats);
        // In order, each message at its time: a link's latency delays, it does not serialise.
        let task = tokio::spawn(async move {
            while let Some((at, addr, msg)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                if net.deliver(&from, &to_id, addr, msg) {
                    add(&stats.sent, 1);
                } else {
                    add(&stats.dropped_unreachable, 1);
                }
            }
        });
        links.insert(
            to.to_owned(),
            MemLink {
                queue: queue.clone(),
                task: task.abort_handle(),
            },
        );
        queue
    }
}

impl Transport for MemTransport {
    fn node_id(&self) -> &str {
        &self.id
    }

    async fn send(&self, to: &str, addr: SocketAddr, msg: Vec<u8>) -> Result<(), TransportError> {
        if self.inbox.is_closed() {
            return Err(TransportError::Closed);
        }
        if msg.len() > MAX_MESSAGE {
            return Err(TransportError::TooLarge(msg.len()));
        }
        let at = Instant::now() + self.net.latency(&self.id, to);
        self.link(to).try_send((at, addr, msg)).map_err(|_| {
            add(&self.stats.dropped_full, 1);
            TransportError::Full(to.to_owned())
        })
    }

    async fn recv(&self) -> Option<Received> {
        self.inbox.recv().await
    }

    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn stats(&self) -> TransportStats {
        self.stats.snapshot()
    }

    fn close(&self) {
        self.inbox.close();
        for (_, link) in lock(&self.links).drain() {
            link.task.abort();
        }
        self.net.hub().nodes.remove(&self.addr);
    }
}

impl Drop for MemTransport {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
