//! Bridge networking as root, entirely inside network namespaces these tests create: a
//! throwaway "host" namespace holds the bridge, the veths' host ends and Bolt's nft table;
//! each "capsule" is another namespace. The machine's own network is never touched (each test
//! ends by checking that none of its names appeared there).
//!
//! Skipped with a message when not root; `BOLT_REQUIRE_ROOT_TESTS=1` makes that a failure.
//! Every namespace is unnamed (it ends with its last descriptor) unless a test needs a named
//! one, which a drop guard removes; `Lab`'s drop tears the library's work down even when an
//! assertion fails, and each test checks that the library's own cleanup left nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bolt_capsule::net::host::{Host, HostError};
use bolt_capsule::net::ipam::{mac_for, IpamError};
use bolt_capsule::net::link::{self, BridgeSpec};
use bolt_capsule::net::nat::NatError;
use bolt_capsule::net::{bridge_name, nft, sysctl, veth_name, BridgeNetwork, Netns, PortSpec};

/// Hang guard for sockets (not a timing assertion).
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A unique network name per test and process (its bridge is `bridge_name(name)`).
fn net_name(test: &str) -> String {
    format!("nettest-{}-{test}", std::process::id())
}

/// Capsule ids unique per test and process.
fn capsule_id(test: &str, n: u32) -> String {
    format!("nt{:x}{test}{n}", std::process::id() % 0xffff)
}

/// A host namespace with a `Host` in it; tears the library's work down on drop, and removes
/// the named namespaces it was given.
struct Lab {
    host: Host,
    named: Vec<PathBuf>,
    names: Vec<String>,
}

impl Lab {
    fn new() -> Self {
        Self::in_ns(Netns::new_unnamed().unwrap(), Vec::new())
    }

    fn in_ns(ns: Netns, named: Vec<PathBuf>) -> Self {
        let host = Host::new(ns);
        host.set_ip_forward(true).unwrap();
        run_in(host.netns(), &["ip", "link", "set", "lo", "up"]);
        Lab {
            host,
            named,
            names: Vec::new(),
        }
    }

    fn ns(&self) -> &Netns {
        self.host.netns()
    }

    /// Adds a network and remembers its bridge name for the real-host check.
    fn add_network(&mut self, net: BridgeNetwork) -> Result<(), HostError> {
        self.names.push(net.bridge.clone());
        self.host.add_network(net)
    }

    /// The lowest free address of `network`, from the attachments (the agent uses its events).
    fn next_ip(&self, network: &str) -> Ipv4Addr {
        let used: BTreeSet<Ipv4Addr> = self
            .host
            .attachments()
            .values()
            .filter(|a| a.network == network)
            .map(|a| a.ip)
            .collect();
        self.host.networks()[network].pool.next_free(&used).unwrap()
    }

    fn attach(
        &mut self,
        network: &str,
        id: &str,
        ports: &[&str],
        ns: &Netns,
    ) -> Result<Ipv4Addr, HostError> {
        let ip = self.next_ip(network);
        let ports: Vec<PortSpec> = ports.iter().map(|p| p.parse().unwrap()).collect();
        self.names.push(veth_name(id).unwrap());
        self.host.attach(network, id, ip, &ports, ns).map(|a| a.ip)
    }

    /// Bolt links (bridges `bolt*`, veths `bv*`) in the lab's host namespace.
    fn bolt_links(&self) -> Vec<String> {
        link::list(self.ns())
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n.starts_with("bolt") || n.starts_with("bv"))
            .collect()
    }

    /// Asserts the library's own cleanup left nothing: no Bolt link, no Bolt table.
    fn assert_clean(&self) {
        assert_eq!(self.bolt_links(), Vec::<String>::new(), "bolt links left");
        assert!(!nft::has_table(self.ns()).unwrap(), "table ip bolt left");
        assert_real_host_untouched(&self.names);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.host.teardown();
        for p in &self.named {
            let _ = Netns::remove_named(p);
        }
    }
}

/// None of `names` is a link of the machine's own namespace, and no test namespace of ours is
/// named there.
fn assert_real_host_untouched(names: &[String]) {
    let real = Netns::current().unwrap();
    let links: BTreeSet<String> = link::list(&real)
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    for n in names {
        assert!(
            !links.contains(n),
            "{n} appeared in the machine's own namespace"
        );
    }
}

