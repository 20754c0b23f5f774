//! Fold throughput: `apply` over 1M pre-decoded events, decode + fold from bytes, `Replica`
//! ingest in order and with 1% late events, and the cost of a snapshot (encode, decode, hash).
//!
//! `cargo bench -p bolt-bench --bench fold` prints a markdown table: wall time and, beside it, the
//! CPU time of the measuring thread (a loaded machine mostly adds time spent waiting for a CPU).
//! The events are a realistic mix from 5 nodes: node starts, networks, image pulls, and capsule
//! lifecycles (create, allocate an address, start, exit, sometimes restart, release, remove).
//! They are not signed (the fold never checks signatures; signing 1M events would take most of
//! the run). The allocator is the agent binary's (mimalloc).
//!
//! One run on the shared 2-core machine (load average 1.3), goal ≥ 5M events/s (docs/state.md
//! has the before/after and the instruction counts):
//!
//! | measure | events | time | rate | per event | rate (CPU time) | per event (CPU time) |
//! |---|---:|---:|---:|---:|---:|---:|
//! | read key + kind only (floor) | 1000000 | 19.8 ms | 50.39 M/s | 20 ns | 50.00 M/s | 20 ns |
//! | apply (pre-decoded) | 1000000 | 189.2 ms | 5.29 M/s | 189 ns | 5.32 M/s | 188 ns |
//! | decode + apply (from bytes) | 1000000 | 637.3 ms | 1.57 M/s | 637 ns | 1.57 M/s | 636 ns |
//! | Replica::ingest, in order | 1000000 | 471.2 ms | 2.12 M/s | 471 ns | 2.14 M/s | 468 ns |
//! | Replica::ingest, 1% late by 1..=100 | 1000000 | 662.7 ms | 1.51 M/s | 663 ns | 1.52 M/s | 660 ns |
//!
//! Before (`BTreeMap` state, system allocator, same run conditions): apply 512 ns (1.95 M/s),
//! decode + apply 898 ns, ingest in order 1,696 ns, 1% late 2,088 ns.
//!
//! `FOLD_BENCH_EVENTS=N` folds N events; `FOLD_BENCH_ONLY=apply|decode|ingest|late` runs that
//! phase once and prints nothing (for `valgrind --tool=callgrind
//! --toggle-collect='fold::phase_apply'`: instruction counts are exact where time is not);
//! `FOLD_BENCH_REPEAT=K` folds K times with `FOLD_BENCH_ONLY=apply` (for `perf record`).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bolt_events::payload::{
    encode_payload, CapsuleEvent, CapsuleSpec, ImageEvent, NetworkEvent, NodeEvent,
};
use bolt_events::{Appended, Cursor, Envelope, Event, Hash, Hlc, NodeId, Payload, CURRENT_SCHEMA};
use bolt_state::{apply, decode_state, encode_state, Replica, State, DEFAULT_WINDOW};

/// The allocator of the agent binary (`agent/src/main.rs`), so the rates are the agent's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: usize = 1_000_000;
const NODES: usize = 5;
/// Live capsules each node keeps around.
const LIVE: usize = 200;

/// xorshift64*: a small deterministic generator (the bench needs no crate for it).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Step {
    Created,
    Addressed,
    Running,
    Exited,
    Released,
}

struct Live {
    id: String,
    ip: [u8; 4],
    step: Step,
}

struct Node {
    id: NodeId,
    seq: u64,
    live: Vec<Live>,
    next_ip: u32,
}

fn spec(n: u64) -> CapsuleSpec {
    CapsuleSpec {
        image: "registry.local/app/web:1.4.2".into(),
        image_digest: format!("sha256:{:064x}", n % 7),
        command: vec!["/usr/bin/web".into(), "--port".into(), "8080".into()],
        env: vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".into(),
            format!("REPLICA={n}"),
        ],
        workdir: Some("/srv".into()),
        user: None,
        hostname: None,
        network: "bolt0".into(),
        memory_bytes: Some(256 << 20),
        cpu_millis: Some(500),
        pids_limit: Some(512),
        restart: "on-failure".into(),
        ports: vec!["8080/tcp".into()],
        mounts: vec![],
        labels: BTreeMap::from([("stack".into(), "shop".into())]),
    }
}

