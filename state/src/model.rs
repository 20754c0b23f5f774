//! The shape of the derived state: deterministic maps only, so that its encoding (and so its
//! hash) is canonical.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use bincode::{Decode, Encode};
use bolt_events::payload::{CapsuleSpec, ServiceSpec};
use bolt_events::{Hash, Hlc, NodeId, OrderKey};

use crate::keymap::{KeyMap, NodeIdHash, Tombstones};
use serde::{Deserialize, Serialize};

/// How many removed capsules the state keeps (status `removed`) before it forgets the oldest.
/// Keeps the capsule map, the snapshots and the fold cost bounded under churn; the log still
/// holds every capsule's history.
pub const REMOVED_RETAINED: usize = 1024;

/// The whole derived state of the cluster as this node knows it: the fold, in total order, of
/// every event it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct State {
    /// Number of events folded (ignored ones included).
    pub applied: u64,
    /// The total-order key of the last event folded ([`OrderKey::MIN`] before the first).
    pub last_key: OrderKey,
    /// Events that did not fit the state when folded (see [`crate::apply`]).
    pub ignored: u64,
    /// The most recent ignored event and why, for `bolt state` and debugging.
    pub last_ignored: Option<Ignored>,
    /// Every node that announced itself, by id.
    pub nodes: KeyMap<NodeId, NodeInfo, NodeIdHash>,
    /// Images held by at least one node, by manifest digest.
    pub images: BTreeMap<String, ImageInfo>,
    /// Image references (`repo:tag`) to the digest they point at.
    pub image_refs: BTreeMap<String, String>,
    /// Capsules by id: every capsule not removed, and the [`REMOVED_RETAINED`] most recently
    /// removed ones (status `removed`). Hashed for the fold's lookups, sorted by id whenever read
    /// whole (see [`KeyMap`]).
    pub capsules: KeyMap<String, CapsuleInfo>,
    /// The removed capsules still kept in `capsules`, by the value of `applied` when their
    /// removal was folded (oldest first): the oldest is dropped past [`REMOVED_RETAINED`].
    pub tombstones: Tombstones,
    /// Declared services by name.
    pub services: BTreeMap<String, ServiceInfo>,
    /// service -> replica index -> node it is placed on.
    pub placements: BTreeMap<String, BTreeMap<u32, NodeId>>,
    /// The latest migration of each capsule, by capsule id.
    pub migrations: BTreeMap<String, MigrationInfo>,
    /// Volumes by name.
    pub volumes: BTreeMap<String, VolumeInfo>,
    /// Networks by name, with their address allocations.
    pub networks: KeyMap<String, NetworkInfo>,
    /// Snapshots by target ([`snapshot_key`]: `capsule:<id>` or `volume:<name>`), then by
    /// name. A target's snapshots go with the capsule's or volume's removal.
    pub snapshots: BTreeMap<String, BTreeMap<String, SnapshotInfo>>,
    /// The cluster, once created (`cluster.created`; the first in total order wins).
    pub cluster: Option<ClusterInfo>,
    /// Revoked nodes (`cluster.revoked`; the first revocation of a node wins). Events from a
    /// revoked node with an HLC after its revocation's are ignored (see [`is_revoked`]).
    pub revoked: BTreeMap<NodeId, RevokedInfo>,
}

impl Default for State {
    fn default() -> Self {
        State {
            applied: 0,
            last_key: OrderKey::MIN,
            ignored: 0,
            last_ignored: None,
            nodes: KeyMap::new(),
            images: BTreeMap::new(),
            image_refs: BTreeMap::new(),
            capsules: KeyMap::new(),
            tombstones: Tombstones::new(),
            services: BTreeMap::new(),
            placements: BTreeMap::new(),
            migrations: BTreeMap::new(),
            volumes: BTreeMap::new(),
            networks: KeyMap::new(),
            snapshots: BTreeMap::new(),
            cluster: None,
            revoked: BTreeMap::new(),
        }
    }
}

/// An event the fold could not use, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Ignored {
    /// Where the event sits in the total order.
    pub key: OrderKey,
    /// Its kind, such as `capsule.started`.
    pub kind: String,
    /// Why it did not fit, lowercase.
    pub reason: String,
}

