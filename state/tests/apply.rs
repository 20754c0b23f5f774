//! `apply`: what each event does to the state, what it does when it does not fit, and the
//! properties of the state itself (hash, JSON).
#![allow(clippy::unwrap_used)]

mod common;

use bolt_events::payload::{
    ImageEvent, MigrationEvent, NetworkEvent, NodeEvent, PlacementEvent, RevisionEvent,
    ServiceEvent, ServiceSpec,
};
use bolt_events::{Hash, Payload};
use bolt_state::{apply, CapsuleStatus, ExitInfo, MigrationStatus, State, REMOVED_RETAINED};
use common::*;

#[test]
fn a_capsule_goes_through_its_lifecycle() {
    let me = Origin::new(1).id();
    let s = given(vec![created("c1", "web")]);
    let c = &s.capsules["c1"];
    assert_eq!(
        (c.status, c.node, c.name.as_str()),
        (CapsuleStatus::Created, me, "web")
    );

    let s = given(vec![created("c1", "web"), started("c1", 42)]);
    let c = &s.capsules["c1"];
    assert_eq!(
        (c.status, c.pid, c.restarts),
        (CapsuleStatus::Running, Some(42), 0)
    );

    let s = given(vec![
        created("c1", "web"),
        started("c1", 42),
        exited("c1", 3),
        started("c1", 43),
    ]);
    let c = &s.capsules["c1"];
    assert_eq!(
        (c.status, c.pid, c.restarts),
        (CapsuleStatus::Running, Some(43), 1)
    );
    assert_eq!(
        c.exit,
        Some(ExitInfo {
            code: Some(3),
            signal: None,
            oom: false
        })
    );

    let s = given(vec![created("c1", "web"), started("c1", 42), removed("c1")]);
    let c = &s.capsules["c1"];
    assert_eq!((c.status, c.pid), (CapsuleStatus::Removed, None));
    assert_eq!((s.applied, s.ignored), (3, 0));
}

#[test]
fn an_event_that_does_not_fit_is_counted_recorded_and_changes_nothing_else() {
    let before = given(vec![created("c1", "web")]);
    let after = given(vec![created("c1", "web"), started("c9", 1)]);
    assert_eq!(after.applied, 2);
    assert_eq!(after.ignored, 1);
    let why = after.last_ignored.as_ref().unwrap();
    assert_eq!(why.kind, "capsule.started");
    assert_eq!(why.reason, "capsule c9 is not known");
    assert_eq!(after.capsules, before.capsules);

    // Each misfit: duplicate id, start of a running capsule, exit of an exited one, a second
    // removal, and events on a removed capsule.
    for (events, misfits) in [
        (vec![created("c1", "a"), created("c1", "b")], 1),
        (
            vec![created("c1", "a"), started("c1", 1), started("c1", 2)],
            1,
        ),
        (
            vec![created("c1", "a"), exited("c1", 1), exited("c1", 2)],
            1,
        ),
        (
            vec![
                created("c1", "a"),
                removed("c1"),
                removed("c1"),
                started("c1", 1),
            ],
            2,
        ),
    ] {
        let n = events.len() as u64;
        let s = given(events);
        assert_eq!((s.applied, s.ignored), (n, misfits));
    }
    assert_eq!(
        given(vec![created("c1", "a"), created("c1", "b")]).capsules["c1"].name,
        "a"
    );
}

