//! End to end: the filter policy of Bolt's table (`bolt_capsule::net::filter`) with real
//! capsules through the `bolt` binary. The agent runs inside a named network namespace this
//! test makes (`bolt-test-PID-pol`, removed by a guard) with `ip_forward` off, so the agent
//! turns it on itself; every bridge, rule and packet stays in that namespace.
//!
//! Needs root and the loopback test registry (`BOLT_TEST_REGISTRY`, image
//! `bolt-test/busybox:latest`); skipped with a message otherwise, failed instead when
//! `BOLT_REQUIRE_ROOT_TESTS=1` (CI).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use bolt_tests::{busybox, root_and_registry, Node};

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
        NetnsGuard { name }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace; its stdout.
    fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
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

/// A capsule on `network` that fetches `url` with busybox wget, retrying while the server
/// starts; its output. (Busybox 1.35's `wget -T` segfaults when the connection fails: the
/// time limit is `timeout`'s.)
fn fetch_from(node: &Node, image: &str, network: &str, url: &str) -> String {
    let script = format!(
        "for i in $(seq 50); do timeout 3 wget -qO- {url} && exit 0; sleep 0.2; done; exit 1"
    );
    let out = node.ok(&[
        "run",
        "--rm",
        "--network",
        network,
        image,
        "sh",
        "-c",
        &script,
    ]);
    out.stdout.trim().to_owned()
}

#[test]
fn capsules_on_two_networks_are_isolated_and_the_agent_forwards_nothing_else() {
    let Some(registry) = root_and_registry("network policy e2e") else {
        return;
    };
    let image = busybox(&registry);
    let dir = tempfile::tempdir().unwrap();
    let ns = NetnsGuard::new("pol");
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    // Pull in the machine's namespace (the registry is on its 127.0.0.1), then move the agent.
    let mut node = Node::without_registry_auth(dir.path(), "n").unwrap();
    node.start().unwrap();
    node.ok(&["pull", &image]);
    node.stop().unwrap();
    let nsenter = format!("--net={}", ns.path());
    node.set_wrapper(&["nsenter", &nsenter]);
    node.start().unwrap();

    node.ok(&["network", "create", "--subnet", "10.131.0.0/24", "pa"]);
    node.ok(&["network", "create", "--subnet", "10.132.0.0/24", "pb"]);
    node.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--network",
        "pa",
        "-p",
        "18090:8080",
        &image,
        "sh",
        "-c",
        "mkdir -p /www && echo hello-pa > /www/index.html && exec httpd -f -p 8080 -h /www",
    ]);
    let view: serde_json::Value =
        serde_json::from_str(&node.ok(&["inspect", "--format", "json", "srv"]).stdout).unwrap();
    let view = if view.is_array() { &view[0] } else { &view };
    let srv = view["addresses"]["pa"].as_str().unwrap().to_owned();

    // Same network: reachable. Another network: the published port through a host address
    // is, the capsule's own address is not.
    let direct = format!("http://{srv}:8080/");
    assert_eq!(fetch_from(&node, &image, "pa", &direct), "hello-pa");
    assert_eq!(
        fetch_from(&node, &image, "pb", "http://10.132.0.1:18090/"),
        "hello-pa"
    );
    // (Under `sh`: `timeout` as the capsule's pid 1 could not kill `wget`, pid 1 ignores
    // signals it has no handler for.)
    let probe = format!("timeout 3 wget -qO- {direct}; echo rc=$?");
    let out = node.ok(&["run", "--rm", "--network", "pb", &image, "sh", "-c", &probe]);
    assert!(
        !out.stdout.contains("hello-pa"),
        "network pb reached {direct}: {out:?}"
    );
    assert!(!out.stdout.contains("rc=0"), "{out:?}");

    // The agent turned forwarding on, recorded that, and drops forwarding that involves no
    // Bolt network.
    assert_eq!(
        ns.exec(&["sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
        "1"
    );
    let before = std::fs::read_to_string(node.root().join("network/ip_forward.before")).unwrap();
    assert_eq!(before.trim(), "0");
    let table = ns.exec(&["nft", "list", "table", "ip", "bolt"]);
    assert!(
        table.contains("type filter hook forward priority filter; policy drop;"),
        "{table}"
    );
    assert!(
        table.contains("iifname @bridges ip daddr 127.0.0.0/8 drop"),
        "{table}"
    );
    // ...also after a restart of the agent (the table is rewritten from the model).
    node.stop().unwrap();
    node.start().unwrap();
    let table = ns.exec(&["nft", "list", "table", "ip", "bolt"]);
    assert!(table.contains("policy drop;"), "{table}");
    assert_eq!(fetch_from(&node, &image, "pa", &direct), "hello-pa");

    node.ok(&["rm", "-f", "srv"]);
    for n in ["pa", "pb"] {
        node.ok(&["network", "rm", n]);
    }
    let tables = ns.exec(&["nft", "list", "tables"]);
    assert!(!tables.contains("bolt"), "{tables}");
    node.stop().unwrap();
}
