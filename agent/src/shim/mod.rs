//! The per-capsule supervisor process: `bolt supervise DIR` (hidden), Bolt's containerd-shim.
//!
//! The agent spawns one per capsule start. It leaves the agent's session (`setsid`), so it and
//! its capsule outlive an agent crash, and it is the capsule's parent: it holds the capsule's
//! stdio (pipes, or a pty with `-t`), copies the output into the rotated log, serves attach
//! clients on `DIR/attach.sock`, reaps the capsule and records how it ended.
//!
//! It keeps the file formats of [`bolt_capsule::runtime::supervisor`] (`pid.json`,
//! `exit.json`, `log`, `log.1`, ...), so [`adopt`](bolt_capsule::runtime::adopt) and
//! [`read_logs`](bolt_capsule::runtime::supervisor::read_logs) work on its directory. The
//! loop over stdio and attach clients is [`serve`]. Imports only [`crate::wire`] (framing).
//!
//! Files in `DIR` (see also docs/runtime.md):
//!
//! | file | written by | what |
//! |---|---|---|
//! | `config.json` | agent | [`SupervisorConfig`]: what to run |
//! | `pid.json` | supervisor | the capsule's host pid, its start time, the supervisor's pid |
//! | `exit.json` | supervisor | exit status or start error, written last |
//! | `log`, `log.N` | supervisor | output as JSON lines, rotated by size |
//! | `attach.sock` | supervisor | attach clients (framed stdio, see [`frame`](crate::wire::frame)) |
//! | `supervisor.log` | supervisor's stderr | its own errors |
//! | `layer/{upper,work}/`, `rootfs/` | agent, runtime | the overlay's writable layer (a btrfs subvolume on btrfs) and mount point |
//!
//! The agent reads one JSON line ([`Report`]) from the supervisor's stdout when the capsule
//! started (or failed to), and a second one when it ended; then stdout is closed. After an
//! agent restart there is no pipe: the agent watches the supervisor's pid instead.

pub mod mounts;
mod serve;

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use bolt_capsule::runtime::supervisor::{files, proc_stat, ExitRecord, PidRecord};
use bolt_capsule::runtime::{
    CapsuleSpec, ExitStatus, NetworkMode, Resources, Rootfs, Runtime, User,
};
use serde::{Deserialize, Serialize};

use serve::{stdio_for, CapsuleLog, Loop};

/// `config.json`: what the supervisor runs.
pub const CONFIG: &str = "config.json";
/// The attach socket.
pub const ATTACH_SOCK: &str = "attach.sock";
/// The supervisor's own stderr.
pub const SUPERVISOR_LOG: &str = "supervisor.log";

/// One step of the supervisor that failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse {path}: {source}")]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("leave the agent's session: {0}")]
    Setsid(nix::Error),
    #[error("poll: {0}")]
    Poll(nix::Error),
    #[error(transparent)]
    Runtime(#[from] bolt_capsule::runtime::RuntimeError),
    #[error("open a pty: {0}")]
    Pty(nix::Error),
    #[error(transparent)]
    Log(#[from] bolt_capsule::runtime::supervisor::SupervisorError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SupervisorError {
    let path = path.to_path_buf();
    move |source| SupervisorError::Io { what, path, source }
}

/// What the supervisor runs: everything the runtime spec needs, resolved by the agent (image
/// layers, command, environment, user ids, limits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorConfig {
    /// Capsule id (names the cgroup).
    pub id: String,
    /// Unpacked image layers, base first.
    pub lower: Vec<PathBuf>,
    /// Command and arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory inside the capsule.
    pub workdir: String,
    /// uid of the process.
    pub uid: u32,
    /// gid of the process.
    pub gid: u32,
    /// Supplementary gids.
    pub additional_gids: Vec<u32>,
    /// Hostname (default: the first 12 characters of the id).
    pub hostname: Option<String>,
    /// `none` or `host`.
    pub network: String,
    /// Memory limit, bytes.
    pub memory_bytes: Option<u64>,
    /// CPU quota, millicpus.
    pub cpu_millis: Option<u32>,
    /// Process limit.
    pub pids_limit: Option<u32>,
    /// Give the capsule a pty as stdin, stdout and stderr.
    pub tty: bool,
    /// Keep stdin open for attach clients (`-i`); otherwise it is `/dev/null`.
    pub stdin: bool,
    /// Keep the output for the first attach client (a foreground `bolt run`), and wait a while
    /// for it after the capsule ended.
    pub attach_wait: bool,
    /// Rotate `log` past this size.
    pub log_max_bytes: u64,
    /// Rotated files kept.
    pub log_keep: usize,
    /// The network namespace to join (a bridge network's, prepared by the agent).
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Volumes, binds, tmpfs and the per-capsule `/etc` files.
    #[serde(default)]
    pub mounts: Vec<crate::shim::mounts::MountConfig>,
    /// Host devices granted (`--device`), resolved by the agent.
    #[serde(default)]
    pub devices: Vec<bolt_capsule::runtime::devices::Device>,
}

