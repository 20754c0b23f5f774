//! This node's cluster membership: the identity files under `ROOT/cluster` (the CA on the node
//! that made the cluster, the node's certificate and TLS key, keys 0600), `bolt cluster init`,
//! join tokens, serving joins, joining at start (`bolt agent --join`), and the mesh it runs.
//!
//! This layer imports only `wire` and `node`; it never names a service.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bolt_events::{NodeId, NodeKey};
use bolt_fabric::identity::{node_request, ClusterCa, IdentityError, NodeIdentity};
use bolt_fabric::join::{proof_digest, JoinError, JoinRequest, JoinResponse, Token, TokenBook};
use bolt_fabric::membership::MemberState;
use bolt_fabric::quic::{JoinConn, Mesh, QuicError};
use bolt_state::{decide, Command};
use time::OffsetDateTime;

use super::files::replace_new;
use super::mesh::MeshDriver;
use super::{lock, Node};
use crate::wire::cluster::{ClusterView, NodeView};

/// How long node certificates are valid unless `bolt agent --cert-ttl` says otherwise.
pub const CERT_TTL: time::Duration = time::Duration::days(365);
/// Counter of certificate renewals of this node.
pub const METRIC_RENEWALS: &str = "bolt_cluster_cert_renewals_total";
/// How long the cluster CA is valid.
const CA_TTL: time::Duration = time::Duration::days(3650);
/// Longest join token lifetime.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Counter of join requests, by outcome.
pub const METRIC_JOINS: &str = "bolt_cluster_joins_total";

/// One step of cluster membership that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("this node is already a cluster member")]
    AlreadyMember,
    #[error(
        "this node is not a cluster member (run bolt cluster init, or start the agent with --join)"
    )]
    NotMember,
    #[error("this node does not hold the cluster CA: ask the node that ran bolt cluster init")]
    NoCa,
    #[error("the agent has no mesh address: start it with --listen IP:PORT")]
    NoListen,
    #[error("token lifetime must be between 1 s and 7 days")]
    BadTtl,
    #[error("cluster identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mesh: {0}")]
    Quic(#[from] QuicError),
    #[error("join refused by {addr}: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    #[error("bad join token: {0}")]
    Token(bolt_fabric::join::JoinError),
    #[error(transparent)]
    Node(#[from] super::NodeError),
    #[error("no node {0} in the cluster")]
    UnknownNode(String),
    #[error("{0:?} names more than one node: use more of its id")]
    Ambiguous(String),
    #[error("the node holding the cluster CA cannot leave (it would take the CA with it)")]
    CaHolderLeaves,
}

fn decided(e: bolt_state::DecideError) -> ClusterError {
    ClusterError::Node(super::NodeError::Decide(e))
}

struct Files {
    dir: PathBuf,
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Result<Option<String>, ClusterError> {
        let path = self.path(name);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ClusterError::Io {
                what: "read",
                path,
                source,
            }),
        }
    }

    /// Writes a file whole (0600, durable, no links followed: [`replace_new`]).
    fn write(&self, name: &str, contents: &str) -> Result<(), ClusterError> {
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&self.dir)
            .map_err(|source| ClusterError::Io {
                what: "create",
                path: self.dir.clone(),
                source,
            })?;
        let path = self.path(name);
        replace_new(&path, contents.as_bytes(), 0o600, true).map_err(|source| ClusterError::Io {
            what: "write",
            path,
            source,
        })
    }
}

/// Peers known before the state names them: the member a node joined through, the nodes a
/// member admitted. `cluster/seeds`, one `ID ADDR` per line.
pub type Seeds = Arc<Mutex<BTreeMap<NodeId, SocketAddr>>>;

fn parse_seeds(text: &str) -> BTreeMap<NodeId, SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let (id, addr) = l.split_once(' ')?;
            Some((id.parse().ok()?, addr.trim().parse().ok()?))
        })
        .collect()
}

