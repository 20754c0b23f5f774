//! Cluster membership by SWIM ([`foca`]): who is in the cluster, who is alive, suspected, dead
//! or gone. A pure state machine in the style of quinn-proto: no sockets, no clock, no tasks.
//! The driver feeds it authenticated packets ([`Membership::on_packet`]), the time
//! ([`Membership::on_tick`] at [`Membership::next_deadline`]) and commands (join, leave,
//! remove); each call returns an [`Output`]: packets to send and membership changes. Given the
//! same seed and the same inputs it makes the same outputs.
//!
//! Trust: the transport (mutual TLS, [`crate::quic`]) tells us who sent each packet. A packet
//! whose header names another sender is refused before foca sees it, as are packets from a
//! removed (revoked) node, malformed packets and packets over [`MAX_PACKET`]; each refusal is
//! counted in [`MembershipStats`]. What an authenticated member says about third parties is
//! gossip and trusted as SWIM trusts it.
//!
//! Identities: a member is its node id (the prefix foca keys members by), the address it
//! listens on (data) and a `bump` that makes a new identity for the same node: a node declared
//! dead renews itself with `bump + 1`, and a restarted node should start with a bump above any
//! it used before (its start time in unix seconds does). The newer bump wins (serial-number
//! order, so it may wrap).
//!
//! Failure detection: every `probe_period` each node probes one member (round-robin over a
//! shuffled list); a member that answers neither the probe nor the indirect probes through
//! `indirect_probes` others within the period becomes *suspect*; if it does not refute within
//! `suspect_to_down_after` its prober declares it *dead*, and gossip (every `gossip_period` to
//! `gossip_fanout` members, and piggybacked on probes) spreads that. A dead node is thus seen
//! dead everywhere after: up to a probe period until some member probes it (at most `2(n-1)`
//! periods for `n` members, about one in practice), the probe period of the failed probe,
//! `suspect_to_down_after`, and a few gossip rounds. With the defaults (1 s, 3 s, 200 ms) that
//! is about 5 s (4.5 s measured with 5 nodes on a virtual clock), never more than
//! [`MembershipConfig::detection_bound`] (13 s for 5 nodes).
//!
//! Never imports the agent, `bolt-state`, `bolt-capsule` or `bolt-dns`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::{Duration, Instant};

use foca::{Foca, NoCustomBroadcast, Notification, PeriodicParams, Runtime, State, Timer};
use rand010::rngs::StdRng;
use rand010::SeedableRng;

pub use crate::membership_wire::WireError;
use crate::membership_wire::{valid_node_id, Codec};

/// The largest membership packet made or accepted: 1200 bytes, the smallest datagram every
/// QUIC path carries (RFC 9000 §14), so a packet never fragments whatever the transport; room
/// for about 20 cluster updates per packet (55 bytes each with an IPv6 address).
pub const MAX_PACKET: usize = 1200;

/// One cluster member's identity as foca sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// 64 lowercase hex digits: the hex of the node's event key id. The identity's prefix:
    /// two identities with the same node id are the same node, the newer bump wins.
    pub node_id: String,
    /// Where the node's mesh endpoint listens.
    pub addr: SocketAddr,
    /// Generation of the identity: raised when the node restarts or rejoins after being
    /// declared dead.
    pub bump: u32,
}

impl Member {
    /// A member with a checked node id.
    pub fn new(node_id: &str, addr: SocketAddr, bump: u32) -> Result<Self, MembershipError> {
        if !valid_node_id(node_id) {
            return Err(MembershipError::NodeId(node_id.to_owned()));
        }
        Ok(Self {
            node_id: node_id.to_owned(),
            addr,
            bump,
        })
    }
}

impl foca::Identity for Member {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.node_id.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Serial-number order (RFC 1982): newer when ahead by less than half the space.
        let ahead = self.bump.wrapping_sub(adversary.bump);
        if ahead == 0 {
            self.addr >= adversary.addr
        } else {
            ahead < 1 << 31
        }
    }
}

