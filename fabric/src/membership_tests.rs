//! Membership on a virtual clock: N state machines wired by an in-memory network that delivers
//! each packet after 1 ms (or loses it), with the authenticated sender the network knows.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use foca::Message;

use super::*;
use crate::membership_wire::Codec;

fn node_id(i: usize) -> String {
    format!("{:064x}", 0xb017_0000 + i)
}

fn member(i: usize, bump: u32) -> Member {
    let ip = Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250 + 1) as u8);
    Member::new(&node_id(i), SocketAddr::new(IpAddr::V4(ip), 7946), bump).unwrap()
}

const LATENCY: Duration = Duration::from_millis(1);

/// A packet on the wire: deliver at, then (authenticated sender, recipient, bytes).
type Packet = (String, Member, Vec<u8>);

/// The network and its clock.
struct Net {
    base: Instant,
    now: Duration,
    config: MembershipConfig,
    nodes: BTreeMap<String, Membership>,
    /// Node ids that stopped: they get no packets and no ticks.
    stopped: Vec<String>,
    wire: BTreeMap<(Duration, u64), Packet>,
    seq: u64,
    /// Losing one packet in `loss_one_in` (0: none), by a seeded xorshift.
    loss_one_in: u64,
    rng: u64,
    /// Every change: (time, observer, change).
    log: Vec<(Duration, String, Change)>,
}

impl Net {
    fn new(config: MembershipConfig) -> Self {
        Self {
            base: Instant::now(),
            now: Duration::ZERO,
            config,
            nodes: BTreeMap::new(),
            stopped: Vec::new(),
            wire: BTreeMap::new(),
            seq: 0,
            loss_one_in: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            log: Vec::new(),
        }
    }

    fn at(&self) -> Instant {
        self.base + self.now
    }

    /// Adds node `i` (identity bump `bump`) and, unless it is the first, joins it to node 0.
    fn add(&mut self, i: usize, bump: u32) {
        let me = member(i, bump);
        let id = me.node_id.clone();
        let m = Membership::new(
            me,
            self.config.clone(),
            i as u64 * 7 + bump as u64,
            self.at(),
        )
        .unwrap();
        self.stopped.retain(|s| *s != id);
        self.nodes.insert(id.clone(), m);
        if i != 0 {
            let now = self.at();
            let out = self
                .nodes
                .get_mut(&id)
                .unwrap()
                .join(member(0, 0), now)
                .unwrap();
            self.take(&id, out);
        }
    }

