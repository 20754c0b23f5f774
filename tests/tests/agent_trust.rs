//! End to end: whom the agent trusts (issue 10, items 4 to 6). The API socket is `root:bolt`
//! 0660 and admits only root, the agent's user and the `bolt` group whatever its mode; the agent
//! refuses a socket path that is a link or sits in a directory others may write; the CLI refuses
//! a socket of another user; the agent root must be the agent user's and hold no links; and a
//! root whose capsules outlive their key or log needs `--start-over`.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bolt_agent::client::Client;
use bolt_tests::{bolt_command, wait_for_exit, Node, PATIENCE};

/// A uid no account on the test machine has.
const STRANGER: u32 = 4242;

/// Start the agent of `node`, expecting it to refuse: the last line of its log.
fn refused_start(node: &Node) -> String {
    let mut child = node.spawn_agent().unwrap();
    let Some(status) = wait_for_exit(&mut child, PATIENCE) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the agent did not refuse to start: {}", node.agent_log());
    };
    assert!(!status.success(), "the agent started: {}", node.agent_log());
    let log = node.agent_log();
    log.lines().last().unwrap_or_default().to_string()
}

/// Start and stop the agent once, so the root has its key, log and `capsules`.
fn first_start(node: &mut Node) {
    node.start().unwrap();
    assert!(node.stop().unwrap().success());
}

