//! End to end: a rootless agent. A non-root user (`bolt-rootless-test`, with a range in
//! `/etc/subuid` and `/etc/subgid`; created here when missing) runs `bolt agent` on its default
//! per-user root and socket, pulls busybox from the loopback registry and runs capsules in a
//! user namespace: root inside is the user outside, ids from 1 are its subordinate range, the
//! hostname is the capsule's own, limits are ignored with a warning and bridge networking is
//! refused.
//!
//! Needs root (to create the user and drop to it), `setpriv` and the `uidmap` helpers, and the
//! test registry (`BOLT_TEST_REGISTRY`); skipped with a message otherwise, failed instead when
//! `BOLT_REQUIRE_ROOT_TESTS=1` (CI).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bolt_tests::{bolt_bin, root_and_registry, supervisors_under, wait_for_exit, PATIENCE};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const USER: &str = "bolt-rootless-test";
/// The subordinate range given to the test user when it has none.
const SUB_RANGE: &str = "524288-589823";

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The first `start:count` of `file` for the user.
fn sub_range(file: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut p = l.split(':');
        (p.next()? == USER).then_some(())?;
        Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?))
    })
}

/// The test user (created with a subordinate range when missing): uid, gid, uid range.
fn test_user() -> (u32, u32, (u32, u32)) {
    let exists = |_: ()| run(Command::new("id").arg("-u").arg(USER)).status.success();
    if !exists(()) {
        let out = run(Command::new("useradd").args([
            "--system",
            "--create-home",
            "--shell",
            "/usr/sbin/nologin",
            USER,
        ]));
        // Another test process may have created it meanwhile.
        assert!(exists(()), "useradd {USER}: {}", text(&out.stderr));
    }
    if sub_range("/etc/subuid").is_none() || sub_range("/etc/subgid").is_none() {
        let out = run(Command::new("usermod").args([
            "--add-subuids",
            SUB_RANGE,
            "--add-subgids",
            SUB_RANGE,
            USER,
        ]));
        assert!(out.status.success(), "usermod: {}", text(&out.stderr));
    }
    let id = |flag: &str| -> u32 {
        let out = run(Command::new("id").arg(flag).arg(USER));
        text(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"), sub_range("/etc/subuid").unwrap())
}

/// Everything the test started, ended when it ends (however it ends): the agent (by pid),
/// the supervisors of its root (by pid), then the directory (by `TempDir`, as root).
struct Rootless {
    bin: PathBuf,
    home: PathBuf,
    agent: Option<Child>,
    uid: u32,
    gid: u32,
    _dir: tempfile::TempDir,
}

impl Rootless {
    fn root(&self) -> PathBuf {
        self.home.join(".local/share/bolt")
    }

    fn socket(&self) -> PathBuf {
        self.home.join("run/bolt.sock")
    }

    /// `bolt ARGS` as the test user, with only its own environment (`HOME`,
    /// `XDG_RUNTIME_DIR`): the root and the socket are the rootless defaults.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("env")
            .arg("-i")
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!(
                "XDG_RUNTIME_DIR={}",
                self.home.join("run").display()
            ))
            .arg("PATH=/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("BOLT_LOG=info")
            .arg(&self.bin)
            .args(args);
        c
    }

    fn bolt(&self, args: &[&str]) -> std::process::Output {
        run(&mut self.command(args))
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.home.join("agent.log")).unwrap();
        let child = self
            .command(&["agent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while !self.bolt(&["info"]).status.success() {
            let died = self.agent.as_mut().unwrap().try_wait().unwrap();
            assert!(
                died.is_none() && Instant::now() < deadline,
                "the rootless agent did not answer ({died:?}): {}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.home.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Rootless {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            // setpriv and env exec: the child's pid is the agent's.
            let _ = kill(Pid::from_raw(a.id() as i32), Signal::SIGTERM);
            if wait_for_exit(&mut a, Duration::from_secs(30)).is_none() {
                let _ = a.kill();
                let _ = a.wait();
            }
        }
        for pid in supervisors_under(&self.root().join("capsules")) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        // The capsules' mounts lived in their own mount namespaces; the directory goes with
        // `_dir` (removed as root: the capsules' files belong to subordinate ids).
    }
}

/// Files named `name` under `dir`.
fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name() == name {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink()) {
            out.extend(find(&p, name));
        }
    }
    out
}

