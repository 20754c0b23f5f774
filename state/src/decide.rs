//! Intents checked against the state: `decide(&State, Command)` returns the payloads that carry
//! a command out, or the reason it is refused. Pure: appending the payloads is the caller's job.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use bolt_events::payload::{
    CapsuleEvent, CapsuleSpec, ClusterEvent, ImageEvent, MigrationEvent, NetworkEvent, NodeEvent,
    PlacementEvent, RevisionEvent, ServiceEvent, ServiceSpec, SnapshotEvent, VolumeEvent,
    SNAPSHOT_CAPSULE, SNAPSHOT_VOLUME,
};
use bolt_events::{Hash, NodeId, Payload};

use crate::model::{snapshot_key, CapsuleInfo, CapsuleStatus, MigrationStatus, State};

/// MTU a network gets when the command leaves it at 0.
pub const DEFAULT_MTU: u32 = 1500;

/// An intent, checked against state by [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// This node starts (written at every agent start).
    StartNode { name: String, version: String },
    /// This node starts, announcing the address peers reach it at and its labels.
    StartNodeAt {
        name: String,
        version: String,
        addr: Option<String>,
        labels: BTreeMap<String, String>,
    },
    /// This node (`node`, its own id) stops. Refused unless it is up.
    StopNode { node: NodeId, reason: String },
    /// This node pulled an image.
    PullImage {
        reference: String,
        digest: String,
        config_digest: String,
        layers: Vec<String>,
        size: u64,
    },
    /// Point a reference at a known image.
    TagImage { reference: String, digest: String },
    /// This node (`node`) drops its copy of an image; refused while one of its capsules uses it.
    RemoveImage {
        node: NodeId,
        reference: String,
        digest: String,
    },
    /// Create a capsule; its name must be free among capsules not removed, its id never used.
    CreateCapsule {
        id: String,
        name: String,
        spec: CapsuleSpec,
    },
    /// Record that a created or exited capsule's process started.
    StartCapsule { id: String, pid: u32 },
    /// A person stops or kills the capsule: restart policies leave it alone until its next
    /// start.
    RequestStop { id: String },
    /// Record that a capsule's process ended (or failed to start).
    RecordExit {
        id: String,
        code: Option<i32>,
        signal: Option<i32>,
        oom: bool,
    },
    /// Remove a capsule, releasing its addresses. A running one only with `force`.
    RemoveCapsule { id: String, force: bool },
    /// Declare (or redeclare) a service in a stack.
    DeclareService {
        name: String,
        stack: String,
        spec: ServiceSpec,
    },
    /// Remove a service and its placements.
    RemoveService { name: String },
    /// Record the service's current spec as its next revision.
    RecordRevision { service: String },
    /// Go back to an earlier recorded revision.
    Rollback {
        service: String,
        to: u64,
        reason: String,
    },
    /// Place replica `replica` of a service on a node that is up.
    PlaceReplica {
        service: String,
        replica: u32,
        node: NodeId,
    },
    /// Take a replica's placement away.
    UnplaceReplica { service: String, replica: u32 },
    /// Start moving a capsule to another node that is up.
    StartMigration { capsule: String, to: NodeId },
    /// The capsule's migration in flight succeeded.
    CompleteMigration { capsule: String },
    /// The capsule's migration in flight failed.
    FailMigration { capsule: String, reason: String },
    /// Give a capsule an address on a network: `ip`, or the lowest free one when `None`.
    AllocateAddress {
        network: String,
        capsule: String,
        ip: Option<Ipv4Addr>,
    },
    /// Free an address a capsule holds.
    ReleaseAddress {
        network: String,
        capsule: String,
        ip: Ipv4Addr,
    },
    /// Create a named volume.
    CreateVolume {
        name: String,
        driver: String,
        labels: BTreeMap<String, String>,
    },
    /// Remove a volume no live capsule mounts.
    RemoveVolume { name: String },
    /// Create a network; its subnet must not overlap another's. The gateway defaults to the
    /// first host address, the MTU (when 0) to [`DEFAULT_MTU`].
    CreateNetwork {
        name: String,
        driver: String,
        subnet: String,
        gateway: Option<Ipv4Addr>,
        mtu: u32,
    },
    /// Remove a network no one holds an address on.
    RemoveNetwork { name: String },
    /// Record a snapshot of a capsule's layer (`target_kind` `capsule`, `target` its id) or of
    /// a volume (`volume`, its name); the name must be new for the target.
    CreateSnapshot {
        target_kind: String,
        target: String,
        name: String,
    },
    /// Record a restore: refused while the capsule runs, or while a running capsule mounts the
    /// volume.
    RestoreSnapshot {
        target_kind: String,
        target: String,
        name: String,
    },
    /// Record a snapshot's removal.
    RemoveSnapshot {
        target_kind: String,
        target: String,
        name: String,
    },
    /// `bolt cluster init`: create the cluster. Refused once one exists.
    CreateCluster {
        name: String,
        ca_fingerprint: String,
    },
    /// A CA holder admits `node` (it presented a valid join token). Refused for a revoked node
    /// and for a member already admitted (one that left may be admitted again).
    AdmitNode {
        node: NodeId,
        name: String,
        addr: String,
    },
    /// `bolt node rm`: node `by` (the deciding node, its own id) revokes `node`. Refused for an
    /// unknown node, one already revoked, and `by` itself.
    RevokeNode {
        node: NodeId,
        by: NodeId,
        reason: String,
    },
    /// `bolt cluster leave`: this node (`node`, its own id) leaves. Refused for an unknown node,
    /// a revoked one and one that already left.
    LeaveCluster { node: NodeId },
    /// The failure detector saw `node` die. Refused if it is recorded down already, so that a
    /// node records a death once.
    RecordMemberDown { node: NodeId },
    /// The failure detector saw `node` come back. Refused unless it is recorded down.
    RecordMemberUp { node: NodeId },
}

