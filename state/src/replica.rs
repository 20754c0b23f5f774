//! A node's live state in the global total order, with late arrivals, snapshots and time travel.
//!
//! Events arrive in cursor (arrival) order, but an event from another origin may sort
//! ([`OrderKey`]) before events already folded. The replica keeps, for the most recent `window`
//! folded events, the event and the undo journal of its fold. A late event rewinds: the events
//! that sort after it are reverted newest first, the late event is folded, and they are folded
//! again. The cost is proportional to how late the event is, not to the size of the state or the
//! log. An event older than the window (a long partition healing) is handled by rebuilding from
//! the log (newest usable snapshot plus tail) when the replica has one; without a log the window
//! is unbounded by default, so the replica is always exact.

use std::collections::VecDeque;

use bolt_events::payload::decode_payload;
use bolt_events::{Appended, Cursor, Event, Log, LogError, OrderKey, Payload, StoredSnapshot};

use crate::apply::{discard, fold, revert, Journal};
use crate::model::State;
use crate::snapshot::{decode_state, encode_state};

/// How many recent events a replica restored from a log keeps for rewinding.
pub const DEFAULT_WINDOW: usize = 65_536;

/// Events read from the log per call.
const READ_BATCH: usize = 16_384;

/// What failed while using the log.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("snapshot at cursor {cursor} is unreadable: {reason}")]
    Snapshot { cursor: u64, reason: String },
}

/// Counters of what the replica did, for metrics and benches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Events taken by [`Replica::ingest`].
    pub ingested: u64,
    /// Of those, events that sorted before the last folded key.
    pub late: u64,
    /// Events reverted and folded again to make room for late ones.
    pub refolded: u64,
    /// Full rebuilds from the log (late events older than the window).
    pub rebuilds: u64,
    /// Events skipped because they were already folded.
    pub duplicates: u64,
    /// Cursor of the snapshot the latest rebuild from the log started from (`None`: it
    /// replayed the whole log, or there was no rebuild).
    pub restored_from: Option<Cursor>,
}

/// One folded event kept for rewinding: its key, the length of its payload bytes (kept as they
/// came in, back to back in [`Replica`]'s byte buffer: one copy instead of a deep clone, and no
/// allocation per event; decoded again only when it is reverted), and how many undo records
/// its fold left at the back of the shared journal.
#[derive(Debug)]
struct Folded {
    key: OrderKey,
    schema: u16,
    len: usize,
    undo: usize,
}

/// The payload bytes of the events in the history, back to back in the same order: the live
/// ones are `buf[head..]`. Dropping the oldest only moves `head`; the buffer is compacted once
/// the dead front outgrows the live part, so each byte is moved at most about once.
#[derive(Debug, Default)]
struct Bytes {
    buf: Vec<u8>,
    head: usize,
}

impl Bytes {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn drop_front(&mut self, len: usize) {
        self.head = (self.head + len).min(self.buf.len());
        if self.head >= 1 << 16 && self.head * 2 >= self.buf.len() {
            self.buf.drain(..self.head);
            self.head = 0;
        }
    }

    /// Take the last `len` bytes out.
    fn pop_back(&mut self, len: usize) -> Vec<u8> {
        let start = self.buf.len().saturating_sub(len).max(self.head);
        let out = self.buf[start..].to_vec();
        self.buf.truncate(start);
        out
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.head = 0;
    }
}

/// A node's live state: folds events in total order, re-deriving when one arrives late.
#[derive(Debug)]
pub struct Replica {
    state: State,
    cursor: Cursor,
    /// The most recent folded events in key order.
    history: VecDeque<Folded>,
    /// Their payload bytes.
    bytes: Bytes,
    /// Their undo records, back to back in the same order.
    journal: Journal,
    /// Every folded event with a key above `floor` is in `history`.
    floor: OrderKey,
    window: usize,
    log: Option<Log>,
    since_snapshot: u64,
    exact: bool,
    warnings: Vec<String>,
    stats: ReplicaStats,
}

impl Default for Replica {
    fn default() -> Self {
        Replica::new()
    }
}

impl Replica {
    /// An empty replica with no log: it keeps every event for rewinding (memory grows with the
    /// events ingested), so it is exact however late an event arrives.
    pub fn new() -> Replica {
        Replica::with_window(usize::MAX)
    }

