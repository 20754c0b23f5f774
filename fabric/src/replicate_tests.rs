//! The replication protocol in the deterministic simulation: convergence under loss, partitions,
//! a line topology, a node down for a while, hostile events, and any delivery order.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::sim::{MemStore, NetConfig, Sim};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn total(sim: &Sim, n: usize) -> Vec<usize> {
    (0..n).map(|i| sim.store(i).len()).collect()
}

#[test]
fn an_event_appended_anywhere_reaches_every_node_under_loss() {
    let net = NetConfig {
        loss: 0.05,
        ..NetConfig::default()
    };
    let mut sim = Sim::new(30, ReplicationConfig::default(), net, 1);
    for w in [0, 7, 19] {
        sim.append(w, 5, 100);
    }
    sim.run_until(secs(1));
    sim.append(3, 2, 100);
    assert!(sim.run_to_convergence(Duration::from_millis(100), secs(30)));
    assert!(
        total(&sim, 30).iter().all(|n| *n == 17),
        "{:?}",
        total(&sim, 30)
    );
    let report = sim.report();
    assert_eq!(report.events, 17);
    assert_eq!(report.incomplete, 0);
    // Events were relayed by nodes other than their origin.
    assert!((0..30).any(|i| sim.replicator(i).stats().relayed > 0));
}

#[test]
fn a_partition_with_writes_on_both_sides_heals_without_losing_an_event() {
    let mut sim = Sim::new(5, ReplicationConfig::default(), NetConfig::default(), 2);
    let (left, right) = ([0, 1], [2, 3, 4]);
    for a in left {
        for b in right {
            sim.block(a, b);
        }
    }
    for t in 0..30 {
        sim.append(t % 2, 1, 64); // left side
        sim.append(2 + t % 3, 1, 64); // right side
        sim.run_until(secs(t as u64 + 1));
    }
    // Each side converged on its own half, not on the other's.
    assert_eq!(sim.store(0).content_hash(), sim.store(1).content_hash());
    assert_eq!(sim.store(2).content_hash(), sim.store(4).content_hash());
    assert_ne!(sim.store(0).content_hash(), sim.store(2).content_hash());
    assert_eq!(sim.store(0).len(), 30);
    for a in left {
        for b in right {
            sim.unblock(a, b);
        }
    }
    assert!(sim.run_to_convergence(Duration::from_millis(100), secs(60)));
    assert!(total(&sim, 5).iter().all(|n| *n == 60));
}

#[test]
fn a_line_topology_converges_through_the_middle_node() {
    let mut sim = Sim::new(3, ReplicationConfig::default(), NetConfig::default(), 3);
    sim.block(0, 2);
    sim.set_peers(0, &[1]);
    sim.set_peers(2, &[1]);
    sim.append(0, 10, 64);
    sim.append(2, 10, 64);
    assert!(sim.run_to_convergence(Duration::from_millis(100), secs(20)));
    assert_eq!(sim.store(0).len(), 20);
    assert!(sim.replicator(1).stats().relayed > 0);
}

#[test]
fn a_node_down_for_many_events_catches_up_from_where_it_was() {
    let mut sim = Sim::new(4, ReplicationConfig::default(), NetConfig::default(), 4);
    sim.append(0, 5, 64);
    assert!(sim.run_to_convergence(Duration::from_millis(100), secs(10)));
    sim.set_down(3, true);
    for t in 0..20 {
        sim.append(t % 3, 50, 64);
        sim.run_until(sim.now() + Duration::from_millis(200));
    }
    assert_eq!(sim.store(3).len(), 5);
    sim.set_down(3, false);
    assert!(sim.run_to_convergence(Duration::from_millis(100), sim.now() + secs(30)));
    assert_eq!(sim.store(3).len(), 1005);
}

#[test]
fn a_full_reorder_buffer_drops_and_anti_entropy_repairs() {
    let config = ReplicationConfig {
        max_pending_per_origin: 8,
        ..ReplicationConfig::default()
    };
    let mut sim = Sim::new(2, config, NetConfig::default(), 5);
    // Node 1 misses the first pushes, then receives far-ahead events in one push.
    sim.block(0, 1);
    sim.append(0, 3, 64);
    sim.run_until(secs(1));
    sim.unblock(0, 1);
    sim.append(0, 40, 64);
    sim.run_until(sim.now() + Duration::from_millis(50));
    let r = sim.replicator(1);
    assert!(r.pending() <= 8);
    assert!(r.stats().dropped_pending > 0, "{:?}", r.stats());
    assert!(sim.run_to_convergence(Duration::from_millis(100), secs(20)));
    assert_eq!(sim.store(1).len(), 43);
}

fn sealed(key: &bolt_events::NodeKey, n: usize) -> Vec<bolt_events::Envelope> {
    let mut store = MemStore::new(false);
    (0..n)
        .map(|i| {
            store.append_local(
                key,
                bolt_events::Hlc::new(1000 + i as u64, 0),
                vec![i as u8],
                true,
            )
        })
        .collect()
}