/// Why a command is refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    #[error("invalid name {0:?}")]
    InvalidName(String),
    #[error("node {0} is not known")]
    UnknownNode(String),
    #[error("node {0} is not up")]
    NodeNotUp(String),
    #[error("image {0} is not known")]
    UnknownImage(String),
    #[error("image {digest} is not held by node {node}")]
    ImageNotHeld { digest: String, node: String },
    #[error("image {digest} is used by capsule {capsule}")]
    ImageInUse { digest: String, capsule: String },
    #[error("capsule id {0} is already taken")]
    CapsuleExists(String),
    #[error("name {name} is taken by capsule {id}")]
    NameInUse { name: String, id: String },
    #[error("capsule {0} is not known")]
    UnknownCapsule(String),
    #[error("capsule {0} is removed")]
    CapsuleRemoved(String),
    #[error("capsule {0} is already running")]
    CapsuleRunning(String),
    #[error("capsule {0} is running; stop it first or force the removal")]
    RemoveRunning(String),
    #[error("capsule {0} is not running")]
    CapsuleNotRunning(String),
    #[error("service {service} belongs to stack {stack}")]
    ServiceInOtherStack { service: String, stack: String },
    #[error("service {0} is not declared")]
    UnknownService(String),
    #[error("service {service} is unchanged since revision {revision}")]
    RevisionUnchanged { service: String, revision: u64 },
    #[error("service {0} has no recorded revision")]
    NoRevision(String),
    #[error("service {service} has no revision {revision}")]
    UnknownRevision { service: String, revision: u64 },
    #[error(
        "revision {to} of service {service} is not earlier than its current revision {current}"
    )]
    NotEarlier {
        service: String,
        to: u64,
        current: u64,
    },
    #[error("service {service} has {replicas} replicas; there is no replica {replica}")]
    NoSuchReplica {
        service: String,
        replica: u32,
        replicas: u32,
    },
    #[error("replica {replica} of service {service} is not placed")]
    NotPlaced { service: String, replica: u32 },
    #[error("capsule {0} is already migrating")]
    MigrationInFlight(String),
    #[error("capsule {0} has no migration in flight")]
    NoMigration(String),
    #[error("capsule {capsule} already runs on node {node}")]
    SameNode { capsule: String, node: String },
    #[error("volume {0} already exists")]
    VolumeExists(String),
    #[error("volume {0} is not known")]
    UnknownVolume(String),
    #[error("volume {volume} is mounted by capsule {capsule}")]
    VolumeInUse { volume: String, capsule: String },
    #[error("network {0} already exists")]
    NetworkExists(String),
    #[error("network {0} is not known")]
    UnknownNetwork(String),
    #[error("invalid subnet {0:?}: expected a.b.c.d/len with no host bits set")]
    InvalidSubnet(String),
    #[error("subnet {subnet} overlaps network {network} ({other})")]
    SubnetOverlap {
        subnet: String,
        network: String,
        other: String,
    },
    #[error("gateway {gateway} is not a host address of {subnet}")]
    GatewayOutsideSubnet { gateway: Ipv4Addr, subnet: String },
    #[error("network {network} still has {count} allocated addresses")]
    NetworkInUse { network: String, count: usize },
    #[error("address {ip} is not a host address of {subnet}")]
    AddressOutsideSubnet { ip: Ipv4Addr, subnet: String },
    #[error("address {ip} is the gateway of network {network}")]
    AddressIsGateway { ip: Ipv4Addr, network: String },
    #[error("address {ip} on network {network} is held by {holder}")]
    AddressInUse {
        ip: Ipv4Addr,
        network: String,
        holder: String,
    },
    #[error("no free address left on network {0}")]
    AddressesExhausted(String),
    #[error("address {ip} on network {network} is not held by {capsule}")]
    AddressNotHeld {
        ip: Ipv4Addr,
        network: String,
        capsule: String,
    },
    #[error("invalid snapshot target kind {0:?}: expected capsule or volume")]
    SnapshotKind(String),
    #[error(
        "invalid snapshot name {0:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"
    )]
    SnapshotName(String),
    #[error("{target} already has a snapshot named {name}")]
    SnapshotExists { target: String, name: String },
    #[error("{target} has no snapshot named {name}")]
    UnknownSnapshot { target: String, name: String },
    #[error("capsule {0} is running: stop it before restoring a snapshot")]
    RestoreRunning(String),
    #[error("volume {volume} is mounted by running capsule {capsule}: stop it before restoring a snapshot")]
    RestoreVolumeInUse { volume: String, capsule: String },
    #[error("cluster {0} already exists")]
    ClusterExists(String),
    #[error("node {0} is revoked")]
    NodeRevoked(String),
    #[error("node {0} is already admitted")]
    AlreadyAdmitted(String),
    #[error("node {0} cannot revoke itself")]
    RevokeSelf(String),
    #[error("node {0} already left the cluster")]
    AlreadyLeft(String),
    #[error("node {0} is already recorded down")]
    MemberAlreadyDown(String),
    #[error("node {0} is not recorded down")]
    MemberNotDown(String),
}

