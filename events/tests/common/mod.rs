//! Helpers shared by the log tests: keys, payloads, a remote node that seals chained envelopes.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

use bolt_events::payload::{CapsuleEvent, NodeEvent};
use bolt_events::{Envelope, Hash, Hlc, Log, NodeKey, Payload};

/// A key from a one-byte seed, so tests can name nodes.
pub fn key(n: u8) -> NodeKey {
    NodeKey::from_seed([n; 32])
}

/// A small payload that differs for every `i`.
pub fn payload(i: u64) -> Payload {
    Payload::Capsule(CapsuleEvent::Started {
        id: format!("capsule-{i}"),
        pid: i as u32,
    })
}

pub fn node_started(name: &str) -> Payload {
    Payload::Node(NodeEvent::Started {
        name: name.into(),
        version: "0.1.0".into(),
        addr: None,
        labels: Default::default(),
    })
}

/// A fresh log in a temp dir, with the key of seed `n`.
pub fn temp_log(n: u8) -> (tempfile::TempDir, PathBuf, Log) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let log = Log::open(&path, key(n)).unwrap();
    (dir, path, log)
}

/// Another node, sealing its own chain of events.
pub struct Remote {
    pub key: NodeKey,
    pub seq: u64,
    pub prev: Hash,
    pub wall_ms: u64,
}

impl Remote {
    pub fn new(n: u8) -> Remote {
        Remote {
            key: key(n),
            seq: 0,
            prev: Hash::ZERO,
            wall_ms: 1_000,
        }
    }

    /// The next event of this node's chain.
    pub fn next(&mut self, p: &Payload) -> Envelope {
        self.seq += 1;
        self.wall_ms += 1;
        let env = self
            .key
            .seal(self.seq, Hlc::new(self.wall_ms, 0), self.prev, p);
        self.prev = env.hash();
        env
    }

    /// The next event of the chain, without moving the chain (to tamper with it).
    pub fn clone_chain_step(&self) -> Envelope {
        self.key.seal(
            self.seq + 1,
            Hlc::new(self.wall_ms + 1, 0),
            self.prev,
            &payload(self.seq + 1),
        )
    }

    /// The next event of this node's chain, unsigned: the middle of a run.
    pub fn next_unsigned(&mut self, p: &Payload) -> Envelope {
        self.seq += 1;
        self.wall_ms += 1;
        let env = self
            .key
            .seal_unsigned(self.seq, Hlc::new(self.wall_ms, 0), self.prev, p);
        self.prev = env.hash();
        env
    }

    /// The next `n` events as one run, as a node's commit group writes them: only the last
    /// one signed.
    pub fn run(&mut self, n: u64) -> Vec<Envelope> {
        (1..=n)
            .map(|i| {
                let p = payload(self.seq + 1);
                if i == n {
                    self.next(&p)
                } else {
                    self.next_unsigned(&p)
                }
            })
            .collect()
    }

    /// The next `n` events, each signed (each its own run).
    pub fn chain(&mut self, n: u64) -> Vec<Envelope> {
        (0..n)
            .map(|i| self.next(&payload(self.seq + i + 1)))
            .collect()
    }
}
