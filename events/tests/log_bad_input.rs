//! Damaged files and hostile events: every case is a clear error or a reported fault, never a
//! panic, and a refused event never costs the log what it already held.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use bolt_events::{Cursor, Envelope, Hash, Hlc, Log, LogError, RemoteError};
use common::{key, payload, temp_log, Remote};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const EVENTS: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("events");
const BY_ORIGIN: TableDefinition<'static, ([u8; 32], u64), u64> = TableDefinition::new("by_origin");
const HEADS: TableDefinition<'static, [u8; 32], (u64, [u8; 32], u64)> =
    TableDefinition::new("heads");

/// A closed log file with a few events of two origins; returns what it holds.
fn filled_log(path: &Path) -> Vec<Envelope> {
    let log = Log::open(path, key(1)).unwrap();
    log.append_batch((1..=20).map(payload).collect()).unwrap();
    let mut r = Remote::new(2);
    log.append_remote(r.chain(10)).unwrap();
    let all = log.read_after(Cursor(0), usize::MAX).unwrap();
    all.into_iter().map(|a| a.event.envelope).collect()
}

/// Open must give a clear error or a log whose reads all work (no panic either way).
fn open_outcome(path: &Path) -> Result<Log, LogError> {
    let log = Log::open(path, key(1))?;
    log.read_after(Cursor(0), usize::MAX)?;
    log.verify()?;
    Ok(log)
}

#[test]
fn given_a_truncated_db_file_when_opened_then_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    filled_log(&path);
    let full = std::fs::read(&path).unwrap();
    for cut in [
        1,
        100,
        512,
        4096,
        full.len() / 3,
        full.len() / 2,
        full.len() - 4096,
        full.len() - 1,
    ] {
        std::fs::write(&path, &full[..cut]).unwrap();
        match open_outcome(&path) {
            Err(e) => {
                let msg = e.to_string();
                eprintln!("cut {cut}: {msg}");
                assert!(msg.contains("event log"), "cut {cut}: unclear error {msg}");
            }
            Ok(log) => panic!("cut {cut}: a truncated file opened as {log:?}"),
        }
    }
}

#[test]
fn given_corrupted_db_bytes_when_opened_then_a_clear_error_or_every_event_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let held = filled_log(&path);
    let full = std::fs::read(&path).unwrap();
    let mut errors = 0;
    // Every 4th KiB page, a few bytes smashed in the middle of it.
    for page in (0..full.len() / 4096).step_by(1) {
        let mut bytes = full.clone();
        let at = page * 4096 + 1000;
        for b in &mut bytes[at..at + 16] {
            *b ^= 0xA5;
        }
        std::fs::write(&path, &bytes).unwrap();
        match open_outcome(&path) {
            Err(e) => {
                eprintln!("page {page}: {e}");
                errors += 1;
                assert!(e.to_string().contains("event log"), "page {page}: {e}");
            }
            Ok(log) => {
                // The damage hit unused space: everything is still there and sound.
                let got: Vec<Envelope> = log
                    .read_after(Cursor(0), usize::MAX)
                    .unwrap()
                    .into_iter()
                    .map(|a| a.event.envelope)
                    .collect();
                assert_eq!(got, held, "page {page}");
                assert!(log.verify().unwrap().is_clean(), "page {page}");
            }
        }
    }
    assert!(errors > 0, "smashing pages that hold data must be noticed");
}

#[test]
fn given_a_file_that_is_not_a_database_when_opened_then_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    std::fs::write(
        &path,
        b"this is not a redb database, just some text".repeat(200),
    )
    .unwrap();
    let err = Log::open(&path, key(1)).unwrap_err();
    assert!(
        matches!(err, LogError::Open { .. } | LogError::Damaged { .. }),
        "{err:?}"
    );
}

