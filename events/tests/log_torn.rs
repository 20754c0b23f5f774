//! Torn writes: the log on a fault-injecting redb backend that fails every write and sync from
//! the Nth operation on (tearing that write in half), then the bytes a crash could leave behind
//! are reopened. Every acknowledged append must be there; the log opens or says clearly why not.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Error, ErrorKind};
use std::sync::{Arc, Mutex};

use bolt_events::{Cursor, Hash, Log, NodeId};
use common::{key, payload, Remote};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redb::backends::InMemoryBackend;
use redb::StorageBackend;

#[derive(Debug, Default)]
struct Disk {
    /// What the process sees.
    live: Vec<u8>,
    /// What a completed sync made durable.
    durable: Vec<u8>,
    /// Writes since the last completed sync: any of them may or may not reach the disk.
    unsynced: Vec<(usize, Vec<u8>)>,
    /// Length changes since the last sync.
    unsynced_len: Option<usize>,
    ops: u64,
    fail_at: Option<u64>,
    failed: bool,
}

/// A backend whose writes, length changes and syncs fail from op `fail_at` on. The failing
/// write is torn: its first half reaches the page cache.
#[derive(Clone, Debug, Default)]
struct FaultBackend(Arc<Mutex<Disk>>);

impl FaultBackend {
    fn failing_at(op: Option<u64>) -> Self {
        let b = FaultBackend::default();
        b.0.lock().unwrap().fail_at = op;
        b
    }

    fn ops(&self) -> u64 {
        self.0.lock().unwrap().ops
    }

    /// Count an op; false (and the device gone) from the failing op on.
    fn step(d: &mut Disk) -> bool {
        d.ops += 1;
        if d.failed || d.fail_at.is_some_and(|f| d.ops >= f) {
            d.failed = true;
            return false;
        }
        true
    }

    /// A disk image a crash could leave: the durable bytes, then some of the unsynced writes
    /// (chosen by `rng`, in order), always including the torn half of the failing write.
    fn crash_image(&self, rng: &mut StdRng) -> Vec<u8> {
        let d = self.0.lock().unwrap();
        let mut image = d.durable.clone();
        if let Some(len) = d.unsynced_len {
            if rng.gen_bool(0.5) {
                image.resize(len, 0);
            }
        }
        let n = d.unsynced.len();
        for (i, (offset, data)) in d.unsynced.iter().enumerate() {
            let torn = i + 1 == n && d.failed;
            if torn || rng.gen_bool(0.5) {
                if image.len() < offset + data.len() {
                    image.resize(offset + data.len(), 0);
                }
                image[*offset..offset + data.len()].copy_from_slice(data);
            }
        }
        image
    }
}

fn io_fail() -> Error {
    Error::other("injected device failure")
}

impl StorageBackend for FaultBackend {
    fn len(&self) -> Result<u64, Error> {
        Ok(self.0.lock().unwrap().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), Error> {
        let d = self.0.lock().unwrap();
        let offset = offset as usize;
        if offset + out.len() > d.live.len() {
            return Err(Error::from(ErrorKind::UnexpectedEof));
        }
        out.copy_from_slice(&d.live[offset..offset + out.len()]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), Error> {
        let mut d = self.0.lock().unwrap();
        if !Self::step(&mut d) {
            return Err(io_fail());
        }
        d.live.resize(len as usize, 0);
        d.unsynced_len = Some(len as usize);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), Error> {
        let mut d = self.0.lock().unwrap();
        if !Self::step(&mut d) {
            return Err(io_fail());
        }
        d.durable = d.live.clone();
        d.unsynced.clear();
        d.unsynced_len = None;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let mut d = self.0.lock().unwrap();
        let offset = offset as usize;
        if !Self::step(&mut d) {
            if d.fail_at == Some(d.ops) {
                // The failing write is torn: half of it reached the page cache.
                let half = data[..data.len() / 2].to_vec();
                d.unsynced.push((offset, half));
            }
            return Err(io_fail());
        }
        if d.live.len() < offset + data.len() {
            d.live.resize(offset + data.len(), 0);
        }
        d.live[offset..offset + data.len()].copy_from_slice(data);
        d.unsynced.push((offset, data.to_vec()));
        Ok(())
    }
}

/// Acknowledged events by origin: seq -> hash.
type Acked = BTreeMap<NodeId, BTreeMap<u64, Hash>>;

/// The workload: local appends, a local batch, remote batches, a snapshot. Stops at the first
/// error (the device is gone); returns what was acknowledged.
fn workload(log: &Log, remote: &[Vec<bolt_events::Envelope>]) -> Acked {
    let mut acked = Acked::new();
    let mut note = |a: &bolt_events::Appended| {
        acked
            .entry(a.event.origin())
            .or_default()
            .insert(a.event.seq(), a.event.hash);
    };
    for step in 0..6u64 {
        let r = match step {
            2 => log.append_batch((10..13).map(payload).collect()),
            3 => log.append_remote(remote[0].clone()),
            5 => log.append_remote(remote[1].clone()),
            _ => log.append(payload(step)).map(|a| vec![a]),
        };
        match r {
            Ok(v) => v.iter().for_each(&mut note),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("storage") || msg.contains("stopped"), "{msg}");
                return acked;
            }
        }
        if step == 4 {
            let snap = bolt_events::StoredSnapshot {
                cursor: log.head(),
                last_key: bolt_events::OrderKey::MIN,
                bytes: b"state".to_vec(),
            };
            if log.put_snapshot(snap).is_err() {
                return acked;
            }
        }
    }
    acked
}

