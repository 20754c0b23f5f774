//! The mesh driver: the thin async and threaded shell around `bolt_fabric`'s sans-IO
//! replicator. One thread owns the [`Replicator`] and the log's remote side (it blocks on the
//! log, never on the network); tokio tasks move frames: an accept loop (members' frames in,
//! join requests to [`super::cluster`]), and one link per peer that dials, sends and reconnects
//! with jittered backoff. Every queue is bounded: a frame that finds its queue full is dropped
//! and counted, and anti-entropy brings its events again.
//!
//! Peers are the nodes the state knows with a mesh address (their `node.started` carries it),
//! so a node learns of every member from the events themselves. This layer imports only `wire`
//! and `node`; it never names a service.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bolt_events::{Envelope, Hlc, Log, LogError, NodeId, RemoteError, VersionVector};
use bolt_fabric::frame::Message;
use bolt_fabric::membership::{self as swim, Member, MemberState, Membership, MembershipConfig};
use bolt_fabric::quic::{Incoming, Mesh, Peer, QuicError};
use bolt_fabric::replicate::{
    Outgoing, ReplicationConfig, ReplicationStats, Replicator, Store, StoreError,
};

use super::{lock, Node};

/// Counter of replicated events, by what happened to them (`received`, `stored`,
/// `duplicate`, `relayed`, `pushed`).
pub const METRIC_MESH_EVENTS: &str = "bolt_mesh_events_total";
/// Counter of refused events and frames, by reason.
pub const METRIC_MESH_REFUSED: &str = "bolt_mesh_refused_total";
/// Counter of frame bytes, by direction.
pub const METRIC_MESH_BYTES: &str = "bolt_mesh_bytes_total";
/// Gauge of peers with a live connection.
pub const METRIC_MESH_PEERS: &str = "bolt_mesh_peers";
/// Counter of frames dropped because a queue was full, by queue.
pub const METRIC_MESH_DROPPED: &str = "bolt_mesh_dropped_total";
/// Gauge of events heard of but not held, by origin.
pub const METRIC_MESH_LAG: &str = "bolt_mesh_lag_events";
/// Gauge of the endpoint's handshakes so far, by outcome (accepted, refused, ignored).
pub const METRIC_MESH_HANDSHAKES: &str = "bolt_mesh_handshakes";
/// Counter of membership changes (a peer connected or lost).
pub const METRIC_MESH_MEMBERSHIP: &str = "bolt_mesh_membership_changes_total";

/// Frames waiting for the replicator thread.
const INBOUND_QUEUE: usize = 1024;
/// Frames waiting for one peer's link.
const LINK_QUEUE: usize = 256;
/// How often the lag per origin is published to metrics and `bolt node ls`.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// How often the state hash is taken for the divergence alarm.
const STATE_HASH_EVERY: Duration = Duration::from_secs(5);
/// Counter of divergence alarms: a peer with exactly our events and another state hash.
pub const METRIC_MESH_DIVERGENCES: &str = "bolt_mesh_divergences_total";
/// How often the peer list is read from the state.
const PEERS_EVERY: Duration = Duration::from_secs(1);

/// The log as the replicator's store: runs go through `append_remote` (sequence, chain,
/// signature), nothing else writes other origins' events. The second field is the revoked
/// nodes and when (kept by the replicator thread from the state at each commit).
struct LogStore<'a>(&'a Log, &'a BTreeMap<NodeId, Hlc>);

fn remote_reason(e: &RemoteError) -> &'static str {
    match e {
        RemoteError::OwnOrigin { .. } => "own origin",
        RemoteError::Gap { .. } => "gap",
        RemoteError::Fork { .. } => "out of chain",
        RemoteError::Conflict { .. } => "conflicting copy",
        RemoteError::Signature(_) => "bad signature",
        RemoteError::Codec(_) => "malformed",
        RemoteError::UnsignedTail { .. } => "unsigned tail",
        #[allow(unreachable_patterns)]
        _ => "refused",
    }
}

