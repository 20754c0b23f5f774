//! A deterministic, in-process simulation of a cluster's replication: N [`Replicator`]s over a
//! simulated network (latency with jitter, loss, blocked links, nodes down), in virtual time,
//! with no sockets and no threads. Same seed, same run.
//!
//! It measures what the protocol promises: the time for an event to reach every node, and the
//! bytes each node sends per event. Messages go through their real encoding ([`Message`]) and
//! events through their real envelopes; [`MemStore`] keeps each node's log in memory and checks
//! sequence and chain (and signatures, when asked; the agent's log always does).
//!
//! Never imports the agent, `bolt-state`, `bolt-capsule` or `bolt-dns`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

use bolt_events::{Envelope, Hash, Hlc, NodeId, NodeKey, VersionVector, CURRENT_SCHEMA};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::frame::Message;
use crate::replicate::{Outgoing, ReplicationConfig, Replicator, Store, StoreError};

/// One node's log in memory: each origin's events in sequence order.
#[derive(Debug, Default)]
pub struct MemStore {
    logs: BTreeMap<NodeId, Vec<Envelope>>,
    check_signatures: bool,
}

impl MemStore {
    /// An empty store; `check_signatures` verifies every event's signature on append.
    pub fn new(check_signatures: bool) -> MemStore {
        MemStore {
            logs: BTreeMap::new(),
            check_signatures,
        }
    }

    /// Appends this node's own next event (sealed with `key`); `signed` for the last event of
    /// a commit group (batch signatures: the chain authenticates the events before it).
    pub fn append_local(
        &mut self,
        key: &NodeKey,
        hlc: Hlc,
        payload: Vec<u8>,
        signed: bool,
    ) -> Envelope {
        let log = self.logs.entry(key.id()).or_default();
        let (seq, prev) = log
            .last()
            .map(|e| (e.seq + 1, e.hash()))
            .unwrap_or((1, Hash::ZERO));
        let mut env = key.seal_bytes(seq, hlc, prev, CURRENT_SCHEMA, payload);
        if !signed {
            env.sig = None;
        }
        log.push(env.clone());
        env
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.logs.values().map(Vec::len).sum()
    }

    /// True when it holds no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A hash of everything held, in total order: equal stores, equal hashes.
    pub fn content_hash(&self) -> Hash {
        let mut all: Vec<&Envelope> = self.logs.values().flatten().collect();
        all.sort_by_key(|e| e.order_key());
        let mut h = blake3::Hasher::new();
        for e in all {
            h.update(&e.hash().0);
        }
        Hash(*h.finalize().as_bytes())
    }
}

impl Store for MemStore {
    fn version_vector(&self) -> Result<VersionVector, StoreError> {
        Ok(self
            .logs
            .iter()
            .filter_map(|(o, l)| l.last().map(|e| (*o, e.seq)))
            .collect())
    }

    fn read_origin(
        &self,
        origin: NodeId,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        let Some(log) = self.logs.get(&origin) else {
            return Ok(Vec::new());
        };
        let start = (from_seq.max(1) - 1) as usize;
        Ok(log.iter().skip(start).take(max).cloned().collect())
    }

    fn append_run(&mut self, run: Vec<Envelope>) -> Result<(), StoreError> {
        let Some(first) = run.first() else {
            return Ok(());
        };
        let log = self.logs.entry(first.origin).or_default();
        let (mut seq, mut prev) = log
            .last()
            .map(|e| (e.seq, e.hash()))
            .unwrap_or((0, Hash::ZERO));
        for e in &run {
            let refused = |reason, detail: String| Err(StoreError::Refused { reason, detail });
            if e.origin != first.origin {
                return refused("mixed origins", String::new());
            }
            if e.seq != seq + 1 {
                return refused("gap", format!("expected {}, got {}", seq + 1, e.seq));
            }
            if e.prev != prev {
                return refused("out of chain", format!("seq {}", e.seq));
            }
            if self.check_signatures && e.is_signed() && e.verify_signature().is_err() {
                return refused("bad signature", format!("seq {}", e.seq));
            }
            seq = e.seq;
            prev = e.hash();
        }
        // As the log: a run ends at a signed event (the chain authenticates the rest).
        if run.last().is_some_and(|e| !e.is_signed()) {
            return Err(StoreError::Refused {
                reason: "unsigned tail",
                detail: format!("seq {seq}"),
            });
        }
        log.extend(run);
        Ok(())
    }
}

/// The simulated network.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// One-way latency before jitter.
    pub latency: Duration,
    /// Uniform extra latency, 0..jitter.
    pub jitter: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(20),
            loss: 0.01,
        }
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Deliver {
        to: usize,
        from: usize,
        bytes: Vec<u8>,
    },
    Tick(usize),
}

