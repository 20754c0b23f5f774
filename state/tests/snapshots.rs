//! Snapshots in the state: the fold (`snapshot.created/restored/removed` and the removal of
//! their targets), `decide` for the snapshot commands, and late events through the replica.
//! Given events, when a command or an event, then the state or the refusal.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use bolt_events::payload::{
    CapsuleEvent, SnapshotEvent, VolumeEvent, SNAPSHOT_CAPSULE, SNAPSHOT_VOLUME,
};
use bolt_events::{Appended, Cursor, Payload};
use bolt_state::{decide, snapshot_key, Command, DecideError, Replica, State};
use common::*;

fn volume(name: &str) -> Payload {
    Payload::Volume(VolumeEvent::Created {
        name: name.into(),
        driver: "local".into(),
        labels: BTreeMap::new(),
    })
}

fn volume_removed(name: &str) -> Payload {
    Payload::Volume(VolumeEvent::Removed { name: name.into() })
}

fn snap(kind: &str, target: &str, name: &str) -> Payload {
    Payload::Snapshot(SnapshotEvent::Created {
        target_kind: kind.into(),
        target: target.into(),
        name: name.into(),
    })
}

fn restored(kind: &str, target: &str, name: &str) -> Payload {
    Payload::Snapshot(SnapshotEvent::Restored {
        target_kind: kind.into(),
        target: target.into(),
        name: name.into(),
    })
}

fn snap_removed(kind: &str, target: &str, name: &str) -> Payload {
    Payload::Snapshot(SnapshotEvent::Removed {
        target_kind: kind.into(),
        target: target.into(),
        name: name.into(),
    })
}

fn names(s: &State, kind: &str, target: &str) -> Vec<String> {
    s.snapshots_of(kind, target)
        .iter()
        .map(|i| i.name.clone())
        .collect()
}

fn mounting(id: &str, name: &str, mounts: &[&str]) -> Payload {
    let mut spec = spec("alpine");
    spec.mounts = mounts.iter().map(|m| m.to_string()).collect();
    Payload::Capsule(CapsuleEvent::Created {
        id: id.into(),
        name: name.into(),
        spec,
    })
}

#[test]
fn snapshots_are_listed_per_target_oldest_first_with_their_restores() {
    let s = given(vec![
        created("c1", "web"),
        volume("data"),
        snap(SNAPSHOT_CAPSULE, "c1", "zeta"),
        snap(SNAPSHOT_CAPSULE, "c1", "alpha"),
        snap(SNAPSHOT_VOLUME, "data", "v1"),
        restored(SNAPSHOT_CAPSULE, "c1", "zeta"),
        restored(SNAPSHOT_CAPSULE, "c1", "zeta"),
    ]);
    assert_eq!(s.ignored, 0, "{:?}", s.last_ignored);
    // Creation order, not name order.
    assert_eq!(names(&s, SNAPSHOT_CAPSULE, "c1"), ["zeta", "alpha"]);
    assert_eq!(names(&s, SNAPSHOT_VOLUME, "data"), ["v1"]);
    // A volume and a capsule of one name are different targets.
    assert!(names(&s, SNAPSHOT_VOLUME, "c1").is_empty());
    let zeta = &s.snapshots[&snapshot_key(SNAPSHOT_CAPSULE, "c1")]["zeta"];
    assert_eq!(zeta.restores, 2);
    assert!(zeta.restored.is_some_and(|h| h > zeta.created));
    assert_eq!(zeta.node, Origin::new(1).id());
    let alpha = &s.snapshots[&snapshot_key(SNAPSHOT_CAPSULE, "c1")]["alpha"];
    assert_eq!((alpha.restores, alpha.restored), (0, None));
}

#[test]
fn removing_a_snapshot_or_its_target_drops_it() {
    let base = vec![
        created("c1", "web"),
        volume("data"),
        snap(SNAPSHOT_CAPSULE, "c1", "a"),
        snap(SNAPSHOT_CAPSULE, "c1", "b"),
        snap(SNAPSHOT_VOLUME, "data", "v1"),
    ];
    let mut events = base.clone();
    events.push(snap_removed(SNAPSHOT_CAPSULE, "c1", "a"));
    let s = given(events);
    assert_eq!(names(&s, SNAPSHOT_CAPSULE, "c1"), ["b"]);

    // The last one of a target: the target's entry goes too (the state stays canonical).
    let mut events = base.clone();
    events.push(snap_removed(SNAPSHOT_VOLUME, "data", "v1"));
    let s = given(events);
    assert!(!s
        .snapshots
        .contains_key(&snapshot_key(SNAPSHOT_VOLUME, "data")));

    let mut events = base.clone();
    events.extend([removed("c1"), volume_removed("data")]);
    let s = given(events);
    assert!(s.snapshots.is_empty(), "{:?}", s.snapshots);
    assert_eq!(s.ignored, 0);
}

