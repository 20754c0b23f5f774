//! The append-only event log on redb.
//!
//! One redb database file holds every event this node knows, in arrival order, with an index by
//! origin, the chain tips of every origin (the version vector) and the state snapshots. A
//! dedicated writer thread owns the write side: appenders send requests on a channel and block
//! on the reply; the writer drains every queued request into one write transaction, commits it
//! durably (one fsync for all of them: group commit) and answers them all. Reads run on the
//! caller's thread in their own read transaction and never wait for the writer.
//!
//! See `docs/events.md` for the tables, the rules of remote appends and the recovery story.

mod tables;
mod verify;
mod writer;

use std::collections::BTreeMap;
use std::ops::{Bound, RangeInclusive};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable};

use crate::codec::MAX_ENCODED;
use crate::envelope::{is_known_format, Envelope, Event, OrderKey, FORMAT_V1};
use crate::id::{Cursor, Hash, NodeId};
use crate::key::NodeKey;
use crate::payload::Payload;
use crate::CodecError;

use tables::{Tip, BY_ORIGIN, EVENTS, HEADS, SNAPSHOTS};
use writer::{Checked, Done, Job, Request, Writer};

/// origin -> highest sequence held, for every origin in the log.
pub type VersionVector = BTreeMap<NodeId, u64>;

/// One step that failed, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("open event log {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("event log storage: {0}")]
    Storage(String),
    #[error("stored event at cursor {cursor} is unreadable: {source}")]
    Corrupt { cursor: u64, source: CodecError },
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("the log writer has stopped")]
    Closed,
    /// Opening a log on a caller-supplied storage backend failed.
    #[error("open event log on custom storage: {source}")]
    OpenBackend { source: redb::DatabaseError },
    /// The database file is damaged beyond what redb reports as an error (it failed while
    /// reading the file). Restore the file from a copy or a peer.
    #[error("event log {what} is damaged: {reason}")]
    Damaged { what: String, reason: String },
    /// The file is a redb database, but not one this build's log can read.
    #[error("event log {what} has table layout {found}; this build reads layout {expected}")]
    Layout {
        what: String,
        found: u64,
        expected: u64,
    },
    /// A local event too large to store (see [`crate::codec::MAX_ENCODED`]).
    #[error("event of {size} bytes is larger than the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    /// A stored snapshot row is too short to hold its header.
    #[error("stored snapshot at cursor {cursor} is unreadable")]
    CorruptSnapshot { cursor: u64 },
    /// A snapshot claims to include events the log does not hold yet.
    #[error("snapshot at cursor {cursor} is ahead of the log head {head}")]
    SnapshotAhead { cursor: u64, head: u64 },
}

/// Why an event from another origin was refused. Nothing from the refused batch is stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RemoteError {
    #[error("event {origin}#{seq} is from this node; remote appends take other origins only")]
    OwnOrigin { origin: String, seq: u64 },
    #[error("gap from {origin}: expected seq {expected}, got {got}")]
    Gap {
        origin: String,
        expected: u64,
        got: u64,
    },
    #[error("fork from {origin} at seq {seq}: prev {got} does not match our {expected}")]
    Fork {
        origin: String,
        seq: u64,
        expected: String,
        got: String,
    },
    #[error("conflicting copy of {origin}#{seq}: same seq, different content")]
    Conflict { origin: String, seq: u64 },
    /// The new events of an origin end at an unsigned event: nothing after the origin's last
    /// signed event can be authenticated, so the whole batch is refused.
    #[error("events from {origin} end unsigned at seq {seq}: a run must end at a signed event")]
    UnsignedTail { origin: String, seq: u64 },
    #[error(transparent)]
    Signature(#[from] crate::envelope::SignatureError),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// An event as it landed in this node's log.
#[derive(Debug, Clone)]
pub struct Appended {
    pub cursor: Cursor,
    pub event: Event,
}

/// A stored state snapshot: opaque bytes the state crate wrote, with where it was taken.
#[derive(Debug, Clone)]
pub struct StoredSnapshot {
    /// Arrival cursor up to which (inclusive) the snapshot's state includes events.
    pub cursor: Cursor,
    /// Highest total-order key folded into it.
    pub last_key: OrderKey,
    pub bytes: Vec<u8>,
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub events: u64,
    pub origins: usize,
    pub faults: Vec<String>,
}

impl VerifyReport {
    /// True when no fault was found.
    pub fn is_clean(&self) -> bool {
        self.faults.is_empty()
    }
}

/// Counters of the writer, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Write transactions committed (each one fsync).
    pub commits: u64,
    /// Requests (appends, batches, snapshots) answered, committed or refused.
    pub requests: u64,
    /// Requests sent to the writer and not answered yet.
    pub queued: u64,
}

