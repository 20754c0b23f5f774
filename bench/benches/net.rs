//! Bridge networking costs: the start overhead of `--network bridge` over `--network none`,
//! and TCP throughput through a published port beside the capsule's address directly.
//!
//! `cargo bench -p bolt-bench --bench net` (as root). Needs hyperfine, iproute2 (`ip netns`),
//! nftables, `nsenter` and busybox-static. The `bolt` binary is `$BOLT_BIN` or
//! `cargo build --release -p bolt-agent`.
//!
//! Everything runs inside a network namespace the bench makes (`ip netns add
//! bolt-bench-net-PID`, deleted at the end): the agent runs in it under `nsenter`, so its
//! bridge, veths and `table ip bolt` live there, and all traffic stays on that namespace's
//! 127.0.0.1 and bridge. The image is the host's busybox tree imported as an OCI layout (as
//! the `run` bench does).
//!
//! 1. **Start overhead.** One hyperfine run, side by side: `bolt run --rm --network none
//!    IMAGE /bin/true` and the same with `--network bridge` (the default network, made before
//!    the measurement). The difference of the means is the cost of an address event, a
//!    namespace, the veth pair, the capsule side (`lo`, address, route), the `/etc` files and,
//!    on removal, the release event and the veth's deletion. Goal: ≤ 10 ms.
//! 2. **Throughput.** One capsule on `bridge` publishes `127.0.0.1:15201 -> 5001`; it runs
//!    `nc -ll -p 5001 -e dd of=/dev/null bs=1M` (busybox: a new `dd` per connection). A client
//!    thread of this process, inside the namespace, writes `NET_BENCH_BYTES` (1 GiB) in 1 MiB
//!    writes, shuts its side down and waits for the server to close, once through
//!    `127.0.0.1:15201` (DNAT in `output`, masquerade to the gateway address, bridge, veth)
//!    and once to `CAPSULE_IP:5001` (bridge, veth; no NAT), alternating, `NET_BENCH_ROUNDS`
//!    (5) rounds. Reported: median MB/s of each path and their ratio. Goal: published within
//!    10% of direct. The sink is busybox `dd`, the same for both paths.
//!
//! The tables are printed and kept in `target/bolt-bench/net-start.md` and `net-tcp.md`.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use bolt_bench::{build_lower, env_u64, hyperfine_means, median, sh, Agent, BENCH_IMAGE as IMAGE};
use bolt_capsule::net::Netns;

const PUBLISHED: u16 = 15201;
const SINK: u16 = 5001;

fn main() -> ExitCode {
    bolt_bench::exit_code("net", bench())
}

fn bench() -> Result<(), String> {
    if !bolt_bench::can_run(
        "net",
        &[
            ("hyperfine", "--version"),
            ("ip", "-V"),
            ("nft", "--version"),
            ("nsenter", "--version"),
        ],
    ) {
        return Ok(());
    }
    let tmp = bolt_bench::bench_tempdir("net")?;
    let dir = tmp.path();
    build_lower(&dir.join("lower"))?;
    let ns = NamedNetns::new(&format!("bolt-bench-net-{}", std::process::id()))?;
    let agent = Agent::start(dir, Some(&ns.path()))?;
    let out_dir = bolt_bench::out_dir()?;

    let result = (|| -> Result<(), String> {
        start_overhead(&agent, &out_dir)?;
        throughput(&agent, &ns, &out_dir)
    })();
    agent.stop();
    drop(ns);
    result
}

/// Part 1: hyperfine, `--network none` beside `--network bridge`.
fn start_overhead(agent: &Agent, out_dir: &Path) -> Result<(), String> {
    // The default network and the paths warm before the measurement.
    for net in ["none", "bridge"] {
        agent.check(&["run", "--rm", "--network", net, IMAGE, "/bin/true"])?;
    }
    let cmd =
        |net: &str| agent.command_line(&format!("run --rm --network {net} {IMAGE} /bin/true"));
    let runs = env_u64("NET_BENCH_RUNS", 40).to_string();
    // Back to back (the next start overlaps the previous capsule's teardown), then with a
    // pause before each run (not measured) so that every start finds an idle agent.
    for (label, prepare) in [("back to back", None), ("paused", Some("sleep 0.3"))] {
        let md = out_dir.join(format!("net-start-{}.md", label.replace(' ', "-")));
        let json = md.with_extension("json");
        let mut hf = Command::new("hyperfine");
        hf.args(["-N", "--runs", &runs, "--warmup", "3", "--export-markdown"])
            .arg(&md)
            .arg("--export-json")
            .arg(&json);
        if let Some(p) = prepare {
            hf.args(["--prepare", p]);
        }
        sh(hf.args(["-n", "none", &cmd("none"), "-n", "bridge", &cmd("bridge")]))?;
        let table = fs::read_to_string(&md).map_err(|e| e.to_string())?;
        println!("\n{label}:\n{table}");
        let text = fs::read_to_string(&json).map_err(|e| e.to_string())?;
        if let [none, bridge] = hyperfine_means(&text)[..] {
            let diff = (bridge - none) * 1e3;
            println!(
                "{label}: bridge - none = {diff:.1} ms (goal <= 10 ms: {})",
                if diff <= 10.0 { "met" } else { "missed" }
            );
        }
        println!("(kept in {})", md.display());
    }
    Ok(())
}

