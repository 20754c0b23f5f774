//! The group-commit writer: one thread owns every write transaction of the log.
//!
//! It blocks for a request, drains whatever else is queued, stages all of it in ONE redb write
//! transaction with `Durability::Immediate`, commits (one fsync) and answers every request. A
//! request that breaks a rule is refused alone and stores nothing; a storage failure aborts the
//! transaction and every request in it gets the error. The in-memory chain state is a working
//! copy until the commit succeeds, so a failed commit never leaves it ahead of the file.
//!
//! The local events of a group (every `append` and `append_batch` in it) form one run of this
//! node's chain, staged after the group's other requests: only the last of them is signed (one
//! ed25519 signature per commit), the ones before it are authenticated by the chain up to it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table};

use super::tables::{
    Tip, BY_ORIGIN, EVENTS, HEADS, LAYOUT, META, META_LAYOUT, META_MAX_HLC, SNAPSHOTS,
};
use super::{short_hash, storage, Appended, LogError, RemoteError, Shared, StoredSnapshot};
use crate::envelope::Event;
use crate::hlc::{wall_clock_ms, Hlc, HlcClock};
use crate::id::{Cursor, Hash, NodeId};
use crate::key::NodeKey;
use crate::payload::{Payload, CURRENT_SCHEMA};

/// A remote envelope that passed the stateless checks, with its canonical bytes and hash.
#[derive(Debug)]
pub(crate) struct Checked {
    pub event: Event,
    pub bytes: Vec<u8>,
}

/// Local payloads with their encoded bytes.
pub(crate) type LocalItems = Vec<(Payload, Vec<u8>)>;

/// What one request is answered.
type Outcome = Result<Done, LogError>;

/// One unit of work for the writer.
pub(crate) enum Job {
    /// Local payloads with their encoded bytes.
    Local(LocalItems),
    /// Other origins' events.
    Remote(Vec<Checked>),
    Snapshot(StoredSnapshot),
    PruneSnapshots(usize),
}

/// What a job produced.
pub(crate) enum Done {
    Appended(Vec<Appended>),
    Pruned(usize),
    Stored,
}

impl Done {
    pub(crate) fn into_appended(self) -> Vec<Appended> {
        match self {
            Done::Appended(v) => v,
            Done::Pruned(_) | Done::Stored => Vec::new(),
        }
    }
}

/// A job and where to send its answer.
pub(crate) struct Request {
    pub job: Job,
    pub reply: SyncSender<Result<Done, LogError>>,
}

/// Most events staged in one transaction; a single larger request still goes in whole.
const MAX_GROUP_EVENTS: usize = 65_536;

impl Job {
    fn weight(&self) -> usize {
        match self {
            Job::Local(v) => v.len(),
            Job::Remote(v) => v.len(),
            Job::Snapshot(_) | Job::PruneSnapshots(_) => 1,
        }
    }
}

/// The writer's view of the chains: committed, or a working copy inside a transaction.
#[derive(Clone, Debug)]
pub(crate) struct State {
    pub tips: HashMap<NodeId, Tip>,
    pub next_cursor: u64,
    pub clock: HlcClock,
    pub max_hlc: Hlc,
}

/// Create the tables (first open), check the layout and read the chain state.
pub(crate) fn init(db: &Database, what: &str) -> Result<State, LogError> {
    let txn = db.begin_write().map_err(storage("begin write"))?;
    {
        let mut meta = txn.open_table(META).map_err(storage("open meta"))?;
        let layout = meta
            .get(META_LAYOUT)
            .map_err(storage("read meta"))?
            .map(|v| v.value());
        match layout {
            Some(LAYOUT) => {}
            Some(found) => {
                return Err(LogError::Layout {
                    what: what.to_string(),
                    found,
                    expected: LAYOUT,
                })
            }
            None => {
                meta.insert(META_LAYOUT, LAYOUT)
                    .map_err(storage("write meta"))?;
            }
        }
        txn.open_table(EVENTS).map_err(storage("open events"))?;
        txn.open_table(BY_ORIGIN).map_err(storage("open index"))?;
        txn.open_table(HEADS).map_err(storage("open heads"))?;
        txn.open_table(SNAPSHOTS)
            .map_err(storage("open snapshots"))?;
    }
    txn.commit().map_err(storage("commit tables"))?;

    let txn = db.begin_read().map_err(storage("begin read"))?;
    let heads = txn.open_table(HEADS).map_err(storage("open heads"))?;
    let mut tips = HashMap::new();
    let mut max_hlc = Hlc(0);
    for row in heads.iter().map_err(storage("read heads"))? {
        let (k, v) = row.map_err(storage("read heads"))?;
        let tip = Tip::from_row(v.value());
        max_hlc = max_hlc.max(tip.hlc);
        tips.insert(NodeId(*k.value()), tip);
    }
    let events = txn.open_table(EVENTS).map_err(storage("open events"))?;
    let last = events
        .last()
        .map_err(storage("read events"))?
        .map_or(0, |(k, _)| k.value());
    let meta = txn.open_table(META).map_err(storage("open meta"))?;
    if let Some(v) = meta.get(META_MAX_HLC).map_err(storage("read meta"))? {
        max_hlc = max_hlc.max(Hlc(v.value()));
    }
    Ok(State {
        tips,
        next_cursor: last + 1,
        clock: HlcClock::starting_after(max_hlc),
        max_hlc,
    })
}