impl Store for LogStore<'_> {
    fn version_vector(&self) -> Result<VersionVector, StoreError> {
        self.0
            .version_vector()
            .map_err(|e| StoreError::Failed(e.to_string()))
    }

    fn read_origin(
        &self,
        origin: NodeId,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        // Ends at a signed event: the receiver can authenticate what it gets.
        self.0
            .read_origin_signed(origin, from_seq, max.max(1))
            .map_err(|e| StoreError::Failed(e.to_string()))
    }

    fn append_run(&mut self, run: Vec<Envelope>) -> Result<(), StoreError> {
        // A revoked node's events after its revocation are refused, never stored.
        if let Some(first) = run.first() {
            let origin = first.origin;
            if let Some(at) = self.1.get(&origin) {
                if run.iter().any(|e| e.hlc > *at) {
                    return Err(StoreError::Refused {
                        reason: "revoked origin",
                        detail: format!("node {} was revoked", origin.short()),
                    });
                }
            }
        }
        match self.0.append_remote(run) {
            Ok(_) => Ok(()),
            Err(LogError::Remote(e)) => Err(StoreError::Refused {
                reason: remote_reason(&e),
                detail: e.to_string(),
            }),
            Err(e) => Err(StoreError::Failed(e.to_string())),
        }
    }
}

/// What the replicator thread is told.
enum Input {
    Frame(NodeId, Message),
    Datagram(NodeId, Vec<u8>),
    Committed,
    Stop,
}

/// What a link sends: a replication frame (a stream) or a membership packet (a datagram).
enum LinkMsg {
    Frame(Vec<u8>),
    Datagram(Vec<u8>),
}

/// How a peer looks from here, for `bolt node ls`.
#[derive(Debug, Clone, Default)]
pub struct PeerStatus {
    pub addr: Option<SocketAddr>,
    pub connected: bool,
    pub last_heard: Option<Instant>,
}

/// What the mesh shares with the API.
#[derive(Debug, Default)]
pub struct MeshStatus {
    pub peers: BTreeMap<NodeId, PeerStatus>,
    pub lag: BTreeMap<NodeId, u64>,
    pub stats: ReplicationStats,
    /// How SWIM sees each member (absent: not a SWIM member yet).
    pub swim: BTreeMap<NodeId, MemberState>,
}

struct Link {
    addr: SocketAddr,
    tx: tokio::sync::mpsc::Sender<LinkMsg>,
}

/// A running mesh.
pub struct MeshDriver {
    mesh: Arc<Mesh>,
    status: Arc<Mutex<MeshStatus>>,
    inbound: SyncSender<Input>,
}

impl std::fmt::Debug for MeshDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshDriver").finish_non_exhaustive()
    }
}

fn queue(inbound: &SyncSender<Input>, input: Input, what: &'static str) {
    if let Err(TrySendError::Full(_)) = inbound.try_send(input) {
        metrics::counter!(METRIC_MESH_DROPPED, "queue" => what).increment(1);
    }
}

impl MeshDriver {
    /// Starts replication over `mesh` for `node`: the replicator thread, the accept loop (join
    /// requests go to `on_join`) and the links. Needs a tokio runtime.
    pub fn start(
        node: Arc<Node>,
        mesh: Mesh,
        seeds: super::cluster::Seeds,
        on_join: Arc<dyn Fn(bolt_fabric::quic::JoinConn, Option<String>) + Send + Sync>,
    ) -> Arc<MeshDriver> {
        let mesh = Arc::new(mesh);
        let status = Arc::new(Mutex::new(MeshStatus::default()));
        let (inbound, rx) = mpsc::sync_channel(INBOUND_QUEUE);
        let driver = Arc::new(MeshDriver {
            mesh: Arc::clone(&mesh),
            status: Arc::clone(&status),
            inbound: inbound.clone(),
        });
        {
            let inbound = inbound.clone();
            node.log().on_commit(Box::new(move |_| {
                let _ = inbound.try_send(Input::Committed);
            }));
        }
        let rt = tokio::runtime::Handle::current();
        {
            let (node, mesh, status) = (Arc::clone(&node), Arc::clone(&mesh), Arc::clone(&status));
            let _ = std::thread::Builder::new()
                .name("bolt-replicator".into())
                .spawn(move || replicate(node, mesh, seeds, status, rx, rt));
        }
        tokio::spawn(accept_loop(
            Arc::clone(&node),
            Arc::clone(&mesh),
            inbound,
            status,
            on_join,
        ));
        driver
    }