/// Runs a fixture command (`ip ...`) inside `ns`; the library itself never runs `ip`.
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

/// A TCP server in a namespace: answers each connection with "PEER_IP LINE" and closes.
struct TcpEcho {
    stop: Arc<AtomicBool>,
    ns: Netns,
    port: u16,
    thread: Option<JoinHandle<()>>,
}

fn tcp_echo(ns: &Netns, port: u16) -> TcpEcho {
    let listener = ns
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .unwrap()
        .unwrap();
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
    TcpEcho {
        stop,
        ns: ns.try_clone().unwrap(),
        port,
        thread: Some(thread),
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let port = self.port;
        let _ = self.ns.run(|| {
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), IO_TIMEOUT)
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP server in a namespace: answers each datagram with "PEER_IP DATA".
struct UdpEcho {
    stop: Arc<AtomicBool>,
    ns: Netns,
    port: u16,
    thread: Option<JoinHandle<()>>,
}

fn udp_echo(ns: &Netns, port: u16) -> UdpEcho {
    let sock = ns
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
        .unwrap()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            if flag.load(Ordering::SeqCst) {
                break;
            }
            let reply = format!("{} {}", peer.ip(), String::from_utf8_lossy(&buf[..n]));
            let _ = sock.send_to(reply.as_bytes(), peer);
        }
    });
    UdpEcho {
        stop,
        ns: ns.try_clone().unwrap(),
        port,
        thread: Some(thread),
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let port = self.port;
        let _ = self.ns.run(|| {
            UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|s| s.send_to(b"stop", (Ipv4Addr::LOCALHOST, port)))
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `ns` to `to`, sends `msg`, returns the reply ("PEER_IP MSG" from an echo).
fn tcp_ask(ns: &Netns, to: (Ipv4Addr, u16), msg: &str) -> std::io::Result<String> {
    ns.run(|| {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::V4(SocketAddrV4::new(to.0, to.1)), IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        writeln!(s, "{msg}")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    })
    .unwrap()
}

/// Sends `msg` from `ns` to `to` over UDP; returns the reply.
fn udp_ask(ns: &Netns, to: (Ipv4Addr, u16), msg: &str) -> std::io::Result<String> {
    ns.run(|| {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.send_to(msg.as_bytes(), to)?;
        let mut buf = [0u8; 512];
        let (n, _) = s.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn capsules_talk_over_tcp_and_published_ports_answer_on_localhost_and_hairpin() {
    if !bolt_skip::root(
        "capsules_talk_over_tcp_and_published_ports_answer_on_localhost_and_hairpin",
    ) {
        return;
    }
    let mut lab = Lab::new();
    let name = net_name("talk");
    let net = BridgeNetwork::new(&name, "10.88.0.0/16", None, 1450).unwrap();
    let bridge = net.bridge.clone();
    lab.add_network(net).unwrap();

    // The bridge: a bridge, up, its MTU, the gateway address, its MAC, route_localnet.
    let br = link::find(lab.ns(), &bridge)
        .unwrap()
        .expect("bridge exists");
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert!(br.up);
    assert_eq!(br.mtu, Some(1450));
    let addrs = link::addresses(lab.ns()).unwrap();
    assert!(addrs
        .iter()
        .any(|a| a.index == br.index && a.ip == ip("10.88.0.1") && a.prefix == 16));
    assert_eq!(
        sysctl::read(lab.ns(), &sysctl::route_localnet(&bridge)).unwrap(),
        "1"
    );
    assert!(nft::has_table(lab.ns()).unwrap());

    let a_ns = Netns::new_unnamed().unwrap();
    let b_ns = Netns::new_unnamed().unwrap();
    let a = capsule_id("talk", 1);
    let b = capsule_id("talk", 2);
    let a_ip = lab
        .attach(&name, &a, &["8080:80", "127.0.0.1:9053:53/udp"], &a_ns)
        .unwrap();
    let b_ip = lab.attach(&name, &b, &[], &b_ns).unwrap();
    assert_eq!((a_ip, b_ip), (ip("10.88.0.2"), ip("10.88.0.3")));

    // Inside A: eth0 with the address, MAC and MTU; lo up; the veth's host end on the bridge.
    let eth0 = link::find(&a_ns, "eth0").unwrap().expect("eth0 inside");
    assert!(eth0.up);
    assert_eq!(eth0.mtu, Some(1450));
    assert!(link::find(&a_ns, "lo").unwrap().unwrap().up);
    assert!(link::addresses(&a_ns)
        .unwrap()
        .iter()
        .any(|x| x.index == eth0.index && x.ip == a_ip && x.prefix == 16));
    let host_end = link::find(lab.ns(), &veth_name(&a).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(host_end.controller, Some(br.index));
    assert!(host_end.up);
    assert_eq!(lab.host.attachments()[&a].mac, mac_for(a_ip));

    let a_tcp = tcp_echo(&a_ns, 80);
    let b_tcp = tcp_echo(&b_ns, 80);
    let a_udp = udp_echo(&a_ns, 53);

    // Capsule to capsule, both ways, sources unchanged.
    assert_eq!(
        tcp_ask(&b_ns, (a_ip, 80), "b->a").unwrap(),
        "10.88.0.3 b->a"
    );
    assert_eq!(
        tcp_ask(&a_ns, (b_ip, 80), "a->b").unwrap(),
        "10.88.0.2 a->b"
    );
    // The host reaches a capsule directly.
    assert_eq!(
        tcp_ask(lab.ns(), (a_ip, 80), "host").unwrap(),
        "10.88.0.1 host"
    );

    // Published: 127.0.0.1 on the host (output DNAT, route_localnet, masquerade to the bridge
    // address), the gateway address, and hairpin from B and from A itself.
    assert_eq!(
        tcp_ask(lab.ns(), (Ipv4Addr::LOCALHOST, 8080), "localhost").unwrap(),
        "10.88.0.1 localhost"
    );
    assert_eq!(
        tcp_ask(lab.ns(), (ip("10.88.0.1"), 8080), "gateway").unwrap(),
        "10.88.0.1 gateway"
    );
    assert_eq!(
        tcp_ask(&b_ns, (ip("10.88.0.1"), 8080), "hairpin").unwrap(),
        "10.88.0.1 hairpin"
    );
    assert_eq!(
        tcp_ask(&a_ns, (ip("10.88.0.1"), 8080), "self").unwrap(),
        "10.88.0.1 self"
    );
    // UDP, bound to 127.0.0.1 only.
    assert_eq!(
        udp_ask(lab.ns(), (Ipv4Addr::LOCALHOST, 9053), "dns").unwrap(),
        "10.88.0.1 dns"
    );
    // A port that is not published is not forwarded.
    assert!(tcp_ask(lab.ns(), (Ipv4Addr::LOCALHOST, 8081), "x").is_err());

    drop((a_tcp, b_tcp, a_udp));

    // Detach both, remove the network: nothing of Bolt's is left.
    assert!(lab.host.detach(&a).unwrap().is_some());
    assert!(lab.host.detach(&b).unwrap().is_some());
    assert!(lab.host.detach(&b).unwrap().is_none());
    assert!(
        link::find(&a_ns, "eth0").unwrap().is_none(),
        "peer gone with the veth"
    );
    assert!(lab.host.nat().published().is_empty());
    lab.host.remove_network(&name).unwrap();
    lab.assert_clean();
}

/// A named namespace for this test, removed on drop.
struct NamedNs(PathBuf);

impl Drop for NamedNs {
    fn drop(&mut self) {
        let _ = Netns::remove_named(&self.0);
    }
}

fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*path.to_string_lossy()))
}

#[test]
fn outbound_nat_and_ports_published_to_other_machines() {
    if !bolt_skip::root("outbound_nat_and_ports_published_to_other_machines") {
        return;
    }
    // Named namespaces, so the fixture can join them with `ip -n`: "host" and "outside" (another
    // machine on the host's uplink, 192.0.2.0/24).
    let pid = std::process::id();
    let host_path = PathBuf::from(format!("/run/netns/bolt-test-{pid}-host"));
    let out_path = PathBuf::from(format!("/run/netns/bolt-test-{pid}-out"));
    let _g1 = NamedNs(host_path.clone());
    let _g2 = NamedNs(out_path.clone());
    let host_ns = Netns::create_named(&host_path).unwrap();
    let out_ns = Netns::create_named(&out_path).unwrap();
    assert!(mounted(&host_path));
    let mut lab = Lab::in_ns(host_ns, vec![host_path.clone(), out_path.clone()]);
    let host_name = format!("bolt-test-{pid}-host");
    let out_name = format!("bolt-test-{pid}-out");
    let up0 = format!("up{}", pid % 100_000);
    lab.names.push(up0.clone());
    run_in(
        lab.ns(),
        &[
            "ip", "link", "add", &up0, "type", "veth", "peer", "name", "up1", "netns", &out_name,
        ],
    );
    run_in(
        lab.ns(),
        &["ip", "addr", "add", "192.0.2.1/24", "dev", &up0],
    );
    run_in(lab.ns(), &["ip", "link", "set", &up0, "up"]);
    run_in(
        &out_ns,
        &["ip", "addr", "add", "192.0.2.2/24", "dev", "up1"],
    );
    run_in(&out_ns, &["ip", "link", "set", "up1", "up"]);
    run_in(&out_ns, &["ip", "link", "set", "lo", "up"]);
    let _ = host_name;

    let name = net_name("nat");
    lab.add_network(BridgeNetwork::new(&name, "10.89.0.0/24", None, 0).unwrap())
        .unwrap();
    let c_ns = Netns::new_unnamed().unwrap();
    let c = capsule_id("nat", 1);
    let c_ip = lab
        .attach(&name, &c, &["192.0.2.1:8443:443"], &c_ns)
        .unwrap();

    // Outbound: the outside sees the host's uplink address, not the capsule's.
    let out_tcp = tcp_echo(&out_ns, 7000);
    assert_eq!(
        tcp_ask(&c_ns, (ip("192.0.2.2"), 7000), "out").unwrap(),
        "192.0.2.1 out"
    );
    // Inbound to the published port on the uplink address: the capsule sees the real client.
    let c_tcp = tcp_echo(&c_ns, 443);
    assert_eq!(
        tcp_ask(&out_ns, (ip("192.0.2.1"), 8443), "in").unwrap(),
        "192.0.2.2 in"
    );
    // Bound to 192.0.2.1 only: the gateway address does not forward it.
    assert!(tcp_ask(&c_ns, (ip("10.89.0.1"), 8443), "x").is_err());
    assert_eq!(c_ip, ip("10.89.0.2"));
    drop((out_tcp, c_tcp));

    lab.host.detach(&c).unwrap();
    lab.host.remove_network(&name).unwrap();
    lab.assert_clean();
    drop(lab);
    drop(out_ns);
    Netns::remove_named(&out_path).unwrap();
    assert!(!host_path.exists() && !out_path.exists());
    assert!(!mounted(&host_path) && !mounted(&out_path));
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(!list.contains(&format!("bolt-test-{pid}-")), "{list}");
}

#[test]
fn overlapping_subnets_are_refused_and_nothing_changes() {
    if !bolt_skip::root("overlapping_subnets_are_refused_and_nothing_changes") {
        return;
    }
    let mut lab = Lab::new();
    let first = net_name("ov1");
    lab.add_network(BridgeNetwork::new(&first, "10.90.0.0/16", None, 0).unwrap())
        .unwrap();
    let links_before = lab.bolt_links();
    let rules_before = nft::list(lab.ns()).unwrap();

    let second = net_name("ov2");
    let e = lab
        .add_network(BridgeNetwork::new(&second, "10.90.128.0/17", None, 0).unwrap())
        .unwrap_err();
    assert!(
        matches!(&e, HostError::Ipam(IpamError::Overlap { network, .. }) if *network == first),
        "{e}"
    );
    // Another agent (a fresh Host) that does not know the first network still sees its bridge's
    // address on the host and refuses.
    let mut other = Host::new(lab.ns().try_clone().unwrap());
    let e = other
        .add_network(BridgeNetwork::new(&second, "10.90.7.0/24", None, 0).unwrap())
        .unwrap_err();
    assert!(
        matches!(&e, HostError::SubnetInUse { ip, .. } if *ip == Ipv4Addr::new(10, 90, 0, 1)),
        "{e}"
    );
    assert!(
        e.to_string().contains("overlaps address 10.90.0.1/16"),
        "{e}"
    );
    // Same name, other settings.
    let e = lab
        .add_network(BridgeNetwork::new(&first, "10.91.0.0/16", None, 0).unwrap())
        .unwrap_err();
    assert!(matches!(e, HostError::NetworkExists(_)), "{e}");
    assert_eq!(lab.bolt_links(), links_before);
    assert_eq!(nft::list(lab.ns()).unwrap(), rules_before);

    // Forwarding off is reported clearly, before anything is made.
    lab.host.set_ip_forward(false).unwrap();
    let e = lab
        .add_network(BridgeNetwork::new(&second, "10.92.0.0/16", None, 0).unwrap())
        .unwrap_err();
    assert!(matches!(e, HostError::IpForwardingOff), "{e}");
    assert!(e.to_string().contains("net.ipv4.ip_forward"));
    assert_eq!(lab.bolt_links(), links_before);

    // A non-overlapping one is fine.
    lab.host.set_ip_forward(true).unwrap();
    lab.add_network(BridgeNetwork::new(&second, "10.92.0.0/16", None, 0).unwrap())
        .unwrap();
    lab.host.remove_network(&second).unwrap();
    lab.host.remove_network(&first).unwrap();
    assert!(matches!(
        lab.host.remove_network(&first),
        Err(HostError::UnknownNetwork(_))
    ));
    lab.assert_clean();
}

#[test]
fn taken_host_ports_are_refused_with_nothing_half_set() {
    if !bolt_skip::root("taken_host_ports_are_refused_with_nothing_half_set") {
        return;
    }
    let mut lab = Lab::new();
    let name = net_name("port");
    lab.add_network(BridgeNetwork::new(&name, "10.93.0.0/24", None, 0).unwrap())
        .unwrap();
    let links_before = lab.bolt_links();
    let rules_before = nft::list(lab.ns()).unwrap();
    let c_ns = Netns::new_unnamed().unwrap();
    let c = capsule_id("port", 1);

    // Something on the host listens on 127.0.0.1:8080: 8080 on every address is taken, and
    // so is 127.0.0.1:8080; 127.0.0.2 is free... but not an address of this host.
    let squatter = lab
        .ns()
        .run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 8080)))
        .unwrap()
        .unwrap();
    for spec in ["8080:80", "127.0.0.1:8080:80", "1234:1/udp,8080:80"] {
        let specs: Vec<&str> = spec.split(',').collect();
        let e = lab.attach(&name, &c, &specs, &c_ns).unwrap_err();
        assert!(
            matches!(&e, HostError::PortTaken { spec } if spec.host_port == 8080),
            "{e}"
        );
        assert!(e.to_string().contains("already in use"), "{e}");
    }
    let e = lab
        .attach(&name, &c, &["192.0.2.77:8080:80"], &c_ns)
        .unwrap_err();
    assert!(matches!(e, HostError::HostAddressMissing { .. }), "{e}");
    // UDP on the same port is another port.
    lab.attach(&name, &c, &["8080:80/udp"], &c_ns).unwrap();
    lab.host.detach(&c).unwrap();
    drop(squatter);

    // Nothing was half-set by the refusals: no veth, no rule, no eth0 in the capsule.
    assert_eq!(lab.bolt_links(), links_before);
    assert_eq!(nft::list(lab.ns()).unwrap(), rules_before);
    assert!(link::find(&c_ns, "eth0").unwrap().is_none());
    assert!(lab.host.attachments().is_empty());

    // A port published by one capsule is refused to the next, naming the holder.
    lab.attach(&name, &c, &["8080:80"], &c_ns).unwrap();
    let rules_one = nft::list(lab.ns()).unwrap();
    let d_ns = Netns::new_unnamed().unwrap();
    let d = capsule_id("port", 2);
    let e = lab
        .attach(&name, &d, &["0.0.0.0:8080:81"], &d_ns)
        .unwrap_err();
    assert!(
        matches!(&e, HostError::Nat(NatError::PortConflict { holder, .. }) if *holder == c),
        "{e}"
    );
    let e = lab
        .attach(&name, &d, &["9000:1", "9000:2"], &d_ns)
        .unwrap_err();
    assert!(
        matches!(e, HostError::Nat(NatError::SelfConflict { .. })),
        "{e}"
    );
    // The same address twice is refused too.
    let c_ip = lab.host.attachments()[&c].ip;
    let ports: Vec<PortSpec> = Vec::new();
    let e = lab.host.attach(&name, &d, c_ip, &ports, &d_ns).unwrap_err();
    assert!(matches!(e, HostError::AddressTaken { .. }), "{e}");
    assert_eq!(nft::list(lab.ns()).unwrap(), rules_one);
    assert!(link::find(&d_ns, "eth0").unwrap().is_none());

    // Bad specs never reach the library: parsing explains them.
    for (bad, why) in [
        ("8080", "expected [IP:]HOST:CONTAINER"),
        ("0:80", "port 0"),
        ("70000:80", "above 65535"),
        ("80:80/sctp", "neither tcp nor udp"),
    ] {
        let e = bad.parse::<PortSpec>().unwrap_err();
        assert!(e.to_string().contains(why), "{bad}: {e}");
    }

    lab.host.detach(&c).unwrap();
    lab.host.remove_network(&name).unwrap();
    lab.assert_clean();
}