#[test]
fn given_a_stored_event_that_does_not_decode_when_read_then_corrupt_with_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    filled_log(&path);
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(EVENTS)
            .unwrap()
            .insert(7, &[1u8, 2, 3][..])
            .unwrap();
        txn.commit().unwrap();
    }
    let log = Log::open(&path, key(1)).unwrap();
    match log.read_after(Cursor(0), 100) {
        Err(LogError::Corrupt { cursor: 7, .. }) => {}
        other => panic!("expected Corrupt at 7, got {other:?}"),
    }
    assert!(matches!(
        log.read_total_order(log.head()),
        Err(LogError::Corrupt { cursor: 7, .. })
    ));
    assert!(matches!(
        log.read_origin(log.node_id(), 1..=20),
        Err(LogError::Corrupt { cursor: 7, .. })
    ));
    // What is around it still reads.
    assert_eq!(log.read_after(Cursor(0), 6).unwrap().len(), 6);
    assert_eq!(log.read_after(Cursor(7), 100).unwrap().len(), 23);
    let report = log.verify().unwrap();
    assert_eq!(report.faults.len(), 2, "{:?}", report.faults);
    assert!(report.faults[0].contains("cursor 7: unreadable event"));
    assert!(report.faults[1].contains("seq gap"), "{:?}", report.faults);
}

/// Rewrite the event at `cursor` of origin key(1) (seq == cursor) with `f` applied, keeping the
/// index and the tip consistent, as a damaged or forged file would.
fn rewrite(path: &Path, cursor: u64, f: impl FnOnce(&mut Envelope)) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut events = txn.open_table(EVENTS).unwrap();
        let mut env = Envelope::from_bytes(events.get(cursor).unwrap().unwrap().value()).unwrap();
        f(&mut env);
        let bytes = env.to_bytes();
        events.insert(cursor, bytes.as_slice()).unwrap();
        let mut index = txn.open_table(BY_ORIGIN).unwrap();
        if env.seq != cursor {
            index.remove((env.origin.0, cursor)).unwrap();
            index.insert((env.origin.0, env.seq), cursor).unwrap();
        }
    }
    txn.commit().unwrap();
}

fn faults(path: &Path) -> Vec<String> {
    let log = Log::open(path, key(1)).unwrap();
    assert_eq!(log.read_after(Cursor(0), usize::MAX).unwrap().len(), 30);
    log.verify().unwrap().faults
}

#[test]
fn given_a_stored_event_with_a_broken_chain_when_verified_then_the_fault_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    filled_log(&path);
    let k = key(1);
    rewrite(&path, 5, |e| {
        e.prev = Hash([9; 32]);
        e.sig = k
            .seal_bytes(e.seq, e.hlc, e.prev, e.schema, e.payload.clone())
            .sig;
    });
    let f = faults(&path);
    // seq 5's prev is wrong, and seq 6's prev no longer matches the rewritten seq 5.
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(
        f[0].contains("cursor 5") && f[0].contains("broken chain"),
        "{f:?}"
    );
    assert!(
        f[1].contains("cursor 6") && f[1].contains("broken chain"),
        "{f:?}"
    );
}

#[test]
fn given_a_stored_event_with_a_bad_signature_when_verified_then_the_fault_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    filled_log(&path);
    rewrite(&path, 20, |e| e.sig.as_mut().unwrap()[10] ^= 0xff);
    let f = faults(&path);
    assert!(
        f.iter()
            .any(|l| l.contains("cursor 20") && l.contains("bad signature")),
        "{f:?}"
    );
    // The tip of origin 1 recorded the old hash of seq 20.
    assert!(f.iter().any(|l| l.contains("recorded tip")), "{f:?}");
}

#[test]
fn given_a_tampered_event_in_the_middle_of_a_run_when_verified_then_the_chain_break_is_named() {
    // Cursors 1..=20 are one local batch: one run, signed at 20 only.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let held = filled_log(&path);
    assert_eq!(
        held.iter()
            .filter(|e| e.origin == key(1).id() && e.is_signed())
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        vec![20]
    );
    rewrite(&path, 10, |e| {
        e.payload = bolt_events::payload::encode_payload(&payload(999));
    });
    let f = faults(&path);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].contains("cursor 11") && f[0].contains("broken chain"),
        "{f:?}"
    );
}

