//! `decide` in the given / when / then style: given events, when a command, then the events it
//! produces or the error that refuses it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use bolt_events::payload::{
    CapsuleEvent, ImageEvent, MigrationEvent, NetworkEvent, NodeEvent, PlacementEvent,
    RevisionEvent, ServiceEvent, ServiceSpec, VolumeEvent,
};
use bolt_events::Payload;
use bolt_state::{decide, spec_hash, Command, DecideError, State};
use common::*;

fn then(state: &State, cmd: Command, expected: Vec<Payload>) {
    assert_eq!(decide(state, cmd), Ok(expected));
}

fn then_err(state: &State, cmd: Command, expected: DecideError) {
    let err = decide(state, cmd).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err, expected);
    assert!(msg.chars().next().unwrap().is_lowercase(), "{msg}");
}

fn service_spec(image: &str, replicas: u32) -> ServiceSpec {
    ServiceSpec {
        image: image.into(),
        replicas,
        ..ServiceSpec::default()
    }
}

fn declared(name: &str, image: &str) -> Payload {
    Payload::Service(ServiceEvent::Declared {
        name: name.into(),
        stack: "web".into(),
        spec: service_spec(image, 2),
    })
}

fn recorded(service: &str, revision: u64, image: &str) -> Payload {
    Payload::Revision(RevisionEvent::Recorded {
        service: service.into(),
        revision,
        spec_hash: spec_hash(&service_spec(image, 2)),
    })
}

// ---- nodes ----

#[test]
fn start_node_announces_the_node() {
    then(
        &given(vec![]),
        Command::StartNode {
            name: "n1".into(),
            version: "0.1.0".into(),
        },
        vec![node_started("n1")],
    );
}

#[test]
fn stop_node_refuses_a_node_that_is_not_up() {
    let me = Origin::new(1).id();
    then_err(
        &given(vec![]),
        Command::StopNode {
            node: me,
            reason: "bye".into(),
        },
        DecideError::UnknownNode(me.short()),
    );
    let stopped = given(vec![
        node_started("n1"),
        Payload::Node(NodeEvent::Stopped { reason: "x".into() }),
    ]);
    then_err(
        &stopped,
        Command::StopNode {
            node: me,
            reason: "bye".into(),
        },
        DecideError::NodeNotUp(me.short()),
    );
    then(
        &given(vec![node_started("n1")]),
        Command::StopNode {
            node: me,
            reason: "bye".into(),
        },
        vec![Payload::Node(NodeEvent::Stopped {
            reason: "bye".into(),
        })],
    );
}

// ---- capsules ----

#[test]
fn create_capsule_refuses_a_name_held_by_a_live_capsule() {
    then_err(
        &given(vec![created("c1", "web")]),
        Command::CreateCapsule {
            id: "c2".into(),
            name: "web".into(),
            spec: spec("alpine"),
        },
        DecideError::NameInUse {
            name: "web".into(),
            id: "c1".into(),
        },
    );
}

#[test]
fn create_capsule_reuses_the_name_of_a_removed_capsule_but_never_its_id() {
    let s = given(vec![created("c1", "web"), removed("c1")]);
    then(
        &s,
        Command::CreateCapsule {
            id: "c2".into(),
            name: "web".into(),
            spec: spec("alpine"),
        },
        vec![created("c2", "web")],
    );
    then_err(
        &s,
        Command::CreateCapsule {
            id: "c1".into(),
            name: "other".into(),
            spec: spec("alpine"),
        },
        DecideError::CapsuleExists("c1".into()),
    );
}

#[test]
fn create_capsule_refuses_an_empty_name() {
    then_err(
        &given(vec![]),
        Command::CreateCapsule {
            id: "c1".into(),
            name: String::new(),
            spec: spec("alpine"),
        },
        DecideError::InvalidName(String::new()),
    );
}

