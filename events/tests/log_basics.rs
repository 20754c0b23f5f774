//! Local appends, reads, subscriptions, snapshots and verify of the event log.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bolt_events::{Cursor, Hash, Hlc, Log, LogError, OrderKey, StoredSnapshot};
use common::{key, node_started, payload, temp_log, Remote};

#[test]
fn given_an_empty_log_when_opened_then_it_has_no_events_and_head_zero() {
    let (_dir, _path, log) = temp_log(1);
    assert_eq!(log.head(), Cursor(0));
    assert_eq!(log.node_id(), key(1).id());
    assert!(log.read_after(Cursor(0), 10).unwrap().is_empty());
    assert!(log.version_vector().unwrap().is_empty());
    assert_eq!(log.tip(log.node_id()).unwrap(), None);
    let report = log.verify().unwrap();
    assert_eq!((report.events, report.origins), (0, 0));
    assert!(report.is_clean());
}

#[test]
fn given_a_log_when_appending_then_events_are_sealed_chained_and_numbered_from_one() {
    let (_dir, _path, log) = temp_log(1);
    let a = log.append(node_started("n1")).unwrap();
    let b = log.append(payload(2)).unwrap();

    assert_eq!((a.cursor, b.cursor), (Cursor(1), Cursor(2)));
    assert_eq!((a.event.seq(), b.event.seq()), (1, 2));
    assert_eq!(a.event.origin(), log.node_id());
    assert_eq!(a.event.envelope.prev, Hash::ZERO);
    assert_eq!(b.event.envelope.prev, a.event.hash);
    assert_eq!(a.event.hash, a.event.envelope.hash());
    assert!(a.event.hlc() < b.event.hlc());
    a.event.envelope.verify_signature().unwrap();
    b.event.envelope.verify_signature().unwrap();
    assert_eq!(a.event.payload, node_started("n1"));
    assert_eq!(log.head(), Cursor(2));
    assert_eq!(log.tip(log.node_id()).unwrap(), Some((2, b.event.hash)));
}

#[test]
fn given_a_batch_when_appended_then_all_land_in_order_with_consecutive_cursors() {
    let (_dir, _path, log) = temp_log(1);
    log.append(payload(0)).unwrap();
    let out = log.append_batch((1..=50).map(payload).collect()).unwrap();
    assert_eq!(out.len(), 50);
    for (i, a) in out.iter().enumerate() {
        assert_eq!(a.cursor, Cursor(i as u64 + 2));
        assert_eq!(a.event.seq(), i as u64 + 2);
        assert_eq!(a.event.payload, payload(i as u64 + 1));
    }
    for w in out.windows(2) {
        assert_eq!(w[1].event.envelope.prev, w[0].event.hash);
    }
    assert!(log.append_batch(Vec::new()).unwrap().is_empty());
    assert_eq!(log.head(), Cursor(51));
}

#[test]
fn given_a_batch_of_n_when_appended_then_it_carries_one_signature_on_its_last_event() {
    let (_dir, _path, log) = temp_log(1);
    let out = log.append_batch((1..=100).map(payload).collect()).unwrap();
    let signed: Vec<u64> = out
        .iter()
        .filter(|a| a.event.envelope.is_signed())
        .map(|a| a.event.seq())
        .collect();
    assert_eq!(signed, vec![100], "one signature per batch");
    assert!(out
        .iter()
        .all(|a| a.event.envelope.format == bolt_events::envelope::FORMAT));
    // The signature covers the last event's digest, which holds `prev`: the whole run.
    out[99].event.envelope.verify_signature().unwrap();
    for w in out.windows(2) {
        assert_eq!(w[1].event.envelope.prev, w[0].event.hash);
    }
    // What is stored is what was answered, and it verifies.
    let stored = log.read_origin(log.node_id(), 1..=100).unwrap();
    assert_eq!(
        stored,
        out.iter()
            .map(|a| a.event.envelope.clone())
            .collect::<Vec<_>>()
    );
    let report = log.verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.faults);
    // A single append is a run of one: signed.
    assert!(log.append(payload(101)).unwrap().event.envelope.is_signed());
}