#[test]
fn given_a_run_whose_signature_was_stripped_when_verified_then_the_unsigned_end_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    filled_log(&path);
    rewrite(&path, 20, |e| e.sig = None);
    let f = faults(&path);
    assert!(
        f.iter()
            .any(|l| l.contains("seq 1..=20") && l.contains("end unsigned")),
        "{f:?}"
    );
    // The tip of origin 1 recorded the hash of the signed seq 20.
    assert!(f.iter().any(|l| l.contains("recorded tip")), "{f:?}");
}

#[test]
fn given_a_stored_gap_when_verified_then_the_fault_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    filled_log(&path);
    let k = key(1);
    rewrite(&path, 3, |e| {
        e.seq = 33;
        e.sig = k
            .seal_bytes(e.seq, e.hlc, e.prev, e.schema, e.payload.clone())
            .sig;
    });
    let f = faults(&path);
    assert!(
        f.iter()
            .any(|l| l.contains("cursor 3") && l.contains("seq gap")),
        "{f:?}"
    );
    assert!(
        f.iter()
            .any(|l| l.contains("cursor 4") && l.contains("seq gap")),
        "{f:?}"
    );
}

#[test]
fn given_hostile_remote_events_when_refused_then_the_log_still_reads_everything_it_had() {
    let (_dir, path, log) = temp_log(1);
    let mut r = Remote::new(2);
    log.append_batch((1..=5).map(payload).collect()).unwrap();
    log.append_remote(r.chain(3)).unwrap();
    let before: Vec<Envelope> = log
        .read_after(Cursor(0), usize::MAX)
        .unwrap()
        .into_iter()
        .map(|a| a.event.envelope)
        .collect();

    let mut tampered = r.clone_chain_step();
    tampered.sig.as_mut().unwrap()[0] ^= 1;
    let gap = r.key.seal(9, Hlc::new(9, 0), Hash::ZERO, &payload(9));
    let fork = r.key.seal(4, Hlc::new(9, 0), Hash([1; 32]), &payload(9));
    let future = r.key.seal_bytes(4, Hlc::new(9, 0), r.prev, 7, vec![1]);
    let own = key(1).seal(6, Hlc::new(9, 0), Hash::ZERO, &payload(9));
    for bad in [tampered, gap, fork, future, own] {
        let e = log.append_remote(vec![bad]).unwrap_err();
        assert!(matches!(e, LogError::Remote(_)), "{e:?}");
    }
    assert!(matches!(
        log.append_remote(vec![r.key.seal(2, Hlc::new(1, 0), Hash::ZERO, &payload(0))]),
        Err(LogError::Remote(RemoteError::Conflict { seq: 2, .. }))
    ));
    drop(log);
    let log = Log::open(&path, key(1)).unwrap();
    let after: Vec<Envelope> = log
        .read_after(Cursor(0), usize::MAX)
        .unwrap()
        .into_iter()
        .map(|a| a.event.envelope)
        .collect();
    assert_eq!(after, before);
    assert!(log.verify().unwrap().is_clean());
    assert_eq!(
        log.append_remote(vec![r.next(&payload(4))]).unwrap().len(),
        1
    );
}

#[test]
fn given_a_db_whose_layout_is_newer_when_opened_then_a_layout_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    filled_log(&path);
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let meta: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
        txn.open_table(meta).unwrap().insert("layout", 2).unwrap();
        txn.commit().unwrap();
    }
    match Log::open(&path, key(1)) {
        Err(LogError::Layout {
            found: 2,
            expected: 1,
            ..
        }) => {}
        other => panic!("expected a layout error, got {other:?}"),
    }
    // Nothing was changed by the refused open.
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    assert_eq!(
        redb::ReadableTableMetadata::len(&txn.open_table(EVENTS).unwrap()).unwrap(),
        30
    );
    assert!(txn.open_table(HEADS).is_ok());
}