#[test]
fn start_capsule_follows_the_lifecycle() {
    let cmd = || Command::StartCapsule {
        id: "c1".into(),
        pid: 42,
    };
    then_err(
        &given(vec![]),
        cmd(),
        DecideError::UnknownCapsule("c1".into()),
    );
    then(
        &given(vec![created("c1", "a")]),
        cmd(),
        vec![started("c1", 42)],
    );
    then_err(
        &given(vec![created("c1", "a"), started("c1", 1)]),
        cmd(),
        DecideError::CapsuleRunning("c1".into()),
    );
    then(
        &given(vec![created("c1", "a"), started("c1", 1), exited("c1", 0)]),
        cmd(),
        vec![started("c1", 42)],
    );
    then_err(
        &given(vec![created("c1", "a"), removed("c1")]),
        cmd(),
        DecideError::CapsuleRemoved("c1".into()),
    );
}

#[test]
fn a_stop_request_holds_until_the_next_start() {
    use bolt_events::payload::CapsuleEvent;
    let stop = |id: &str| Payload::Capsule(CapsuleEvent::StopRequested { id: id.into() });
    let cmd = || Command::RequestStop { id: "c1".into() };
    then_err(
        &given(vec![]),
        cmd(),
        DecideError::UnknownCapsule("c1".into()),
    );
    then_err(
        &given(vec![created("c1", "a"), removed("c1")]),
        cmd(),
        DecideError::CapsuleRemoved("c1".into()),
    );
    // Running or exited (a restart may be scheduled): recorded either way.
    let running = given(vec![created("c1", "a"), started("c1", 1)]);
    then(&running, cmd(), vec![stop("c1")]);
    let s = given(vec![
        created("c1", "a"),
        started("c1", 1),
        stop("c1"),
        exited("c1", 143),
    ]);
    assert!(s.capsules["c1"].stop_requested);
    then(&s, cmd(), vec![stop("c1")]);
    // The next start clears it: the policy applies again.
    let s = given(vec![
        created("c1", "a"),
        started("c1", 1),
        stop("c1"),
        exited("c1", 143),
        started("c1", 2),
    ]);
    assert!(!s.capsules["c1"].stop_requested);
    assert!(!running.capsules["c1"].stop_requested);
}

#[test]
fn record_exit_refuses_a_capsule_that_already_exited() {
    let cmd = || Command::RecordExit {
        id: "c1".into(),
        code: Some(3),
        signal: None,
        oom: false,
    };
    then(
        &given(vec![created("c1", "a"), started("c1", 1)]),
        cmd(),
        vec![exited("c1", 3)],
    );
    then_err(
        &given(vec![created("c1", "a"), started("c1", 1), exited("c1", 0)]),
        cmd(),
        DecideError::CapsuleNotRunning("c1".into()),
    );
}

#[test]
fn remove_capsule_refuses_a_running_one_unless_forced_and_releases_its_addresses() {
    let s = given(vec![
        network("bolt0", "10.88.0.0/16", [10, 88, 0, 1]),
        created("c1", "a"),
        started("c1", 1),
        allocated("bolt0", "c1", [10, 88, 0, 2]),
    ]);
    then_err(
        &s,
        Command::RemoveCapsule {
            id: "c1".into(),
            force: false,
        },
        DecideError::RemoveRunning("c1".into()),
    );
    then(
        &s,
        Command::RemoveCapsule {
            id: "c1".into(),
            force: true,
        },
        vec![
            Payload::Network(NetworkEvent::AddressReleased {
                network: "bolt0".into(),
                capsule: "c1".into(),
                ip: [10, 88, 0, 2].into(),
            }),
            removed("c1"),
        ],
    );
}

// ---- services and revisions ----

#[test]
fn declare_service_refuses_a_name_from_another_stack() {
    then_err(
        &given(vec![declared("api", "api:1")]),
        Command::DeclareService {
            name: "api".into(),
            stack: "other".into(),
            spec: service_spec("api:2", 1),
        },
        DecideError::ServiceInOtherStack {
            service: "api".into(),
            stack: "web".into(),
        },
    );
}