/// The payload of the next event of node `n`.
fn next_payload(rng: &mut Rng, node: &mut Node, n: usize, counter: &mut u64) -> Payload {
    let net = format!("bolt-{n}");
    if node.seq == 0 {
        return Payload::Node(NodeEvent::Started {
            name: format!("node-{n}"),
            version: "0.1.0".into(),
            addr: Some(format!("10.0.0.{n}:7946")),
            labels: BTreeMap::from([("zone".into(), format!("z{}", n % 2))]),
        });
    }
    if node.seq == 1 {
        return Payload::Network(NetworkEvent::Created {
            name: net,
            driver: "bridge".into(),
            subnet: format!("10.{}.0.0/16", 100 + n),
            gateway: [10, 100 + n as u8, 0, 1].into(),
            mtu: 1500,
        });
    }
    let r = rng.below(1000);
    if r < 2 {
        *counter += 1;
        return Payload::Image(ImageEvent::Pulled {
            reference: format!("registry.local/app/web:1.{}", *counter % 9),
            digest: format!("sha256:{:064x}", *counter % 7),
            config_digest: format!("sha256:{:064x}", *counter + 99),
            layers: vec![format!("sha256:{:064x}", *counter % 3)],
            size: 30 << 20,
        });
    }
    if r == 2 {
        return Payload::Node(NodeEvent::Started {
            name: format!("node-{n}"),
            version: "0.1.1".into(),
            addr: Some(format!("10.0.0.{n}:7946")),
            labels: BTreeMap::new(),
        });
    }
    if node.live.len() < LIVE && rng.below(4) == 0 {
        *counter += 1;
        let id = format!("{:016x}{:016x}", rng.next(), *counter);
        node.next_ip += 1;
        let host = node.next_ip % 65_000 + 2;
        let ip = [10, 100 + n as u8, (host >> 8) as u8, host as u8];
        node.live.push(Live {
            id: id.clone(),
            ip,
            step: Step::Created,
        });
        return Payload::Capsule(CapsuleEvent::Created {
            name: format!("web-{}", *counter),
            id,
            spec: spec(*counter),
        });
    }
    if node.live.is_empty() {
        return Payload::Node(NodeEvent::Stopped {
            reason: "idle".into(),
        });
    }
    let i = rng.below(node.live.len() as u64) as usize;
    let c = &mut node.live[i];
    let (payload, next) = match c.step {
        Step::Created => (
            Payload::Network(NetworkEvent::AddressAllocated {
                network: net,
                capsule: c.id.clone(),
                ip: c.ip.into(),
            }),
            Some(Step::Addressed),
        ),
        Step::Addressed => (
            Payload::Capsule(CapsuleEvent::Started {
                id: c.id.clone(),
                pid: rng.below(1 << 22) as u32,
            }),
            Some(Step::Running),
        ),
        Step::Running => (
            Payload::Capsule(CapsuleEvent::Exited {
                id: c.id.clone(),
                code: Some(0),
                signal: None,
                oom: false,
            }),
            Some(Step::Exited),
        ),
        Step::Exited if rng.below(5) == 0 => (
            Payload::Capsule(CapsuleEvent::Started {
                id: c.id.clone(),
                pid: rng.below(1 << 22) as u32,
            }),
            Some(Step::Running),
        ),
        Step::Exited => (
            Payload::Network(NetworkEvent::AddressReleased {
                network: net,
                capsule: c.id.clone(),
                ip: c.ip.into(),
            }),
            Some(Step::Released),
        ),
        Step::Released => (
            Payload::Capsule(CapsuleEvent::Removed { id: c.id.clone() }),
            None,
        ),
    };
    match next {
        Some(s) => c.step = s,
        None => {
            node.live.swap_remove(i);
        }
    }
    payload
}