/// What kind of refusal a [`DecideError`] is: the API maps it to a status once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The command names something the state does not know (HTTP 404).
    NotFound,
    /// The command is well formed but the state is in the way (HTTP 409).
    Conflict,
    /// The command itself is malformed (HTTP 400).
    Invalid,
}

impl DecideError {
    /// What kind of refusal this is.
    pub fn kind(&self) -> Refusal {
        use DecideError as E;
        match self {
            E::UnknownNode(_)
            | E::UnknownImage(_)
            | E::ImageNotHeld { .. }
            | E::UnknownCapsule(_)
            | E::CapsuleRemoved(_)
            | E::UnknownService(_)
            | E::NoRevision(_)
            | E::UnknownRevision { .. }
            | E::NoSuchReplica { .. }
            | E::NoMigration(_)
            | E::UnknownVolume(_)
            | E::UnknownNetwork(_)
            | E::UnknownSnapshot { .. } => Refusal::NotFound,
            E::NodeNotUp(_)
            | E::ImageInUse { .. }
            | E::CapsuleExists(_)
            | E::NameInUse { .. }
            | E::CapsuleRunning(_)
            | E::RemoveRunning(_)
            | E::CapsuleNotRunning(_)
            | E::ServiceInOtherStack { .. }
            | E::RevisionUnchanged { .. }
            | E::NotPlaced { .. }
            | E::MigrationInFlight(_)
            | E::SameNode { .. }
            | E::VolumeExists(_)
            | E::VolumeInUse { .. }
            | E::NetworkExists(_)
            | E::SubnetOverlap { .. }
            | E::NetworkInUse { .. }
            | E::AddressInUse { .. }
            | E::AddressesExhausted(_)
            | E::AddressNotHeld { .. }
            | E::SnapshotExists { .. }
            | E::RestoreRunning(_)
            | E::RestoreVolumeInUse { .. }
            | E::ClusterExists(_)
            | E::NodeRevoked(_)
            | E::AlreadyAdmitted(_)
            | E::AlreadyLeft(_)
            | E::MemberAlreadyDown(_)
            | E::MemberNotDown(_) => Refusal::Conflict,
            E::InvalidName(_)
            | E::NotEarlier { .. }
            | E::InvalidSubnet(_)
            | E::GatewayOutsideSubnet { .. }
            | E::AddressOutsideSubnet { .. }
            | E::AddressIsGateway { .. }
            | E::SnapshotKind(_)
            | E::SnapshotName(_)
            | E::RevokeSelf(_) => Refusal::Invalid,
        }
    }
}

