//! Agent restart time on a big log: from spawning `bolt agent` until `GET /v1/info` answers on
//! its socket, with state snapshots in the log and without (a copy of the same log with every
//! snapshot pruned). Goal: under 1 s with snapshots at 1M events.
//!
//! `cargo bench -p bolt-bench --bench restart`. It runs `cargo build --release -p bolt-agent`
//! first (or uses `$BOLT_BIN`). Knobs: `BOLT_BENCH_EVENTS` (default 1_000_000),
//! `BOLT_BENCH_RUNS` (starts per case, default 5), `BOLT_BENCH_SNAPSHOT_EVERY` (default 10_000).
//! Prints a markdown table.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bolt_agent::client::Client;
use bolt_events::payload::{CapsuleEvent, CapsuleSpec, NodeEvent};
use bolt_events::{Log, NodeKey, Payload};
use bolt_state::Replica;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Capsules the synthetic node runs; every other event is one of them starting or exiting.
const CAPSULES: usize = 1_000;
const BATCH: usize = 10_000;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this binary without it, and
    // a test run must not fill a million-event log.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("restart: run with `cargo bench -p bolt-bench --bench restart`");
        return;
    }
    let events = bolt_bench::env_u64("BOLT_BENCH_EVENTS", 1_000_000);
    let runs = bolt_bench::env_u64("BOLT_BENCH_RUNS", 5).max(1) as usize;
    let every = bolt_bench::env_u64("BOLT_BENCH_SNAPSHOT_EVERY", 10_000);
    let bin = bolt_bench::bolt_binary().unwrap();

    let work = tempfile::Builder::new()
        .prefix("bolt-bench-restart-")
        .tempdir_in(bolt_bench::target_dir())
        .unwrap();
    let with = work.path().join("with-snapshots");
    let without = work.path().join("without-snapshots");

    let t = Instant::now();
    let snapshots = fill(&with, events, every);
    let fill_s = t.elapsed().as_secs_f64();
    copy_root(&with, &without);
    let pruned = prune_snapshots(&without);
    eprintln!(
        "filled {events} events ({snapshots} snapshots) in {fill_s:.1} s; the copy dropped {pruned}"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for (case, root, snapshot_every) in [
        ("with snapshots", &with, every),
        ("without snapshots", &without, 0),
    ] {
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| start_once(&rt, &bin, root, snapshot_every))
            .collect();
        times.sort();
        let size = std::fs::metadata(root.join("events.redb"))
            .map(|m| m.len())
            .unwrap_or(0);
        rows.push((case, size, times));
    }

    println!();
    println!(
        "### `bolt agent` start until `/v1/info` answers ({events} events, {runs} starts each)"
    );
    println!();
    println!("| case | db size | min | median | max |");
    println!("|---|---:|---:|---:|---:|");
    for (case, size, times) in &rows {
        println!(
            "| {case} | {:.0} MiB | {} | {} | {} |",
            *size as f64 / (1024.0 * 1024.0),
            ms(times[0]),
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1]),
        );
    }
    let median_with = rows[0].2[rows[0].2.len() / 2];
    println!();
    println!(
        "goal: < 1 s with snapshots: {} (median {})",
        if median_with < Duration::from_secs(1) {
            "met"
        } else {
            "NOT met"
        },
        ms(median_with)
    );
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The synthetic history: the node starts, creates its capsules, then they start and exit in
/// turn until `events` events are in the log. Snapshots every `every` events, as the agent
/// takes them. Returns how many snapshots were stored.
fn fill(root: &Path, events: u64, every: u64) -> usize {
    std::fs::create_dir_all(root).unwrap();
    let key = NodeKey::load_or_create(&root.join("node.key")).unwrap();
    let log = Log::open(&root.join("events.redb"), key).unwrap();
    let mut replica = Replica::new();
    let mut snapshots = 0;
    let mut n = 0u64;
    while n < events {
        let size = BATCH.min((events - n) as usize);
        let batch: Vec<Payload> = (n..n + size as u64).map(payload).collect();
        for a in log.append_batch(batch).unwrap() {
            replica.ingest(&a);
            if replica.maybe_snapshot(&log, every).unwrap() {
                snapshots += 1;
            }
        }
        n += size as u64;
    }
    snapshots
}

/// Event number `i` of the synthetic history.
fn payload(i: u64) -> Payload {
    let c = CAPSULES as u64;
    match i {
        0 => Payload::Node(NodeEvent::Started {
            name: "bench".into(),
            version: "0".into(),
            addr: None,
            labels: Default::default(),
        }),
        i if i <= c => Payload::Capsule(CapsuleEvent::Created {
            id: format!("c{:06}", i - 1),
            name: format!("web-{}", i - 1),
            spec: CapsuleSpec {
                image: "busybox:latest".into(),
                command: vec!["sleep".into(), "1000".into()],
                network: "bridge".into(),
                restart: "always".into(),
                ..Default::default()
            },
        }),
        i => {
            // Cycles of: every capsule starts, then every capsule exits.
            let k = i - c - 1;
            let id = format!("c{:06}", k % c);
            if (k / c).is_multiple_of(2) {
                Payload::Capsule(CapsuleEvent::Started {
                    id,
                    pid: (k % 30_000) as u32 + 100,
                })
            } else {
                Payload::Capsule(CapsuleEvent::Exited {
                    id,
                    code: Some(0),
                    signal: None,
                    oom: false,
                })
            }
        }
    }
}

fn copy_root(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["node.key", "events.redb"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
    std::fs::set_permissions(to.join("node.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn prune_snapshots(root: &Path) -> usize {
    let key = NodeKey::load_or_create(&root.join("node.key")).unwrap();
    let log = Log::open(&root.join("events.redb"), key).unwrap();
    let pruned = log.prune_snapshots(0).unwrap();
    assert!(log.snapshots().unwrap().is_empty());
    pruned
}

/// Spawn the agent, time until `/v1/info` answers, then stop it (SIGTERM, exit 0).
fn start_once(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    root: &Path,
    snapshot_every: u64,
) -> Duration {
    let socket = root.join("bolt.sock");
    let client = Client::new(&socket);
    let t = Instant::now();
    let mut child = Command::new(bin)
        .arg("--socket")
        .arg(&socket)
        .arg("agent")
        .arg("--root")
        .arg(root)
        .arg("--snapshot-every")
        .arg(snapshot_every.to_string())
        .env(
            "BOLT_LOG",
            std::env::var("BOLT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let took = loop {
        if rt.block_on(client.info()).is_ok() {
            break t.elapsed();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the agent exited before it answered: {status}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "the agent never answered"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "the agent did not stop cleanly: {status}");
    took
}
