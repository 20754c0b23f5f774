//! End to end: the built `bolt` binary as an agent on a temp root and socket, driven by the
//! `bolt` CLI (see the crate doc for how the binary is found).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc;

use bolt_agent::api::ROUTES;
use bolt_agent::client::Client;
use bolt_events::Envelope;
use bolt_tests::{wait_for_exit, Node, Output, PATIENCE};
use nix::sys::signal::Signal;
use redb::{ReadableTable, TableDefinition};
use serde_json::Value;

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(out.ok(), "bolt failed: {out:?}");
    out.lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn events(node: &Node, since: u64) -> Vec<Value> {
    json_lines(
        &node
            .bolt(&["events", "--format", "json", "--since", &since.to_string()])
            .unwrap(),
    )
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

fn cursors(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["cursor"].as_u64().unwrap())
        .collect()
}

fn info(node: &Node) -> Value {
    let out = node.bolt(&["info", "--format", "json"]).unwrap();
    assert!(out.ok(), "{out:?}");
    serde_json::from_str(&out.stdout).unwrap()
}

/// The single line a failed command printed on stderr.
fn one_error_line(out: &Output) -> &str {
    assert!(!out.ok(), "expected a failure: {out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr: {:?}",
        out.stderr
    );
    lines[0]
}

#[test]
fn agent_answers_info_and_events_then_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), "a").unwrap();
    node.start().unwrap();

    let out = node.bolt(&["info"]).unwrap();
    assert!(out.ok(), "{out:?}");
    let id = info(&node)["node_id"].as_str().unwrap().to_string();
    assert!(
        out.stdout.contains(&id),
        "the table shows the node id: {}",
        out.stdout
    );

    let evs = events(&node, 0);
    assert_eq!(kinds(&evs), ["node.started"]);
    assert_eq!(evs[0]["cursor"], 1);
    assert_eq!(evs[0]["origin"], id.as_str());
    assert_eq!(
        evs[0]["payload"]["node"]["started"]["version"],
        env!("CARGO_PKG_VERSION")
    );

    let table = node.bolt(&["events"]).unwrap();
    assert!(table.ok());
    let rows = table.lines();
    assert!(
        rows[0].starts_with("CURSOR") && rows[0].contains("KIND"),
        "{rows:?}"
    );
    assert!(
        rows[1].starts_with('1') && rows[1].contains("node.started"),
        "{rows:?}"
    );
    assert_eq!(
        rows[0].find("KIND"),
        rows[1].find("node.started"),
        "columns are aligned: {rows:?}"
    );

    let status = node.stop().unwrap();
    assert!(
        status.success(),
        "SIGTERM exits 0: {status:?}\n{}",
        node.agent_log()
    );
    assert!(!node.socket().exists(), "the socket is removed on stop");

    let out = node.bolt(&["info"]).unwrap();
    assert_eq!(out.code, Some(1));
    let line = one_error_line(&out);
    assert!(
        line.starts_with(&format!(
            "bolt: cannot reach the bolt agent at {}: ",
            node.socket().display()
        )),
        "{line}"
    );
}

#[test]
fn sigint_stops_the_agent_cleanly_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), "a").unwrap();
    node.start().unwrap();
    let status = node.stop_with(Signal::SIGINT).unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!node.socket().exists());
    node.start().unwrap();
    let evs = events(&node, 0);
    assert_eq!(evs[1]["kind"], "node.stopped");
    assert_eq!(evs[1]["payload"]["node"]["stopped"]["reason"], "SIGINT");
}

#[test]
fn a_second_agent_on_the_same_root_exits_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Node::new(dir.path(), "a").unwrap();
    first.start().unwrap();

    let mut second = first.spawn_agent().unwrap();
    let status = wait_for_exit(&mut second, PATIENCE).expect("the second agent exits");
    assert!(!status.success(), "{status:?}");
    let log = first.agent_log();
    let refusal: Vec<&str> = log.lines().filter(|l| l.starts_with("bolt: ")).collect();
    assert_eq!(refusal.len(), 1, "{log}");
    assert!(refusal[0].contains("already running"), "{}", refusal[0]);
    assert!(
        refusal[0].contains(&first.root().display().to_string()),
        "{}",
        refusal[0]
    );

    assert!(first.is_running());
    assert!(
        first.socket().exists(),
        "the first agent's socket is left alone"
    );
    assert!(
        first.bolt(&["info"]).unwrap().ok(),
        "the first agent still answers"
    );
    assert_eq!(
        kinds(&events(&first, 0)),
        ["node.started"],
        "the loser wrote nothing"
    );
}