#[test]
fn snapshot_events_that_do_not_fit_are_ignored_and_change_nothing() {
    let base = vec![
        created("c1", "web"),
        volume("data"),
        snap(SNAPSHOT_CAPSULE, "c1", "a"),
    ];
    let before = given(base.clone());
    for (event, reason) in [
        (
            snap(SNAPSHOT_CAPSULE, "c9", "a"),
            "snapshot target capsule:c9 is not known",
        ),
        (
            snap(SNAPSHOT_VOLUME, "nope", "a"),
            "snapshot target volume:nope is not known",
        ),
        (
            snap("image", "data", "a"),
            "snapshot target image:data is not known",
        ),
        (
            snap(SNAPSHOT_CAPSULE, "c1", "a"),
            "capsule:c1 already has a snapshot named a",
        ),
        (
            restored(SNAPSHOT_CAPSULE, "c1", "b"),
            "capsule:c1 has no snapshot named b",
        ),
        (
            snap_removed(SNAPSHOT_VOLUME, "data", "a"),
            "volume:data has no snapshot named a",
        ),
    ] {
        let mut events = base.clone();
        let kind = event.kind();
        events.push(event);
        let after = given(events);
        assert_eq!(after.ignored, 1, "{reason}");
        let why = after.last_ignored.as_ref().unwrap();
        assert_eq!((why.kind.as_str(), why.reason.as_str()), (kind, reason));
        assert_eq!(after.snapshots, before.snapshots);
    }

    // A removed capsule takes no new snapshot.
    let s = given(vec![
        created("c1", "web"),
        removed("c1"),
        snap(SNAPSHOT_CAPSULE, "c1", "a"),
    ]);
    assert_eq!(s.ignored, 1);
    assert!(s.snapshots.is_empty());
}

#[test]
fn decide_records_snapshots_of_known_targets_with_new_valid_names() {
    let s = given(vec![
        created("c1", "web"),
        volume("data"),
        snap(SNAPSHOT_VOLUME, "data", "v1"),
    ]);
    let create = |kind: &str, target: &str, name: &str| Command::CreateSnapshot {
        target_kind: kind.into(),
        target: target.into(),
        name: name.into(),
    };
    assert_eq!(
        decide(&s, create(SNAPSHOT_CAPSULE, "c1", "before-upgrade")),
        Ok(vec![snap(SNAPSHOT_CAPSULE, "c1", "before-upgrade")])
    );
    assert_eq!(
        decide(&s, create(SNAPSHOT_VOLUME, "data", "v1")),
        Err(DecideError::SnapshotExists {
            target: "volume:data".into(),
            name: "v1".into()
        })
    );
    assert_eq!(
        decide(&s, create(SNAPSHOT_VOLUME, "other", "v1")),
        Err(DecideError::UnknownVolume("other".into()))
    );
    assert_eq!(
        decide(&s, create(SNAPSHOT_CAPSULE, "c9", "x")),
        Err(DecideError::UnknownCapsule("c9".into()))
    );
    assert_eq!(
        decide(&s, create("image", "c1", "x")),
        Err(DecideError::SnapshotKind("image".into()))
    );
    for bad in ["", ".hidden", "a/b", "white space", &"x".repeat(201)] {
        assert_eq!(
            decide(&s, create(SNAPSHOT_CAPSULE, "c1", bad)),
            Err(DecideError::SnapshotName(bad.into())),
            "{bad:?}"
        );
    }
    let msg = DecideError::SnapshotName("a/b".into()).to_string();
    assert!(msg.starts_with("invalid snapshot name"), "{msg}");
}