    fn lose(&mut self) -> bool {
        if self.loss_one_in == 0 {
            return false;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng.is_multiple_of(self.loss_one_in)
    }

    fn take(&mut self, from: &str, out: Output) {
        for change in out.changes {
            self.log.push((self.now, from.to_owned(), change));
        }
        for (to, bytes) in out.send {
            assert!(bytes.len() <= MAX_PACKET, "{} bytes", bytes.len());
            if self.lose() {
                continue;
            }
            self.seq += 1;
            self.wire
                .insert((self.now + LATENCY, self.seq), (from.to_owned(), to, bytes));
        }
    }

    fn running(&self, id: &str) -> bool {
        self.nodes.contains_key(id) && !self.stopped.iter().any(|s| s == id)
    }

    /// Runs the network for `span` of virtual time.
    fn run(&mut self, span: Duration) {
        let end = self.now + span;
        loop {
            let packet = self.wire.keys().next().map(|(t, _)| *t);
            let timer = self
                .nodes
                .iter()
                .filter(|(id, _)| self.running(id))
                .filter_map(|(_, m)| m.next_deadline())
                .min()
                .map(|at| at.saturating_duration_since(self.base));
            let Some(next) = [packet, timer].into_iter().flatten().min() else {
                break;
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let now = self.at();
            while let Some(entry) = self.wire.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let (from, to, bytes) = entry.remove();
                if !self.running(&to.node_id) {
                    continue;
                }
                let m = self.nodes.get_mut(&to.node_id).unwrap();
                if let Ok(out) = m.on_packet(&from, &bytes, now) {
                    let id = to.node_id.clone();
                    self.take(&id, out);
                }
            }
            let due: Vec<String> = self
                .nodes
                .iter()
                .filter(|(id, m)| self.running(id) && m.next_deadline().is_some_and(|d| d <= now))
                .map(|(id, _)| id.clone())
                .collect();
            for id in due {
                let out = self.nodes.get_mut(&id).unwrap().on_tick(now);
                self.take(&id, out);
            }
        }
        self.now = end;
    }

    /// How node `observer` sees node `subject`.
    fn state(&self, observer: usize, subject: usize) -> Option<MemberState> {
        self.nodes[&node_id(observer)]
            .members()
            .into_iter()
            .find(|v| v.node_id == node_id(subject))
            .map(|v| v.state)
    }

    /// Whether every running node sees every other running node alive.
    fn converged(&self) -> bool {
        let running: Vec<&String> = self.nodes.keys().filter(|id| self.running(id)).collect();
        running.iter().all(|id| {
            let alive = self.nodes[*id]
                .members()
                .into_iter()
                .filter(|v| v.state == MemberState::Alive && self.running(&v.node_id))
                .count();
            alive == running.len() - 1
        })
    }

    /// Runs in steps of `step` until converged; the time it took, or None after `limit`.
    fn run_until_converged(&mut self, step: Duration, limit: Duration) -> Option<Duration> {
        let start = self.now;
        while self.now - start < limit {
            self.run(step);
            if self.converged() {
                return Some(self.now - start);
            }
        }
        None
    }

    /// The changes node `observer` reported about node `subject`, with their times.
    fn changes(&self, observer: usize, subject: usize) -> Vec<(Duration, Change)> {
        self.log
            .iter()
            .filter(|(_, o, c)| *o == node_id(observer) && change_node(c) == node_id(subject))
            .map(|(t, _, c)| (*t, c.clone()))
            .collect()
    }
}

fn change_node(change: &Change) -> &str {
    match change {
        Change::Up(m) | Change::Suspect(m) | Change::Down(m) | Change::Left(m) => &m.node_id,
    }
}

/// Five nodes joined through node 0, converged.
fn five() -> Net {
    let mut net = Net::new(MembershipConfig::for_tests());
    for i in 0..5 {
        net.add(i, 0);
    }
    net.run_until_converged(Duration::from_millis(50), Duration::from_secs(5))
        .expect("five nodes converge");
    net
}

#[test]
fn five_nodes_joining_through_one_seed_all_see_each_other_alive() {
    let net = five();
    for i in 0..5 {
        let views = net.nodes[&node_id(i)].members();
        assert_eq!(views.len(), 4, "node {i}: {views:?}");
        assert!(views.iter().all(|v| v.state == MemberState::Alive));
        assert!(
            views.iter().all(|v| v.node_id != node_id(i)),
            "self is not listed"
        );
        for j in (0..5).filter(|j| *j != i) {
            assert!(matches!(&net.changes(i, j)[..], [(_, Change::Up(m))] if *m == member(j, 0)));
        }
        assert_eq!(net.nodes[&node_id(i)].stats().spoofed, 0);
    }
}

#[test]
fn a_silent_node_turns_suspect_then_dead_everywhere_within_the_bound() {
    let mut net = five();
    let stop = net.now;
    net.stopped.push(node_id(4));
    let bound = net.config.detection_bound(5);
    net.run(bound);
    for i in 0..4 {
        assert_eq!(net.state(i, 4), Some(MemberState::Dead), "node {i}");
        let seen: Vec<_> = net
            .changes(i, 4)
            .into_iter()
            .filter(|(t, _)| *t >= stop)
            .collect();
        assert!(
            matches!(&seen[..], [(_, Change::Suspect(_)), (t, Change::Down(_))] if *t - stop <= bound),
            "node {i}: {seen:?}"
        );
        // The others stay alive.
        assert!((0..4)
            .filter(|j| *j != i)
            .all(|j| net.state(i, j) == Some(MemberState::Alive)));
    }
}

#[test]
fn a_leaving_node_is_seen_left_not_dead() {
    let mut net = five();
    let start = net.now;
    let at = net.at();
    let out = net.nodes.get_mut(&node_id(4)).unwrap().leave(at).unwrap();
    assert!(!out.send.is_empty());
    net.take(&node_id(4), out);
    // Long past the time a failure would be detected.
    net.run(net.config.detection_bound(5));
    for i in 0..4 {
        assert_eq!(net.state(i, 4), Some(MemberState::Left), "node {i}");
        let seen: Vec<_> = net
            .changes(i, 4)
            .into_iter()
            .filter(|(t, _)| *t >= start)
            .collect();
        assert!(
            matches!(&seen[..], [(_, Change::Left(_))]),
            "node {i}: {seen:?}"
        );
    }
    let left = net.nodes.get_mut(&node_id(4)).unwrap();
    assert!(matches!(
        left.on_packet(&node_id(0), &[0], at),
        Err(MembershipError::Left)
    ));
    assert_eq!(left.next_deadline(), None);
}

#[test]
fn a_restarted_node_with_a_new_bump_comes_back_alive() {
    let mut net = five();
    net.stopped.push(node_id(4));
    net.run(net.config.detection_bound(5));
    assert!((0..4).all(|i| net.state(i, 4) == Some(MemberState::Dead)));
    let back = net.now;
    net.add(4, 1);
    net.run_until_converged(Duration::from_millis(50), Duration::from_secs(5))
        .expect("converges again");
    for i in 0..4 {
        let view = net.nodes[&node_id(i)]
            .members()
            .into_iter()
            .find(|v| v.node_id == node_id(4))
            .unwrap();
        assert_eq!((view.state, view.bump), (MemberState::Alive, 1), "node {i}");
        let seen: Vec<_> = net
            .changes(i, 4)
            .into_iter()
            .filter(|(t, _)| *t >= back)
            .collect();
        assert!(
            matches!(&seen[..], [(_, Change::Up(m))] if m.bump == 1),
            "{seen:?}"
        );
    }
}

#[test]
fn a_restarted_node_with_its_old_identity_renews_itself() {
    let mut net = five();
    net.stopped.push(node_id(4));
    net.run(net.config.detection_bound(5));
    // Same bump as before: the cluster tells it it is dead, and it rejoins with bump 1.
    net.add(4, 0);
    net.run_until_converged(Duration::from_millis(50), Duration::from_secs(5))
        .expect("converges again");
    assert_eq!(net.nodes[&node_id(4)].me().bump, 1);
    assert!((0..4).all(|i| net.state(i, 4) == Some(MemberState::Alive)));
}

/// A packet `from` sends to `to` when joining it (a valid Announce).
fn announce(from: usize, to: usize) -> Vec<u8> {
    let mut m = Membership::new(
        member(from, 0),
        MembershipConfig::for_tests(),
        1,
        Instant::now(),
    )
    .unwrap();
    let out = m.join(member(to, 0), Instant::now()).unwrap();
    let [(dst, bytes)] = &out.send[..] else {
        panic!("one packet: {out:?}")
    };
    assert_eq!(dst.node_id, node_id(to));
    bytes.clone()
}

#[test]
fn a_packet_claiming_another_sender_is_refused_and_changes_nothing() {
    let mut net = five();
    let at = net.at();
    // Node 7 (unknown) announces to node 0, but the transport says node 3 sent it.
    let forged = announce(7, 0);
    let m = net.nodes.get_mut(&node_id(0)).unwrap();
    let before = m.members();
    let err = m.on_packet(&node_id(3), &forged, at).unwrap_err();
    assert!(matches!(err, MembershipError::Spoofed { .. }), "{err}");
    assert_eq!(m.members(), before);
    assert_eq!(m.stats().spoofed, 1);
    // Sent by node 7 itself, the same bytes are accepted and it becomes a member.
    let out = m.on_packet(&node_id(7), &forged, at).unwrap();
    assert!(out.changes.contains(&Change::Up(member(7, 0))), "{out:?}");
}

#[test]
fn garbage_is_refused_without_panic_and_counted() {
    let at = Instant::now();
    let mut m = Membership::new(member(0, 0), MembershipConfig::for_tests(), 1, at).unwrap();
    let valid = announce(1, 0);
    let mut refused = 0;
    // Every truncation of a valid packet, random bytes, bad tags, an oversized packet.
    for len in 0..valid.len() {
        assert!(
            m.on_packet(&node_id(1), &valid[..len], at).is_err(),
            "{len}"
        );
        refused += 1;
    }
    let mut x: u64 = 42;
    for len in [1, 7, 43, 100, 600, 1200] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect();
        // Random bytes cannot name node 1 as sender: refused one way or another.
        assert!(m.on_packet(&node_id(1), &bytes, at).is_err());
        refused += 1;
    }
    let mut bad_tag = valid.clone();
    let tag = bad_tag.len() - 1;
    bad_tag[tag] = 0xee;
    assert!(matches!(
        m.on_packet(&node_id(1), &bad_tag, at),
        Err(MembershipError::Malformed(WireError::Message(0xee)))
    ));
    let mut trailing = valid.clone();
    trailing.push(1);
    assert!(m.on_packet(&node_id(1), &trailing, at).is_err());
    assert!(matches!(
        m.on_packet(&node_id(1), &vec![0; MAX_PACKET + 1], at),
        Err(MembershipError::TooLarge(_))
    ));
    let stats = m.stats().clone();
    assert_eq!(stats.too_large, 1);
    assert_eq!(stats.accepted, 0);
    assert_eq!(
        stats.malformed + stats.spoofed + stats.protocol,
        refused + 2,
        "{stats:?}"
    );
    assert!(stats.malformed >= valid.len() as u64 + 2, "{stats:?}");
    assert!(m.members().is_empty());
}