#[test]
fn given_runs_of_5_3_and_4_when_read_for_a_peer_then_ranges_end_at_signed_events() {
    let (_dir, _path, log) = temp_log(1);
    for n in [5u64, 3, 4] {
        log.append_batch((0..n).map(payload).collect()).unwrap();
    }
    let me = log.node_id();
    let seqs = |envs: Vec<bolt_events::Envelope>| envs.iter().map(|e| e.seq).collect::<Vec<_>>();
    // Cut back to the last signed event within `max`.
    assert_eq!(
        seqs(log.read_origin_signed(me, 1, 7).unwrap()),
        (1..=5).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(log.read_origin_signed(me, 1, 8).unwrap()),
        (1..=8).collect::<Vec<_>>()
    );
    // A run longer than `max` is sent whole, so the peer makes progress.
    assert_eq!(
        seqs(log.read_origin_signed(me, 1, 2).unwrap()),
        (1..=5).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(log.read_origin_signed(me, 6, 100).unwrap()),
        (6..=12).collect::<Vec<_>>()
    );
    assert!(log.read_origin_signed(me, 13, 100).unwrap().is_empty());
    assert!(log
        .read_origin_signed(key(9).id(), 1, 100)
        .unwrap()
        .is_empty());
    // Where a range may end.
    assert_eq!(log.last_signed_at_or_before(me, 4).unwrap(), None);
    assert_eq!(log.last_signed_at_or_before(me, 5).unwrap(), Some(5));
    assert_eq!(log.last_signed_at_or_before(me, 7).unwrap(), Some(5));
    assert_eq!(log.last_signed_at_or_before(me, 12).unwrap(), Some(12));
    assert_eq!(
        log.last_signed_at_or_before(me, u64::MAX).unwrap(),
        Some(12)
    );
    assert_eq!(log.last_signed_at_or_before(key(9).id(), 5).unwrap(), None);
    // Such a range is what a peer accepts; one cut mid-run is refused.
    let (_dir2, _path2, peer) = temp_log(2);
    let mid = log.read_origin(me, 1..=7).unwrap();
    assert!(matches!(
        peer.append_remote(mid),
        Err(LogError::Remote(bolt_events::RemoteError::UnsignedTail {
            seq: 7,
            ..
        }))
    ));
    let signed = log.read_origin_signed(me, 1, 7).unwrap();
    assert_eq!(peer.append_remote(signed).unwrap().len(), 5);
    let rest = log.read_origin_signed(me, 6, 100).unwrap();
    assert_eq!(peer.append_remote(rest).unwrap().len(), 7);
    assert!(peer.verify().unwrap().is_clean());
}

#[test]
fn given_events_when_read_after_a_cursor_then_arrival_order_with_limit() {
    let (_dir, _path, log) = temp_log(1);
    let appended = log.append_batch((1..=10).map(payload).collect()).unwrap();
    let page = log.read_after(Cursor(3), 4).unwrap();
    let cursors: Vec<u64> = page.iter().map(|a| a.cursor.0).collect();
    assert_eq!(cursors, vec![4, 5, 6, 7]);
    assert_eq!(page[0].event, appended[3].event);
    assert!(log.read_after(Cursor(10), 5).unwrap().is_empty());
    assert!(log.read_after(Cursor(u64::MAX), 5).unwrap().is_empty());
    assert_eq!(log.read_after(Cursor(0), usize::MAX).unwrap().len(), 10);
}