#[test]
fn restart_records_stop_and_start_keeps_the_id_and_live_state_matches_time_travel() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), "a").unwrap();
    node.start().unwrap();
    let before = info(&node);
    assert!(node.stop().unwrap().success());
    node.start().unwrap();
    let after = info(&node);

    assert_eq!(
        before["node_id"], after["node_id"],
        "the node key survives a restart"
    );
    let evs = events(&node, 0);
    assert_eq!(
        kinds(&evs),
        ["node.started", "node.stopped", "node.started"]
    );
    assert_eq!(cursors(&evs), [1, 2, 3]);
    assert_eq!(evs[1]["payload"]["node"]["stopped"]["reason"], "SIGTERM");
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e["origin"], after["node_id"]);
        assert_eq!(e["seq"], i as u64 + 1);
    }
    assert_eq!(
        evs[1]["prev"], evs[0]["hash"],
        "the chain links across the restart"
    );
    assert_eq!(evs[2]["prev"], evs[1]["hash"]);

    assert_eq!(after["head"], 3);
    let cursor = after["state_cursor"].as_u64().unwrap().to_string();
    let at = node.bolt(&["state", "--at", &cursor, "--hash"]).unwrap();
    assert!(at.ok(), "{at:?}");
    assert_eq!(at.stdout.trim(), after["state_hash"].as_str().unwrap());
    let at2 = node.bolt(&["state", "--at", "2", "--hash"]).unwrap();
    assert_ne!(
        at2.stdout.trim(),
        at.stdout.trim(),
        "the state differs before the restart"
    );

    let id = after["node_id"].as_str().unwrap();
    let state_at = |c: &str| -> Value {
        let out = node
            .bolt(&["state", "--at", c, "--format", "json"])
            .unwrap();
        assert!(out.ok(), "{out:?}");
        serde_json::from_str(&out.stdout).unwrap()
    };
    assert_eq!(state_at("2")["state"]["nodes"][id]["up"], false);
    assert_eq!(state_at("3")["state"]["nodes"][id]["up"], true);
    assert_eq!(state_at("3")["state"]["nodes"][id]["starts"], 2);

    let table = node.bolt(&["state"]).unwrap();
    assert!(table.ok());
    assert!(
        table.stdout.contains(after["state_hash"].as_str().unwrap()),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("nodes (1)"), "{}", table.stdout);

    let beyond = node.bolt(&["state", "--at", "99"]).unwrap();
    assert!(
        one_error_line(&beyond).contains("beyond the log head 3"),
        "{beyond:?}"
    );
}

/// Lines of a child's stdout, read on a thread, so the test can wait for each with a guard.
fn line_reader(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_event(lines: &mpsc::Receiver<String>) -> Value {
    let line = lines.recv_timeout(PATIENCE).expect("an event line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn follow_prints_live_events_and_resumes_across_a_restart_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), "a").unwrap();
    node.start().unwrap();

    let mut follower = node
        .spawn_bolt(&["events", "--follow", "--format", "json"])
        .unwrap();
    let lines = line_reader(&mut follower);
    let first = next_event(&lines);
    assert_eq!(
        (first["cursor"].as_u64(), first["kind"].as_str()),
        (Some(1), Some("node.started"))
    );

    // Live: the stop is appended while the follower is connected.
    assert!(node.stop().unwrap().success());
    let stopped = next_event(&lines);
    assert_eq!(
        (stopped["cursor"].as_u64(), stopped["kind"].as_str()),
        (Some(2), Some("node.stopped"))
    );

    // The agent is gone; the follower reconnects and resumes after cursor 2.
    node.start().unwrap();
    let restarted = next_event(&lines);
    assert_eq!(
        (restarted["cursor"].as_u64(), restarted["kind"].as_str()),
        (Some(3), Some("node.started")),
        "no duplicate of cursors 1-2, no gap"
    );

    let _ = follower.kill();
    let _ = follower.wait();
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(rest.is_empty(), "nothing else was printed: {rest:?}");

    // Resuming from a cursor over the WebSocket directly.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let resumed = rt.block_on(async {
        let mut stream = Client::new(node.socket())
            .stream(bolt_events::Cursor(1))
            .await
            .unwrap();
        let a = stream.next().await.unwrap().unwrap();
        let b = stream.next().await.unwrap().unwrap();
        (a.cursor, b.cursor)
    });
    assert_eq!(resumed, (2, 3));
    assert_eq!(cursors(&events(&node, 2)), [3]);
}

