//! The fold: one event into the state, pure and total.
//!
//! Every change goes through the small set of journaled mutators on [`Tx`]. When the caller asks
//! for a journal (the [`crate::Replica`] does, to take events back when a late one arrives),
//! each mutator first records the value it replaces; [`revert`] plays those records backwards.
//! The plain [`apply`] passes no journal and pays one branch per change.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

use bolt_events::payload::{
    CapsuleEvent, ClusterEvent, ImageEvent, MigrationEvent, NetworkEvent, NodeEvent,
    PlacementEvent, RevisionEvent, ServiceEvent, SnapshotEvent, VolumeEvent, SNAPSHOT_CAPSULE,
    SNAPSHOT_VOLUME,
};
use bolt_events::{Event, Hlc, NodeId, OrderKey, Payload};

use crate::keymap::KeyMap;
use crate::model::{
    snapshot_key, CapsuleInfo, CapsuleStatus, ClusterInfo, ExitInfo, Ignored, ImageInfo,
    MigrationInfo, MigrationStatus, NetworkInfo, NodeInfo, RevisionInfo, RevokedInfo, RollbackInfo,
    ServiceInfo, SnapshotInfo, State, VolumeInfo, REMOVED_RETAINED,
};
use crate::spare;

/// Why an event did not fit the state it was folded into. The event still counts as applied
/// (so every node agrees on `applied`), changes nothing else, and is recorded in
/// [`State::ignored`] and [`State::last_ignored`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Misfit {
    #[error("node is not known (it never started)")]
    UnknownNode,
    #[error("image {0} is not known")]
    UnknownImage(String),
    #[error("capsule {0} already exists")]
    CapsuleExists(String),
    #[error("capsule {0} is not known")]
    UnknownCapsule(String),
    #[error("capsule {0} is removed")]
    CapsuleRemoved(String),
    #[error("capsule {0} is already running")]
    AlreadyRunning(String),
    #[error("capsule {0} is not running")]
    NotRunning(String),
    #[error("service {0} is not declared")]
    UnknownService(String),
    #[error("service {service} already has revision {revision}")]
    RevisionExists { service: String, revision: u64 },
    #[error("service {service} has no revision {revision}")]
    UnknownRevision { service: String, revision: u64 },
    #[error("replica {replica} of service {service} is not placed")]
    NotPlaced { service: String, replica: u32 },
    #[error("capsule {0} is already migrating")]
    MigrationInFlight(String),
    #[error("capsule {0} has no migration in flight")]
    NoMigration(String),
    #[error("volume {0} already exists")]
    VolumeExists(String),
    #[error("volume {0} is not known")]
    UnknownVolume(String),
    #[error("network {0} already exists")]
    NetworkExists(String),
    #[error("network {0} is not known")]
    UnknownNetwork(String),
    #[error("address {ip} on {network} is held by {holder}")]
    AddressHeld {
        network: String,
        ip: Ipv4Addr,
        holder: String,
    },
    #[error("address {ip} on {network} is not held by {capsule}")]
    AddressNotHeld {
        network: String,
        ip: Ipv4Addr,
        capsule: String,
    },
    #[error("snapshot target {0} is not known")]
    UnknownSnapshotTarget(String),
    #[error("{target} already has a snapshot named {name}")]
    SnapshotExists { target: String, name: String },
    #[error("{target} has no snapshot named {name}")]
    UnknownSnapshot { target: String, name: String },
    #[error("origin revoked")]
    OriginRevoked,
    #[error("cluster already created")]
    ClusterExists,
    #[error("node is revoked")]
    NodeRevoked,
    #[error("node is already revoked")]
    AlreadyRevoked,
    #[error("node already left the cluster")]
    AlreadyLeft,
    #[error("a node can only leave the cluster for itself")]
    LeftForAnother,
}

/// One undo record: what a piece of state was before an event changed it. Whole entries are
/// boxed so that the record stays small: the frequent ones (last seen, a capsule's
/// run state, an address) are copied in and out of the journal on every event.
///
/// The frequent records about the event's own capsule or network (`Created`, `Run`,
/// `Address`) do not copy its id (an allocation per event): [`revert`] is given the event again
/// and reads the id from it ([`capsule_of`], [`network_of`]).
#[derive(Debug, Clone)]
pub(crate) enum Undo {
    Ignored(u64, Option<Box<Ignored>>),
    Seen(NodeId, Hlc),
    Node(NodeId, Option<Box<NodeInfo>>),
    Image(String, Option<Box<ImageInfo>>),
    ImageRef(String, Option<String>),
    Capsule(String, Option<Box<CapsuleInfo>>),
    /// The event's capsule did not exist.
    Created,
    /// The run state of the event's capsule.
    Run(CapsuleRun),
    /// The oldest removed capsule was forgotten: its tombstone and its entry, if it had one.
    Forgot {
        at: u64,
        id: String,
        capsule: Option<Box<CapsuleInfo>>,
    },
    Tombstone(u64, Option<String>),
    Service(String, Option<Box<ServiceInfo>>),
    Placement(String, Option<BTreeMap<u32, NodeId>>),
    Migration(String, Option<Box<MigrationInfo>>),
    Volume(String, Option<Box<VolumeInfo>>),
    Network(String, Option<Box<NetworkInfo>>),
    /// The holder of an address on the event's network.
    Address(Ipv4Addr, Option<String>),
    Snapshots(String, Option<BTreeMap<String, SnapshotInfo>>),
    Cluster(Option<Box<ClusterInfo>>),
    Revoked(NodeId, Option<Box<RevokedInfo>>),
}