#[test]
fn remove_service_unplaces_its_replicas_first() {
    let node = Origin::new(1).id();
    let s = given(vec![
        declared("api", "api:1"),
        Payload::Placement(PlacementEvent::Placed {
            service: "api".into(),
            replica: 0,
            node,
        }),
    ]);
    then(
        &s,
        Command::RemoveService { name: "api".into() },
        vec![
            Payload::Placement(PlacementEvent::Unplaced {
                service: "api".into(),
                replica: 0,
            }),
            Payload::Service(ServiceEvent::Removed { name: "api".into() }),
        ],
    );
    then_err(
        &given(vec![]),
        Command::RemoveService { name: "api".into() },
        DecideError::UnknownService("api".into()),
    );
}

#[test]
fn record_revision_numbers_revisions_and_refuses_an_unchanged_spec() {
    let cmd = || Command::RecordRevision {
        service: "api".into(),
    };
    then(
        &given(vec![declared("api", "api:1")]),
        cmd(),
        vec![recorded("api", 1, "api:1")],
    );
    then_err(
        &given(vec![declared("api", "api:1"), recorded("api", 1, "api:1")]),
        cmd(),
        DecideError::RevisionUnchanged {
            service: "api".into(),
            revision: 1,
        },
    );
    then(
        &given(vec![
            declared("api", "api:1"),
            recorded("api", 1, "api:1"),
            declared("api", "api:2"),
        ]),
        cmd(),
        vec![recorded("api", 2, "api:2")],
    );
}

#[test]
fn rollback_goes_to_an_earlier_known_revision_only() {
    let s = given(vec![
        declared("api", "api:1"),
        recorded("api", 1, "api:1"),
        declared("api", "api:2"),
        recorded("api", 2, "api:2"),
    ]);
    let cmd = |to| Command::Rollback {
        service: "api".into(),
        to,
        reason: "unhealthy".into(),
    };
    then(
        &s,
        cmd(1),
        vec![Payload::Revision(RevisionEvent::RolledBack {
            service: "api".into(),
            from: 2,
            to: 1,
            reason: "unhealthy".into(),
        })],
    );
    then_err(
        &s,
        cmd(7),
        DecideError::UnknownRevision {
            service: "api".into(),
            revision: 7,
        },
    );
    then_err(
        &s,
        cmd(2),
        DecideError::NotEarlier {
            service: "api".into(),
            to: 2,
            current: 2,
        },
    );
    then_err(
        &given(vec![declared("api", "api:1")]),
        cmd(1),
        DecideError::NoRevision("api".into()),
    );
}

#[test]
fn place_replica_needs_a_replica_index_in_range_and_a_node_that_is_up() {
    let node = Origin::new(1).id();
    let cmd = |replica| Command::PlaceReplica {
        service: "api".into(),
        replica,
        node,
    };
    then_err(
        &given(vec![declared("api", "api:1")]),
        cmd(0),
        DecideError::UnknownNode(node.short()),
    );
    let s = given(vec![node_started("n1"), declared("api", "api:1")]);
    then_err(
        &s,
        cmd(2),
        DecideError::NoSuchReplica {
            service: "api".into(),
            replica: 2,
            replicas: 2,
        },
    );
    then(
        &s,
        cmd(1),
        vec![Payload::Placement(PlacementEvent::Placed {
            service: "api".into(),
            replica: 1,
            node,
        })],
    );
}

// ---- migrations ----

#[test]
fn migration_starts_once_and_completes_to_its_target() {
    let here = Origin::new(1).id();
    let mut b = Origin::new(2);
    let there = b.id();
    let mut s = given(vec![node_started("n1"), created("c1", "a")]);
    bolt_state::apply(&mut s, &b.event(100, node_started("n2")));
    then_err(
        &s,
        Command::StartMigration {
            capsule: "c1".into(),
            to: here,
        },
        DecideError::SameNode {
            capsule: "c1".into(),
            node: here.short(),
        },
    );
    let start = Payload::Migration(MigrationEvent::Started {
        capsule: "c1".into(),
        from: here,
        to: there,
    });
    then(
        &s,
        Command::StartMigration {
            capsule: "c1".into(),
            to: there,
        },
        vec![start.clone()],
    );
    then_err(
        &s,
        Command::CompleteMigration {
            capsule: "c1".into(),
        },
        DecideError::NoMigration("c1".into()),
    );
    bolt_state::apply(&mut s, &b.event(101, start));
    then_err(
        &s,
        Command::StartMigration {
            capsule: "c1".into(),
            to: there,
        },
        DecideError::MigrationInFlight("c1".into()),
    );
    then(
        &s,
        Command::CompleteMigration {
            capsule: "c1".into(),
        },
        vec![Payload::Migration(MigrationEvent::Completed {
            capsule: "c1".into(),
            from: here,
            to: there,
        })],
    );
}