const EVENTS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("events");

/// Flip one bit of the signature of the event at `cursor`, as a damaged or forged file would.
fn forge_signature(db_path: &Path, cursor: u64) {
    let db = redb::Database::open(db_path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(EVENTS).unwrap();
        let mut env = Envelope::from_bytes(table.get(cursor).unwrap().unwrap().value()).unwrap();
        env.sig.as_mut().expect("the event ends its run: signed")[0] ^= 1;
        table.insert(cursor, env.to_bytes().as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn events_verify_passes_on_a_sound_log_and_fails_on_a_forged_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), "a").unwrap();
    node.start().unwrap();
    let ok = node.bolt(&["events", "verify"]).unwrap();
    assert!(ok.ok(), "{ok:?}");
    assert!(ok.stdout.starts_with("ok: 1 events"), "{}", ok.stdout);
    assert!(node.stop().unwrap().success());

    forge_signature(&node.root().join("events.redb"), 1);
    node.start().unwrap();
    let bad = node.bolt(&["events", "verify"]).unwrap();
    assert_eq!(bad.code, Some(1), "{bad:?}");
    assert!(bad.stdout.starts_with("FAULTY"), "{}", bad.stdout);
    assert!(
        bad.stdout.contains("cursor 1"),
        "the fault names the event: {}",
        bad.stdout
    );
    assert!(one_error_line(&bad).contains("fault"), "{bad:?}");

    let json = node
        .bolt(&["events", "verify", "--format", "json"])
        .unwrap();
    assert_eq!(json.code, Some(1));
    let report: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert!(!report["faults"].as_array().unwrap().is_empty());
}

#[test]
fn metrics_and_openapi_are_served_on_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), "a").unwrap();
    node.start().unwrap();
    let client = Client::new(node.socket());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (metrics, openapi) = rt.block_on(async {
        let (status, body) = client.get("/metrics").await.unwrap();
        assert!(status.is_success());
        let openapi: Value = client.get_json("/v1/openapi.json").await.unwrap();
        (String::from_utf8(body.to_vec()).unwrap(), openapi)
    });
    for needle in [
        "bolt_events_appended_total{kind=\"node.started\"} 1",
        "bolt_event_append_seconds",
        "bolt_log_head 1",
        "bolt_http_requests_total{method=\"GET\",route=\"/v1/info\",status=\"200\"}",
    ] {
        assert!(metrics.contains(needle), "no {needle} in:\n{metrics}");
    }
    let paths = openapi["paths"].as_object().unwrap();
    for route in ROUTES {
        assert!(
            paths.contains_key(route),
            "{route} missing from the OpenAPI document"
        );
    }
    assert_eq!(paths.len(), ROUTES.len());
}

#[test]
fn a_stale_socket_file_is_replaced_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), "a").unwrap();
    // A socket file nobody listens on, as a crashed agent leaves behind.
    drop(std::os::unix::net::UnixListener::bind(node.socket()).unwrap());
    assert!(node.socket().exists());
    node.start().unwrap();
    assert!(node.bolt(&["info"]).unwrap().ok());
}

#[test]
fn an_agent_on_another_root_does_not_steal_a_live_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Node::new(dir.path(), "a").unwrap();
    first.start().unwrap();
    let id = info(&first)["node_id"].clone();

    let out = bolt_tests::bolt_command(first.bin())
        .arg("--socket")
        .arg(first.socket())
        .args(["agent", "--root"])
        .arg(dir.path().join("other-root"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("served by another bolt agent"), "{stderr}");
    assert_eq!(
        info(&first)["node_id"],
        id,
        "the first agent still owns the socket"
    );
}

#[test]
fn version_needs_no_agent() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "a").unwrap();
    let out = node.bolt(&["version"]).unwrap();
    assert!(out.ok(), "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("bolt {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn with_snapshots_the_restored_live_state_matches_time_travel() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), "a")
        .unwrap()
        .with_agent_args(&["--snapshot-every", "1"]);
    for _ in 0..3 {
        node.start().unwrap();
        assert!(node.stop().unwrap().success());
    }
    node.start().unwrap();
    let live = info(&node);
    assert_eq!(live["head"], 7);
    let replay = node.bolt(&["state", "--at", "7", "--hash"]).unwrap();
    assert_eq!(replay.stdout.trim(), live["state_hash"].as_str().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let metrics = rt.block_on(async {
        let (_, body) = Client::new(node.socket()).get("/metrics").await.unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    });
    assert!(metrics.contains("bolt_snapshots_total 1"), "{metrics}");
}
