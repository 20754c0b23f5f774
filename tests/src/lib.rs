//! `bolt-tests`: end-to-end and multi-node harness. Nothing may depend on this crate.
//!
//! The tests run the built `bolt` binary as a real process: an agent per [`Node`] (its own temp
//! root and socket) and the CLI against it. [`cluster`] puts N of them in network namespaces of
//! their own on one bridge, with partitions, a line topology and `kill -9` for fault tests.
//!
//! **Which binary.** Cargo only tells a package's own tests where its binaries are
//! (`CARGO_BIN_EXE_*`), and `bolt` belongs to `bolt-agent`, so [`bolt_bin`] finds it beside
//! this test executable (`target/<profile>/bolt`), or at `$BOLT_BIN`. `cargo test` at the
//! workspace root builds it (bolt-agent has integration tests, so Cargo builds its binary);
//! with `-p bolt-tests` alone, run `cargo build -p bolt-agent` first.

pub mod cluster;

pub use cluster::{Cluster, ClusterNode};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long the harness waits for an agent to answer or to exit before it calls it hung. A
/// guard against hanging forever, not a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// One harness step that failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("no bolt binary at {0}; run `cargo build -p bolt-agent` (or set BOLT_BIN)")]
    NoBinary(PathBuf),
    #[error("locate the test executable: {0}")]
    CurrentExe(std::io::Error),
    #[error("create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("the agent exited ({status}) before it answered; its log:\n{log}")]
    AgentDied { status: ExitStatus, log: String },
    #[error("the agent did not answer within {0:?}; its log:\n{1}")]
    NotReady(Duration, String),
    #[error("the agent did not exit within {0:?} after {1}")]
    NoExit(Duration, Signal),
    #[error("no agent is running")]
    NotRunning,
    #[error("signal the agent: {0}")]
    Signal(nix::Error),
    #[error("cluster: {0}")]
    Cluster(String),
}

/// The `bolt` binary the tests run.
pub fn bolt_bin() -> Result<PathBuf, HarnessError> {
    let path = match std::env::var_os("BOLT_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().map_err(HarnessError::CurrentExe)?;
            // target/<profile>/deps/<test>-<hash> -> target/<profile>/bolt
            exe.parent()
                .and_then(Path::parent)
                .map(|d| d.join("bolt"))
                .unwrap_or_else(|| PathBuf::from("bolt"))
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::NoBinary(path))
    }
}