/// An IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Network address (host bits zero).
    pub base: u32,
    /// Prefix length, 0..=32.
    pub len: u8,
}

impl Subnet {
    /// Parse `a.b.c.d/len`; host bits must be zero.
    pub fn parse(s: &str) -> Option<Subnet> {
        let (addr, len) = s.split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let len: u8 = len.parse().ok()?;
        if len > 32 {
            return None;
        }
        let base = u32::from(addr);
        let net = Subnet { base, len };
        (base & !net.mask() == 0).then_some(net)
    }

    fn mask(self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        }
    }

    /// The last address of the subnet (broadcast).
    pub fn last(self) -> u32 {
        self.base | !self.mask()
    }

    /// Whether `ip` is in the subnet.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.base
    }

    /// Whether `ip` is a usable host address: inside, and neither the network nor the
    /// broadcast address (for prefixes up to /30).
    pub fn is_host(self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        self.contains(ip) && (self.len >= 31 || (v != self.base && v != self.last()))
    }

    /// Whether two subnets share an address.
    pub fn overlaps(self, other: Subnet) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }

    /// The first host address.
    pub fn first_host(self) -> Ipv4Addr {
        if self.len >= 31 {
            Ipv4Addr::from(self.base)
        } else {
            Ipv4Addr::from(self.base + 1)
        }
    }
}

/// The hash a revision records for a service spec: blake3 over its canonical encoding.
pub fn spec_hash(spec: &ServiceSpec) -> Hash {
    let mut hasher = blake3::Hasher::new();
    let _ = bincode::encode_into_std_write(spec, &mut hasher, bincode::config::standard());
    Hash(*hasher.finalize().as_bytes())
}

