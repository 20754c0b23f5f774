//! The replica on a real log: snapshot restore equals full replay, unusable snapshots are
//! skipped, time travel, and rebuilds for events older than the rewind window.
#![allow(clippy::unwrap_used)]

mod common;

use bolt_events::{Appended, Cursor, Event, Hlc, Log, NodeKey, Payload, StoredSnapshot};
use bolt_state::{encode_state, state_at, Replica, State};
use common::*;

struct Fixture {
    _dir: tempfile::TempDir,
    log: Log,
    /// Every event in the log, in cursor order.
    seen: Vec<Appended>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(&dir.path().join("events.redb"), NodeKey::from_seed([9; 32])).unwrap();
        Fixture {
            _dir: dir,
            log,
            seen: Vec::new(),
        }
    }

    fn local(&mut self, payloads: Vec<Payload>) -> Vec<Appended> {
        let got = self.log.append_batch(payloads).unwrap();
        self.seen.extend(got.iter().cloned());
        got
    }

    fn remote(&mut self, origin: &mut Origin, hlc: u64, payload: Payload) -> Appended {
        let env = origin.envelope(hlc, &payload);
        let mut got = self.log.append_remote(vec![env]).unwrap();
        assert_eq!(got.len(), 1);
        let a = got.remove(0);
        self.seen.push(a.clone());
        a
    }

    /// The sorted fold of every event with cursor <= `upto`.
    fn expected(&self, upto: Cursor) -> State {
        let events: Vec<Event> = self
            .seen
            .iter()
            .filter(|a| a.cursor <= upto)
            .map(|a| a.event.clone())
            .collect();
        fold_sorted(&events)
    }

    fn last_hlc(&self) -> u64 {
        self.seen.last().unwrap().event.hlc().0
    }
}

/// A batch of local capsule lifecycle events, ids starting at `from`.
fn lifecycle(from: usize, n: usize) -> Vec<Payload> {
    let mut out = Vec::new();
    for i in from..from + n {
        let id = format!("c{i}");
        out.push(created(&id, &id));
        out.push(started(&id, i as u32));
        if i % 2 == 0 {
            out.push(exited(&id, 0));
        }
    }
    out
}

#[test]
fn restore_from_snapshots_equals_a_full_replay() {
    let mut f = Fixture::new();
    let mut live = Replica::restore(&f.log).unwrap();
    assert_eq!(live.state(), &State::default());
    let mut remote = Origin::new(1);
    for round in 0..6 {
        for a in f.local(lifecycle(round * 10, 10)) {
            live.ingest(&a);
        }
        // A remote event that sorts after everything so far.
        let hlc = f.last_hlc() + 1;
        let a = f.remote(&mut remote, hlc, node_started("remote"));
        live.ingest(&a);
        live.maybe_snapshot(&f.log, 20).unwrap();
    }
    let head = f.log.head();
    assert_eq!(live.cursor(), head);
    assert!(f.log.snapshots().unwrap().len() >= 3);
    let expected = f.expected(head);
    assert_eq!(live.state(), &expected);

    let restored = Replica::restore(&f.log).unwrap();
    assert_eq!(restored.state(), &expected);
    assert_eq!(restored.state().hash(), expected.hash());
    assert_eq!(restored.cursor(), head);
    assert_eq!(
        restored.stats().restored_from,
        Some(f.log.snapshots().unwrap()[0].cursor)
    );
    assert!(restored.warnings().is_empty());
}

#[test]
fn a_late_event_after_a_snapshot_sends_the_restore_to_an_older_one() {
    let mut f = Fixture::new();
    let mut live = Replica::restore(&f.log).unwrap();
    let first = f.local(lifecycle(0, 20)); // 50 events
    for a in &first {
        live.ingest(a);
    }
    // Snapshot A after 30 events, snapshot B at 50 (taken by hand at the right cursors).
    let mut at30 = Replica::new();
    for a in &first[..30] {
        at30.ingest(a);
    }
    f.log
        .put_snapshot(StoredSnapshot {
            cursor: at30.cursor(),
            last_key: at30.last_key(),
            bytes: encode_state(at30.state(), &f.log.snapshot_key()),
        })
        .unwrap();
    assert!(live.maybe_snapshot(&f.log, 1).unwrap());

    // A remote event that sorts between events 35 and 36: B cannot be used, A can.
    let between = first[35].event.hlc().0;
    let mut remote = Origin::new(1);
    let late = f.remote(&mut remote, between, created("r1", "r1"));
    live.ingest(&late);
    assert_eq!(live.stats().late, 1);

    let head = f.log.head();
    let expected = f.expected(head);
    assert_eq!(live.state(), &expected);
    let restored = Replica::restore(&f.log).unwrap();
    assert_eq!(restored.state(), &expected);
    assert_eq!(restored.stats().restored_from, Some(Cursor(30)));

    // One that sorts before everything: no snapshot is usable, the whole log is replayed.
    let early = f.remote(&mut remote, 1, created("r2", "r2"));
    live.ingest(&early);
    let expected = f.expected(f.log.head());
    assert_eq!(live.state(), &expected);
    let restored = Replica::restore(&f.log).unwrap();
    assert_eq!(restored.state(), &expected);
    assert_eq!(restored.stats().restored_from, None);
}