/// Encoded events in total order (a global clock ticks once per event).
fn generate(events: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|n| Node {
            id: NodeId([n as u8 + 1; 32]),
            seq: 0,
            live: Vec::new(),
            next_ip: 0,
        })
        .collect();
    let mut counter = 0;
    let start = Hlc::new(1_780_000_000_000, 0).0;
    let mut out = Vec::with_capacity(events);
    for t in 0..events as u64 {
        let n = if t < 2 * NODES as u64 {
            (t % NODES as u64) as usize
        } else {
            rng.below(NODES as u64) as usize
        };
        let node = &mut nodes[n];
        let payload = next_payload(&mut rng, node, n, &mut counter);
        node.seq += 1;
        let env = Envelope {
            format: bolt_events::envelope::FORMAT,
            origin: node.id,
            seq: node.seq,
            hlc: Hlc(start + t),
            schema: CURRENT_SCHEMA,
            prev: Hash::ZERO,
            payload: encode_payload(&payload),
            sig: Some([0; 64]), // a signature's size, as before format 2 (never checked)
        };
        out.push(env.to_bytes());
    }
    out
}

/// CPU time this thread has run so far (`/proc/thread-self/schedstat`, nanoseconds), if the
/// kernel reports it. Unlike wall time it leaves out the time spent waiting for a CPU, which on
/// a loaded machine is most of the difference between two runs.
fn cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// The best wall and CPU times of `runs` runs of `f` (each the minimum over the runs), and the
/// output of the run with the best wall time.
struct Timed<T> {
    wall: Duration,
    cpu: Option<Duration>,
    out: T,
}

fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> Timed<T> {
    let mut best: Option<Timed<T>> = None;
    for _ in 0..runs.max(1) {
        let c = cpu_time();
        let t = Instant::now();
        let out = f();
        let wall = t.elapsed();
        let cpu = c.zip(cpu_time()).map(|(a, b)| b.saturating_sub(a));
        best = Some(match best {
            None => Timed { wall, cpu, out },
            Some(b) => {
                let cpu = match (b.cpu, cpu) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, y) => x.or(y),
                };
                if wall < b.wall {
                    Timed { wall, cpu, out }
                } else {
                    Timed { cpu, ..b }
                }
            }
        });
    }
    match best {
        Some(b) => b,
        None => Timed {
            wall: Duration::ZERO,
            cpu: None,
            out: f(),
        },
    }
}

fn rate(n: usize, d: Duration) -> String {
    let per_s = n as f64 / d.as_secs_f64().max(1e-9);
    format!("{:.2} M/s", per_s / 1e6)
}

fn row<T>(what: &str, n: usize, t: &Timed<T>) {
    let per = |d: Duration| d.as_secs_f64() * 1e9 / n.max(1) as f64;
    let cpu = match t.cpu {
        Some(c) => format!("{} | {:.0} ns", rate(n, c), per(c)),
        None => "- | -".into(),
    };
    println!(
        "| {what} | {n} | {:.1} ms | {} | {:.0} ns | {cpu} |",
        t.wall.as_secs_f64() * 1e3,
        rate(n, t.wall),
        per(t.wall),
    );
}

// The measured phases are functions of their own (never inlined) so that a profiler can count
// exactly one of them: `valgrind --tool=callgrind --toggle-collect='fold::phase_apply' ...`.

/// Touch each event's key and kind, no state: the floor of any fold.
#[inline(never)]
fn phase_floor(events: &[Event]) -> u64 {
    let mut x = 0u64;
    for e in events {
        x = x.wrapping_add(e.order_key().seq ^ e.payload.kind().len() as u64);
    }
    black_box(x)
}

/// `apply` over pre-decoded events.
#[inline(never)]
fn phase_apply(events: &[Event]) -> State {
    let mut s = State::default();
    for e in events {
        apply(&mut s, e);
    }
    s
}

/// Decode each event from its bytes, then `apply` it.
#[inline(never)]
fn phase_decode(bytes: &[Vec<u8>]) -> u64 {
    let mut s = State::default();
    for b in bytes {
        if let Ok(e) = Event::from_bytes(b) {
            apply(&mut s, &e);
        }
    }
    black_box(s.applied)
}

/// `Replica::ingest` in arrival order, with the window of a replica restored from a log.
#[inline(never)]
fn phase_ingest(arrivals: &[Appended]) -> Replica {
    let mut r = Replica::with_window(DEFAULT_WINDOW);
    for a in arrivals {
        r.ingest(a);
    }
    r
}

