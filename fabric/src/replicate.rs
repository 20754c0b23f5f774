//! Event replication as a sans-IO state machine: rumour pushes on append plus periodic
//! anti-entropy, so an event appended on any node reaches every live node.
//!
//! [`Replicator`] takes what happened (a local append, a message from an authenticated peer, the
//! clock) and returns what to send; it never touches a socket or a clock. The node's log sits
//! behind [`Store`] (the agent's redb log, or [`crate::sim::MemStore`] in simulations): the
//! replicator hands it each origin's run in order and the store decides (sequence, chain,
//! signature). The protocol:
//!
//! - **Push** (rumour): events new to this node, its own or relayed, go to `fanout` random peers
//!   (never back to the sender). A node forwards an event once, when it first stores it, so each
//!   event costs each node about `fanout` sends.
//! - **Anti-entropy**: every `sync_interval` (jittered) a node sends its version vector to one
//!   random peer (`Digest { reply: true }`); the peer answers with the events the sender lacks
//!   (up to `answer_budget` bytes, `more` when cut short) and, if it lacks some itself, with its
//!   own digest. A gap seen in a push asks the pusher at once (repair).
//! - **Reorder buffer**: events that arrive ahead of a gap wait in a bounded per-origin buffer;
//!   when it is full they are dropped and anti-entropy repairs them later. Nothing blocks.
//!
//! Any node relays any origin's events (they are signed by their origin), so nodes that cannot
//! reach each other converge through a third. Never imports the agent, `bolt-state`,
//! `bolt-capsule` or `bolt-dns`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bolt_events::{Envelope, NodeId, VersionVector};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::frame::Message;

/// Why the store did not take a run.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The events are bad (gap, fork, forged signature, conflicting copy): counted, dropped.
    #[error("refused ({reason}): {detail}")]
    Refused {
        reason: &'static str,
        detail: String,
    },
    /// The store itself failed; the events may be retried later.
    #[error("store failed: {0}")]
    Failed(String),
}

/// A node's event log as the replicator sees it.
pub trait Store {
    /// Highest sequence held per origin.
    fn version_vector(&self) -> Result<VersionVector, StoreError>;
    /// Up to `max` events of `origin` from `from_seq` on, in sequence order, ending where the
    /// receiver can authenticate them (at a signed event).
    fn read_origin(
        &self,
        origin: NodeId,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<Envelope>, StoreError>;
    /// Stores one origin's run, which starts right after the origin's stored tip. All or nothing.
    fn append_run(&mut self, run: Vec<Envelope>) -> Result<(), StoreError>;
}

/// Tuning of the protocol.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// Peers each new event is pushed to.
    pub fanout: usize,
    /// Mean time between two anti-entropy rounds (jittered ±25%).
    pub sync_interval: Duration,
    /// Bytes of events one digest answer or push frame carries at most.
    pub answer_budget: usize,
    /// Events one origin may keep waiting behind a gap.
    pub max_pending_per_origin: usize,
    /// Events all origins together may keep waiting.
    pub max_pending: usize,
    /// Least time between two repair requests to one peer.
    pub repair_interval: Duration,
    /// Least time between two digest answers to one peer: a peer that floods digests gets one
    /// answer per interval (each can read up to `answer_budget` from the store), the rest are
    /// dropped and counted.
    pub answer_interval: Duration,
    /// Events one peer may push per second (a token bucket of one second's worth); the excess
    /// is dropped and counted, and anti-entropy brings what was honest.
    pub push_rate: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            fanout: 4,
            sync_interval: Duration::from_millis(500),
            answer_budget: 1 << 20,
            max_pending_per_origin: 4096,
            max_pending: 65_536,
            repair_interval: Duration::from_millis(100),
            answer_interval: Duration::from_millis(50),
            push_rate: 100_000,
        }
    }
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: NodeId,
    pub msg: Message,
}