#[test]
fn decide_refuses_to_restore_a_running_capsule_or_a_volume_a_running_capsule_mounts() {
    let base = vec![
        mounting("c1", "web", &["data:/var/lib/data:rw", "/srv:/srv"]),
        volume("data"),
        volume("idle"),
        snap(SNAPSHOT_CAPSULE, "c1", "a"),
        snap(SNAPSHOT_VOLUME, "data", "v1"),
        snap(SNAPSHOT_VOLUME, "idle", "v1"),
    ];
    let restore = |kind: &str, target: &str, name: &str| Command::RestoreSnapshot {
        target_kind: kind.into(),
        target: target.into(),
        name: name.into(),
    };
    let mut events = base.clone();
    events.push(started("c1", 42));
    let running = given(events);
    let err = decide(&running, restore(SNAPSHOT_CAPSULE, "c1", "a")).unwrap_err();
    assert_eq!(err, DecideError::RestoreRunning("c1".into()));
    assert!(err.to_string().contains("stop it"), "{err}");
    assert_eq!(
        decide(&running, restore(SNAPSHOT_VOLUME, "data", "v1")),
        Err(DecideError::RestoreVolumeInUse {
            volume: "data".into(),
            capsule: "c1".into()
        })
    );
    // A volume no running capsule mounts can be restored.
    assert_eq!(
        decide(&running, restore(SNAPSHOT_VOLUME, "idle", "v1")),
        Ok(vec![restored(SNAPSHOT_VOLUME, "idle", "v1")])
    );

    // Stopped: both can.
    let mut events = base.clone();
    events.extend([started("c1", 42), exited("c1", 0)]);
    let stopped = given(events);
    assert_eq!(
        decide(&stopped, restore(SNAPSHOT_CAPSULE, "c1", "a")),
        Ok(vec![restored(SNAPSHOT_CAPSULE, "c1", "a")])
    );
    assert_eq!(
        decide(&stopped, restore(SNAPSHOT_VOLUME, "data", "v1")),
        Ok(vec![restored(SNAPSHOT_VOLUME, "data", "v1")])
    );
    assert_eq!(
        decide(&stopped, restore(SNAPSHOT_CAPSULE, "c1", "zz")),
        Err(DecideError::UnknownSnapshot {
            target: "capsule:c1".into(),
            name: "zz".into()
        })
    );

    let remove = Command::RemoveSnapshot {
        target_kind: SNAPSHOT_VOLUME.into(),
        target: "data".into(),
        name: "v1".into(),
    };
    // Removing a snapshot does not touch its target: allowed while it runs.
    assert_eq!(
        decide(&running, remove),
        Ok(vec![snap_removed(SNAPSHOT_VOLUME, "data", "v1")])
    );
}

#[test]
fn late_snapshot_events_fold_as_if_they_came_in_order() {
    // Two nodes; every third event of the second one arrives late, so the replica takes
    // snapshot events back (their journal records) and folds them again.
    let mut a = Origin::fake(1);
    let mut b = Origin::fake(2);
    let mut events = Vec::new();
    let mut hlc = 0;
    let mut at = |o: &mut Origin, p: Payload| {
        hlc += 10;
        o.unsigned(hlc, p)
    };
    events.push(at(&mut a, created("c1", "web")));
    events.push(at(&mut b, volume("data")));
    for i in 0..30 {
        let name = format!("s{i}");
        events.push(at(&mut a, snap(SNAPSHOT_CAPSULE, "c1", &name)));
        events.push(at(&mut b, snap(SNAPSHOT_VOLUME, "data", &name)));
        if i % 2 == 0 {
            events.push(at(&mut a, restored(SNAPSHOT_CAPSULE, "c1", &name)));
            events.push(at(&mut b, snap_removed(SNAPSHOT_VOLUME, "data", &name)));
        }
    }
    events.push(at(&mut b, volume_removed("data")));
    let mut arrival = events.clone();
    for i in (3..arrival.len() - 3).step_by(3) {
        arrival.swap(i, i + 1);
    }
    assert_ne!(arrival, events);
    let mut r = Replica::with_window(16);
    for (i, e) in arrival.iter().enumerate() {
        r.ingest(&Appended {
            cursor: Cursor(i as u64 + 1),
            event: e.clone(),
        });
    }
    assert!(r.is_exact(), "{:?}", r.warnings());
    assert!(r.stats().late > 10, "{:?}", r.stats());
    let expected = fold_sorted(&events);
    assert_eq!(r.state(), &expected);
    assert_eq!(expected.snapshots_of(SNAPSHOT_CAPSULE, "c1").len(), 30);
    assert!(expected.snapshots_of(SNAPSHOT_VOLUME, "data").is_empty());
}
