//! Typed event payloads, versioned.
//!
//! The payload enum is encoded with bincode, which is positional: **never reorder or remove a
//! variant or a field**. To add a variant, append it at the end of its enum (old logs stay
//! readable, old readers refuse the new variant with a clear error). To change a field, bump
//! [`CURRENT_SCHEMA`], keep the old shape in [`v1`] (or a new `vN` module) and upcast it in
//! [`decode_payload`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::id::{Hash, NodeId};

/// The schema version new events are written with.
pub const CURRENT_SCHEMA: u16 = 2;

/// Every kind of change Bolt records.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    Node(NodeEvent),
    Image(ImageEvent),
    Capsule(CapsuleEvent),
    Service(ServiceEvent),
    Revision(RevisionEvent),
    Placement(PlacementEvent),
    Migration(MigrationEvent),
    Volume(VolumeEvent),
    Network(NetworkEvent),
    /// Appended after schema 2's first release: btrfs snapshots of capsule layers and volumes.
    Snapshot(SnapshotEvent),
    /// Appended after `Snapshot`: cluster membership (creation, admission, revocation, leave)
    /// and SWIM observations of members going down and coming back.
    Cluster(ClusterEvent),
}

impl Payload {
    /// A short dotted name such as `capsule.started`, for tables, metrics and filters.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Node(e) => match e {
                NodeEvent::Started { .. } => "node.started",
                NodeEvent::Stopped { .. } => "node.stopped",
            },
            Payload::Image(e) => match e {
                ImageEvent::Pulled { .. } => "image.pulled",
                ImageEvent::Tagged { .. } => "image.tagged",
                ImageEvent::Removed { .. } => "image.removed",
            },
            Payload::Capsule(e) => match e {
                CapsuleEvent::Created { .. } => "capsule.created",
                CapsuleEvent::Started { .. } => "capsule.started",
                CapsuleEvent::Exited { .. } => "capsule.exited",
                CapsuleEvent::Removed { .. } => "capsule.removed",
                CapsuleEvent::StopRequested { .. } => "capsule.stop_requested",
            },
            Payload::Service(e) => match e {
                ServiceEvent::Declared { .. } => "service.declared",
                ServiceEvent::Removed { .. } => "service.removed",
            },
            Payload::Revision(e) => match e {
                RevisionEvent::Recorded { .. } => "revision.recorded",
                RevisionEvent::RolledBack { .. } => "revision.rolled_back",
            },
            Payload::Placement(e) => match e {
                PlacementEvent::Placed { .. } => "placement.placed",
                PlacementEvent::Unplaced { .. } => "placement.unplaced",
            },
            Payload::Migration(e) => match e {
                MigrationEvent::Started { .. } => "migration.started",
                MigrationEvent::Completed { .. } => "migration.completed",
                MigrationEvent::Failed { .. } => "migration.failed",
            },
            Payload::Volume(e) => match e {
                VolumeEvent::Created { .. } => "volume.created",
                VolumeEvent::Removed { .. } => "volume.removed",
            },
            Payload::Network(e) => match e {
                NetworkEvent::Created { .. } => "network.created",
                NetworkEvent::Removed { .. } => "network.removed",
                NetworkEvent::AddressAllocated { .. } => "network.address_allocated",
                NetworkEvent::AddressReleased { .. } => "network.address_released",
            },
            Payload::Snapshot(e) => match e {
                SnapshotEvent::Created { .. } => "snapshot.created",
                SnapshotEvent::Restored { .. } => "snapshot.restored",
                SnapshotEvent::Removed { .. } => "snapshot.removed",
            },
            Payload::Cluster(e) => match e {
                ClusterEvent::Created { .. } => "cluster.created",
                ClusterEvent::Admitted { .. } => "cluster.admitted",
                ClusterEvent::Revoked { .. } => "cluster.revoked",
                ClusterEvent::Left { .. } => "cluster.left",
                ClusterEvent::MemberDown { .. } => "cluster.member_down",
                ClusterEvent::MemberUp { .. } => "cluster.member_up",
            },
        }
    }
}