/// A simulated cluster.
#[derive(Debug)]
pub struct Sim {
    base: Instant,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64, Action)>>,
    rng: StdRng,
    net: NetConfig,
    keys: Vec<NodeKey>,
    ids: Vec<NodeId>,
    index: BTreeMap<NodeId, usize>,
    reps: Vec<Replicator>,
    stores: Vec<MemStore>,
    down: BTreeSet<usize>,
    blocked: BTreeSet<(usize, usize)>,
    /// Per node, bytes sent.
    pub bytes_sent: Vec<u64>,
    /// Per node, frames sent.
    pub frames_sent: Vec<u64>,
    /// Per event (origin, seq): when it was appended, and per node when it arrived.
    born: BTreeMap<(NodeId, u64), Duration>,
    arrived: BTreeMap<(NodeId, u64), Vec<Option<Duration>>>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub nodes: usize,
    pub events: usize,
    /// Per event, the time from its append until every node held it (events some node never got
    /// are left out and counted in `incomplete`).
    pub to_all_p50: Duration,
    pub to_all_p99: Duration,
    pub to_all_max: Duration,
    /// Per (event, node), the time until that node held it.
    pub per_node_p99: Duration,
    pub incomplete: usize,
    /// Bytes sent per node per event (all messages, pushes and anti-entropy).
    pub bytes_per_node_per_event: f64,
    pub frames: u64,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Sim {
    /// `n` nodes that all know each other, with keys derived from `seed`.
    pub fn new(n: usize, config: ReplicationConfig, net: NetConfig, seed: u64) -> Sim {
        let base = Instant::now();
        let keys: Vec<NodeKey> = (0..n)
            .map(|i| {
                let mut s = [0u8; 32];
                s[..8].copy_from_slice(&seed.to_le_bytes());
                s[8..16].copy_from_slice(&(i as u64).to_le_bytes());
                NodeKey::from_seed(s)
            })
            .collect();
        let ids: Vec<NodeId> = keys.iter().map(NodeKey::id).collect();
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut reps: Vec<Replicator> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                Replicator::new(
                    *id,
                    VersionVector::new(),
                    config.clone(),
                    seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    base,
                )
            })
            .collect();
        for r in &mut reps {
            r.set_peers(ids.iter().copied());
        }
        let mut sim = Sim {
            base,
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            rng: StdRng::seed_from_u64(seed),
            net,
            keys,
            ids,
            index,
            reps,
            stores: (0..n).map(|_| MemStore::new(false)).collect(),
            down: BTreeSet::new(),
            blocked: BTreeSet::new(),
            bytes_sent: vec![0; n],
            frames_sent: vec![0; n],
            born: BTreeMap::new(),
            arrived: BTreeMap::new(),
        };
        for i in 0..n {
            let at = sim.reps[i].next_deadline() - base;
            sim.schedule(at, Action::Tick(i));
        }
        sim
    }

    /// Every store verifies signatures (slower; for tests with forged events).
    pub fn check_signatures(&mut self) {
        for s in &mut self.stores {
            s.check_signatures = true;
        }
    }

    /// Restricts node `i`'s peers (as membership would after a partial view).
    pub fn set_peers(&mut self, i: usize, peers: &[usize]) {
        let ids: Vec<NodeId> = peers.iter().map(|p| self.ids[*p]).collect();
        self.reps[i].set_peers(ids);
    }

    /// Drops every message between `a` and `b` (both ways) until [`Sim::unblock`].
    pub fn block(&mut self, a: usize, b: usize) {
        self.blocked.insert((a.min(b), a.max(b)));
    }

    /// Lets messages between `a` and `b` through again.
    pub fn unblock(&mut self, a: usize, b: usize) {
        self.blocked.remove(&(a.min(b), a.max(b)));
    }

    /// Takes node `i` down (it neither sends nor receives) or brings it back.
    pub fn set_down(&mut self, i: usize, down: bool) {
        if down {
            self.down.insert(i);
        } else {
            self.down.remove(&i);
        }
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Node `i`'s id.
    pub fn id(&self, i: usize) -> NodeId {
        self.ids[i]
    }

    /// Node `i`'s store.
    pub fn store(&self, i: usize) -> &MemStore {
        &self.stores[i]
    }

    /// Node `i`'s replicator.
    pub fn replicator(&self, i: usize) -> &Replicator {
        &self.reps[i]
    }

    fn schedule(&mut self, at: Duration, action: Action) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, action)));
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn send(&mut self, from: usize, out: Vec<Outgoing>) {
        for o in out {
            let bytes = o.msg.to_bytes();
            self.bytes_sent[from] += bytes.len() as u64;
            self.frames_sent[from] += 1;
            let Some(&to) = self.index.get(&o.to) else {
                continue;
            };
            if self.blocked.contains(&(from.min(to), from.max(to)))
                || self.rng.gen_bool(self.net.loss)
            {
                continue;
            }
            let jitter = self.net.jitter.as_micros() as u64;
            let extra = if jitter == 0 {
                0
            } else {
                self.rng.gen_range(0..jitter)
            };
            let at = self.now + self.net.latency + Duration::from_micros(extra);
            self.schedule(at, Action::Deliver { to, from, bytes });
        }
    }

    fn note_arrivals(&mut self, node: usize, before: &VersionVector) {
        let n = self.ids.len();
        let now = self.now;
        for (origin, seq) in self.reps[node].version_vector().clone() {
            let from = before.get(&origin).copied().unwrap_or(0);
            for s in from + 1..=seq {
                let slot = self
                    .arrived
                    .entry((origin, s))
                    .or_insert_with(|| vec![None; n]);
                if slot[node].is_none() {
                    slot[node] = Some(now);
                }
            }
        }
    }

    /// Node `i` appends `count` events of `size` payload bytes and pushes them.
    pub fn append(&mut self, i: usize, count: usize, size: usize) {
        let before = self.reps[i].version_vector().clone();
        let mut events = Vec::new();
        for k in 0..count {
            let hlc = Hlc::new(self.now.as_millis() as u64 + 1, k as u16);
            let payload = vec![(k % 251) as u8; size];
            // One commit group: only its last event is signed.
            let env = self.stores[i].append_local(&self.keys[i], hlc, payload, k + 1 == count);
            self.born.insert((env.origin, env.seq), self.now);
            events.push(env);
        }
        let out = self.reps[i].on_local(&events);
        self.note_arrivals(i, &before);
        self.send(i, out);
    }

    /// Injects raw bytes as a message from `from` to `to` (hostile peers in tests).
    pub fn inject(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        let at = self.now + self.net.latency;
        self.schedule(at, Action::Deliver { to, from, bytes });
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: Duration) {
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > until {
                break;
            }
            let Some(Reverse((at, _, action))) = self.queue.pop() else {
                break;
            };
            self.now = at;
            match action {
                Action::Tick(i) => {
                    if !self.down.contains(&i) {
                        let now = self.instant();
                        let out = self.reps[i].on_tick(now);
                        self.send(i, out);
                    }
                    let next = (self.reps[i].next_deadline() - self.base).max(self.now);
                    let next = if next == self.now {
                        next + Duration::from_millis(1)
                    } else {
                        next
                    };
                    self.schedule(next, Action::Tick(i));
                }
                Action::Deliver { to, from, bytes } => {
                    if self.down.contains(&to) {
                        continue;
                    }
                    let Ok(msg) = Message::from_bytes(&bytes) else {
                        continue;
                    };
                    let before = self.reps[to].version_vector().clone();
                    let now = self.instant();
                    let from_id = self.ids[from];
                    let out = self.reps[to].on_message(&mut self.stores[to], from_id, msg, now);
                    self.note_arrivals(to, &before);
                    self.send(to, out);
                }
            }
        }
        self.now = self.now.max(until);
    }

    /// Runs in steps of `step` until every node holds the same events, or `limit` passes.
    /// Returns whether they converged.
    pub fn run_to_convergence(&mut self, step: Duration, limit: Duration) -> bool {
        loop {
            if self.converged() {
                return true;
            }
            if self.now >= limit {
                return false;
            }
            let next = self.now + step;
            self.run_until(next);
        }
    }

    /// True when every node's store holds the same events.
    pub fn converged(&self) -> bool {
        let first = self.stores[0].content_hash();
        self.stores.iter().all(|s| s.content_hash() == first)
    }

    /// What the run measured so far.
    pub fn report(&self) -> Report {
        let n = self.ids.len();
        let mut to_all = Vec::new();
        let mut per_node = Vec::new();
        let mut incomplete = 0;
        for (key, born) in &self.born {
            let Some(slots) = self.arrived.get(key) else {
                incomplete += 1;
                continue;
            };
            let mut last = Duration::ZERO;
            let mut all = true;
            for s in slots {
                match s {
                    Some(t) => {
                        per_node.push(t.saturating_sub(*born));
                        last = last.max(t.saturating_sub(*born));
                    }
                    None => all = false,
                }
            }
            if all {
                to_all.push(last);
            } else {
                incomplete += 1;
            }
        }
        to_all.sort();
        per_node.sort();
        let events = self.born.len();
        let bytes: u64 = self.bytes_sent.iter().sum();
        Report {
            nodes: n,
            events,
            to_all_p50: pct(&to_all, 0.5),
            to_all_p99: pct(&to_all, 0.99),
            to_all_max: to_all.last().copied().unwrap_or_default(),
            per_node_p99: pct(&per_node, 0.99),
            incomplete,
            bytes_per_node_per_event: if events == 0 {
                0.0
            } else {
                bytes as f64 / (n as f64 * events as f64)
            },
            frames: self.frames_sent.iter().sum(),
        }
    }
}