#[test]
fn given_two_origins_when_read_origin_then_only_that_origins_envelopes_in_seq_order() {
    let (_dir, _path, log) = temp_log(1);
    let mut remote = Remote::new(2);
    log.append(payload(1)).unwrap();
    let theirs = remote.chain(5);
    log.append_remote(theirs[..2].to_vec()).unwrap();
    log.append(payload(2)).unwrap();
    log.append_remote(theirs[2..].to_vec()).unwrap();

    let got = log.read_origin(remote.key.id(), 2..=4).unwrap();
    assert_eq!(got, theirs[1..4].to_vec());
    let ours = log.read_origin(log.node_id(), 1..=u64::MAX).unwrap();
    assert_eq!(ours.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    #[allow(clippy::reversed_empty_ranges)]
    let empty = log.read_origin(remote.key.id(), 4..=2).unwrap();
    assert!(empty.is_empty());
    assert!(log.read_origin(key(9).id(), 1..=10).unwrap().is_empty());
}

#[test]
fn given_events_arriving_out_of_hlc_order_when_read_in_total_order_then_sorted_by_hlc_origin_seq() {
    let (_dir, _path, log) = temp_log(1);
    // Local events carry the wall clock (far above the remote's 1000ms clock).
    log.append(payload(1)).unwrap();
    let mut remote = Remote::new(2);
    log.append_remote(remote.chain(3)).unwrap();
    log.append(payload(2)).unwrap();

    let all = log.read_total_order(log.head()).unwrap();
    assert_eq!(all.len(), 5);
    let keys: Vec<OrderKey> = all.iter().map(|a| a.event.order_key()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(all[0].event.origin(), remote.key.id());
    assert_eq!(all[0].cursor, Cursor(2));

    let upto = log.read_total_order(Cursor(2)).unwrap();
    let cursors: BTreeSet<u64> = upto.iter().map(|a| a.cursor.0).collect();
    assert_eq!(cursors, BTreeSet::from([1, 2]));
    assert_eq!(
        upto[0].cursor,
        Cursor(2),
        "remote seq 1 sorts before our seq 1"
    );
}

#[test]
fn given_several_origins_when_asking_the_version_vector_then_highest_seq_of_each() {
    let (_dir, _path, log) = temp_log(1);
    let (mut r2, mut r3) = (Remote::new(2), Remote::new(3));
    log.append_batch(vec![payload(1), payload(2)]).unwrap();
    log.append_remote(r2.chain(4)).unwrap();
    log.append_remote(r3.chain(1)).unwrap();
    let vv = log.version_vector().unwrap();
    assert_eq!(vv.len(), 3);
    assert_eq!(vv[&log.node_id()], 2);
    assert_eq!(vv[&r2.key.id()], 4);
    assert_eq!(vv[&r3.key.id()], 1);
    assert_eq!(log.tip(r2.key.id()).unwrap(), Some((4, r2.prev)));
}

#[test]
fn given_a_log_with_events_when_reopened_then_everything_is_there_and_the_chain_continues() {
    let (_dir, path, log) = temp_log(1);
    let mut remote = Remote::new(2);
    // A remote event from the future pushes the clock: local events after it sort after it.
    remote.wall_ms = hlc_now_ms() + 3_600_000;
    let future = remote.chain(1);
    log.append(payload(1)).unwrap();
    log.append_remote(future.clone()).unwrap();
    let before = log.read_after(Cursor(0), 100).unwrap();
    drop(log);

    let log = Log::open(&path, key(1)).unwrap();
    assert_eq!(log.head(), Cursor(2));
    let after = log.read_after(Cursor(0), 100).unwrap();
    assert_eq!(
        after.iter().map(|a| &a.event).collect::<Vec<_>>(),
        before.iter().map(|a| &a.event).collect::<Vec<_>>()
    );
    let next = log.append(payload(2)).unwrap();
    assert_eq!(next.cursor, Cursor(3));
    assert_eq!(next.event.seq(), 2);
    assert_eq!(next.event.envelope.prev, before[0].event.hash);
    assert!(
        next.event.hlc() > future[0].hlc,
        "the clock restarts after the highest HLC in the log"
    );
    assert!(log.verify().unwrap().is_clean());
}

fn hlc_now_ms() -> u64 {
    bolt_events::wall_clock_ms()
}

#[test]
fn given_many_threads_when_appending_concurrently_then_every_event_is_stored_once_and_gapless() {
    let (_dir, path, log) = temp_log(1);
    let threads = 8;
    let per = 10;
    let acked = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for t in 0..threads {
            let log = log.clone();
            let acked = acked.clone();
            s.spawn(move || {
                for i in 0..per {
                    let a = log.append(payload(t * 1000 + i)).unwrap();
                    acked.lock().unwrap().push((a.event.seq(), a.event.hash));
                }
            });
        }
    });
    let mut acked = acked.lock().unwrap().clone();
    acked.sort();
    assert_eq!(acked.len() as u64, threads * per);
    let seqs: Vec<u64> = acked.iter().map(|x| x.0).collect();
    assert_eq!(seqs, (1..=threads * per).collect::<Vec<_>>());

    let commits = log.stats().commits;
    drop(log);

    let log = Log::open(&path, key(1)).unwrap();
    let stored = log.read_origin(log.node_id(), 1..=u64::MAX).unwrap();
    // Every commit group of local events carries exactly one signature, on its last event.
    let signed = stored.iter().filter(|e| e.is_signed()).count() as u64;
    assert_eq!(signed, commits);
    assert!(stored.last().unwrap().is_signed());
    let stored: Vec<(u64, Hash)> = stored.iter().map(|e| (e.seq, e.hash())).collect();
    assert_eq!(stored, acked);
    assert!(log.verify().unwrap().is_clean());
}