    /// Uses a renewed certificate for the connections made from now on.
    pub fn set_identity(
        &self,
        identity: &bolt_fabric::identity::NodeIdentity,
        accept_joins: bool,
    ) -> Result<(), QuicError> {
        self.mesh.set_identity(identity, accept_joins)
    }

    /// The address the mesh listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.mesh.local_addr().ok()
    }

    /// A copy of what the mesh knows of its peers.
    pub fn status(&self) -> MeshStatus {
        let s = lock(&self.status);
        MeshStatus {
            peers: s.peers.clone(),
            lag: s.lag.clone(),
            stats: s.stats.clone(),
            swim: s.swim.clone(),
        }
    }

    /// Leaves SWIM (a last round of packets), then stops listening and closes every
    /// connection.
    pub fn close(&self) {
        if self.inbound.try_send(Input::Stop).is_err() {
            self.mesh.close();
        }
    }
}

async fn accept_loop(
    node: Arc<Node>,
    mesh: Arc<Mesh>,
    inbound: SyncSender<Input>,
    status: Arc<Mutex<MeshStatus>>,
    on_join: Arc<dyn Fn(bolt_fabric::quic::JoinConn, Option<String>) + Send + Sync>,
) {
    while let Some(incoming) = mesh.accept().await {
        match incoming {
            Ok(Incoming::Member(peer)) => {
                // A revoked node's certificate is still the CA's: the state refuses it.
                let id = peer.node_id().parse::<NodeId>();
                let node = Arc::clone(&node);
                let refused = match id {
                    Ok(id) => tokio::task::spawn_blocking(move || revoked(&node, id))
                        .await
                        .unwrap_or(true),
                    Err(_) => true,
                };
                if refused {
                    metrics::counter!(METRIC_MESH_REFUSED, "reason" => "revoked peer").increment(1);
                    peer.close();
                    continue;
                }
                tokio::spawn(receive(peer, inbound.clone(), Arc::clone(&status)));
            }
            Ok(Incoming::Join(conn)) => on_join(conn, None),
            Ok(Incoming::Renew(conn, id)) => on_join(conn, Some(id)),
            Err(e) => {
                let reason = match e {
                    QuicError::NoPeerId => "no certificate",
                    _ => "handshake",
                };
                metrics::counter!(METRIC_MESH_REFUSED, "reason" => reason).increment(1);
                tracing::debug!("mesh: refused a connection: {e}");
            }
        }
    }
}

async fn receive(peer: Peer, inbound: SyncSender<Input>, status: Arc<Mutex<MeshStatus>>) {
    let Ok(from) = peer.node_id().parse::<NodeId>() else {
        metrics::counter!(METRIC_MESH_REFUSED, "reason" => "bad node id").increment(1);
        peer.close();
        return;
    };
    {
        let (peer, inbound) = (peer.clone(), inbound.clone());
        tokio::spawn(async move {
            while let Ok(bytes) = peer.recv_datagram().await {
                metrics::counter!(METRIC_MESH_BYTES, "dir" => "received")
                    .increment(bytes.len() as u64);
                queue(&inbound, Input::Datagram(from, bytes), "inbound");
            }
        });
    }
    loop {
        match peer.recv().await {
            Ok(bytes) => {
                metrics::counter!(METRIC_MESH_BYTES, "dir" => "received")
                    .increment(bytes.len() as u64);
                lock(&status).peers.entry(from).or_default().last_heard = Some(Instant::now());
                match Message::from_bytes(&bytes) {
                    Ok(msg) => queue(&inbound, Input::Frame(from, msg), "inbound"),
                    Err(e) => {
                        metrics::counter!(METRIC_MESH_REFUSED, "reason" => "malformed frame")
                            .increment(1);
                        tracing::debug!("mesh: bad frame from {}: {e}", from.short());
                    }
                }
            }
            Err(QuicError::Read(quinn_err)) => {
                // An oversized or reset stream: refuse it, keep the connection.
                metrics::counter!(METRIC_MESH_REFUSED, "reason" => "oversized frame").increment(1);
                tracing::debug!("mesh: frame from {} refused: {quinn_err}", from.short());
            }
            Err(_) => break,
        }
    }
}

