//! A multi-node harness: N real `bolt agent`s, each in a network namespace of its own, joined
//! by veths to one bridge, with the topology and the faults (partitions, a line topology,
//! `kill -9`) a test decides.
//!
//! **Topology.** [`Cluster::new`] makes one *switch* namespace holding a bridge, and per node a
//! namespace with one veth whose peer end is a port of that bridge. Every link is created
//! inside those namespaces (`ip -n SW link add P type veth peer name N netns NODE`), so the
//! machine's own namespace never sees any of them, and removing the namespaces removes every
//! link, address and rule with them. Node `i` has the address `10.X.Y.(i+1)/24` on its veth;
//! `X.Y` is derived from this process and a per-process counter, so two clusters are unlikely
//! to share a subnet (they could not see each other anyway: nothing of a cluster is in the
//! machine's namespace). Loopback is up in every namespace.
//!
//! **Names.** Each cluster has a tag, 8 hex digits (`PID` in 6, a per-process counter in 2).
//! Namespaces are `bolt-test-PID-kSEQ-sw` (the switch) and `bolt-test-PID-kSEQ-nI` (node `I`),
//! which `tests/check-leftovers.sh` reports as `bolt-test-*`; links are `bcTAGbr` (the bridge),
//! `bcTAGpI` (bridge port of node `I`) and `bcTAGnI` (node `I`'s end), which it reports were
//! they ever found in the machine's namespace.
//!
//! **Agents.** Each node is a [`Node`] (its own root and socket under `dir/nI`) whose agent runs
//! under `nsenter --net=/run/netns/NS` (nsenter execs, so the child's pid is the agent's pid and
//! the agent keeps the machine's mount namespace, as in `tests/tests/network.rs`). The agent
//! gets `--default-network none` and `--registry-auth DIR/no-auth.json` (a file that is not
//! there) unless the test's extra arguments say otherwise. The API socket is a path on the
//! shared filesystem, so [`Node::bolt`] reaches an agent from the test's namespace.
//!
//! **Faults.** Each node namespace has an nftables table `inet boltpart` with a set `blocked`
//! of peer addresses and two rules, input `ip saddr @blocked drop` and output
//! `ip daddr @blocked drop`: [`Cluster::partition`], [`Cluster::isolate_pair`] and their undoing
//! ([`Cluster::heal`], [`Cluster::connect_pair`]) only add and remove set elements, so packets
//! really are dropped (in both directions, established flows included). [`Cluster::kill9`]
//! sends SIGKILL to one agent by pid; [`Cluster::restart`] starts it again on the same root.
//!
//! **Cleanup.** Dropping the [`Cluster`] (also while a failed test unwinds, and when
//! [`Cluster::new`] fails half-way) ends each node (its capsules, then its agent by pid, as
//! [`Node::cleanup`]) and deletes every namespace it made, node namespaces first, so the veths,
//! the bridge and the nft tables go with them. A test process killed outright leaves them;
//! `tests/check-leftovers.sh` reports them.
//!
//! ```no_run
//! # fn main() -> Result<(), bolt_tests::HarnessError> {
//! let dir = tempfile::tempdir().map_err(|e| bolt_tests::HarnessError::Cluster(e.to_string()))?;
//! let mut c = bolt_tests::Cluster::new(dir.path(), 3)?;
//! let seed = c.node(0).listen_addr(7946);
//! c.start_all(|i, n| {
//!     let mut args = vec!["--listen".to_string(), n.listen_addr(7946).to_string()];
//!     if i > 0 {
//!         args.extend(["--join".to_string(), seed.to_string()]);
//!     }
//!     args
//! })?;
//! c.partition(&[0], &[1, 2])?; // node 0 cannot reach 1 or 2, and they cannot reach it
//! assert!(!c.reaches(0, 1)? && c.reaches(1, 2)?);
//! c.heal()?;
//! c.kill9(2)?;
//! c.restart(2)?; // same root, socket and arguments
//! # Ok(())
//! # }
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::{HarnessError, Node};