    /// An empty replica with no log that keeps the last `window` events for rewinding. An event
    /// that sorts before all of them is folded in arrival position instead and the replica
    /// stops being [`exact`](Replica::is_exact) (a warning says so).
    pub fn with_window(window: usize) -> Replica {
        Replica {
            state: State::default(),
            cursor: Cursor(0),
            history: VecDeque::new(),
            bytes: Bytes::default(),
            journal: Journal::new(),
            floor: OrderKey::MIN,
            window,
            log: None,
            since_snapshot: 0,
            exact: true,
            warnings: Vec::new(),
            stats: ReplicaStats::default(),
        }
    }

    /// Rebuild from the newest usable snapshot in the log plus the events after it, keeping
    /// [`DEFAULT_WINDOW`] events for rewinding and the log for rebuilding.
    pub fn restore(log: &Log) -> Result<Replica, ReplicaError> {
        Replica::restore_with_window(log, DEFAULT_WINDOW)
    }

    /// [`Replica::restore`] with a chosen rewind window.
    pub fn restore_with_window(log: &Log, window: usize) -> Result<Replica, ReplicaError> {
        let head = log.head();
        let mut r = Replica::with_window(window);
        r.rebuild_from(log, head)?;
        r.cursor = head;
        r.log = Some(log.clone());
        Ok(r)
    }

    /// Take the next event in arrival order (cursor order). An event at or below the cursor
    /// already ingested is skipped.
    pub fn ingest(&mut self, appended: &Appended) {
        if appended.cursor <= self.cursor {
            self.stats.duplicates += 1;
            return;
        }
        self.cursor = appended.cursor;
        self.since_snapshot += 1;
        self.stats.ingested += 1;
        let event = &appended.event;
        let key = event.order_key();
        if key > self.state.last_key {
            self.push(
                key,
                &event.payload,
                event.envelope.schema,
                &event.envelope.payload,
            );
            self.trim();
        } else if key > self.floor {
            self.rewind(key, event);
        } else {
            self.too_late(key, &event.payload);
        }
    }

    /// The state folded so far.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Highest cursor ingested.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Highest total-order key folded.
    pub fn last_key(&self) -> OrderKey {
        self.state.last_key
    }

    /// Whether the state is exactly the fold of the ingested events in total order. Only a
    /// replica without a log whose window was outrun, or whose rebuild from the log failed,
    /// is not.
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// Problems met and worked around (unreadable snapshots, failed rebuilds).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// What the replica did so far.
    pub fn stats(&self) -> ReplicaStats {
        self.stats
    }

    /// Store a snapshot in the log if `every` events were ingested since the last one (or since
    /// the replica was restored). Returns whether it stored one.
    pub fn maybe_snapshot(&mut self, log: &Log, every: u64) -> Result<bool, ReplicaError> {
        if every == 0 || self.since_snapshot < every {
            return Ok(false);
        }
        log.put_snapshot(StoredSnapshot {
            cursor: self.cursor,
            last_key: self.state.last_key,
            bytes: encode_state(&self.state, &log.snapshot_key()),
        })?;
        self.since_snapshot = 0;
        Ok(true)
    }

    /// Fold one event after everything folded so far, keeping it for rewinding.
    fn push(&mut self, key: OrderKey, payload: &Payload, schema: u16, bytes: &[u8]) {
        if self.window == 0 {
            fold(&mut self.state, key, payload, None);
            self.floor = key;
            return;
        }
        let before = self.journal.len();
        fold(&mut self.state, key, payload, Some(&mut self.journal));
        self.bytes.push(bytes);
        self.history.push_back(Folded {
            key,
            schema,
            len: bytes.len(),
            undo: self.journal.len() - before,
        });
    }

    fn trim(&mut self) {
        while self.history.len() > self.window {
            if let Some(f) = self.history.pop_front() {
                discard(&mut self.journal, f.undo);
                self.bytes.drop_front(f.len);
                self.floor = f.key;
            }
        }
    }