/// Counters, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationStats {
    /// Events received in pushes and answers (before deduplication).
    pub received: u64,
    /// Events stored that this node did not hold before.
    pub stored: u64,
    /// Received events this node already held.
    pub duplicates: u64,
    /// Other origins' events forwarded to peers.
    pub relayed: u64,
    /// Own events pushed to peers.
    pub pushed: u64,
    /// Events refused, by reason.
    pub refused: BTreeMap<&'static str, u64>,
    /// Events dropped because a reorder buffer was full (anti-entropy repairs them).
    pub dropped_pending: u64,
    /// Anti-entropy rounds started.
    pub syncs: u64,
    /// Digests left unanswered because their sender asked again too soon.
    pub digests_limited: u64,
    /// Pushed events dropped because their sender was over its push rate.
    pub pushes_limited: u64,
    /// Digests from peers holding exactly our events whose state hash differs from ours: the
    /// folds diverged (a bug or a damaged node); each is logged by the driver.
    pub divergences: u64,
    /// The last peer seen diverged.
    pub diverged_from: Option<NodeId>,
}

/// The replication state machine of one node.
#[derive(Debug)]
pub struct Replicator {
    me: NodeId,
    config: ReplicationConfig,
    rng: StdRng,
    peers: Vec<NodeId>,
    /// What the store holds, per origin (kept in step with every append).
    vv: VersionVector,
    /// Highest sequence heard of per origin (from digests and events): the lag's reference.
    heard: VersionVector,
    pending: BTreeMap<NodeId, BTreeMap<u64, Envelope>>,
    pending_len: usize,
    next_sync: Instant,
    last_repair: BTreeMap<NodeId, Instant>,
    last_answer: BTreeMap<NodeId, Instant>,
    /// This node's state hash and the events it was folded from (see [`Replicator::set_state_hash`]).
    state_hash: Option<(VersionVector, [u8; 32])>,
    /// Per peer: push tokens left and when they were last refilled.
    push_tokens: BTreeMap<NodeId, (f64, Instant)>,
    stats: ReplicationStats,
}

impl Replicator {
    /// A replicator for node `me` whose store holds `vv`.
    pub fn new(
        me: NodeId,
        vv: VersionVector,
        config: ReplicationConfig,
        seed: u64,
        now: Instant,
    ) -> Replicator {
        let mut rng = StdRng::seed_from_u64(seed);
        let first = jitter(&mut rng, config.sync_interval);
        Replicator {
            me,
            heard: vv.clone(),
            vv,
            config,
            rng,
            peers: Vec::new(),
            pending: BTreeMap::new(),
            pending_len: 0,
            next_sync: now + first,
            last_repair: BTreeMap::new(),
            last_answer: BTreeMap::new(),
            state_hash: None,
            push_tokens: BTreeMap::new(),
            stats: ReplicationStats::default(),
        }
    }

    /// The live peers (from membership); this node is left out if present.
    pub fn set_peers(&mut self, peers: impl IntoIterator<Item = NodeId>) {
        let set: BTreeSet<NodeId> = peers.into_iter().filter(|p| *p != self.me).collect();
        self.peers = set.into_iter().collect();
    }

    /// The peers it sends to.
    pub fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    /// What the store holds, per origin.
    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    /// Counters so far.
    pub fn stats(&self) -> &ReplicationStats {
        &self.stats
    }

    /// Events waiting behind a gap.
    pub fn pending(&self) -> usize {
        self.pending_len
    }

    /// Per origin, how many events this node has heard of but does not hold.
    pub fn lag(&self) -> BTreeMap<NodeId, u64> {
        self.heard
            .iter()
            .map(|(o, h)| (*o, h.saturating_sub(self.vv.get(o).copied().unwrap_or(0))))
            .collect()
    }

    /// Tells the replicator this node's state hash with exactly the events of `vv` folded;
    /// digests carry it while the store still holds just those events.
    pub fn set_state_hash(&mut self, vv: VersionVector, hash: [u8; 32]) {
        self.state_hash = Some((vv, hash));
    }