/// The capsule a capsule event is about.
fn capsule_of(p: &Payload) -> Option<&str> {
    match p {
        Payload::Capsule(
            CapsuleEvent::Created { id, .. }
            | CapsuleEvent::Started { id, .. }
            | CapsuleEvent::Exited { id, .. }
            | CapsuleEvent::Removed { id }
            | CapsuleEvent::StopRequested { id },
        ) => Some(id),
        _ => None,
    }
}

/// The network an address event is about.
fn network_of(p: &Payload) -> Option<&str> {
    match p {
        Payload::Network(
            NetworkEvent::AddressAllocated { network, .. }
            | NetworkEvent::AddressReleased { network, .. },
        ) => Some(network),
        _ => None,
    }
}

/// The part of a capsule its lifecycle events (start, exit, removal) change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CapsuleRun {
    status: CapsuleStatus,
    pid: Option<u32>,
    exit: Option<ExitInfo>,
    restarts: u32,
    started: Option<Hlc>,
    finished: Option<Hlc>,
}

impl CapsuleRun {
    fn of(c: &CapsuleInfo) -> CapsuleRun {
        CapsuleRun {
            status: c.status,
            pid: c.pid,
            exit: c.exit,
            restarts: c.restarts,
            started: c.started,
            finished: c.finished,
        }
    }

    fn restore(self, c: &mut CapsuleInfo) {
        c.status = self.status;
        c.pid = self.pid;
        c.exit = self.exit;
        c.restarts = self.restarts;
        c.started = self.started;
        c.finished = self.finished;
    }
}

/// Undo records in the order they were made (of one event or of many, back to back).
pub(crate) type Journal = VecDeque<Undo>;

/// Drop the oldest `n` records of the journal (their events left the rewind window), keeping
/// the specs of the capsules they forgot as spares.
pub(crate) fn discard(journal: &mut Journal, n: usize) {
    for _ in 0..n {
        match journal.pop_front() {
            Some(Undo::Forgot {
                capsule: Some(c), ..
            }) => spare::forget(*c),
            Some(_) => {}
            None => return,
        }
    }
}

/// Fold one event into state, in total order. Pure, total and deterministic: the state after
/// folding a set of events sorted by [`OrderKey`] depends on that set only.
///
/// An event that does not fit (the start of an unknown capsule, an address already held, a
/// second network of the same name...) changes nothing but [`State::applied`],
/// [`State::last_key`], [`State::ignored`] and [`State::last_ignored`]: it is a recorded no-op,
/// never a panic. Concurrent conflicting events resolve by the total order: the first one wins.
pub fn apply(state: &mut State, event: &Event) {
    fold(state, event.order_key(), &event.payload, None);
}

/// Fold with an optional journal of undo records.
pub(crate) fn fold(
    state: &mut State,
    key: OrderKey,
    payload: &Payload,
    journal: Option<&mut Journal>,
) {
    let mut tx = Tx {
        s: state,
        p: payload,
        j: journal,
    };
    // A revoked node's events after its revocation change nothing. Deterministic in total
    // order: such an event sorts after the revocation (its HLC is greater), so the revocation
    // is always folded first.
    if crate::model::revoked_since(tx.s, key.origin).is_some_and(|at| key.hlc > at) {
        tx.ignore(key, payload.kind(), &Misfit::OriginRevoked);
    } else {
        tx.seen(key.origin, key.hlc);
        if let Err(misfit) = step(&mut tx, key, payload) {
            tx.ignore(key, payload.kind(), &misfit);
        }
    }
    tx.s.applied += 1;
    tx.s.last_key = key;
}

/// Set (`Some`) or remove (`None`) the value of a key in a map.
macro_rules! put {
    ($map:expr, $k:expr, $v:expr) => {
        match $v {
            Some(v) => {
                $map.insert($k, v);
            }
            None => {
                $map.remove(&$k);
            }
        }
    };
}

