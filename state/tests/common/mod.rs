//! Helpers shared by the state tests: signed events from test origins, sorted folds.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use bolt_events::payload::{CapsuleEvent, CapsuleSpec, NetworkEvent, NodeEvent};
use bolt_events::{Envelope, Event, Hash, Hlc, NodeId, NodeKey, Payload};
use bolt_state::{apply, State};

/// A test node that seals its own chained events.
pub struct Origin {
    key: Option<NodeKey>,
    id: NodeId,
    pub seq: u64,
    prev: Hash,
}

impl Origin {
    pub fn new(seed: u8) -> Origin {
        let key = NodeKey::from_seed([seed; 32]);
        Origin {
            id: key.id(),
            key: Some(key),
            seq: 0,
            prev: Hash::ZERO,
        }
    }

    /// An origin with a made-up id that can only make [`Origin::unsigned`] events (deriving a
    /// real key is slow in a debug build).
    pub fn fake(seed: u8) -> Origin {
        Origin {
            key: None,
            id: NodeId([seed; 32]),
            seq: 0,
            prev: Hash::ZERO,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn envelope(&mut self, hlc: u64, payload: &Payload) -> Envelope {
        self.seq += 1;
        let key = self.key.as_ref().expect("a fake origin cannot sign");
        let env = key.seal(self.seq, Hlc(hlc), self.prev, payload);
        self.prev = env.hash();
        env
    }

    /// The next event of this origin at `hlc`, unsigned (the fold never checks signatures;
    /// signing in a debug build is slow, and property tests make thousands of events).
    pub fn unsigned(&mut self, hlc: u64, payload: Payload) -> Event {
        self.seq += 1;
        let env = Envelope {
            format: bolt_events::envelope::FORMAT,
            origin: self.id(),
            seq: self.seq,
            hlc: Hlc(hlc),
            schema: bolt_events::CURRENT_SCHEMA,
            prev: self.prev,
            payload: bolt_events::payload::encode_payload(&payload),
            sig: None,
        };
        self.prev = env.hash();
        Event::from_bytes(&env.to_bytes()).unwrap()
    }

    /// The next event of this origin at `hlc`.
    pub fn event(&mut self, hlc: u64, payload: Payload) -> Event {
        let env = self.envelope(hlc, &payload);
        Event::from_bytes(&env.to_bytes()).unwrap()
    }
}

/// The fold of `events` sorted by total order.
pub fn fold_sorted(events: &[Event]) -> State {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| e.order_key());
    let mut s = State::default();
    for e in sorted {
        apply(&mut s, e);
    }
    s
}

/// Fold payloads from one origin (seed 1), at hlc 1, 2, 3...
pub fn given(payloads: Vec<Payload>) -> State {
    let mut a = Origin::new(1);
    let mut s = State::default();
    for (i, p) in payloads.into_iter().enumerate() {
        apply(&mut s, &a.event(i as u64 + 1, p));
    }
    s
}

pub fn spec(image: &str) -> CapsuleSpec {
    CapsuleSpec {
        image: image.into(),
        image_digest: format!("sha256:{image}"),
        command: vec!["/bin/sh".into(), "-c".into(), "sleep 1".into()],
        network: "bolt0".into(),
        restart: "no".into(),
        ..CapsuleSpec::default()
    }
}

pub fn node_started(name: &str) -> Payload {
    Payload::Node(NodeEvent::Started {
        name: name.into(),
        version: "0.1.0".into(),
        addr: None,
        labels: BTreeMap::new(),
    })
}

pub fn created(id: &str, name: &str) -> Payload {
    Payload::Capsule(CapsuleEvent::Created {
        id: id.into(),
        name: name.into(),
        spec: spec("alpine"),
    })
}

pub fn started(id: &str, pid: u32) -> Payload {
    Payload::Capsule(CapsuleEvent::Started { id: id.into(), pid })
}

pub fn exited(id: &str, code: i32) -> Payload {
    Payload::Capsule(CapsuleEvent::Exited {
        id: id.into(),
        code: Some(code),
        signal: None,
        oom: false,
    })
}

pub fn removed(id: &str) -> Payload {
    Payload::Capsule(CapsuleEvent::Removed { id: id.into() })
}

pub fn network(name: &str, subnet: &str, gateway: [u8; 4]) -> Payload {
    Payload::Network(NetworkEvent::Created {
        name: name.into(),
        driver: "bridge".into(),
        subnet: subnet.into(),
        gateway: gateway.into(),
        mtu: 1500,
    })
}

pub fn allocated(net: &str, capsule: &str, ip: [u8; 4]) -> Payload {
    Payload::Network(NetworkEvent::AddressAllocated {
        network: net.into(),
        capsule: capsule.into(),
        ip: ip.into(),
    })
}