struct Inner {
    ca: Option<ClusterCa>,
    identity: Option<NodeIdentity>,
    tokens: TokenBook,
    mesh: Option<Arc<MeshDriver>>,
}

/// This node's membership and mesh.
pub struct Cluster {
    node: Arc<Node>,
    files: Files,
    listen: Option<SocketAddr>,
    seeds: Seeds,
    /// Lifetime of the certificates this node issues (when it holds the CA).
    cert_ttl: time::Duration,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// Joins the cluster of the member at `addr` before the agent starts, unless `root` already
/// holds a certificate: a fresh TLS key and request, proved by the node's event key.
pub async fn join_at_start(
    root: &Path,
    key: &NodeKey,
    name: &str,
    advertise: &str,
    addr: SocketAddr,
    token: &str,
) -> Result<bool, ClusterError> {
    let files = Files {
        dir: root.join("cluster"),
    };
    if files.read("node.pem")?.is_some() {
        return Ok(false);
    }
    let token: Token = token.parse().map_err(ClusterError::Token)?;
    let node_id = key.id().to_string();
    let req = node_request(&node_id)?;
    let proof = key.sign_digest(&proof_digest(&token.secret, &node_id, &req.csr_pem));
    let request = JoinRequest {
        secret: token.secret,
        node_id,
        name: name.to_owned(),
        addr: advertise.to_owned(),
        csr_pem: req.csr_pem,
        proof: proof.to_vec(),
    };
    match Mesh::request_join(addr, &token, &request).await? {
        JoinResponse::Accepted {
            ca_pem,
            cert_pem,
            member_id,
        } => {
            NodeIdentity::from_pem(&ca_pem, &cert_pem, &req.key_pem)?;
            files.write("ca.pem", &ca_pem)?;
            files.write("node.key", &req.key_pem)?;
            files.write("seeds", &format!("{member_id} {addr}\n"))?;
            files.write("node.pem", &cert_pem)?;
            Ok(true)
        }
        JoinResponse::Refused { reason } => Err(ClusterError::Refused { addr, reason }),
    }
}

impl Cluster {
    /// Reads the identity files under `root/cluster` (none yet: not a member). Blocking.
    pub fn open(
        node: Arc<Node>,
        root: &Path,
        listen: Option<SocketAddr>,
        cert_ttl: time::Duration,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let files = Files {
            dir: root.join("cluster"),
        };
        let ca = match (files.read("ca.pem")?, files.read("ca.key")?) {
            (Some(cert), Some(key)) => Some(ClusterCa::from_pem(&cert, &key)?),
            _ => None,
        };
        let identity = match (
            files.read("ca.pem")?,
            files.read("node.pem")?,
            files.read("node.key")?,
        ) {
            (Some(ca), Some(cert), Some(key)) => Some(NodeIdentity::from_pem(&ca, &cert, &key)?),
            _ => None,
        };
        let seeds = Arc::new(Mutex::new(parse_seeds(
            &files.read("seeds")?.unwrap_or_default(),
        )));
        Ok(Arc::new(Cluster {
            node,
            files,
            listen,
            seeds,
            cert_ttl,
            inner: Mutex::new(Inner {
                ca,
                identity,
                tokens: TokenBook::default(),
                mesh: None,
            }),
        }))
    }