/// Take back the fold of one event: play its `n` undo records (the last ones of the journal)
/// newest first, then count it out and set [`State::last_key`] back to `before`, the key of the
/// event folded before it (the counters need no record: a fold adds one to `applied` and sets
/// `last_key`, always). `payload` is the event's: records about its own capsule or network
/// read their id from it; without it (`None`) those are skipped.
pub(crate) fn revert(
    s: &mut State,
    journal: &mut Journal,
    n: usize,
    payload: Option<&Payload>,
    before: OrderKey,
) {
    s.applied = s.applied.saturating_sub(1);
    s.last_key = before;
    for _ in 0..n {
        let Some(undo) = journal.pop_back() else {
            return;
        };
        match undo {
            Undo::Ignored(n, last) => {
                s.ignored = n;
                s.last_ignored = last.map(|b| *b);
            }
            Undo::Seen(id, hlc) => {
                if let Some(n) = s.nodes.get_mut(&id) {
                    n.last_seen = hlc;
                }
            }
            Undo::Node(k, v) => put!(s.nodes, k, v.map(|b| *b)),
            Undo::Image(k, v) => put!(s.images, k, v.map(|b| *b)),
            Undo::ImageRef(k, v) => put!(s.image_refs, k, v),
            Undo::Capsule(k, v) => match v {
                Some(c) => {
                    s.capsules.insert(k, *c);
                }
                None => {
                    s.capsules.remove(&k);
                }
            },
            Undo::Created => {
                if let Some(c) = payload
                    .and_then(capsule_of)
                    .and_then(|id| s.capsules.remove(id))
                {
                    spare::forget(c);
                }
            }
            Undo::Run(run) => {
                if let Some(c) = payload
                    .and_then(capsule_of)
                    .and_then(|id| s.capsules.get_mut(id))
                {
                    run.restore(c);
                }
            }
            Undo::Forgot { at, id, capsule } => {
                if let Some(c) = capsule {
                    s.capsules.insert(id.clone(), *c);
                }
                s.tombstones.push_first(at, id);
            }
            Undo::Tombstone(k, v) => put!(s.tombstones, k, v),
            Undo::Service(k, v) => put!(s.services, k, v.map(|b| *b)),
            Undo::Placement(k, v) => put!(s.placements, k, v),
            Undo::Migration(k, v) => put!(s.migrations, k, v.map(|b| *b)),
            Undo::Volume(k, v) => put!(s.volumes, k, v.map(|b| *b)),
            Undo::Network(k, v) => put!(s.networks, k, v.map(|b| *b)),
            Undo::Snapshots(k, v) => put!(s.snapshots, k, v),
            Undo::Cluster(v) => s.cluster = v.map(|b| *b),
            Undo::Revoked(k, v) => put!(s.revoked, k, v.map(|b| *b)),
            Undo::Address(ip, v) => {
                if let Some(n) = payload
                    .and_then(network_of)
                    .and_then(|net| s.networks.get_mut(net))
                {
                    match v {
                        Some(holder) => {
                            n.allocations.insert(ip, holder);
                        }
                        None => {
                            n.allocations.remove(&ip);
                        }
                    }
                }
            }
        }
    }
}

/// The state being changed, the event changing it, and the journal (if any) that records each
/// change.
struct Tx<'a> {
    s: &'a mut State,
    p: &'a Payload,
    j: Option<&'a mut Journal>,
}

/// The identity, for undo records that hold a value as it is (not boxed).
fn keep<V>(v: V) -> V {
    v
}

/// `get_mut` / `insert` / `remove` on one top-level map, journaling the value replaced.
macro_rules! journaled_map {
    ($get:ident, $insert:ident, $remove:ident, $field:ident, $K:ty, $Q:ty, $V:ty, $variant:ident, $wrap:expr) => {
        fn $get(&mut self, k: &$Q) -> Option<&mut $V> {
            let v = self.s.$field.get_mut(k)?;
            if let Some(j) = self.j.as_deref_mut() {
                j.push_back(Undo::$variant(k.to_owned(), Some($wrap(v.clone()))));
            }
            Some(v)
        }

        fn $insert(&mut self, k: $K, v: $V) {
            match self.j.as_deref_mut() {
                Some(j) => {
                    let old = self.s.$field.insert(k.clone(), v);
                    j.push_back(Undo::$variant(k, old.map($wrap)));
                }
                None => {
                    self.s.$field.insert(k, v);
                }
            }
        }

        fn $remove(&mut self, k: &$Q) -> bool {
            let old = self.s.$field.remove(k);
            let removed = old.is_some();
            if let (Some(j), Some(old)) = (self.j.as_deref_mut(), old) {
                j.push_back(Undo::$variant(k.to_owned(), Some($wrap(old))));
            }
            removed
        }
    };
}