#[test]
fn a_removed_nodes_packets_are_refused() {
    let mut net = five();
    let at = net.at();
    let out = net
        .nodes
        .get_mut(&node_id(0))
        .unwrap()
        .remove(&node_id(4), at)
        .unwrap();
    assert!(out.changes.contains(&Change::Down(member(4, 0))), "{out:?}");
    net.take(&node_id(0), out);
    net.run(Duration::from_secs(2));
    let m = &net.nodes[&node_id(0)];
    assert_eq!(net.state(0, 4), Some(MemberState::Dead));
    assert!(m.stats().removed > 0, "{:?}", m.stats());
    let direct = announce(4, 0);
    let m = net.nodes.get_mut(&node_id(0)).unwrap();
    assert!(matches!(
        m.on_packet(&node_id(4), &direct, at),
        Err(MembershipError::Removed(_))
    ));
    assert!(matches!(
        m.remove(&node_id(0), at),
        Err(MembershipError::Itself(_))
    ));
}

#[test]
fn five_nodes_converge_despite_loss_and_runs_repeat_exactly() {
    let run = || {
        let mut net = Net::new(MembershipConfig::for_tests());
        net.loss_one_in = 10;
        for i in 0..5 {
            net.add(i, 0);
        }
        net.run_until_converged(Duration::from_millis(50), Duration::from_secs(20))
            .expect("converges with 10% loss");
        net.run(Duration::from_secs(2));
        assert!(net.converged(), "still converged");
        net.log
    };
    let first = run();
    assert_eq!(
        first,
        run(),
        "same seeds, same inputs: same changes at the same times"
    );
}

