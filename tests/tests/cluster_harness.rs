//! The multi-node harness itself ([`bolt_tests::Cluster`]): agents in namespaces of their own
//! on one bridge, real packet drops for partitions and a line topology, `kill -9` and restart,
//! and nothing left after drop (also when the test panics).
//!
//! Needs root (namespaces, veths, nftables). Skipped with a message otherwise; failed instead
//! when `BOLT_REQUIRE_ROOT_TESTS=1` (CI).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use bolt_tests::Cluster;

/// A started cluster of `n` agents under `dir`.
fn started(dir: &Path, n: usize) -> Cluster {
    let mut c = Cluster::new(dir, n).unwrap();
    c.start_all(|_, _| Vec::new()).unwrap();
    c
}

/// Every ordered pair `(i, j)`, `i != j`, whose reachability is not `expect(i, j)`.
fn wrong_pairs(c: &Cluster, expect: impl Fn(usize, usize) -> bool) -> Vec<(usize, usize, bool)> {
    let mut wrong = Vec::new();
    for i in 0..c.len() {
        for j in 0..c.len() {
            if i == j {
                continue;
            }
            let got = c.reaches(i, j).unwrap();
            if got != expect(i, j) {
                wrong.push((i, j, got));
            }
        }
    }
    wrong
}

/// What a cluster made, to look for after it is gone.
struct Made {
    tag: String,
    netns: Vec<String>,
    pids: Vec<u32>,
}

fn made(c: &Cluster) -> Made {
    Made {
        tag: c.tag().to_owned(),
        netns: c.netns_names().to_vec(),
        pids: c.agent_pids().into_iter().flatten().collect(),
    }
}

/// What of `m` is still on the machine: namespaces, links named with its tag in this
/// namespace, the agent processes.
fn left_of(m: &Made) -> Vec<String> {
    let mut left = Vec::new();
    let listed = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let listed: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for ns in &m.netns {
        if Path::new("/run/netns").join(ns).exists() || listed.contains(&ns.as_str()) {
            left.push(format!("netns {ns}"));
        }
    }
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        if line.contains(&format!("bc{}", m.tag)) {
            left.push(format!("link {line}"));
        }
    }
    for pid in &m.pids {
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("agent") {
                left.push(format!("process {pid}: {cmd}"));
            }
        }
    }
    left
}

#[test]
fn three_agents_in_three_namespaces_answer_and_reach_each_other() {
    if !bolt_skip::root("three_agents_in_three_namespaces_answer_and_reach_each_other") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = started(dir.path(), 3);
    let mut sockets = std::collections::BTreeSet::new();
    let mut roots = std::collections::BTreeSet::new();
    for (i, n) in c.nodes().iter().enumerate() {
        n.node.ok(&["info"]);
        assert!(sockets.insert(n.node.socket().to_path_buf()), "node {i}");
        assert!(roots.insert(n.node.root().to_path_buf()), "node {i}");
        // The agent runs in its node's namespace, not in the test's.
        let pid = n.node.pid().unwrap();
        let agent_ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        let node_ns =
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(n.netns_path()).unwrap());
        assert_eq!(
            agent_ns.to_string_lossy(),
            format!("net:[{node_ns}]"),
            "node {i}'s agent"
        );
        let addr = format!("{}/24", n.addr);
        let shown = n
            .exec(&["ip", "-o", "addr", "show", "dev", &n.dev])
            .unwrap();
        assert!(
            String::from_utf8_lossy(&shown.stdout).contains(&addr),
            "node {i} has {addr}"
        );
        assert_eq!(n.listen_addr(7000).to_string(), format!("{}:7000", n.addr));
    }
    assert_eq!(wrong_pairs(&c, |_, _| true), vec![], "all reach all");
}