/// A commit callback, as registered with [`Log::on_commit`].
type Callback = Arc<dyn Fn(Cursor) + Send + Sync>;

/// What the writer publishes to readers and subscribers.
struct Shared {
    head: Mutex<u64>,
    commits: AtomicU64,
    requests: AtomicU64,
    queued: AtomicU64,
    moved: Condvar,
    callbacks: Mutex<Vec<Callback>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Publish a new committed head: wake waiters, then call every callback (a panicking
    /// callback is contained so it cannot stop the writer).
    fn publish(&self, head: u64) {
        self.commits.fetch_add(1, Ordering::SeqCst);
        *lock(&self.head) = head;
        self.moved.notify_all();
        let callbacks: Vec<Callback> = lock(&self.callbacks).clone();
        for f in callbacks {
            let _ = catch_unwind(AssertUnwindSafe(|| f(Cursor(head))));
        }
    }
}

struct Inner {
    db: Arc<Database>,
    tx: Option<Sender<Request>>,
    shared: Arc<Shared>,
    node_id: NodeId,
    /// Keys the state snapshots' checksums ([`Log::snapshot_key`]).
    snapshot_key: [u8; 32],
    writer: Option<JoinHandle<()>>,
    writer_id: Option<ThreadId>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel stops the writer once it has answered what is queued; joining it
        // closes the database file before the log is gone, so it can be reopened at once.
        self.tx.take();
        if let Some(handle) = self.writer.take() {
            if Some(std::thread::current().id()) != self.writer_id {
                let _ = handle.join();
            }
        }
    }
}

/// The log. Cheap to clone; every clone shares one database and one group-commit writer.
///
/// The database file is closed when the last clone is dropped (after the writer has answered
/// every queued request).
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("node", &self.inner.node_id)
            .field("head", &self.head())
            .finish()
    }
}

/// Mapping of a redb error at one step into [`LogError::Storage`].
fn storage<E: std::fmt::Display>(step: &'static str) -> impl FnOnce(E) -> LogError {
    move |e| LogError::Storage(format!("{step}: {e}"))
}

fn panic_reason(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "redb failed while reading the file".to_string()
    }
}

/// Run an open step, turning a panic inside redb (a damaged file it did not expect) into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, LogError>) -> Result<T, LogError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(LogError::Damaged {
            what: what.to_string(),
            reason: panic_reason(p),
        }),
    }
}

fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    // Verify every page checksum on open: a damaged file fails to open with an error instead of
    // being trusted (and possibly failing later in the middle of a read).
    b.set_check_integrity_on_open(true);
    b
}

fn short_hash(h: &Hash) -> String {
    hex::encode(&h.0[..8])
}

impl Log {
    /// Open (or create) the log at `path`, signing local events with `key`.
    ///
    /// The whole file is checked on open (every page checksum); a damaged or truncated file gives
    /// [`LogError::Open`] or [`LogError::Damaged`], never a panic. A missing or empty file is
    /// initialised as a new, empty log.
    pub fn open(path: &Path, key: NodeKey) -> Result<Log, LogError> {
        let what = path.display().to_string();
        let db = guarded(&what, || {
            builder().create(path).map_err(|source| LogError::Open {
                path: path.to_path_buf(),
                source,
            })
        })?;
        Log::start(db, key, &what)
    }