#[test]
fn a_hundred_nodes_converge_and_all_see_one_die() {
    let mut net = Net::new(MembershipConfig::for_tests());
    for i in 0..100 {
        net.add(i, 0);
    }
    let took = net
        .run_until_converged(Duration::from_millis(100), Duration::from_secs(30))
        .expect("100 nodes converge");
    eprintln!("100 nodes converged in {took:?} of virtual time");
    assert!(took <= Duration::from_secs(10), "{took:?}");
    for m in net.nodes.values() {
        assert_eq!(m.members().len(), 99);
    }
    // One stops: all 99 others see it dead within the bound.
    net.stopped.push(node_id(50));
    let bound = net.config.detection_bound(100);
    let mut took = Duration::ZERO;
    while took < bound && (0..100).any(|i| i != 50 && net.state(i, 50) != Some(MemberState::Dead)) {
        net.run(Duration::from_millis(100));
        took += Duration::from_millis(100);
    }
    eprintln!("100 nodes: dead everywhere after {took:?} (bound {bound:?})");
    assert!((0..100).all(|i| i == 50 || net.state(i, 50) == Some(MemberState::Dead)));
}

#[test]
fn wire_round_trips_every_message_and_refuses_bad_ids() {
    use foca::Codec as _;
    let a = member(1, 7);
    let mut b = member(2, u32::MAX);
    b.addr = "[fd00::1]:9000".parse().unwrap();
    let messages = [
        Message::Ping(1),
        Message::Ack(2),
        Message::PingReq {
            target: b.clone(),
            probe_number: 3,
        },
        Message::IndirectPing {
            origin: a.clone(),
            probe_number: 4,
        },
        Message::IndirectAck {
            target: b.clone(),
            probe_number: 5,
        },
        Message::ForwardedAck {
            origin: a.clone(),
            probe_number: 6,
        },
        Message::Announce,
        Message::Feed,
        Message::Gossip,
        Message::Broadcast,
        Message::TurnUndead,
    ];
    let mut codec = Codec::default();
    for message in messages {
        let header = foca::Header {
            src: a.clone(),
            src_incarnation: 9,
            dst: b.clone(),
            message,
        };
        let mut buf = Vec::new();
        codec.encode_header(&header, &mut buf).unwrap();
        assert_eq!(Codec::read_header(&buf).unwrap(), header);
    }
    let mut small = [0u8; 10];
    assert!(matches!(
        codec.encode_member(&foca::Member::alive(a.clone()), &mut small[..]),
        Err(WireError::Full)
    ));
    assert!(Member::new("ABC", a.addr, 0).is_err());
    assert!(Member::new(&"0".repeat(63), a.addr, 0).is_err());
    // The newer bump wins, across the wrap too.
    use foca::Identity as _;
    assert!(b.renew().unwrap().win_addr_conflict(&b));
    assert!(!b.win_addr_conflict(&b.renew().unwrap()));
}

#[test]
fn the_default_config_detects_a_dead_node_in_seconds() {
    let mut net = Net::new(MembershipConfig::default());
    for i in 0..5 {
        net.add(i, 0);
    }
    net.run_until_converged(Duration::from_millis(500), Duration::from_secs(30))
        .expect("converges");
    let stop = net.now;
    net.stopped.push(node_id(4));
    let bound = net.config.detection_bound(5);
    assert_eq!(bound, Duration::from_secs(13));
    net.run(bound);
    let mut slowest = Duration::ZERO;
    for i in 0..4 {
        let down = net
            .changes(i, 4)
            .into_iter()
            .find_map(|(t, c)| matches!(c, Change::Down(_)).then(|| t.saturating_sub(stop)))
            .expect("declared dead");
        slowest = slowest.max(down);
    }
    eprintln!("default config: dead on every node {slowest:?} after it stopped");
    assert!(slowest <= bound, "{slowest:?}");
}
