//! The replica folds in total order whatever the arrival order: random interleavings of several
//! origins give one state, equal to the sorted fold; late events rewind.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use bolt_events::payload::{
    ClusterEvent, ImageEvent, MigrationEvent, NetworkEvent, NodeEvent, PlacementEvent,
    RevisionEvent, ServiceEvent, ServiceSpec, VolumeEvent,
};
use bolt_events::{Appended, Cursor, Event, Hash, NodeId, Payload};
use bolt_state::{Replica, State};
use common::*;
use proptest::prelude::*;

const CAPSULES: [&str; 3] = ["c0", "c1", "c2"];
const NAMES: [&str; 2] = ["web", "db"];
const NETS: [&str; 2] = ["n0", "n1"];

/// A payload from a small vocabulary, so that events of different origins collide (same
/// capsule, same address, same network...) and their order matters.
fn payload(kind: u8, a: usize, b: usize, n: u32, nodes: &[NodeId]) -> Payload {
    let cap = CAPSULES[a % CAPSULES.len()].to_string();
    let net = NETS[b % NETS.len()].to_string();
    let node = nodes[b % nodes.len()];
    let svc = NAMES[a % NAMES.len()].to_string();
    match kind {
        0 => node_started(NAMES[b % 2]),
        1 => Payload::Node(NodeEvent::Stopped { reason: "r".into() }),
        2 | 3 => created(&cap, NAMES[b % 2]),
        4 | 5 => started(&cap, n),
        6 => exited(&cap, n as i32),
        7 => removed(&cap),
        8 => network(
            &net,
            &format!("10.{}.0.0/16", b % 2),
            [10, (b % 2) as u8, 0, 1],
        ),
        9 => Payload::Network(NetworkEvent::Removed { name: net }),
        10 | 11 => allocated(&net, &cap, [10, (b % 2) as u8, 0, (n % 3) as u8 + 2]),
        12 => Payload::Network(NetworkEvent::AddressReleased {
            network: net,
            capsule: cap,
            ip: [10, (b % 2) as u8, 0, (n % 3) as u8 + 2].into(),
        }),
        13 => Payload::Service(ServiceEvent::Declared {
            name: svc,
            stack: "s".into(),
            spec: ServiceSpec {
                image: format!("img:{n}"),
                replicas: 2,
                ..ServiceSpec::default()
            },
        }),
        14 => Payload::Service(ServiceEvent::Removed { name: svc }),
        15 => Payload::Revision(RevisionEvent::Recorded {
            service: svc,
            revision: u64::from(n % 3),
            spec_hash: Hash::ZERO,
        }),
        16 => Payload::Revision(RevisionEvent::RolledBack {
            service: svc,
            from: 2,
            to: u64::from(n % 3),
            reason: "r".into(),
        }),
        17 => Payload::Placement(PlacementEvent::Placed {
            service: svc,
            replica: n % 2,
            node,
        }),
        18 => Payload::Placement(PlacementEvent::Unplaced {
            service: svc,
            replica: n % 2,
        }),
        19 => Payload::Migration(MigrationEvent::Started {
            capsule: cap,
            from: nodes[0],
            to: node,
        }),
        20 => Payload::Migration(MigrationEvent::Completed {
            capsule: cap,
            from: nodes[0],
            to: node,
        }),
        21 => Payload::Migration(MigrationEvent::Failed {
            capsule: cap,
            reason: "r".into(),
        }),
        22 => Payload::Volume(VolumeEvent::Created {
            name: net,
            driver: "local".into(),
            labels: BTreeMap::new(),
        }),
        23 => Payload::Volume(VolumeEvent::Removed { name: net }),
        24 => Payload::Image(ImageEvent::Pulled {
            reference: format!("img:{}", n % 2),
            digest: format!("d{b}"),
            config_digest: "c".into(),
            layers: vec![],
            size: 1,
        }),
        25 => Payload::Image(ImageEvent::Tagged {
            reference: format!("img:{}", n % 2),
            digest: format!("d{b}"),
        }),
        26 => Payload::Image(ImageEvent::Removed {
            reference: format!("img:{}", n % 2),
            digest: format!("d{b}"),
        }),
        // Cluster membership: a revocation makes every later event of its node a no-op, which
        // must hold whatever order the revocation and those events arrive in.
        27 => Payload::Cluster(ClusterEvent::Created {
            name: NAMES[a % 2].into(),
            ca_fingerprint: format!("ca{n}"),
        }),
        28 => Payload::Cluster(ClusterEvent::Admitted {
            node,
            name: NAMES[a % 2].into(),
            addr: format!("10.0.0.{n}:7946"),
        }),
        29 => Payload::Cluster(ClusterEvent::Revoked {
            node,
            reason: "r".into(),
        }),
        30 => Payload::Cluster(ClusterEvent::Left { node }),
        31 => Payload::Cluster(ClusterEvent::MemberDown { node }),
        _ => Payload::Cluster(ClusterEvent::MemberUp { node }),
    }
}