/// Part 2: the same sink reached through the published port and directly.
fn throughput(agent: &Agent, ns: &NamedNetns, out_dir: &Path) -> Result<(), String> {
    let bytes = env_u64("NET_BENCH_BYTES", 1 << 30);
    let rounds = env_u64("NET_BENCH_ROUNDS", 5).max(1);
    let publish = format!("127.0.0.1:{PUBLISHED}:{SINK}");
    let sink_port = SINK.to_string();
    agent.check(&[
        "run",
        "-d",
        "--name",
        "sink",
        "--network",
        "bridge",
        "-p",
        &publish,
        IMAGE,
        "nc",
        "-ll",
        "-p",
        &sink_port,
        "-e",
        "dd",
        "of=/dev/null",
        "bs=1M",
    ])?;
    let ip = capsule_ip(agent, "sink", "bridge")?;
    let paths = [
        (
            "published 127.0.0.1 (DNAT)",
            SocketAddr::from((Ipv4Addr::LOCALHOST, PUBLISHED)),
        ),
        ("capsule address directly", SocketAddr::from((ip, SINK))),
    ];
    let netns = Netns::open(&ns.path()).map_err(|e| e.to_string())?;
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    // One warm-up round, not counted, then alternate so that load changes hit both paths.
    for round in 0..=rounds {
        for (i, (_, addr)) in paths.iter().enumerate() {
            let addr = *addr;
            let secs = netns
                .run(move || send(addr, bytes))
                .map_err(|e| e.to_string())??;
            if round > 0 {
                results[i].push(bytes as f64 / secs / 1e6);
            }
        }
    }
    agent.check(&["rm", "-f", "sink"])?;
    let medians: Vec<f64> = results.iter_mut().map(|r| median(r)).collect();
    let mut table = String::from("| path | median MB/s | min | max |\n|:---|---:|---:|---:|\n");
    for ((name, _), r) in paths.iter().zip(&results) {
        let lo = r.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = r.iter().cloned().fold(0.0, f64::max);
        table.push_str(&format!(
            "| {name} | {:.0} | {lo:.0} | {hi:.0} |\n",
            median(&mut r.clone())
        ));
    }
    let ratio = medians[0] / medians[1];
    table.push_str(&format!(
        "\n{} rounds of {} MiB per path; published / direct = {ratio:.3} (goal >= 0.90: {})\n",
        rounds,
        bytes >> 20,
        if ratio >= 0.9 { "met" } else { "missed" }
    ));
    println!("\n{table}");
    let md = out_dir.join("net-tcp.md");
    fs::write(&md, &table).map_err(|e| e.to_string())?;
    println!("(kept in {})", md.display());
    Ok(())
}

/// Connects (retrying while the sink starts), writes `bytes` in 1 MiB writes, shuts the
/// write side and waits for the server to close: seconds from connect to that close.
fn send(addr: SocketAddr, bytes: u64) -> Result<f64, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(format!("connect {addr}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let buf = vec![0x5au8; 1 << 20];
    let t0 = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        stream
            .write_all(&buf[..n])
            .map_err(|e| format!("write to {addr}: {e}"))?;
        left -= n as u64;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown {addr}: {e}"))?;
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    Ok(t0.elapsed().as_secs_f64())
}

/// `ip netns add NAME` with `lo` up; `ip netns del` on drop.
struct NamedNetns {
    name: String,
}

impl NamedNetns {
    fn new(name: &str) -> Result<NamedNetns, String> {
        sh(Command::new("ip").args(["netns", "add", name]))?;
        let ns = NamedNetns {
            name: name.to_owned(),
        };
        sh(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The capsule's address on `network`, from `bolt inspect --format json`.
fn capsule_ip(agent: &Agent, capsule: &str, network: &str) -> Result<Ipv4Addr, String> {
    let json = agent.check(&["inspect", "--format", "json", capsule])?;
    let missing = || format!("no address on {network}: {json}");
    // `"addresses": {"NETWORK": "IP"}`, pretty-printed or not.
    let key = format!("\"{network}\"");
    let addresses = json.find("\"addresses\"").ok_or_else(missing)?;
    let at = json[addresses..].find(&key).ok_or_else(missing)? + addresses + key.len();
    json[at..]
        .split('"')
        .nth(1)
        .ok_or_else(missing)?
        .parse()
        .map_err(|e| format!("address of {capsule}: {e}"))
}