#[allow(dead_code)]
impl Tx<'_> {
    journaled_map!(
        node_mut,
        node_insert,
        node_remove,
        nodes,
        NodeId,
        NodeId,
        NodeInfo,
        Node,
        Box::new
    );
    journaled_map!(
        image_mut,
        image_insert,
        image_remove,
        images,
        String,
        str,
        ImageInfo,
        Image,
        Box::new
    );
    journaled_map!(
        ref_mut, ref_insert, ref_remove, image_refs, String, str, String, ImageRef, keep
    );
    journaled_map!(
        capsule_mut,
        capsule_insert,
        capsule_remove,
        capsules,
        String,
        str,
        CapsuleInfo,
        Capsule,
        Box::new
    );
    journaled_map!(
        service_mut,
        service_insert,
        service_remove,
        services,
        String,
        str,
        ServiceInfo,
        Service,
        Box::new
    );
    journaled_map!(
        placement_mut,
        placement_insert,
        placement_remove,
        placements,
        String,
        str,
        BTreeMap<u32, NodeId>,
        Placement,
        keep
    );
    journaled_map!(
        migration_mut,
        migration_insert,
        migration_remove,
        migrations,
        String,
        str,
        MigrationInfo,
        Migration,
        Box::new
    );
    journaled_map!(
        volume_mut,
        volume_insert,
        volume_remove,
        volumes,
        String,
        str,
        VolumeInfo,
        Volume,
        Box::new
    );
    journaled_map!(
        network_mut,
        network_insert,
        network_remove,
        networks,
        String,
        str,
        NetworkInfo,
        Network,
        Box::new
    );
    journaled_map!(
        snapshots_mut,
        snapshots_insert,
        snapshots_remove,
        snapshots,
        String,
        str,
        BTreeMap<String, SnapshotInfo>,
        Snapshots,
        keep
    );
    journaled_map!(
        revoked_mut,
        revoked_insert,
        revoked_remove,
        revoked,
        NodeId,
        NodeId,
        RevokedInfo,
        Revoked,
        Box::new
    );

    /// Set the cluster, journaling the one it replaces.
    fn cluster_set(&mut self, info: ClusterInfo) {
        let old = self.s.cluster.replace(info);
        if let Some(j) = self.j.as_deref_mut() {
            j.push_back(Undo::Cluster(old.map(Box::new)));
        }
    }

    /// Record the removal of `id` at `at`.
    fn tombstone_insert(&mut self, at: u64, id: String) {
        let old = self.s.tombstones.insert(at, id);
        if let Some(j) = self.j.as_deref_mut() {
            j.push_back(Undo::Tombstone(at, old));
        }
    }

    /// Create the event's capsule, unless its id exists.
    fn create_capsule(&mut self, info: impl FnOnce() -> CapsuleInfo) -> Result<(), Misfit> {
        let Some(id) = capsule_of(self.p) else {
            return Ok(());
        };
        if let Err(unused) = self.s.capsules.insert_new(id.to_owned(), info()) {
            spare::forget(unused);
            return Err(Misfit::CapsuleExists(id.to_owned()));
        }
        if let Some(j) = self.j.as_deref_mut() {
            j.push_back(Undo::Created);
        }
        Ok(())
    }

    /// The event's capsule, whose lifecycle fields only (status, pid, exit, restarts, started,
    /// finished) the caller changes: journals just those.
    fn run_mut(&mut self) -> Result<&mut CapsuleInfo, Misfit> {
        let Some(id) = capsule_of(self.p) else {
            return Err(Misfit::UnknownCapsule(String::new()));
        };
        let c = self
            .s
            .capsules
            .get_mut(id)
            .ok_or_else(|| Misfit::UnknownCapsule(id.to_owned()))?;
        if let Some(j) = self.j.as_deref_mut() {
            j.push_back(Undo::Run(CapsuleRun::of(c)));
        }
        Ok(c)
    }

    /// Forget the oldest removed capsule (its tombstone and its entry).
    fn forget_oldest(&mut self) {
        let Some((at, id)) = self.s.tombstones.pop_first() else {
            return;
        };
        let capsule = self.s.capsules.remove(&id);
        match self.j.as_deref_mut() {
            Some(j) => j.push_back(Undo::Forgot {
                at,
                id,
                capsule: capsule.map(Box::new),
            }),
            None => {
                if let Some(c) = capsule {
                    spare::forget(c);
                }
            }
        }
    }

    /// Note the latest event from a known node.
    fn seen(&mut self, origin: NodeId, hlc: Hlc) {
        if let Some(n) = self.s.nodes.get_mut(&origin) {
            if let Some(j) = self.j.as_deref_mut() {
                j.push_back(Undo::Seen(origin, n.last_seen));
            }
            n.last_seen = hlc;
        }
    }

    /// Give `ip` on the event's network to `capsule`, unless someone holds it.
    fn allocate(&mut self, ip: Ipv4Addr, capsule: &str) -> Result<(), Misfit> {
        let Some(network) = network_of(self.p) else {
            return Err(Misfit::UnknownNetwork(String::new()));
        };
        let n = self
            .s
            .networks
            .get_mut(network)
            .ok_or_else(|| Misfit::UnknownNetwork(network.to_owned()))?;
        if let Err(unused) = n.allocations.insert_new(ip, capsule.to_owned()) {
            return Err(Misfit::AddressHeld {
                network: network.to_owned(),
                ip,
                holder: n.allocations.get(&ip).cloned().unwrap_or(unused),
            });
        }
        if let Some(j) = self.j.as_deref_mut() {
            j.push_back(Undo::Address(ip, None));
        }
        Ok(())
    }

    /// Free `ip` on the event's network if `capsule` holds it.
    fn release(&mut self, ip: Ipv4Addr, capsule: &str) -> Result<(), Misfit> {
        let Some(network) = network_of(self.p) else {
            return Err(Misfit::UnknownNetwork(String::new()));
        };
        let n = self
            .s
            .networks
            .get_mut(network)
            .ok_or_else(|| Misfit::UnknownNetwork(network.to_owned()))?;
        match n.allocations.remove_if(ip, |held| held == capsule) {
            Some(old) => {
                if let Some(j) = self.j.as_deref_mut() {
                    j.push_back(Undo::Address(ip, Some(old)));
                }
                Ok(())
            }
            None => Err(Misfit::AddressNotHeld {
                network: network.to_owned(),
                ip,
                capsule: capsule.to_owned(),
            }),
        }
    }

    fn ignore(&mut self, key: OrderKey, kind: &str, misfit: &Misfit) {
        let last = Some(Ignored {
            key,
            kind: kind.to_owned(),
            reason: misfit.to_string(),
        });
        let old = std::mem::replace(&mut self.s.last_ignored, last);
        if let Some(j) = self.j.as_deref_mut() {
            j.push_back(Undo::Ignored(self.s.ignored, old.map(Box::new)));
        }
        self.s.ignored += 1;
    }

    /// Point `reference` at `digest` (which must exist), moving it off any other image. The
    /// name also leaves `origin`'s names of the old image (that node's store moved it); its hold
    /// on the old image ends with its own `image.removed`, which the agent appends when no other
    /// local name keeps it.
    fn tag(&mut self, reference: &str, digest: &str, origin: NodeId) {
        if reference.is_empty() {
            return;
        }
        if let Some(old) = self.s.image_refs.get(reference) {
            if old == digest {
                return;
            }
            let old = old.clone();
            if let Some(img) = self.image_mut(&old) {
                img.references.remove(reference);
                if let Some(names) = img.held.get_mut(&origin) {
                    names.remove(reference);
                }
            }
        }
        self.ref_insert(reference.to_owned(), digest.to_owned());
        if let Some(img) = self.image_mut(digest) {
            img.references.insert(reference.to_owned());
        }
    }
}