impl SupervisorConfig {
    /// The runtime spec, with the overlay's writable parts in `dir`: `dir/layer/{upper,work}`
    /// (the storage library's per-capsule layer, a btrfs subvolume on btrfs) when the agent made
    /// one, else `dir/{upper,work}` (capsules created before layers).
    pub fn runtime_spec(&self, dir: &Path) -> CapsuleSpec {
        let rootfs = if dir.join(bolt_capsule::storage::layer::LAYER_DIR).is_dir() {
            bolt_capsule::storage::layer::capsule_rootfs(dir, self.lower.clone())
        } else {
            Rootfs::in_dir(self.lower.clone(), dir)
        };
        let mut spec = CapsuleSpec::new(self.id.clone(), rootfs, self.args.clone());
        spec.env = self.env.clone();
        spec.workdir = self.workdir.clone();
        spec.user = User {
            uid: self.uid,
            gid: self.gid,
        };
        spec.additional_gids = self.additional_gids.clone();
        spec.hostname = self.hostname.clone();
        spec.network = match (&self.netns, self.network.as_str()) {
            (Some(path), _) => NetworkMode::Join(path.clone()),
            (None, "host") => NetworkMode::Host,
            _ => NetworkMode::None,
        };
        spec.mounts = self.mounts.iter().filter_map(|m| m.to_mount()).collect();
        spec.devices = self.devices.clone();
        spec.resources = Resources {
            memory_bytes: self.memory_bytes,
            cpu_millis: self.cpu_millis,
            cpu_weight: None,
            pids_limit: self.pids_limit,
        };
        spec
    }

    /// Reads `DIR/config.json`.
    pub fn load(dir: &Path) -> Result<SupervisorConfig, SupervisorError> {
        let path = dir.join(CONFIG);
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| SupervisorError::Config { path, source })
    }

    /// Writes `DIR/config.json` atomically and durably (temporary file, fsync, rename): a
    /// capsule restarted after a host crash is started from it.
    pub fn store(&self, dir: &Path) -> Result<(), SupervisorError> {
        Ok(bolt_capsule::runtime::supervisor::write_record(
            &dir.join(CONFIG),
            self,
        )?)
    }
}

/// Replaces `path` atomically (temporary file, rename) without an fsync, for `pid.json`: it must
/// survive a crash of the agent or the supervisor, not of the host (which ends the capsule too),
/// and a start should not wait for the disk. `config.json` and `exit.json` are fsynced.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), SupervisorError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", path))
}

/// A line the supervisor writes on its stdout for the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Report {
    /// The capsule runs.
    Started {
        /// Its host pid.
        pid: i32,
        /// The supervisor's pid.
        supervisor_pid: i32,
    },
    /// It could not be started (also in `exit.json`).
    Failed {
        /// One line.
        error: String,
        /// 125, 126 or 127.
        exit_code: i32,
    },
    /// It ended (`exit.json` is written).
    Exited {
        /// The shell-style exit code.
        exit_code: i32,
    },
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `bolt supervise DIR`: leave the agent's session, run the capsule described by
/// `DIR/config.json`, and return the exit code the process should end with.
pub fn main(dir: &Path) -> i32 {
    // A process started by the agent is not a group leader, so this cannot fail with EPERM.
    if let Err(e) = nix::unistd::setsid() {
        eprintln!("bolt supervise: {}", SupervisorError::Setsid(e));
    }
    match run(dir) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bolt supervise {}: {e}", dir.display());
            125
        }
    }
}

fn report(r: &Report) {
    if let Ok(mut line) = serde_json::to_vec(r) {
        line.push(b'\n');
        let mut out = std::io::stdout().lock();
        // The agent may be gone (the pipe is broken): nothing to do then.
        let _ = out.write_all(&line).and_then(|()| out.flush());
    }
}

/// Closes the report pipe: fd 1 becomes `/dev/null`.
fn close_reports() {
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
}

/// `exit.json`, fsynced: how the capsule ended must survive a host crash (the agent folds it
/// into `capsule.exited` when it next runs).
fn write_exit(dir: &Path, record: &ExitRecord) -> Result<(), SupervisorError> {
    Ok(bolt_capsule::runtime::supervisor::write_record(
        &dir.join(files::EXIT),
        record,
    )?)
}