#[test]
fn restart_adopts_known_capsules_and_cleans_up_leftovers() {
    if !bolt_skip::root("restart_adopts_known_capsules_and_cleans_up_leftovers") {
        return;
    }
    let mut lab = Lab::new();
    let name = net_name("left");
    let net = BridgeNetwork::new(&name, "10.94.0.0/24", None, 0).unwrap();
    lab.add_network(net.clone()).unwrap();
    let keep_ns = Netns::new_unnamed().unwrap();
    let keep = capsule_id("left", 1);
    let gone = capsule_id("left", 2);
    let keep_ip = lab.attach(&name, &keep, &["8080:80"], &keep_ns).unwrap();
    // The second capsule is a process in its own namespace, joined by pid.
    let mut proc: Child = Command::new("unshare")
        .args(["--net", "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut proc);
    // Wait until unshare has made the namespace (the pid's namespace differs from ours).
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let pid = guard.0.id();
    let mut tries = 0;
    while std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap() == ours {
        tries += 1;
        assert!(tries < 1000, "unshare did not make a namespace");
        std::thread::sleep(Duration::from_millis(5));
    }
    let gone_ns = Netns::of_pid(pid).unwrap();
    lab.attach(&name, &gone, &[], &gone_ns).unwrap();
    let stray = "bolt-stray";
    lab.names.push(stray.to_string());
    link::ensure_bridge(
        lab.ns(),
        &BridgeSpec {
            name: stray.into(),
            mtu: 1500,
            gateway: ip("10.95.0.1"),
            prefix: 24,
            mac: mac_for(ip("10.95.0.1")),
        },
    )
    .unwrap();

    // "The agent restarts": a new Host over the same namespace, rebuilt from what the agent
    // knows (the network, the one capsule still alive) without touching links.
    let rules_before = nft::list(lab.ns()).unwrap().unwrap();
    let keep_ports: Vec<PortSpec> = vec!["8080:80".parse().unwrap()];
    let mut again = Host::new(lab.ns().try_clone().unwrap());
    again.add_network(net).unwrap();
    again.adopt(&name, &keep, keep_ip, &keep_ports).unwrap();
    let removed = again.cleanup_leftovers([keep.as_str()]).unwrap();
    assert_eq!(removed, vec![veth_name(&gone).unwrap()]);
    assert!(link::find(&gone_ns, "eth0").unwrap().is_none());
    let removed = again.remove_stale_bridges().unwrap();
    assert_eq!(removed, vec![stray.to_string()]);
    // One full replace: exactly the rules of before (the gone capsule published nothing), no
    // duplicates from re-adding the network.
    again.sync_rules().unwrap();
    assert_eq!(nft::list(lab.ns()).unwrap().unwrap(), rules_before);
    // The kept capsule still works through its published port, restored by the new Host.
    let echo = tcp_echo(&keep_ns, 80);
    assert_eq!(
        tcp_ask(again.netns(), (Ipv4Addr::LOCALHOST, 8080), "still").unwrap(),
        "10.94.0.1 still"
    );
    drop(echo);
    assert!(again.cleanup_leftovers([keep.as_str()]).unwrap().is_empty());
    drop(guard);

    again.detach(&keep).unwrap();
    again.remove_network(&name).unwrap();
    // The first Host's picture is stale now; its teardown finds nothing left to remove.
    lab.host.teardown().unwrap();
    lab.assert_clean();
    let _ = bridge_name(&name);
}

#[test]
fn named_namespaces_are_joinable_by_path_and_leave_nothing() {
    if !bolt_skip::root("named_namespaces_are_joinable_by_path_and_leave_nothing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("netns").join("capsule");
    let _guard = NamedNs(path.clone());
    let made = Netns::create_named(&path).unwrap();
    assert!(mounted(&path));
    assert!(matches!(
        Netns::create_named(&path),
        Err(bolt_capsule::net::NetnsError::Exists(_))
    ));
    // Opening by path gives the same namespace: a link made through one is seen by the other.
    let opened = Netns::open(&path).unwrap();
    let mut lab = Lab::new();
    let name = net_name("named");
    lab.add_network(BridgeNetwork::new(&name, "10.96.0.0/24", None, 0).unwrap())
        .unwrap();
    let c = capsule_id("named", 1);
    lab.attach(&name, &c, &[], &opened).unwrap();
    assert!(link::find(&made, "eth0").unwrap().is_some());
    // Not a namespace file: refused.
    assert!(matches!(
        Netns::open(dir.path()),
        Err(bolt_capsule::net::NetnsError::NotNetns(_))
    ));
    lab.host.detach(&c).unwrap();
    lab.host.remove_network(&name).unwrap();
    lab.assert_clean();
    drop((made, opened));
    Netns::remove_named(&path).unwrap();
    Netns::remove_named(&path).unwrap();
    assert!(!path.exists() && !mounted(&path));
}

#[test]
fn fifty_attach_detach_cycles_keep_addresses_unique() {
    if !bolt_skip::root("fifty_attach_detach_cycles_keep_addresses_unique") {
        return;
    }
    let mut lab = Lab::new();
    let name = net_name("cycle");
    lab.add_network(BridgeNetwork::new(&name, "10.98.0.0/28", None, 0).unwrap())
        .unwrap();
    let mut live: std::collections::VecDeque<(String, Ipv4Addr, Netns)> = Default::default();
    let mut handed_out = BTreeSet::new();
    for i in 0..50u32 {
        let id = capsule_id("cyc", i);
        let ns = Netns::new_unnamed().unwrap();
        let ip = lab.attach(&name, &id, &[], &ns).unwrap();
        assert!(
            live.iter().all(|(_, other, _)| *other != ip),
            "{ip} handed out twice"
        );
        handed_out.insert(ip);
        // The capsule side carries the address it was given.
        let eth0 = link::find(&ns, "eth0").unwrap().unwrap();
        assert!(link::addresses(&ns)
            .unwrap()
            .iter()
            .any(|a| a.index == eth0.index && a.ip == ip));
        live.push_back((id, ip, ns));
        if live.len() > 4 {
            let (old, _, old_ns) = live.pop_front().unwrap();
            // Every other time the capsule's namespace ends first (the capsule exited): the
            // kernel removes the pair by itself and detach still succeeds.
            if i % 2 == 0 {
                drop(old_ns);
            }
            assert!(lab.host.detach(&old).unwrap().is_some());
        }
        // The kernel holds exactly the live capsules' veths.
        let want: BTreeSet<String> = live
            .iter()
            .map(|(id, _, _)| veth_name(id).unwrap())
            .collect();
        let mut tries = 0;
        loop {
            let have: BTreeSet<String> = lab
                .bolt_links()
                .into_iter()
                .filter(|n| n.starts_with("bv"))
                .collect();
            if have == want {
                break;
            }
            // A pair whose namespace just ended goes away asynchronously.
            tries += 1;
            assert!(tries < 500, "veths {have:?}, expected {want:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // A /28 has 13 assignable addresses; released ones were reused.
    assert!(handed_out.len() <= 13, "{handed_out:?}");
    for (id, _, _) in live.drain(..) {
        lab.host.detach(&id).unwrap();
    }
    lab.host.remove_network(&name).unwrap();
    lab.assert_clean();
}