fn step(tx: &mut Tx<'_>, key: OrderKey, payload: &Payload) -> Result<(), Misfit> {
    match payload {
        Payload::Node(e) => node(tx, key, e),
        Payload::Image(e) => image(tx, key, e),
        Payload::Capsule(e) => capsule(tx, key, e),
        Payload::Service(e) => service(tx, key, e),
        Payload::Revision(e) => revision(tx, key, e),
        Payload::Placement(e) => placement(tx, e),
        Payload::Migration(e) => migration(tx, key, e),
        Payload::Volume(e) => volume(tx, key, e),
        Payload::Network(e) => network(tx, key, e),
        Payload::Snapshot(e) => snapshot(tx, key, e),
        Payload::Cluster(e) => cluster(tx, key, e),
    }
}

fn node(tx: &mut Tx<'_>, key: OrderKey, e: &NodeEvent) -> Result<(), Misfit> {
    match e {
        NodeEvent::Started {
            name,
            version,
            addr,
            labels,
        } => {
            let (starts, admitted, left) =
                tx.s.nodes
                    .get(&key.origin)
                    .map_or((0, false, false), |n| (n.starts, n.admitted, n.left));
            tx.node_insert(
                key.origin,
                NodeInfo {
                    name: name.clone(),
                    version: version.clone(),
                    addr: addr.clone(),
                    labels: labels.clone(),
                    starts: starts.saturating_add(1),
                    up: true,
                    stop_reason: None,
                    last_seen: key.hlc,
                    admitted,
                    left,
                    down: false,
                },
            );
        }
        NodeEvent::Stopped { reason } => {
            let n = tx.node_mut(&key.origin).ok_or(Misfit::UnknownNode)?;
            n.up = false;
            n.stop_reason = Some(reason.clone());
        }
    }
    Ok(())
}

fn image(tx: &mut Tx<'_>, key: OrderKey, e: &ImageEvent) -> Result<(), Misfit> {
    match e {
        ImageEvent::Pulled {
            reference,
            digest,
            config_digest,
            layers,
            size,
        } => {
            let mut img =
                tx.s.images
                    .get(digest)
                    .cloned()
                    .unwrap_or_else(|| ImageInfo {
                        digest: digest.clone(),
                        ..ImageInfo::default()
                    });
            img.config_digest.clone_from(config_digest);
            img.layers.clone_from(layers);
            img.size = *size;
            img.nodes.insert(key.origin);
            let names = img.held.entry(key.origin).or_default();
            if !reference.is_empty() {
                names.insert(reference.clone());
            }
            tx.image_insert(digest.clone(), img);
            tx.tag(reference, digest, key.origin);
        }
        ImageEvent::Tagged { reference, digest } => {
            let img = tx
                .image_mut(digest)
                .ok_or_else(|| Misfit::UnknownImage(digest.clone()))?;
            if let Some(names) = img.held.get_mut(&key.origin) {
                names.insert(reference.clone());
            }
            tx.tag(reference, digest, key.origin);
        }
        ImageEvent::Removed { reference, digest } => {
            let img = tx
                .image_mut(digest)
                .ok_or_else(|| Misfit::UnknownImage(digest.clone()))?;
            // The node lets go of this name; its hold ends with its last one.
            let last = img.held.get_mut(&key.origin).is_none_or(|names| {
                names.remove(reference);
                names.is_empty()
            });
            if last {
                img.held.remove(&key.origin);
                img.nodes.remove(&key.origin);
            }
            let untag = img.references.remove(reference);
            let gone = img.nodes.is_empty();
            let refs: Vec<String> = if gone {
                img.references.iter().cloned().collect()
            } else {
                Vec::new()
            };
            if untag {
                tx.ref_remove(reference);
            }
            if gone {
                for r in &refs {
                    tx.ref_remove(r);
                }
                tx.image_remove(digest);
            }
        }
    }
    Ok(())
}