#[test]
fn an_unreadable_snapshot_is_skipped_with_a_warning() {
    let mut f = Fixture::new();
    let mut live = Replica::restore(&f.log).unwrap();
    for a in f.local(lifecycle(0, 10)) {
        live.ingest(&a);
    }
    live.maybe_snapshot(&f.log, 1).unwrap();
    for a in f.local(lifecycle(10, 10)) {
        live.ingest(&a);
    }
    let mut bytes = encode_state(live.state(), &f.log.snapshot_key());
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    f.log
        .put_snapshot(StoredSnapshot {
            cursor: live.cursor(),
            last_key: live.last_key(),
            bytes,
        })
        .unwrap();

    let restored = Replica::restore(&f.log).unwrap();
    assert_eq!(restored.state(), &f.expected(f.log.head()));
    assert_eq!(restored.warnings().len(), 1);
    assert!(
        restored.warnings()[0].contains("checksum"),
        "{:?}",
        restored.warnings()
    );
    assert_eq!(restored.stats().restored_from, Some(Cursor(25)));
}

#[test]
fn state_at_travels_to_any_cursor() {
    let mut f = Fixture::new();
    let mut live = Replica::restore(&f.log).unwrap();
    let mut early = Origin::new(1);
    let mut on_time = Origin::new(2);
    for round in 0..4 {
        for a in f.local(lifecycle(round * 5, 5)) {
            live.ingest(&a);
        }
        // Alternately an event that sorts before much of the log and one on time.
        let payload = started(&format!("c{}", round * 5), 99);
        let a = if round % 2 == 0 {
            f.remote(&mut early, 10 + round as u64, payload)
        } else {
            let hlc = f.last_hlc() + 1;
            f.remote(&mut on_time, hlc, payload)
        };
        live.ingest(&a);
        live.maybe_snapshot(&f.log, 7).unwrap();
    }
    let head = f.log.head();
    for c in [0, 1, 5, 12, 13, 20, 27, head.0 - 1, head.0, head.0 + 10] {
        let got = state_at(&f.log, Cursor(c)).unwrap();
        assert_eq!(got, f.expected(Cursor(c)), "at cursor {c}");
    }
    assert_eq!(state_at(&f.log, head).unwrap(), *live.state());
}

#[test]
fn an_event_older_than_the_window_rebuilds_from_the_log() {
    let mut f = Fixture::new();
    let mut live = Replica::restore_with_window(&f.log, 4).unwrap();
    for a in f.local(lifecycle(0, 10)) {
        live.ingest(&a);
    }
    live.maybe_snapshot(&f.log, 1).unwrap();
    for a in f.local(lifecycle(10, 4)) {
        live.ingest(&a);
    }
    let mut remote = Origin::new(1);
    let a = f.remote(&mut remote, Hlc::new(1, 0).0, created("c3", "late-name"));
    live.ingest(&a);
    let stats = live.stats();
    assert_eq!((stats.late, stats.rebuilds), (1, 1));
    assert!(live.is_exact());
    assert_eq!(live.state(), &f.expected(f.log.head()));
    // The late creation of c3 comes first, so the local one is the misfit.
    assert_eq!(live.state().capsules["c3"].name, "late-name");

    // And it keeps rewinding normally afterwards.
    let hlc = f.seen[f.seen.len() - 2].event.hlc().0;
    let a = f.remote(&mut remote, hlc, exited("c11", 4));
    live.ingest(&a);
    assert_eq!(live.state(), &f.expected(f.log.head()));
}

#[test]
fn a_forged_snapshot_with_a_recomputed_unkeyed_checksum_is_ignored() {
    let mut f = Fixture::new();
    let mut live = Replica::restore(&f.log).unwrap();
    for a in f.local(lifecycle(0, 10)) {
        live.ingest(&a);
    }
    assert!(live.maybe_snapshot(&f.log, 1).unwrap());
    let stored = f.log.snapshots().unwrap().remove(0);
    // Whoever can write the log's file edits the state and recomputes the plain blake3 of
    // the body, as the unkeyed format allowed: the snapshot must not be believed.
    let (mut forged, _): (State, usize) =
        bincode::decode_from_slice(&stored.bytes[33..], bincode::config::standard()).unwrap();
    assert!(!forged.capsules.is_empty());
    forged.capsules = Default::default();
    let mut bytes = stored.bytes[..33].to_vec();
    bincode::encode_into_std_write(&forged, &mut bytes, bincode::config::standard()).unwrap();
    let sum = blake3::hash(&bytes[33..]);
    bytes[1..33].copy_from_slice(sum.as_bytes());
    f.log
        .put_snapshot(StoredSnapshot {
            cursor: stored.cursor,
            last_key: stored.last_key,
            bytes,
        })
        .unwrap();

    let restored = Replica::restore(&f.log).unwrap();
    assert_eq!(restored.state(), &f.expected(f.log.head()));
    assert_eq!(
        restored.stats().restored_from,
        None,
        "the fold, not the forgery"
    );
    assert!(
        restored.warnings().iter().any(|w| w.contains("checksum")),
        "{:?}",
        restored.warnings()
    );
}
