//! End to end: bridge networks through the real `bolt` binary, with the agent running inside a
//! network namespace this test makes (`ip netns add bolt-test-PID-net`, removed by a guard), so
//! every bridge, veth, nft rule and published port stays inside it and all traffic stays on
//! its 127.0.0.1 or its bridge.
//!
//! Needs root and the loopback test registry (`BOLT_TEST_REGISTRY`, image
//! `bolt-test/busybox:latest`). Skipped with a message otherwise; failed instead when
//! `BOLT_REQUIRE_ROOT_TESTS=1` (CI).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bolt_tests::{busybox, cgroup_mounts, root_and_registry, Node};
use serde_json::Value;

/// A named network namespace, removed on drop.
struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    fn new(tag: &str) -> NetnsGuard {
        let name = format!("bolt-test-{}-{tag}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        let g = NetnsGuard { name };
        g.exec(&["ip", "link", "set", "lo", "up"]);
        g
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace.
    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .args(args)
            .output()
            .unwrap()
    }

    fn links(&self) -> String {
        String::from_utf8_lossy(&self.exec(&["ip", "-o", "link"]).stdout).into_owned()
    }

    /// Interface names in the namespace (`ip -o link`, without the `@peer` suffix).
    fn link_names(&self) -> BTreeSet<String> {
        self.links()
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect()
    }

    /// The `mtu` of one interface in the namespace.
    fn mtu(&self, dev: &str) -> u32 {
        let out = self.exec(&["ip", "-o", "link", "show", "dev", dev]);
        assert!(out.status.success(), "no {dev} in the namespace");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut words = text.split_whitespace();
        words
            .find(|w| *w == "mtu")
            .and_then(|_| words.next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("no mtu in {text}"))
    }

    /// `nft list table ip bolt` in the namespace (empty when there is no such table).
    fn nft_table(&self) -> String {
        let out = self.exec(&["nft", "list", "table", "ip", "bolt"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn fails(node: &Node, args: &[&str]) -> String {
    let out = node.bolt(args).unwrap();
    assert!(!out.ok(), "bolt {args:?} should fail: {}", out.stdout);
    let err = out.stderr.trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one-line error expected: {err}");
    err
}

/// A `bolt run` that must be refused: one line and docker's 125.
fn run_fails(node: &Node, args: &[&str]) -> String {
    let out = node.bolt(args).unwrap();
    assert_eq!(
        out.code,
        Some(125),
        "bolt {args:?} should exit 125: {} {}",
        out.stdout,
        out.stderr
    );
    let err = out.stderr.trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one-line error expected: {err}");
    err
}

/// An agent running in a namespace of its own, with the busybox image pulled. Field order is
/// drop order: the node (its capsules and agent) goes before the namespace and the directory.
struct Env {
    node: Node,
    ns: NetnsGuard,
    image: String,
    _dir: tempfile::TempDir,
}

/// A node under `dir` whose agent pulls `image` in the machine's namespace (the registry is
/// on its 127.0.0.1), then runs in `ns`.
fn node_in(dir: &Path, image: &str, ns: &NetnsGuard) -> Node {
    let mut node = Node::without_registry_auth(dir, "n").unwrap();
    node.start().unwrap();
    node.ok(&["pull", image]);
    node.stop().unwrap();
    let nsenter = format!("--net={}", ns.path());
    node.set_wrapper(&["nsenter", &nsenter]);
    node.start().unwrap();
    node
}

/// An agent in namespace `tag`, with the busybox image pulled.
fn env(test: &str, tag: &str) -> Option<Env> {
    let registry = root_and_registry(test)?;
    let image = busybox(&registry);
    let dir = tempfile::tempdir().unwrap();
    let ns = NetnsGuard::new(tag);
    let node = node_in(dir.path(), &image, &ns);
    Some(Env {
        node,
        ns,
        image,
        _dir: dir,
    })
}

/// `bolt inspect --format json` of one capsule.
fn inspect(node: &Node, capsule: &str) -> Value {
    let out = node.ok(&["inspect", "--format", "json", capsule]);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    if v.is_array() {
        v[0].clone()
    } else {
        v
    }
}

/// The host end of a capsule's veth (`bv` + the first 12 characters of its id).
fn veth_of(node: &Node, capsule: &str) -> String {
    let id = inspect(node, capsule)["id"].as_str().unwrap().to_owned();
    format!("bv{}", &id[..12])
}

/// What a refused request could have left: capsules, capsule directories, Bolt's links, the
/// nft table, the network's allocations, the cgroups of this node's capsules.
#[derive(Debug, PartialEq)]
struct Snapshot {
    ps: Vec<String>,
    dirs: BTreeSet<String>,
    links: BTreeSet<String>,
    nft: String,
    allocations: Vec<Value>,
    cgroups: BTreeSet<PathBuf>,
}

fn snapshot(env: &Env, network: &str) -> Snapshot {
    let dirs: BTreeSet<String> = std::fs::read_dir(env.node.root().join("capsules"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // Only the cgroups named after this node's capsule directories (other tests' capsules
    // may come and go on the machine meanwhile); a new directory shows up in `dirs`.
    let cgroups = cgroup_mounts()
        .into_iter()
        .flat_map(|m| dirs.iter().map(move |d| m.join("bolt").join(d)))
        .filter(|p| p.exists())
        .collect();
    Snapshot {
        ps: env
            .node
            .ok(&["ps", "-a", "-q"])
            .lines()
            .iter()
            .map(|l| l.to_string())
            .collect(),
        dirs,
        links: env
            .ns
            .link_names()
            .into_iter()
            .filter(|l| l.starts_with("bv") || l.starts_with("bolt"))
            .collect(),
        nft: env.ns.nft_table(),
        allocations: allocations(&env.node, network),
        cgroups,
    }
}

fn ip_of(node: &Node, capsule: &str, network: &str) -> String {
    let out = node.ok(&["inspect", "--format", "json", capsule]);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let v = if v.is_array() { v[0].clone() } else { v };
    v["addresses"][network]
        .as_str()
        .unwrap_or_else(|| panic!("no address on {network}: {v}"))
        .to_owned()
}

fn allocations(node: &Node, network: &str) -> Vec<Value> {
    let out = node.ok(&["network", "inspect", network]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    v[0]["capsules"].as_array().unwrap().clone()
}

/// `curl` inside the namespace until it answers (the server starts in the background).
fn fetch(ns: &NetnsGuard, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = ns.exec(&["curl", "-s", "--max-time", "5", url]);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "{url} never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn capsules_on_a_bridge_talk_publish_ports_and_keep_addresses_unique_across_a_restart() {
    let Some(registry) = root_and_registry("network e2e") else {
        return;
    };
    let image = busybox(&registry);
    let dir = tempfile::tempdir().unwrap();
    // Pull from the loopback registry in this namespace, then move the agent into the test's.
    let ns = NetnsGuard::new("net");
    let mut node = node_in(dir.path(), &image, &ns);

    node.ok(&["network", "create", "--subnet", "10.123.0.0/24", "tnet"]);
    let err = fails(
        &node,
        &["network", "create", "--subnet", "10.123.0.0/16", "t2"],
    );
    assert!(err.contains("overlap"), "{err}");
    let err = fails(
        &node,
        &["network", "create", "--subnet", "10.124.0.1/24", "t3"],
    );
    assert!(err.contains("10.124.0.0/24"), "{err}");
    let ls = node.ok(&["network", "ls", "-q"]).stdout;
    assert_eq!(ls.lines().collect::<Vec<_>>(), vec!["tnet"]);

    // A web server with a published port on the namespace's 127.0.0.1.
    node.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--network",
        "tnet",
        "-p",
        "127.0.0.1:18080:8080",
        &image,
        "sh",
        "-c",
        "mkdir -p /www && echo hello-bolt > /www/index.html && exec httpd -f -p 8080 -h /www",
    ]);
    let srv_ip = ip_of(&node, "srv", "tnet");
    assert!(srv_ip.starts_with("10.123.0."), "{srv_ip}");
    let hosts = node.ok(&["exec", "srv", "cat", "/etc/hosts"]).stdout;
    assert!(hosts.contains(&srv_ip), "{hosts}");
    assert_eq!(fetch(&ns, "http://127.0.0.1:18080/").trim(), "hello-bolt");

    // Capsule to capsule over TCP, with busybox wget.
    let out = node.ok(&[
        "run",
        "--rm",
        "--network",
        "tnet",
        &image,
        "wget",
        "-qO-",
        &format!("http://{srv_ip}:8080/"),
    ]);
    assert_eq!(out.stdout.trim(), "hello-bolt");

    // Bad specs and a taken port: one line, nothing half-set.
    let before = allocations(&node, "tnet");
    for bad in ["99999:80", "80", "127.0.0.1:x:80", "8081:80/sctp"] {
        fails(
            &node,
            &["run", "-d", "--network", "tnet", "-p", bad, &image, "true"],
        );
    }
    let err = fails(
        &node,
        &[
            "run",
            "-d",
            "--network",
            "tnet",
            "-p",
            "127.0.0.1:18080:80",
            &image,
            "sleep",
            "60",
        ],
    );
    assert!(err.contains("18080"), "{err}");
    assert_eq!(allocations(&node, "tnet"), before);
    let ps = node.ok(&["ps", "-a", "-q"]).stdout;
    assert_eq!(ps.lines().count(), 1, "{ps}");

    // Addresses: unique among live capsules, released on remove, the same across a restart.
    let mut seen_live = vec![srv_ip.clone()];
    for i in 0..6 {
        let name = format!("c{i}");
        node.ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "tnet",
            &image,
            "sleep",
            "300",
        ]);
        let ip = ip_of(&node, &name, "tnet");
        assert!(
            !seen_live.contains(&ip),
            "{ip} handed out twice: {seen_live:?}"
        );
        seen_live.push(ip);
        if i % 2 == 0 {
            node.ok(&["rm", "-f", &name]);
            seen_live.pop();
        }
    }
    node.stop().unwrap();
    node.start().unwrap();
    assert_eq!(ip_of(&node, "srv", "tnet"), srv_ip);
    assert_eq!(fetch(&ns, "http://127.0.0.1:18080/").trim(), "hello-bolt");
    node.ok(&[
        "run",
        "-d",
        "--name",
        "after",
        "--network",
        "tnet",
        &image,
        "sleep",
        "300",
    ]);
    let ip = ip_of(&node, "after", "tnet");
    assert!(
        !seen_live.contains(&ip),
        "{ip} handed out twice after a restart: {seen_live:?}"
    );

    // The network is refused while in use; after the capsules go, nothing of bolt is left.
    fails(&node, &["network", "rm", "tnet"]);
    for name in ["srv", "c1", "c3", "c5", "after"] {
        node.ok(&["rm", "-f", name]);
    }
    assert!(allocations(&node, "tnet").is_empty());
    node.ok(&["network", "rm", "tnet"]);
    let links = ns.links();
    assert!(
        !links.contains(": bv") && !links.contains(": bolt"),
        "{links}"
    );
    node.stop().unwrap();
    let host = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !host.contains(&bolt_agent::service::networks::bridge_of("tnet")),
        "{host}"
    );
}

/// Interface names in `/proc/net/dev` output.
fn proc_net_dev_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, _)| n.trim().to_owned())
        .collect()
}