fn capsule(tx: &mut Tx<'_>, key: OrderKey, e: &CapsuleEvent) -> Result<(), Misfit> {
    match e {
        CapsuleEvent::Created { id, name, spec } => tx.create_capsule(|| CapsuleInfo {
            id: id.clone(),
            name: name.clone(),
            spec: spare::spec(spec),
            node: key.origin,
            status: CapsuleStatus::Created,
            pid: None,
            exit: None,
            restarts: 0,
            created: key.hlc,
            started: None,
            finished: None,
            stop_requested: false,
        })?,
        CapsuleEvent::Started { id, pid } => {
            let c = tx.run_mut()?;
            match c.status {
                CapsuleStatus::Removed => return Err(Misfit::CapsuleRemoved(id.clone())),
                CapsuleStatus::Running => return Err(Misfit::AlreadyRunning(id.clone())),
                CapsuleStatus::Exited => c.restarts = c.restarts.saturating_add(1),
                CapsuleStatus::Created => {}
            }
            c.status = CapsuleStatus::Running;
            c.pid = Some(*pid);
            c.started = Some(key.hlc);
            c.stop_requested = false;
        }
        CapsuleEvent::StopRequested { id } => {
            let c = tx.run_mut()?;
            if c.status == CapsuleStatus::Removed {
                return Err(Misfit::CapsuleRemoved(id.clone()));
            }
            c.stop_requested = true;
        }
        CapsuleEvent::Exited {
            id,
            code,
            signal,
            oom,
        } => {
            let c = tx.run_mut()?;
            match c.status {
                CapsuleStatus::Removed => return Err(Misfit::CapsuleRemoved(id.clone())),
                CapsuleStatus::Exited => return Err(Misfit::NotRunning(id.clone())),
                // Created: it failed to start.
                CapsuleStatus::Created | CapsuleStatus::Running => {}
            }
            c.status = CapsuleStatus::Exited;
            c.pid = None;
            c.exit = Some(ExitInfo {
                code: *code,
                signal: *signal,
                oom: *oom,
            });
            c.finished = Some(key.hlc);
        }
        CapsuleEvent::Removed { id } => {
            let c = tx.run_mut()?;
            if c.status == CapsuleStatus::Removed {
                return Err(Misfit::CapsuleRemoved(id.clone()));
            }
            c.status = CapsuleStatus::Removed;
            c.pid = None;
            let at = tx.s.applied;
            tx.snapshots_remove(&snapshot_key(SNAPSHOT_CAPSULE, id));
            tx.tombstone_insert(at, id.clone());
            if tx.s.tombstones.len() > REMOVED_RETAINED {
                tx.forget_oldest();
            }
        }
    }
    Ok(())
}

fn service(tx: &mut Tx<'_>, key: OrderKey, e: &ServiceEvent) -> Result<(), Misfit> {
    match e {
        ServiceEvent::Declared { name, stack, spec } => match tx.service_mut(name) {
            Some(s) => {
                s.stack.clone_from(stack);
                s.spec = spec.clone();
                s.declared = key.hlc;
            }
            None => tx.service_insert(
                name.clone(),
                ServiceInfo {
                    name: name.clone(),
                    stack: stack.clone(),
                    spec: spec.clone(),
                    declared: key.hlc,
                    revision: None,
                    revisions: BTreeMap::new(),
                    rollbacks: Vec::new(),
                },
            ),
        },
        ServiceEvent::Removed { name } => {
            if !tx.service_remove(name) {
                return Err(Misfit::UnknownService(name.clone()));
            }
            tx.placement_remove(name);
        }
    }
    Ok(())
}

fn revision(tx: &mut Tx<'_>, key: OrderKey, e: &RevisionEvent) -> Result<(), Misfit> {
    match e {
        RevisionEvent::Recorded {
            service,
            revision,
            spec_hash,
        } => {
            let s = tx
                .service_mut(service)
                .ok_or_else(|| Misfit::UnknownService(service.clone()))?;
            if s.revisions.contains_key(revision) {
                return Err(Misfit::RevisionExists {
                    service: service.clone(),
                    revision: *revision,
                });
            }
            let spec = s.spec.clone();
            s.revisions.insert(
                *revision,
                RevisionInfo {
                    spec_hash: *spec_hash,
                    spec,
                    recorded: key.hlc,
                },
            );
            s.revision = Some(*revision);
        }
        RevisionEvent::RolledBack {
            service,
            from,
            to,
            reason,
        } => {
            let s = tx
                .service_mut(service)
                .ok_or_else(|| Misfit::UnknownService(service.clone()))?;
            let spec = s.revisions.get(to).map(|r| r.spec.clone()).ok_or_else(|| {
                Misfit::UnknownRevision {
                    service: service.clone(),
                    revision: *to,
                }
            })?;
            s.spec = spec;
            s.revision = Some(*to);
            s.rollbacks.push(RollbackInfo {
                from: *from,
                to: *to,
                reason: reason.clone(),
                at: key.hlc,
            });
        }
    }
    Ok(())
}