/// Turn an intent into the events that carry it out, or refuse it. Pure.
pub fn decide(state: &State, cmd: Command) -> Result<Vec<Payload>, DecideError> {
    use DecideError as E;
    let payload = match cmd {
        Command::StartNode { name, version } => {
            printable(&name)?;
            Payload::Node(NodeEvent::Started {
                name,
                version,
                addr: None,
                labels: BTreeMap::new(),
            })
        }
        Command::StartNodeAt {
            name,
            version,
            addr,
            labels,
        } => {
            printable(&name)?;
            Payload::Node(NodeEvent::Started {
                name,
                version,
                addr,
                labels,
            })
        }
        Command::StopNode { node, reason } => {
            up_node(state, node)?;
            Payload::Node(NodeEvent::Stopped { reason })
        }
        Command::PullImage {
            reference,
            digest,
            config_digest,
            layers,
            size,
        } => {
            if digest.is_empty() {
                return Err(E::InvalidName(digest));
            }
            Payload::Image(ImageEvent::Pulled {
                reference,
                digest,
                config_digest,
                layers,
                size,
            })
        }
        Command::TagImage { reference, digest } => {
            printable(&reference)?;
            if !state.images.contains_key(&digest) {
                return Err(E::UnknownImage(digest));
            }
            Payload::Image(ImageEvent::Tagged { reference, digest })
        }
        Command::RemoveImage {
            node,
            reference,
            digest,
        } => {
            let img = state
                .images
                .get(&digest)
                .ok_or_else(|| E::UnknownImage(digest.clone()))?;
            if !img.nodes.contains(&node) {
                return Err(E::ImageNotHeld {
                    digest,
                    node: node.short(),
                });
            }
            // Another name keeps the image on the node: only this name goes.
            let keeps_it = img
                .held
                .get(&node)
                .is_some_and(|names| names.iter().any(|n| *n != reference));
            if keeps_it {
                return Ok(vec![Payload::Image(ImageEvent::Removed {
                    reference,
                    digest,
                })]);
            }
            if let Some(c) = state.capsules.values().find(|c| {
                c.node == node
                    && c.status != CapsuleStatus::Removed
                    && c.spec.image_digest == digest
            }) {
                return Err(E::ImageInUse {
                    digest,
                    capsule: c.id.clone(),
                });
            }
            Payload::Image(ImageEvent::Removed { reference, digest })
        }
        Command::CreateCapsule { id, name, spec } => {
            printable(&id)?;
            object_name(&name)?;
            if state.capsules.contains_key(&id) {
                return Err(E::CapsuleExists(id));
            }
            if let Some(c) = state.capsule_by_name(&name) {
                return Err(E::NameInUse {
                    name,
                    id: c.id.clone(),
                });
            }
            Payload::Capsule(CapsuleEvent::Created { id, name, spec })
        }
        Command::StartCapsule { id, pid } => {
            if live_capsule(state, &id)?.status == CapsuleStatus::Running {
                return Err(E::CapsuleRunning(id));
            }
            Payload::Capsule(CapsuleEvent::Started { id, pid })
        }
        Command::RequestStop { id } => {
            live_capsule(state, &id)?;
            Payload::Capsule(CapsuleEvent::StopRequested { id })
        }
        Command::RecordExit {
            id,
            code,
            signal,
            oom,
        } => {
            if live_capsule(state, &id)?.status == CapsuleStatus::Exited {
                return Err(E::CapsuleNotRunning(id));
            }
            Payload::Capsule(CapsuleEvent::Exited {
                id,
                code,
                signal,
                oom,
            })
        }
        Command::RemoveCapsule { id, force } => {
            let c = live_capsule(state, &id)?;
            if c.status == CapsuleStatus::Running && !force {
                return Err(E::RemoveRunning(id));
            }
            let mut out: Vec<Payload> = state
                .addresses_of(&id)
                .into_iter()
                .map(|(network, ip)| {
                    Payload::Network(NetworkEvent::AddressReleased {
                        network,
                        capsule: id.clone(),
                        ip,
                    })
                })
                .collect();
            out.push(Payload::Capsule(CapsuleEvent::Removed { id }));
            return Ok(out);
        }
        Command::DeclareService { name, stack, spec } => {
            object_name(&name)?;
            if let Some(s) = state.services.get(&name) {
                if s.stack != stack {
                    return Err(E::ServiceInOtherStack {
                        service: name,
                        stack: s.stack.clone(),
                    });
                }
            }
            Payload::Service(ServiceEvent::Declared { name, stack, spec })
        }
        Command::RemoveService { name } => {
            if !state.services.contains_key(&name) {
                return Err(E::UnknownService(name));
            }
            let mut out: Vec<Payload> = state
                .placements
                .get(&name)
                .into_iter()
                .flat_map(|p| p.keys())
                .map(|&replica| {
                    Payload::Placement(PlacementEvent::Unplaced {
                        service: name.clone(),
                        replica,
                    })
                })
                .collect();
            out.push(Payload::Service(ServiceEvent::Removed { name }));
            return Ok(out);
        }
        Command::RecordRevision { service } => {
            let s = state
                .services
                .get(&service)
                .ok_or_else(|| E::UnknownService(service.clone()))?;
            let hash = spec_hash(&s.spec);
            if let Some(current) = s.revision {
                if s.revisions.get(&current).map(|r| r.spec_hash) == Some(hash) {
                    return Err(E::RevisionUnchanged {
                        service,
                        revision: current,
                    });
                }
            }
            let revision = s.revisions.keys().next_back().map_or(1, |r| r + 1);
            Payload::Revision(RevisionEvent::Recorded {
                service,
                revision,
                spec_hash: hash,
            })
        }
        Command::Rollback {
            service,
            to,
            reason,
        } => {
            let s = state
                .services
                .get(&service)
                .ok_or_else(|| E::UnknownService(service.clone()))?;
            let current = s.revision.ok_or_else(|| E::NoRevision(service.clone()))?;
            if !s.revisions.contains_key(&to) {
                return Err(E::UnknownRevision {
                    service,
                    revision: to,
                });
            }
            if to >= current {
                return Err(E::NotEarlier {
                    service,
                    to,
                    current,
                });
            }
            Payload::Revision(RevisionEvent::RolledBack {
                service,
                from: current,
                to,
                reason,
            })
        }
        Command::PlaceReplica {
            service,
            replica,
            node,
        } => {
            let s = state
                .services
                .get(&service)
                .ok_or_else(|| E::UnknownService(service.clone()))?;
            if replica >= s.spec.replicas {
                return Err(E::NoSuchReplica {
                    service,
                    replica,
                    replicas: s.spec.replicas,
                });
            }
            up_node(state, node)?;
            Payload::Placement(PlacementEvent::Placed {
                service,
                replica,
                node,
            })
        }
        Command::UnplaceReplica { service, replica } => {
            let placed = state
                .placements
                .get(&service)
                .is_some_and(|p| p.contains_key(&replica));
            if !placed {
                return Err(E::NotPlaced { service, replica });
            }
            Payload::Placement(PlacementEvent::Unplaced { service, replica })
        }
        Command::StartMigration { capsule, to } => {
            let c = live_capsule(state, &capsule)?;
            if c.node == to {
                return Err(E::SameNode {
                    capsule,
                    node: to.short(),
                });
            }
            if state
                .migrations
                .get(&capsule)
                .is_some_and(|m| m.status == MigrationStatus::InFlight)
            {
                return Err(E::MigrationInFlight(capsule));
            }
            up_node(state, to)?;
            Payload::Migration(MigrationEvent::Started {
                from: c.node,
                capsule,
                to,
            })
        }
        Command::CompleteMigration { capsule } => {
            let m = in_flight(state, &capsule)?;
            Payload::Migration(MigrationEvent::Completed {
                from: m.0,
                to: m.1,
                capsule,
            })
        }
        Command::FailMigration { capsule, reason } => {
            in_flight(state, &capsule)?;
            Payload::Migration(MigrationEvent::Failed { capsule, reason })
        }
        Command::AllocateAddress {
            network,
            capsule,
            ip,
        } => {
            let n = state
                .networks
                .get(&network)
                .ok_or_else(|| E::UnknownNetwork(network.clone()))?;
            let subnet =
                Subnet::parse(&n.subnet).ok_or_else(|| E::InvalidSubnet(n.subnet.clone()))?;
            let ip = match ip {
                Some(ip) => {
                    if !subnet.is_host(ip) {
                        return Err(E::AddressOutsideSubnet {
                            ip,
                            subnet: n.subnet.clone(),
                        });
                    }
                    if ip == n.gateway {
                        return Err(E::AddressIsGateway { ip, network });
                    }
                    if let Some(holder) = n.allocations.get(&ip) {
                        return Err(E::AddressInUse {
                            ip,
                            network,
                            holder: holder.clone(),
                        });
                    }
                    ip
                }
                None => {
                    // At most allocations + 2 candidates are looked at before a free one.
                    let first = u32::from(subnet.first_host());
                    (first..=subnet.last())
                        .map(Ipv4Addr::from)
                        .find(|ip| {
                            subnet.is_host(*ip)
                                && *ip != n.gateway
                                && !n.allocations.contains_key(ip)
                        })
                        .ok_or_else(|| E::AddressesExhausted(network.clone()))?
                }
            };
            Payload::Network(NetworkEvent::AddressAllocated {
                network,
                capsule,
                ip,
            })
        }
        Command::ReleaseAddress {
            network,
            capsule,
            ip,
        } => {
            let n = state
                .networks
                .get(&network)
                .ok_or_else(|| E::UnknownNetwork(network.clone()))?;
            if n.allocations.get(&ip) != Some(&capsule) {
                return Err(E::AddressNotHeld {
                    ip,
                    network,
                    capsule,
                });
            }
            Payload::Network(NetworkEvent::AddressReleased {
                network,
                capsule,
                ip,
            })
        }
        Command::CreateVolume {
            name,
            driver,
            labels,
        } => {
            object_name(&name)?;
            if state.volumes.contains_key(&name) {
                return Err(E::VolumeExists(name));
            }
            Payload::Volume(VolumeEvent::Created {
                name,
                driver,
                labels,
            })
        }
        Command::RemoveVolume { name } => {
            if !state.volumes.contains_key(&name) {
                return Err(E::UnknownVolume(name));
            }
            if let Some(c) = state.capsules.values().find(|c| {
                c.status != CapsuleStatus::Removed
                    && c.spec
                        .mounts
                        .iter()
                        .any(|m| crate::rules::mounted_volume(m) == Some(name.as_str()))
            }) {
                return Err(E::VolumeInUse {
                    volume: name,
                    capsule: c.id.clone(),
                });
            }
            Payload::Volume(VolumeEvent::Removed { name })
        }
        Command::CreateNetwork {
            name,
            driver,
            subnet,
            gateway,
            mtu,
        } => {
            object_name(&name)?;
            if state.networks.contains_key(&name) {
                return Err(E::NetworkExists(name));
            }
            let net = Subnet::parse(&subnet).ok_or_else(|| E::InvalidSubnet(subnet.clone()))?;
            for (other_name, other) in &state.networks {
                if Subnet::parse(&other.subnet).is_some_and(|o| o.overlaps(net)) {
                    return Err(E::SubnetOverlap {
                        subnet,
                        network: other_name.clone(),
                        other: other.subnet.clone(),
                    });
                }
            }
            let gateway = gateway.unwrap_or_else(|| net.first_host());
            if !net.is_host(gateway) {
                return Err(E::GatewayOutsideSubnet { gateway, subnet });
            }
            Payload::Network(NetworkEvent::Created {
                name,
                driver,
                subnet,
                gateway,
                mtu: if mtu == 0 { DEFAULT_MTU } else { mtu },
            })
        }
        Command::RemoveNetwork { name } => {
            let n = state
                .networks
                .get(&name)
                .ok_or_else(|| E::UnknownNetwork(name.clone()))?;
            if !n.allocations.is_empty() {
                return Err(E::NetworkInUse {
                    count: n.allocations.len(),
                    network: name,
                });
            }
            Payload::Network(NetworkEvent::Removed { name })
        }
        Command::CreateSnapshot {
            target_kind,
            target,
            name,
        } => {
            snapshot_target(state, &target_kind, &target)?;
            if !crate::rules::valid_snapshot_name(&name) {
                return Err(E::SnapshotName(name));
            }
            let k = snapshot_key(&target_kind, &target);
            if state
                .snapshots
                .get(&k)
                .is_some_and(|m| m.contains_key(&name))
            {
                return Err(E::SnapshotExists { target: k, name });
            }
            Payload::Snapshot(SnapshotEvent::Created {
                target_kind,
                target,
                name,
            })
        }
        Command::RestoreSnapshot {
            target_kind,
            target,
            name,
        } => {
            snapshot_target(state, &target_kind, &target)?;
            known_snapshot(state, &target_kind, &target, &name)?;
            if let Some(c) = restore_blocker(state, &target_kind, &target) {
                return Err(if target_kind == SNAPSHOT_CAPSULE {
                    E::RestoreRunning(target)
                } else {
                    E::RestoreVolumeInUse {
                        volume: target,
                        capsule: c.id.clone(),
                    }
                });
            }
            Payload::Snapshot(SnapshotEvent::Restored {
                target_kind,
                target,
                name,
            })
        }
        Command::RemoveSnapshot {
            target_kind,
            target,
            name,
        } => {
            known_snapshot(state, &target_kind, &target, &name)?;
            Payload::Snapshot(SnapshotEvent::Removed {
                target_kind,
                target,
                name,
            })
        }
        Command::CreateCluster {
            name,
            ca_fingerprint,
        } => {
            printable(&name)?;
            if let Some(c) = &state.cluster {
                return Err(E::ClusterExists(c.name.clone()));
            }
            Payload::Cluster(ClusterEvent::Created {
                name,
                ca_fingerprint,
            })
        }
        Command::AdmitNode { node, name, addr } => {
            printable(&name)?;
            if state.revoked.contains_key(&node) {
                return Err(E::NodeRevoked(node.short()));
            }
            if state
                .nodes
                .get(&node)
                .is_some_and(|n| n.admitted && !n.left)
            {
                return Err(E::AlreadyAdmitted(node.short()));
            }
            Payload::Cluster(ClusterEvent::Admitted { node, name, addr })
        }
        Command::RevokeNode { node, by, reason } => {
            if node == by {
                return Err(E::RevokeSelf(node.short()));
            }
            if !state.nodes.contains_key(&node) {
                return Err(E::UnknownNode(node.short()));
            }
            if state.revoked.contains_key(&node) {
                return Err(E::NodeRevoked(node.short()));
            }
            Payload::Cluster(ClusterEvent::Revoked { node, reason })
        }
        Command::LeaveCluster { node } => {
            let n = state
                .nodes
                .get(&node)
                .ok_or_else(|| E::UnknownNode(node.short()))?;
            if state.revoked.contains_key(&node) {
                return Err(E::NodeRevoked(node.short()));
            }
            if n.left {
                return Err(E::AlreadyLeft(node.short()));
            }
            Payload::Cluster(ClusterEvent::Left { node })
        }
        Command::RecordMemberDown { node } => {
            let n = state
                .nodes
                .get(&node)
                .ok_or_else(|| E::UnknownNode(node.short()))?;
            if n.down {
                return Err(E::MemberAlreadyDown(node.short()));
            }
            Payload::Cluster(ClusterEvent::MemberDown { node })
        }
        Command::RecordMemberUp { node } => {
            let n = state
                .nodes
                .get(&node)
                .ok_or_else(|| E::UnknownNode(node.short()))?;
            if !n.down {
                return Err(E::MemberNotDown(node.short()));
            }
            Payload::Cluster(ClusterEvent::MemberUp { node })
        }
    };
    Ok(vec![payload])
}

