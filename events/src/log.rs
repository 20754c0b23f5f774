//! The append-only event log on redb.
//!
//! CONTRACT STUB: the public signatures below are the API other crates code against. Bodies are
//! being implemented; keep signatures stable (add, don't change, without telling the team).

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::{Envelope, Event, OrderKey};
use crate::id::{Cursor, Hash, NodeId};
use crate::key::NodeKey;
use crate::payload::Payload;
use crate::CodecError;

/// origin -> highest sequence held, for every origin in the log.
pub type VersionVector = BTreeMap<NodeId, u64>;

/// One step that failed, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("open event log {path}: {source}")]
    Open { path: PathBuf, source: redb::DatabaseError },
    #[error("event log storage: {0}")]
    Storage(String),
    #[error("stored event at cursor {cursor} is unreadable: {source}")]
    Corrupt { cursor: u64, source: CodecError },
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("the log writer has stopped")]
    Closed,
}

/// Why an event from another origin was refused. Nothing from the refused batch is stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RemoteError {
    #[error("event {origin}#{seq} is from this node; remote appends take other origins only")]
    OwnOrigin { origin: String, seq: u64 },
    #[error("gap from {origin}: expected seq {expected}, got {got}")]
    Gap { origin: String, expected: u64, got: u64 },
    #[error("fork from {origin} at seq {seq}: prev {got} does not match our {expected}")]
    Fork { origin: String, seq: u64, expected: String, got: String },
    #[error("conflicting copy of {origin}#{seq}: same seq, different content")]
    Conflict { origin: String, seq: u64 },
    #[error(transparent)]
    Signature(#[from] crate::envelope::SignatureError),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// An event as it landed in this node's log.
#[derive(Debug, Clone)]
pub struct Appended {
    pub cursor: Cursor,
    pub event: Event,
}

/// A stored state snapshot: opaque bytes the state crate wrote, with where it was taken.
#[derive(Debug, Clone)]
pub struct StoredSnapshot {
    /// Arrival cursor up to which (inclusive) the snapshot's state includes events.
    pub cursor: Cursor,
    /// Highest total-order key folded into it.
    pub last_key: OrderKey,
    pub bytes: Vec<u8>,
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub events: u64,
    pub origins: usize,
    pub faults: Vec<String>,
}

/// The log. Cheap to clone; every clone shares one database and one group-commit writer.
#[derive(Clone)]
pub struct Log {
    _inner: Arc<()>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Log")
    }
}

#[allow(unused_variables, clippy::needless_pass_by_value)]
impl Log {
    /// Open (or create) the log at `path`, signing local events with `key`.
    pub fn open(path: &Path, key: NodeKey) -> Result<Log, LogError> {
        unimplemented!()
    }

    pub fn node_id(&self) -> NodeId {
        unimplemented!()
    }

    /// Append one local event; returns once it is durable (group commit: concurrent callers
    /// share one fsync). Blocking: call from a thread or `spawn_blocking`.
    pub fn append(&self, payload: Payload) -> Result<Appended, LogError> {
        unimplemented!()
    }

    /// Append several local events in one transaction.
    pub fn append_batch(&self, payloads: Vec<Payload>) -> Result<Vec<Appended>, LogError> {
        unimplemented!()
    }

    /// Take other origins' events: only in sequence, with a valid chain and signature. Events
    /// already held (same seq, same hash) are skipped; the rest is all-or-nothing.
    pub fn append_remote(&self, envelopes: Vec<Envelope>) -> Result<Vec<Appended>, LogError> {
        unimplemented!()
    }

    /// The highest cursor in the log (0 when empty).
    pub fn head(&self) -> Cursor {
        unimplemented!()
    }

    /// Up to `limit` events after `after`, in arrival order.
    pub fn read_after(&self, after: Cursor, limit: usize) -> Result<Vec<Appended>, LogError> {
        unimplemented!()
    }

    /// One origin's envelopes with seq in `seqs`, in order (what the mesh sends a peer).
    pub fn read_origin(
        &self,
        origin: NodeId,
        seqs: RangeInclusive<u64>,
    ) -> Result<Vec<Envelope>, LogError> {
        unimplemented!()
    }

    /// Every event with cursor <= `upto`, in the global total order (HLC, origin, seq).
    pub fn read_total_order(&self, upto: Cursor) -> Result<Vec<Appended>, LogError> {
        unimplemented!()
    }

    pub fn version_vector(&self) -> Result<VersionVector, LogError> {
        unimplemented!()
    }

    /// The chain tip of an origin: (seq, hash).
    pub fn tip(&self, origin: NodeId) -> Result<Option<(u64, Hash)>, LogError> {
        unimplemented!()
    }

    /// Block until the head passes `after` or `timeout` ends; returns the head.
    pub fn wait_past(&self, after: Cursor, timeout: Duration) -> Cursor {
        unimplemented!()
    }

    /// Call `f` with the new head after every commit (the agent bridges this to async).
    pub fn on_commit(&self, f: Box<dyn Fn(Cursor) + Send + Sync>) {
        unimplemented!()
    }

    pub fn put_snapshot(&self, snapshot: StoredSnapshot) -> Result<(), LogError> {
        unimplemented!()
    }

    /// Stored snapshots, newest (highest cursor) first.
    pub fn snapshots(&self) -> Result<Vec<StoredSnapshot>, LogError> {
        unimplemented!()
    }

    /// Check every chain link and signature in the log.
    pub fn verify(&self) -> Result<VerifyReport, LogError> {
        unimplemented!()
    }
}