fn placement(tx: &mut Tx<'_>, e: &PlacementEvent) -> Result<(), Misfit> {
    match e {
        PlacementEvent::Placed {
            service,
            replica,
            node,
        } => {
            if !tx.s.services.contains_key(service.as_str()) {
                return Err(Misfit::UnknownService(service.clone()));
            }
            match tx.placement_mut(service) {
                Some(p) => {
                    p.insert(*replica, *node);
                }
                None => tx.placement_insert(service.clone(), BTreeMap::from([(*replica, *node)])),
            }
        }
        PlacementEvent::Unplaced { service, replica } => {
            let not_placed = || Misfit::NotPlaced {
                service: service.clone(),
                replica: *replica,
            };
            let p = tx.placement_mut(service).ok_or_else(not_placed)?;
            if p.remove(replica).is_none() {
                return Err(not_placed());
            }
            if p.is_empty() {
                tx.placement_remove(service);
            }
        }
    }
    Ok(())
}

fn migration(tx: &mut Tx<'_>, key: OrderKey, e: &MigrationEvent) -> Result<(), Misfit> {
    match e {
        MigrationEvent::Started { capsule, from, to } => {
            match tx.s.capsules.get(capsule.as_str()).map(|c| c.status) {
                None => return Err(Misfit::UnknownCapsule(capsule.clone())),
                Some(CapsuleStatus::Removed) => {
                    return Err(Misfit::CapsuleRemoved(capsule.clone()))
                }
                Some(_) => {}
            }
            let attempts = match tx.s.migrations.get(capsule.as_str()) {
                Some(m) if m.status == MigrationStatus::InFlight => {
                    return Err(Misfit::MigrationInFlight(capsule.clone()))
                }
                Some(m) => m.attempts,
                None => 0,
            };
            tx.migration_insert(
                capsule.clone(),
                MigrationInfo {
                    capsule: capsule.clone(),
                    from: *from,
                    to: *to,
                    status: MigrationStatus::InFlight,
                    started: key.hlc,
                    ended: None,
                    attempts: attempts.saturating_add(1),
                },
            );
        }
        MigrationEvent::Completed { capsule, to, .. } => {
            let m = tx
                .migration_mut(capsule)
                .filter(|m| m.status == MigrationStatus::InFlight)
                .ok_or_else(|| Misfit::NoMigration(capsule.clone()))?;
            m.status = MigrationStatus::Done;
            m.to = *to;
            m.ended = Some(key.hlc);
            if let Some(c) = tx.capsule_mut(capsule) {
                c.node = *to;
            }
        }
        MigrationEvent::Failed { capsule, reason } => {
            let m = tx
                .migration_mut(capsule)
                .filter(|m| m.status == MigrationStatus::InFlight)
                .ok_or_else(|| Misfit::NoMigration(capsule.clone()))?;
            m.status = MigrationStatus::Failed(reason.clone());
            m.ended = Some(key.hlc);
        }
    }
    Ok(())
}

fn volume(tx: &mut Tx<'_>, key: OrderKey, e: &VolumeEvent) -> Result<(), Misfit> {
    match e {
        VolumeEvent::Created {
            name,
            driver,
            labels,
        } => {
            if tx.s.volumes.contains_key(name.as_str()) {
                return Err(Misfit::VolumeExists(name.clone()));
            }
            tx.volume_insert(
                name.clone(),
                VolumeInfo {
                    name: name.clone(),
                    driver: driver.clone(),
                    labels: labels.clone(),
                    node: key.origin,
                    created: key.hlc,
                },
            );
        }
        VolumeEvent::Removed { name } => {
            if !tx.volume_remove(name) {
                return Err(Misfit::UnknownVolume(name.clone()));
            }
            tx.snapshots_remove(&snapshot_key(SNAPSHOT_VOLUME, name));
        }
    }
    Ok(())
}

fn network(tx: &mut Tx<'_>, key: OrderKey, e: &NetworkEvent) -> Result<(), Misfit> {
    match e {
        NetworkEvent::Created {
            name,
            driver,
            subnet,
            gateway,
            mtu,
        } => {
            if tx.s.networks.contains_key(name.as_str()) {
                return Err(Misfit::NetworkExists(name.clone()));
            }
            tx.network_insert(
                name.clone(),
                NetworkInfo {
                    name: name.clone(),
                    driver: driver.clone(),
                    subnet: subnet.clone(),
                    gateway: *gateway,
                    mtu: *mtu,
                    node: key.origin,
                    allocations: KeyMap::new(),
                },
            );
        }
        NetworkEvent::Removed { name } => {
            if !tx.network_remove(name) {
                return Err(Misfit::UnknownNetwork(name.clone()));
            }
        }
        NetworkEvent::AddressAllocated { capsule, ip, .. } => tx.allocate(*ip, capsule)?,
        NetworkEvent::AddressReleased { capsule, ip, .. } => tx.release(*ip, capsule)?,
    }
    Ok(())
}