/// A copy of the `bolt` binary any user may run (the checkout may sit below /root).
fn public_bin(dir: &Path, node: &Node) -> PathBuf {
    let bin = dir.join("bolt");
    std::fs::copy(node.bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// `bolt --socket SOCKET info` as uid/gid [`STRANGER`] with supplementary `groups`.
fn info_as_stranger(bin: &Path, socket: &Path, groups: &[u32]) -> std::process::Output {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={STRANGER}"))
        .arg(format!("--regid={STRANGER}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.arg(bin).arg("--socket").arg(socket).arg("info");
    cmd.output().unwrap()
}

fn refused_connections(node: &Node) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_, body) = rt
        .block_on(Client::new(node.socket()).get("/metrics"))
        .unwrap();
    String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .find(|l| l.starts_with("bolt_api_connections_refused_total"))
        .unwrap_or("no bolt_api_connections_refused_total")
        .to_string()
}

#[test]
fn the_socket_is_root_bolt_0660_and_admits_only_root_and_the_group() {
    let test = "the_socket_is_root_bolt_0660_and_admits_only_root_and_the_group";
    if !bolt_skip::root(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut node = Node::new(dir.path(), "a").unwrap();
    node.start().unwrap();
    let bolt = nix::unistd::Group::from_name("bolt")
        .unwrap()
        .expect("the agent created group bolt")
        .gid
        .as_raw();
    let meta = std::fs::symlink_metadata(node.socket()).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o660, 0, bolt)
    );
    assert_eq!(
        refused_connections(&node),
        "bolt_api_connections_refused_total 0"
    );

    // Even when someone widens the file, the peer check holds: a stranger is refused...
    std::fs::set_permissions(node.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let bin = public_bin(dir.path(), &node);
    let out = info_as_stranger(&bin, node.socket(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a stranger was served");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert_eq!(
        refused_connections(&node),
        "bolt_api_connections_refused_total 1"
    );
    // ... and a member of the group (a supplementary group) is served.
    let out = info_as_stranger(&bin, node.socket(), &[bolt]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_agent_refuses_a_symlinked_socket_or_one_in_a_directory_others_may_write() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "a").unwrap();
    let target = dir.path().join("elsewhere.sock");
    drop(std::os::unix::net::UnixListener::bind(&target).unwrap());
    std::os::unix::fs::symlink(&target, node.socket()).unwrap();
    let line = refused_start(&node);
    assert!(line.contains("is a symbolic link"), "{line}");
    assert!(target.exists(), "the link's target is left alone");
    std::fs::remove_file(node.socket()).unwrap();

    let home = node.socket().parent().unwrap().to_path_buf();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
    let line = refused_start(&node);
    assert!(line.contains("others may replace the socket"), "{line}");
    // Sticky (as /tmp): others cannot replace what is ours.
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut node = node;
    node.start().unwrap();
}

#[test]
fn the_cli_refuses_a_socket_of_another_user() {
    let test = "the_cli_refuses_a_socket_of_another_user";
    if !bolt_skip::root(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("planted.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::os::unix::fs::lchown(&socket, Some(STRANGER), Some(STRANGER)).unwrap();
    let mut cli = bolt_command(&bolt_tests::bolt_bin().unwrap())
        .arg("--socket")
        .arg(&socket)
        .arg("info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = wait_for_exit(&mut cli, PATIENCE) else {
        let _ = cli.kill();
        let _ = cli.wait();
        panic!("the CLI talked to the planted socket (and waits for its answer)");
    };
    let mut stderr = String::new();
    cli.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("belongs to uid {STRANGER}, neither root nor you")),
        "{stderr}"
    );
    assert!(
        listener.accept().is_err(),
        "the CLI connected to the planted socket"
    );
}

#[test]
fn a_root_of_another_user_or_that_others_may_write_is_refused() {
    let test = "a_root_of_another_user_or_that_others_may_write_is_refused";
    if !bolt_skip::root(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "a").unwrap();
    std::fs::create_dir(node.root()).unwrap();
    std::fs::set_permissions(node.root(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(node.root(), Some(STRANGER), None).unwrap();
    let line = refused_start(&node);
    assert!(
        line.contains(&format!("belongs to uid {STRANGER}")),
        "{line}"
    );

    std::os::unix::fs::chown(node.root(), Some(0), None).unwrap();
    std::fs::set_permissions(node.root(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let line = refused_start(&node);
    assert!(line.contains("group or others may write it"), "{line}");
    assert!(
        !node.root().join("node.key").exists(),
        "nothing was written to the root"
    );
}

#[test]
fn links_planted_in_the_root_are_refused_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), "a").unwrap();
    first_start(&mut node);

    // A `capsules` link: the agent used to clean up every directory of its target.
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(victim.join("keepme")).unwrap();
    std::fs::write(victim.join("keepme/data"), "keep").unwrap();
    let capsules = node.root().join("capsules");
    std::fs::remove_dir(&capsules).unwrap();
    std::os::unix::fs::symlink(&victim, &capsules).unwrap();
    let line = refused_start(&node);
    assert!(line.contains("capsules is a symbolic link"), "{line}");
    assert!(victim.join("keepme/data").exists(), "the target is intact");
    std::fs::remove_file(&capsules).unwrap();

    // An `agent.lock` link: the agent used to truncate and write its target.
    let lock = node.root().join("agent.lock");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(victim.join("keepme/data"), &lock).unwrap();
    let line = refused_start(&node);
    assert!(line.contains("agent.lock is a symbolic link"), "{line}");
    assert_eq!(
        std::fs::read_to_string(victim.join("keepme/data")).unwrap(),
        "keep"
    );
}

#[test]
fn a_node_key_of_another_user_is_refused() {
    let test = "a_node_key_of_another_user_is_refused";
    if !bolt_skip::root(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), "a").unwrap();
    first_start(&mut node);
    let key = node.root().join("node.key");
    std::os::unix::fs::chown(&key, Some(STRANGER), None).unwrap();
    let line = refused_start(&node);
    assert!(
        line.contains(&format!("belongs to uid {STRANGER}")),
        "{line}"
    );
}

#[test]
fn capsules_without_their_key_or_log_are_kept_until_start_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), "a").unwrap();
    first_start(&mut node);
    // A capsule's directory (its writable layer lives in it).
    let capsule = node.root().join("capsules/0123456789abcdef");
    std::fs::create_dir_all(&capsule).unwrap();
    std::fs::write(capsule.join("config.json"), "{}").unwrap();

    let log = node.root().join("events.redb");
    std::fs::rename(&log, dir.path().join("events.redb.saved")).unwrap();
    let line = refused_start(&node);
    assert!(
        line.contains("has 1 capsule(s)") && line.contains("--start-over"),
        "{line}"
    );
    assert!(line.contains("events.redb"), "{line}");
    assert!(capsule.join("config.json").exists());

    std::fs::remove_file(node.root().join("node.key")).unwrap();
    let line = refused_start(&node);
    assert!(line.contains("node.key and"), "{line}");
    assert!(capsule.join("config.json").exists());

    // Told to: a new key, an empty log, and the capsule no event records is removed.
    let mut node = node.with_agent_args(&["--start-over"]);
    node.start().unwrap();
    assert!(!capsule.exists(), "{}", node.agent_log());
}