/// A node as it announced itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct NodeInfo {
    /// Human name.
    pub name: String,
    /// Bolt version it runs.
    pub version: String,
    /// Address peers reach it at, when it announced one.
    pub addr: Option<String>,
    /// Labels for placement.
    pub labels: BTreeMap<String, String>,
    /// How many times it started.
    pub starts: u64,
    /// Whether it is up (started and not stopped since).
    pub up: bool,
    /// Why it last stopped.
    pub stop_reason: Option<String>,
    /// HLC of the latest event from it.
    pub last_seen: Hlc,
    /// A CA holder admitted it into the cluster (`cluster.admitted`).
    pub admitted: bool,
    /// It left the cluster (`cluster.left`, written by itself); a new admission clears it.
    pub left: bool,
    /// The failure detector last saw it die (`cluster.member_down`); cleared by
    /// `cluster.member_up` or its next `node.started`.
    pub down: bool,
}

/// The cluster, as `bolt cluster init` created it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ClusterInfo {
    /// Its name.
    pub name: String,
    /// Fingerprint of its CA certificate.
    pub ca_fingerprint: String,
    /// The node that created it.
    pub created_by: NodeId,
}

/// A node's revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct RevokedInfo {
    /// HLC of the revocation: the revoked node's events after it are ignored.
    pub at: Hlc,
    /// The node that revoked it.
    pub by: NodeId,
    /// Why.
    pub reason: String,
}

/// Whether `node` was revoked (its events after the revocation are ignored).
pub fn is_revoked(state: &State, node: NodeId) -> bool {
    state.revoked.contains_key(&node)
}

/// The HLC of `node`'s revocation, if it was revoked: its events with a later HLC are ignored.
pub fn revoked_since(state: &State, node: NodeId) -> Option<Hlc> {
    state.revoked.get(&node).map(|r| r.at)
}

/// An image, by digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ImageInfo {
    /// Manifest digest.
    pub digest: String,
    /// Config blob digest.
    pub config_digest: String,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
    /// Total size in bytes.
    pub size: u64,
    /// References (`repo:tag`) that point at it.
    pub references: BTreeSet<String>,
    /// Nodes that hold it.
    pub nodes: BTreeSet<NodeId>,
    /// The names each holding node keeps it under (its `image.pulled`/`image.tagged` minus its
    /// `image.removed`): a node's hold ends with the removal of its last name, not its first.
    /// Same keys as `nodes`; a set may be empty between a name moving to another image and the
    /// node's `image.removed` of the old one.
    pub held: BTreeMap<NodeId, BTreeSet<String>>,
}

/// Lifecycle of a capsule.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Encode, Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum CapsuleStatus {
    /// Created, never started.
    Created,
    /// Its process runs.
    Running,
    /// Its process ended.
    Exited,
    /// Removed; kept as a tombstone so its id is never reused.
    Removed,
}

/// How a capsule's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ExitInfo {
    /// Exit code, when it exited on its own.
    pub code: Option<i32>,
    /// Signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Whether the kernel OOM killer ended it.
    pub oom: bool,
}

/// A capsule (container).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct CapsuleInfo {
    /// Unique id.
    pub id: String,
    /// Name, unique among capsules that are not removed.
    pub name: String,
    /// What it was created as (shared: never changes after creation).
    pub spec: Arc<CapsuleSpec>,
    /// The node that runs it: the origin of its creation, moved by a completed migration.
    pub node: NodeId,
    /// Lifecycle status.
    pub status: CapsuleStatus,
    /// Process id while running.
    pub pid: Option<u32>,
    /// How the last run ended.
    pub exit: Option<ExitInfo>,
    /// Starts after the first one.
    pub restarts: u32,
    /// HLC of its creation.
    pub created: Hlc,
    /// HLC of its latest start.
    pub started: Option<Hlc>,
    /// HLC of its latest exit.
    pub finished: Option<Hlc>,
    /// A person stopped or killed it since its latest start (`capsule.stop_requested`):
    /// restart policies leave it alone.
    pub stop_requested: bool,
}

/// One recorded revision of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct RevisionInfo {
    /// Hash of the spec, as recorded.
    pub spec_hash: Hash,
    /// The spec the service had when the revision was recorded (what a rollback restores).
    pub spec: ServiceSpec,
    /// HLC of the record.
    pub recorded: Hlc,
}

/// One rollback of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct RollbackInfo {
    /// Revision it left.
    pub from: u64,
    /// Revision it went back to.
    pub to: u64,
    /// Why.
    pub reason: String,
    /// HLC of the rollback.
    pub at: Hlc,
}

