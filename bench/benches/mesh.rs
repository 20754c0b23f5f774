//! Replication at scale, in the deterministic simulation (`bolt_fabric::sim`): N nodes over a
//! simulated network with latency, jitter, loss and churn, real envelopes and real frames, no
//! sockets. Reports the time for an event to reach every node (p50/p99/max) and the bytes each
//! node sends per event, as a markdown table.
//!
//! `cargo bench -p bolt-bench --bench mesh`; `MESH_NODES=100,1000` picks the sizes,
//! `MESH_EVENTS=N` the events per writer (10 writers).
//!
//! The network: 10 ms one-way latency plus 0–20 ms jitter, 1% loss; churn: 2% of the nodes go
//! down for 2 s during the writes and come back (they catch up by anti-entropy). Signatures are
//! not checked in the simulation (the agent's log always checks them; `--bench log` measures
//! that cost); everything else (decode, chain, reorder buffer) runs as in the agent.

use std::time::{Duration, Instant};

use bolt_fabric::replicate::ReplicationConfig;
use bolt_fabric::sim::{NetConfig, Sim};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let sizes = env_list("MESH_NODES", &[100, 1000]);
    let per_writer = env_list("MESH_EVENTS", &[20])[0];
    println!("| nodes | events | churn | p50 to all | p99 to all | max to all | p99 per node | bytes/node/event | frames | converged | wall |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for &n in &sizes {
        for churn in [false, true] {
            let started = Instant::now();
            let mut sim = Sim::new(n, ReplicationConfig::default(), NetConfig::default(), 42);
            let writers: Vec<usize> = (0..10).map(|w| w * n / 10).collect();
            let churned: Vec<usize> = if churn {
                (0..n / 50).map(|k| 1 + k * 50 % n).collect()
            } else {
                Vec::new()
            };
            for round in 0..per_writer {
                if round == per_writer / 4 {
                    for &c in &churned {
                        sim.set_down(c, true);
                    }
                }
                for &w in &writers {
                    sim.append(w, 1, 256);
                }
                let next = sim.now() + Duration::from_millis(100);
                sim.run_until(next);
                if round == per_writer / 4 + 20 {
                    for &c in &churned {
                        sim.set_down(c, false);
                    }
                }
            }
            for &c in &churned {
                sim.set_down(c, false);
            }
            let limit = sim.now() + Duration::from_secs(60);
            let converged = sim.run_to_convergence(Duration::from_millis(100), limit);
            let r = sim.report();
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {:.1} s |",
                r.nodes,
                r.events,
                if churn { "2%, 2 s" } else { "none" },
                ms(r.to_all_p50),
                ms(r.to_all_p99),
                ms(r.to_all_max),
                ms(r.per_node_p99),
                r.bytes_per_node_per_event,
                r.frames,
                converged,
                started.elapsed().as_secs_f64()
            );
        }
    }
}
