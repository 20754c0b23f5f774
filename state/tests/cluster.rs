//! Cluster membership in the state: the fold of `cluster.*` events (creation, admission,
//! revocation, leave, SWIM observations), the rule that a revoked node's later events change
//! nothing, whatever order they arrive in, and `decide` for the cluster commands.
//! Given events, when a command or an event, then the state or the refusal.
#![allow(clippy::unwrap_used, clippy::useless_vec)]

mod common;

use bolt_events::payload::{ClusterEvent, NodeEvent};
use bolt_events::{Appended, Cursor, Event, Hlc, NodeId, Payload};
use bolt_state::{
    decide, is_revoked, revoked_since, ClusterInfo, Command, DecideError, Refusal, Replica,
    RevokedInfo, State,
};
use common::*;

fn cluster_created(name: &str) -> Payload {
    Payload::Cluster(ClusterEvent::Created {
        name: name.into(),
        ca_fingerprint: format!("sha256:{name}"),
    })
}

fn admitted(node: NodeId, name: &str) -> Payload {
    Payload::Cluster(ClusterEvent::Admitted {
        node,
        name: name.into(),
        addr: format!("{name}:7946"),
    })
}

fn revoked(node: NodeId) -> Payload {
    Payload::Cluster(ClusterEvent::Revoked {
        node,
        reason: "stolen laptop".into(),
    })
}

fn left(node: NodeId) -> Payload {
    Payload::Cluster(ClusterEvent::Left { node })
}

fn down(node: NodeId) -> Payload {
    Payload::Cluster(ClusterEvent::MemberDown { node })
}

fn up(node: NodeId) -> Payload {
    Payload::Cluster(ClusterEvent::MemberUp { node })
}

/// `(origin, hlc, payload)`, ... as events, made in the order written (each origin's seq
/// follows it).
macro_rules! events {
    ($(($o:expr, $hlc:expr, $p:expr)),* $(,)?) => {
        vec![$($o.unsigned($hlc, $p)),*]
    };
}

fn last_reason(s: &State) -> (String, String) {
    let i = s.last_ignored.as_ref().unwrap();
    (i.kind.clone(), i.reason.clone())
}

fn ingest_in(order: &[Event]) -> Replica {
    let mut r = Replica::new();
    for (i, e) in order.iter().enumerate() {
        r.ingest(&Appended {
            cursor: Cursor(i as u64 + 1),
            event: e.clone(),
        });
    }
    r
}

/// Every interleaving of two sequences that keeps each one's order.
fn interleavings(a: &[Event], b: &[Event]) -> Vec<Vec<Event>> {
    if a.is_empty() {
        return vec![b.to_vec()];
    }
    if b.is_empty() {
        return vec![a.to_vec()];
    }
    let mut out = Vec::new();
    for mut rest in interleavings(&a[1..], b) {
        rest.insert(0, a[0].clone());
        out.push(rest);
    }
    for mut rest in interleavings(a, &b[1..]) {
        rest.insert(0, b[0].clone());
        out.push(rest);
    }
    out
}

// ---- the fold ----

#[test]
fn the_first_cluster_created_in_total_order_wins() {
    let mut a = Origin::fake(1);
    let mut b = Origin::fake(2);
    let a_id = a.id();
    let evs = events![
        (&mut b, 5, cluster_created("second")),
        (&mut a, 3, cluster_created("first")),
    ];
    // Whatever the arrival order, the fold is in total order: a's (HLC 3) comes first.
    for order in [evs.clone(), vec![evs[1].clone(), evs[0].clone()]] {
        let r = ingest_in(&order);
        let s = r.state();
        assert_eq!(
            s.cluster,
            Some(ClusterInfo {
                name: "first".into(),
                ca_fingerprint: "sha256:first".into(),
                created_by: a_id,
            })
        );
        assert_eq!(s.ignored, 1);
        assert_eq!(
            last_reason(s),
            ("cluster.created".into(), "cluster already created".into())
        );
        assert_eq!(s, &fold_sorted(&evs));
    }
}

#[test]
fn an_admission_before_the_first_start_makes_a_known_node_that_is_not_up() {
    let mut a = Origin::fake(1);
    let mut b = Origin::fake(2);
    let b_id = b.id();
    let s = fold_sorted(&events![(&mut a, 1, admitted(b_id, "beta"))]);
    let n = &s.nodes[&b_id];
    assert!(n.admitted && !n.up && !n.left && !n.down);
    assert_eq!(
        (n.name.as_str(), n.addr.as_deref()),
        ("beta", Some("beta:7946"))
    );
    assert_eq!(n.starts, 0);

    // Its start keeps the admission.
    let s = fold_sorted(&events![
        (&mut a, 2, admitted(b_id, "beta")),
        (&mut b, 3, node_started("b-self")),
    ]);
    let n = &s.nodes[&b_id];
    assert!(n.admitted && n.up);
    assert_eq!((n.name.as_str(), n.starts), ("b-self", 1));

    // Admitted after its start: its own announcement stays.
    let s = fold_sorted(&events![
        (&mut b, 4, node_started("b-self")),
        (&mut a, 5, admitted(b_id, "beta")),
    ]);
    let n = &s.nodes[&b_id];
    assert!(n.admitted && n.up);
    assert_eq!(n.name, "b-self");
    assert_eq!(s.ignored, 0);
}