#[test]
fn nodes_count_starts_and_are_seen_at_their_latest_event() {
    let mut a = Origin::new(1);
    let mut s = State::default();
    apply(&mut s, &a.event(10, node_started("n1")));
    apply(&mut s, &a.event(20, created("c1", "x")));
    apply(&mut s, &a.event(30, node_started("n1")));
    let n = &s.nodes[&a.id()];
    assert_eq!((n.starts, n.up, n.last_seen.0), (2, true, 30));
    apply(
        &mut s,
        &a.event(
            40,
            Payload::Node(NodeEvent::Stopped {
                reason: "shutdown".into(),
            }),
        ),
    );
    let n = &s.nodes[&a.id()];
    assert_eq!(
        (n.up, n.stop_reason.as_deref(), n.last_seen.0),
        (false, Some("shutdown"), 40)
    );

    // A stop from a node that never started does not fit.
    let mut b = Origin::new(2);
    apply(
        &mut s,
        &b.event(50, Payload::Node(NodeEvent::Stopped { reason: "x".into() })),
    );
    assert_eq!(s.ignored, 1);
    assert!(!s.nodes.contains_key(&b.id()));
}

fn pulled(reference: &str, digest: &str) -> Payload {
    Payload::Image(ImageEvent::Pulled {
        reference: reference.into(),
        digest: digest.into(),
        config_digest: "sha256:cfg".into(),
        layers: vec!["sha256:l1".into()],
        size: 100,
    })
}

#[test]
fn a_reference_points_at_one_image_and_an_image_goes_when_no_node_holds_it() {
    let s = given(vec![pulled("app:1", "d1"), pulled("app:1", "d2")]);
    assert_eq!(s.image_refs["app:1"], "d2");
    assert!(s.images["d1"].references.is_empty());
    assert!(s.images["d2"].references.contains("app:1"));

    let s = given(vec![
        pulled("app:1", "d1"),
        Payload::Image(ImageEvent::Tagged {
            reference: "app:latest".into(),
            digest: "d1".into(),
        }),
    ]);
    assert_eq!(s.images["d1"].references.len(), 2);

    let mut a = Origin::new(1);
    let mut b = Origin::new(2);
    let mut s = State::default();
    apply(&mut s, &a.event(1, pulled("app:1", "d1")));
    apply(&mut s, &b.event(2, pulled("app:1", "d1")));
    let rm = || {
        Payload::Image(ImageEvent::Removed {
            reference: "app:1".into(),
            digest: "d1".into(),
        })
    };
    apply(&mut s, &a.event(3, rm()));
    assert_eq!(s.images["d1"].nodes.len(), 1);
    apply(&mut s, &b.event(4, rm()));
    assert!(s.images.is_empty());
    assert!(s.image_refs.is_empty());
    apply(&mut s, &b.event(5, rm()));
    assert_eq!(s.ignored, 1);
}

#[test]
fn concurrent_allocations_of_one_address_go_to_the_first_in_total_order() {
    let mut a = Origin::new(1);
    let mut b = Origin::new(2);
    let events = vec![
        a.event(1, network("bolt0", "10.88.0.0/16", [10, 88, 0, 1])),
        b.event(5, allocated("bolt0", "from-b", [10, 88, 0, 9])),
        a.event(7, allocated("bolt0", "from-a", [10, 88, 0, 9])),
    ];
    let s = fold_sorted(&events);
    assert_eq!(
        s.networks["bolt0"].allocations[&[10, 88, 0, 9].into()],
        "from-b"
    );
    assert_eq!(s.ignored, 1);

    let release = |who: &str| {
        Payload::Network(NetworkEvent::AddressReleased {
            network: "bolt0".into(),
            capsule: who.into(),
            ip: [10, 88, 0, 9].into(),
        })
    };
    let mut s2 = s.clone();
    apply(&mut s2, &a.event(8, release("from-a")));
    assert_eq!(s2.ignored, 2, "only the holder releases");
    apply(&mut s2, &b.event(9, release("from-b")));
    assert!(s2.networks["bolt0"].allocations.is_empty());
}

