//! The mesh end to end: real agents, each in its own network namespace on one bridge, joined
//! with tokens over real QUIC with mutual TLS; events made on one node reach every node, and
//! every node derives the same state hash — also across a partition with writes on both sides,
//! and after a `kill -9` and a restart. Refusals: a reused token.
//!
//! Needs root (namespaces, veths, nftables). Skipped with a message otherwise; failed instead
//! when `BOLT_REQUIRE_ROOT_TESTS=1` (CI).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use bolt_tests::Cluster;

const PORT: u16 = 7946;

/// Waits (bounded) until every listed node answers `bolt state --hash` with one value and
/// `check` holds on each; returns the hash, or panics with what each node said.
fn converged(c: &Cluster, nodes: &[usize], check: impl Fn(usize) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let hashes: Vec<String> = nodes
            .iter()
            .map(|&i| {
                c.node(i)
                    .node
                    .bolt(&["state", "--hash"])
                    .map(|o| o.stdout.trim().to_owned())
                    .unwrap_or_default()
            })
            .collect();
        let same = hashes.iter().all(|h| !h.is_empty() && *h == hashes[0]);
        if same && nodes.iter().all(|&i| check(i)) {
            return hashes[0].clone();
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = nodes
                .iter()
                .map(|&i| {
                    let log = c.node(i).node.agent_log();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    format!("node {i}: {}\n{}", hashes[0], tail.join("\n"))
                })
                .collect();
            panic!("no convergence: {hashes:?}\n{}", logs.join("\n---\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (bounded) for `cond`.
fn wait_for(cond: impl Fn() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {}", what());
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn node_id(c: &Cluster, i: usize) -> String {
    let out = c.node(i).node.ok(&["cluster", "show", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v["node_id"].as_str().unwrap().to_owned()
}

/// How node `i` sees node `id` in `bolt node ls`.
fn state_of(c: &Cluster, i: usize, id: &str) -> String {
    let Ok(out) = c.node(i).node.bolt(&["node", "ls", "--format", "json"]) else {
        return String::new();
    };
    // One node per line.
    let list: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    list.iter()
        .find(|n| n["id"] == id)
        .and_then(|n| n["state"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn listen(c: &Cluster, i: usize) -> String {
    c.node(i).listen_addr(PORT).to_string()
}

/// Node 0 makes the cluster; every other node joins it with a token of its own.
fn cluster(dir: &Path, n: usize) -> Cluster {
    cluster_with(dir, n, &[])
}

/// [`cluster`] with more arguments for node 0's agent.
fn cluster_with(dir: &Path, n: usize, first_args: &[&str]) -> Cluster {
    let mut c = Cluster::new(dir, n).unwrap();
    let mut first = vec!["--listen".to_owned(), listen(&c, 0)];
    first.extend(first_args.iter().map(|a| a.to_string()));
    c.start_node(0, first).unwrap();
    let out = c.node(0).node.ok(&["cluster", "init", "--name", "test"]);
    assert!(out.stdout.contains("cluster created"), "{}", out.stdout);
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
        c.start_node(i, args).unwrap();
    }
    c
}

fn volumes(c: &Cluster, i: usize) -> String {
    c.node(i)
        .node
        .bolt(&["state", "--format", "json"])
        .map(|o| o.stdout)
        .unwrap_or_default()
}

#[test]
fn three_nodes_join_replicate_and_derive_one_state() {
    if !bolt_skip::root("three_nodes_join_replicate_and_derive_one_state") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 3);
    let all = [0, 1, 2];

    // Every node knows every node, with its mesh address.
    converged(&c, &all, |i| {
        let ls = c.node(i).node.bolt(&["node", "ls", "--format", "json"]);
        ls.map(|o| o.stdout.matches("\"id\"").count() == 3)
            .unwrap_or(false)
    });
    // A change made on node 1 is in every node's state.
    c.node(1).node.ok(&["volume", "create", "from-one"]);
    c.node(2).node.ok(&["volume", "create", "from-two"]);
    let hash = converged(&c, &all, |i| {
        let s = volumes(&c, i);
        s.contains("from-one") && s.contains("from-two")
    });
    assert!(!hash.is_empty());
    let ls = c.node(0).node.ok(&["node", "ls"]);
    assert_eq!(ls.stdout.matches("alive").count(), 3, "{}", ls.stdout);
    let shown = c.node(2).node.ok(&["cluster", "show", "--format", "json"]);
    assert!(
        shown.stdout.contains("\"member\": true"),
        "{}",
        shown.stdout
    );

    // A node killed with -9 is seen dead by SWIM, misses events, then catches up after its
    // restart and is alive again.
    let id2 = node_id(&c, 2);
    c.kill9(2).unwrap();
    wait_for(
        || state_of(&c, 0, &id2) == "dead",
        || {
            format!(
                "node 0 sees node 2 dead: {}\n{}",
                c.node(0).node.ok(&["node", "ls"]).stdout,
                c.node(0).node.agent_log()
            )
        },
    );
    wait_for(
        || state_of(&c, 1, &id2) == "dead",
        || "node 1 sees node 2 dead".into(),
    );
    for k in 0..20 {
        c.node(k % 2)
            .node
            .ok(&["volume", "create", &format!("while-down-{k}")]);
    }
    c.restart(2).unwrap();
    converged(&c, &all, |i| volumes(&c, i).contains("while-down-19"));
    wait_for(
        || state_of(&c, 0, &id2) == "alive",
        || "node 0 sees node 2 alive again".into(),
    );

    // Metrics count what moved, and no two nodes folded the same events differently.
    for i in all {
        let m = metrics(&c, i);
        let stored = m
            .lines()
            .any(|l| l.starts_with("bolt_mesh_events_total") && l.contains("stored"));
        assert!(
            stored || i == 0,
            "node {i} stored nothing from the mesh:\n{m}"
        );
        assert!(!m.contains("bolt_mesh_divergences_total"), "node {i}:\n{m}");
    }
}

#[test]
fn a_partition_with_writes_on_both_sides_heals_to_one_state() {
    if !bolt_skip::root("a_partition_with_writes_on_both_sides_heals_to_one_state") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), 5);
    let all = [0, 1, 2, 3, 4];
    converged(&c, &all, |_| true);
    c.partition(&[0, 1], &[2, 3, 4]).unwrap();
    for k in 0..10 {
        c.node(k % 2)
            .node
            .ok(&["volume", "create", &format!("left-{k}")]);
        c.node(2 + k % 3)
            .node
            .ok(&["volume", "create", &format!("right-{k}")]);
    }
    // Each side converges on its own writes alone.
    let left = converged(&c, &[0, 1], |i| volumes(&c, i).contains("left-9"));
    let right = converged(&c, &[2, 3, 4], |i| volumes(&c, i).contains("right-9"));
    assert_ne!(left, right);
    assert!(!volumes(&c, 0).contains("right-0"));
    c.heal().unwrap();
    converged(&c, &all, |i| {
        let s = volumes(&c, i);
        (0..10)
            .all(|k| s.contains(&format!("\"left-{k}\"")) && s.contains(&format!("\"right-{k}\"")))
    });
}

#[test]
fn a_line_topology_converges_through_the_middle() {
    if !bolt_skip::root("a_line_topology_converges_through_the_middle") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), 3);
    converged(&c, &[0, 1, 2], |_| true);
    // A and C cannot reach each other; both reach B.
    c.line().unwrap();
    c.node(0).node.ok(&["volume", "create", "from-a"]);
    c.node(2).node.ok(&["volume", "create", "from-c"]);
    converged(&c, &[0, 1, 2], |i| {
        let s = volumes(&c, i);
        s.contains("from-a") && s.contains("from-c")
    });
}

#[test]
fn a_reused_token_is_refused_and_the_node_does_not_start() {
    if !bolt_skip::root("a_reused_token_is_refused_and_the_node_does_not_start") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 3).unwrap();
    c.start_node(0, vec!["--listen".into(), listen(&c, 0)])
        .unwrap();
    c.node(0).node.ok(&["cluster", "init"]);
    let token = c
        .node(0)
        .node
        .ok(&["cluster", "token"])
        .stdout
        .trim()
        .to_owned();
    let join = |c: &Cluster, i: usize| {
        vec![
            "--listen".to_owned(),
            listen(c, i),
            "--join".to_owned(),
            listen(c, 0),
            "--token".to_owned(),
            token.clone(),
        ]
    };
    let args = join(&c, 1);
    c.start_node(1, args).unwrap();
    let args = join(&c, 2);
    assert!(c.start_node(2, args).is_err(), "a used token let a node in");
    let log = c.node(2).node.agent_log();
    assert!(log.contains("already used"), "{log}");
    assert!(!c.node(2).node.root().join("cluster/node.pem").exists());
    // A token for a cluster this member is not in (another fingerprint) never reaches it.
    let foreign = format!("bolt1-{}-{}", "ab".repeat(32), "cd".repeat(32));
    let mut args = join(&c, 2);
    *args.last_mut().unwrap() = foreign;
    assert!(c.start_node(2, args).is_err());
}

/// The agent's Prometheus text, over its socket (with curl, a real client).
fn metrics(c: &Cluster, i: usize) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(c.node(i).node.socket())
        .arg("http://bolt/metrics")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_revoked_node_is_refused_everywhere_and_a_leaving_node_is_seen_left() {
    if !bolt_skip::root("a_revoked_node_is_refused_everywhere_and_a_leaving_node_is_seen_left") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), 4);
    let all = [0, 1, 2, 3];
    converged(&c, &all, |i| {
        let ls = c.node(i).node.bolt(&["node", "ls", "--format", "json"]);
        ls.map(|o| o.stdout.matches("\"id\"").count() == 4)
            .unwrap_or(false)
    });
    let id2 = node_id(&c, 2);
    // Only a CA holder revokes.
    let refused = c.node(1).node.bolt(&["node", "rm", &id2[..12]]).unwrap();
    assert!(!refused.ok(), "a node without the CA revoked another");
    c.node(0).node.ok(&["node", "rm", &id2[..12]]);
    for i in [0, 1, 3] {
        wait_for(
            || state_of(&c, i, &id2) == "revoked",
            || format!("node {i} sees node 2 revoked"),
        );
    }
    // What the revoked node writes now reaches no one.
    let _ = c.node(2).node.bolt(&["volume", "create", "after-revoke"]);
    c.node(0).node.ok(&["volume", "create", "marker"]);
    converged(&c, &[0, 1, 3], |i| volumes(&c, i).contains("\"marker\""));
    std::thread::sleep(Duration::from_secs(3));
    for i in [0, 1, 3] {
        assert!(
            !volumes(&c, i).contains("after-revoke"),
            "node {i} took a revoked node's event"
        );
    }
    let refusals: u64 = [0, 1, 3]
        .iter()
        .flat_map(|&i| {
            metrics(&c, i)
                .lines()
                .filter(|l| l.starts_with("bolt_mesh_refused_total") && l.contains("revoked"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum::<f64>() as u64;
    assert!(refusals > 0, "no refusal of the revoked node was counted");

    // A node that leaves is seen left, not dead.
    let id3 = node_id(&c, 3);
    c.node(3).node.ok(&["cluster", "leave"]);
    wait_for(
        || state_of(&c, 0, &id3) == "left",
        || "node 0 sees node 3 left".into(),
    );
    let shown = c.node(3).node.ok(&["cluster", "show", "--format", "json"]);
    assert!(
        shown.stdout.contains("\"member\": false"),
        "{}",
        shown.stdout
    );
}

#[test]
fn a_capsule_run_on_one_node_is_listed_by_every_node() {
    if !bolt_skip::root("a_capsule_run_on_one_node_is_listed_by_every_node") {
        return;
    }
    let Some(oci) = bolt_skip::env(
        "a_capsule_run_on_one_node_is_listed_by_every_node",
        "BOLT_TEST_OCI_DIR",
        "eval \"$(tests/fixtures/build-images.sh env)\"",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), 3);
    let image = "bolt-test/busybox:latest";
    let busybox = Path::new(&oci).join("busybox");
    c.node(1).node.ok(&[
        "image",
        "import",
        "-q",
        "--reference",
        image,
        busybox.to_str().unwrap(),
    ]);
    c.node(1).node.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "none",
        image,
        "sleep",
        "600",
    ]);
    converged(&c, &[0, 1, 2], |i| {
        c.node(i)
            .node
            .bolt(&["ps", "--all-nodes", "--format", "json"])
            .is_ok_and(|o| o.stdout.contains("\"web\"") && o.stdout.contains("running"))
    });
    // Without --all-nodes a node lists its own capsules only, as docker does.
    let own = c.node(0).node.ok(&["ps", "-a", "--format", "json"]);
    assert!(!own.stdout.contains("\"web\""), "{}", own.stdout);
    // Another node's capsule is not stopped, removed or read from here: it runs elsewhere.
    for cmd in [&["stop", "web"][..], &["rm", "-f", "web"], &["logs", "web"]] {
        let out = c.node(0).node.bolt(cmd).unwrap();
        assert!(!out.ok(), "{cmd:?} went through");
        assert!(
            out.stderr.contains("runs on node"),
            "{cmd:?}: {}",
            out.stderr
        );
    }
    assert!(c
        .node(1)
        .node
        .ok(&["ps", "--format", "json"])
        .stdout
        .contains("running"));
    c.node(1).node.ok(&["rm", "-f", "web"]);
    converged(&c, &[0, 1, 2], |i| {
        c.node(i)
            .node
            .bolt(&["ps", "--all-nodes", "--format", "json"])
            .is_ok_and(|o| !o.stdout.contains("\"web\""))
    });
}

#[test]
fn a_flood_of_junk_datagrams_changes_nothing_and_the_mesh_goes_on() {
    if !bolt_skip::root("a_flood_of_junk_datagrams_changes_nothing_and_the_mesh_goes_on") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), 2);
    let before = converged(&c, &[0, 1], |_| true);
    // From node 1's namespace, 20,000 datagrams of random bytes at node 0's mesh port: QUIC
    // long and short headers, truncated, oversized.
    let target = c.node(0).listen_addr(PORT);
    let src = c.node(1).addr;
    c.node(1)
        .in_netns(move || {
            let sock = std::net::UdpSocket::bind((src, 0)).unwrap();
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for i in 0..20_000u32 {
                let len = [1usize, 20, 1200, 1500, 64][i as usize % 5];
                let mut buf = vec![0u8; len];
                for b in buf.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                if i % 3 == 0 {
                    buf[0] |= 0xc0; // a long header, as an Initial would have
                }
                let _ = sock.send_to(&buf, target);
            }
        })
        .unwrap();
    // Nothing was stored from it: the state is what it was, and the mesh still carries events.
    assert_eq!(
        c.node(0).node.ok(&["state", "--hash"]).stdout.trim(),
        before
    );
    let verify = c.node(0).node.ok(&["events", "verify"]);
    assert!(verify.ok(), "{}", verify.stdout);
    c.node(1).node.ok(&["volume", "create", "after-the-flood"]);
    converged(&c, &[0, 1], |i| volumes(&c, i).contains("after-the-flood"));
}