#[test]
fn given_a_waiter_when_an_append_commits_then_wait_past_returns_the_new_head() {
    let (_dir, _path, log) = temp_log(1);
    log.append(payload(1)).unwrap();
    // Already past: returns at once.
    assert_eq!(log.wait_past(Cursor(0), Duration::from_secs(60)), Cursor(1));
    let waiter = {
        let log = log.clone();
        std::thread::spawn(move || log.wait_past(Cursor(1), Duration::from_secs(60)))
    };
    log.append(payload(2)).unwrap();
    assert_eq!(waiter.join().unwrap(), Cursor(2));
    // Nothing new: returns the unchanged head when the timeout ends.
    assert_eq!(
        log.wait_past(Cursor(2), Duration::from_millis(1)),
        Cursor(2)
    );
}

#[test]
fn given_a_commit_callback_when_events_commit_then_it_sees_each_new_head_before_the_append_returns()
{
    let (_dir, _path, log) = temp_log(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicU64::new(0));
    {
        let seen = seen.clone();
        log.on_commit(Box::new(move |c| seen.lock().unwrap().push(c)));
        let calls = calls.clone();
        log.on_commit(Box::new(move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            panic!("a broken subscriber must not stop the writer");
        }));
    }
    log.append(payload(1)).unwrap();
    log.append_batch(vec![payload(2), payload(3)]).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![Cursor(1), Cursor(3)]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A subscriber resumes from its cursor with read_after.
    let resumed = log.read_after(Cursor(1), 10).unwrap();
    assert_eq!(resumed.len(), 2);
}

#[test]
fn given_snapshots_when_listed_then_newest_first_and_replaced_at_the_same_cursor() {
    let (_dir, path, log) = temp_log(1);
    log.append_batch((1..=5).map(payload).collect()).unwrap();
    let snap = |c: u64, b: &[u8]| StoredSnapshot {
        cursor: Cursor(c),
        last_key: OrderKey {
            hlc: Hlc::new(c, 1),
            origin: key(1).id(),
            seq: c,
        },
        bytes: b.to_vec(),
    };
    log.put_snapshot(snap(2, b"two")).unwrap();
    log.put_snapshot(snap(4, b"four")).unwrap();
    log.put_snapshot(snap(2, b"two again")).unwrap();
    match log.put_snapshot(snap(9, b"ahead")) {
        Err(LogError::SnapshotAhead { cursor: 9, head: 5 }) => {}
        other => panic!("expected SnapshotAhead, got {other:?}"),
    }
    drop(log);
    let log = Log::open(&path, key(1)).unwrap();
    let snaps = log.snapshots().unwrap();
    assert_eq!(snaps.len(), 2);
    assert_eq!(
        (snaps[0].cursor, snaps[0].bytes.as_slice()),
        (Cursor(4), &b"four"[..])
    );
    assert_eq!(snaps[0].last_key, snap(4, b"").last_key);
    assert_eq!(
        (snaps[1].cursor, snaps[1].bytes.as_slice()),
        (Cursor(2), &b"two again"[..])
    );

    assert_eq!(log.prune_snapshots(1).unwrap(), 1);
    let snaps = log.snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].cursor, Cursor(4));
    assert_eq!(log.prune_snapshots(5).unwrap(), 0);
}