/// Whether a snapshot target exists: a capsule not removed, or a known volume.
fn target_known(s: &State, kind: &str, target: &str) -> bool {
    match kind {
        SNAPSHOT_CAPSULE => s
            .capsules
            .get(target)
            .is_some_and(|c| c.status != CapsuleStatus::Removed),
        SNAPSHOT_VOLUME => s.volumes.contains_key(target),
        _ => false,
    }
}

fn snapshot(tx: &mut Tx<'_>, key: OrderKey, e: &SnapshotEvent) -> Result<(), Misfit> {
    match e {
        SnapshotEvent::Created {
            target_kind,
            target,
            name,
        } => {
            let k = snapshot_key(target_kind, target);
            if !target_known(tx.s, target_kind, target) {
                return Err(Misfit::UnknownSnapshotTarget(k));
            }
            if tx.s.snapshots.get(&k).is_some_and(|m| m.contains_key(name)) {
                return Err(Misfit::SnapshotExists {
                    target: k,
                    name: name.clone(),
                });
            }
            let info = SnapshotInfo {
                target_kind: target_kind.clone(),
                target: target.clone(),
                name: name.clone(),
                node: key.origin,
                created: key.hlc,
                restores: 0,
                restored: None,
            };
            match tx.snapshots_mut(&k) {
                Some(m) => {
                    m.insert(name.clone(), info);
                }
                None => tx.snapshots_insert(k, BTreeMap::from([(name.clone(), info)])),
            }
        }
        SnapshotEvent::Restored {
            target_kind,
            target,
            name,
        } => {
            let k = snapshot_key(target_kind, target);
            let unknown = || Misfit::UnknownSnapshot {
                target: k.clone(),
                name: name.clone(),
            };
            if !tx.s.snapshots.get(&k).is_some_and(|m| m.contains_key(name)) {
                return Err(unknown());
            }
            let info = tx
                .snapshots_mut(&k)
                .and_then(|m| m.get_mut(name))
                .ok_or_else(unknown)?;
            info.restores = info.restores.saturating_add(1);
            info.restored = Some(key.hlc);
        }
        SnapshotEvent::Removed {
            target_kind,
            target,
            name,
        } => {
            let k = snapshot_key(target_kind, target);
            if !tx.s.snapshots.get(&k).is_some_and(|m| m.contains_key(name)) {
                return Err(Misfit::UnknownSnapshot {
                    target: k,
                    name: name.clone(),
                });
            }
            let empty = match tx.snapshots_mut(&k) {
                Some(m) => {
                    m.remove(name);
                    m.is_empty()
                }
                None => false,
            };
            if empty {
                tx.snapshots_remove(&k);
            }
        }
    }
    Ok(())
}

fn cluster(tx: &mut Tx<'_>, key: OrderKey, e: &ClusterEvent) -> Result<(), Misfit> {
    match e {
        ClusterEvent::Created {
            name,
            ca_fingerprint,
        } => {
            if tx.s.cluster.is_some() {
                return Err(Misfit::ClusterExists);
            }
            tx.cluster_set(ClusterInfo {
                name: name.clone(),
                ca_fingerprint: ca_fingerprint.clone(),
                created_by: key.origin,
            });
        }
        ClusterEvent::Admitted { node, name, addr } => {
            if tx.s.revoked.contains_key(node) {
                return Err(Misfit::NodeRevoked);
            }
            match tx.node_mut(node) {
                Some(n) => {
                    n.admitted = true;
                    n.left = false;
                    if n.addr.is_none() {
                        n.addr = Some(addr.clone());
                    }
                }
                // Admitted before its first start reached this node: known by the name and
                // address its admission gave, not up until it starts.
                None => tx.node_insert(
                    *node,
                    NodeInfo {
                        name: name.clone(),
                        addr: Some(addr.clone()),
                        admitted: true,
                        ..NodeInfo::default()
                    },
                ),
            }
        }
        ClusterEvent::Revoked { node, reason } => {
            // Recorded whether or not the node is known here yet: a revocation must not depend
            // on which of the node's events arrived first.
            if tx.s.revoked.contains_key(node) {
                return Err(Misfit::AlreadyRevoked);
            }
            tx.revoked_insert(
                *node,
                RevokedInfo {
                    at: key.hlc,
                    by: key.origin,
                    reason: reason.clone(),
                },
            );
        }
        ClusterEvent::Left { node } => {
            if *node != key.origin {
                return Err(Misfit::LeftForAnother);
            }
            match tx.s.nodes.get(node) {
                None => return Err(Misfit::UnknownNode),
                Some(n) if n.left => return Err(Misfit::AlreadyLeft),
                Some(_) => {}
            }
            if let Some(n) = tx.node_mut(node) {
                n.left = true;
            }
        }
        // Observations: several nodes may record the same one; a repeat changes nothing and
        // is not a misfit.
        ClusterEvent::MemberDown { node } | ClusterEvent::MemberUp { node } => {
            let down = matches!(e, ClusterEvent::MemberDown { .. });
            match tx.s.nodes.get(node) {
                None => return Err(Misfit::UnknownNode),
                Some(n) if n.down == down => return Ok(()),
                Some(_) => {}
            }
            if let Some(n) = tx.node_mut(node) {
                n.down = down;
            }
        }
    }
    Ok(())
}