/// Clusters made by this process so far: part of each cluster's tag.
static SEQ: AtomicU32 = AtomicU32::new(0);

/// The nft table (family `inet`) each node namespace holds for fault injection.
pub const PART_TABLE: &str = "boltpart";

/// The most nodes a cluster has (addresses `.1` to `.N` of one /24, names of 15 characters).
pub const MAX_NODES: usize = 99;

/// One node of a [`Cluster`]: its [`Node`] (root, socket, agent), its namespace and its address.
#[derive(Debug)]
pub struct ClusterNode {
    /// The node: `bolt` commands against its agent, its root and log.
    pub node: Node,
    /// The name of the node's network namespace (`/run/netns/NAME`).
    pub netns: String,
    /// The node's address on the cluster bridge (its mesh address).
    pub addr: Ipv4Addr,
    /// The name of the node's veth end inside its namespace.
    pub dev: String,
}

impl ClusterNode {
    /// `addr:port`: what an agent of this node listens on, or what others join.
    pub fn listen_addr(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr, port)
    }

    /// The path of the node's namespace (`/run/netns/NAME`).
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }

    /// Runs `args` inside the node's namespace (`nsenter --net=PATH ARGS...`) and waits for it.
    pub fn exec(&self, args: &[&str]) -> Result<std::process::Output, HarnessError> {
        nsenter_output(&self.netns, args)
    }

    /// Runs `f` on a thread that entered the node's namespace; what it creates there (sockets)
    /// stays in that namespace after the thread ends.
    pub fn in_netns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HarnessError> {
        in_netns(&self.netns, f)
    }
}

/// N agents in N network namespaces on one bridge, and the faults between them. See the module
/// documentation. Everything is removed on drop.
#[derive(Debug)]
pub struct Cluster {
    tag: String,
    switch: Option<String>,
    bridge: String,
    subnet: [u8; 2],
    /// `--registry-auth` of every agent: a file that is not there (no credentials).
    auth: PathBuf,
    nodes: Vec<ClusterNode>,
    /// Every namespace made so far, the switch first: what drop deletes (in reverse).
    netns: Vec<String>,
}

