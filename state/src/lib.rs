//! `bolt-state`: the pure, deterministic fold of events into cluster state.
//!
//! [`apply`] folds one event, [`decide`] turns an intent into events, the [`Replica`] keeps a
//! node's state in the global total order even when events arrive late, with snapshots stored
//! beside the log, and [`state_at`] travels back to any cursor. See `docs/state.md`.
//!
//! No I/O but what the event log gives it. It must never depend on `bolt-capsule`,
//! `bolt-fabric`, `bolt-dns` or the agent.

mod apply;
mod decide;
mod keymap;
mod model;
mod replica;
pub mod rules;
mod snapshot;
mod spare;

pub use apply::{apply, Misfit};
pub use decide::{decide, spec_hash, Command, DecideError, Refusal, Subnet, DEFAULT_MTU};
pub use keymap::{KeyMap, NodeIdHash, NodeIdHasher, Tombstones};
pub use model::{is_revoked, revoked_since, snapshot_key};
pub use model::{
    CapsuleInfo, CapsuleStatus, ClusterInfo, ExitInfo, Ignored, ImageInfo, MigrationInfo,
    MigrationStatus, NetworkInfo, NodeInfo, RevisionInfo, RevokedInfo, RollbackInfo, ServiceInfo,
    SnapshotInfo, State, VolumeInfo, REMOVED_RETAINED,
};
pub use replica::{state_at, Replica, ReplicaError, ReplicaStats, DEFAULT_WINDOW};
pub use snapshot::{decode_state, encode_state, SnapshotError, SNAPSHOT_FORMAT};