#[test]
fn a_rollback_restores_the_spec_of_the_revision() {
    let spec = |image: &str| ServiceSpec {
        image: image.into(),
        replicas: 1,
        ..ServiceSpec::default()
    };
    let declare = |image: &str| {
        Payload::Service(ServiceEvent::Declared {
            name: "api".into(),
            stack: "web".into(),
            spec: spec(image),
        })
    };
    let record = |revision| {
        Payload::Revision(RevisionEvent::Recorded {
            service: "api".into(),
            revision,
            spec_hash: Hash::ZERO,
        })
    };
    let s = given(vec![
        declare("api:1"),
        record(1),
        declare("api:2"),
        record(2),
        Payload::Revision(RevisionEvent::RolledBack {
            service: "api".into(),
            from: 2,
            to: 1,
            reason: "unhealthy".into(),
        }),
    ]);
    let svc = &s.services["api"];
    assert_eq!(svc.spec.image, "api:1");
    assert_eq!(svc.revision, Some(1));
    assert_eq!(svc.revisions.len(), 2);
    assert_eq!(svc.rollbacks.len(), 1);
    assert_eq!(svc.rollbacks[0].reason, "unhealthy");
}

#[test]
fn removing_a_service_drops_its_placements() {
    let node = Origin::new(1).id();
    let s = given(vec![
        Payload::Service(ServiceEvent::Declared {
            name: "api".into(),
            stack: "web".into(),
            spec: ServiceSpec::default(),
        }),
        Payload::Placement(PlacementEvent::Placed {
            service: "api".into(),
            replica: 0,
            node,
        }),
    ]);
    assert_eq!(s.placements["api"][&0], node);
    let mut s2 = s.clone();
    apply(
        &mut s2,
        &Origin::new(2).event(
            100,
            Payload::Service(ServiceEvent::Removed { name: "api".into() }),
        ),
    );
    assert!(s2.services.is_empty());
    assert!(s2.placements.is_empty());
}

#[test]
fn a_completed_migration_moves_the_capsule() {
    let here = Origin::new(1).id();
    let there = Origin::new(2).id();
    let s = given(vec![
        created("c1", "a"),
        Payload::Migration(MigrationEvent::Started {
            capsule: "c1".into(),
            from: here,
            to: there,
        }),
        Payload::Migration(MigrationEvent::Completed {
            capsule: "c1".into(),
            from: here,
            to: there,
        }),
    ]);
    assert_eq!(s.capsules["c1"].node, there);
    assert_eq!(s.migrations["c1"].status, MigrationStatus::Done);

    let failed = given(vec![
        created("c1", "a"),
        Payload::Migration(MigrationEvent::Started {
            capsule: "c1".into(),
            from: here,
            to: there,
        }),
        Payload::Migration(MigrationEvent::Failed {
            capsule: "c1".into(),
            reason: "target down".into(),
        }),
    ]);
    assert_eq!(failed.capsules["c1"].node, here);
    assert_eq!(
        failed.migrations["c1"].status,
        MigrationStatus::Failed("target down".into())
    );
}

#[test]
fn the_hash_follows_the_content() {
    let a = given(vec![created("c1", "web"), started("c1", 1)]);
    let b = given(vec![created("c1", "web"), started("c1", 1)]);
    assert_eq!(a.hash(), b.hash());
    let c = given(vec![created("c1", "web"), started("c1", 2)]);
    assert_ne!(a.hash(), c.hash());
    assert_ne!(State::default().hash(), a.hash());
}

#[test]
fn the_state_round_trips_through_json() {
    let node = Origin::new(1).id();
    let s = given(vec![
        node_started("n1"),
        network("bolt0", "10.88.0.0/16", [10, 88, 0, 1]),
        created("c1", "web"),
        started("c1", 7),
        allocated("bolt0", "c1", [10, 88, 0, 2]),
        pulled("alpine:3", "sha256:a"),
        Payload::Service(ServiceEvent::Declared {
            name: "api".into(),
            stack: "web".into(),
            spec: ServiceSpec::default(),
        }),
        Payload::Placement(PlacementEvent::Placed {
            service: "api".into(),
            replica: 0,
            node,
        }),
    ]);
    let json = serde_json::to_string_pretty(&s).unwrap();
    assert!(json.contains("\"10.88.0.2\": \"c1\""), "{json}");
    assert!(json.contains("\"running\""), "{json}");
    let back: State = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.hash(), s.hash());
}