#[test]
fn host_network_capsules_see_the_hosts_interfaces() {
    let Some(env) = env("network host e2e", "host") else {
        return;
    };
    let (node, ns) = (&env.node, &env.ns);
    // Links only this namespace has: a veth pair and a bridge.
    for cmd in [
        &[
            "ip", "link", "add", "bt-ha", "type", "veth", "peer", "name", "bt-hb",
        ][..],
        &["ip", "link", "add", "bt-hbr", "type", "bridge"],
        &["ip", "link", "set", "bt-ha", "master", "bt-hbr"],
        &["ip", "link", "set", "bt-hbr", "up"],
    ] {
        assert!(ns.exec(cmd).status.success(), "{cmd:?}");
    }
    let expected = ns.link_names();
    for l in ["lo", "bt-ha", "bt-hb", "bt-hbr"] {
        assert!(expected.contains(l), "{expected:?}");
    }
    let out = node.ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        &env.image,
        "sh",
        "-c",
        "cat /proc/net/dev; echo ---; ls /sys/class/net",
    ]);
    let (dev, sys) = out.stdout.split_once("---").unwrap();
    assert_eq!(proc_net_dev_names(dev), expected, "{}", out.stdout);
    let sys: BTreeSet<String> = sys.split_whitespace().map(str::to_owned).collect();
    assert_eq!(sys, expected, "{}", out.stdout);

    // The contrast: `none` sees only its own lo, a bridge network lo and eth0.
    let out = node.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &env.image,
        "cat",
        "/proc/net/dev",
    ]);
    assert_eq!(
        proc_net_dev_names(&out.stdout),
        BTreeSet::from(["lo".to_owned()])
    );
    // No --network: docker's default, the default bridge network (the agent's
    // --default-network is `bridge` as root; the harness only sets `none` outside a test's
    // namespace). The capsule has lo and eth0, with an address on `bridge`.
    node.ok(&["run", "-d", "--name", "dflt", &env.image, "sleep", "600"]);
    let v = inspect(node, "dflt");
    assert_eq!(v["spec"]["network"], "bridge", "{v}");
    let ip = v["addresses"]["bridge"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{v}");
    let dev = node.ok(&["exec", "dflt", "cat", "/proc/net/dev"]).stdout;
    assert_eq!(
        proc_net_dev_names(&dev),
        BTreeSet::from(["lo".to_owned(), "eth0".to_owned()])
    );
    let addr = node
        .ok(&["exec", "dflt", "ip", "-o", "-4", "addr", "show", "eth0"])
        .stdout;
    assert!(addr.contains(&format!("inet {ip}/")), "{addr}");
    node.ok(&["rm", "-f", "dflt"]);
    // Published ports need a bridge network.
    let err = run_fails(
        node,
        &[
            "run",
            "--rm",
            "--network",
            "host",
            "-p",
            "8080:80",
            &env.image,
            "true",
        ],
    );
    assert!(err.contains("bridge"), "{err}");
}