#[test]
fn given_a_healthy_log_with_several_origins_when_verified_then_no_fault() {
    let (_dir, _path, log) = temp_log(1);
    let (mut r2, mut r3) = (Remote::new(2), Remote::new(3));
    log.append_batch((1..=3).map(payload).collect()).unwrap();
    let mut batch = r2.chain(3);
    batch.extend(r3.chain(2));
    log.append_remote(batch).unwrap();
    log.append(payload(9)).unwrap();
    let report = log.verify().unwrap();
    assert_eq!(report.events, 9);
    assert_eq!(report.origins, 3);
    assert!(report.is_clean(), "{:?}", report.faults);
}

#[test]
fn given_a_log_file_already_open_when_opened_again_then_a_clear_error() {
    let (_dir, path, _log) = temp_log(1);
    match Log::open(&path, key(1)) {
        Err(LogError::Open { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected Open error, got {other:?}"),
    }
}

#[test]
fn given_appenders_queued_behind_a_commit_when_the_writer_is_free_then_they_share_one_transaction()
{
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;

    let (_dir, _path, log) = temp_log(1);
    // Hold the writer inside the first commit's callback until every appender has queued.
    let (release, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let first = AtomicBool::new(true);
    log.on_commit(Box::new(move |_| {
        if first.swap(false, Ordering::SeqCst) {
            let _ = gate.lock().unwrap().recv();
        }
    }));
    let appenders = 10u64;
    std::thread::scope(|s| {
        let l = log.clone();
        s.spawn(move || l.append(payload(0)).unwrap());
        while log.stats().commits < 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 1..=appenders {
            let l = log.clone();
            s.spawn(move || l.append(payload(i)).unwrap());
        }
        while log.stats().queued < appenders + 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        release.send(()).unwrap();
    });
    let stats = log.stats();
    assert_eq!(stats.commits, 2, "the ten queued appends shared one commit");
    assert_eq!(stats.requests, appenders + 1);
    assert_eq!(stats.queued, 0);
    assert_eq!(log.head(), Cursor(appenders + 1));
    // One signature per commit group: the first append's event, and the last of the ten.
    let signed: Vec<u64> = log
        .read_origin(log.node_id(), 1..=u64::MAX)
        .unwrap()
        .iter()
        .filter(|e| e.is_signed())
        .map(|e| e.seq)
        .collect();
    assert_eq!(signed, vec![1, appenders + 1]);
    assert!(log.verify().unwrap().is_clean());
}

#[test]
fn given_a_payload_over_the_size_limit_when_appended_then_too_large_and_nothing_stored() {
    let (_dir, _path, log) = temp_log(1);
    log.append(payload(1)).unwrap();
    let huge = bolt_events::Payload::Node(bolt_events::payload::NodeEvent::Stopped {
        reason: "x".repeat(bolt_events::codec::MAX_ENCODED + 1),
    });
    match log.append_batch(vec![payload(2), huge]) {
        Err(LogError::TooLarge { limit, .. }) => assert_eq!(limit, bolt_events::codec::MAX_ENCODED),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(log.head(), Cursor(1));
    assert_eq!(log.append(payload(3)).unwrap().event.seq(), 2);
}