/// A snapshot target that exists: a capsule not removed, or a known volume.
fn snapshot_target(state: &State, kind: &str, target: &str) -> Result<(), DecideError> {
    match kind {
        SNAPSHOT_CAPSULE => live_capsule(state, target).map(|_| ()),
        SNAPSHOT_VOLUME => {
            if state.volumes.contains_key(target) {
                Ok(())
            } else {
                Err(DecideError::UnknownVolume(target.to_owned()))
            }
        }
        other => Err(DecideError::SnapshotKind(other.to_owned())),
    }
}

fn known_snapshot(state: &State, kind: &str, target: &str, name: &str) -> Result<(), DecideError> {
    let k = snapshot_key(kind, target);
    if state
        .snapshots
        .get(&k)
        .is_some_and(|m| m.contains_key(name))
    {
        Ok(())
    } else {
        Err(DecideError::UnknownSnapshot {
            target: k,
            name: name.to_owned(),
        })
    }
}

/// The running capsule that keeps a target from being restored: the capsule itself, or one
/// that mounts the volume (the source of a `-v NAME:/dst` spec).
fn restore_blocker<'s>(state: &'s State, kind: &str, target: &str) -> Option<&'s CapsuleInfo> {
    match kind {
        SNAPSHOT_CAPSULE => state
            .capsules
            .get(target)
            .filter(|c| c.status == CapsuleStatus::Running),
        _ => state
            .capsules
            .values()
            .filter(|c| c.status == CapsuleStatus::Running)
            .find(|c| {
                c.spec
                    .mounts
                    .iter()
                    .any(|m| crate::rules::mounted_volume(m) == Some(target))
            }),
    }
}