/// How this node sees a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Alive,
    /// Missed a probe: still counted in, dead unless it refutes in time.
    Suspect,
    /// Declared dead by the failure detector (or removed).
    Dead,
    /// Left the cluster on purpose.
    Left,
}

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub node_id: String,
    pub addr: SocketAddr,
    pub bump: u32,
    /// SWIM incarnation: raised by the member to refute a suspicion.
    pub incarnation: u16,
    pub state: MemberState,
    /// When this node saw the state last change.
    pub since: Instant,
}

/// A change of a member's state as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Now alive: joined, refuted a suspicion, or came back with a new identity.
    Up(Member),
    /// Missed a probe.
    Suspect(Member),
    /// Declared dead (or removed).
    Down(Member),
    /// Left the cluster.
    Left(Member),
}

/// What one call asks the driver to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Packets to send (each at most [`MAX_PACKET`] bytes) to the member's node id at its
    /// address; losing some is fine.
    pub send: Vec<(Member, Vec<u8>)>,
    /// Membership changes, in the order they were seen.
    pub changes: Vec<Change>,
}

/// Counters of packets accepted and refused, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipStats {
    /// Passed every check and handled by the protocol (which may still ignore it: addressed to
    /// an older identity of ours, or from a member it holds dead).
    pub accepted: u64,
    pub too_large: u64,
    pub malformed: u64,
    /// Header names a sender other than the authenticated one.
    pub spoofed: u64,
    /// From a removed node.
    pub removed: u64,
    /// Arrived after this node left.
    pub after_leave: u64,
    /// Well-formed but refused by the protocol (from ourselves, for an old identity, ...).
    pub protocol: u64,
    /// Timers the protocol refused (logged by the driver, harmless).
    pub timer_errors: u64,
}