/// Per origin: (hlc step, payload choice) for each of its events.
type Script = Vec<Vec<(u64, (u8, usize, usize, u32))>>;

fn script() -> impl Strategy<Value = Script> {
    let event = (1u64..6, (0u8..33, 0usize..3, 0usize..3, 0u32..6));
    prop::collection::vec(prop::collection::vec(event, 0..14), 2..5)
}

/// Every origin's events, each origin's in its own (seq and HLC) order.
fn build(script: &Script) -> Vec<Vec<Event>> {
    let mut origins: Vec<Origin> = (0..script.len())
        .map(|i| Origin::fake(i as u8 + 1))
        .collect();
    let ids: Vec<NodeId> = origins.iter().map(Origin::id).collect();
    let mut out = Vec::new();
    for (o, events) in origins.iter_mut().zip(script) {
        let mut hlc = 0;
        let mut evs = Vec::new();
        for (step, (k, a, b, n)) in events {
            hlc += step;
            evs.push(o.unsigned(hlc, payload(*k, *a, *b, *n, &ids)));
        }
        out.push(evs);
    }
    out
}

/// Interleave origins' events following `picks` (indexes into origins, each origin's order
/// kept); the remainder follows in origin order.
fn interleave(per_origin: &[Vec<Event>], picks: &[usize]) -> Vec<Event> {
    let mut next = vec![0usize; per_origin.len()];
    let mut out = Vec::new();
    for &p in picks {
        let o = p % per_origin.len();
        if let Some(e) = per_origin[o].get(next[o]) {
            out.push(e.clone());
            next[o] += 1;
        }
    }
    for (o, evs) in per_origin.iter().enumerate() {
        out.extend(evs[next[o]..].iter().cloned());
    }
    out
}