// ---- networks and addresses ----

#[test]
fn create_network_refuses_duplicates_bad_and_overlapping_subnets() {
    let s = given(vec![network("bolt0", "10.88.0.0/16", [10, 88, 0, 1])]);
    let cmd = |name: &str, subnet: &str, gateway| Command::CreateNetwork {
        name: name.into(),
        driver: "bridge".into(),
        subnet: subnet.into(),
        gateway,
        mtu: 0,
    };
    then_err(
        &s,
        cmd("bolt0", "10.99.0.0/16", None),
        DecideError::NetworkExists("bolt0".into()),
    );
    then_err(
        &s,
        cmd("n2", "10.88.4.0/24", None),
        DecideError::SubnetOverlap {
            subnet: "10.88.4.0/24".into(),
            network: "bolt0".into(),
            other: "10.88.0.0/16".into(),
        },
    );
    then_err(
        &s,
        cmd("n2", "10.0.0.0/8", None),
        DecideError::SubnetOverlap {
            subnet: "10.0.0.0/8".into(),
            network: "bolt0".into(),
            other: "10.88.0.0/16".into(),
        },
    );
    for bad in ["10.89.0.1/16", "10.89.0.0", "10.89.0.0/33", "x/8"] {
        then_err(
            &s,
            cmd("n2", bad, None),
            DecideError::InvalidSubnet(bad.into()),
        );
    }
    then_err(
        &s,
        cmd("n2", "10.89.0.0/16", Some([10, 90, 0, 1].into())),
        DecideError::GatewayOutsideSubnet {
            gateway: [10, 90, 0, 1].into(),
            subnet: "10.89.0.0/16".into(),
        },
    );
    then(
        &s,
        cmd("n2", "10.89.0.0/16", None),
        vec![network("n2", "10.89.0.0/16", [10, 89, 0, 1])],
    );
}

#[test]
fn allocate_address_picks_the_lowest_free_host_and_refuses_a_held_one() {
    let s = given(vec![
        network("bolt0", "10.88.0.0/16", [10, 88, 0, 1]),
        allocated("bolt0", "c1", [10, 88, 0, 2]),
    ]);
    let cmd = |ip: Option<[u8; 4]>| Command::AllocateAddress {
        network: "bolt0".into(),
        capsule: "c2".into(),
        ip: ip.map(Into::into),
    };
    then(
        &s,
        cmd(None),
        vec![allocated("bolt0", "c2", [10, 88, 0, 3])],
    );
    then_err(
        &s,
        cmd(Some([10, 88, 0, 2])),
        DecideError::AddressInUse {
            ip: [10, 88, 0, 2].into(),
            network: "bolt0".into(),
            holder: "c1".into(),
        },
    );
    then_err(
        &s,
        cmd(Some([10, 88, 0, 1])),
        DecideError::AddressIsGateway {
            ip: [10, 88, 0, 1].into(),
            network: "bolt0".into(),
        },
    );
    then_err(
        &s,
        cmd(Some([10, 89, 0, 5])),
        DecideError::AddressOutsideSubnet {
            ip: [10, 89, 0, 5].into(),
            subnet: "10.88.0.0/16".into(),
        },
    );
    then(
        &s,
        cmd(Some([10, 88, 7, 7])),
        vec![allocated("bolt0", "c2", [10, 88, 7, 7])],
    );
    then_err(
        &given(vec![]),
        cmd(None),
        DecideError::UnknownNetwork("bolt0".into()),
    );
}

#[test]
fn allocate_address_says_when_the_subnet_is_full() {
    // /30: hosts .1 (gateway) and .2.
    let s = given(vec![
        network("tiny", "10.1.0.0/30", [10, 1, 0, 1]),
        allocated("tiny", "c1", [10, 1, 0, 2]),
    ]);
    then_err(
        &s,
        Command::AllocateAddress {
            network: "tiny".into(),
            capsule: "c2".into(),
            ip: None,
        },
        DecideError::AddressesExhausted("tiny".into()),
    );
}