    /// The state hash valid for what the store holds now, if known.
    fn current_state_hash(&self) -> Option<[u8; 32]> {
        self.state_hash
            .as_ref()
            .filter(|(vv, _)| *vv == self.vv)
            .map(|(_, h)| *h)
    }

    /// A digest of what the store holds, with the state hash when it is current.
    fn digest(&self, reply: bool) -> Message {
        let mut msg = Message::digest(&self.vv, reply);
        if let Message::Digest { state_hash, .. } = &mut msg {
            *state_hash = self.current_state_hash();
        }
        msg
    }

    /// When [`Replicator::on_tick`] next has work.
    pub fn next_deadline(&self) -> Instant {
        self.next_sync
    }

    /// This node appended `events` to its own log: push them.
    pub fn on_local(&mut self, events: &[Envelope]) -> Vec<Outgoing> {
        for e in events {
            let tip = self.vv.entry(e.origin).or_insert(0);
            *tip = (*tip).max(e.seq);
            let heard = self.heard.entry(e.origin).or_insert(0);
            *heard = (*heard).max(e.seq);
        }
        self.stats.pushed += events.len() as u64;
        self.push(events, None)
    }

    /// Time passed: start an anti-entropy round when one is due.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Outgoing> {
        if now < self.next_sync {
            return Vec::new();
        }
        self.next_sync = now + jitter(&mut self.rng, self.config.sync_interval);
        let Some(peer) = self.peers.choose(&mut self.rng).copied() else {
            return Vec::new();
        };
        self.stats.syncs += 1;
        vec![Outgoing {
            to: peer,
            msg: self.digest(true),
        }]
    }

    /// A message from `from` (its id authenticated by the transport).
    pub fn on_message(
        &mut self,
        store: &mut dyn Store,
        from: NodeId,
        msg: Message,
        now: Instant,
    ) -> Vec<Outgoing> {
        match msg {
            Message::Push { mut events } => {
                let allowed = self.take_push_tokens(from, events.len(), now);
                if allowed < events.len() {
                    self.stats.pushes_limited += (events.len() - allowed) as u64;
                    events.truncate(allowed);
                }
                self.on_events(store, from, events, false, now)
            }
            Message::Events { events, more } => self.on_events(store, from, events, more, now),
            Message::Digest {
                vv,
                reply,
                state_hash,
            } => {
                let due = self.last_answer.get(&from).is_none_or(|t| {
                    now.saturating_duration_since(*t) >= self.config.answer_interval
                });
                if !due {
                    self.stats.digests_limited += 1;
                    return Vec::new();
                }
                self.last_answer.insert(from, now);
                if let (Some(theirs), Some(ours)) = (state_hash, self.current_state_hash()) {
                    let same_events = vv.len() == self.vv.len()
                        && vv.iter().all(|(o, s)| self.vv.get(o) == Some(s));
                    if same_events && theirs != ours {
                        self.stats.divergences += 1;
                        self.stats.diverged_from = Some(from);
                    }
                }
                self.on_digest(store, from, vv, reply)
            }
        }
    }

    /// How many of `n` pushed events `from` may have now (token bucket, one second deep).
    fn take_push_tokens(&mut self, from: NodeId, n: usize, now: Instant) -> usize {
        let rate = self.config.push_rate as f64;
        let (tokens, at) = self.push_tokens.entry(from).or_insert((rate, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * rate;
        *tokens = (*tokens + refill).min(rate);
        *at = now;
        let allowed = (*tokens as usize).min(n);
        *tokens -= allowed as f64;
        allowed
    }

    fn refuse(&mut self, reason: &'static str, n: u64) {
        *self.stats.refused.entry(reason).or_insert(0) += n;
    }

    fn on_events(
        &mut self,
        store: &mut dyn Store,
        from: NodeId,
        raw: Vec<Vec<u8>>,
        more: bool,
        now: Instant,
    ) -> Vec<Outgoing> {
        self.stats.received += raw.len() as u64;
        let mut touched = BTreeSet::new();
        let mut decoded = Vec::with_capacity(raw.len());
        for bytes in raw {
            match Envelope::from_bytes(&bytes) {
                Ok(env) => decoded.push(env),
                Err(_) => self.refuse("malformed", 1),
            }
        }
        // In sequence order, so a run that continues the tip is seen as one (and never
        // dropped by a full buffer).
        decoded.sort_by_key(|e| (e.origin, e.seq));
        for env in decoded {
            let heard = self.heard.entry(env.origin).or_insert(0);
            *heard = (*heard).max(env.seq);
            let tip = self.vv.get(&env.origin).copied().unwrap_or(0);
            if env.origin == self.me && env.seq > tip {
                // Someone holds events of ours that we do not: never take them as our own.
                self.refuse("own origin", 1);
                continue;
            }
            if env.seq <= tip {
                self.stats.duplicates += 1;
                continue;
            }
            self.hold(env, tip, &mut touched);
        }
        let mut stored = Vec::new();
        let mut gap = false;
        for origin in touched {
            stored.extend(self.drain(store, origin));
            gap |= self.pending.get(&origin).is_some_and(|p| !p.is_empty());
        }
        let mut out = self.push(&stored, Some(from));
        let repair_due = self
            .last_repair
            .get(&from)
            .is_none_or(|t| now.saturating_duration_since(*t) >= self.config.repair_interval);
        if more || (gap && repair_due) {
            self.last_repair.insert(from, now);
            out.push(Outgoing {
                to: from,
                msg: self.digest(false),
            });
        }
        out
    }

    /// Keeps an event in its origin's reorder buffer, within the caps.
    fn hold(&mut self, env: Envelope, tip: u64, touched: &mut BTreeSet<NodeId>) {
        let origin = env.origin;
        let buf = self.pending.entry(origin).or_default();
        if buf.contains_key(&env.seq) {
            self.stats.duplicates += 1;
            return;
        }
        // Whether it continues a gapless run from the tip: such events are stored at once,
        // so they pass the caps.
        let continues = match (buf.first_key_value(), buf.last_key_value()) {
            (Some((first, _)), Some((last, _))) => {
                *first == tip + 1 && last - first + 1 == buf.len() as u64 && env.seq == last + 1
            }
            _ => env.seq == tip + 1,
        };
        if !continues
            && (buf.len() >= self.config.max_pending_per_origin
                || self.pending_len >= self.config.max_pending)
        {
            // Full: keep the events nearest the tip (they fill the gap first); drop the
            // farthest, this one or the buffer's last.
            self.stats.dropped_pending += 1;
            match buf.last_key_value() {
                Some((last, _)) if *last > env.seq => {
                    let last = *last;
                    buf.remove(&last);
                    buf.insert(env.seq, env);
                    touched.insert(origin);
                }
                _ => {}
            }
            return;
        }
        buf.insert(env.seq, env);
        self.pending_len += 1;
        touched.insert(origin);
    }

    /// Stores the run that continues `origin`'s tip from the reorder buffer.
    fn drain(&mut self, store: &mut dyn Store, origin: NodeId) -> Vec<Envelope> {
        let tip = self.vv.get(&origin).copied().unwrap_or(0);
        let Some(buf) = self.pending.get_mut(&origin) else {
            return Vec::new();
        };
        // The gapless run from the tip, cut after its last signed event: the events after it
        // cannot be authenticated yet and wait for the rest of their run (batch signatures).
        let mut end = None;
        let mut seq = tip + 1;
        while let Some(env) = buf.get(&seq) {
            if env.is_signed() {
                end = Some(seq);
            }
            seq += 1;
        }
        let Some(end) = end else {
            return Vec::new();
        };
        let mut run = Vec::new();
        for s in tip + 1..=end {
            if let Some(env) = buf.remove(&s) {
                run.push(env);
            }
        }
        let next = end + 1;
        self.pending_len -= run.len();
        match store.append_run(run.clone()) {
            Ok(()) => {
                self.vv.insert(origin, next - 1);
                self.stats.stored += run.len() as u64;
                run
            }
            Err(StoreError::Refused { reason, .. }) => {
                // The run is bad; what waits behind it chains to it: drop both.
                let behind = buf.len();
                self.pending_len -= behind;
                self.pending.remove(&origin);
                self.refuse(reason, (run.len() + behind) as u64);
                Vec::new()
            }
            Err(StoreError::Failed(_)) => {
                // Local trouble: anti-entropy brings the events again.
                self.refuse("store failed", run.len() as u64);
                Vec::new()
            }
        }
    }

    fn on_digest(
        &mut self,
        store: &mut dyn Store,
        from: NodeId,
        theirs: Vec<(NodeId, u64)>,
        reply: bool,
    ) -> Vec<Outgoing> {
        let theirs: VersionVector = theirs.into_iter().collect();
        let mut out = Vec::new();
        let mut we_lack = false;
        for (origin, seq) in &theirs {
            let heard = self.heard.entry(*origin).or_insert(0);
            *heard = (*heard).max(*seq);
            we_lack |= self.vv.get(origin).copied().unwrap_or(0) < *seq;
        }
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for (origin, ours) in self.vv.clone() {
            let have = theirs.get(&origin).copied().unwrap_or(0);
            if have >= ours {
                continue;
            }
            if bytes >= self.config.answer_budget {
                more = true;
                break;
            }
            let want = (ours - have).min(4096) as usize;
            let Ok(run) = store.read_origin(origin, have + 1, want) else {
                continue;
            };
            for e in run {
                let b = e.to_bytes();
                bytes += b.len();
                events.push(b);
                if bytes >= self.config.answer_budget {
                    more = true;
                    break;
                }
            }
            more |= have + (want as u64) < ours;
        }
        if !events.is_empty() {
            out.push(Outgoing {
                to: from,
                msg: Message::Events { events, more },
            });
        }
        if reply && we_lack {
            out.push(Outgoing {
                to: from,
                msg: self.digest(false),
            });
        }
        out
    }

    /// Pushes `events` to `fanout` random peers other than `except`, in frames within budget.
    fn push(&mut self, events: &[Envelope], except: Option<NodeId>) -> Vec<Outgoing> {
        if events.is_empty() {
            return Vec::new();
        }
        let relayed = events.iter().filter(|e| e.origin != self.me).count() as u64;
        let candidates: Vec<NodeId> = self
            .peers
            .iter()
            .copied()
            .filter(|p| Some(*p) != except)
            .collect();
        let targets: Vec<NodeId> = candidates
            .choose_multiple(&mut self.rng, self.config.fanout)
            .copied()
            .collect();
        self.stats.relayed += relayed * targets.len() as u64;
        let mut frames = Vec::new();
        let mut frame = Vec::new();
        let mut bytes = 0;
        for e in events {
            let b = e.to_bytes();
            if bytes + b.len() > self.config.answer_budget && !frame.is_empty() {
                frames.push(std::mem::take(&mut frame));
                bytes = 0;
            }
            bytes += b.len();
            frame.push(b);
        }
        frames.push(frame);
        let mut out = Vec::new();
        for to in targets {
            for f in &frames {
                out.push(Outgoing {
                    to,
                    msg: Message::Push { events: f.clone() },
                });
            }
        }
        out
    }
}

fn jitter(rng: &mut StdRng, mean: Duration) -> Duration {
    let ms = mean.as_millis().max(4) as u64;
    Duration::from_millis(rng.gen_range(ms * 3 / 4..=ms * 5 / 4))
}

#[cfg(test)]
#[path = "replicate_tests.rs"]
mod tests;
