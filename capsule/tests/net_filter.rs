//! The filter policy of Bolt's table (`net::filter`), as root, inside namespaces these tests
//! create: a throwaway "host" namespace holds the bridges and the table, each "capsule" is
//! another namespace, and "remote" machines are namespaces joined to the host by a veth (made
//! with `ip`, which the fixture may use). Every namespace is unnamed: it ends with the test
//! process, whatever happens; `Lab`'s drop tears the library's work down on failure.
//!
//! A capsule that can craft packets is played by a namespace whose routes send 127.0.0.0/8 out
//! of its `eth0` to the gateway (the local rule moved behind a rule for 127.0.0.0/8, and
//! `route_localnet` on `eth0`): what a capsule with `CAP_NET_RAW` can send with a raw socket.
//! Each test also removes the rule it checks (`nft flush chain`) and shows the same probe then
//! gets through, so a probe that could never have worked cannot make it pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bolt_capsule::net::{link, nft, sysctl, veth_name, BridgeNetwork, Host, Netns, PortSpec};

/// Hang guard for connections that must work (not a timing assertion).
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection that must not work is given: its SYN is dropped, so it would only
/// ever time out.
const BLOCKED: Duration = Duration::from_millis(1500);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A "host" namespace with a `Host` in it; tears the library's work down on drop.
struct Lab {
    host: Host,
    names: Vec<String>,
}

impl Lab {
    fn new() -> Self {
        let host = Host::new(Netns::new_unnamed().unwrap());
        host.set_ip_forward(true).unwrap();
        run_in(host.netns(), &["ip", "link", "set", "lo", "up"]);
        Lab {
            host,
            names: Vec::new(),
        }
    }

    fn ns(&self) -> &Netns {
        self.host.netns()
    }

    fn add_network(&mut self, name: &str, subnet: &str) -> String {
        let net = BridgeNetwork::new(name, subnet, None, 0).unwrap();
        let bridge = net.bridge.clone();
        self.names.push(bridge.clone());
        self.host.add_network(net).unwrap();
        bridge
    }

    /// Attaches a new capsule namespace to `network` at its next free address.
    fn capsule(&mut self, network: &str, id: &str, ports: &[&str]) -> (Netns, Ipv4Addr) {
        let used: BTreeSet<Ipv4Addr> = self.host.attachments().values().map(|a| a.ip).collect();
        let addr = self.host.networks()[network].pool.next_free(&used).unwrap();
        let ports: Vec<PortSpec> = ports.iter().map(|p| p.parse().unwrap()).collect();
        let ns = Netns::new_unnamed().unwrap();
        self.names.push(veth_name(id).unwrap());
        self.host.attach(network, id, addr, &ports, &ns).unwrap();
        (ns, addr)
    }

    /// Removes every rule of `chain` in the lab's table (the control half of a test).
    fn flush(&self, chain: &str) {
        nft::run(
            self.ns(),
            &["-f", "-"],
            &format!("flush chain ip bolt {chain}\n"),
        )
        .unwrap();
    }