/// The MTU of `eth0` as the capsule sees it, two ways that must agree: netlink in its own
/// namespace (busybox `ip`) and its sysfs (`/sys/class/net/eth0/mtu`, which shows the
/// interfaces of the namespace the runtime was in when it mounted sysfs).
fn mtu_inside(node: &Node, capsule: &str) -> u32 {
    let out = node
        .ok(&["exec", capsule, "ip", "-o", "link", "show", "eth0"])
        .stdout;
    let mut words = out.split_whitespace();
    let netlink: u32 = words
        .find(|w| *w == "mtu")
        .and_then(|_| words.next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mtu in {out}"));
    let sysfs = node
        .ok(&["exec", capsule, "cat", "/sys/class/net/eth0/mtu"])
        .stdout;
    assert_eq!(
        sysfs.trim(),
        netlink.to_string(),
        "sysfs and netlink disagree"
    );
    netlink
}

#[test]
fn network_mtu_reaches_the_bridge_the_veth_and_eth0() {
    let Some(env) = env("network mtu e2e", "mtu") else {
        return;
    };
    let (node, ns) = (&env.node, &env.ns);
    node.ok(&[
        "network",
        "create",
        "--subnet",
        "10.126.0.0/24",
        "--mtu",
        "1400",
        "small",
    ]);
    let view: Value =
        serde_json::from_str(&node.ok(&["network", "inspect", "small"]).stdout).unwrap();
    assert_eq!(view[0]["mtu"], 1400);
    let bridge = view[0]["bridge"].as_str().unwrap().to_owned();
    node.ok(&[
        "run",
        "-d",
        "--name",
        "m",
        "--network",
        "small",
        &env.image,
        "sleep",
        "300",
    ]);
    assert_eq!(ns.mtu(&bridge), 1400);
    assert_eq!(ns.mtu(&veth_of(node, "m")), 1400);
    assert_eq!(mtu_inside(node, "m"), 1400);

    // The default stays 1500, and an MTU out of range is refused before anything is made.
    node.ok(&["network", "create", "--subnet", "10.127.0.0/24", "plain"]);
    node.ok(&[
        "run",
        "-d",
        "--name",
        "p",
        "--network",
        "plain",
        &env.image,
        "sleep",
        "300",
    ]);
    assert_eq!(mtu_inside(node, "p"), 1500);
    let err = fails(
        node,
        &[
            "network",
            "create",
            "--subnet",
            "10.128.0.0/24",
            "--mtu",
            "40",
            "tiny",
        ],
    );
    assert!(err.contains("mtu"), "{err}");
    let ls = node.ok(&["network", "ls", "-q"]).stdout;
    assert!(!ls.contains("tiny"), "{ls}");
    for c in ["m", "p"] {
        node.ok(&["rm", "-f", c]);
    }
}

/// Waits until the namespace's `bv*` links are exactly `want` (a capsule's namespace ends
/// asynchronously after its processes, taking its veth with it).
fn wait_for_veths(ns: &NetnsGuard, want: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: BTreeSet<String> = ns
            .link_names()
            .into_iter()
            .filter(|l| l.starts_with("bv"))
            .collect();
        if &got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "veths {got:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn addresses_stay_unique_over_fifty_cycles_and_an_agent_restart() {
    let Some(mut env) = env("network ipam cycles e2e", "ipam") else {
        return;
    };
    // A /28: 13 addresses for capsules, so 50 cycles must reuse released ones.
    env.node
        .ok(&["network", "create", "--subnet", "10.129.0.0/28", "cyc"]);
    let image = env.image.clone();
    let run = |node: &Node, name: &str| -> String {
        node.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "cyc",
            &image,
            "sleep",
            "600",
        ]);
        ip_of(node, name, "cyc")
    };
    // name -> address of every capsule alive now.
    let mut live: BTreeMap<String, String> = BTreeMap::new();
    let mut handed_out: Vec<String> = Vec::new();
    let check_new = |live: &BTreeMap<String, String>, name: &str, ip: &str| {
        assert!(ip.starts_with("10.129.0."), "{ip}");
        if let Some((holder, _)) = live.iter().find(|(_, a)| a.as_str() == ip) {
            panic!("{ip} handed to {name} while {holder} holds it: {live:?}");
        }
    };
    // Three capsules stay alive across all cycles and the restart.
    for k in ["keep0", "keep1", "keep2"] {
        let ip = run(&env.node, k);
        check_new(&live, k, &ip);
        live.insert(k.to_owned(), ip);
    }
    let mut window: Vec<String> = Vec::new();
    let mut released_before_restart: BTreeSet<String> = BTreeSet::new();
    for i in 0..50 {
        if i == 25 {
            // The state's view of the addresses before the restart.
            let before = allocations(&env.node, "cyc");
            env.node.stop().unwrap();
            env.node.start().unwrap();
            assert_eq!(allocations(&env.node, "cyc"), before);
            for (name, ip) in &live {
                assert_eq!(&ip_of(&env.node, name, "cyc"), ip, "{name} after restart");
            }
            released_before_restart = handed_out
                .iter()
                .filter(|ip| !live.values().any(|l| l == *ip))
                .cloned()
                .collect();
            assert!(!released_before_restart.is_empty());
        }
        let name = format!("cyc{i}");
        let ip = run(&env.node, &name);
        check_new(&live, &name, &ip);
        live.insert(name.clone(), ip.clone());
        handed_out.push(ip);
        window.push(name);
        // At most four cycle capsules at a time; the oldest goes.
        if window.len() > 4 {
            let old = window.remove(0);
            env.node.ok(&["rm", "-f", &old]);
            live.remove(&old);
        }
        // The state agrees: one allocation per live capsule, no address twice.
        let allocs = allocations(&env.node, "cyc");
        let ips: BTreeSet<&str> = allocs.iter().map(|a| a[0].as_str().unwrap()).collect();
        assert_eq!(ips.len(), allocs.len(), "{allocs:?}");
        assert_eq!(
            ips,
            live.values().map(String::as_str).collect::<BTreeSet<_>>()
        );
    }
    let distinct: BTreeSet<&String> = handed_out.iter().collect();
    assert!(
        distinct.len() < handed_out.len(),
        "no address was reused: {handed_out:?}"
    );
    // Addresses released before the restart were handed out again after it.
    assert!(
        handed_out[25..]
            .iter()
            .any(|ip| released_before_restart.contains(ip)),
        "released before the restart: {released_before_restart:?}, after: {:?}",
        &handed_out[25..]
    );
    // The kernel agrees: one veth per live capsule.
    let want: BTreeSet<String> = live.keys().map(|n| veth_of(&env.node, n)).collect();
    wait_for_veths(&env.ns, &want);

    let names: Vec<String> = live.keys().cloned().collect();
    for n in &names {
        env.node.ok(&["rm", "-f", n]);
    }
    assert!(allocations(&env.node, "cyc").is_empty());
    wait_for_veths(&env.ns, &BTreeSet::new());

    // `run --rm` back to back, four at a time: the CLI returns once the exit and removal are
    // recorded, so a start can get an address whose last holder's detach has not run yet.
    std::thread::scope(|s| {
        for t in 0..4 {
            let (node, image) = (&env.node, &image);
            s.spawn(move || {
                for i in 0..8 {
                    let out = node.ok(&[
                        "run",
                        "--rm",
                        "--network",
                        "cyc",
                        image,
                        "cat",
                        "/proc/net/dev",
                    ]);
                    assert!(out.stdout.contains("eth0"), "{t}/{i}: {}", out.stdout);
                }
            });
        }
    });
    wait_for_veths(&env.ns, &BTreeSet::new());
    assert!(allocations(&env.node, "cyc").is_empty());
}

