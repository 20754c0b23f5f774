//! The `bolt` binary without an agent. (The agent's lifecycle is tested end to end in the
//! `bolt-tests` crate, `tests/tests/agent.rs`; having a test here also makes `cargo test` build
//! the binary those tests run.)
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn bolt(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bolt"))
        .env_remove("BOLT_SOCKET")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn version_prints_the_crate_version_without_an_agent() {
    let out = bolt(&["--socket", "/nonexistent/bolt.sock", "version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("bolt {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn client_commands_without_an_agent_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("bolt.sock");
    let sock = sock.to_str().unwrap();
    for args in [
        vec!["info"],
        vec!["events"],
        vec!["events", "--follow"],
        vec!["events", "verify"],
        vec!["state", "--hash"],
    ] {
        let out = bolt(&[&["--socket", sock], args.as_slice()].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("bolt: cannot reach the bolt agent at {sock}: ")),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn the_socket_comes_from_bolt_socket_when_no_flag_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("env.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_bolt"))
        .env("BOLT_SOCKET", &sock)
        .arg("info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&sock.display().to_string()), "{stderr}");
}

#[test]
fn bad_arguments_are_refused() {
    let out = bolt(&["state", "--at", "minus-one"]);
    assert!(!out.status.success());
    let out = bolt(&["events", "--format", "yaml"]);
    assert!(!out.status.success());
}

#[test]
fn a_bad_default_network_is_refused_before_the_agent_starts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let sock = dir.path().join("bolt.sock");
    let out = bolt(&[
        "--socket",
        sock.to_str().unwrap(),
        "agent",
        "--root",
        root.to_str().unwrap(),
        "--default-network",
        "no such/net",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--default-network"), "{stderr}");
    assert!(stderr.contains("invalid network name"), "{stderr}");
    assert!(!root.exists() && !sock.exists(), "nothing made");
}