fn check_recovered(image: Vec<u8>, acked: &Acked, what: &str) {
    let backend = InMemoryBackend::new();
    backend.set_len(image.len() as u64).unwrap();
    backend.write(0, &image).unwrap();
    let log = match Log::open_with_backend(backend, key(1)) {
        Ok(log) => log,
        Err(e) => {
            assert!(
                acked.is_empty(),
                "{what}: {} acknowledged events lost: {e}",
                acked.values().map(BTreeMap::len).sum::<usize>()
            );
            assert!(
                e.to_string().contains("event log"),
                "{what}: unclear error {e}"
            );
            return;
        }
    };
    let report = log.verify().unwrap();
    assert!(report.is_clean(), "{what}: {:?}", report.faults);
    for (origin, events) in acked {
        let stored: BTreeMap<u64, Hash> = log
            .read_origin(*origin, 1..=u64::MAX)
            .unwrap()
            .iter()
            .map(|e| (e.seq, e.hash()))
            .collect();
        for (seq, hash) in events {
            assert_eq!(
                stored.get(seq),
                Some(hash),
                "{what}: acknowledged {seq} lost"
            );
        }
    }
    let all = log.read_after(Cursor(0), usize::MAX).unwrap();
    assert_eq!(all.len() as u64, log.head().0, "{what}");
    // The recovered log takes new appends on top of what survived.
    let next = log.append(payload(99)).unwrap();
    assert_eq!(next.cursor.0, all.len() as u64 + 1, "{what}");
}

#[test]
fn given_a_device_failing_at_every_point_of_a_workload_when_reopened_then_every_ack_survives() {
    let mut remote = Remote::new(2);
    let remote = vec![remote.chain(2), remote.chain(2)];

    // A clean run counts the operations of the whole workload.
    let probe = FaultBackend::failing_at(None);
    let acked = {
        let log = Log::open_with_backend(probe.clone(), key(1)).unwrap();
        workload(&log, &remote)
    };
    assert_eq!(acked.values().map(BTreeMap::len).sum::<usize>(), 10);
    let total = probe.ops();
    check_recovered(probe.0.lock().unwrap().live.clone(), &acked, "clean run");

    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut crashes = 0;
    for fail_at in 1..=total {
        let backend = FaultBackend::failing_at(Some(fail_at));
        let acked = match Log::open_with_backend(backend.clone(), key(1)) {
            Ok(log) => workload(&log, &remote),
            Err(e) => {
                assert!(
                    e.to_string().contains("event log"),
                    "open at {fail_at}: {e}"
                );
                Acked::new()
            }
        };
        for variant in 0..3 {
            let image = backend.crash_image(&mut rng);
            check_recovered(
                image,
                &acked,
                &format!("fail at op {fail_at}/{total}, image {variant}"),
            );
            crashes += 1;
        }
    }
    assert!(crashes >= 3 * total);
    eprintln!("{total} device operations, {crashes} crash images checked");
}