    /// The library's own cleanup leaves nothing, here or in the machine's namespace.
    fn remove_all(&mut self) {
        let ids: Vec<String> = self.host.attachments().keys().cloned().collect();
        for id in ids {
            self.host.detach(&id).unwrap();
        }
        let nets: Vec<String> = self.host.networks().keys().cloned().collect();
        for n in nets {
            self.host.remove_network(&n).unwrap();
        }
        assert!(!nft::has_table(self.ns()).unwrap(), "table ip bolt left");
        let real: BTreeSet<String> = link::list(&Netns::current().unwrap())
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        for n in &self.names {
            assert!(!real.contains(n), "{n} appeared in the machine's namespace");
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.host.teardown();
    }
}

/// Runs a fixture command (`ip ...`) inside `ns`.
fn run_in(ns: &Netns, argv: &[&str]) {
    let out = ns
        .run(|| Command::new(argv[0]).args(&argv[1..]).output())
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `/proc/PID/fd/N` of an unnamed namespace, for `ip ... netns PATH` (another process).
fn ns_path(ns: &Netns) -> String {
    ns.proc_path()
        .to_string_lossy()
        .replace("/proc/self/", &format!("/proc/{}/", std::process::id()))
}

/// A veth between `a` (`a_if`, `a_ip`/24) and `b` (`b_if`, `b_ip`/24), both up.
fn wire(a: &Netns, a_if: &str, a_ip: &str, b: &Netns, b_if: &str, b_ip: &str) {
    let b_path = ns_path(b);
    run_in(
        a,
        &[
            "ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b_path,
        ],
    );
    for (ns, dev, addr) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
        run_in(
            ns,
            &["ip", "addr", "add", &format!("{addr}/24"), "dev", dev],
        );
        run_in(ns, &["ip", "link", "set", dev, "up"]);
        run_in(ns, &["ip", "link", "set", "lo", "up"]);
    }
}

/// Makes `ns` send everything for 127.0.0.0/8 out of `dev` to `gateway`, as a packet crafted
/// with a raw socket would go, and accept the answers (source 127.0.0.1) on `dev`.
fn route_loopback_out(ns: &Netns, dev: &str, gateway: Ipv4Addr) {
    let gw = gateway.to_string();
    run_in(ns, &["ip", "rule", "add", "pref", "100", "lookup", "local"]);
    run_in(ns, &["ip", "rule", "del", "pref", "0"]);
    for argv in [
        &[
            "ip",
            "rule",
            "add",
            "pref",
            "10",
            "to",
            "127.0.0.0/8",
            "lookup",
            "127",
        ][..],
        &[
            "ip",
            "route",
            "add",
            "127.0.0.0/8",
            "via",
            &gw,
            "dev",
            dev,
            "table",
            "127",
        ],
    ] {
        run_in(ns, argv);
    }
    sysctl::write(ns, &sysctl::route_localnet(dev), "1").unwrap();
}

/// A TCP server in a namespace: answers each connection with "PEER_IP LINE" and closes.
struct Echo {
    stop: Arc<AtomicBool>,
    ns: Netns,
    addr: SocketAddrV4,
    thread: Option<JoinHandle<()>>,
}

fn echo(ns: &Netns, addr: Ipv4Addr, port: u16) -> Echo {
    let listener = ns.run(|| TcpListener::bind((addr, port))).unwrap().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        for conn in listener.incoming() {
            if flag.load(Ordering::SeqCst) {
                break;
            }
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
            let peer = conn
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let mut line = String::new();
            let _ = BufReader::new(&conn).read_line(&mut line);
            let _ = write!(conn, "{peer} {}", line.trim());
        }
    });
    let addr = if addr.is_unspecified() {
        Ipv4Addr::LOCALHOST
    } else {
        addr
    };
    Echo {
        stop,
        ns: ns.try_clone().unwrap(),
        addr: SocketAddrV4::new(addr, port),
        thread: Some(thread),
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let to = SocketAddr::V4(self.addr);
        let _ = self.ns.run(|| TcpStream::connect_timeout(&to, IO_TIMEOUT));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `ns` to `to` within `timeout`, sends `msg`, returns the reply.
fn ask_within(
    ns: &Netns,
    to: (Ipv4Addr, u16),
    msg: &str,
    timeout: Duration,
) -> std::io::Result<String> {
    ns.run(|| {
        let to = SocketAddr::V4(SocketAddrV4::new(to.0, to.1));
        let mut s = TcpStream::connect_timeout(&to, timeout)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        writeln!(s, "{msg}")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    })
    .unwrap()
}

/// A connection that must work: its reply.
fn ask(ns: &Netns, to: (Ipv4Addr, u16), msg: &str) -> String {
    ask_within(ns, to, msg, IO_TIMEOUT).unwrap_or_else(|e| panic!("{msg}: {e}"))
}

/// A connection that must get nothing back: not even a refusal (the packet was dropped).
fn assert_blocked(ns: &Netns, to: (Ipv4Addr, u16), msg: &str) {
    match ask_within(ns, to, msg, BLOCKED) {
        Err(e) if e.kind() == ErrorKind::TimedOut => {}
        other => panic!("{msg}: expected no answer at all, got {other:?}"),
    }
}

#[test]
fn capsules_cannot_reach_the_hosts_loopback_and_published_ports_still_work() {
    if !bolt_skip::root("capsules_cannot_reach_the_hosts_loopback_and_published_ports_still_work") {
        return;
    }
    let mut lab = Lab::new();
    let tag = std::process::id() % 0xffff;
    let net = format!("nf-{tag}-lo");
    lab.add_network(&net, "10.103.0.0/24");
    let gw = ip("10.103.0.1");
    let (p_ns, _) = lab.capsule(
        &net,
        &format!("nf{tag:x}lop"),
        &["127.0.0.1:8080:80", "8081:80"],
    );
    let (x_ns, x_ip) = lab.capsule(&net, &format!("nf{tag:x}lox"), &[]);
    // A service on the host's loopback only, and the published capsule's server.
    let secret = echo(lab.ns(), Ipv4Addr::LOCALHOST, 7777);
    let web = echo(&p_ns, Ipv4Addr::UNSPECIFIED, 80);

    // Published ports still work: 127.0.0.1 from the host, the gateway from a capsule.
    assert_eq!(
        ask(lab.ns(), (Ipv4Addr::LOCALHOST, 8080), "lo"),
        "10.103.0.1 lo"
    );
    assert_eq!(
        ask(lab.ns(), (Ipv4Addr::LOCALHOST, 8081), "lo2"),
        "10.103.0.1 lo2"
    );
    assert_eq!(ask(&x_ns, (gw, 8081), "gw"), "10.103.0.1 gw");
    assert_eq!(
        ask(lab.ns(), (Ipv4Addr::LOCALHOST, 7777), "host"),
        "127.0.0.1 host"
    );

    // The crafting capsule sends to the host's 127.0.0.1: nothing comes back, neither from
    // the host's loopback service nor from the ports published there.
    route_loopback_out(&x_ns, "eth0", gw);
    assert_blocked(&x_ns, (Ipv4Addr::LOCALHOST, 7777), "steal");
    assert_blocked(&x_ns, (Ipv4Addr::LOCALHOST, 8080), "published on 127.0.0.1");
    assert_blocked(&x_ns, (Ipv4Addr::LOCALHOST, 8081), "published everywhere");
    // ...while the host's own connections through the bridge still do.
    assert_eq!(
        ask(lab.ns(), (Ipv4Addr::LOCALHOST, 8080), "again"),
        "10.103.0.1 again"
    );

    // Control: without the guard the same probe reaches the host's loopback service (so the
    // guard is what stopped it); a port published on 127.0.0.1 is still not DNAT'd for it
    // (the host answers for itself: nothing listens on its 127.0.0.1:8080).
    lab.flush("guard");
    assert_eq!(
        ask(&x_ns, (Ipv4Addr::LOCALHOST, 7777), "steal"),
        format!("{x_ip} steal")
    );
    let e = ask_within(&x_ns, (Ipv4Addr::LOCALHOST, 8080), "x", BLOCKED).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    lab.host.sync_rules().unwrap();
    assert_blocked(&x_ns, (Ipv4Addr::LOCALHOST, 7777), "steal again");

    drop((secret, web));
    lab.remove_all();
}

#[test]
fn networks_are_isolated_and_unpublished_ports_are_not_forwarded() {
    if !bolt_skip::root("networks_are_isolated_and_unpublished_ports_are_not_forwarded") {
        return;
    }
    let mut lab = Lab::new();
    let tag = std::process::id() % 0xffff;
    let (net_a, net_b) = (format!("nf-{tag}-a"), format!("nf-{tag}-b"));
    lab.add_network(&net_a, "10.104.0.0/24");
    lab.add_network(&net_b, "10.105.0.0/24");
    let (a1_ns, a1) = lab.capsule(
        &net_a,
        &format!("nf{tag:x}a1"),
        &["8080:80", "127.0.0.1:8082:80"],
    );
    let (a2_ns, a2) = lab.capsule(&net_a, &format!("nf{tag:x}a2"), &[]);
    let (b1_ns, b1) = lab.capsule(&net_b, &format!("nf{tag:x}b1"), &[]);
    // A remote machine on the host's uplink that routes both subnets through the host, and
    // another machine on a second host interface (not a Bolt network).
    let remote = Netns::new_unnamed().unwrap();
    wire(lab.ns(), "up0", "192.0.2.1", &remote, "up1", "192.0.2.2");
    for subnet in ["10.104.0.0/24", "10.105.0.0/24", "198.51.100.0/24"] {
        run_in(&remote, &["ip", "route", "add", subnet, "via", "192.0.2.1"]);
    }
    let lan = Netns::new_unnamed().unwrap();
    wire(
        lab.ns(),
        "lan0",
        "198.51.100.1",
        &lan,
        "lan1",
        "198.51.100.2",
    );
    run_in(
        &lan,
        &["ip", "route", "add", "default", "via", "198.51.100.1"],
    );

    let servers = [
        echo(&a1_ns, Ipv4Addr::UNSPECIFIED, 80),
        echo(&a2_ns, Ipv4Addr::UNSPECIFIED, 80),
        echo(&b1_ns, Ipv4Addr::UNSPECIFIED, 80),
        // Bound to their own addresses: `remote` sends 127.0.0.0/8 to the host later on.
        echo(&remote, ip("192.0.2.2"), 7000),
        echo(&lan, ip("198.51.100.2"), 7000),
    ];
    let uplink = ip("192.0.2.1");

    // Same network: both ways, sources unchanged.
    assert_eq!(ask(&a2_ns, (a1, 80), "a2"), format!("{a2} a2"));
    assert_eq!(ask(&a1_ns, (a2, 80), "a1"), format!("{a1} a1"));
    // Outbound from both networks, masqueraded behind the uplink.
    assert_eq!(ask(&a1_ns, (ip("192.0.2.2"), 7000), "out"), "192.0.2.1 out");
    assert_eq!(ask(&b1_ns, (ip("192.0.2.2"), 7000), "out"), "192.0.2.1 out");
    // Published: from the remote machine (it sees the real client), and from the other
    // network through a host address.
    assert_eq!(ask(&remote, (uplink, 8080), "in"), "192.0.2.2 in");
    assert_eq!(ask(&b1_ns, (uplink, 8080), "b-pub"), "10.104.0.1 b-pub");
    // The host itself reaches capsules directly.
    assert_eq!(ask(lab.ns(), (b1, 80), "host"), "10.105.0.1 host");
    // Forwarding that involves no Bolt network is left alone by default.
    assert_eq!(
        ask(&remote, (ip("198.51.100.2"), 7000), "lan"),
        "192.0.2.2 lan"
    );

    // Isolation: network A and network B cannot reach each other's capsules.
    assert_blocked(&b1_ns, (a1, 80), "b1->a1");
    assert_blocked(&a1_ns, (b1, 80), "a1->b1");
    // Unpublished: the remote machine routing the subnets through the host gets nothing,
    // not even from a published capsule's own port, nor from a port published on the
    // host's 127.0.0.1 (a neighbour can address a packet to it).
    assert_blocked(&remote, (a1, 80), "remote->a1");
    assert_blocked(&remote, (b1, 80), "remote->b1");
    route_loopback_out(&remote, "up1", uplink);
    assert_blocked(
        &remote,
        (Ipv4Addr::LOCALHOST, 8082),
        "remote->127.0.0.1:8082",
    );

    // When the agent turned forwarding on itself, the host forwards nothing else either;
    // Bolt's traffic is unchanged.
    lab.host.set_drop_other_forwarding(true).unwrap();
    assert_blocked(&remote, (ip("198.51.100.2"), 7000), "lan");
    assert_eq!(ask(&remote, (uplink, 8080), "in2"), "192.0.2.2 in2");
    assert_eq!(
        ask(&a2_ns, (ip("192.0.2.2"), 7000), "out2"),
        "192.0.2.1 out2"
    );
    assert_eq!(ask(&a2_ns, (a1, 80), "a2 again"), format!("{a2} a2 again"));
    lab.host.set_drop_other_forwarding(false).unwrap();
    assert_eq!(
        ask(&remote, (ip("198.51.100.2"), 7000), "lan2"),
        "192.0.2.2 lan2"
    );

    // Control: without the forward chain's rules the same probes get through.
    lab.flush("forward");
    // (Network B's masquerade towards any other interface gives it bridge A's address.)
    assert_eq!(ask(&b1_ns, (a1, 80), "b1->a1"), "10.104.0.1 b1->a1");
    assert_eq!(ask(&remote, (a1, 80), "remote->a1"), "192.0.2.2 remote->a1");
    lab.host.sync_rules().unwrap();
    assert_blocked(&b1_ns, (a1, 80), "b1->a1 again");
    assert_blocked(&remote, (a1, 80), "remote->a1 again");

    drop(servers);
    lab.remove_all();
}
