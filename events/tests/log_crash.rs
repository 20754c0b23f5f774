//! Crash test: a child process appends from several threads and prints every acknowledged
//! event; the parent SIGKILLs it at a random moment, reopens the log and checks that nothing
//! acknowledged was lost, that every chain verifies and that the seqs are gapless.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bolt_events::{Hash, Hlc, Log, NodeId};
use common::{key, payload};
use rand::Rng;

/// Set (to the db path) in the child's environment: selects the child role.
const CHILD_ENV: &str = "BOLT_LOG_CRASH_CHILD";
const CHILD_TEST: &str = "child_appender_for_the_crash_test";

/// The child role. A no-op in a normal test run.
#[test]
fn child_appender_for_the_crash_test() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let log = Log::open(Path::new(&path), key(1)).unwrap();
    let remote = key(2);
    let (mut rseq, mut rprev) = log.tip(remote.id()).unwrap().unwrap_or((0, Hash::ZERO));
    let deadline = Instant::now() + Duration::from_secs(30);
    let print = |what: &str, seq: u64, hash: Hash| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ack {what} {seq} {hash}").unwrap();
        out.flush().unwrap();
    };
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let log = log.clone();
            s.spawn(move || {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    i += 1;
                    if i.is_multiple_of(5) {
                        let batch = (0..3)
                            .map(|j| payload(t * 1_000_000 + i * 10 + j))
                            .collect();
                        for a in log.append_batch(batch).unwrap() {
                            print("local", a.event.seq(), a.event.hash);
                        }
                    } else {
                        let a = log.append(payload(t * 1_000_000 + i)).unwrap();
                        print("local", a.event.seq(), a.event.hash);
                    }
                }
            });
        }
        // One thread takes a remote origin's chain, continuing from the stored tip.
        let log = log.clone();
        s.spawn(move || {
            while Instant::now() < deadline {
                rseq += 1;
                let env = remote.seal(rseq, Hlc::new(rseq, 0), rprev, &payload(rseq));
                rprev = env.hash();
                for a in log.append_remote(vec![env]).unwrap() {
                    print("remote", a.event.seq(), a.event.hash);
                }
            }
        });
    });
}

/// What the child acknowledged, by origin: seq -> hash.
type Acked = BTreeMap<&'static str, BTreeMap<u64, Hash>>;

fn run_child_and_kill(path: &Path, kill_after: usize, acked: &mut Acked) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = 0;
    let mut killed = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let mut parts = line.split_whitespace();
        if parts.next() != Some("ack") {
            continue;
        }
        let origin = match parts.next() {
            Some("local") => "local",
            Some("remote") => "remote",
            other => panic!("bad line {line}: {other:?}"),
        };
        let seq: u64 = parts.next().unwrap().parse().unwrap();
        let hash: Hash = parts.next().unwrap().parse().unwrap();
        acked.entry(origin).or_default().insert(seq, hash);
        seen += 1;
        if seen == kill_after && !killed {
            // SIGKILL; lines already in the pipe were acknowledged before it and still count.
            child.kill().unwrap();
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(killed, "the child ended before it was killed: {status:?}");
}

fn check_after_crash(path: &Path, acked: &Acked) {
    let log = Log::open(path, key(1)).unwrap();
    let report = log.verify().unwrap();
    assert!(
        report.is_clean(),
        "faults after a crash: {:?}",
        report.faults
    );
    for (origin, id) in [("local", key(1).id()), ("remote", key(2).id())] {
        check_origin(&log, id, acked.get(origin));
    }
}

fn check_origin(log: &Log, origin: NodeId, acked: Option<&BTreeMap<u64, Hash>>) {
    let stored = log.read_origin(origin, 1..=u64::MAX).unwrap();
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "gapless"
    );
    let stored: BTreeMap<u64, Hash> = stored.iter().map(|e| (e.seq, e.hash())).collect();
    for (seq, hash) in acked.into_iter().flatten() {
        assert_eq!(
            stored.get(seq),
            Some(hash),
            "acknowledged {seq} lost or changed"
        );
    }
    assert_eq!(
        log.tip(origin).unwrap(),
        stored.iter().next_back().map(|(s, h)| (*s, *h))
    );
}

#[test]
fn given_a_child_appending_from_many_threads_when_sigkilled_at_random_then_every_ack_survives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let mut acked = Acked::new();
    let mut rng = rand::thread_rng();
    for round in 0..5 {
        let kill_after = rng.gen_range(1..80);
        run_child_and_kill(&path, kill_after, &mut acked);
        check_after_crash(&path, &acked);
        let total: usize = acked.values().map(|m| m.len()).sum();
        eprintln!("round {round}: killed after {kill_after} acks, {total} acknowledged in all");
    }
    assert!(acked.get("local").is_some_and(|m| !m.is_empty()));
}