/// What a finished `bolt` command printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (None when killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// True when it exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The non-empty lines of stdout.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// A `bolt` command line with the environment cleared of `BOLT_*` settings.
pub fn bolt_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for var in [
        "BOLT_SOCKET",
        "BOLT_ROOT",
        "BOLT_SNAPSHOT_EVERY",
        "BOLT_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// One node: a root and a socket in a directory, and the agent process when it runs.
#[derive(Debug)]
pub struct Node {
    bin: PathBuf,
    root: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    agent: Option<Child>,
    extra_args: Vec<String>,
    wrapper: Vec<String>,
}

impl Node {
    /// A node living under `dir/name` (root `dir/name/root`, socket `dir/name/bolt.sock`).
    pub fn new(dir: &Path, name: &str) -> Result<Node, HarnessError> {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).map_err(|source| HarnessError::Create {
            path: home.clone(),
            source,
        })?;
        Ok(Node {
            bin: bolt_bin()?,
            root: home.join("root"),
            socket: home.join("bolt.sock"),
            log: home.join("agent.log"),
            agent: None,
            extra_args: Vec::new(),
            wrapper: Vec::new(),
        })
    }

    /// A node (as [`Node::new`]) whose agent reads no registry credentials (`--registry-auth
    /// DIR/no-auth.json`, a file that is not there) instead of this machine's docker config.
    pub fn without_registry_auth(dir: &Path, name: &str) -> Result<Node, HarnessError> {
        let auth = dir.join("no-auth.json");
        Ok(Node::new(dir, name)?.with_agent_args(&["--registry-auth", &auth.to_string_lossy()]))
    }

    /// Extra `bolt agent` arguments (such as `--snapshot-every 2`).
    pub fn with_agent_args(mut self, args: &[&str]) -> Node {
        self.extra_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Replace the extra `bolt agent` arguments (as [`Node::with_agent_args`]); they apply from
    /// the agent's next start.
    pub fn set_agent_args(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Run the agent under a wrapper command (such as `nsenter --net=/run/netns/X`), so
    /// that its networks live in a namespace the test made. Empty: run it directly.
    pub fn set_wrapper(&mut self, wrapper: &[&str]) {
        self.wrapper = wrapper.iter().map(|a| a.to_string()).collect();
    }

    /// The agent root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The `bolt` binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Everything the agent wrote to stderr so far, across its starts.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An agent in the machine's own network namespace gets `--default-network none`, so a
    /// test's plain `bolt run` never makes a bridge or an nft table on the shared host; under
    /// a wrapper (a namespace the test made) the agent keeps its default (`bridge` as root).
    /// Tests that pass `--default-network` themselves decide.
    fn default_network_args(&self) -> Vec<&'static str> {
        let given = self
            .extra_args
            .iter()
            .any(|a| a.starts_with("--default-network"));
        if given || !self.wrapper.is_empty() {
            Vec::new()
        } else {
            vec!["--default-network", "none"]
        }
    }

    /// Spawn `bolt agent` on this root and socket without waiting for it.
    pub fn spawn_agent(&self) -> Result<Child, HarnessError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|source| HarnessError::Create {
                path: self.log.clone(),
                source,
            })?;
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = bolt_command(Path::new(first));
                c.args(rest).arg(&self.bin);
                c
            }
            None => bolt_command(&self.bin),
        };
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("agent")
            .arg("--root")
            .arg(&self.root)
            .args(&self.extra_args)
            .args(self.default_network_args())
            .env("BOLT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                what: "bolt agent".into(),
                source,
            })
    }

    /// Start the agent and wait until `bolt info` answers.
    pub fn start(&mut self) -> Result<(), HarnessError> {
        let mut child = self.spawn_agent()?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(HarnessError::AgentDied {
                    status,
                    log: self.agent_log(),
                });
            }
            if self.bolt(&["info"])?.ok() {
                self.agent = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::NotReady(PATIENCE, self.agent_log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the agent process is alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.agent.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// Send `signal` to the agent and wait for it to exit.
    pub fn stop_with(&mut self, signal: Signal) -> Result<ExitStatus, HarnessError> {
        let mut child = self.agent.take().ok_or(HarnessError::NotRunning)?;
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, signal).map_err(HarnessError::Signal)?;
        wait_for_exit(&mut child, PATIENCE).ok_or(HarnessError::NoExit(PATIENCE, signal))
    }

    /// SIGTERM the agent and wait for it to exit.
    pub fn stop(&mut self) -> Result<ExitStatus, HarnessError> {
        self.stop_with(Signal::SIGTERM)
    }

    /// Run `bolt --socket SOCKET <args>` and wait for it.
    pub fn bolt(&self, args: &[&str]) -> Result<Output, HarnessError> {
        let out = bolt_command(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .map_err(|source| HarnessError::Spawn {
                what: format!("bolt {}", args.join(" ")),
                source,
            })?;
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// [`Node::bolt`] that must run and succeed; panics (the test fails) otherwise.
    pub fn ok(&self, args: &[&str]) -> Output {
        match self.bolt(args) {
            Ok(out) if out.ok() => out,
            Ok(out) => panic!("bolt {args:?} failed: {out:?}"),
            Err(e) => panic!("bolt {args:?}: {e}"),
        }
    }

    /// Run `bolt --socket SOCKET <args>` with `input` on its stdin and wait for it.
    pub fn bolt_with_input(&self, args: &[&str], input: &[u8]) -> Result<Output, HarnessError> {
        use std::io::Write;
        let spawn_err = |source| HarnessError::Spawn {
            what: format!("bolt {}", args.join(" ")),
            source,
        };
        let mut child = bolt_command(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its stdin may close it first: not an error here.
            let _ = stdin.write_all(input);
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Spawn `bolt --socket SOCKET <args>` with stdout piped, without waiting.
    pub fn spawn_bolt(&self, args: &[&str]) -> Result<Child, HarnessError> {
        bolt_command(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                what: format!("bolt {}", args.join(" ")),
                source,
            })
    }
}

impl Node {
    /// `bolt <args>` that gives up after `patience` (the drop guard must not hang on a
    /// stuck agent): stdout when it exited 0.
    fn bolt_within(&self, args: &[&str], patience: Duration) -> Option<String> {
        use std::io::Read;
        let mut child = bolt_command(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let Some(status) = wait_for_exit(&mut child, patience) else {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        };
        let mut out = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        status.success().then_some(out)
    }

    /// Everything this node's capsules left on the machine, ended: what a test that failed
    /// half-way (or stopped its agent with capsules running) would otherwise leave behind.
    ///
    /// With the agent alive, its capsules are removed through it first (`bolt rm -f`: the
    /// agent tears down veths, rules, cgroups and mounts). Then, after the agent is gone:
    /// every `bolt supervise ROOT/capsules/ID` process of this node's root is killed (found in
    /// `/proc/*/cmdline`, so only processes of this node), every process in the capsules'
    /// cgroups (`<hierarchy>/bolt/ID` for the ids under `ROOT/capsules`) is killed and those
    /// cgroups removed, and every mount below the node's directory is detached.
    pub fn cleanup(&mut self) {
        if self.is_running() {
            let patience = Duration::from_secs(30);
            if let Some(ids) = self.bolt_within(&["ps", "-a", "-q"], patience) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    let _ = self.bolt_within(&args, patience);
                }
            }
        }
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let capsules = self.root.join("capsules");
        for pid in supervisors_under(&capsules) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let ids: Vec<String> = std::fs::read_dir(&capsules)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for id in &ids {
            kill_cgroup(id);
        }
        let home = self
            .root
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for mount in mounts_under(&home) {
            let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// The pids of `bolt supervise DIR` processes whose DIR lies under `capsules`.
pub fn supervisors_under(capsules: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        let supervised = args.windows(2).any(|w| {
            w[0] == b"supervise"
                && Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(w[1]))
                    .starts_with(capsules)
        });
        if supervised {
            out.push(pid);
        }
    }
    out
}

/// The mount points of cgroup hierarchies (`/proc/self/mountinfo`).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            if !(post.starts_with("cgroup ") || post.starts_with("cgroup2 ")) {
                return None;
            }
            pre.split(' ').nth(4).map(|m| PathBuf::from(unescape(m)))
        })
        .collect()
}