#[test]
fn a_non_root_user_runs_busybox_in_a_user_namespace() {
    let test = "a_non_root_user_runs_busybox_in_a_user_namespace";
    let Some(registry) = root_and_registry(test) else {
        return;
    };
    for tool in ["setpriv", "newuidmap", "newgidmap", "useradd"] {
        let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file());
        assert!(
            found,
            "{test}: {tool} is missing (apt-get install uidmap util-linux passwd)"
        );
    }
    let (uid, gid, (sub_start, sub_count)) = test_user();
    assert_ne!(uid, 0);

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    nix::unistd::chown(
        &home,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap();
    // A copy the user can reach: the checkout may sit below a directory only root may enter
    // (/root), which would make the user's exec fail with EACCES.
    let bin = dir.path().join("bolt");
    std::fs::copy(bolt_bin().unwrap(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut env = Rootless {
        bin,
        home,
        agent: None,
        uid,
        gid,
        _dir: dir,
    };
    env.start();
    // The per-user defaults: the root under ~/.local/share, the socket in XDG_RUNTIME_DIR.
    let root_meta = std::fs::metadata(env.root()).unwrap();
    assert_eq!(root_meta.uid(), uid, "the agent root belongs to the user");
    assert!(env.socket().exists(), "{}", env.agent_log());
    let sock = std::fs::symlink_metadata(env.socket()).unwrap();
    assert_eq!(
        (sock.mode() & 0o7777, sock.uid()),
        (0o600, uid),
        "a rootless agent's socket is its user's alone"
    );

    let image = format!("{registry}/bolt-test/busybox:latest");
    let out = env.bolt(&["pull", &image]);
    assert!(out.status.success(), "pull: {}", text(&out.stderr));

    // Root inside.
    let out = env.bolt(&["run", "--rm", &image, "id", "-u"]);
    assert!(out.status.success(), "run id: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "0");

    // The maps: root is the user, 1.. the subordinate range.
    let out = env.bolt(&["run", "--rm", &image, "cat", "/proc/self/uid_map"]);
    assert!(out.status.success(), "uid_map: {}", text(&out.stderr));
    let lines: Vec<Vec<u32>> = text(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        lines,
        vec![vec![0, uid, 1], vec![1, sub_start, sub_count]],
        "uid_map"
    );

    // Its own hostname; the host's stays.
    let host = text(&run(&mut Command::new("hostname")).stdout);
    let out = env.bolt(&[
        "run",
        "--rm",
        "--hostname",
        "rootless-cap",
        &image,
        "hostname",
    ]);
    assert_eq!(
        text(&out.stdout).trim(),
        "rootless-cap",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&run(&mut Command::new("hostname")).stdout), host);

    // Files made inside belong on the host to the user (root inside) or to a subordinate id,
    // never to the host's root.
    let out = env.bolt(&[
        "run",
        "--name",
        "owner",
        &image,
        "sh",
        "-c",
        "touch /by-root /by-1234 && chown 1234:1234 /by-1234",
    ]);
    assert!(out.status.success(), "owner: {}", text(&out.stderr));
    let capsules = env.root().join("capsules");
    let by_root = find(&capsules, "by-root");
    let by_user = find(&capsules, "by-1234");
    assert_eq!(
        (by_root.len(), by_user.len()),
        (1, 1),
        "{by_root:?} {by_user:?}"
    );
    let m = std::fs::metadata(&by_root[0]).unwrap();
    assert_eq!((m.uid(), m.gid()), (uid, gid), "root inside is the user");
    let m = std::fs::metadata(&by_user[0]).unwrap();
    assert_eq!(
        m.uid(),
        sub_start + 1233,
        "uid 1234 inside is subuid start + 1233"
    );
    assert_ne!(m.uid(), 0);
    let out = env.bolt(&["rm", "owner"]);
    assert!(out.status.success(), "rm: {}", text(&out.stderr));

    // A named volume works too (the bind is cloned inside the user namespace).
    let out = env.bolt(&[
        "run",
        "--rm",
        "-v",
        "rl-data:/data",
        &image,
        "sh",
        "-c",
        "echo kept > /data/f && cat /data/f",
    ]);
    assert!(out.status.success(), "volume: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "kept");

    // No cgroup controller is delegated: limits are ignored with a warning, recorded.
    let out = env.bolt(&[
        "run", "--name", "limited", "--memory", "64m", &image, "true",
    ]);
    assert!(out.status.success(), "memory: {}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("warning: rootless: no cgroup controllers delegated; --memory ignored"),
        "{}",
        text(&out.stderr)
    );
    let out = env.bolt(&["inspect", "limited"]);
    assert!(
        text(&out.stdout).contains("--memory ignored"),
        "the warning is recorded with the capsule: {}",
        text(&out.stdout)
    );
    let _ = env.bolt(&["rm", "limited"]);

    // Bridge networking needs root.
    let out = env.bolt(&["run", "--rm", "--network", "bridge", &image, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("bridge networking needs root"),
        "{}",
        text(&out.stderr)
    );
}
