//! Fuzz the mesh's replication frames as a peer sends them: `Message::from_bytes`, then every
//! event inside through a replicator on an in-memory store (decode, reorder buffer, chain).
//!
//! Run: `cargo +nightly fuzz run mesh_frame` from `fabric/`.
#![no_main]

use std::time::Instant;

use bolt_events::NodeId;
use bolt_fabric::frame::Message;
use bolt_fabric::replicate::{ReplicationConfig, Replicator};
use bolt_fabric::sim::MemStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::from_bytes(data) else {
        return;
    };
    let now = Instant::now();
    let mut rep = Replicator::new(
        NodeId([1; 32]),
        Default::default(),
        ReplicationConfig::default(),
        7,
        now,
    );
    rep.set_peers([NodeId([2; 32]), NodeId([3; 32])]);
    let mut store = MemStore::new(true);
    let _ = rep.on_message(&mut store, NodeId([2; 32]), msg, now);
});