fn ingest_all(replica: &mut Replica, arrival: &[Event]) {
    for (i, event) in arrival.iter().enumerate() {
        replica.ingest(&Appended {
            cursor: Cursor(i as u64 + 1),
            event: event.clone(),
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_interleaving_folds_to_the_sorted_fold(
        script in script(),
        picks_a in prop::collection::vec(0usize..4, 0..60),
        picks_b in prop::collection::vec(0usize..4, 0..60),
    ) {
        let per_origin = build(&script);
        let all: Vec<Event> = per_origin.iter().flatten().cloned().collect();
        let expected = fold_sorted(&all);

        let mut a = Replica::new();
        ingest_all(&mut a, &interleave(&per_origin, &picks_a));
        let mut b = Replica::new();
        ingest_all(&mut b, &interleave(&per_origin, &picks_b));

        prop_assert!(a.is_exact() && b.is_exact());
        prop_assert_eq!(a.state(), &expected);
        prop_assert_eq!(a.state().hash(), expected.hash());
        prop_assert_eq!(b.state().hash(), expected.hash());
        prop_assert_eq!(a.last_key(), expected.last_key);
        prop_assert_eq!(a.cursor(), Cursor(all.len() as u64));
    }

    #[test]
    fn a_small_window_is_exact_whenever_it_says_so(
        script in script(),
        picks in prop::collection::vec(0usize..4, 0..60),
        window in 1usize..6,
    ) {
        let per_origin = build(&script);
        let all: Vec<Event> = per_origin.iter().flatten().cloned().collect();
        let mut r = Replica::with_window(window);
        ingest_all(&mut r, &interleave(&per_origin, &picks));
        if r.is_exact() {
            prop_assert_eq!(r.state(), &fold_sorted(&all));
        } else {
            prop_assert!(!r.warnings().is_empty());
        }
    }
}

#[test]
fn a_late_event_is_folded_in_its_place_and_changes_the_outcome() {
    let mut a = Origin::new(1);
    let mut b = Origin::new(2);
    let early = [
        a.event(10, network("bolt0", "10.88.0.0/16", [10, 88, 0, 1])),
        a.event(30, allocated("bolt0", "from-a", [10, 88, 0, 9])),
        a.event(40, created("c1", "web")),
    ];
    let late = b.event(20, allocated("bolt0", "from-b", [10, 88, 0, 9]));

    let mut r = Replica::new();
    ingest_all(&mut r, &early);
    let ip = [10, 88, 0, 9].into();
    assert_eq!(r.state().networks["bolt0"].allocations[&ip], "from-a");

    r.ingest(&Appended {
        cursor: Cursor(4),
        event: late.clone(),
    });
    assert_eq!(r.state().networks["bolt0"].allocations[&ip], "from-b");
    assert_eq!(r.state().ignored, 1, "a's allocation now comes second");
    let stats = r.stats();
    assert_eq!((stats.late, stats.refolded, stats.rebuilds), (1, 2, 0));
    let mut all = early.to_vec();
    all.push(late);
    assert_eq!(r.state(), &fold_sorted(&all));
    assert_eq!(r.last_key(), all[2].order_key());
}

#[test]
fn an_event_already_ingested_is_skipped() {
    let mut a = Origin::new(1);
    let events = [
        a.event(1, created("c1", "web")),
        a.event(2, started("c1", 5)),
    ];
    let mut r = Replica::new();
    ingest_all(&mut r, &events);
    let before = r.state().clone();
    ingest_all(&mut r, &events);
    assert_eq!(r.state(), &before);
    assert_eq!(r.stats().duplicates, 2);
}

#[test]
fn outrunning_the_window_without_a_log_is_flagged() {
    let mut a = Origin::new(1);
    let mut b = Origin::new(2);
    let events: Vec<Event> = (1..=5)
        .map(|i| a.event(i * 10, created(&format!("c{i}"), &format!("n{i}"))))
        .collect();
    let mut r = Replica::with_window(2);
    ingest_all(&mut r, &events);
    assert!(r.is_exact());
    r.ingest(&Appended {
        cursor: Cursor(6),
        event: b.event(5, created("x", "x")),
    });
    assert!(!r.is_exact());
    assert_eq!(r.warnings().len(), 1);
    assert!(r.state().capsules.contains_key("x"));

    // Within the window it stays exact.
    let mut r = Replica::with_window(2);
    ingest_all(&mut r, &events);
    let late = b.event(45, created("y", "y"));
    r.ingest(&Appended {
        cursor: Cursor(6),
        event: late.clone(),
    });
    assert!(r.is_exact());
    let mut all = events.clone();
    all.push(late);
    assert_eq!(r.state(), &fold_sorted(&all));
}

#[test]
fn an_empty_replica_is_the_default_state() {
    let r = Replica::new();
    assert_eq!(r.state(), &State::default());
    assert_eq!(r.cursor(), Cursor(0));
}

#[test]
fn rewinding_across_forgotten_tombstones_is_exact() {
    let mut a = Origin::fake(1);
    let mut b = Origin::fake(2);
    let mut events = Vec::new();
    for i in 0..bolt_state::REMOVED_RETAINED as u64 + 40 {
        let id = format!("c{i}");
        events.push(a.unsigned(10 * i + 1, created(&id, "web")));
        events.push(a.unsigned(10 * i + 2, removed(&id)));
    }
    // Late: re-creates c0 (forgotten by the end, but not when the late event sorts) and
    // removes one that is still remembered, both sorting 30 capsules before the end.
    let at = 10 * (bolt_state::REMOVED_RETAINED as u64 + 10);
    let late = vec![
        b.unsigned(at, created("c0", "again")),
        b.unsigned(at + 5, removed("c3")),
    ];
    let mut r = Replica::new();
    ingest_all(&mut r, &events);
    for (i, e) in late.iter().enumerate() {
        r.ingest(&Appended {
            cursor: Cursor((events.len() + i + 1) as u64),
            event: e.clone(),
        });
    }
    assert_eq!(r.stats().late, 2);
    events.extend(late);
    assert_eq!(r.state(), &fold_sorted(&events));
}

/// A capsule spec of about `len` bytes of strings.
fn long_spec(i: usize, len: usize) -> bolt_events::payload::CapsuleSpec {
    bolt_events::payload::CapsuleSpec {
        image: format!("registry.local/app:{i}"),
        env: vec![format!("PAD={}", "x".repeat(len))],
        ..spec("app")
    }
}

#[test]
fn a_long_run_with_late_events_stays_exact_in_a_small_window() {
    // About 1.5 MB of payloads through a window of 64 events: the replica's buffer of kept
    // payload bytes drops its front and compacts many times while every tenth event of the
    // second origin arrives up to five positions late.
    let mut a = Origin::fake(1);
    let mut b = Origin::fake(2);
    let mut events = Vec::new();
    for i in 0..2500u64 {
        let (o, other) = if i % 2 == 0 {
            (&mut a, "a")
        } else {
            (&mut b, "b")
        };
        let id = format!("{other}{}", i / 4);
        let p = if i % 4 < 2 {
            Payload::Capsule(bolt_events::payload::CapsuleEvent::Created {
                id,
                name: format!("n{i}"),
                spec: long_spec(i as usize, 500 + (i as usize * 37) % 400),
            })
        } else {
            removed(&id)
        };
        events.push(o.unsigned(10 * i + 1, p));
    }
    let mut arrival = events.clone();
    for i in (0..arrival.len().saturating_sub(6)).step_by(10) {
        if i % 20 == 10 {
            let late = arrival.remove(i);
            arrival.insert(i + 1 + i % 5, late);
        }
    }
    assert_ne!(arrival, events);
    let mut r = Replica::with_window(64);
    ingest_all(&mut r, &arrival);
    assert!(r.is_exact(), "{:?}", r.warnings());
    assert!(r.stats().late > 100, "{:?}", r.stats());
    assert_eq!(r.state(), &fold_sorted(&events));
    assert_eq!(r.state().hash(), fold_sorted(&events).hash());
}