    /// Fold a late event whose key is above the floor: take back every event that sorts after
    /// it, fold it, fold them again.
    fn rewind(&mut self, key: OrderKey, event: &Event) {
        // (key, schema, payload bytes, payload) of the events taken back, newest first.
        let mut undone = Vec::new();
        while let Some(back) = self.history.back() {
            if back.key <= key {
                break;
            }
            if let Some(f) = self.history.pop_back() {
                let bytes = self.bytes.pop_back(f.len);
                let payload = decode_payload(f.schema, &bytes);
                let before = self.history.back().map_or(self.floor, |b| b.key);
                revert(
                    &mut self.state,
                    &mut self.journal,
                    f.undo,
                    payload.as_ref().ok(),
                    before,
                );
                undone.push((f.key, f.schema, bytes, payload));
            }
        }
        let duplicate = self.history.back().is_some_and(|b| b.key == key);
        if duplicate {
            self.stats.duplicates += 1;
        } else {
            self.stats.late += 1;
            self.push(
                key,
                &event.payload,
                event.envelope.schema,
                &event.envelope.payload,
            );
        }
        self.stats.refolded += undone.len() as u64;
        for (key, schema, bytes, payload) in undone.into_iter().rev() {
            match payload {
                Ok(payload) => self.push(key, &payload, schema, &bytes),
                Err(e) => {
                    // It decoded when it arrived, so this cannot happen; never panic anyway.
                    self.exact = false;
                    self.warnings.push(format!(
                        "event {}#{} no longer decodes and was dropped: {e}",
                        key.origin.short(),
                        key.seq
                    ));
                }
            }
        }
        self.trim();
    }

    /// A late event that sorts at or below the floor: rebuild from the log, or fold it out of
    /// order when there is no log (or the rebuild fails).
    fn too_late(&mut self, key: OrderKey, payload: &Payload) {
        self.stats.late += 1;
        if let Some(log) = self.log.clone() {
            match self.rebuild_from(&log, self.cursor) {
                Ok(()) => {
                    self.stats.rebuilds += 1;
                    return;
                }
                Err(e) => self
                    .warnings
                    .push(format!("rebuild for a late event failed: {e}")),
            }
        }
        if key == self.floor {
            // Already folded (the window moved past it): nothing to do.
            self.stats.late -= 1;
            self.stats.duplicates += 1;
            return;
        }
        self.warnings.push(format!(
            "event {}#{} arrived after the rewind window; folded out of order",
            key.origin.short(),
            key.seq
        ));
        self.exact = false;
        // Nothing folded so far can be taken back in order any more: drop the history, fold
        // the event in arrival position and keep last_key the highest key folded.
        self.history.clear();
        self.journal.clear();
        self.bytes.clear();
        let last = self.state.last_key;
        fold(&mut self.state, key, payload, None);
        self.state.last_key = last;
        self.floor = last;
    }

    /// Replace state and history with the fold of every event in the log with cursor <= `upto`,
    /// starting from the newest usable snapshot.
    fn rebuild_from(&mut self, log: &Log, upto: Cursor) -> Result<(), ReplicaError> {
        let (base, tail) = base_and_tail(log, upto, &mut self.warnings)?;
        self.stats.restored_from = base.as_ref().map(|(c, _)| *c);
        let (state, floor) = match base {
            Some((_, s)) => {
                let k = s.last_key;
                (s, k)
            }
            None => (State::default(), OrderKey::MIN),
        };
        self.state = state;
        self.floor = floor;
        self.history.clear();
        self.journal.clear();
        self.bytes.clear();
        self.since_snapshot = tail.len() as u64;
        let keep_from = tail.len().saturating_sub(self.window);
        for (i, a) in tail.into_iter().enumerate() {
            let key = a.event.order_key();
            if key <= self.state.last_key {
                continue; // same event twice; the log should never hold that
            }
            if i < keep_from {
                fold(&mut self.state, key, &a.event.payload, None);
                self.floor = key;
            } else {
                let env = &a.event.envelope;
                self.push(key, &a.event.payload, env.schema, &env.payload);
            }
        }
        self.exact = true;
        Ok(())
    }
}

/// Time travel: the state this node had right after ingesting `cursor` (clamped to the head):
/// the fold, in total order, of every event with a cursor at or below it. Starts from the newest
/// snapshot taken at or before `cursor` that the later events do not sort before.
pub fn state_at(log: &Log, cursor: Cursor) -> Result<State, ReplicaError> {
    let upto = cursor.min(log.head());
    let mut r = Replica::with_window(0);
    r.rebuild_from(log, upto)?;
    Ok(r.state)
}

