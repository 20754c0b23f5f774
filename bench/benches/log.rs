//! Event log benchmarks: batched appends (one signature per commit group), remote appends of
//! signed runs, durable group commit against a raw redb loop, and the envelope encoding
//! (bincode 2, as used, against rkyv 0.8). Prints a markdown table.
//!
//! `cargo bench -p bolt-bench --bench log` (about a minute; set BOLT_BENCH_QUICK=1 for a smoke run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bolt_events::payload::{CapsuleEvent, CapsuleSpec};
use bolt_events::{Envelope, Event, Hash, Hlc, Log, NodeKey, Payload};

struct Row {
    what: String,
    value: String,
    note: String,
}

fn row(
    rows: &mut Vec<Row>,
    what: impl Into<String>,
    value: impl Into<String>,
    note: impl Into<String>,
) {
    let r = Row {
        what: what.into(),
        value: value.into(),
        note: note.into(),
    };
    eprintln!("  {} = {} {}", r.what, r.value, r.note);
    rows.push(r);
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M events/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k events/s", r / 1e3)
    } else {
        format!("{r:.0} events/s")
    }
}

/// A representative payload: a capsule created with a realistic spec (~300 bytes encoded).
fn capsule(i: u64) -> Payload {
    Payload::Capsule(CapsuleEvent::Created {
        id: format!("{i:016x}"),
        name: format!("web-{i}"),
        spec: CapsuleSpec {
            image: "docker.io/library/nginx:1.27".into(),
            image_digest: "sha256:6a59f1cbb8d28ac484176d52c473494859a512ddba3ea62a547258cf16c9b3ae"
                .into(),
            command: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin".into()],
            network: "bolt0".into(),
            memory_bytes: Some(256 << 20),
            restart: "always".into(),
            ports: vec!["8080:80/tcp".into()],
            ..CapsuleSpec::default()
        },
    })
}

/// A small payload, like most runtime events.
fn small(i: u64) -> Payload {
    Payload::Capsule(CapsuleEvent::Started {
        id: format!("{i:016x}"),
        pid: i as u32,
    })
}

/// `n` chained envelopes of `key`, each signed (each its own run).
fn seal_chain(key: &NodeKey, n: u64, payload: fn(u64) -> Payload) -> Vec<Envelope> {
    seal_runs(key, n, 1, payload)
}

/// `n` chained envelopes of `key` in runs of `run` events: only the last of each run signed, as
/// a node's commit groups write them (envelope format 2).
fn seal_runs(key: &NodeKey, n: u64, run: u64, payload: fn(u64) -> Payload) -> Vec<Envelope> {
    let mut prev = Hash::ZERO;
    (1..=n)
        .map(|seq| {
            let hlc = Hlc::new(1_000 + seq, 0);
            let env = if seq % run == 0 || seq == n {
                key.seal(seq, hlc, prev, &payload(seq))
            } else {
                key.seal_unsigned(seq, hlc, prev, &payload(seq))
            };
            prev = env.hash();
            env
        })
        .collect()
}

/// Local batched appends: seal (one ed25519 signature per commit group, on the writer thread)
/// + store, `batch` events per `append_batch`.
fn local_batches(rows: &mut Vec<Row>, dir: &std::path::Path, total: u64, batch: u64) {
    let log = Log::open(
        &dir.join(format!("local{batch}.redb")),
        NodeKey::from_seed([1; 32]),
    )
    .unwrap();
    let t = Instant::now();
    for b in 0..total / batch {
        let payloads = (0..batch).map(|i| small(b * batch + i)).collect();
        log.append_batch(payloads).unwrap();
    }
    let local = rate(total, t.elapsed());
    row(
        rows,
        format!("append_batch ({batch}/batch, {total} events), seal + store"),
        fmt_rate(local),
        format!(
            "goal 1M/s; {} commits, one signature each",
            log.stats().commits
        ),
    );
}

/// `append_remote` of pre-sealed envelopes, `batch` per call, into a fresh log: (events/s).
fn remote_rate(dir: &std::path::Path, name: &str, envs: &[Envelope], batch: usize) -> f64 {
    let log = Log::open(&dir.join(name), NodeKey::from_seed([1; 32])).unwrap();
    let t = Instant::now();
    for chunk in envs.chunks(batch) {
        log.append_remote(chunk.to_vec()).unwrap();
    }
    rate(envs.len() as u64, t.elapsed())
}