/// One peer's link: dials on the first frame, sends, redials with jittered backoff.
async fn link(
    mesh: Arc<Mesh>,
    to: NodeId,
    addr: SocketAddr,
    mut rx: tokio::sync::mpsc::Receiver<LinkMsg>,
    status: Arc<Mutex<MeshStatus>>,
) {
    let id = to.to_string();
    let mut peer: Option<Peer> = None;
    let mut backoff = Duration::from_millis(100);
    let mut retry_at = tokio::time::Instant::now();
    while let Some(frame) = rx.recv().await {
        if peer.is_none() {
            if tokio::time::Instant::now() < retry_at {
                metrics::counter!(METRIC_MESH_DROPPED, "queue" => "unreachable").increment(1);
                continue;
            }
            match tokio::time::timeout(Duration::from_secs(5), mesh.connect(addr, &id)).await {
                Ok(Ok(p)) => {
                    backoff = Duration::from_millis(100);
                    metrics::counter!(METRIC_MESH_MEMBERSHIP, "change" => "connected").increment(1);
                    lock(&status).peers.entry(to).or_default().connected = true;
                    peer = Some(p);
                }
                other => {
                    if let Ok(Err(e)) = other {
                        tracing::debug!("mesh: dial {} at {addr}: {e}", to.short());
                    }
                    let jitter = rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1);
                    retry_at =
                        tokio::time::Instant::now() + backoff + Duration::from_millis(jitter);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    metrics::counter!(METRIC_MESH_DROPPED, "queue" => "unreachable").increment(1);
                    continue;
                }
            }
        }
        if let Some(p) = &peer {
            let (len, sent) = match frame {
                LinkMsg::Frame(frame) => (frame.len(), p.send(&frame).await),
                LinkMsg::Datagram(bytes) => (bytes.len(), p.send_datagram(bytes)),
            };
            match sent {
                Ok(()) => {
                    metrics::counter!(METRIC_MESH_BYTES, "dir" => "sent").increment(len as u64);
                }
                Err(QuicError::Datagram(e)) if p.is_open() => {
                    // Too large or refused by the peer's buffer: a lost packet, SWIM copes.
                    metrics::counter!(METRIC_MESH_DROPPED, "queue" => "datagram").increment(1);
                    tracing::debug!("mesh: datagram to {}: {e}", to.short());
                }
                Err(_) => {
                    metrics::counter!(METRIC_MESH_MEMBERSHIP, "change" => "lost").increment(1);
                    lock(&status).peers.entry(to).or_default().connected = false;
                    peer = None;
                }
            }
        }
    }
}

/// SWIM over the links' datagrams, when the node has a mesh address.
struct Swim {
    membership: Membership,
    /// Members it announced itself to.
    joined: std::collections::BTreeSet<NodeId>,
    /// Revoked members it removed.
    removed: std::collections::BTreeSet<NodeId>,
}

impl Swim {
    fn new(node: &Node) -> Option<Swim> {
        let addr: SocketAddr = node.options().addr.as_deref()?.parse().ok()?;
        // A restart is a new identity (a higher bump) so the cluster takes it back at once.
        let bump = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        let me = Member::new(&node.node_id().to_string(), addr, bump).ok()?;
        let membership = Membership::new(
            me,
            MembershipConfig::default(),
            rand::random(),
            Instant::now(),
        )
        .ok()?;
        Some(Swim {
            membership,
            joined: Default::default(),
            removed: Default::default(),
        })
    }
}

/// Where the replicator thread sends: one link per peer, made on first use.
struct Links {
    links: BTreeMap<NodeId, Link>,
    /// The SWIM identity (bump) each member was last seen up with.
    bumps: BTreeMap<NodeId, u32>,
    mesh: Arc<Mesh>,
    status: Arc<Mutex<MeshStatus>>,
    rt: tokio::runtime::Handle,
}