#[test]
fn a_revoked_nodes_events_after_its_revocation_change_nothing() {
    let mut a = Origin::fake(1);
    let mut b = Origin::fake(2);
    let (a_id, b_id) = (a.id(), b.id());
    let before = events![
        (&mut a, 1, node_started("a")),
        (&mut b, 2, node_started("b")),
        (&mut b, 3, created("c1", "web")),
        (&mut a, 10, revoked(b_id)),
    ];
    let given = fold_sorted(&before);
    assert!(is_revoked(&given, b_id));
    assert!(!is_revoked(&given, a_id));
    assert_eq!(revoked_since(&given, b_id), Some(Hlc(10)));
    assert_eq!(revoked_since(&given, a_id), None);
    assert_eq!(
        given.revoked[&b_id],
        RevokedInfo {
            at: Hlc(10),
            by: a_id,
            reason: "stolen laptop".into(),
        }
    );
    // Events before the revocation stand.
    assert!(given.capsules.get("c1").is_some());

    let mut all = before.clone();
    all.extend(events![
        (&mut b, 11, created("c2", "db")),
        (&mut b, 12, started("c1", 7)),
        (&mut b, 13, revoked(a_id)),
    ]);
    let s = fold_sorted(&all);
    assert_eq!(s.ignored, 3);
    assert_eq!(
        last_reason(&s),
        ("cluster.revoked".into(), "origin revoked".into())
    );
    // Nothing else moved: not even b's last_seen.
    let mut expect = given.clone();
    expect.applied = s.applied;
    expect.last_key = s.last_key;
    expect.ignored = s.ignored;
    expect.last_ignored = s.last_ignored.clone();
    assert_eq!(s, expect);
    assert!(!is_revoked(&s, a_id));
}

#[test]
fn the_first_revocation_wins_and_an_unknown_node_can_be_revoked() {
    let mut a = Origin::fake(1);
    let mut c = Origin::fake(3);
    let a_id = a.id();
    let b_id = NodeId([2; 32]);
    let s = fold_sorted(&events![
        (&mut a, 5, revoked(b_id)),
        (&mut c, 6, revoked(b_id)),
    ]);
    assert_eq!(revoked_since(&s, b_id), Some(Hlc(5)));
    assert_eq!(s.revoked[&b_id].by, a_id);
    assert_eq!(
        last_reason(&s),
        ("cluster.revoked".into(), "node is already revoked".into())
    );
    assert!(!s.nodes.contains_key(&b_id));

    // An admission of a revoked node does not fit.
    let s = fold_sorted(&events![
        (&mut a, 7, revoked(b_id)),
        (&mut c, 8, admitted(b_id, "beta")),
    ]);
    assert!(!s.nodes.contains_key(&b_id));
    assert_eq!(
        last_reason(&s),
        ("cluster.admitted".into(), "node is revoked".into())
    );
}

#[test]
fn a_revocation_arriving_late_gives_the_same_state_in_every_arrival_order() {
    // b's events straddle its revocation by a (HLC 10); every interleaving of a's and b's
    // events (each origin's own order kept: how replication delivers them) must fold to the
    // state of the sorted fold, in which b's events after HLC 10 are ignored.
    let mut a = Origin::fake(1);
    let mut b = Origin::fake(2);
    let b_id = b.id();
    let from_a = events![
        (&mut a, 1, node_started("a")),
        (&mut a, 10, revoked(b_id)),
        (&mut a, 20, down(b_id)),
    ];
    let from_b = events![
        (&mut b, 2, node_started("b")),
        (&mut b, 5, created("c1", "web")),
        (&mut b, 11, created("c2", "db")),
        (&mut b, 12, started("c1", 9)),
        (&mut b, 13, cluster_created("rogue")),
    ];
    let mut all = from_a.clone();
    all.extend(from_b.iter().cloned());
    let expected = fold_sorted(&all);
    assert!(expected.capsules.get("c1").is_some());
    assert!(expected.capsules.get("c2").is_none());
    assert_eq!(
        expected.capsules.get("c1").unwrap().status,
        bolt_state::CapsuleStatus::Created
    );
    assert_eq!(expected.cluster, None);
    assert_eq!(expected.ignored, 3);
    assert!(expected.nodes[&b_id].down);

    let orders = interleavings(&from_a, &from_b);
    assert_eq!(orders.len(), 56);
    for order in &orders {
        let r = ingest_in(order);
        assert!(r.is_exact());
        assert_eq!(r.state(), &expected);
        assert_eq!(r.state().hash(), expected.hash());
    }
    // The most telling one: all of b's events first, the revocation last.
    let mut late = from_b.clone();
    late.extend(from_a.iter().cloned());
    let r = ingest_in(&late);
    assert!(r.stats().late > 0);
    assert_eq!(r.state(), &expected);
}