fn batched(rows: &mut Vec<Row>, total: u64, batch: u64) {
    let dir = tempfile::tempdir().unwrap();

    // 1a. Local appends, 10k and 1k events per transaction.
    local_batches(rows, dir.path(), total, batch);
    local_batches(rows, dir.path(), total, 1_000);

    // 1b. The seal cost alone: a signed event, and an unsigned one in the middle of a run.
    let key = NodeKey::from_seed([2; 32]);
    let n = 20_000;
    let t = Instant::now();
    let mut prev = Hash::ZERO;
    for seq in 1..=n {
        let env = key.seal(seq, Hlc::new(seq, 0), prev, &small(seq));
        prev = env.hash();
        black_box(&env);
    }
    let seal_ns = t.elapsed().as_nanos() as f64 / n as f64;
    row(
        rows,
        "seal per signed event (encode + ed25519 sign + blake3)",
        format!("{seal_ns:.0} ns"),
        format!(
            "bounds one origin to {} if every event is signed",
            fmt_rate(1e9 / seal_ns)
        ),
    );
    let t = Instant::now();
    for seq in 1..=n {
        let env = key.seal_unsigned(seq, Hlc::new(seq, 0), prev, &small(seq));
        prev = env.hash();
        black_box(&env);
    }
    let link_ns = t.elapsed().as_nanos() as f64 / n as f64;
    row(
        rows,
        "seal per unsigned event (encode + blake3 chain link)",
        format!("{link_ns:.0} ns"),
        "the events before a run's end",
    );

    // 1c. The storage path alone: pre-sealed envelopes of another origin, signature check
    // skipped (benchmark hook), every other rule applied.
    let remote = seal_chain(&key, total, small);
    let log = Log::open(&dir.path().join("remote.redb"), NodeKey::from_seed([1; 32])).unwrap();
    let t = Instant::now();
    for chunk in remote.chunks(batch as usize) {
        log.bench_append_remote_unverified(chunk.to_vec()).unwrap();
    }
    let store = rate(total, t.elapsed());
    row(
        rows,
        format!("store only: pre-sealed, {batch}/batch (no signature check)"),
        fmt_rate(store),
        "the storage rate: chain checks + redb",
    );
    drop(log);

    // 1d. Remote appends as the mesh does them, every event signed (format 1 and the old
    // format-2 worst case): a signature check per event, on all cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let part = (total / 4).max(batch);
    let verified = remote_rate(
        dir.path(),
        "remote2.redb",
        &remote[..part as usize],
        batch as usize,
    );
    row(
        rows,
        format!("append_remote {batch}/batch, every event signed"),
        fmt_rate(verified),
        format!("{cores} cores, {part} events"),
    );

    // 1e. Remote appends of another origin's runs (batch signatures): one signature check per
    // run of 1000 events, the chain for the rest.
    let runs = seal_runs(&key, total, 1_000, small);
    for per_call in [batch as usize, 1_000] {
        let r = remote_rate(
            dir.path(),
            &format!("remote-runs{per_call}.redb"),
            &runs,
            per_call,
        );
        row(
            rows,
            format!("append_remote {per_call}/call, runs of 1000 (one signature each)"),
            fmt_rate(r),
            format!("goal 200k/s; {:.1}x every-signed", r / verified),
        );
    }
}

/// One slice of durable single-event appends from `threads` threads: (events, elapsed).
fn appends_for(log: &Log, threads: usize, dur: Duration) -> (u64, Duration) {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for i in 0..threads {
            let (stop, done) = (&stop, &done);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    log.append(small(i as u64 * 1_000_000 + n)).unwrap();
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
    });
    (done.load(Ordering::Relaxed), t.elapsed())
}

/// One slice of the baseline: one small row per redb write transaction, committed with
/// Immediate durability, from one thread.
fn raw_for(db: &redb::Database, next: &mut u64, dur: Duration) -> (u64, Duration) {
    let table: redb::TableDefinition<'static, u64, &'static [u8]> = redb::TableDefinition::new("t");
    let row = [7u8; 120];
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < dur {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(redb::Durability::Immediate).unwrap();
        txn.open_table(table)
            .unwrap()
            .insert(*next, row.as_slice())
            .unwrap();
        txn.commit().unwrap();
        *next += 1;
        n += 1;
    }
    (n, t.elapsed())
}

/// Durable appends against the raw loop, in alternating slices so both see the same disk (a
/// shared machine's fsync latency drifts a lot).
fn durable(rows: &mut Vec<Row>, slice: Duration, rounds: u32) {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("raw.redb")).unwrap();
    let mut next = 0;
    for threads in [1, 4, 16, 64] {
        let log = Log::open(
            &dir.path().join(format!("gc{threads}.redb")),
            NodeKey::from_seed([3; 32]),
        )
        .unwrap();
        log.append(small(0)).unwrap();
        let before = log.stats().commits;
        let (mut raw_n, mut raw_t, mut n, mut t) = (0, Duration::ZERO, 0, Duration::ZERO);
        for _ in 0..rounds {
            let (a, b) = raw_for(&db, &mut next, slice);
            raw_n += a;
            raw_t += b;
            let (a, b) = appends_for(&log, threads, slice);
            n += a;
            t += b;
        }
        let commits = log.stats().commits - before;
        let (raw, ours) = (rate(raw_n, raw_t), rate(n, t));
        row(
            rows,
            format!("raw redb, 1 row per Immediate commit (paired with {threads})"),
            fmt_rate(raw),
            "baseline: one fsync each",
        );
        row(
            rows,
            format!("Log::append durable, {threads} threads"),
            fmt_rate(ours),
            format!(
                "**{:.2}x raw**, {:.1} events per commit",
                ours / raw,
                n as f64 / commits.max(1) as f64
            ),
        );
    }
}

