//! End to end: bridge networks through the real `bolt` binary, with the agent running inside a
//! network namespace this test makes (`ip netns add bolt-test-PID-net`, removed by a guard), so
//! every bridge, veth, nft rule and published port stays inside it and all traffic stays on
//! its 127.0.0.1 or its bridge.
//!
//! Needs root and the loopback test registry (`BOLT_TEST_REGISTRY`, image
//! `bolt-test/busybox:latest`). Skipped with a message otherwise; failed instead when
//! `BOLT_REQUIRE_ROOT_TESTS=1` (CI).
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use bolt_tests::{root_and_registry, Node, Output};
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
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ok(node: &Node, args: &[&str]) -> Output {
    let out = node.bolt(args).unwrap();
    assert!(out.ok(), "bolt {args:?} failed: {}", out.stderr);
    out
}

fn fails(node: &Node, args: &[&str]) -> String {
    let out = node.bolt(args).unwrap();
    assert!(!out.ok(), "bolt {args:?} should fail: {}", out.stdout);
    let err = out.stderr.trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one-line error expected: {err}");
    err
}

fn ip_of(node: &Node, capsule: &str, network: &str) -> String {
    let out = ok(node, &["inspect", "--format", "json", capsule]);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let v = if v.is_array() { v[0].clone() } else { v };
    v["addresses"][network]
        .as_str()
        .unwrap_or_else(|| panic!("no address on {network}: {v}"))
        .to_owned()
}

fn allocations(node: &Node, network: &str) -> Vec<Value> {
    let out = ok(node, &["network", "inspect", network]);
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
    let image = format!("{registry}/bolt-test/busybox:latest");
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("no-auth.json");
    let mut node = Node::new(dir.path(), "n")
        .unwrap()
        .with_agent_args(&["--registry-auth", auth.to_str().unwrap()]);
    // Pull from the loopback registry in this namespace, then move the agent into the test's.
    node.start().unwrap();
    ok(&node, &["pull", &image]);
    node.stop().unwrap();
    let ns = NetnsGuard::new("net");
    let nsenter = format!("--net={}", ns.path());
    node.set_wrapper(&["nsenter", &nsenter]);
    node.start().unwrap();

    ok(
        &node,
        &["network", "create", "--subnet", "10.123.0.0/24", "tnet"],
    );
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
    let ls = ok(&node, &["network", "ls", "-q"]).stdout;
    assert_eq!(ls.lines().collect::<Vec<_>>(), vec!["tnet"]);

    // A web server with a published port on the namespace's 127.0.0.1.
    ok(
        &node,
        &[
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
        ],
    );
    let srv_ip = ip_of(&node, "srv", "tnet");
    assert!(srv_ip.starts_with("10.123.0."), "{srv_ip}");
    let hosts = ok(&node, &["exec", "srv", "cat", "/etc/hosts"]).stdout;
    assert!(hosts.contains(&srv_ip), "{hosts}");
    assert_eq!(fetch(&ns, "http://127.0.0.1:18080/").trim(), "hello-bolt");

    // Capsule to capsule over TCP, with busybox wget.
    let out = ok(
        &node,
        &[
            "run",
            "--rm",
            "--network",
            "tnet",
            &image,
            "wget",
            "-qO-",
            &format!("http://{srv_ip}:8080/"),
        ],
    );
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
    let ps = ok(&node, &["ps", "-a", "-q"]).stdout;
    assert_eq!(ps.lines().count(), 1, "{ps}");

    // Addresses: unique among live capsules, released on remove, the same across a restart.
    let mut seen_live = vec![srv_ip.clone()];
    for i in 0..6 {
        let name = format!("c{i}");
        ok(
            &node,
            &[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                "tnet",
                &image,
                "sleep",
                "300",
            ],
        );
        let ip = ip_of(&node, &name, "tnet");
        assert!(
            !seen_live.contains(&ip),
            "{ip} handed out twice: {seen_live:?}"
        );
        seen_live.push(ip);
        if i % 2 == 0 {
            ok(&node, &["rm", "-f", &name]);
            seen_live.pop();
        }
    }
    node.stop().unwrap();
    node.start().unwrap();
    assert_eq!(ip_of(&node, "srv", "tnet"), srv_ip);
    assert_eq!(fetch(&ns, "http://127.0.0.1:18080/").trim(), "hello-bolt");
    ok(
        &node,
        &[
            "run",
            "-d",
            "--name",
            "after",
            "--network",
            "tnet",
            &image,
            "sleep",
            "300",
        ],
    );
    let ip = ip_of(&node, "after", "tnet");
    assert!(
        !seen_live.contains(&ip),
        "{ip} handed out twice after a restart: {seen_live:?}"
    );

    // The network is refused while in use; after the capsules go, nothing of bolt is left.
    fails(&node, &["network", "rm", "tnet"]);
    for name in ["srv", "c1", "c3", "c5", "after"] {
        ok(&node, &["rm", "-f", name]);
    }
    assert!(allocations(&node, "tnet").is_empty());
    ok(&node, &["network", "rm", "tnet"]);
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
        !host.contains(&bolt_agent::networks::bridge_of("tnet")),
        "{host}"
    );
}
