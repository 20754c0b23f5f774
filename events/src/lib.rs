//! `bolt-events`: the vocabulary and the memory of a Bolt node.
//!
//! Event types (versioned, with upcasting), ids, the hybrid logical clock, the hash-chained
//! envelope (signed at the end of each commit group: batch signatures), the node key, the
//! redb-backed append-only log with group commit, subscriptions and version vectors.
//!
//! This crate is the root of the dependency graph: it must never depend on any other Bolt crate
//! (`bolt-state`, `bolt-capsule`, `bolt-fabric`, `bolt-dns`, the agent), nor on an async runtime.

pub mod codec;
pub mod envelope;
pub mod hlc;
pub mod id;
pub mod key;
pub mod log;
pub mod payload;

pub use codec::CodecError;
pub use envelope::{Envelope, Event, OrderKey, SignatureError};
pub use hlc::{wall_clock_ms, Hlc, HlcClock};
pub use id::{Cursor, EventId, Hash, NodeId};
pub use key::{KeyError, NodeKey};
pub use log::{
    Appended, Log, LogError, LogStats, RemoteError, StoredSnapshot, VerifyReport, VersionVector,
};
pub use payload::{Payload, CURRENT_SCHEMA};