/// The envelope mirrored for rkyv: same fields, zero-copy archived form.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct EnvelopeR {
    format: u8,
    origin: [u8; 32],
    seq: u64,
    hlc: u64,
    schema: u16,
    prev: [u8; 32],
    payload: Vec<u8>,
    sig: Option<[u8; 64]>,
}

fn ns_per(n: u64, f: impl Fn(u64)) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn encoding(rows: &mut Vec<Row>, n: u64) {
    let key = NodeKey::from_seed([4; 32]);
    let env = key.seal(
        42,
        Hlc::new(1_760_000_000_000, 3),
        Hash([9; 32]),
        &capsule(42),
    );
    let bytes = env.to_bytes();
    let mirror = EnvelopeR {
        format: env.format,
        origin: env.origin.0,
        seq: env.seq,
        hlc: env.hlc.0,
        schema: env.schema,
        prev: env.prev.0,
        payload: env.payload.clone(),
        sig: env.sig,
    };
    let archived = rkyv::to_bytes::<rkyv::rancor::Error>(&mirror).unwrap();
    let cfg = bincode::config::standard().with_limit::<{ 4 << 20 }>();

    let enc = ns_per(n, |_| {
        black_box(bincode::encode_to_vec(black_box(&env), cfg).unwrap());
    });
    let dec = ns_per(n, |_| {
        let (e, _): (Envelope, usize) = bincode::decode_from_slice(black_box(&bytes), cfg).unwrap();
        black_box(e);
    });
    let from_bytes = ns_per(n, |_| {
        black_box(Envelope::from_bytes(black_box(&bytes)).unwrap());
    });
    let event = ns_per(n, |_| {
        black_box(Event::from_bytes(black_box(&bytes)).unwrap());
    });
    let r_enc = ns_per(n, |_| {
        black_box(rkyv::to_bytes::<rkyv::rancor::Error>(black_box(&mirror)).unwrap());
    });
    let r_access = ns_per(n, |_| {
        let a =
            rkyv::access::<ArchivedEnvelopeR, rkyv::rancor::Error>(black_box(&archived)).unwrap();
        black_box(a.seq);
    });
    let r_de = ns_per(n, |_| {
        black_box(
            rkyv::from_bytes::<EnvelopeR, rkyv::rancor::Error>(black_box(&archived)).unwrap(),
        );
    });
    let size = format!("{} B payload", env.payload.len());
    row(
        rows,
        "bincode 2 envelope encode",
        format!("{enc:.0} ns"),
        format!("{} B encoded ({size})", bytes.len()),
    );
    row(
        rows,
        "bincode 2 envelope decode",
        format!("{dec:.0} ns"),
        "owned Envelope",
    );
    row(
        rows,
        "bincode 2 encode + decode",
        format!("{:.0} ns", enc + dec),
        "",
    );
    row(
        rows,
        "Envelope::from_bytes (decode + canonical check)",
        format!("{from_bytes:.0} ns"),
        "",
    );
    row(
        rows,
        "Event::from_bytes (+ payload decode + blake3)",
        format!("{event:.0} ns"),
        "what every read pays",
    );
    row(
        rows,
        "rkyv 0.8 envelope encode",
        format!("{r_enc:.0} ns"),
        format!("{} B archived", archived.len()),
    );
    row(
        rows,
        "rkyv 0.8 checked access (zero-copy)",
        format!("{r_access:.0} ns"),
        "bytecheck validation",
    );
    row(
        rows,
        "rkyv 0.8 encode + checked access",
        format!("{:.0} ns", r_enc + r_access),
        "",
    );
    row(
        rows,
        "rkyv 0.8 deserialize to owned",
        format!("{r_de:.0} ns"),
        "",
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let quick = std::env::var("BOLT_BENCH_QUICK").is_ok();
    let mut rows = Vec::new();
    let started = Instant::now();

    eprintln!("batched appends...");
    let (total, batch) = if quick {
        (20_000, 10_000)
    } else {
        (200_000, 10_000)
    };
    batched(&mut rows, total, batch);

    eprintln!("durable single appends...");
    let (slice, rounds) = if quick {
        (Duration::from_millis(100), 2)
    } else {
        (Duration::from_millis(400), 4)
    };
    durable(&mut rows, slice, rounds);

    eprintln!("encoding...");
    encoding(&mut rows, if quick { 20_000 } else { 200_000 });

    println!();
    println!("| benchmark | result | note |");
    println!("|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} |", r.what, r.value, r.note);
    }
    println!();
    println!("total bench time {:.1}s", started.elapsed().as_secs_f64());
}