/// One membership step that failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("bad node id {0:?}: use 64 lowercase hex digits")]
    NodeId(String),
    #[error("bad membership configuration: {0}")]
    Config(&'static str),
    #[error("packet of {0} bytes is over the {MAX_PACKET}-byte limit")]
    TooLarge(usize),
    #[error("malformed packet: {0}")]
    Malformed(#[source] WireError),
    #[error("packet from {from} claims to come from {claimed}")]
    Spoofed { from: String, claimed: String },
    #[error("packet from removed node {0}")]
    Removed(String),
    #[error("this node has left the cluster")]
    Left,
    #[error("a node cannot {0} itself")]
    Itself(&'static str),
    #[error("handle packet: {0}")]
    Protocol(#[source] foca::Error),
    #[error("announce to {node}: {source}")]
    Join {
        node: String,
        #[source]
        source: foca::Error,
    },
    #[error("leave the cluster: {0}")]
    Leave(#[source] foca::Error),
    #[error("remove {node}: {source}")]
    Remove {
        node: String,
        #[source]
        source: foca::Error,
    },
}

/// Timing and fan-out of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipConfig {
    /// How often this node probes one member.
    pub probe_period: Duration,
    /// How long a probe waits for its ack before asking others to probe indirectly; below
    /// `probe_period` (half of it or less leaves time for the indirect round).
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly.
    pub indirect_probes: usize,
    /// How long a suspect has to refute before it is declared dead.
    pub suspect_to_down_after: Duration,
    /// How many times each update is piggybacked or gossiped by each node.
    pub max_transmissions: u8,
    /// How often updates are gossiped, and to how many members.
    pub gossip_period: Duration,
    pub gossip_fanout: usize,
    /// How often this node asks a random member for its member list (finds members the
    /// gossip has not told it about).
    pub announce_period: Duration,
    /// How often this node announces itself to two members it thinks dead (heals partitions).
    pub announce_to_dead_period: Duration,
    /// How long a dead or left identity is remembered: that same identity cannot rejoin before
    /// (a higher bump can at any time).
    pub forget_dead_after: Duration,
}

impl Default for MembershipConfig {
    /// Tuned for a LAN: probe every second, 3 s to refute a suspicion, gossip every 200 ms.
    fn default() -> Self {
        Self {
            probe_period: Duration::from_secs(1),
            probe_rtt: Duration::from_millis(300),
            indirect_probes: 3,
            suspect_to_down_after: Duration::from_secs(3),
            max_transmissions: 10,
            gossip_period: Duration::from_millis(200),
            gossip_fanout: 3,
            announce_period: Duration::from_secs(30),
            announce_to_dead_period: Duration::from_secs(60),
            forget_dead_after: Duration::from_secs(24 * 3600),
        }
    }
}

impl MembershipConfig {
    /// Ten times faster than the default, for tests on a virtual clock.
    pub fn for_tests() -> Self {
        Self {
            probe_period: Duration::from_millis(100),
            probe_rtt: Duration::from_millis(30),
            indirect_probes: 3,
            suspect_to_down_after: Duration::from_millis(300),
            max_transmissions: 10,
            gossip_period: Duration::from_millis(20),
            gossip_fanout: 3,
            announce_period: Duration::from_secs(1),
            announce_to_dead_period: Duration::from_secs(2),
            forget_dead_after: Duration::from_secs(600),
        }
    }

    /// The longest a member that stops answering stays alive in the eyes of the others, in a
    /// cluster of `members` nodes without loss: some member probes it within `2(members - 1)`
    /// probe periods (round-robin over a list reshuffled each round), that probe fails by the
    /// end of its period, the prober declares it dead `suspect_to_down_after` later, and one
    /// more probe period covers the gossip rounds (at least five with `gossip_period` at most a
    /// fifth of `probe_period`) that tell everyone. Typical detection is much faster: about
    /// `2 * probe_period + suspect_to_down_after` (5 s with the defaults).
    pub fn detection_bound(&self, members: usize) -> Duration {
        let periods = u32::try_from(members.max(1).saturating_mul(2)).unwrap_or(u32::MAX);
        self.probe_period.saturating_mul(periods) + self.suspect_to_down_after
    }

    fn to_foca(&self) -> Result<foca::Config, MembershipError> {
        let zero = Duration::ZERO;
        if self.probe_rtt == zero || self.probe_rtt >= self.probe_period {
            return Err(MembershipError::Config(
                "probe_rtt must be above zero and below probe_period",
            ));
        }
        if self.suspect_to_down_after == zero
            || self.gossip_period == zero
            || self.announce_period == zero
            || self.announce_to_dead_period == zero
        {
            return Err(MembershipError::Config("periods must be above zero"));
        }
        let count = |n: usize, what| NonZeroUsize::new(n).ok_or(MembershipError::Config(what));
        let mut config = foca::Config::simple();
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.num_indirect_probes = count(self.indirect_probes, "indirect_probes is zero")?;
        config.max_transmissions = NonZeroU8::new(self.max_transmissions)
            .ok_or(MembershipError::Config("max_transmissions is zero"))?;
        config.suspect_to_down_after = self.suspect_to_down_after;
        config.remove_down_after = Some(self.forget_dead_after);
        config.max_packet_size = count(MAX_PACKET, "max packet size is zero")?;
        config.notify_down_members = true;
        config.periodic_announce = Some(PeriodicParams {
            frequency: self.announce_period,
            num_members: count(1, "announce fan-out is zero")?,
        });
        config.periodic_announce_to_down_members = Some(PeriodicParams {
            frequency: self.announce_to_dead_period,
            num_members: count(2, "announce fan-out is zero")?,
        });
        config.periodic_gossip = Some(PeriodicParams {
            frequency: self.gossip_period,
            num_members: count(self.gossip_fanout, "gossip_fanout is zero")?,
        });
        Ok(config)
    }
}

/// What foca asked for during one call.
#[derive(Default)]
struct Collect {
    send: Vec<(Member, Vec<u8>)>,
    timers: Vec<(Duration, Timer<Member>)>,
}

impl Runtime<Member> for Collect {
    fn notify(&mut self, _notification: Notification<'_, Member>) {
        // Changes are read from foca's member list after each call (`Membership::sync`): it
        // also shows suspicions and leaves, which foca does not notify.
    }

    fn send_to(&mut self, to: Member, data: &[u8]) {
        self.send.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<Member>, after: Duration) {
        self.timers.push((after, event));
    }
}

/// What this node last reported about a member.
#[derive(Debug)]
struct Seen {
    member: Member,
    incarnation: u16,
    state: MemberState,
    since: Instant,
}

/// The membership state machine of one node.
pub struct Membership {
    foca: Foca<Member, Codec, StdRng, NoCustomBroadcast>,
    codec: Codec,
    timers: BTreeMap<Instant, Vec<Timer<Member>>>,
    seen: BTreeMap<String, Seen>,
    /// Changes made by a call that then failed, handed out by the next call.
    pending: Vec<Change>,
    stats: MembershipStats,
    left: bool,
    /// Members given to [`Membership::join`]: announced to again, every `retry_every`, while
    /// this node knows no live member (a lost announce, or all others gone).
    seeds: Vec<Member>,
    retry_at: Option<Instant>,
    retry_every: Duration,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("me", self.foca.identity())
            .field("members", &self.seen.len())
            .field("stats", &self.stats)
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// A node alone, knowing nobody yet: [`Membership::join`] introduces it to a member.
    /// `seed` drives the random choices (probe order, gossip targets): give each node its own
    /// (from the OS in production); the same seed and inputs give the same outputs. No timer
    /// runs until the node knows a member, so `now` only fixes the API's shape.
    pub fn new(
        me: Member,
        config: MembershipConfig,
        seed: u64,
        _now: Instant,
    ) -> Result<Self, MembershipError> {
        if !valid_node_id(&me.node_id) {
            return Err(MembershipError::NodeId(me.node_id));
        }
        let codec = Codec::default();
        let foca = Foca::new(
            me,
            config.to_foca()?,
            StdRng::seed_from_u64(seed),
            codec.clone(),
        );
        Ok(Self {
            foca,
            codec,
            timers: BTreeMap::new(),
            seen: BTreeMap::new(),
            pending: Vec::new(),
            stats: MembershipStats::default(),
            left: false,
            seeds: Vec::new(),
            retry_at: None,
            retry_every: config.probe_period,
        })
    }

    /// This node's current identity (its bump rises when it rejoins after being declared dead).
    pub fn me(&self) -> &Member {
        self.foca.identity()
    }

    /// Counters of accepted and refused packets.
    pub fn stats(&self) -> &MembershipStats {
        &self.stats
    }

    /// Announces this node to a known member (its bump does not matter: any identity with
    /// the node id reaches it). Its answer brings the member list. The member is kept as a
    /// seed: while this node knows no live member, it announces to its seeds again every
    /// `probe_period`.
    pub fn join(&mut self, peer: Member, now: Instant) -> Result<Output, MembershipError> {
        if !valid_node_id(&peer.node_id) {
            return Err(MembershipError::NodeId(peer.node_id));
        }
        if peer.node_id == self.me().node_id {
            return Err(MembershipError::Itself("join"));
        }
        if self.left {
            return Err(MembershipError::Left);
        }
        let node = peer.node_id.clone();
        self.seeds.retain(|s| s.node_id != peer.node_id);
        self.seeds.push(peer.clone());
        let mut runtime = Collect::default();
        let result = self.foca.announce(peer, &mut runtime);
        let out = self.finish(runtime, now);
        self.keep_on_error(out, result, |source| MembershipError::Join { node, source })
    }

    /// Handles a packet that the transport authenticated as sent by node `from`.
    pub fn on_packet(
        &mut self,
        from: &str,
        bytes: &[u8],
        now: Instant,
    ) -> Result<Output, MembershipError> {
        if self.left {
            self.stats.after_leave += 1;
            return Err(MembershipError::Left);
        }
        if self.codec.known().removed.contains(from) {
            self.stats.removed += 1;
            return Err(MembershipError::Removed(from.to_owned()));
        }
        if bytes.len() > MAX_PACKET {
            self.stats.too_large += 1;
            return Err(MembershipError::TooLarge(bytes.len()));
        }
        let header = match Codec::read_header(bytes) {
            Ok(header) => header,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(MembershipError::Malformed(e));
            }
        };
        if header.src.node_id != from {
            self.stats.spoofed += 1;
            return Err(MembershipError::Spoofed {
                from: from.to_owned(),
                claimed: header.src.node_id,
            });
        }
        let mut runtime = Collect::default();
        let result = self.foca.handle_data(bytes, &mut runtime);
        let out = self.finish(runtime, now);
        match &result {
            Ok(()) => self.stats.accepted += 1,
            Err(foca::Error::Decode(_) | foca::Error::MalformedPacket) => self.stats.malformed += 1,
            Err(_) => self.stats.protocol += 1,
        }
        self.keep_on_error(out, result, MembershipError::Protocol)
    }

    /// Fires every timer due at `now`.
    pub fn on_tick(&mut self, now: Instant) -> Output {
        let mut out = Output::default();
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            let removed = self.codec.known().removed.clone();
            let mut runtime = Collect::default();
            for seed in self.seeds.iter().filter(|s| !removed.contains(&s.node_id)) {
                if self.foca.announce(seed.clone(), &mut runtime).is_err() {
                    self.stats.timer_errors += 1;
                }
            }
            out = self.finish(runtime, now);
        }
        while let Some(entry) = self.timers.first_entry() {
            if *entry.key() > now {
                break;
            }
            let mut due = entry.remove();
            // foca's order for timers due together (indirect probes before the next probe).
            due.sort();
            let mut runtime = Collect::default();
            for timer in due {
                if self.stale_suspicion(&timer) {
                    continue;
                }
                if self.foca.handle_timer(timer, &mut runtime).is_err() {
                    self.stats.timer_errors += 1;
                }
            }
            let step = self.finish(runtime, now);
            out.send.extend(step.send);
            out.changes.extend(step.changes);
        }
        out
    }

    /// Whether `timer` would end a suspicion the member has since refuted. foca 2.0.0 leaves
    /// such a member alive but still sends it "you are down" (`TurnUndead`), which makes it
    /// renew its identity for nothing; such timers are dropped here instead.
    fn stale_suspicion(&self, timer: &Timer<Member>) -> bool {
        let Timer::ChangeSuspectToDown {
            member_id,
            incarnation,
            ..
        } = timer
        else {
            return false;
        };
        self.foca
            .iter_membership_state()
            .find(|m| m.id().node_id == member_id.node_id)
            .is_some_and(|m| m.id() != member_id || m.incarnation() != *incarnation)
    }

    /// When [`Membership::on_tick`] has work next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timer = self.timers.keys().next().copied();
        match (timer, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Leaves the cluster: tells a few members, who spread it, that this node left (others
    /// see it [`MemberState::Left`], not dead). Afterwards packets are refused and no timer
    /// runs; to come back, make a new `Membership` with a higher bump.
    pub fn leave(&mut self, now: Instant) -> Result<Output, MembershipError> {
        if self.left {
            return Err(MembershipError::Left);
        }
        let me = self.me().clone();
        self.codec.known().left.insert((me.node_id, me.bump));
        let mut runtime = Collect::default();
        let result = self.foca.leave_cluster(&mut runtime);
        self.left = true;
        let out = self.finish(runtime, now);
        self.timers.clear();
        self.retry_at = None;
        self.keep_on_error(out, result, MembershipError::Leave)
    }

    /// Removes a revoked node: declares it dead (and tells the cluster), refuses its packets
    /// from now on and reads any later news of it as dead.
    pub fn remove(&mut self, node_id: &str, now: Instant) -> Result<Output, MembershipError> {
        if !valid_node_id(node_id) {
            return Err(MembershipError::NodeId(node_id.to_owned()));
        }
        if node_id == self.me().node_id {
            return Err(MembershipError::Itself("remove"));
        }
        self.codec.known().removed.insert(node_id.to_owned());
        let known: Vec<foca::Member<Member>> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.id().node_id == node_id && m.state() != State::Down)
            .map(|m| foca::Member::down(m.id().clone()))
            .collect();
        let mut runtime = Collect::default();
        let result = self.foca.apply_many(known.into_iter(), true, &mut runtime);
        let out = self.finish(runtime, now);
        let node = node_id.to_owned();
        self.keep_on_error(out, result, |source| MembershipError::Remove {
            node,
            source,
        })
    }

    /// Every other member this node knows of (itself excluded), dead and left ones until
    /// `forget_dead_after`, by node id. After [`Membership::leave`] it stays as it was then.
    pub fn members(&self) -> Vec<MemberView> {
        self.seen
            .values()
            .map(|s| MemberView {
                node_id: s.member.node_id.clone(),
                addr: s.member.addr,
                bump: s.member.bump,
                incarnation: s.incarnation,
                state: s.state,
                since: s.since,
            })
            .collect()
    }

    /// Returns the output of a call that may have failed halfway: its changes are kept for
    /// the next call, its packets dropped (as if lost).
    fn keep_on_error<E>(
        &mut self,
        out: Output,
        result: Result<(), foca::Error>,
        error: impl FnOnce(foca::Error) -> E,
    ) -> Result<Output, E> {
        match result {
            Ok(()) => Ok(out),
            Err(e) => {
                self.pending = out.changes;
                Err(error(e))
            }
        }
    }

    /// Schedules what foca asked for and reads the changes.
    fn finish(&mut self, runtime: Collect, now: Instant) -> Output {
        for (after, timer) in runtime.timers {
            // A deadline past the end of time (a configured week of centuries) never fires.
            if let Some(at) = now.checked_add(after) {
                self.timers.entry(at).or_default().push(timer);
            }
        }
        let mut changes = std::mem::take(&mut self.pending);
        self.sync(now, &mut changes);
        if self.left || self.seeds.is_empty() || self.foca.num_members() > 0 {
            self.retry_at = None;
        } else if self.retry_at.is_none() {
            self.retry_at = now.checked_add(self.retry_every);
        }
        Output {
            send: runtime.send,
            changes,
        }
    }

    /// Compares foca's member list with what was last reported and records the changes.
    fn sync(&mut self, now: Instant, changes: &mut Vec<Change>) {
        let me = &self.foca.identity().node_id;
        let mut known = self.codec.known();
        let down: BTreeSet<(&str, u32)> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == State::Down)
            .map(|m| (m.id().node_id.as_str(), m.id().bump))
            .collect();
        // Leave marks live as long as foca keeps the identity down (a mark read from a packet
        // foca then ignored goes at once).
        known
            .left
            .retain(|(node, bump)| node == me || down.contains(&(node.as_str(), *bump)));
        let mut present = BTreeSet::new();
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            if id.node_id == *me {
                continue; // an old identity of ours, declared down when we renewed
            }
            present.insert(id.node_id.as_str());
            let state = match m.state() {
                State::Alive => MemberState::Alive,
                State::Suspect => MemberState::Suspect,
                State::Down if known.left.contains(&(id.node_id.clone(), id.bump)) => {
                    MemberState::Left
                }
                State::Down => MemberState::Dead,
            };
            let change = match state {
                MemberState::Alive => Change::Up(id.clone()),
                MemberState::Suspect => Change::Suspect(id.clone()),
                MemberState::Dead => Change::Down(id.clone()),
                MemberState::Left => Change::Left(id.clone()),
            };
            match self.seen.get_mut(&id.node_id) {
                Some(seen) => {
                    seen.incarnation = m.incarnation();
                    let renamed = seen.member != *id;
                    if renamed {
                        seen.member = id.clone();
                    }
                    if seen.state == state && !(renamed && state == MemberState::Alive) {
                        continue;
                    }
                    seen.state = state;
                    seen.since = now;
                    changes.push(change);
                }
                None => {
                    self.seen.insert(
                        id.node_id.clone(),
                        Seen {
                            member: id.clone(),
                            incarnation: m.incarnation(),
                            state,
                            since: now,
                        },
                    );
                    // A node first heard of as dead or gone was never up here: no change.
                    if matches!(state, MemberState::Alive | MemberState::Suspect) {
                        changes.push(change);
                    }
                }
            }
        }
        self.seen.retain(|node, _| present.contains(node.as_str()));
    }
}

#[cfg(test)]
#[path = "membership_tests.rs"]
mod tests;