fn node(seed: u8) -> (bolt_events::NodeKey, Replicator, MemStore) {
    let key = bolt_events::NodeKey::from_seed([seed; 32]);
    let rep = Replicator::new(
        key.id(),
        Default::default(),
        ReplicationConfig::default(),
        seed as u64,
        Instant::now(),
    );
    (key, rep, MemStore::new(true))
}

#[test]
fn forged_and_out_of_chain_events_are_refused_counted_and_not_stored() {
    let (_, mut rep, mut store) = node(1);
    let writer = bolt_events::NodeKey::from_seed([9; 32]);
    let peer = bolt_events::NodeKey::from_seed([8; 32]).id();
    let good = sealed(&writer, 3);
    let now = Instant::now();

    let mut forged = good.clone();
    forged[0].payload = vec![66];
    let out = rep.on_message(
        &mut store,
        peer,
        Message::Push {
            events: Message::encode_events(&forged),
        },
        now,
    );
    assert!(out.iter().all(|o| !matches!(o.msg, Message::Push { .. })));
    assert_eq!(rep.stats().refused.get("bad signature"), Some(&3));
    assert!(store.is_empty());

    // An event of the right origin whose prev is not its predecessor.
    let other = sealed(&writer, 2);
    let mut spliced = vec![good[0].clone()];
    let mut wrong = other[1].clone();
    wrong.prev = bolt_events::Hash([1; 32]);
    spliced.push(wrong);
    rep.on_message(
        &mut store,
        peer,
        Message::Push {
            events: Message::encode_events(&spliced),
        },
        now,
    );
    assert_eq!(rep.stats().refused.get("out of chain"), Some(&2));
    assert!(store.is_empty());

    // Junk bytes in place of an event.
    rep.on_message(
        &mut store,
        peer,
        Message::Push {
            events: vec![vec![1, 2, 3]],
        },
        now,
    );
    assert_eq!(rep.stats().refused.get("malformed"), Some(&1));

    // The honest copy still goes in afterwards.
    rep.on_message(
        &mut store,
        peer,
        Message::Push {
            events: Message::encode_events(&good),
        },
        now,
    );
    assert_eq!(store.len(), 3);
    assert_eq!(rep.version_vector().get(&writer.id()), Some(&3));
}

#[test]
fn events_claiming_to_be_ours_are_never_stored() {
    let (key, mut rep, mut store) = node(2);
    let peer = bolt_events::NodeKey::from_seed([8; 32]).id();
    let mine = sealed(&key, 2);
    rep.on_message(
        &mut store,
        peer,
        Message::Push {
            events: Message::encode_events(&mine),
        },
        Instant::now(),
    );
    assert!(store.is_empty());
    assert_eq!(rep.stats().refused.get("own origin"), Some(&2));
}

