//! The mesh between real agents: N `bolt agent`s, each in a network namespace of its own on one
//! bridge (`bolt_tests::Cluster`), joined with tokens over QUIC with mutual TLS.
//!
//! `cargo bench -p bolt-bench --bench cluster` (as root; needs iproute2, nftables, `nsenter`).
//! The `bolt` binary is `$BOLT_BIN` or `cargo build --release -p bolt-agent`. Knobs:
//! `CLUSTER_BENCH_EVENTS` (200), `CLUSTER_BENCH_PACE_MS` (25), `CLUSTER_BENCH_CATCHUP`
//! (`1000,10000`: events a node misses while it is down).
//!
//! 1. **Propagation**, 5 nodes. Every node runs `bolt events --follow --format json` (a
//!    process of its own; a thread of this bench reads its stdout line by line and records the
//!    `Instant` each line arrives). Node 0 gets `CLUSTER_BENCH_EVENTS` `bolt volume create
//!    pv-NNNNNN` CLI calls, one every `CLUSTER_BENCH_PACE_MS`. Per event: the CLI call's
//!    duration; issue → node 0's own follower saw it (CLI + append + the event stream);
//!    node 0's follower → the last of the other 4 followers saw it (the mesh: push, QUIC,
//!    verify, append, stream). Goal: that last one's p99 < 50 ms.
//! 2. **Catch-up**, 2 nodes A and B. B is stopped (SIGTERM), A gets N events through the API
//!    (8 concurrent `POST /v1/volumes` on one `Client`), B is started again; the time from B
//!    answering its API until its follower printed A's last event, and B's
//!    `bolt_mesh_bytes_total{dir="received"}` over that time, give events/s and MB/s.
//!
//! The tables are printed and kept in `target/bolt-bench/cluster-propagation.md` and
//! `cluster-catchup.md`.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ExitCode};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bolt_agent::client::Client;
use bolt_agent::wire::volumes::{CreateVolumeRequest, PATH_VOLUMES};
use bolt_bench::{bolt_binary, can_run, env_u64, exit_code, out_dir, print_table};
use bolt_tests::Cluster;
use hyper::Method;
use serde_json::Value;

const PORT: u16 = 7946;
/// Bound on every wait (a guard against hanging, not a measurement).
const PATIENCE: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    if !can_run("cluster", &[("ip", "-V"), ("nft", "-v"), ("nsenter", "-V")]) {
        return ExitCode::SUCCESS;
    }
    exit_code("cluster", run())
}