impl Links {
    fn ensure(&mut self, id: NodeId, addr: SocketAddr) {
        if self.links.get(&id).is_some_and(|l| l.addr == addr) {
            return;
        }
        let (tx, lrx) = tokio::sync::mpsc::channel(LINK_QUEUE);
        self.rt.spawn(link(
            Arc::clone(&self.mesh),
            id,
            addr,
            lrx,
            Arc::clone(&self.status),
        ));
        self.links.insert(id, Link { addr, tx });
    }

    fn send(&self, to: NodeId, msg: LinkMsg) {
        let Some(l) = self.links.get(&to) else {
            return;
        };
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = l.tx.try_send(msg) {
            metrics::counter!(METRIC_MESH_DROPPED, "queue" => "link").increment(1);
        }
    }
}

/// Whether the state holds `id` revoked.
fn revoked(node: &Node, id: NodeId) -> bool {
    node.with_live_state(|s| bolt_state::is_revoked(s, id))
        .unwrap_or(false)
}

/// Carries SWIM's packets, notes its changes and records deaths and returns as events
/// (`cluster.member_down` / `cluster.member_up`, once per node and change).
fn swim_output(node: &Node, out: swim::Output, links: &mut Links, status: &Mutex<MeshStatus>) {
    for (member, bytes) in out.send {
        let Ok(id) = member.node_id.parse::<NodeId>() else {
            continue;
        };
        links.ensure(id, member.addr);
        links.send(id, LinkMsg::Datagram(bytes));
    }
    for change in out.changes {
        let (member, state, what) = match change {
            swim::Change::Up(m) => (m, MemberState::Alive, "up"),
            swim::Change::Suspect(m) => (m, MemberState::Suspect, "suspect"),
            swim::Change::Down(m) => (m, MemberState::Dead, "down"),
            swim::Change::Left(m) => (m, MemberState::Left, "left"),
        };
        metrics::counter!(METRIC_MESH_MEMBERSHIP, "change" => what).increment(1);
        tracing::info!("mesh: node {} is {what}", &member.node_id[..12]);
        if let Ok(id) = member.node_id.parse::<NodeId>() {
            // A member that died or came back as a new identity (a restart) is not on the other
            // end of our old connection any more: drop the link, the next send dials anew
            // (else frames go into the dead connection until its idle timeout).
            let restarted = state == MemberState::Alive
                && links
                    .bumps
                    .insert(id, member.bump)
                    .is_some_and(|old| old != member.bump);
            if restarted || state == MemberState::Dead {
                links.links.remove(&id);
            }
            lock(status).swim.insert(id, state);
            let cmd = match state {
                MemberState::Dead => Some(bolt_state::Command::RecordMemberDown { node: id }),
                MemberState::Alive => Some(bolt_state::Command::RecordMemberUp { node: id }),
                _ => None,
            };
            if let Some(cmd) = cmd {
                // Refused when the state already says so (another node recorded it first).
                let _ = node.decide_append(|s| {
                    bolt_state::decide(s, cmd).map_err(super::NodeError::Decide)
                });
            }
        }
    }
}