/// The open tables of one write transaction.
struct Tables<'t> {
    events: Table<'t, u64, &'static [u8]>,
    by_origin: Table<'t, (&'static [u8; 32], u64), u64>,
    snapshots: Table<'t, u64, &'static [u8]>,
}

/// The result of staging one job: the outer error aborts the whole transaction, the inner one
/// refuses this job alone.
type Staged = Result<Result<Done, LogError>, LogError>;

pub(crate) struct Writer {
    db: Arc<Database>,
    key: NodeKey,
    own: NodeId,
    state: State,
    shared: Arc<Shared>,
}

impl Writer {
    pub(crate) fn new(db: Arc<Database>, key: NodeKey, state: State, shared: Arc<Shared>) -> Self {
        let own = key.id();
        Writer {
            db,
            key,
            own,
            state,
            shared,
        }
    }

    /// Serve requests until every sender is gone.
    pub(crate) fn run(mut self, rx: Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut weight = first.job.weight();
            let mut group = vec![first];
            while weight < MAX_GROUP_EVENTS {
                match rx.try_recv() {
                    Ok(r) => {
                        weight += r.job.weight();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
    }

    fn commit_group(&mut self, group: Vec<Request>) {
        let (jobs, replies): (Vec<Job>, Vec<_>) =
            group.into_iter().map(|r| (r.job, r.reply)).unzip();
        let mut work = self.state.clone();
        self.shared
            .requests
            .fetch_add(replies.len() as u64, std::sync::atomic::Ordering::SeqCst);
        match self.stage_and_commit(&mut work, jobs) {
            Ok((outcomes, committed)) => {
                if committed {
                    self.state = work;
                    self.shared
                        .publish(self.state.next_cursor.saturating_sub(1));
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(LogError::Storage(msg.clone())));
                }
            }
        }
    }

    fn stage_and_commit(
        &self,
        work: &mut State,
        jobs: Vec<Job>,
    ) -> Result<(Vec<Result<Done, LogError>>, bool), LogError> {
        let mut txn = self.db.begin_write().map_err(storage("begin write"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(storage("set durability"))?;
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(jobs.len());
        let mut changed = false;
        {
            let mut t = Tables {
                events: txn.open_table(EVENTS).map_err(storage("open events"))?,
                by_origin: txn.open_table(BY_ORIGIN).map_err(storage("open index"))?,
                snapshots: txn
                    .open_table(SNAPSHOTS)
                    .map_err(storage("open snapshots"))?,
            };
            let mut dirty = BTreeSet::new();
            // Local jobs wait for the end of the group: they form one run with one signature.
            let mut local = Vec::new();
            for job in jobs {
                let outcome = match job {
                    Job::Local(items) => {
                        local.push((outcomes.len(), items));
                        outcomes.push(None);
                        continue;
                    }
                    Job::Remote(items) => stage_remote(work, &mut t, &mut dirty, items)?,
                    Job::Snapshot(s) => stage_snapshot(work, &mut t, s)?,
                    Job::PruneSnapshots(keep) => prune_snapshots(&mut t, keep)?,
                };
                outcomes.push(Some(outcome));
            }
            if !local.is_empty() {
                for (at, outcome) in self.stage_local(work, &mut t, &mut dirty, local)? {
                    if let Some(slot) = outcomes.get_mut(at) {
                        *slot = Some(outcome);
                    }
                }
            }
            changed |= outcomes.iter().any(|o| match o {
                Some(Ok(Done::Appended(v))) => !v.is_empty(),
                Some(Ok(Done::Pruned(n))) => *n > 0,
                Some(Ok(Done::Stored)) => true,
                Some(Err(_)) | None => false,
            });
            let mut heads = txn.open_table(HEADS).map_err(storage("open heads"))?;
            for origin in &dirty {
                if let Some(tip) = work.tips.get(origin) {
                    heads
                        .insert(&origin.0, tip.as_row())
                        .map_err(storage("write heads"))?;
                }
            }
            if !dirty.is_empty() {
                let mut meta = txn.open_table(META).map_err(storage("open meta"))?;
                meta.insert(META_MAX_HLC, work.max_hlc.0)
                    .map_err(storage("write meta"))?;
            }
        }
        let outcomes = outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Err(LogError::Storage("the writer lost a request".into())))
            })
            .collect();
        if !changed {
            // Everything was refused or already held: nothing to make durable, no fsync.
            txn.abort().map_err(storage("abort"))?;
            return Ok((outcomes, false));
        }
        txn.commit().map_err(storage("commit"))?;
        Ok((outcomes, true))
    }

    /// Seal and stage the local jobs of a group (with their index in the group) as one run of
    /// this node's chain: only its last event is signed. Gives each job's outcome.
    fn stage_local(
        &self,
        work: &mut State,
        t: &mut Tables<'_>,
        dirty: &mut BTreeSet<NodeId>,
        jobs: Vec<(usize, LocalItems)>,
    ) -> Result<Vec<(usize, Outcome)>, LogError> {
        let total: usize = jobs.iter().map(|(_, items)| items.len()).sum();
        let mut tip = work.tips.get(&self.own).copied();
        let mut clock = work.clock.clone();
        let mut staged = Vec::with_capacity(total);
        let sizes: Vec<(usize, usize)> =
            jobs.iter().map(|(at, items)| (*at, items.len())).collect();
        for (_, items) in jobs {
            for (payload, payload_bytes) in items {
                let (seq, prev) = tip.map_or((1, Hash::ZERO), |t| (t.seq + 1, t.hash));
                let hlc = clock.tick(wall_clock_ms());
                let mut envelope = self
                    .key
                    .envelope(seq, hlc, prev, CURRENT_SCHEMA, payload_bytes);
                if staged.len() + 1 == total {
                    self.key.sign(&mut envelope);
                }
                let bytes = envelope.to_bytes();
                if bytes.is_empty() {
                    // Unreachable: `append_batch` bounds the payload size. Refusing only this job
                    // would leave the run before it unsigned, so every local job of the group
                    // is refused (nothing staged, the clock and the tip unmoved).
                    return Ok(sizes
                        .into_iter()
                        .map(|(at, _)| {
                            let e = LogError::TooLarge {
                                size: crate::codec::MAX_ENCODED,
                                limit: crate::codec::MAX_ENCODED,
                            };
                            (at, Err(e))
                        })
                        .collect());
                }
                let hash = Hash(*blake3::hash(&bytes).as_bytes());
                tip = Some(Tip { seq, hash, hlc });
                staged.push(Checked {
                    event: Event {
                        envelope,
                        payload,
                        hash,
                    },
                    bytes,
                });
            }
        }
        let mut out = insert(work, t, dirty, staged)?.into_iter();
        work.clock = clock;
        Ok(sizes
            .into_iter()
            .map(|(at, n)| (at, Ok(Done::Appended(out.by_ref().take(n).collect()))))
            .collect())
    }
}

/// Store staged events at the next cursors and move the tips.
fn insert(
    work: &mut State,
    t: &mut Tables<'_>,
    dirty: &mut BTreeSet<NodeId>,
    staged: Vec<Checked>,
) -> Result<Vec<Appended>, LogError> {
    let mut out = Vec::with_capacity(staged.len());
    for Checked { event, bytes } in staged {
        let cursor = work.next_cursor;
        let env = &event.envelope;
        t.events
            .insert(cursor, bytes.as_slice())
            .map_err(storage("write event"))?;
        t.by_origin
            .insert((&env.origin.0, env.seq), cursor)
            .map_err(storage("write index"))?;
        work.next_cursor += 1;
        work.tips.insert(
            env.origin,
            Tip {
                seq: env.seq,
                hash: event.hash,
                hlc: env.hlc,
            },
        );
        work.max_hlc = work.max_hlc.max(env.hlc);
        dirty.insert(env.origin);
        out.push(Appended {
            cursor: Cursor(cursor),
            event,
        });
    }
    Ok(out)
}

/// The hash of a stored event, if the log holds `origin#seq`.
fn stored_hash(t: &Tables<'_>, origin: NodeId, seq: u64) -> Result<Option<Hash>, LogError> {
    let Some(cursor) = t
        .by_origin
        .get((&origin.0, seq))
        .map_err(storage("read index"))?
    else {
        return Ok(None);
    };
    let bytes = t
        .events
        .get(cursor.value())
        .map_err(storage("read event"))?;
    Ok(bytes.map(|b| Hash(*blake3::hash(b.value()).as_bytes())))
}

/// Check a remote batch against the tips (order, chain, duplicates, each origin's new events
/// ending signed) and stage it whole, or refuse it whole.
fn stage_remote(
    work: &mut State,
    t: &mut Tables<'_>,
    dirty: &mut BTreeSet<NodeId>,
    items: Vec<Checked>,
) -> Staged {
    // Tips moved by this batch, and the events it stages, so it can chain within itself.
    let mut tips: HashMap<NodeId, Tip> = HashMap::new();
    let mut seen: HashMap<(NodeId, u64), Hash> = HashMap::new();
    let mut fresh = Vec::with_capacity(items.len());
    for c in items {
        let env = &c.event.envelope;
        let (origin, seq) = (env.origin, env.seq);
        let tip = tips
            .get(&origin)
            .or_else(|| work.tips.get(&origin))
            .copied();
        let (tip_seq, tip_hash) = tip.map_or((0, Hash::ZERO), |t| (t.seq, t.hash));
        let next = tip_seq + 1;
        if seq == next {
            if env.prev != tip_hash {
                return Ok(Err(RemoteError::Fork {
                    origin: origin.short(),
                    seq,
                    expected: short_hash(&tip_hash),
                    got: short_hash(&env.prev),
                }
                .into()));
            }
            tips.insert(
                origin,
                Tip {
                    seq,
                    hash: c.event.hash,
                    hlc: env.hlc,
                },
            );
            seen.insert((origin, seq), c.event.hash);
            fresh.push(c);
        } else if seq > next {
            return Ok(Err(RemoteError::Gap {
                origin: origin.short(),
                expected: next,
                got: seq,
            }
            .into()));
        } else {
            let held = match seen.get(&(origin, seq)) {
                Some(h) => Some(*h),
                None => stored_hash(t, origin, seq)?,
            };
            match held {
                Some(h) if h == c.event.hash => {}
                Some(_) => {
                    return Ok(Err(RemoteError::Conflict {
                        origin: origin.short(),
                        seq,
                    }
                    .into()))
                }
                None => {
                    return Ok(Err(RemoteError::Gap {
                        origin: origin.short(),
                        expected: next,
                        got: seq,
                    }
                    .into()))
                }
            }
        }
    }
    // Each origin's new events must end at a signed event (whose signature the caller checked):
    // it authenticates the chain of new events before it. An unsigned tail refuses the batch.
    let mut last: BTreeMap<NodeId, (u64, bool)> = BTreeMap::new();
    for c in &fresh {
        let env = &c.event.envelope;
        last.insert(env.origin, (env.seq, env.is_signed()));
    }
    if let Some((origin, (seq, _))) = last.into_iter().find(|(_, (_, signed))| !signed) {
        return Ok(Err(RemoteError::UnsignedTail {
            origin: origin.short(),
            seq,
        }
        .into()));
    }
    let wall = wall_clock_ms();
    for c in &fresh {
        work.clock.observe(c.event.envelope.hlc, wall);
    }
    let out = insert(work, t, dirty, fresh)?;
    Ok(Ok(Done::Appended(out)))
}

fn stage_snapshot(work: &State, t: &mut Tables<'_>, s: StoredSnapshot) -> Staged {
    let head = work.next_cursor.saturating_sub(1);
    if s.cursor.0 > head {
        return Ok(Err(LogError::SnapshotAhead {
            cursor: s.cursor.0,
            head,
        }));
    }
    let row = super::tables::encode_snapshot(&s.last_key, &s.bytes);
    t.snapshots
        .insert(s.cursor.0, row.as_slice())
        .map_err(storage("write snapshot"))?;
    Ok(Ok(Done::Stored))
}

fn prune_snapshots(t: &mut Tables<'_>, keep: usize) -> Staged {
    let len = t.snapshots.len().map_err(storage("read snapshots"))?;
    let drop = usize::try_from(len)
        .unwrap_or(usize::MAX)
        .saturating_sub(keep);
    let mut old = Vec::with_capacity(drop);
    for row in t
        .snapshots
        .iter()
        .map_err(storage("read snapshots"))?
        .take(drop)
    {
        let (k, _) = row.map_err(storage("read snapshots"))?;
        old.push(k.value());
    }
    for k in &old {
        t.snapshots.remove(k).map_err(storage("remove snapshot"))?;
    }
    Ok(Ok(Done::Pruned(old.len())))
}