impl Cluster {
    /// `n` nodes under `dir` (node `i` in `dir/nI`), their namespaces, veths and bridge up and
    /// addressed, the fault table in place, no agent started yet ([`Cluster::start_all`]).
    /// Needs root, `ip` and `nft`.
    pub fn new(dir: &Path, n: usize) -> Result<Cluster, HarnessError> {
        if n == 0 || n > MAX_NODES {
            return Err(HarnessError::Cluster(format!(
                "a cluster has 1 to {MAX_NODES} nodes, not {n}"
            )));
        }
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{:06x}{:02x}", pid & 0xff_ffff, seq & 0xff);
        // 10.X.Y.0/24 from the pid and the counter; X stays away from 0 (common defaults).
        let mix = pid.wrapping_mul(0x9e37_79b9) ^ seq.wrapping_mul(0x85eb_ca6b);
        let subnet = [16 + (mix >> 8) as u8 % 224, mix as u8];
        let prefix = format!("bolt-test-{pid}-k{seq}");
        let mut cluster = Cluster {
            bridge: format!("bc{tag}br"),
            tag,
            switch: None,
            subnet,
            auth: dir.join("no-auth.json"),
            nodes: Vec::with_capacity(n),
            netns: Vec::new(),
        };
        // From here on a `?` drops `cluster`, which deletes what was made so far.
        let switch = format!("{prefix}-sw");
        cluster.add_netns(&switch)?;
        cluster.switch = Some(switch.clone());
        ip(&[
            "-n",
            &switch,
            "link",
            "add",
            &cluster.bridge,
            "type",
            "bridge",
        ])?;
        ip(&["-n", &switch, "link", "set", &cluster.bridge, "up"])?;
        for i in 0..n {
            let ns = format!("{prefix}-n{i}");
            cluster.add_netns(&ns)?;
            let port = format!("bc{}p{i}", cluster.tag);
            let dev = format!("bc{}n{i}", cluster.tag);
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", &dev, "netns",
                &ns,
            ])?;
            ip(&[
                "-n",
                &switch,
                "link",
                "set",
                &port,
                "master",
                &cluster.bridge,
                "up",
            ])?;
            let addr = Ipv4Addr::new(10, subnet[0], subnet[1], (i + 1) as u8);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &dev])?;
            ip(&["-n", &ns, "link", "set", &dev, "up"])?;
            nft(&ns, &part_table_script())?;
            let mut node = Node::new(dir, &format!("n{i}"))?;
            let nsenter = format!("--net=/run/netns/{ns}");
            node.set_wrapper(&["nsenter", &nsenter]);
            node.set_agent_args(&[
                "--default-network",
                "none",
                "--registry-auth",
                &cluster.auth.to_string_lossy(),
            ]);
            cluster.nodes.push(ClusterNode {
                node,
                netns: ns,
                addr,
                dev,
            });
        }
        Ok(cluster)
    }

    /// Makes namespace `name` with loopback up, and records it for drop.
    fn add_netns(&mut self, name: &str) -> Result<(), HarnessError> {
        ip(&["netns", "add", name])?;
        self.netns.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// Starts every node's agent (in order, each answering `bolt info` before the next starts)
    /// with `extra_args(i, node)` (such as `--listen ADDR:PORT --join ...`):
    /// [`Cluster::start_node`] for each.
    pub fn start_all(
        &mut self,
        extra_args: impl Fn(usize, &ClusterNode) -> Vec<String>,
    ) -> Result<(), HarnessError> {
        for i in 0..self.nodes.len() {
            let extra = extra_args(i, &self.nodes[i]);
            self.start_node(i, extra)?;
        }
        Ok(())
    }

    /// Starts node `i`'s agent with `--default-network none --registry-auth DIR/no-auth.json`
    /// (each unless `extra` has it) and `extra`, and waits until it answers `bolt info`. The
    /// arguments stay the node's for [`Cluster::restart`].
    pub fn start_node(&mut self, i: usize, extra: Vec<String>) -> Result<(), HarnessError> {
        let mut args: Vec<String> = Vec::new();
        if !extra.iter().any(|a| a.starts_with("--default-network")) {
            args.extend(["--default-network".into(), "none".into()]);
        }
        if !extra.iter().any(|a| a.starts_with("--registry-auth")) {
            args.push("--registry-auth".into());
            args.push(self.auth.to_string_lossy().into_owned());
        }
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let node = &mut self.nodes[i].node;
        node.set_agent_args(&args);
        node.start()
    }

    /// The cluster's tag (8 hex digits): in every link name (`bcTAG...`).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The bridge's name (in the switch namespace).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The switch namespace's name.
    pub fn switch_netns(&self) -> &str {
        self.switch.as_deref().unwrap_or_default()
    }

    /// Every namespace this cluster made (the switch first, then the nodes').
    pub fn netns_names(&self) -> &[String] {
        &self.netns
    }

    /// The cluster's subnet (`10.X.Y.0/24`).
    pub fn subnet(&self) -> String {
        format!("10.{}.{}.0/24", self.subnet[0], self.subnet[1])
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes (never, for a cluster [`Cluster::new`] made).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`. Panics when there is no such node (a test's mistake).
    pub fn node(&self, i: usize) -> &ClusterNode {
        &self.nodes[i]
    }

    /// Node `i`, mutable. Panics when there is no such node.
    pub fn node_mut(&mut self, i: usize) -> &mut ClusterNode {
        &mut self.nodes[i]
    }

    /// All nodes.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// The agents' pids (None for a node whose agent is not running).
    pub fn agent_pids(&self) -> Vec<Option<u32>> {
        self.nodes.iter().map(|n| n.node.pid()).collect()
    }

    /// Drops every packet between a node of `a` and a node of `b`, both directions (node
    /// namespaces' `blocked` sets). Other pairs keep what they had.
    pub fn partition(&self, a: &[usize], b: &[usize]) -> Result<(), HarnessError> {
        for &i in a {
            for &j in b {
                self.isolate_pair(i, j)?;
            }
        }
        Ok(())
    }

    /// Undoes every [`Cluster::partition`] and [`Cluster::isolate_pair`]: all nodes reach all.
    pub fn heal(&self) -> Result<(), HarnessError> {
        for n in &self.nodes {
            nft(&n.netns, &format!("flush set inet {PART_TABLE} blocked\n"))?;
        }
        Ok(())
    }

    /// Drops every packet between nodes `i` and `j` (for a line `A-B-C`: isolate A and C).
    /// Blocking a pair twice is the same as once.
    pub fn isolate_pair(&self, i: usize, j: usize) -> Result<(), HarnessError> {
        let (ni, nj) = (self.node(i), self.node(j));
        let add = |ns: &str, peer: Ipv4Addr| {
            nft(
                ns,
                &format!("add element inet {PART_TABLE} blocked {{ {peer} }}\n"),
            )
        };
        add(&ni.netns, nj.addr)?;
        add(&nj.netns, ni.addr)
    }

    /// Lets nodes `i` and `j` reach each other again (undoes [`Cluster::isolate_pair`] and that
    /// pair of a [`Cluster::partition`]); a pair that was not blocked stays as it is.
    pub fn connect_pair(&self, i: usize, j: usize) -> Result<(), HarnessError> {
        let (ni, nj) = (self.node(i), self.node(j));
        // `delete element` fails for an absent element; add first so it is always there.
        let del = |ns: &str, peer: Ipv4Addr| {
            nft(
                ns,
                &format!(
                    "add element inet {PART_TABLE} blocked {{ {peer} }}\n\
                     delete element inet {PART_TABLE} blocked {{ {peer} }}\n"
                ),
            )
        };
        del(&ni.netns, nj.addr)?;
        del(&nj.netns, ni.addr)
    }

    /// A line `0 - 1 - ... - (n-1)`: every node reaches only its neighbours.
    pub fn line(&self) -> Result<(), HarnessError> {
        self.heal()?;
        for i in 0..self.nodes.len() {
            for j in i + 2..self.nodes.len() {
                self.isolate_pair(i, j)?;
            }
        }
        Ok(())
    }

    /// Whether node `from` and node `to` exchange a UDP datagram and its answer (each way
    /// through the bridge) within `patience`: sockets bound on both nodes' addresses in their
    /// namespaces, a datagram sent every 100 ms until one is answered.
    pub fn reaches_within(
        &self,
        from: usize,
        to: usize,
        patience: Duration,
    ) -> Result<bool, HarnessError> {
        let (a, b) = (self.node(from), self.node(to));
        let (a_addr, b_addr) = (a.addr, b.addr);
        let bind = |addr: Ipv4Addr| move || UdpSocket::bind(SocketAddrV4::new(addr, 0));
        let io = |what: &str, source| HarnessError::Spawn {
            what: what.to_owned(),
            source,
        };
        let sender = a.in_netns(bind(a_addr))?.map_err(|e| io("udp bind", e))?;
        let receiver = b.in_netns(bind(b_addr))?.map_err(|e| io("udp bind", e))?;
        let target = receiver.local_addr().map_err(|e| io("udp addr", e))?;
        for s in [&sender, &receiver] {
            s.set_nonblocking(true)
                .map_err(|e| io("udp nonblocking", e))?;
        }
        let deadline = Instant::now() + patience;
        let mut buf = [0u8; 64];
        loop {
            // A send the kernel refuses (a drop by nft output) is an unanswered try.
            let _ = sender.send_to(b"bolt-probe", target);
            let next_send = Instant::now() + Duration::from_millis(100);
            while Instant::now() < next_send.min(deadline) {
                // Answer what arrived from the expected sender.
                while let Ok((len, src)) = receiver.recv_from(&mut buf) {
                    if src.ip() == IpAddr::V4(a_addr) {
                        let _ = receiver.send_to(&buf[..len], src);
                    }
                }
                if let Ok((len, src)) = sender.recv_from(&mut buf) {
                    if src == target && &buf[..len] == b"bolt-probe" {
                        return Ok(true);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    /// [`Cluster::reaches_within`] one second.
    pub fn reaches(&self, from: usize, to: usize) -> Result<bool, HarnessError> {
        self.reaches_within(from, to, Duration::from_secs(1))
    }

    /// SIGKILLs node `i`'s agent (by its pid) and waits for it to exit.
    pub fn kill9(&mut self, i: usize) -> Result<ExitStatus, HarnessError> {
        self.nodes[i].node.stop_with(Signal::SIGKILL)
    }

    /// SIGTERMs node `i`'s agent and waits for it to exit.
    pub fn stop(&mut self, i: usize) -> Result<ExitStatus, HarnessError> {
        self.nodes[i].node.stop()
    }

    /// Starts node `i`'s agent again, on the same root and socket with the same arguments, and
    /// waits until it answers.
    pub fn restart(&mut self, i: usize) -> Result<(), HarnessError> {
        self.nodes[i].node.start()
    }

    /// Ends every node and deletes every namespace (what drop does); safe to call twice.
    pub fn cleanup(&mut self) {
        for n in &mut self.nodes {
            n.node.cleanup();
        }
        // Node namespaces first (their veth ends take the bridge ports with them), the switch
        // last.
        while let Some(ns) = self.netns.pop() {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// The nft script that makes a node namespace's fault table.
fn part_table_script() -> String {
    format!(
        "table inet {PART_TABLE} {{\n\
         \tset blocked {{ type ipv4_addr; }}\n\
         \tchain input {{ type filter hook input priority -10; policy accept; ip saddr @blocked drop; }}\n\
         \tchain output {{ type filter hook output priority -10; policy accept; ip daddr @blocked drop; }}\n\
         }}\n"
    )
}

/// Runs `ip ARGS`; an error carries its stderr.
fn ip(args: &[&str]) -> Result<(), HarnessError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HarnessError::Spawn {
            what: format!("ip {}", args.join(" ")),
            source,
        })?;
    check(&format!("ip {}", args.join(" ")), &out)
}

/// Runs the nft script `script` inside namespace `ns` (`nsenter --net=... nft -f -`).
fn nft(ns: &str, script: &str) -> Result<(), HarnessError> {
    use std::io::Write;
    let what = format!("nft in {ns}: {}", script.trim());
    let spawn_err = |source| HarnessError::Spawn {
        what: what.clone(),
        source,
    };
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    check(&what, &out)
}

/// `nsenter --net=/run/netns/NS ARGS...`, waited for.
fn nsenter_output(ns: &str, args: &[&str]) -> Result<std::process::Output, HarnessError> {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HarnessError::Spawn {
            what: format!("nsenter {ns} {}", args.join(" ")),
            source,
        })
}

fn check(what: &str, out: &std::process::Output) -> Result<(), HarnessError> {
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Cluster(format!(
            "{what}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Runs `f` on a new thread that entered namespace `ns` (`setns` affects only that thread).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HarnessError> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(|source| HarnessError::Spawn {
        what: format!("open {path}"),
        source,
    })?;
    let handle = std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map(|()| f())
    });
    match handle.join() {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(HarnessError::Cluster(format!("setns {path}: {e}"))),
        Err(_) => Err(HarnessError::Cluster(format!(
            "the thread in {path} panicked"
        ))),
    }
}