/// Binds `127.0.0.1:port` inside the namespace at `path` (a thread joins it, binds, and
/// ends; the socket stays in the namespace it was made in).
fn listen_in(path: &Path, port: u16) -> std::net::TcpListener {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap()
    })
    .join()
    .unwrap()
}

#[test]
fn bad_input_is_refused_with_one_line_and_nothing_half_set() {
    let Some(env) = env("network bad input e2e", "bad") else {
        return;
    };
    let node = &env.node;
    let image = env.image.as_str();
    node.ok(&["network", "create", "--subnet", "10.130.0.0/24", "good"]);
    node.ok(&[
        "run",
        "-d",
        "--name",
        "holder",
        "--network",
        "good",
        "-p",
        "127.0.0.1:18081:8080",
        image,
        "sleep",
        "600",
    ]);
    let before = snapshot(&env, "good");
    assert_eq!(before.ps.len(), 1);
    assert!(before.nft.contains("dport 18081"), "{}", before.nft);

    // Overlapping subnets, a subnet with host bits, a reserved name: no bridge, no rule.
    for (subnet, name, says) in [
        ("10.130.0.0/16", "wide", "overlap"),
        ("10.130.0.128/25", "inner", "overlap"),
        ("10.131.0.1/24", "hostbits", "10.131.0.0/24"),
        ("10.132.0.0/24", "host", "reserved"),
    ] {
        let err = fails(node, &["network", "create", "--subnet", subnet, name]);
        assert!(err.contains(says), "{subnet}: {err}");
        assert_eq!(snapshot(&env, "good"), before, "after network {name}");
    }
    let ls = node.ok(&["network", "ls", "-q"]).stdout;
    assert_eq!(ls.lines().collect::<Vec<_>>(), vec!["good"]);

    // A host port another capsule publishes, and one a host socket holds.
    let err = run_fails(
        node,
        &[
            "run",
            "-d",
            "--network",
            "good",
            "-p",
            "18081:80",
            image,
            "sleep",
            "60",
        ],
    );
    assert!(err.contains("18081"), "{err}");
    assert_eq!(snapshot(&env, "good"), before, "after a capsule's port");
    let _listener = listen_in(Path::new(&env.ns.path()), 18082);
    for spec in ["127.0.0.1:18082:80", "18082:80"] {
        let err = run_fails(
            node,
            &[
                "run",
                "-d",
                "--network",
                "good",
                "-p",
                spec,
                image,
                "sleep",
                "60",
            ],
        );
        assert!(err.contains("18082"), "{spec}: {err}");
        assert_eq!(snapshot(&env, "good"), before, "after host socket {spec}");
    }
    // The second spec of a request is the taken one: the first is not left behind.
    let err = run_fails(
        node,
        &[
            "run",
            "-d",
            "--network",
            "good",
            "-p",
            "18083:80",
            "-p",
            "18081:81",
            image,
            "sleep",
            "60",
        ],
    );
    assert!(err.contains("18081"), "{err}");
    assert_eq!(snapshot(&env, "good"), before, "after two specs");

    // Bad -p and -v specs, and -p without a bridge network.
    let bad_ports = [
        "99999:80",
        "80",
        "127.0.0.1:x:80",
        "8081:80/sctp",
        "0:80",
        "300.0.0.1:8081:80",
        "",
    ];
    for spec in bad_ports {
        run_fails(
            node,
            &["run", "-d", "--network", "good", "-p", spec, image, "true"],
        );
        assert_eq!(snapshot(&env, "good"), before, "after -p {spec:?}");
    }
    let bad_volumes = [
        "a:b:c:d",
        ":/data",
        "bad name!:/data",
        "/tmp:relative",
        "/tmp:/data:zz",
        "",
    ];
    for spec in bad_volumes {
        run_fails(
            node,
            &["run", "-d", "--network", "good", "-v", spec, image, "true"],
        );
        assert_eq!(snapshot(&env, "good"), before, "after -v {spec:?}");
    }
    run_fails(
        node,
        &[
            "run",
            "-d",
            "--network",
            "good",
            "-v",
            "/tmp:/data",
            "-v",
            "/var:/data",
            image,
            "true",
        ],
    );
    let err = run_fails(
        node,
        &[
            "run",
            "-d",
            "--network",
            "none",
            "-p",
            "8081:80",
            image,
            "true",
        ],
    );
    assert!(err.contains("bridge"), "{err}");
    let err = run_fails(
        node,
        &["run", "-d", "--network", "nosuchnet", image, "true"],
    );
    assert!(err.contains("nosuchnet"), "{err}");
    assert_eq!(snapshot(&env, "good"), before, "at the end");

    // The port is free again once its holder goes.
    node.ok(&["rm", "-f", "holder"]);
    node.ok(&[
        "run",
        "-d",
        "--name",
        "next",
        "--network",
        "good",
        "-p",
        "18081:80",
        image,
        "sleep",
        "60",
    ]);
    node.ok(&["rm", "-f", "next"]);
    let after = env.ns.nft_table();
    assert!(!after.contains("dport"), "{after}");
}