#[test]
fn a_digest_is_answered_with_what_the_peer_lacks_within_budget() {
    let (key, mut rep, mut store) = node(3);
    let config = ReplicationConfig {
        answer_budget: 400,
        ..ReplicationConfig::default()
    };
    rep.config = config;
    let events: Vec<_> = (0..10)
        .map(|i| store.append_local(&key, bolt_events::Hlc::new(10 + i, 0), vec![0; 100], true))
        .collect();
    rep.on_local(&events);
    let peer = bolt_events::NodeKey::from_seed([7; 32]).id();
    let out = rep.on_message(
        &mut store,
        peer,
        Message::Digest {
            vv: vec![(key.id(), 4)],
            reply: true,
            state_hash: None,
        },
        Instant::now(),
    );
    let [Outgoing {
        to,
        msg: Message::Events { events, more },
    }] = &out[..]
    else {
        panic!("{out:?}");
    };
    assert_eq!(*to, peer);
    assert!(*more, "the budget cut the answer");
    let first = bolt_events::Envelope::from_bytes(&events[0]).unwrap();
    assert_eq!(first.seq, 5);
    assert!(events.len() < 6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Any delivery order, with duplicates, of the same events gives one store content.
    #[test]
    fn any_order_and_duplication_gives_one_content(
        order in proptest::collection::vec((0usize..3, 0usize..6), 1..60),
    ) {
        let writers: Vec<_> = (0..3u8).map(|i| bolt_events::NodeKey::from_seed([20 + i; 32])).collect();
        let runs: Vec<Vec<_>> = writers.iter().map(|w| sealed(w, 6)).collect();
        let peer = bolt_events::NodeKey::from_seed([30; 32]).id();
        let (_, mut rep, mut store) = node(4);
        let now = Instant::now();
        // The proptest's order first (gaps, duplicates), then everything once in order.
        let tail = (0..3).flat_map(|w| (0..6).map(move |s| (w, s)));
        for (w, s) in order.into_iter().chain(tail) {
            rep.on_message(&mut store, peer, Message::Push {
                events: Message::encode_events([&runs[w][s]]),
            }, now);
        }
        let mut reference = MemStore::new(false);
        for run in &runs {
            reference.append_run(run.clone()).unwrap();
        }
        prop_assert_eq!(store.content_hash(), reference.content_hash());
        prop_assert_eq!(rep.pending(), 0);
    }
}

#[test]
fn an_unsigned_head_of_a_run_waits_for_its_signed_end() {
    let (_, mut rep, mut store) = node(5);
    let writer = bolt_events::NodeKey::from_seed([11; 32]);
    let peer = bolt_events::NodeKey::from_seed([12; 32]).id();
    let mut source = MemStore::new(false);
    let run: Vec<_> = (0..4)
        .map(|i| source.append_local(&writer, bolt_events::Hlc::new(50 + i, 0), vec![1], i == 3))
        .collect();
    let now = Instant::now();
    let push = |events: &[bolt_events::Envelope]| Message::Push {
        events: Message::encode_events(events),
    };
    rep.on_message(&mut store, peer, push(&run[..2]), now);
    assert!(store.is_empty(), "nothing unauthenticated is stored");
    assert_eq!(rep.pending(), 2);
    rep.on_message(&mut store, peer, push(&run[2..]), now);
    assert_eq!(store.len(), 4);
    assert_eq!(rep.pending(), 0);
    assert!(rep.stats().refused.is_empty(), "{:?}", rep.stats());
}

#[test]
fn a_peer_flooding_digests_gets_one_answer_per_interval() {
    let (key, mut rep, mut store) = node(6);
    let events: Vec<_> = (0..3)
        .map(|i| store.append_local(&key, bolt_events::Hlc::new(10 + i, 0), vec![0; 10], true))
        .collect();
    rep.on_local(&events);
    let peer = bolt_events::NodeKey::from_seed([13; 32]).id();
    let digest = || Message::Digest {
        vv: vec![],
        reply: false,
        state_hash: None,
    };
    let t0 = Instant::now();
    let mut answers = 0;
    for k in 0..100u64 {
        let now = t0 + Duration::from_millis(k); // 100 digests in 100 ms
        answers += rep.on_message(&mut store, peer, digest(), now).len();
    }
    assert_eq!(answers, 2, "one answer per 50 ms");
    assert_eq!(rep.stats().digests_limited, 98);
}

#[test]
fn a_peer_over_its_push_rate_is_cut_and_anti_entropy_repairs() {
    let config = ReplicationConfig {
        push_rate: 10,
        ..ReplicationConfig::default()
    };
    let mut sim = Sim::new(2, config, NetConfig::default(), 7);
    sim.append(0, 50, 16);
    sim.run_until(Duration::from_millis(100));
    // 40 of the 50 pushed events were dropped; the repair asked the pusher for the rest.
    assert_eq!(sim.replicator(1).stats().pushes_limited, 40);
    assert!(sim.run_to_convergence(Duration::from_millis(100), secs(30)));
    assert_eq!(sim.store(1).len(), 50);
}

#[test]
fn a_peer_with_the_same_events_and_another_state_hash_raises_the_divergence_alarm() {
    let (key, mut rep, mut store) = node(8);
    let events: Vec<_> = (0..2)
        .map(|i| store.append_local(&key, bolt_events::Hlc::new(10 + i, 0), vec![0; 10], true))
        .collect();
    rep.on_local(&events);
    let vv = rep.version_vector().clone();
    rep.set_state_hash(vv.clone(), [1; 32]);
    let peer = bolt_events::NodeKey::from_seed([14; 32]).id();
    let t0 = Instant::now();
    let digest = |hash: [u8; 32], seq: u64| Message::Digest {
        vv: vec![(key.id(), seq)],
        reply: false,
        state_hash: Some(hash),
    };
    // Same events, same hash: fine. Other events: not comparable. Same events, other hash: alarm.
    rep.on_message(&mut store, peer, digest([1; 32], 2), t0);
    rep.on_message(
        &mut store,
        peer,
        digest([9; 32], 1),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(rep.stats().divergences, 0);
    rep.on_message(
        &mut store,
        peer,
        digest([9; 32], 2),
        t0 + Duration::from_secs(2),
    );
    assert_eq!(rep.stats().divergences, 1);
    assert_eq!(rep.stats().diverged_from, Some(peer));
    // Our own digests carry the hash only while it is current.
    rep.set_peers([peer]);
    let out = rep.on_tick(t0 + Duration::from_secs(60));
    assert!(
        matches!(&out[..], [Outgoing { msg: Message::Digest { state_hash: Some(h), .. }, .. }] if *h == [1; 32]),
        "{out:?}"
    );
    let more = sealed(&key, 0);
    assert!(more.is_empty());
    let newer = store.append_local(&key, bolt_events::Hlc::new(30, 0), vec![1], true);
    rep.on_local(&[newer]);
    let out = rep.on_tick(t0 + Duration::from_secs(120));
    assert!(
        matches!(
            &out[..],
            [Outgoing {
                msg: Message::Digest {
                    state_hash: None,
                    ..
                },
                ..
            }]
        ),
        "{out:?}"
    );
}