fn run(dir: &Path) -> Result<i32, SupervisorError> {
    let cfg = SupervisorConfig::load(dir)?;
    let spec = cfg.runtime_spec(dir);

    let sock_path = dir.join(ATTACH_SOCK);
    let _ = fs::remove_file(&sock_path);
    // A socket path must fit in 108 bytes: bind it relative to the capsule's directory.
    std::env::set_current_dir(dir).map_err(io_err("enter", dir))?;
    let listener = UnixListener::bind(ATTACH_SOCK).map_err(io_err("bind", &sock_path))?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("configure", &sock_path))?;

    let (stdio, outputs, stdin_w) = stdio_for(&cfg)?;
    let started = Runtime::for_this_user().and_then(|rt| rt.spawn(&spec, stdio));
    let mut capsule = match started {
        Ok(c) => c,
        Err(e) => {
            let record = ExitRecord {
                status: None,
                error: Some(e.to_string()),
                exit_code: e.exit_code(),
                finished_at_ms: now_ms(),
            };
            let _ = fs::remove_file(&sock_path);
            write_exit(dir, &record)?;
            report(&Report::Failed {
                error: e.to_string(),
                exit_code: e.exit_code(),
            });
            close_reports();
            return Ok(e.exit_code());
        }
    };
    let pid = capsule.pid();
    let record = PidRecord {
        pid,
        start_time: proc_stat(pid).map_or(0, |(_, t)| t),
        supervisor_pid: std::process::id() as i32,
    };
    let pid_path = dir.join(files::PID);
    let bytes = serde_json::to_vec(&record).map_err(|source| SupervisorError::Config {
        path: pid_path.clone(),
        source,
    })?;
    replace_file(&pid_path, &bytes)?;
    report(&Report::Started {
        pid,
        supervisor_pid: record.supervisor_pid,
    });

    let pidfd = rustix::process::Pid::from_raw(pid)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    let log = CapsuleLog::open(dir.join(files::LOG), cfg.log_max_bytes, cfg.log_keep)?;
    let mut lp = Loop::new(listener, outputs, stdin_w, log, cfg.attach_wait, cfg.tty);
    lp.serve_until_exit(pidfd.as_ref())?;

    let status = capsule.wait()?;
    let destroyed = capsule.destroy();
    let record = ExitRecord {
        status: Some(status),
        error: None,
        exit_code: status.exit_code(),
        finished_at_ms: now_ms(),
    };
    write_exit(dir, &record)?;
    report(&Report::Exited {
        exit_code: status.exit_code(),
    });
    close_reports();
    if let Err(e) = destroyed {
        eprintln!("bolt supervise: remove the capsule's cgroup: {e}");
    }
    lp.finish(&record, cfg.attach_wait);
    let _ = fs::remove_file(&sock_path);
    Ok(exit_code_of(status))
}

fn exit_code_of(status: ExitStatus) -> i32 {
    status.exit_code()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_maps_to_the_runtime_spec() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SupervisorConfig {
            id: "abc".into(),
            lower: vec!["/l/base".into()],
            args: vec!["sh".into()],
            env: vec!["A=1".into()],
            workdir: "/w".into(),
            uid: 7,
            gid: 8,
            additional_gids: vec![9],
            hostname: Some("h".into()),
            network: "host".into(),
            memory_bytes: Some(1 << 20),
            cpu_millis: Some(500),
            pids_limit: Some(10),
            tty: false,
            stdin: true,
            attach_wait: false,
            log_max_bytes: 1000,
            log_keep: 1,
            netns: None,
            mounts: Vec::new(),
            devices: vec![bolt_capsule::runtime::devices::Device {
                host: "/dev/vda".into(),
                path: "/dev/xvda".into(),
                kind: bolt_capsule::runtime::devices::DeviceKind::Block,
                major: 254,
                minor: 0,
                mode: 0o660,
                access: 2,
            }],
        };
        cfg.store(dir.path()).unwrap();
        assert_eq!(SupervisorConfig::load(dir.path()).unwrap(), cfg);
        let spec = cfg.runtime_spec(dir.path());
        assert_eq!(spec.network, NetworkMode::Host);
        assert_eq!(spec.user, User { uid: 7, gid: 8 });
        assert_eq!(spec.resources.memory_bytes, Some(1 << 20));
        assert_eq!(spec.devices, cfg.devices);
        assert_eq!(spec.rootfs.upper, dir.path().join("upper"));
        assert!(spec.validate().is_ok());
        // With a layer directory (made by the agent since layers), the overlay lives there.
        std::fs::create_dir(dir.path().join("layer")).unwrap();
        let spec = cfg.runtime_spec(dir.path());
        assert_eq!(spec.rootfs.upper, dir.path().join("layer/upper"));
        assert_eq!(spec.rootfs.work, dir.path().join("layer/work"));
        assert_eq!(spec.rootfs.target, dir.path().join("rootfs"));
    }
}