    /// Starts the mesh if this node is a member and has a listen address. Needs a tokio
    /// runtime.
    pub fn start(self: &Arc<Self>) -> Result<(), ClusterError> {
        let Some(listen) = self.listen else {
            return Ok(());
        };
        let mut inner = lock(&self.inner);
        let Some(identity) = inner.identity.clone() else {
            return Ok(());
        };
        if inner.mesh.is_some() {
            return Ok(());
        }
        let mesh = Mesh::bind(listen, &identity, inner.ca.is_some())?;
        let me = Arc::downgrade(self);
        let on_join = Arc::new(move |conn: JoinConn, renew: Option<String>| {
            if let Some(c) = me.upgrade() {
                tokio::spawn(async move { c.serve_join(conn, renew).await });
            }
        });
        inner.mesh = Some(MeshDriver::start(
            Arc::clone(&self.node),
            mesh,
            Arc::clone(&self.seeds),
            on_join,
        ));
        tracing::info!("mesh listening on {listen}");
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(c) = me.upgrade() else { return };
                let wait = c.renewal_check();
                drop(c);
                tokio::time::sleep(wait).await;
                let Some(c) = me.upgrade() else { return };
                if c.renewal_due() {
                    if let Err(e) = c.renew().await {
                        tracing::warn!("renew the node certificate: {e}");
                    }
                }
            }
        });
        Ok(())
    }

    /// How long until the next look at the certificate: a tenth of its lifetime, at most an
    /// hour, at least a second.
    fn renewal_check(&self) -> Duration {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let (life, left) = lock(&self.inner)
            .identity
            .as_ref()
            .and_then(|i| Some((i.not_after()? - i.not_before()?, i.not_after()? - now)))
            .unwrap_or((36_000, 36_000));
        let secs = (life / 10).min(left / 4).clamp(1, 3600);
        Duration::from_secs(secs as u64)
    }

    /// Whether less than a third of the certificate's lifetime is left.
    fn renewal_due(&self) -> bool {
        let inner = lock(&self.inner);
        let Some(id) = inner.identity.as_ref() else {
            return false;
        };
        let (Some(start), Some(end)) = (id.not_before(), id.not_after()) else {
            return false;
        };
        let now = OffsetDateTime::now_utc().unix_timestamp();
        end - now < (end - start) / 3
    }

    /// Gets a new certificate (and TLS key) from the CA: itself when it holds it, else the node
    /// that made the cluster, over a connection its current certificate authenticates. The
    /// mesh uses it for new connections at once.
    pub async fn renew(self: &Arc<Self>) -> Result<(), ClusterError> {
        let node_id = self.node.node_id().to_string();
        let req = node_request(&node_id)?;
        let (identity, local) = {
            let inner = lock(&self.inner);
            let identity = inner.identity.clone().ok_or(ClusterError::NotMember)?;
            let local = inner.ca.as_ref().map(|ca| {
                ca.issue(
                    &req.csr_pem,
                    &node_id,
                    OffsetDateTime::now_utc(),
                    self.cert_ttl,
                )
                .map(|cert| (ca.cert_pem().to_owned(), cert))
            });
            (identity, local)
        };
        let (ca_pem, cert_pem) = match local {
            Some(issued) => issued?,
            None => {
                let node = Arc::clone(&self.node);
                let holder = tokio::task::spawn_blocking(move || {
                    node.with_live_state(|s| {
                        let by = s.cluster.as_ref()?.created_by;
                        s.nodes
                            .get(&by)?
                            .addr
                            .as_deref()?
                            .parse::<SocketAddr>()
                            .ok()
                    })
                })
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .ok_or(ClusterError::NoCa)?;
                let proof = self.proof(&node_id, &req.csr_pem)?;
                let request = JoinRequest {
                    secret: [0; 32],
                    node_id: node_id.clone(),
                    name: self.node.options().name.clone(),
                    addr: self.node.options().addr.clone().unwrap_or_default(),
                    csr_pem: req.csr_pem.clone(),
                    proof,
                };
                match Mesh::request_renewal(holder, &identity, &request).await? {
                    JoinResponse::Accepted {
                        ca_pem, cert_pem, ..
                    } => (ca_pem, cert_pem),
                    JoinResponse::Refused { reason } => {
                        return Err(ClusterError::Refused {
                            addr: holder,
                            reason,
                        })
                    }
                }
            }
        };
        let renewed = NodeIdentity::from_pem(&ca_pem, &cert_pem, &req.key_pem)?;
        if renewed.node_id().as_deref() != Some(node_id.as_str()) {
            return Err(ClusterError::Refused {
                addr: self.listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                reason: "the renewed certificate names another node".into(),
            });
        }
        self.files.write("node.key", &req.key_pem)?;
        self.files.write("node.pem", &cert_pem)?;
        let mut inner = lock(&self.inner);
        if let Some(m) = inner.mesh.as_ref() {
            m.set_identity(&renewed, inner.ca.is_some())?;
        }
        inner.identity = Some(renewed);
        metrics::counter!(METRIC_RENEWALS).increment(1);
        tracing::info!("renewed the node certificate");
        Ok(())
    }

    /// The renewal proof: the node's event key over the request (no token: the secret is zero).
    fn proof(&self, node_id: &str, csr_pem: &str) -> Result<Vec<u8>, ClusterError> {
        // The key file beside the cluster directory (the log keeps its own copy).
        let root = self.files.dir.parent().unwrap_or(Path::new("/"));
        let key =
            NodeKey::load_or_create(&root.join("node.key")).map_err(|e| ClusterError::Io {
                what: "read the node key",
                path: root.join("node.key"),
                source: std::io::Error::other(e.to_string()),
            })?;
        Ok(key
            .sign_digest(&proof_digest(&[0; 32], node_id, csr_pem))
            .to_vec())
    }

    /// `bolt cluster init`: a new cluster CA, this node's certificate, and the mesh.
    pub fn init(self: &Arc<Self>, name: &str) -> Result<ClusterView, ClusterError> {
        if self.listen.is_none() {
            return Err(ClusterError::NoListen);
        }
        {
            let mut inner = lock(&self.inner);
            if inner.identity.is_some() {
                return Err(ClusterError::AlreadyMember);
            }
            let now = OffsetDateTime::now_utc();
            let ca = ClusterCa::generate(name, now, CA_TTL)?;
            let node_id = self.node.node_id().to_string();
            let req = node_request(&node_id)?;
            let cert = ca.issue(&req.csr_pem, &node_id, now, self.cert_ttl)?;
            let identity = NodeIdentity::from_pem(ca.cert_pem(), &cert, &req.key_pem)?;
            self.files.write("ca.key", &ca.key_pem())?;
            self.files.write("ca.pem", ca.cert_pem())?;
            self.files.write("node.key", &req.key_pem)?;
            self.files.write("node.pem", &cert)?;
            let cmd = Command::CreateCluster {
                name: name.to_owned(),
                ca_fingerprint: ca.fingerprint(),
            };
            inner.ca = Some(ca);
            inner.identity = Some(identity);
            self.node
                .decide_append(|s| decide(s, cmd).map_err(decided))?;
        }
        self.start()?;
        Ok(self.view())
    }

    /// `bolt cluster token`: a one-time join token valid for `ttl`.
    pub fn token(&self, ttl: Duration) -> Result<String, ClusterError> {
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(ClusterError::BadTtl);
        }
        let mut inner = lock(&self.inner);
        let fingerprint = inner.ca.as_ref().ok_or(ClusterError::NoCa)?.fingerprint();
        if inner.mesh.is_none() {
            return Err(ClusterError::NoListen);
        }
        Ok(inner
            .tokens
            .issue(&fingerprint, SystemTime::now(), ttl)
            .to_string())
    }

    async fn serve_join(self: Arc<Self>, conn: JoinConn, renew: Option<String>) {
        let from = conn.remote_addr();
        let this = Arc::clone(&self);
        let revoked = match renew.as_deref().map(str::parse::<NodeId>) {
            Some(Ok(id)) => {
                let node = Arc::clone(&self.node);
                tokio::task::spawn_blocking(move || {
                    node.with_live_state(|s| bolt_state::is_revoked(s, id))
                        .unwrap_or(true)
                })
                .await
                .unwrap_or(true)
            }
            Some(Err(_)) => true,
            None => false,
        };
        let admitted: Arc<Mutex<Option<Command>>> = Arc::default();
        let admit = Arc::clone(&admitted);
        let served = conn
            .serve(move |req| {
                let outcome = req.and_then(|req| {
                    match &renew {
                        // A renewal: the requester is the member its certificate names.
                        Some(id) if revoked || *id != req.node_id => {
                            return Err(JoinError::Proof);
                        }
                        Some(_) => {}
                        None => lock(&this.inner)
                            .tokens
                            .redeem(&req.secret, SystemTime::now())?,
                    }
                    req.check_proof()?;
                    Ok(req)
                });
                let req = match outcome {
                    Ok(req) => req,
                    Err(e) => {
                        metrics::counter!(METRIC_JOINS, "outcome" => e.reason()).increment(1);
                        tracing::warn!("join from {from} refused: {e}");
                        return JoinResponse::Refused {
                            reason: e.to_string(),
                        };
                    }
                };
                let inner = lock(&this.inner);
                let Some(ca) = inner.ca.as_ref() else {
                    return JoinResponse::Refused {
                        reason: "this node does not hold the CA".into(),
                    };
                };
                let now = OffsetDateTime::now_utc();
                match ca.issue(&req.csr_pem, &req.node_id, now, this.cert_ttl) {
                    Ok(cert_pem) if renew.is_some() => {
                        metrics::counter!(METRIC_JOINS, "outcome" => "renewed").increment(1);
                        JoinResponse::Accepted {
                            ca_pem: ca.cert_pem().to_owned(),
                            cert_pem,
                            member_id: this.node.node_id().to_string(),
                        }
                    }
                    Ok(cert_pem) => {
                        if let Ok(node) = req.node_id.parse() {
                            *lock(&admit) = Some(Command::AdmitNode {
                                node,
                                name: req.name.clone(),
                                addr: req.addr.clone(),
                            });
                        }
                        if let (Ok(id), Ok(addr)) = (req.node_id.parse(), req.addr.parse()) {
                            let mut seeds = lock(&this.seeds);
                            seeds.insert(id, addr);
                            let text: String =
                                seeds.iter().map(|(i, a)| format!("{i} {a}\n")).collect();
                            if let Err(e) = this.files.write("seeds", &text) {
                                tracing::warn!("record the new node's address: {e}");
                            }
                        }
                        metrics::counter!(METRIC_JOINS, "outcome" => "accepted").increment(1);
                        tracing::info!("node {} ({}) joined from {from}", req.name, req.node_id);
                        JoinResponse::Accepted {
                            ca_pem: ca.cert_pem().to_owned(),
                            cert_pem,
                            member_id: this.node.node_id().to_string(),
                        }
                    }
                    Err(e) => JoinResponse::Refused {
                        reason: e.to_string(),
                    },
                }
            })
            .await;
        if let Err(e) = served {
            tracing::debug!("join from {from}: {e}");
        }
        let cmd = lock(&admitted).take();
        if let Some(cmd) = cmd {
            let node = Arc::clone(&self.node);
            let recorded = tokio::task::spawn_blocking(move || {
                node.decide_append(|s| decide(s, cmd).map_err(decided))
            })
            .await;
            if let Ok(Err(e)) = recorded {
                tracing::warn!("record the admission: {e}");
            }
        }
    }

    /// `bolt node rm`: revokes a node (by name or id prefix) as a `cluster.revoked` event: every
    /// node then refuses its connections and its events after the revocation. Only a node that
    /// holds the CA revokes. Blocking.
    pub fn revoke(&self, key: &str, reason: &str) -> Result<String, ClusterError> {
        if lock(&self.inner).ca.is_none() {
            return Err(ClusterError::NoCa);
        }
        let me = self.node.node_id();
        let node = self.find(key)?;
        let cmd = Command::RevokeNode {
            node,
            by: me,
            reason: reason.to_owned(),
        };
        self.node
            .decide_append(|s| decide(s, cmd).map_err(decided))?;
        tracing::warn!("revoked node {node}");
        Ok(node.to_string())
    }

    /// `bolt cluster leave`: records `cluster.left`, leaves SWIM, closes the mesh and forgets
    /// the certificate (the node is a single node again). Blocking.
    pub fn leave(&self) -> Result<(), ClusterError> {
        if lock(&self.inner).identity.is_none() {
            return Err(ClusterError::NotMember);
        }
        if lock(&self.inner).ca.is_some() {
            return Err(ClusterError::CaHolderLeaves);
        }
        let me = self.node.node_id();
        self.node
            .decide_append(|s| decide(s, Command::LeaveCluster { node: me }).map_err(decided))?;
        // Give the pushes a moment to carry the event before the mesh goes.
        std::thread::sleep(Duration::from_secs(1));
        self.close();
        for f in ["node.pem", "node.key", "ca.pem", "seeds"] {
            let _ = fs::remove_file(self.files.path(f));
        }
        lock(&self.inner).identity = None;
        Ok(())
    }

    /// The node a name or an id prefix names.
    fn find(&self, key: &str) -> Result<NodeId, ClusterError> {
        let found: Vec<NodeId> = self.node.with_live_state(|s| {
            s.nodes
                .iter()
                .filter(|(id, n)| {
                    n.name == key || (key.len() >= 4 && id.to_string().starts_with(key))
                })
                .map(|(id, _)| *id)
                .collect()
        })?;
        match found[..] {
            [one] => Ok(one),
            [] => Err(ClusterError::UnknownNode(key.to_owned())),
            _ => Err(ClusterError::Ambiguous(key.to_owned())),
        }
    }

    /// This node's membership.
    pub fn view(&self) -> ClusterView {
        let inner = lock(&self.inner);
        ClusterView {
            member: inner.identity.is_some(),
            node_id: self.node.node_id().to_string(),
            ca_fingerprint: inner.identity.as_ref().map(NodeIdentity::ca_fingerprint),
            holds_ca: inner.ca.is_some(),
            listen: inner
                .mesh
                .as_ref()
                .and_then(|m| m.local_addr())
                .map(|a| a.to_string()),
            cert_expires: inner.identity.as_ref().and_then(NodeIdentity::not_after),
        }
    }

    /// `bolt node ls`: every node of the state, with what the mesh sees of it. Blocking.
    pub fn nodes(&self) -> Result<Vec<NodeView>, super::NodeError> {
        let me = self.node.node_id();
        let status = lock(&self.inner).mesh.as_ref().map(|m| m.status());
        let fresh = Duration::from_secs(10);
        self.node.with_live_state(|s| {
            let mut out: Vec<NodeView> = s
                .nodes
                .iter()
                .map(|(id, n)| {
                    let peer = status.as_ref().and_then(|st| st.peers.get(id));
                    let heard = peer
                        .and_then(|p| p.last_heard)
                        .is_some_and(|t| Instant::now().saturating_duration_since(t) < fresh);
                    let swim = status.as_ref().and_then(|st| st.swim.get(id));
                    let state = if bolt_state::is_revoked(s, *id) {
                        "revoked"
                    } else if n.left {
                        "left"
                    } else if *id == me {
                        "alive"
                    } else if !n.up {
                        "left"
                    } else if let Some(s) = swim {
                        match s {
                            MemberState::Alive => "alive",
                            MemberState::Suspect => "suspect",
                            MemberState::Dead => "dead",
                            MemberState::Left => "left",
                        }
                    } else if heard || peer.is_some_and(|p| p.connected) {
                        "alive"
                    } else if peer.is_some() {
                        "suspect"
                    } else {
                        "dead"
                    };
                    NodeView {
                        name: n.name.clone(),
                        id: id.to_string(),
                        addr: n.addr.clone(),
                        state: state.into(),
                        lag: status
                            .as_ref()
                            .and_then(|st| st.lag.get(id).copied())
                            .unwrap_or(0),
                        version: n.version.clone(),
                        this: *id == me,
                    }
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
            out
        })
    }

    /// Closes the mesh.
    pub fn close(&self) {
        if let Some(m) = lock(&self.inner).mesh.take() {
            m.close();
        }
    }
}