/// A declared service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ServiceInfo {
    /// Service name.
    pub name: String,
    /// Stack it belongs to.
    pub stack: String,
    /// Current spec.
    pub spec: ServiceSpec,
    /// HLC of its latest declaration.
    pub declared: Hlc,
    /// The revision it runs now, once one was recorded.
    pub revision: Option<u64>,
    /// Recorded revisions.
    pub revisions: BTreeMap<u64, RevisionInfo>,
    /// Rollbacks, oldest first.
    pub rollbacks: Vec<RollbackInfo>,
}

/// Where a migration stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum MigrationStatus {
    /// Started, not finished.
    InFlight,
    /// The capsule now runs on `to`.
    Done,
    /// Gave up, with the reason.
    Failed(String),
}

/// The latest migration of a capsule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct MigrationInfo {
    /// Capsule id.
    pub capsule: String,
    /// Node it left.
    pub from: NodeId,
    /// Node it goes to.
    pub to: NodeId,
    /// Where it stands.
    pub status: MigrationStatus,
    /// HLC of its start.
    pub started: Hlc,
    /// HLC of its end, once ended.
    pub ended: Option<Hlc>,
    /// How many migrations of this capsule were started, this one included.
    pub attempts: u32,
}

/// A named volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct VolumeInfo {
    /// Name.
    pub name: String,
    /// Driver (`local`, ...).
    pub driver: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The node that created it.
    pub node: NodeId,
    /// HLC of its creation.
    pub created: Hlc,
}

/// A network and the addresses allocated on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct NetworkInfo {
    /// Name.
    pub name: String,
    /// Driver (`bridge`, ...).
    pub driver: String,
    /// Subnet in CIDR form, such as `10.88.0.0/16`.
    pub subnet: String,
    /// Gateway address.
    pub gateway: Ipv4Addr,
    /// MTU.
    pub mtu: u32,
    /// The node that created it.
    pub node: NodeId,
    /// Address -> capsule id holding it.
    pub allocations: KeyMap<Ipv4Addr, String>,
}

/// A btrfs snapshot of a capsule's writable layer or of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct SnapshotInfo {
    /// `capsule` or `volume`.
    pub target_kind: String,
    /// The capsule id or the volume name.
    pub target: String,
    /// The snapshot's name, unique per target.
    pub name: String,
    /// The node that took it (and holds it: snapshots are local).
    pub node: NodeId,
    /// HLC of its creation.
    pub created: Hlc,
    /// How many times it was restored.
    pub restores: u32,
    /// HLC of its latest restore.
    pub restored: Option<Hlc>,
}

/// The key of a target's snapshots in [`State::snapshots`]: `KIND:TARGET`.
pub fn snapshot_key(target_kind: &str, target: &str) -> String {
    format!("{target_kind}:{target}")
}

impl State {
    /// The snapshots of one target, oldest first (by creation HLC, then name).
    pub fn snapshots_of(&self, target_kind: &str, target: &str) -> Vec<&SnapshotInfo> {
        let mut out: Vec<&SnapshotInfo> = self
            .snapshots
            .get(&snapshot_key(target_kind, target))
            .map(|m| m.values().collect())
            .unwrap_or_default();
        out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        out
    }

    /// A hash of the whole state: blake3 over its canonical bincode encoding (every map is a
    /// `BTreeMap`, so the encoding depends on content only). Equal on every node that folded
    /// the same set of events.
    pub fn hash(&self) -> Hash {
        let mut hasher = blake3::Hasher::new();
        // Writing into a hasher cannot fail; a failure would only mean a truncated (and so
        // different, never falsely equal) hash.
        let _ = bincode::encode_into_std_write(self, &mut hasher, bincode::config::standard());
        Hash(*hasher.finalize().as_bytes())
    }

    /// The non-removed capsule named `name`, if any.
    pub fn capsule_by_name(&self, name: &str) -> Option<&CapsuleInfo> {
        // One pass in hash order; the smallest id if several match, as a sorted scan would.
        self.capsules
            .iter_unordered()
            .filter(|(_, c)| c.name == name && c.status != CapsuleStatus::Removed)
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(_, c)| c)
    }

    /// Every address a capsule holds: (network, address), sorted.
    pub fn addresses_of(&self, capsule: &str) -> Vec<(String, Ipv4Addr)> {
        let mut out = Vec::new();
        for (net, info) in self.networks.iter_unordered() {
            for (ip, holder) in info.allocations.iter_unordered() {
                if holder == capsule {
                    out.push((net.clone(), *ip));
                }
            }
        }
        out.sort_unstable();
        out
    }
}
