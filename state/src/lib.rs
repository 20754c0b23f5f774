//! `bolt-state`: the pure, deterministic fold of events into cluster state.
//!
//! `apply(&mut State, &Event)` folds, `decide(&State, Command)` turns an intent into events, the
//! [`Replica`] keeps a node's state in the global total order even when events arrive late, with
//! snapshots stored beside the log, and `state_at` travels back to any cursor.
//!
//! No I/O but what the event log gives it. It must never depend on `bolt-capsule`, `bolt-fabric`,
//! `bolt-dns` or the agent.
//!
//! CONTRACT STUB: signatures below are what the agent codes against; bodies being implemented.

use std::collections::BTreeMap;

use bolt_events::{Appended, Cursor, Event, Hash, Log, LogError, NodeId, OrderKey, Payload};
use serde::{Deserialize, Serialize};

/// The whole derived state of the cluster as this node knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Number of events folded.
    pub applied: u64,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub version: String,
    pub starts: u64,
    pub up: bool,
}

/// An intent, checked against state by [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    StartNode { name: String, version: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    #[error("{0}")]
    Rejected(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("snapshot at cursor {cursor} is unreadable: {reason}")]
    Snapshot { cursor: u64, reason: String },
}

/// Fold one event into state. Pure and total: an event that does not fit is ignored, never panics.
pub fn apply(state: &mut State, event: &Event) {
    let _ = (state, event);
    unimplemented!()
}

/// Turn an intent into the events that carry it out, or refuse it.
pub fn decide(state: &State, cmd: Command) -> Result<Vec<Payload>, DecideError> {
    let _ = (state, cmd);
    unimplemented!()
}

impl State {
    /// A hash of the whole state, equal on every node that folded the same events.
    pub fn hash(&self) -> Hash {
        unimplemented!()
    }
}

/// A node's live state: folds events in total order, re-deriving when one arrives late.
#[derive(Debug, Default)]
pub struct Replica {
    _p: (),
}

#[allow(unused_variables)]
impl Replica {
    pub fn new() -> Replica {
        Replica::default()
    }

    /// Rebuild from the newest usable snapshot in the log plus the events after it.
    pub fn restore(log: &Log) -> Result<Replica, ReplicaError> {
        unimplemented!()
    }

    /// Take the next event in arrival order (cursor order).
    pub fn ingest(&mut self, appended: &Appended) {
        unimplemented!()
    }

    pub fn state(&self) -> &State {
        unimplemented!()
    }

    /// Highest cursor ingested.
    pub fn cursor(&self) -> Cursor {
        unimplemented!()
    }

    /// Highest total-order key folded.
    pub fn last_key(&self) -> OrderKey {
        unimplemented!()
    }

    /// Store a snapshot in the log if `every` events passed since the last one. Returns whether
    /// it stored one.
    pub fn maybe_snapshot(&mut self, log: &Log, every: u64) -> Result<bool, ReplicaError> {
        unimplemented!()
    }
}

/// Time travel: the state this node had right after ingesting `cursor`.
pub fn state_at(log: &Log, cursor: Cursor) -> Result<State, ReplicaError> {
    let _ = (log, cursor);
    unimplemented!()
}