    /// Open (or create) a log on any redb [`redb::StorageBackend`] instead of a file: an
    /// in-memory store, or a fault-injecting one in crash tests. Same checks as [`Log::open`].
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        key: NodeKey,
    ) -> Result<Log, LogError> {
        let what = "custom storage".to_string();
        let db = guarded(&what, || {
            builder()
                .create_with_backend(backend)
                .map_err(|source| LogError::OpenBackend { source })
        })?;
        Log::start(db, key, &what)
    }

    fn start(db: Database, key: NodeKey, what: &str) -> Result<Log, LogError> {
        let state = guarded(what, || writer::init(&db, what))?;
        let head = state.next_cursor.saturating_sub(1);
        let db = Arc::new(db);
        let shared = Arc::new(Shared {
            head: Mutex::new(head),
            commits: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            moved: Condvar::new(),
            callbacks: Mutex::new(Vec::new()),
        });
        let node_id = key.id();
        let snapshot_key = key.derive_secret(SNAPSHOT_KEY_CONTEXT);
        let (tx, rx) = mpsc::channel();
        let writer = Writer::new(db.clone(), key, state, shared.clone());
        let handle = std::thread::Builder::new()
            .name("bolt-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(storage("start the writer thread"))?;
        let writer_id = Some(handle.thread().id());
        Ok(Log {
            inner: Arc::new(Inner {
                db,
                tx: Some(tx),
                shared,
                node_id,
                snapshot_key,
                writer: Some(handle),
                writer_id,
            }),
        })
    }

    /// This node's id: the public half of the key local events are signed with.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The key of the state snapshots' checksums, derived from the node key: a snapshot whose
    /// keyed checksum verifies was written by this node, not edited in the file by someone
    /// without the key.
    pub fn snapshot_key(&self) -> [u8; 32] {
        self.inner.snapshot_key
    }

    /// Send a job to the writer and wait for its answer.
    fn submit(&self, job: Job) -> Result<Done, LogError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let tx = self.inner.tx.as_ref().ok_or(LogError::Closed)?;
        let shared = &self.inner.shared;
        shared.queued.fetch_add(1, Ordering::SeqCst);
        let answer = tx
            .send(Request { job, reply })
            .map_err(|_| LogError::Closed)
            .and_then(|()| answer.recv().map_err(|_| LogError::Closed));
        shared.queued.fetch_sub(1, Ordering::SeqCst);
        answer?
    }

    /// Append one local event; returns once it is durable (group commit: concurrent callers
    /// share one fsync). Blocking: call from a thread or `spawn_blocking`.
    ///
    /// The event is signed unless other local appends shared its commit and came after it (one
    /// signature per group, on its last event): to send it to a peer, send its run up to the
    /// signed end ([`Log::read_origin_signed`]), not the event alone.
    pub fn append(&self, payload: Payload) -> Result<Appended, LogError> {
        let mut out = self.append_batch(vec![payload])?;
        out.pop()
            .ok_or_else(|| LogError::Storage("the writer stored no event".into()))
    }

    /// Append several local events in one transaction. Only the last local event of the
    /// writer's commit group is signed (one ed25519 signature per group); the ones before it are
    /// authenticated by the hash chain up to it.
    pub fn append_batch(&self, payloads: Vec<Payload>) -> Result<Vec<Appended>, LogError> {
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        let items = payloads
            .into_iter()
            .map(|p| {
                let bytes = crate::payload::encode_payload(&p);
                // An empty encoding means the encoder hit the size limit; the envelope header
                // adds at most a few hundred bytes.
                if bytes.is_empty() || bytes.len() > MAX_ENCODED - 512 {
                    return Err(LogError::TooLarge {
                        size: bytes.len().max(MAX_ENCODED),
                        limit: MAX_ENCODED,
                    });
                }
                Ok((p, bytes))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.submit(Job::Local(items)).map(Done::into_appended)
    }

    /// Take other origins' events: only in sequence, with a valid chain, and each origin's new
    /// events ending at a signed event whose signature verifies. Events already held (same seq,
    /// same hash) are skipped; the rest is all-or-nothing.
    ///
    /// Format-2 runs carry one signature, on their last event; it covers that event's `prev`,
    /// hence the whole chain back to the run's start. Format-1 events are each signed. Every
    /// signature in the batch is checked (one `verify_strict` each, on the caller's threads,
    /// spread over the cores for large batches); the chain rules by the writer against the
    /// committed tips. New events after an origin's last signed one (an unsigned tail) refuse
    /// the whole batch with [`RemoteError::UnsignedTail`]: nothing unauthenticated is stored.
    ///
    /// Returns the events that were stored (skipped re-deliveries are not in it).
    pub fn append_remote(&self, envelopes: Vec<Envelope>) -> Result<Vec<Appended>, LogError> {
        self.remote(envelopes, true)
    }

    /// Benchmark hook: [`Log::append_remote`] without the signature check, to measure the
    /// storage path alone. Every other rule still applies. Never use outside benchmarks.
    #[cfg(feature = "bench-hooks")]
    #[doc(hidden)]
    pub fn bench_append_remote_unverified(
        &self,
        envelopes: Vec<Envelope>,
    ) -> Result<Vec<Appended>, LogError> {
        self.remote(envelopes, false)
    }

    fn remote(&self, envelopes: Vec<Envelope>, verify: bool) -> Result<Vec<Appended>, LogError> {
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        let checked = check_all(self.inner.node_id, envelopes, verify)?;
        self.submit(Job::Remote(checked)).map(Done::into_appended)
    }

    /// The highest cursor in the log (0 when empty).
    pub fn head(&self) -> Cursor {
        Cursor(*lock(&self.inner.shared.head))
    }

    fn read_txn(&self) -> Result<redb::ReadTransaction, LogError> {
        self.inner.db.begin_read().map_err(storage("begin read"))
    }

    /// Up to `limit` events after `after`, in arrival order.
    pub fn read_after(&self, after: Cursor, limit: usize) -> Result<Vec<Appended>, LogError> {
        let txn = self.read_txn()?;
        let events = txn.open_table(EVENTS).map_err(storage("open events"))?;
        let range = events
            .range::<u64>((Bound::Excluded(after.0), Bound::Unbounded))
            .map_err(storage("read events"))?;
        let mut out = Vec::new();
        for row in range.take(limit) {
            let (k, v) = row.map_err(storage("read events"))?;
            out.push(decode_appended(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// One origin's envelopes with seq in `seqs`, in order.
    ///
    /// The range is taken as asked: it may end at an unsigned event, which a peer's
    /// `append_remote` refuses ([`RemoteError::UnsignedTail`]). To send events to a peer use
    /// [`Log::read_origin_signed`], or end the range at [`Log::last_signed_at_or_before`].
    pub fn read_origin(
        &self,
        origin: NodeId,
        seqs: RangeInclusive<u64>,
    ) -> Result<Vec<Envelope>, LogError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.read_txn()?;
        let index = txn.open_table(BY_ORIGIN).map_err(storage("open index"))?;
        let events = txn.open_table(EVENTS).map_err(storage("open events"))?;
        let mut out = Vec::new();
        let range = index
            .range((&origin.0, *seqs.start())..=(&origin.0, *seqs.end()))
            .map_err(storage("read index"))?;
        for row in range {
            let (_, cursor) = row.map_err(storage("read index"))?;
            out.push(read_envelope(&events, cursor.value())?);
        }
        Ok(out)
    }

    /// What a replicator sends a peer: one origin's envelopes from `from_seq` on, ending at a
    /// signed event, so the peer's `append_remote` can authenticate all of them.
    ///
    /// Takes at most `max` events, cut back to the last signed event among them. When none of
    /// the first `max` is signed (a run longer than `max`), it reads on to the end of that run,
    /// so a peer always makes progress. Empty when the log holds nothing from `from_seq` on, or
    /// when `max` is 0.
    /// Every origin's tip is a signed event (local groups and accepted remote batches end
    /// signed), so the result only falls short of the tip by the `max` cut.
    pub fn read_origin_signed(
        &self,
        origin: NodeId,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let txn = self.read_txn()?;
        let index = txn.open_table(BY_ORIGIN).map_err(storage("open index"))?;
        let events = txn.open_table(EVENTS).map_err(storage("open events"))?;
        let range = index
            .range((&origin.0, from_seq)..=(&origin.0, u64::MAX))
            .map_err(storage("read index"))?;
        let mut out = Vec::new();
        let mut signed_len = 0;
        for row in range {
            let (_, cursor) = row.map_err(storage("read index"))?;
            let env = read_envelope(&events, cursor.value())?;
            let signed = env.is_signed();
            out.push(env);
            if signed {
                signed_len = out.len();
            }
            if out.len() >= max && signed_len > 0 {
                break;
            }
        }
        out.truncate(signed_len);
        Ok(out)
    }

    /// The highest seq `<= seq` of `origin` whose event is signed: where a range of that
    /// origin's events may end to be accepted by a peer. `None` when no event of `origin` at or
    /// below `seq` is signed (or the log holds none).
    pub fn last_signed_at_or_before(
        &self,
        origin: NodeId,
        seq: u64,
    ) -> Result<Option<u64>, LogError> {
        let txn = self.read_txn()?;
        let index = txn.open_table(BY_ORIGIN).map_err(storage("open index"))?;
        let events = txn.open_table(EVENTS).map_err(storage("open events"))?;
        let range = index
            .range((&origin.0, 0)..=(&origin.0, seq))
            .map_err(storage("read index"))?;
        for row in range.rev() {
            let (k, cursor) = row.map_err(storage("read index"))?;
            if read_envelope(&events, cursor.value())?.is_signed() {
                return Ok(Some(k.value().1));
            }
        }
        Ok(None)
    }

    /// Every event with cursor <= `upto`, in the global total order (HLC, origin, seq).
    pub fn read_total_order(&self, upto: Cursor) -> Result<Vec<Appended>, LogError> {
        let txn = self.read_txn()?;
        let events = txn.open_table(EVENTS).map_err(storage("open events"))?;
        let mut out = Vec::new();
        for row in events.range(..=upto.0).map_err(storage("read events"))? {
            let (k, v) = row.map_err(storage("read events"))?;
            out.push(decode_appended(k.value(), v.value())?);
        }
        out.sort_by_key(|a| a.event.order_key());
        Ok(out)
    }

    /// origin -> highest seq held, for every origin in the log.
    pub fn version_vector(&self) -> Result<VersionVector, LogError> {
        let txn = self.read_txn()?;
        let heads = txn.open_table(HEADS).map_err(storage("open heads"))?;
        let mut out = VersionVector::new();
        for row in heads.iter().map_err(storage("read heads"))? {
            let (k, v) = row.map_err(storage("read heads"))?;
            out.insert(NodeId(*k.value()), Tip::from_row(v.value()).seq);
        }
        Ok(out)
    }

    /// The chain tip of an origin: (seq, hash).
    pub fn tip(&self, origin: NodeId) -> Result<Option<(u64, Hash)>, LogError> {
        let txn = self.read_txn()?;
        let heads = txn.open_table(HEADS).map_err(storage("open heads"))?;
        let row = heads.get(&origin.0).map_err(storage("read heads"))?;
        Ok(row.map(|v| {
            let t = Tip::from_row(v.value());
            (t.seq, t.hash)
        }))
    }

    /// The writer's counters.
    pub fn stats(&self) -> LogStats {
        let s = &self.inner.shared;
        LogStats {
            commits: s.commits.load(Ordering::SeqCst),
            requests: s.requests.load(Ordering::SeqCst),
            queued: s.queued.load(Ordering::SeqCst),
        }
    }

    /// Block until the head passes `after` or `timeout` ends; returns the head.
    pub fn wait_past(&self, after: Cursor, timeout: Duration) -> Cursor {
        let shared = &self.inner.shared;
        let guard = lock(&shared.head);
        let (guard, _) = shared
            .moved
            .wait_timeout_while(guard, timeout, |head| *head <= after.0)
            .unwrap_or_else(PoisonError::into_inner);
        Cursor(*guard)
    }

    /// Call `f` with the new head after every commit (the agent bridges this to async). A
    /// group of requests that stored nothing is not committed and calls nothing.
    ///
    /// `f` runs on the writer thread before the appenders of that commit get their answer: keep
    /// it short and never append from it (that would wait on itself). A callback holding a clone
    /// of this log keeps the log open until the process ends.
    pub fn on_commit(&self, f: Box<dyn Fn(Cursor) + Send + Sync>) {
        lock(&self.inner.shared.callbacks).push(Arc::from(f));
    }

    /// Store a snapshot (durably, through the writer). A snapshot at the same cursor replaces
    /// the old one. Refused when its cursor is past the head.
    pub fn put_snapshot(&self, snapshot: StoredSnapshot) -> Result<(), LogError> {
        self.submit(Job::Snapshot(snapshot)).map(|_| ())
    }

    /// Stored snapshots, newest (highest cursor) first.
    pub fn snapshots(&self) -> Result<Vec<StoredSnapshot>, LogError> {
        let txn = self.read_txn()?;
        let snaps = txn
            .open_table(SNAPSHOTS)
            .map_err(storage("open snapshots"))?;
        let mut out = Vec::new();
        for row in snaps.iter().map_err(storage("read snapshots"))?.rev() {
            let (k, v) = row.map_err(storage("read snapshots"))?;
            let cursor = k.value();
            let (last_key, bytes) =
                tables::decode_snapshot(v.value()).ok_or(LogError::CorruptSnapshot { cursor })?;
            out.push(StoredSnapshot {
                cursor: Cursor(cursor),
                last_key,
                bytes,
            });
        }
        Ok(out)
    }

    /// Drop all but the newest `keep` snapshots. Returns how many were removed.
    pub fn prune_snapshots(&self, keep: usize) -> Result<usize, LogError> {
        match self.submit(Job::PruneSnapshots(keep))? {
            Done::Pruned(n) => Ok(n),
            _ => Ok(0),
        }
    }

    /// Check every chain link and signature in the log.
    ///
    /// Walks every stored event in arrival order and every origin's chain from seq 1: each
    /// `prev` equals the hash of the origin's previous event, seqs are gapless, every signature
    /// present verifies, every origin's chain ends at a signed event (an unsigned event is
    /// authenticated only by the signed one that ends its run) and every payload decodes; the origin index and the chain tips agree with the
    /// events. Faults are collected as readable lines; only a storage failure is an error.
    pub fn verify(&self) -> Result<VerifyReport, LogError> {
        let txn = self.read_txn()?;
        verify::run(&txn)
    }
}

/// The envelope stored at `cursor` (which the origin index points at).
fn read_envelope(
    events: &redb::ReadOnlyTable<u64, &'static [u8]>,
    cursor: u64,
) -> Result<Envelope, LogError> {
    let bytes = events
        .get(cursor)
        .map_err(storage("read events"))?
        .ok_or(LogError::Corrupt {
            cursor,
            source: CodecError::Malformed("the origin index points at no event".into()),
        })?;
    Envelope::from_bytes(bytes.value()).map_err(|source| LogError::Corrupt { cursor, source })
}

fn decode_appended(cursor: u64, bytes: &[u8]) -> Result<Appended, LogError> {
    let event = Event::from_bytes(bytes).map_err(|source| LogError::Corrupt { cursor, source })?;
    Ok(Appended {
        cursor: Cursor(cursor),
        event,
    })
}

/// The stateless checks of one remote envelope that need no signature: not ours, known
/// format (a format-1 envelope signed), decodable payload, encodable within the size limit.
/// Gives the decoded payload, the canonical bytes and their hash.
fn check_one(own: NodeId, envelope: &Envelope) -> Result<(Payload, Vec<u8>, Hash), RemoteError> {
    if envelope.origin == own {
        return Err(RemoteError::OwnOrigin {
            origin: envelope.origin.short(),
            seq: envelope.seq,
        });
    }
    if !is_known_format(envelope.format) {
        return Err(CodecError::UnknownFormat(envelope.format).into());
    }
    if envelope.format == FORMAT_V1 && !envelope.is_signed() {
        return Err(CodecError::Malformed("a format-1 envelope must be signed".into()).into());
    }
    let payload = envelope.decode_payload()?;
    let bytes = envelope.to_bytes();
    if bytes.is_empty() {
        return Err(CodecError::Malformed(format!("event larger than {MAX_ENCODED} bytes")).into());
    }
    let hash = Hash(*blake3::hash(&bytes).as_bytes());
    Ok((payload, bytes, hash))
}

/// Check every envelope of a batch, in order; the first refusal in batch order wins (for one
/// envelope: own origin, format, then signature, then payload). The work is spread over all
/// cores: the stateless checks of every envelope, and one signature check per signed envelope
/// (the end of each run, or every format-1 event). That each origin's new events end signed is
/// the writer's check, against the tips.
fn check_all(
    own: NodeId,
    envelopes: Vec<Envelope>,
    verify: bool,
) -> Result<Vec<Checked>, LogError> {
    let checks = parallel_map(&envelopes, |e| check_one(own, e));
    let signed: Vec<usize> = if verify {
        (0..envelopes.len())
            .filter(|&i| {
                let e = &envelopes[i];
                // Own origin and an unknown format are refused before the signature counts.
                e.is_signed() && e.origin != own && is_known_format(e.format)
            })
            .collect()
    } else {
        Vec::new()
    };
    let sigs = parallel_map(&signed, |&i| envelopes[i].verify_signature());
    let mut bad_sig = signed
        .into_iter()
        .zip(sigs)
        .filter_map(|(i, r)| r.err().map(|e| (i, e)))
        .peekable();
    let mut out = Vec::with_capacity(envelopes.len());
    for (i, (envelope, check)) in envelopes.into_iter().zip(checks).enumerate() {
        let (payload, bytes, hash) = match check {
            // Own origin and format come before the signature.
            Err(
                e @ (RemoteError::OwnOrigin { .. }
                | RemoteError::Codec(CodecError::UnknownFormat(_))),
            ) => return Err(e.into()),
            check => {
                if bad_sig.peek().is_some_and(|(at, _)| *at == i) {
                    if let Some((_, e)) = bad_sig.next() {
                        return Err(RemoteError::Signature(e).into());
                    }
                }
                check?
            }
        };
        out.push(Checked {
            event: Event {
                envelope,
                payload,
                hash,
            },
            bytes,
        });
    }
    Ok(out)
}

/// The blake3 key-derivation context of [`Log::snapshot_key`].
const SNAPSHOT_KEY_CONTEXT: &str = "bolt 2026 state snapshot checksum v1";

/// Inputs at least this long are spread over several threads by [`parallel_map`].
const PARALLEL_MIN: usize = 256;

/// `items.iter().map(f)` on all cores, results in input order. Falls back to the calling
/// thread for short inputs, on one core, or when a thread cannot be started.
pub(crate) fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || items.len() < PARALLEL_MIN {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let mut parts = Vec::with_capacity(threads);
        for part in items.chunks(chunk) {
            let job = move || part.iter().map(f).collect::<Vec<R>>();
            match std::thread::Builder::new().spawn_scoped(s, job) {
                Ok(handle) => parts.push((part, Some(handle))),
                Err(_) => parts.push((part, None)),
            }
        }
        let mut out = Vec::with_capacity(items.len());
        for (part, handle) in parts {
            match handle.map(|h| h.join()) {
                Some(Ok(v)) => out.extend(v),
                // Not started, or failed: do that part here.
                _ => out.extend(part.iter().map(f)),
            }
        }
        out
    })
}

/// Entry points for the fuzz targets (`events/fuzz`) into the private codecs of the log's table
/// rows. Not an API: nothing else may use it.
#[doc(hidden)]
pub mod fuzz_api {
    use crate::envelope::OrderKey;

    /// A `snapshots` row split into its order key and the opaque bytes.
    pub fn decode_snapshot_row(row: &[u8]) -> Option<(OrderKey, Vec<u8>)> {
        super::tables::decode_snapshot(row)
    }

    /// The `snapshots` row of an order key and bytes.
    pub fn encode_snapshot_row(key: &OrderKey, bytes: &[u8]) -> Vec<u8> {
        super::tables::encode_snapshot(key, bytes)
    }
}