/// Kills every process in capsule `id`'s cgroups (`<hierarchy>/bolt/<id>`) and removes them,
/// and Bolt's parent group where that left it empty.
fn kill_cgroup(id: &str) {
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return;
    }
    for mount in cgroup_mounts() {
        let parent = mount.join("bolt");
        let dir = parent.join(id);
        if !dir.is_dir() {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The last process may take a moment to leave the group.
        while std::fs::remove_dir(&dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&parent);
    }
}

/// Mount points below `dir`, deepest (latest) first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    if dir.as_os_str().is_empty() {
        return Vec::new();
    }
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.reverse();
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Poll `child` until it exits or `patience` runs out.
pub fn wait_for_exit(child: &mut Child, patience: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + patience;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

/// The test registry (`BOLT_TEST_REGISTRY`, `127.0.0.1:PORT` with the fixtures of
/// `tests/fixtures/build-images.sh` pushed) when this process runs as root; otherwise `None`
/// after a `SKIPPED` line, or a panic under `BOLT_REQUIRE_ROOT_TESTS=1` (CI): [`bolt_skip`].
pub fn root_and_registry(test: &str) -> Option<String> {
    if !bolt_skip::root(test) {
        return None;
    }
    bolt_skip::registry(test)
}

/// The busybox fixture image in the test registry `registry` (see docs/fixtures.md).
pub fn busybox(registry: &str) -> String {
    format!("{registry}/bolt-test/busybox:latest")
}

/// The single `bolt: ...` line a failed command printed on stderr; panics (the test fails)
/// when it succeeded or printed more or less.
pub fn one_error_line(out: &Output) -> String {
    assert!(!out.ok(), "expected a failure: {out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {:?}", out.stderr);
    assert!(lines[0].starts_with("bolt: "), "{:?}", lines[0]);
    lines[0].to_string()
}