#[test]
fn release_address_needs_the_holder() {
    let s = given(vec![
        network("bolt0", "10.88.0.0/16", [10, 88, 0, 1]),
        allocated("bolt0", "c1", [10, 88, 0, 2]),
    ]);
    then_err(
        &s,
        Command::ReleaseAddress {
            network: "bolt0".into(),
            capsule: "c2".into(),
            ip: [10, 88, 0, 2].into(),
        },
        DecideError::AddressNotHeld {
            ip: [10, 88, 0, 2].into(),
            network: "bolt0".into(),
            capsule: "c2".into(),
        },
    );
    then(
        &s,
        Command::ReleaseAddress {
            network: "bolt0".into(),
            capsule: "c1".into(),
            ip: [10, 88, 0, 2].into(),
        },
        vec![Payload::Network(NetworkEvent::AddressReleased {
            network: "bolt0".into(),
            capsule: "c1".into(),
            ip: [10, 88, 0, 2].into(),
        })],
    );
}

#[test]
fn remove_network_refuses_one_with_addresses_held() {
    let s = given(vec![
        network("bolt0", "10.88.0.0/16", [10, 88, 0, 1]),
        allocated("bolt0", "c1", [10, 88, 0, 2]),
    ]);
    then_err(
        &s,
        Command::RemoveNetwork {
            name: "bolt0".into(),
        },
        DecideError::NetworkInUse {
            network: "bolt0".into(),
            count: 1,
        },
    );
    then_err(
        &given(vec![]),
        Command::RemoveNetwork {
            name: "bolt0".into(),
        },
        DecideError::UnknownNetwork("bolt0".into()),
    );
}

// ---- volumes ----

#[test]
fn volumes_are_unique_and_not_removed_while_mounted() {
    let vol = Payload::Volume(VolumeEvent::Created {
        name: "data".into(),
        driver: "local".into(),
        labels: BTreeMap::new(),
    });
    then_err(
        &given(vec![vol.clone()]),
        Command::CreateVolume {
            name: "data".into(),
            driver: "local".into(),
            labels: BTreeMap::new(),
        },
        DecideError::VolumeExists("data".into()),
    );
    let mut mounted = spec("alpine");
    mounted.mounts = vec!["data:/var/lib/data".into()];
    let s = given(vec![
        vol.clone(),
        Payload::Capsule(CapsuleEvent::Created {
            id: "c1".into(),
            name: "a".into(),
            spec: mounted,
        }),
    ]);
    let rm = || Command::RemoveVolume {
        name: "data".into(),
    };
    then_err(
        &s,
        rm(),
        DecideError::VolumeInUse {
            volume: "data".into(),
            capsule: "c1".into(),
        },
    );
    let mut s2 = s.clone();
    bolt_state::apply(&mut s2, &Origin::new(3).event(99, removed("c1")));
    then(
        &s2,
        rm(),
        vec![Payload::Volume(VolumeEvent::Removed {
            name: "data".into(),
        })],
    );
    then_err(
        &given(vec![]),
        rm(),
        DecideError::UnknownVolume("data".into()),
    );
}

// ---- images ----

#[test]
fn remove_image_refuses_one_a_live_capsule_of_that_node_uses() {
    let me = Origin::new(1).id();
    let pulled = Payload::Image(ImageEvent::Pulled {
        reference: "alpine:3".into(),
        digest: "sha256:alpine".into(),
        config_digest: "sha256:cfg".into(),
        layers: vec!["sha256:l1".into()],
        size: 10,
    });
    let cmd = || Command::RemoveImage {
        node: me,
        reference: "alpine:3".into(),
        digest: "sha256:alpine".into(),
    };
    then_err(
        &given(vec![pulled.clone(), created("c1", "a")]),
        cmd(),
        DecideError::ImageInUse {
            digest: "sha256:alpine".into(),
            capsule: "c1".into(),
        },
    );
    then(
        &given(vec![pulled.clone()]),
        cmd(),
        vec![Payload::Image(ImageEvent::Removed {
            reference: "alpine:3".into(),
            digest: "sha256:alpine".into(),
        })],
    );
    then_err(
        &given(vec![]),
        cmd(),
        DecideError::UnknownImage("sha256:alpine".into()),
    );
}