/// A node joining, restarting or leaving.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeEvent {
    /// Written by the agent at every start. Schema 2 added `addr` and `labels`.
    Started {
        name: String,
        version: String,
        addr: Option<String>,
        labels: BTreeMap<String, String>,
    },
    Stopped {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageEvent {
    Pulled {
        reference: String,
        digest: String,
        config_digest: String,
        layers: Vec<String>,
        size: u64,
    },
    Tagged {
        reference: String,
        digest: String,
    },
    Removed {
        reference: String,
        digest: String,
    },
}

/// What a capsule was asked to be when it was created.
#[derive(Debug, Clone, PartialEq, Eq, Default, Encode, Decode, Serialize, Deserialize)]
pub struct CapsuleSpec {
    pub image: String,
    pub image_digest: String,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub network: String,
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u32>,
    pub pids_limit: Option<u32>,
    pub restart: String,
    pub ports: Vec<String>,
    pub mounts: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapsuleEvent {
    Created {
        id: String,
        name: String,
        spec: CapsuleSpec,
    },
    Started {
        id: String,
        pid: u32,
    },
    Exited {
        id: String,
        code: Option<i32>,
        signal: Option<i32>,
        oom: bool,
    },
    Removed {
        id: String,
    },
    /// A person stopped or killed the capsule (`bolt stop`, `bolt kill`): its restart policy
    /// leaves it alone until it is started again. Appended (schema 2) after `Removed`.
    StopRequested {
        id: String,
    },
}

/// What a service was declared to be.
#[derive(Debug, Clone, PartialEq, Eq, Default, Encode, Decode, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub replicas: u32,
    pub ports: Vec<String>,
    pub depends_on: Vec<String>,
    pub health: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceEvent {
    Declared {
        name: String,
        stack: String,
        spec: ServiceSpec,
    },
    Removed {
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevisionEvent {
    Recorded {
        service: String,
        revision: u64,
        spec_hash: Hash,
    },
    RolledBack {
        service: String,
        from: u64,
        to: u64,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementEvent {
    Placed {
        service: String,
        replica: u32,
        node: NodeId,
    },
    Unplaced {
        service: String,
        replica: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationEvent {
    Started {
        capsule: String,
        from: NodeId,
        to: NodeId,
    },
    Completed {
        capsule: String,
        from: NodeId,
        to: NodeId,
    },
    Failed {
        capsule: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeEvent {
    Created {
        name: String,
        driver: String,
        labels: BTreeMap<String, String>,
    },
    Removed {
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkEvent {
    Created {
        name: String,
        driver: String,
        subnet: String,
        gateway: Ipv4Addr,
        mtu: u32,
    },
    Removed {
        name: String,
    },
    AddressAllocated {
        network: String,
        capsule: String,
        ip: Ipv4Addr,
    },
    AddressReleased {
        network: String,
        capsule: String,
        ip: Ipv4Addr,
    },
}

/// What a snapshot is of: [`SnapshotEvent`]'s `target_kind`.
pub const SNAPSHOT_CAPSULE: &str = "capsule";
/// What a snapshot is of: [`SnapshotEvent`]'s `target_kind`.
pub const SNAPSHOT_VOLUME: &str = "volume";

/// A read-only btrfs snapshot of a capsule's writable layer or of a volume, taken, restored
/// (the target's content replaced by the snapshot's) or removed. `target_kind` is
/// [`SNAPSHOT_CAPSULE`] (then `target` is the capsule id) or [`SNAPSHOT_VOLUME`] (the volume
/// name); a string so that later kinds need no new schema.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotEvent {
    Created {
        target_kind: String,
        target: String,
        name: String,
    },
    Restored {
        target_kind: String,
        target: String,
        name: String,
    },
    Removed {
        target_kind: String,
        target: String,
        name: String,
    },
}

/// Cluster membership. `Created`, `Admitted`, `Revoked` and `Left` are decisions (one node
/// makes each); `MemberDown` and `MemberUp` are observations of the SWIM failure detector, which
/// several nodes may record for the same change (the fold takes them idempotently).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterEvent {
    /// `bolt cluster init`: the cluster's name and the fingerprint of its CA certificate. The
    /// origin is the node that created it. Only the first in total order counts.
    Created {
        name: String,
        ca_fingerprint: String,
    },
    /// A CA holder admitted `node` (it presented a valid join token), which peers reach at
    /// `addr`.
    Admitted {
        node: NodeId,
        name: String,
        addr: String,
    },
    /// `bolt node rm`: `node` is out for good. Its events with an HLC after this event's are
    /// ignored by the fold.
    Revoked { node: NodeId, reason: String },
    /// `bolt cluster leave`, written by the leaving node itself.
    Left { node: NodeId },
    /// The failure detector saw `node` die.
    MemberDown { node: NodeId },
    /// The failure detector saw `node` come back.
    MemberUp { node: NodeId },
}

/// Schema 1: the first shape of the payloads. Only `Node` differs from schema 2; every other
/// category is the current type, so its encoding is shared.
pub mod v1 {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
    pub enum PayloadV1 {
        Node(NodeEventV1),
        Image(ImageEvent),
        Capsule(CapsuleEvent),
        Service(ServiceEvent),
        Revision(RevisionEvent),
        Placement(PlacementEvent),
        Migration(MigrationEvent),
        Volume(VolumeEvent),
        Network(NetworkEvent),
    }

    #[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
    pub enum NodeEventV1 {
        Started { name: String, version: String },
        Stopped { reason: String },
    }

    /// Upcast a schema-1 payload to the current shape. Pure and total.
    pub fn upcast(p: PayloadV1) -> Payload {
        match p {
            PayloadV1::Node(NodeEventV1::Started { name, version }) => {
                Payload::Node(NodeEvent::Started {
                    name,
                    version,
                    addr: None,
                    labels: BTreeMap::new(),
                })
            }
            PayloadV1::Node(NodeEventV1::Stopped { reason }) => {
                Payload::Node(NodeEvent::Stopped { reason })
            }
            PayloadV1::Image(e) => Payload::Image(e),
            PayloadV1::Capsule(e) => Payload::Capsule(e),
            PayloadV1::Service(e) => Payload::Service(e),
            PayloadV1::Revision(e) => Payload::Revision(e),
            PayloadV1::Placement(e) => Payload::Placement(e),
            PayloadV1::Migration(e) => Payload::Migration(e),
            PayloadV1::Volume(e) => Payload::Volume(e),
            PayloadV1::Network(e) => Payload::Network(e),
        }
    }
}

/// Encode a payload at the current schema.
pub fn encode_payload(p: &Payload) -> Vec<u8> {
    codec::encode(p)
}

/// Decode payload bytes written at `schema`, upcasting old shapes to the current one.
pub fn decode_payload(schema: u16, bytes: &[u8]) -> Result<Payload, CodecError> {
    match schema {
        1 => codec::decode::<v1::PayloadV1>(bytes).map(v1::upcast),
        CURRENT_SCHEMA => codec::decode::<Payload>(bytes),
        other => Err(CodecError::UnknownSchema {
            found: other,
            newest: CURRENT_SCHEMA,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn snapshot_events_round_trip_after_every_older_variant() {
        let p = Payload::Snapshot(SnapshotEvent::Restored {
            target_kind: SNAPSHOT_VOLUME.into(),
            target: "data".into(),
            name: "before".into(),
        });
        let bytes = encode_payload(&p);
        // Appended: its variant index follows the nine older categories.
        assert_eq!(bytes[0], 9);
        assert_eq!(decode_payload(CURRENT_SCHEMA, &bytes).unwrap(), p);
        assert_eq!(p.kind(), "snapshot.restored");
        // Schema 1 never had it: refused, not misread.
        assert!(decode_payload(1, &bytes).is_err());
    }

    #[test]
    fn cluster_events_round_trip_after_snapshot_events() {
        let node = NodeId([9; 32]);
        let all = [
            (
                Payload::Cluster(ClusterEvent::Created {
                    name: "prod".into(),
                    ca_fingerprint: "sha256:ca".into(),
                }),
                "cluster.created",
            ),
            (
                Payload::Cluster(ClusterEvent::Admitted {
                    node,
                    name: "beta".into(),
                    addr: "10.0.0.2:7946".into(),
                }),
                "cluster.admitted",
            ),
            (
                Payload::Cluster(ClusterEvent::Revoked {
                    node,
                    reason: "stolen".into(),
                }),
                "cluster.revoked",
            ),
            (
                Payload::Cluster(ClusterEvent::Left { node }),
                "cluster.left",
            ),
            (
                Payload::Cluster(ClusterEvent::MemberDown { node }),
                "cluster.member_down",
            ),
            (
                Payload::Cluster(ClusterEvent::MemberUp { node }),
                "cluster.member_up",
            ),
        ];
        for (i, (p, kind)) in all.iter().enumerate() {
            let bytes = encode_payload(p);
            // Appended after the ten older categories; its own variants in declaration order.
            assert_eq!((bytes[0], bytes[1]), (10, i as u8));
            assert_eq!(&decode_payload(CURRENT_SCHEMA, &bytes).unwrap(), p);
            assert_eq!(p.kind(), *kind);
            assert!(decode_payload(1, &bytes).is_err());
        }
    }
}