fn run() -> Result<(), String> {
    let bin = bolt_binary()?;
    // `bolt_tests` finds the binary through `BOLT_BIN`; nothing else runs yet.
    std::env::set_var("BOLT_BIN", &bin);
    println!("bolt: {}", bin.display());
    println!("load average before: {}", loadavg());
    let out = out_dir()?;

    let events = env_u64("CLUSTER_BENCH_EVENTS", 200) as usize;
    let pace = Duration::from_millis(env_u64("CLUSTER_BENCH_PACE_MS", 25));
    let md = out.join("cluster-propagation.md");
    fs::write(&md, propagation(5, events, pace)?).map_err(|e| e.to_string())?;
    print_table(&md)?;
    println!("load average: {}", loadavg());

    let sizes: Vec<usize> = std::env::var("CLUSTER_BENCH_CATCHUP")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().replace('_', "").parse().ok())
        .collect();
    let md = out.join("cluster-catchup.md");
    fs::write(&md, catchup(&sizes)?).map_err(|e| e.to_string())?;
    print_table(&md)?;
    println!("load average after: {}", loadavg());
    Ok(())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn listen(c: &Cluster, i: usize) -> String {
    c.node(i).listen_addr(PORT).to_string()
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Node 0 makes the cluster; every other node joins it with a token of its own.
fn form(dir: &Path, n: usize) -> Result<Cluster, String> {
    let mut c = Cluster::new(dir, n).map_err(err)?;
    let first = vec!["--listen".to_owned(), listen(&c, 0)];
    c.start_node(0, first).map_err(err)?;
    c.node(0).node.ok(&["cluster", "init", "--name", "bench"]);
    for i in 1..n {
        let token = c.node(0).node.ok(&["cluster", "token", "--ttl", "10m"]);
        let args = vec![
            "--listen".to_owned(),
            listen(&c, i),
            "--join".to_owned(),
            listen(&c, 0),
            "--token".to_owned(),
            token.stdout.trim().to_owned(),
        ];
        c.start_node(i, args).map_err(err)?;
    }
    // Every node knows every node (and so has an address to dial).
    wait(
        || {
            (0..n).all(|i| {
                c.node(i)
                    .node
                    .bolt(&["node", "ls", "--format", "json"])
                    .map(|o| o.stdout.matches("\"id\"").count() == n)
                    .unwrap_or(false)
            })
        },
        "every node lists every node",
    )?;
    Ok(c)
}

/// Node `i`'s log head (`bolt info`).
fn head(c: &Cluster, i: usize) -> Result<u64, String> {
    let out = c.node(i).node.ok(&["info", "--format", "json"]);
    let v: Value = serde_json::from_str(&out.stdout).map_err(err)?;
    v["head"]
        .as_u64()
        .ok_or_else(|| format!("no head in {}", out.stdout))
}

fn wait(cond: impl Fn() -> bool, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out: {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// One event as a follower printed it, and when this process read the line.
#[derive(Debug, Clone)]
struct Seen {
    origin: String,
    seq: u64,
    /// The `pv-NNNNNN` / `cu-NNNNNN` name in the payload, if any.
    name: Option<String>,
    at: Instant,
}

/// A `bolt events --follow --format json` process and the thread reading it.
struct Follower {
    child: Child,
    reader: Option<JoinHandle<()>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Follower {
    /// Follows node `i` from `since` (default: its head now).
    fn start(c: &Cluster, i: usize, since: Option<u64>) -> Result<Follower, String> {
        let node = &c.node(i).node;
        let since = match since {
            Some(s) => s,
            None => head(c, i)?,
        }
        .to_string();
        let mut child = node
            .spawn_bolt(&["events", "--follow", "--format", "json", "--since", &since])
            .map_err(err)?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let payload = v["payload"].to_string();
                let name = ["\"pv-", "\"cu-"].iter().find_map(|p| {
                    let start = payload.find(p)? + 1;
                    Some(payload[start..start + 9].to_owned())
                });
                sink.lock().unwrap().push(Seen {
                    origin: v["origin"].as_str().unwrap_or_default().to_owned(),
                    seq: v["seq"].as_u64().unwrap_or(0),
                    name,
                    at,
                });
            }
        });
        Ok(Follower {
            child,
            reader: Some(reader),
            seen,
        })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// When this follower read the event named `name`.
    fn arrivals(&self) -> HashMap<String, Instant> {
        self.seen()
            .into_iter()
            .filter_map(|s| Some((s.name?, s.at)))
            .collect()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn row(what: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "| {what} | {} | {} | {} | {} |\n",
        v.len(),
        ms(pct(&v, 0.5)),
        ms(pct(&v, 0.99)),
        ms(v.last().copied().unwrap_or_default()),
    )
}

fn propagation(n: usize, events: usize, pace: Duration) -> Result<String, String> {
    let dir = bolt_bench::bench_tempdir("cluster")?;
    let c = form(dir.path(), n)?;
    let followers: Vec<Follower> = (0..n)
        .map(|i| Follower::start(&c, i, None))
        .collect::<Result<_, _>>()?;
    // Warm-up: links dialed, every follower streaming.
    for k in 0..5 {
        c.node(0)
            .node
            .ok(&["volume", "create", &format!("pv-w{k:05}")]);
    }
    wait(
        || {
            followers
                .iter()
                .all(|f| f.arrivals().contains_key("pv-w00004"))
        },
        "warm-up events on every node",
    )?;
    std::thread::sleep(Duration::from_secs(1));

    let load_before = loadavg();
    let mut issued = Vec::with_capacity(events);
    let mut cli = Vec::with_capacity(events);
    let start = Instant::now();
    for k in 0..events {
        let due = start + pace * k as u32;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let name = format!("pv-{k:06}");
        let t = Instant::now();
        c.node(0).node.ok(&["volume", "create", &name]);
        cli.push(t.elapsed());
        issued.push((name, t));
    }
    let wall = start.elapsed();
    let last = issued.last().map(|(n, _)| n.clone()).unwrap_or_default();
    let all_seen = wait(
        || followers.iter().all(|f| f.arrivals().contains_key(&last)),
        "the last event on every node",
    );
    // Stragglers (a reordered earlier event) get a moment more.
    std::thread::sleep(Duration::from_millis(500));
    let load_after = loadavg();
    let arrivals: Vec<HashMap<String, Instant>> =
        followers.iter().map(Follower::arrivals).collect();

    let (mut own, mut mesh, mut total) = (Vec::new(), Vec::new(), Vec::new());
    let mut per_node: Vec<Vec<Duration>> = vec![Vec::new(); n];
    let mut missing = 0;
    for (name, t) in &issued {
        let Some(&at0) = arrivals[0].get(name) else {
            missing += 1;
            continue;
        };
        own.push(at0 - *t);
        let others: Vec<Option<&Instant>> = arrivals[1..].iter().map(|a| a.get(name)).collect();
        if others.iter().any(Option::is_none) {
            missing += 1;
            continue;
        }
        let mut last_at = at0;
        for (i, at) in others.iter().enumerate() {
            let at = *at.unwrap();
            per_node[i + 1].push(at.saturating_duration_since(at0));
            last_at = last_at.max(at);
        }
        mesh.push(last_at - at0);
        total.push(last_at - *t);
    }
    drop(followers);

    let mut md = String::new();
    writeln!(
        md,
        "{n} nodes (netns + bridge, QUIC/mTLS), {events} `bolt volume create` on node 0, one every {} ms \
         ({:.1} s, {:.0} events/s offered); load average {load_before} before, {load_after} after{}{}\n",
        pace.as_millis(),
        wall.as_secs_f64(),
        events as f64 / wall.as_secs_f64(),
        if missing > 0 { format!("; **{missing} events not seen everywhere**") } else { String::new() },
        if all_seen.is_err() { "; timed out waiting" } else { "" },
    )
    .map_err(err)?;
    md.push_str("| per event | n | p50 | p99 | max |\n|:---|---:|---:|---:|---:|\n");
    md.push_str(&row(
        "`bolt volume create` CLI call (process, request, durable append)",
        cli,
    ));
    md.push_str(&row("issue → node 0's own follower", own));
    md.push_str(&row(
        "**node 0's follower → last of the other 4 followers**",
        mesh,
    ));
    md.push_str(&row("issue → last of the other 4 followers", total));
    for (i, v) in per_node.into_iter().enumerate().skip(1) {
        md.push_str(&row(&format!("node 0's follower → node {i}'s follower"), v));
    }
    Ok(md)
}

/// `bolt_mesh_bytes_total{dir="received"}` of a node (0 when absent).
fn received_bytes(rt: &tokio::runtime::Runtime, client: &Client) -> u64 {
    let Ok((_, body)) = rt.block_on(client.get("/metrics")) else {
        return 0;
    };
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("bolt_mesh_bytes_total") && l.contains("received"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Makes `count` volumes `cu-PNNNNN` on the agent through the API, 8 requests at a time.
fn create_many(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    prefix: usize,
    count: usize,
) -> Result<(), String> {
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let lanes = 8;
        for lane in 0..lanes {
            let client = Client::new(client.socket());
            tasks.spawn(async move {
                for k in (lane..count).step_by(lanes) {
                    let req = CreateVolumeRequest {
                        name: format!("cu-{prefix}{k:05}"),
                        labels: Default::default(),
                    };
                    client
                        .json::<_, Value>(Method::POST, PATH_VOLUMES, Some(&req))
                        .await
                        .map_err(err)?;
                }
                Ok::<(), String>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(err)??;
        }
        Ok(())
    })
}

fn catchup(sizes: &[usize]) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(err)?;
    let dir = bolt_bench::bench_tempdir("cluster")?;
    let mut c = form(dir.path(), 2)?;
    let a = Client::new(c.node(0).node.socket());
    let a_id = {
        let info = rt.block_on(a.info()).map_err(err)?;
        info.node_id.to_string()
    };
    let mut md = String::from(
        "| events missed | written on A | A writes/s | B start → answering | answering → first missed event | first → last missed event | events/s (first → last) | bytes B received | MB/s (first → last) | answering → caught up | load |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for (round, &n) in sizes.iter().enumerate() {
        if n > 99_999 {
            return Err("CLUSTER_BENCH_CATCHUP: at most 99999 per round".into());
        }
        let b_head = head(&c, 1)?;
        c.stop(1).map_err(err)?;
        let t = Instant::now();
        create_many(&rt, &a, round, n)?;
        let write = t.elapsed();
        // A's own last event (its head is one of its own: nothing else writes to A now).
        let head = rt.block_on(a.info()).map_err(err)?.head;
        let last = rt
            .block_on(a.events(bolt_events::Cursor(head.saturating_sub(1)), 1))
            .map_err(err)?;
        let target = last
            .iter()
            .find(|e| e.origin.to_string() == a_id)
            .map(|e| e.seq)
            .ok_or("A's head is not A's own event")?;

        let t0 = Instant::now();
        c.restart(1).map_err(err)?;
        let ready = Instant::now();
        // From B's head before it stopped: nothing it stores after its start is missed.
        let follower = Follower::start(&c, 1, Some(b_head))?;
        let b = Client::new(c.node(1).node.socket());
        let done = wait(
            || {
                follower
                    .seen()
                    .iter()
                    .any(|s| s.origin == a_id && s.seq >= target)
            },
            "B caught up",
        );
        let seen = follower.seen();
        let end = seen
            .iter()
            .find(|s| s.origin == a_id && s.seq >= target)
            .map(|s| s.at);
        let prefix = format!("cu-{round}");
        let first = seen
            .iter()
            .find(|s| s.name.as_deref().is_some_and(|m| m.starts_with(&prefix)))
            .map(|s| s.at);
        let bytes = received_bytes(&rt, &b);
        drop(follower);
        done?;
        let end = end.ok_or("no end")?;
        let first = first.ok_or("no first missed event")?;
        let catch = end.saturating_duration_since(ready);
        let transfer = end
            .saturating_duration_since(first)
            .max(Duration::from_micros(1));
        writeln!(
            md,
            "| {n} | {:.2} s | {:.0} | {} | {} | {} | {:.0} | {:.1} MB | {:.1} | {} | {} |",
            write.as_secs_f64(),
            n as f64 / write.as_secs_f64(),
            ms(ready - t0),
            ms(first.saturating_duration_since(ready)),
            ms(transfer),
            n as f64 / transfer.as_secs_f64(),
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / transfer.as_secs_f64(),
            ms(catch),
            loadavg(),
        )
        .map_err(err)?;
    }
    Ok(md)
}