/// The replicator thread.
fn replicate(
    node: Arc<Node>,
    mesh: Arc<Mesh>,
    seeds: super::cluster::Seeds,
    status: Arc<Mutex<MeshStatus>>,
    rx: Receiver<Input>,
    rt: tokio::runtime::Handle,
) {
    let log = node.log();
    let me = node.node_id();
    let vv = log.version_vector().unwrap_or_default();
    let mut rep = Replicator::new(
        me,
        vv,
        ReplicationConfig::default(),
        rand::random(),
        Instant::now(),
    );
    let mut swim = Swim::new(&node);
    let mut revoked = revoked_of(&node);
    let mut links = Links {
        links: BTreeMap::new(),
        bumps: BTreeMap::new(),
        mesh: Arc::clone(&mesh),
        status: Arc::clone(&status),
        rt,
    };
    let mut next_peers = Instant::now();
    let mut next_hash = Instant::now();
    let mut next_publish = Instant::now();
    let mut last_stats = ReplicationStats::default();
    loop {
        let now = Instant::now();
        let mut wake = rep.next_deadline().min(next_peers);
        if let Some(t) = swim.as_ref().and_then(|s| s.membership.next_deadline()) {
            wake = wake.min(t);
        }
        let input = rx.recv_timeout(wake.saturating_duration_since(now));
        let now = Instant::now();
        let mut out = Vec::new();
        match input {
            Ok(Input::Frame(from, msg)) => {
                if revoked.contains_key(&from) {
                    metrics::counter!(METRIC_MESH_REFUSED, "reason" => "revoked peer").increment(1);
                } else {
                    out.extend(rep.on_message(&mut LogStore(log, &revoked), from, msg, now));
                }
            }
            Ok(Input::Datagram(from, bytes)) => {
                if let Some(s) = swim.as_mut().filter(|_| !revoked.contains_key(&from)) {
                    match s.membership.on_packet(&from.to_string(), &bytes, now) {
                        Ok(o) => swim_output(&node, o, &mut links, &status),
                        Err(e) => {
                            metrics::counter!(METRIC_MESH_REFUSED, "reason" => "membership packet")
                                .increment(1);
                            tracing::debug!("mesh: packet from {}: {e}", from.short());
                        }
                    }
                }
            }
            Ok(Input::Committed) => {
                // Only this node's events past what the replicator holds of them (read by the
                // origin index: the remote events it just stored are not read back).
                let tip = rep.version_vector().get(&me).copied().unwrap_or(0);
                if let Ok(own) = log.read_origin(me, tip + 1..=u64::MAX) {
                    out.extend(rep.on_local(&own));
                }
                // A revocation arrives as a commit.
                revoked = revoked_of(&node);
            }
            Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Some(s) = swim.as_mut() {
            let o = s.membership.on_tick(now);
            swim_output(&node, o, &mut links, &status);
        }
        if now >= next_peers {
            next_peers = now + PEERS_EVERY;
            let mut peers = lock(&seeds).clone();
            // What the state says wins over a seed.
            peers.extend(peers_of(&node));
            if let Some(s) = swim.as_ref() {
                for m in s.membership.members() {
                    if let Ok(id) = m.node_id.parse::<NodeId>() {
                        peers.entry(id).or_insert(m.addr);
                    }
                }
            }
            peers.remove(&me);
            for id in revoked.keys() {
                peers.remove(id);
                links.links.remove(id);
                if let Some(sw) = swim.as_mut() {
                    if sw.removed.insert(*id) {
                        if let Ok(o) = sw.membership.remove(&id.to_string(), now) {
                            swim_output(&node, o, &mut links, &status);
                        }
                    }
                }
            }
            // Replication pushes skip members SWIM holds dead or gone; anti-entropy still
            // reaches them through whoever they talk to when they come back.
            let gone: std::collections::BTreeSet<NodeId> = lock(&status)
                .swim
                .iter()
                .filter(|(_, st)| matches!(st, MemberState::Dead | MemberState::Left))
                .map(|(id, _)| *id)
                .collect();
            rep.set_peers(peers.keys().copied().filter(|id| !gone.contains(id)));
            let mut s = lock(&status);
            s.peers.retain(|id, _| peers.contains_key(id));
            for (id, addr) in &peers {
                s.peers.entry(*id).or_default().addr = Some(*addr);
            }
            metrics::gauge!(METRIC_MESH_PEERS)
                .set(s.peers.values().filter(|p| p.connected).count() as f64);
            drop(s);
            let (accepted, refused, ignored) = mesh.handshakes();
            for (outcome, n) in [
                ("accepted", accepted),
                ("refused", refused),
                ("ignored", ignored),
            ] {
                metrics::gauge!(METRIC_MESH_HANDSHAKES, "outcome" => outcome).set(n as f64);
            }
            for (id, addr) in &peers {
                links.ensure(*id, *addr);
            }
            if let Some(sw) = swim.as_mut() {
                for (id, addr) in &peers {
                    if sw.joined.insert(*id) {
                        let member = Member::new(&id.to_string(), *addr, 0);
                        if let Ok(Ok(o)) = member.map(|m| sw.membership.join(m, now)) {
                            swim_output(&node, o, &mut links, &status);
                        }
                    }
                }
            }
        }
        if now >= next_hash {
            // The state hash with exactly the events of a version vector (read around it, kept
            // only when nothing landed meanwhile): digests carry it, a peer with the same events
            // and another hash raises the divergence alarm.
            next_hash = now + STATE_HASH_EVERY;
            if let Ok(before) = log.version_vector() {
                if let Ok(h) = node.state_hash(None) {
                    if log.version_vector().is_ok_and(|after| after == before) {
                        rep.set_state_hash(before, h.hash.0);
                    }
                }
            }
        }
        out.extend(rep.on_tick(now));
        for Outgoing { to, msg } in out {
            links.send(to, LinkMsg::Frame(msg.to_bytes()));
        }
        publish_counters(&rep, &mut last_stats);
        if now >= next_publish {
            next_publish = now + PUBLISH_EVERY;
            publish_status(&rep, &status);
        }
    }
    if let Some(s) = swim.as_mut() {
        if let Ok(o) = s.membership.leave(Instant::now()) {
            swim_output(&node, o, &mut links, &status);
            // Let the links carry the leave before the endpoint goes.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    mesh.close();
}

/// The revoked nodes and when, from the state.
fn revoked_of(node: &Node) -> BTreeMap<NodeId, Hlc> {
    node.with_live_state(|s| s.revoked.iter().map(|(id, r)| (*id, r.at)).collect())
        .unwrap_or_default()
}

/// Every other node the state knows with a mesh address it can be dialed at.
fn peers_of(node: &Node) -> BTreeMap<NodeId, SocketAddr> {
    let me = node.node_id();
    node.with_live_state(|s| {
        s.nodes
            .iter()
            .filter(|(id, _)| **id != me)
            .filter_map(|(id, n)| Some((*id, n.addr.as_deref()?.parse().ok()?)))
            .collect()
    })
    .unwrap_or_default()
}

/// Adds what the counters moved since `last` to the metrics (cheap when nothing moved: every
/// turn of the loop).
fn publish_counters(rep: &Replicator, last: &mut ReplicationStats) {
    let s = rep.stats();
    if s == last {
        return;
    }
    let delta = |now: u64, before: u64| now.saturating_sub(before);
    for (what, now, before) in [
        ("received", s.received, last.received),
        ("stored", s.stored, last.stored),
        ("duplicate", s.duplicates, last.duplicates),
        ("relayed", s.relayed, last.relayed),
        ("pushed", s.pushed, last.pushed),
    ] {
        let d = delta(now, before);
        if d > 0 {
            metrics::counter!(METRIC_MESH_EVENTS, "what" => what).increment(d);
        }
    }
    for (queue, now, before) in [
        ("digest rate", s.digests_limited, last.digests_limited),
        ("push rate", s.pushes_limited, last.pushes_limited),
        ("reorder buffer", s.dropped_pending, last.dropped_pending),
    ] {
        let d = delta(now, before);
        if d > 0 {
            metrics::counter!(METRIC_MESH_DROPPED, "queue" => queue).increment(d);
        }
    }
    let d = delta(s.divergences, last.divergences);
    if d > 0 {
        metrics::counter!(METRIC_MESH_DIVERGENCES).increment(d);
        tracing::error!(
            "mesh: node {} holds exactly our events but folds them to another state hash",
            s.diverged_from.map(|n| n.short()).unwrap_or_default()
        );
    }
    for (reason, n) in &s.refused {
        let d = delta(*n, last.refused.get(reason).copied().unwrap_or(0));
        if d > 0 {
            metrics::counter!(METRIC_MESH_REFUSED, "reason" => *reason).increment(d);
        }
    }
    *last = s.clone();
}

/// The lag per origin (metrics and `bolt node ls`) and the counters for the API: a map per
/// origin, so every [`PUBLISH_EVERY`], not every turn.
fn publish_status(rep: &Replicator, status: &Mutex<MeshStatus>) {
    let lag = rep.lag();
    for (origin, l) in &lag {
        metrics::gauge!(METRIC_MESH_LAG, "origin" => origin.short()).set(*l as f64);
    }
    let mut st = lock(status);
    st.lag = lag;
    st.stats = rep.stats().clone();
}