/// A snapshot's cursor and decoded state (if one is usable), and the events to fold after it.
type BaseAndTail = (Option<(Cursor, State)>, Vec<Appended>);

/// The newest usable snapshot state (if any) at or below `upto`, and the events after it up to
/// `upto`, sorted by key. A snapshot is usable when it decodes and no event after its cursor
/// sorts before its last key; an unreadable one is skipped with a warning.
fn base_and_tail(
    log: &Log,
    upto: Cursor,
    warnings: &mut Vec<String>,
) -> Result<BaseAndTail, ReplicaError> {
    // `tail` holds the events with cursor in (tail_from, upto], in cursor order.
    let mut tail: Vec<Appended> = Vec::new();
    let mut tail_from = upto;
    let mut tail_min: Option<OrderKey> = None;
    let mut base = None;
    let snapshots = match log.snapshots() {
        Ok(s) => s,
        Err(e) => {
            // The log is the truth: without readable snapshots, replay it all.
            warnings.push(format!(
                "snapshots are unreadable, replaying the whole log: {e}"
            ));
            Vec::new()
        }
    };
    for snap in snapshots {
        if snap.cursor > upto {
            continue;
        }
        if snap.cursor < tail_from {
            let mut older = read_range(log, snap.cursor, tail_from)?;
            if let Some(m) = older.iter().map(|a| a.event.order_key()).min() {
                tail_min = Some(tail_min.map_or(m, |t| t.min(m)));
            }
            older.append(&mut tail);
            tail = older;
            tail_from = snap.cursor;
        }
        if tail_min.is_some_and(|m| m <= snap.last_key) {
            continue; // an event after the snapshot sorts before its state: cannot be used
        }
        match decode_state(&snap.bytes, &log.snapshot_key()) {
            Ok(state) if state.last_key == snap.last_key => {
                base = Some((snap.cursor, state));
                break;
            }
            Ok(_) => warnings.push(
                ReplicaError::Snapshot {
                    cursor: snap.cursor.0,
                    reason: "its state does not end at its recorded last key".into(),
                }
                .to_string(),
            ),
            Err(e) => warnings.push(
                ReplicaError::Snapshot {
                    cursor: snap.cursor.0,
                    reason: e.to_string(),
                }
                .to_string(),
            ),
        }
    }
    if base.is_none() && tail_from > Cursor(0) {
        let mut older = read_range(log, Cursor(0), tail_from)?;
        older.append(&mut tail);
        tail = older;
    }
    tail.sort_by_key(|a| a.event.order_key());
    Ok((base, tail))
}

/// Events with cursor in (after, upto], in cursor order.
fn read_range(log: &Log, after: Cursor, upto: Cursor) -> Result<Vec<Appended>, ReplicaError> {
    let mut out = Vec::new();
    let mut at = after;
    while at < upto {
        let batch = log.read_after(at, READ_BATCH)?;
        let Some(last) = batch.last() else { break };
        at = last.cursor;
        out.extend(batch.into_iter().filter(|a| a.cursor <= upto));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::Bytes;

    #[test]
    fn kept_bytes_stay_in_order_and_bounded() {
        // Model: the payloads still kept, oldest first.
        let mut model: VecDeque<Vec<u8>> = VecDeque::new();
        let mut b = Bytes::default();
        for i in 0..20_000usize {
            let p: Vec<u8> = (0..(i * 7919) % 300).map(|k| (i + k) as u8).collect();
            b.push(&p);
            model.push_back(p);
            if model.len() > 50 {
                let old = model.pop_front().unwrap_or_default();
                b.drop_front(old.len());
            }
            if i % 97 == 0 {
                // A rewind: take the newest back out and push them again.
                let mut taken = Vec::new();
                for _ in 0..3 {
                    let p = model.pop_back().unwrap_or_default();
                    assert_eq!(b.pop_back(p.len()), p);
                    taken.push(p);
                }
                for p in taken.into_iter().rev() {
                    b.push(&p);
                    model.push_back(p);
                }
            }
            let live: usize = model.iter().map(Vec::len).sum();
            assert_eq!(b.buf.len() - b.head, live);
            assert!(
                b.buf.len() <= 2 * live + (1 << 16) + 300,
                "{} {live}",
                b.buf.len()
            );
        }
        b.clear();
        assert_eq!((b.buf.len(), b.head), (0, 0));
    }
}