/// The harness's guard (`Node::cleanup`, run on drop): capsules an agent left running when
/// it stopped (a test that failed half-way) are ended by pid, their cgroups removed.
#[test]
fn the_harness_ends_capsules_a_stopped_agent_left_running() {
    let Some(mut env) = env("harness cleanup e2e", "left") else {
        return;
    };
    env.node
        .ok(&["network", "create", "--subnet", "10.133.0.0/24", "left"]);
    env.node.ok(&[
        "run",
        "-d",
        "--name",
        "l",
        "--network",
        "left",
        &env.image,
        "sleep",
        "600",
    ]);
    let id = inspect(&env.node, "l")["id"].as_str().unwrap().to_owned();
    let veth = veth_of(&env.node, "l");
    env.node.stop().unwrap();
    let capsules = env.node.root().join("capsules");
    assert_eq!(bolt_tests::supervisors_under(&capsules).len(), 1);
    let procs: Vec<PathBuf> = cgroup_mounts()
        .into_iter()
        .map(|m| m.join("bolt").join(&id))
        .filter(|p| p.exists())
        .collect();
    assert!(!procs.is_empty(), "the capsule runs in no cgroup");
    let pids = std::fs::read_to_string(procs[0].join("cgroup.procs")).unwrap();
    let pids: Vec<i32> = pids.lines().map(|l| l.parse().unwrap()).collect();
    assert!(!pids.is_empty());
    assert!(env.ns.link_names().contains(&veth));

    env.node.cleanup();
    assert!(bolt_tests::supervisors_under(&capsules).is_empty());
    for p in &procs {
        assert!(!p.exists(), "{} left", p.display());
    }
    for pid in pids {
        // Gone, or a zombie its new parent has not reaped yet.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, r)| &r[..1]);
        assert!(
            matches!(state, None | Some("Z") | Some("X")),
            "capsule process {pid} left: {stat}"
        );
    }
    // The capsule's namespace ended with its processes, and its veth with it.
    let gone = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.ns.link_names().contains(&veth) {
        assert!(Instant::now() < deadline, "{veth} left");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_veths(&env.ns, &gone);
}