fn cert_expires(c: &Cluster, i: usize) -> i64 {
    let out = c.node(i).node.ok(&["cluster", "show", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v["cert_expires"].as_i64().unwrap()
}

#[test]
fn certificates_renew_before_they_expire_and_the_mesh_outlives_the_first_ones() {
    if !bolt_skip::root(
        "certificates_renew_before_they_expire_and_the_mesh_outlives_the_first_ones",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The CA holder issues 20-second certificates: nodes renew when a third is left.
    let mut c = cluster_with(dir.path(), 2, &["--cert-ttl", "20s"]);
    converged(&c, &[0, 1], |_| true);
    let first = [cert_expires(&c, 0), cert_expires(&c, 1)];
    for i in [0, 1] {
        wait_for(
            || cert_expires(&c, i) > first[i],
            || {
                format!(
                    "node {i} renews its certificate: {}",
                    c.node(i).node.agent_log()
                )
            },
        );
    }
    // Past the first certificates' end, new connections (a restarted node) still authenticate.
    let end = first.iter().max().copied().unwrap();
    while (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64)
        <= end
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    c.kill9(0).unwrap();
    c.restart(0).unwrap();
    c.node(1).node.ok(&["volume", "create", "after-renewal"]);
    converged(&c, &[0, 1], |i| volumes(&c, i).contains("after-renewal"));
}