#[test]
fn a_node_holds_an_image_until_it_removes_its_last_name() {
    let me = Origin::new(1).id();
    let pulled = |reference: &str, digest: &str| {
        Payload::Image(ImageEvent::Pulled {
            reference: reference.into(),
            digest: digest.into(),
            config_digest: "sha256:cfg".into(),
            layers: vec!["sha256:l1".into()],
            size: 10,
        })
    };
    let removed = |reference: &str, digest: &str| {
        Payload::Image(ImageEvent::Removed {
            reference: reference.into(),
            digest: digest.into(),
        })
    };
    let rm = |reference: &str, digest: &str| Command::RemoveImage {
        node: me,
        reference: reference.into(),
        digest: digest.into(),
    };
    // Two names of one image, a live capsule using it: the first name may go (the image
    // stays), the last may not.
    let uses_d = Payload::Capsule(CapsuleEvent::Created {
        id: "c1".into(),
        name: "a".into(),
        spec: spec("d"),
    });
    let two = vec![pulled("a:1", "sha256:d"), pulled("b:1", "sha256:d"), uses_d];
    then(
        &given(two.clone()),
        rm("a:1", "sha256:d"),
        vec![removed("a:1", "sha256:d")],
    );
    let mut one = two.clone();
    one.push(removed("a:1", "sha256:d"));
    let s = given(one.clone());
    let img = &s.images["sha256:d"];
    assert!(img.nodes.contains(&me), "still held under b:1");
    assert_eq!(img.held[&me], ["b:1".to_string()].into());
    assert_eq!(
        s.image_refs.get("b:1").map(String::as_str),
        Some("sha256:d")
    );
    assert!(!s.image_refs.contains_key("a:1"));
    then_err(
        &s,
        rm("b:1", "sha256:d"),
        DecideError::ImageInUse {
            digest: "sha256:d".into(),
            capsule: "c1".into(),
        },
    );
    // Without the capsule the last name goes, and the image with it.
    let s = given(vec![
        pulled("a:1", "sha256:d"),
        pulled("b:1", "sha256:d"),
        removed("a:1", "sha256:d"),
        removed("b:1", "sha256:d"),
    ]);
    assert!(!s.images.contains_key("sha256:d"));
    // A name moved to another image leaves the old one's names; the node's removal of the
    // old image then ends its hold.
    let s = given(vec![
        pulled("a:1", "sha256:old"),
        pulled("a:1", "sha256:new"),
    ]);
    assert!(s.images["sha256:old"].held[&me].is_empty());
    assert_eq!(s.images["sha256:new"].held[&me], ["a:1".to_string()].into());
    let s = given(vec![
        pulled("a:1", "sha256:old"),
        pulled("a:1", "sha256:new"),
        removed("a:1", "sha256:old"),
    ]);
    assert!(!s.images.contains_key("sha256:old"));
    assert_eq!(
        s.image_refs.get("a:1").map(String::as_str),
        Some("sha256:new")
    );
}

// ---- what kind of refusal ----

#[test]
fn each_refusal_says_its_kind() {
    use bolt_state::Refusal;
    let s = given(vec![created("c1", "web")]);
    let kind = |cmd| decide(&s, cmd).unwrap_err().kind();
    assert_eq!(
        kind(Command::RemoveCapsule {
            id: "nope".into(),
            force: false
        }),
        Refusal::NotFound
    );
    assert_eq!(
        kind(Command::CreateCapsule {
            id: "c2".into(),
            name: "web".into(),
            spec: spec("alpine"),
        }),
        Refusal::Conflict
    );
    assert_eq!(
        kind(Command::CreateCapsule {
            id: "c3".into(),
            name: String::new(),
            spec: spec("alpine"),
        }),
        Refusal::Invalid
    );
}