#[test]
fn only_the_most_recent_removed_capsules_are_kept() {
    let extra = 5;
    let mut payloads = Vec::new();
    for i in 0..REMOVED_RETAINED + extra {
        payloads.push(created(&format!("c{i}"), "web"));
        payloads.push(removed(&format!("c{i}")));
    }
    payloads.push(created("live", "web"));
    let s = given(payloads);
    assert_eq!(s.capsules.len(), REMOVED_RETAINED + 1);
    assert_eq!(s.tombstones.len(), REMOVED_RETAINED);
    for i in 0..extra {
        assert!(!s.capsules.contains_key(&format!("c{i}")), "c{i} forgotten");
    }
    let kept = format!("c{extra}");
    assert_eq!(s.capsules[&kept].status, CapsuleStatus::Removed);
    assert_eq!(s.capsules["live"].status, CapsuleStatus::Created);
    assert_eq!(s.ignored, 0);
}

/// A spec whose every field depends on `i`: lists that grow and shrink, options set and unset,
/// labels that come and go.
fn shaped(i: usize) -> bolt_events::payload::CapsuleSpec {
    bolt_events::payload::CapsuleSpec {
        image: format!("img{}", "i".repeat(i % 9)),
        image_digest: format!("sha256:{i:x}"),
        command: (0..i % 4).map(|k| format!("arg{k}-{i}")).collect(),
        env: (0..(i / 3) % 3).map(|k| format!("E{k}={i}")).collect(),
        workdir: i.is_multiple_of(2).then(|| format!("/w/{i}")),
        user: i.is_multiple_of(3).then(|| "u".repeat(i % 5 + 1)),
        hostname: (i % 5 == 1).then(|| format!("h{i}")),
        network: format!("n{}", i % 3),
        memory_bytes: i.is_multiple_of(4).then_some(i as u64),
        cpu_millis: i.is_multiple_of(6).then_some(i as u32),
        pids_limit: i.is_multiple_of(7).then_some(3),
        restart: ["no", "always", "on-failure"][i % 3].into(),
        ports: (0..i % 3).map(|k| format!("{k}/tcp")).collect(),
        mounts: (0..i % 2).map(|k| format!("v{k}:/v")).collect(),
        labels: (0..i % 3)
            .map(|k| (format!("k{k}"), format!("{i}")))
            .collect(),
    }
}

#[test]
fn every_capsule_keeps_the_spec_it_was_created_with_under_churn() {
    // More removals than are retained: the forgotten capsules' spec allocations are reused for
    // new capsules (see `spare`), and nothing of an old spec may show through a new one.
    let mut payloads = Vec::new();
    let n = 2 * REMOVED_RETAINED + 100;
    for i in 0..n {
        payloads.push(Payload::Capsule(
            bolt_events::payload::CapsuleEvent::Created {
                id: format!("c{i}"),
                name: format!("n{i}"),
                spec: shaped(i),
            },
        ));
        if i % 5 != 0 {
            payloads.push(removed(&format!("c{i}")));
        }
    }
    let s = given(payloads);
    assert_eq!(s.ignored, 0);
    assert!(s.capsules.len() > n / 5);
    for (id, c) in &s.capsules {
        let i: usize = id[1..].parse().unwrap();
        assert_eq!(*c.spec, shaped(i), "{id}");
    }
}

#[test]
fn capsule_by_name_picks_the_smallest_id_of_several() {
    // Two nodes may create the same name at once: every node must pick the same one.
    let s = given(vec![
        created("c2", "web"),
        created("c1", "web"),
        created("c0", "web"),
        removed("c0"),
        created("c3", "db"),
    ]);
    assert_eq!(s.capsule_by_name("web").map(|c| c.id.as_str()), Some("c1"));
    assert_eq!(s.capsule_by_name("db").map(|c| c.id.as_str()), Some("c3"));
    assert!(s.capsule_by_name("nope").is_none());
}