#[test]
fn only_a_node_itself_leaves_and_only_once_until_admitted_again() {
    let mut a = Origin::fake(1);
    let mut b = Origin::fake(2);
    let b_id = b.id();
    let s = fold_sorted(&events![
        (&mut b, 1, node_started("b")),
        (&mut b, 2, left(b_id)),
    ]);
    assert!(s.nodes[&b_id].left);
    assert_eq!(s.ignored, 0);

    let s = fold_sorted(&events![
        (&mut b, 3, node_started("b")),
        (&mut a, 4, left(b_id)),
    ]);
    assert!(!s.nodes[&b_id].left);
    assert_eq!(
        last_reason(&s),
        (
            "cluster.left".into(),
            "a node can only leave the cluster for itself".into()
        )
    );

    let s = fold_sorted(&events![
        (&mut b, 5, node_started("b")),
        (&mut b, 6, left(b_id)),
        (&mut b, 7, left(b_id)),
    ]);
    assert_eq!(
        last_reason(&s),
        (
            "cluster.left".into(),
            "node already left the cluster".into()
        )
    );

    // A new admission clears it; a restart keeps it.
    let s = fold_sorted(&events![
        (&mut b, 8, node_started("b")),
        (&mut b, 9, left(b_id)),
        (&mut b, 10, node_started("b")),
    ]);
    assert!(s.nodes[&b_id].left);
    let s = fold_sorted(&events![
        (&mut b, 11, node_started("b")),
        (&mut b, 12, left(b_id)),
        (&mut a, 13, admitted(b_id, "b")),
    ]);
    let n = &s.nodes[&b_id];
    assert!(n.admitted && !n.left);

    // Unknown node.
    let mut c = Origin::fake(3);
    let c_id = c.id();
    let s = fold_sorted(&events![(&mut c, 1, left(c_id))]);
    assert_eq!(
        last_reason(&s),
        (
            "cluster.left".into(),
            "node is not known (it never started)".into()
        )
    );
}

#[test]
fn member_down_and_up_are_idempotent_observations() {
    let mut a = Origin::fake(1);
    let mut b = Origin::fake(2);
    let mut c = Origin::fake(3);
    let c_id = c.id();
    let start = events![(&mut c, 1, node_started("c"))];

    // Two observers record the same death: one change, no misfit.
    let mut twice = start.clone();
    twice.extend(events![(&mut a, 5, down(c_id)), (&mut b, 6, down(c_id)),]);
    let mut once = start.clone();
    once.extend(events![(&mut a, 5, down(c_id))]);
    let (s2, s1) = (fold_sorted(&twice), fold_sorted(&once));
    assert!(s2.nodes[&c_id].down);
    assert_eq!(s2.ignored, 0);
    assert_eq!(s2.nodes, s1.nodes);

    // Back up: cleared; a repeat changes nothing.
    let mut back = twice.clone();
    back.extend(events![(&mut a, 7, up(c_id)), (&mut b, 8, up(c_id))]);
    let s = fold_sorted(&back);
    assert!(!s.nodes[&c_id].down);
    assert_eq!(s.ignored, 0);

    // Its next start clears it too.
    let mut restarted = twice.clone();
    restarted.extend(events![(&mut c, 9, node_started("c"))]);
    let s = fold_sorted(&restarted);
    assert!(!s.nodes[&c_id].down && s.nodes[&c_id].up);

    // An unknown node does not fit.
    let s = fold_sorted(&events![(&mut a, 1, down(NodeId([9; 32])))]);
    assert_eq!(
        last_reason(&s),
        (
            "cluster.member_down".into(),
            "node is not known (it never started)".into()
        )
    );
}

// ---- decide ----

fn then(state: &State, cmd: Command, expected: Vec<Payload>) {
    assert_eq!(decide(state, cmd), Ok(expected));
}

fn then_err(state: &State, cmd: Command, expected: DecideError) {
    let err = decide(state, cmd).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err, expected);
    assert!(msg.chars().next().unwrap().is_lowercase(), "{msg}");
}

