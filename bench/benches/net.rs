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
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bolt_capsule::net::Netns;

const IMAGE: &str = "bench/busybox:latest";
const PUBLISHED: u16 = 15201;
const SINK: u16 = 5001;

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("net bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn sh(cmd: &mut Command) -> Result<(), String> {
    let st = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {st}"))
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        println!("net bench skipped: needs root");
        return Ok(());
    }
    for (tool, arg) in [
        ("hyperfine", "--version"),
        ("ip", "-V"),
        ("nft", "--version"),
        ("nsenter", "--version"),
    ] {
        if !have(tool, arg) {
            println!("net bench skipped: {tool} is not installed");
            return Ok(());
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("bolt-bench-net-")
        .tempdir_in("/var/tmp")
        .map_err(|e| e.to_string())?;
    let dir = tmp.path();
    build_lower(&dir.join("lower"))?;
    write_oci_layout(&dir.join("lower"), &dir.join("oci"))?;
    let ns = NamedNetns::new(&format!("bolt-bench-net-{}", std::process::id()))?;
    let agent = Agent::start(dir, &ns)?;
    let out_dir = bolt_bench::target_dir().join("bolt-bench");
    fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;

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
    let cmd = |net: &str| {
        format!(
            "{} --socket {} run --rm --network {net} {IMAGE} /bin/true",
            agent.bin.display(),
            agent.socket.display()
        )
    };
    let runs = env_num("NET_BENCH_RUNS", 40).to_string();
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

/// The `"mean"` values of a hyperfine JSON export, in order (seconds).
fn hyperfine_means(json: &str) -> Vec<f64> {
    json.split("\"mean\":")
        .skip(1)
        .filter_map(|rest| {
            let end = rest.find([',', '}'])?;
            rest[..end].trim().parse().ok()
        })
        .collect()
}

/// Part 2: the same sink reached through the published port and directly.
fn throughput(agent: &Agent, ns: &NamedNetns, out_dir: &Path) -> Result<(), String> {
    let bytes = env_num("NET_BENCH_BYTES", 1 << 30);
    let rounds = env_num("NET_BENCH_ROUNDS", 5).max(1);
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
    let ip = agent.capsule_ip("sink", "bridge")?;
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
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

/// A `bolt agent` inside the namespace, with the busybox tree imported as [`IMAGE`].
/// Its capsules are removed and it is stopped (SIGTERM) by [`Agent::stop`] or on drop.
struct Agent {
    bin: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

impl Agent {
    fn start(dir: &Path, ns: &NamedNetns) -> Result<Agent, String> {
        let bin = bolt_bench::bolt_binary()?;
        let socket = dir.join("bolt.sock");
        let log = fs::File::create(dir.join("agent.log")).map_err(|e| e.to_string())?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg(&bin)
            .arg("--socket")
            .arg(&socket)
            .arg("agent")
            .arg("--root")
            .arg(dir.join("bolt-root"))
            .arg("--registry-auth")
            .arg(dir.join("no-registry-auth.json"))
            .env_remove("BOLT_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let agent = Agent {
            bin,
            socket,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !agent.bolt(&["info"]).is_ok_and(|o| o.status.success()) {
            if Instant::now() > deadline {
                return Err("the bolt agent did not answer within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let oci = dir.join("oci").display().to_string();
        agent.check(&["image", "import", "-q", &oci, "--reference", IMAGE])?;
        Ok(agent)
    }

    fn bolt(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    fn check(&self, args: &[&str]) -> Result<String, String> {
        let out = self.bolt(args).map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "bolt {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The capsule's address on `network`, from `bolt inspect --format json`.
    fn capsule_ip(&self, capsule: &str, network: &str) -> Result<Ipv4Addr, String> {
        let json = self.check(&["inspect", "--format", "json", capsule])?;
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

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(ids) = self.check(&["ps", "-a", "-q"]) {
                for id in ids.split_whitespace() {
                    let _ = self.check(&["rm", "-f", id]);
                }
            }
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The busybox lower directory: /bin/busybox plus its applet links.
fn build_lower(lower: &Path) -> Result<(), String> {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(lower.join(d)).map_err(|e| e.to_string())?;
    }
    fs::copy("/bin/busybox", lower.join("bin/busybox")).map_err(|e| format!("busybox: {e}"))?;
    sh(Command::new("/bin/busybox")
        .arg("--install")
        .arg("-s")
        .arg(lower.join("bin")))?;
    // The links point at busybox's real path (/usr/bin/busybox on merged-/usr hosts).
    let target = fs::read_link(lower.join("bin/sh")).map_err(|e| e.to_string())?;
    let inside = lower.join(target.strip_prefix("/").unwrap_or(&target));
    if !inside.exists() {
        if let Some(parent) = inside.parent() {
            fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        fs::copy("/bin/busybox", &inside).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `sha256:HEX` and size of a file.
fn digest(path: &Path) -> Result<(String, u64), String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or("").to_owned();
    if !out.status.success() || hex.len() != 64 {
        return Err(format!("sha256sum {}: {text}", path.display()));
    }
    let size = fs::metadata(path).map_err(|e| e.to_string())?.len();
    Ok((format!("sha256:{hex}"), size))
}

/// An OCI image layout of `tree` (one uncompressed layer, `Cmd ["/bin/sh"]`) in `out`.
fn write_oci_layout(tree: &Path, out: &Path) -> Result<(), String> {
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(|e| e.to_string())?;
    let layer = out.join("layer.tar");
    sh(Command::new("tar")
        .arg("--numeric-owner")
        .arg("-C")
        .arg(tree)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let (layer_digest, layer_size) = digest(&layer)?;
    let put = |digest: &str, path: &Path| -> Result<(), String> {
        let hex = digest.trim_start_matches("sha256:");
        fs::rename(path, blobs.join(hex)).map_err(|e| e.to_string())
    };
    put(&layer_digest, &layer)?;
    let write_blob = |name: &str, text: String| -> Result<(String, u64), String> {
        let p = out.join(name);
        fs::write(&p, text).map_err(|e| e.to_string())?;
        let d = digest(&p)?;
        put(&d.0, &p)?;
        Ok(d)
    };
    let (config_digest, config_size) = write_blob(
        "config.json",
        format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
        ),
    )?;
    let (manifest_digest, manifest_size) = write_blob(
        "manifest.json",
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{layer_size}}}]}}"#
        ),
    )?;
    fs::write(
        out.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}]}}"#
        ),
    )
    .map_err(|e| e.to_string())?;
    fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| e.to_string())
}