#[test]
fn a_partition_drops_traffic_between_the_halves_and_heal_restores_it() {
    if !bolt_skip::root("a_partition_drops_traffic_between_the_halves_and_heal_restores_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = started(dir.path(), 3);
    c.partition(&[0], &[1, 2]).unwrap();
    let side = |i: usize| i == 0;
    assert_eq!(
        wrong_pairs(&c, |i, j| side(i) == side(j)),
        vec![],
        "{{0}} | {{1, 2}}"
    );
    // The agents still answer their (unix socket) API.
    for n in c.nodes() {
        n.node.ok(&["info"]);
    }
    c.heal().unwrap();
    assert_eq!(wrong_pairs(&c, |_, _| true), vec![], "healed");
    // Partitioning twice and healing once still heals.
    c.partition(&[0, 1], &[2]).unwrap();
    c.partition(&[0, 1], &[2]).unwrap();
    assert!(!c.reaches(1, 2).unwrap());
    c.heal().unwrap();
    assert!(c.reaches(1, 2).unwrap());
}

#[test]
fn a_line_topology_lets_the_ends_reach_only_the_middle() {
    if !bolt_skip::root("a_line_topology_lets_the_ends_reach_only_the_middle") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::new(dir.path(), 3).unwrap();
    // A - B - C by hand: A and C cannot reach each other, both reach B.
    c.isolate_pair(0, 2).unwrap();
    let line = |i: usize, j: usize| i.abs_diff(j) == 1;
    assert_eq!(wrong_pairs(&c, line), vec![], "A - B - C");
    c.connect_pair(0, 2).unwrap();
    assert_eq!(wrong_pairs(&c, |_, _| true), vec![], "connected again");
    // Connecting a pair that was never isolated changes nothing.
    c.connect_pair(0, 1).unwrap();
    // The same by `line()`.
    c.line().unwrap();
    assert_eq!(wrong_pairs(&c, line), vec![], "line()");
    c.heal().unwrap();
    assert!(c.reaches(0, 2).unwrap());
}

#[test]
fn kill9_and_restart_an_agent_answers_again_on_the_same_root() {
    if !bolt_skip::root("kill9_and_restart_an_agent_answers_again_on_the_same_root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 2).unwrap();
    // Extra arguments reach each agent, and stay for its restart.
    c.start_all(|i, _| vec!["--snapshot-every".into(), format!("{}", i + 7)])
        .unwrap();
    let cmdline = |c: &Cluster, i: usize| {
        let pid = c.node(i).node.pid().unwrap();
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        String::from_utf8_lossy(&raw).replace('\0', " ")
    };
    assert!(
        cmdline(&c, 0).contains("--snapshot-every 7"),
        "{}",
        cmdline(&c, 0)
    );
    assert!(
        cmdline(&c, 1).contains("--snapshot-every 8"),
        "{}",
        cmdline(&c, 1)
    );
    assert!(cmdline(&c, 1).contains("--default-network none"));
    let before = c.node(1).node.pid().unwrap();
    let status = c.kill9(1).unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(c.node(1).node.bolt(&["info"]).unwrap().code != Some(0));
    assert!(
        c.node(0).node.bolt(&["info"]).unwrap().ok(),
        "node 0 lives on"
    );
    c.restart(1).unwrap();
    let after = c.node(1).node.pid().unwrap();
    assert_ne!(before, after);
    c.node(1).node.ok(&["info"]);
    assert!(
        cmdline(&c, 1).contains("--snapshot-every 8"),
        "{}",
        cmdline(&c, 1)
    );
    assert!(c.reaches(0, 1).unwrap(), "its namespace kept its address");
}

#[test]
fn nothing_is_left_after_drop_or_a_panic() {
    if !bolt_skip::root("nothing_is_left_after_drop_or_a_panic") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = started(dir.path(), 3);
    c.partition(&[0], &[1, 2]).unwrap();
    let m = made(&c);
    assert_eq!(m.netns.len(), 4, "a switch and 3 nodes");
    assert_eq!(m.pids.len(), 3);
    assert_eq!(
        left_of(&m).len(),
        7,
        "all there before drop: {:?}",
        left_of(&m)
    );
    drop(c);
    assert_eq!(left_of(&m), Vec::<String>::new(), "after drop");

    // A test that panics with a running cluster: unwinding drops it.
    let seen = Arc::new(Mutex::new(None));
    let seen2 = Arc::clone(&seen);
    let path = dir.path().join("panics");
    let res = std::thread::spawn(move || {
        let c = started(&path, 2);
        *seen2.lock().unwrap() = Some(made(&c));
        panic!("a failing test");
    })
    .join();
    assert!(res.is_err());
    let m = seen.lock().unwrap().take().unwrap();
    assert_eq!(m.pids.len(), 2);
    assert_eq!(left_of(&m), Vec::<String>::new(), "after a panic");
}