/// Arrival order with 1% of events 1..=100 positions late (a remote event a little behind).
fn late_arrivals(in_order: &[Appended]) -> Vec<Appended> {
    let mut rng = Rng(42);
    let mut arrival: Vec<(u64, usize)> = (0..in_order.len())
        .map(|i| {
            let late = if rng.below(100) == 0 {
                1 + rng.below(100)
            } else {
                0
            };
            ((i as u64 + late) * 2 + 1, i)
        })
        .collect();
    arrival.sort_unstable();
    arrival
        .iter()
        .enumerate()
        .map(|(pos, &(_, i))| Appended {
            cursor: Cursor(pos as u64 + 1),
            event: in_order[i].event.clone(),
        })
        .collect()
}

fn main() {
    // FOLD_BENCH_EVENTS: how many events (default 1M). FOLD_BENCH_ONLY=apply|decode|ingest|late:
    // run that phase once and print nothing, for a profiler (instruction counts under callgrind
    // are exact where wall-clock time on a loaded machine is not).
    let n: usize = std::env::var("FOLD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(EVENTS);
    let only = std::env::var("FOLD_BENCH_ONLY").ok();

    let t = Instant::now();
    let bytes = generate(n);
    let gen = t.elapsed();
    let events: Vec<Event> = bytes
        .iter()
        .filter_map(|b| Event::from_bytes(b).ok())
        .collect();
    assert_eq!(events.len(), n, "every generated event decodes");
    let in_order = |events: &[Event]| -> Vec<Appended> {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| Appended {
                cursor: Cursor(i as u64 + 1),
                event: e.clone(),
            })
            .collect()
    };
    match only.as_deref() {
        Some("apply") => {
            // FOLD_BENCH_REPEAT: fold that many times (for a sampling profiler).
            let repeat: usize = std::env::var("FOLD_BENCH_REPEAT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            for _ in 0..repeat {
                black_box(phase_apply(&events).applied);
            }
            return;
        }
        Some("decode") => {
            black_box(phase_decode(&bytes));
            return;
        }
        Some("ingest") => {
            let arrivals = in_order(&events);
            black_box(phase_ingest(&arrivals).state().applied);
            return;
        }
        Some("late") => {
            let arrivals = late_arrivals(&in_order(&events));
            black_box(phase_ingest(&arrivals).state().applied);
            return;
        }
        _ => {}
    }
    eprintln!("generated {n} events in {gen:.1?}");

    println!(
        "| measure | events | time | rate | per event | rate (CPU time) | per event (CPU time) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");

    let t = best(3, || phase_floor(&events));
    row("read key + kind only (floor)", n, &t);

    let t = best(3, || phase_apply(&events));
    row("apply (pre-decoded)", n, &t);
    let folded = t.out;

    let t = best(2, || phase_decode(&bytes));
    row("decode + apply (from bytes)", n, &t);

    // Replica, arrival = total order.
    let in_order = in_order(&events);
    drop(events);
    let t = best(1, || phase_ingest(&in_order));
    assert_eq!(t.out.state(), &folded);
    row("Replica::ingest, in order", n, &t);
    drop(t);

    let late = late_arrivals(&in_order);
    drop(in_order);
    let t = best(1, || phase_ingest(&late));
    assert!(t.out.is_exact());
    assert_eq!(t.out.state().hash(), folded.hash());
    row("Replica::ingest, 1% late by 1..=100", n, &t);
    let stats = t.out.stats();
    drop(t);
    drop(late);

    // Snapshot cost of the final state.
    let key = [7u8; 32];
    let enc = best(3, || encode_state(&folded, &key));
    let (d_enc, snap) = (enc.wall, enc.out);
    let dec = best(3, || decode_state(&snap, &key));
    let d_dec = dec.wall;
    assert!(dec.out.is_ok_and(|s| s == folded));
    let d_hash = best(3, || folded.hash()).wall;
    println!();
    println!(
        "1% late: {} late events, {} refolded, {} rebuilds.",
        stats.late, stats.refolded, stats.rebuilds
    );
    println!(
        "State after {n} events ({} ignored): {} capsules, {} nodes, {} images; snapshot \
         {:.1} MiB, encode {:.1} ms, decode {:.1} ms, State::hash {:.1} ms.",
        folded.ignored,
        folded.capsules.len(),
        folded.nodes.len(),
        folded.images.len(),
        snap.len() as f64 / (1 << 20) as f64,
        d_enc.as_secs_f64() * 1e3,
        d_dec.as_secs_f64() * 1e3,
        d_hash.as_secs_f64() * 1e3,
    );
}