/// Node names, ids and image references: not empty, no control characters (their own grammar
/// is checked where they are made).
fn printable(name: &str) -> Result<(), DecideError> {
    if name.is_empty() || name.chars().any(|c| c.is_control()) {
        return Err(DecideError::InvalidName(name.to_owned()));
    }
    Ok(())
}

/// Capsule, service, volume and network names: the one rule, docker's
/// ([`crate::rules::valid_capsule_name`]), as the agent checks it.
fn object_name(name: &str) -> Result<(), DecideError> {
    if !crate::rules::valid_capsule_name(name) {
        return Err(DecideError::InvalidName(name.to_owned()));
    }
    Ok(())
}

fn up_node(state: &State, node: NodeId) -> Result<(), DecideError> {
    match state.nodes.get(&node) {
        None => Err(DecideError::UnknownNode(node.short())),
        Some(n) if !n.up => Err(DecideError::NodeNotUp(node.short())),
        Some(_) => Ok(()),
    }
}

/// A capsule that exists and is not removed.
fn live_capsule<'s>(state: &'s State, id: &str) -> Result<&'s CapsuleInfo, DecideError> {
    let c = state
        .capsules
        .get(id)
        .ok_or_else(|| DecideError::UnknownCapsule(id.to_owned()))?;
    if c.status == CapsuleStatus::Removed {
        return Err(DecideError::CapsuleRemoved(id.to_owned()));
    }
    Ok(c)
}

/// (from, to) of the capsule's migration in flight.
fn in_flight(state: &State, capsule: &str) -> Result<(NodeId, NodeId), DecideError> {
    state
        .migrations
        .get(capsule)
        .filter(|m| m.status == MigrationStatus::InFlight)
        .map(|m| (m.from, m.to))
        .ok_or_else(|| DecideError::NoMigration(capsule.to_owned()))
}
