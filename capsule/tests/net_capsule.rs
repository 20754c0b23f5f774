//! Real capsules (Bolt's runtime, a busybox rootfs) on a bridge network: the runtime joins a
//! namespace the network library prepared (`NetworkMode::Join`), by a named namespace's path or
//! by `/proc/self/fd/N` of an unnamed one. The bridge lives in a throwaway "host" namespace, so
//! the machine's own network is never touched.
//!
//! Skipped with a message when not root; `BOLT_REQUIRE_ROOT_TESTS=1` makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bolt_capsule::net::{link, nft, BridgeNetwork, Host, Netns};
use bolt_capsule::runtime::{CapsuleSpec, NetworkMode, Rootfs, Runtime, Stdio, StdioSlot};

/// A busybox lower layer in `dir`.
fn busybox_lower(dir: &Path) -> PathBuf {
    let lower = dir.join("lower");
    common::busybox_lower(&lower);
    lower
}

/// Runs `script` in a capsule joined to `netns`; returns (exit code, stdout, stderr).
fn run_capsule(dir: &Path, id: &str, netns: PathBuf, script: &str) -> (i32, String, String) {
    let lower = dir.join("lower");
    let rootfs = Rootfs::in_dir(vec![lower], &dir.join(id));
    let mut spec = CapsuleSpec::new(
        id.to_string(),
        rootfs,
        vec!["sh".into(), "-c".into(), script.into()],
    );
    spec.network = NetworkMode::Join(netns);
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let stdio = Stdio {
        stdin: StdioSlot::Null,
        stdout: StdioSlot::Fd(out_w),
        stderr: StdioSlot::Fd(err_w),
        terminal: false,
    };
    let out = reader(out_r);
    let err = reader(err_r);
    let rt = Runtime::new().unwrap();
    let mut capsule = rt.spawn(&spec, stdio).unwrap();
    let status = capsule.wait().unwrap();
    capsule.destroy().unwrap();
    (status.exit_code(), out.join().unwrap(), err.join().unwrap())
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

fn reader(fd: OwnedFd) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = fs::File::from(fd).read_to_string(&mut s);
        s
    })
}

struct Cleanup {
    host: Host,
    named: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.host.teardown();
        let _ = Netns::remove_named(&self.named);
    }
}

#[test]
fn runtime_capsules_join_prepared_namespaces_and_reach_the_host() {
    if !bolt_skip::root("runtime_capsules_join_prepared_namespaces_and_reach_the_host") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("bolt-net-")
        .tempdir_in("/var/tmp")
        .unwrap();
    busybox_lower(dir.path());
    let pid = std::process::id();
    let named = dir.path().join("netns").join("c1");
    let mut lab = Cleanup {
        host: Host::new(Netns::new_unnamed().unwrap()),
        named: named.clone(),
    };
    let host = &mut lab.host;
    host.set_ip_forward(true).unwrap();
    let name = format!("netcaps-{pid}");
    let net = BridgeNetwork::new(&name, "10.97.0.0/24", None, 0).unwrap();
    let bridge = net.bridge.clone();
    host.add_network(net).unwrap();

    // A server on the host side (the gateway address) that answers "PEER LINE".
    let listener = host
        .netns()
        .run(|| TcpListener::bind((Ipv4Addr::new(10, 97, 0, 1), 7000)))
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (mut conn, peer) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line).unwrap();
            write!(conn, "{} {}", peer.ip(), line.trim()).unwrap();
            seen.push(peer.ip().to_string());
        }
        seen
    });

    // Capsule 1: a named namespace, joined by its path.
    let c1 = format!("nc{pid}a");
    let c1_ns = Netns::create_named(&named).unwrap();
    let ip1 = host
        .attach(&name, &c1, Ipv4Addr::new(10, 97, 0, 2), &[], &c1_ns)
        .unwrap()
        .ip;
    // Capsule 2: an unnamed namespace, joined through this process's descriptor of it.
    let c2 = format!("nc{pid}b");
    let c2_ns = Netns::new_unnamed().unwrap();
    let ip2 = host
        .attach(&name, &c2, Ipv4Addr::new(10, 97, 0, 3), &[], &c2_ns)
        .unwrap()
        .ip;
    let by_fd = c2_ns.proc_path();

    let script = "ip -o -4 addr show eth0; ip route; echo hello | nc 10.97.0.1 7000";
    let (code, out, err) = run_capsule(dir.path(), &c1, named.clone(), script);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("inet 10.97.0.2/24"), "{out}");
    assert!(out.contains("default via 10.97.0.1 dev eth0"), "{out}");
    assert!(out.contains("10.97.0.2 hello"), "{out}");
    let (code, out, err) = run_capsule(dir.path(), &c2, by_fd, script);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("10.97.0.3 hello"), "{out}");
    assert_eq!(server.join().unwrap(), [ip1.to_string(), ip2.to_string()]);

    host.detach(&c1).unwrap();
    host.detach(&c2).unwrap();
    host.remove_network(&name).unwrap();
    assert!(link::find(host.netns(), &bridge).unwrap().is_none());
    assert!(!nft::has_table(host.netns()).unwrap());
    drop((c1_ns, c2_ns));
    Netns::remove_named(&named).unwrap();
    assert!(!named.exists());
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&*dir.path().to_string_lossy()),
        "{mountinfo}"
    );
}