#[test]
fn create_cluster_is_refused_once_one_exists() {
    let cmd = || Command::CreateCluster {
        name: "prod".into(),
        ca_fingerprint: "sha256:prod".into(),
    };
    then(&given(vec![]), cmd(), vec![cluster_created("prod")]);
    then_err(
        &given(vec![cluster_created("old")]),
        cmd(),
        DecideError::ClusterExists("old".into()),
    );
    then_err(
        &given(vec![]),
        Command::CreateCluster {
            name: String::new(),
            ca_fingerprint: "x".into(),
        },
        DecideError::InvalidName(String::new()),
    );
}

#[test]
fn admit_node_is_refused_for_a_member_or_a_revoked_node() {
    let b = NodeId([2; 32]);
    let cmd = || Command::AdmitNode {
        node: b,
        name: "beta".into(),
        addr: "beta:7946".into(),
    };
    then(&given(vec![]), cmd(), vec![admitted(b, "beta")]);
    then_err(
        &given(vec![admitted(b, "beta")]),
        cmd(),
        DecideError::AlreadyAdmitted(b.short()),
    );
    then_err(
        &given(vec![revoked(b)]),
        cmd(),
        DecideError::NodeRevoked(b.short()),
    );
}

#[test]
fn admit_node_takes_back_a_node_that_left() {
    let mut a = Origin::fake(1);
    let mut b = Origin::fake(2);
    let b_id = b.id();
    let s = fold_sorted(&events![
        (&mut a, 1, admitted(b_id, "beta")),
        (&mut b, 2, node_started("beta")),
        (&mut b, 3, left(b_id)),
    ]);
    then(
        &s,
        Command::AdmitNode {
            node: b_id,
            name: "beta".into(),
            addr: "beta:7946".into(),
        },
        vec![admitted(b_id, "beta")],
    );
}

#[test]
fn revoke_node_is_refused_for_an_unknown_node_a_revoked_one_and_the_decider() {
    let me = Origin::new(1).id();
    let b = NodeId([2; 32]);
    let known = given(vec![node_started("a"), admitted(b, "beta")]);
    let cmd = |node| Command::RevokeNode {
        node,
        by: me,
        reason: "stolen laptop".into(),
    };
    then(&known, cmd(b), vec![revoked(b)]);
    let unknown = NodeId([3; 32]);
    then_err(
        &known,
        cmd(unknown),
        DecideError::UnknownNode(unknown.short()),
    );
    then_err(&known, cmd(me), DecideError::RevokeSelf(me.short()));
    assert_eq!(
        decide(&known, cmd(me)).unwrap_err().kind(),
        Refusal::Invalid
    );
    let after = given(vec![node_started("a"), admitted(b, "beta"), revoked(b)]);
    then_err(&after, cmd(b), DecideError::NodeRevoked(b.short()));
}

#[test]
fn leave_cluster_is_refused_for_an_unknown_node_and_one_that_left() {
    let me = Origin::new(1).id();
    let cmd = || Command::LeaveCluster { node: me };
    then(&given(vec![node_started("a")]), cmd(), vec![left(me)]);
    then_err(&given(vec![]), cmd(), DecideError::UnknownNode(me.short()));
    then_err(
        &given(vec![node_started("a"), left(me)]),
        cmd(),
        DecideError::AlreadyLeft(me.short()),
    );
}

#[test]
fn member_down_and_up_are_recorded_once_per_change() {
    let b = NodeId([2; 32]);
    let member = given(vec![admitted(b, "beta")]);
    then(
        &member,
        Command::RecordMemberDown { node: b },
        vec![down(b)],
    );
    then_err(
        &member,
        Command::RecordMemberUp { node: b },
        DecideError::MemberNotDown(b.short()),
    );
    let dead = given(vec![admitted(b, "beta"), down(b)]);
    then_err(
        &dead,
        Command::RecordMemberDown { node: b },
        DecideError::MemberAlreadyDown(b.short()),
    );
    then(&dead, Command::RecordMemberUp { node: b }, vec![up(b)]);
    let unknown = NodeId([3; 32]);
    then_err(
        &member,
        Command::RecordMemberDown { node: unknown },
        DecideError::UnknownNode(unknown.short()),
    );
    assert_eq!(
        decide(&dead, Command::RecordMemberDown { node: b })
            .unwrap_err()
            .kind(),
        Refusal::Conflict
    );
}

#[test]
fn the_cluster_fields_survive_a_snapshot() {
    let b = NodeId([2; 32]);
    let s = given(vec![
        node_started("a"),
        cluster_created("prod"),
        admitted(b, "beta"),
        down(b),
        revoked(b),
        Payload::Node(NodeEvent::Stopped {
            reason: "bye".into(),
        }),
    ]);
    assert!(s.cluster.is_some() && !s.revoked.is_empty() && s.nodes[&b].down);
    let key = [7; 32];
    let bytes = bolt_state::encode_state(&s, &key);
    assert_eq!(bytes[0], bolt_state::SNAPSHOT_FORMAT);
    assert_eq!(bolt_state::decode_state(&bytes, &key).unwrap(), s);
}
